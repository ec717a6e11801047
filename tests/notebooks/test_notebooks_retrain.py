"""Notebooks 2 (retrain and tune) and 3 (evaluate and promote) against a real MLflow SQLite store:
a first version becomes the champion, a second one is evaluated off-policy and promoted only if
it passes the gate, and the uplift report is written and logged."""

import re

import pytest
from nbrun import images_in, run_notebook, text_of


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project directory with a small simulated data directory (written by the first notebook run)."""
    home = tmp_path_factory.mktemp("project")
    return home, home / "data"


@pytest.mark.slow
def test_retrain_twice_then_evaluate_and_promote(project, tmp_path, clean_mlflow_env, monkeypatch):
    from mlflow import MlflowClient

    home, data = project
    common = {"data_dir": str(data), "home": str(home), "simulate": True, "customers": 1200, "days": 30,
              "seed": 3}
    first = run_notebook("02_retrain_and_tune.ipynb", tmp_path / "a", n_trials=2, **common)
    text = text_of(first)
    assert "2 trials" in text and "registered nextbest version 1" in text
    assert "no champion yet" in text and "version 1 is the champion" in text
    assert images_in(first) == 1  # the study's plot

    second = run_notebook("02_retrain_and_tune.ipynb", tmp_path / "b", n_trials=1, **{**common, "seed": 4})
    text = text_of(second)
    assert "registered nextbest version 2" in text and "version 2 (new)" in text and "version 1 (champion)" in text
    assert "champion stays version 1: evaluate version 2 off-policy in notebook 3" in text

    report_dir = home / "report"
    third = run_notebook("03_evaluate_and_promote.ipynb", tmp_path / "c", max_rounds=1500, n_boot=100,
                         report_dir=str(report_dir), **common)
    text = text_of(third)
    assert "candidate: version 2; champion: version 1" in text
    assert "1,500 logged decisions; MLflow run" in text
    table = text[text.index("policy estimator"):]
    for estimator in ("ips", "snips", "dr", "dm"):
        assert re.search(rf"v2\s+{estimator}\s", table) and re.search(rf"v1\s+{estimator}\s", table), estimator
    passed = "PASS: " in text
    assert passed != ("FAIL: " in text)

    monkeypatch.setenv("NEXTBEST_HOME", str(home))
    from nextbest.decision import registry

    assert registry.champion_version() == ("2" if passed else "1")
    tags = MlflowClient(tracking_uri=registry.tracking_uri()).get_model_version("nextbest", "2").tags
    assert tags["ope_champion_version"] == "1" and tags["ope_passed"] == str(passed).lower()
    assert float(tags["ope_dr_low"]) <= float(tags["ope_dr_value"]) <= float(tags["ope_dr_high"])
    assert (float(tags["ope_dr_low"]) >= float(tags["ope_champion_dr_value"])) == passed  # the gate's rule
    html = (report_dir / "version_2" / "index.html").read_text()
    assert "What each channel, offer and send time adds over sending nothing" in html
    assert images_in(third) >= 3  # the log, the estimates, the report's charts
