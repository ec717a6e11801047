"""Notebooks 1 (explore engagement) and 4 (your own data), and the stored notebooks' outputs."""

import json

import nbformat
import pytest
from nbrun import NOTEBOOKS, images_in, run_notebook, text_of

NAMES = ["01_explore_engagement.ipynb", "02_retrain_and_tune.ipynb", "03_evaluate_and_promote.ipynb",
         "04_your_own_data.ipynb"]


def test_every_notebook_is_here_and_shows_outputs_of_a_real_run():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
    for name in NAMES:
        book = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), name
        ran = [c for c in code[1:] if c.get("outputs")]
        assert len(ran) >= len(code) - 2, f"{name}: {len(code) - 1 - len(ran)} code cells without output"
        assert all(c.get("execution_count") for c in code), f"{name}: not executed in order"
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{name}: stored with an error: {errors[0].get('evalue')}"
        assert images_in(book) >= 1, name
        assert "/tmp/" not in json.dumps(book), f"{name}: stored from a test run (temporary paths)"


def test_explore_engagement_runs_end_to_end_on_a_fresh_directory(tmp_path, clean_mlflow_env):
    book = run_notebook("01_explore_engagement.ipynb", tmp_path, data_dir=str(tmp_path / "data"), simulate=True,
                        customers=800, days=30, seed=5)
    text = text_of(book)
    assert "simulated 800 customers over 30 days" in text
    assert "no problems: the data directory meets the contract" in text
    assert "800 customers" in text and "sends with a complete outcome window" in text
    assert images_in(book) == 4  # histories, channel x hour, fatigue, offers


@pytest.mark.slow
def test_your_own_data_runs_on_the_open_bandit_sample(tmp_path, clean_mlflow_env):
    book = run_notebook("04_your_own_data.ipynb", tmp_path, n_boot=100)
    text = text_of(book)
    assert "10,000 rows, 4 feature columns, arms ['3', '1', '2'] (control '3')" in text
    for policy in ("nobody (control)", "everyone: 1", "everyone: 2", "uplift model's pick"):
        assert policy in text
    assert "bts_from_random_log" in text and "learned_softmax_vs_random" in text
    assert images_in(book) == 2


def test_your_own_data_reads_any_csv_with_treatment_and_outcome(tmp_path, clean_mlflow_env):
    """A campaign export with its own column names; mail helps half the customers and costs the others."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(2)  # not the notebook's split seed: its first draw would be the split itself
    n = 12_000
    x = rng.random(n)
    got = rng.random(n) < 0.5
    rate = 0.10 + got * np.where(x > 0.5, 0.10, -0.05)
    pd.DataFrame({"segment_score": x, "arm": np.where(got, "mail", "holdout"),
                  "bought": (rng.random(n) < rate).astype(int)}).to_csv(tmp_path / "campaign.csv", index=False)
    book = run_notebook("04_your_own_data.ipynb", tmp_path, table=str(tmp_path / "campaign.csv"), treatment="arm",
                        control="holdout", outcome="bought", features=None, obd_checks=False, n_boot=100,
                        results_csv=str(tmp_path / "values.csv"))
    text = text_of(book)
    assert "12,000 rows, 1 feature columns, arms ['holdout', 'mail'] (control 'holdout')" in text
    assert "skipped (obd_checks = False)" in text
    values = pd.read_csv(tmp_path / "values.csv")
    assert set(values["estimator"]) == {"ips", "snips", "dr", "dm"}
    dr = values[values["estimator"] == "dr"].set_index("policy")
    # truths: nobody 0.100, everyone 0.125, the right half only 0.150
    assert abs(dr.loc["nobody (control)", "value"] - 0.100) < 3 * dr.loc["nobody (control)", "se"]
    assert abs(dr.loc["everyone: mail", "value"] - 0.125) < 3 * dr.loc["everyone: mail", "se"]
    assert dr.loc["uplift model's pick", "ci_low"] > dr.loc["nobody (control)", "value"]
    assert dr.loc["uplift model's pick", "value"] > dr.loc["everyone: mail", "value"]


def test_a_mistyped_data_directory_stops_instead_of_simulating(tmp_path):
    from nextbest import notebooks

    with pytest.raises(FileNotFoundError, match="no customers table here; check the path, or pass simulate=True"):
        notebooks.data_dir(tmp_path / "real_data_typo", tmp_path, simulate=False, customers=10, days=5, seed=0)
    assert not (tmp_path / "real_data_typo").exists()


def test_a_kernel_can_switch_projects(tmp_path, monkeypatch):
    """MLflow exports the URIs and experiment it is given; the next project (and every subprocess)
    must not inherit them."""
    import os

    from nextbest import notebooks
    from nextbest.decision import registry

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path))  # recorded, so use_project's value is undone
    for name in ("first", "second"):
        home = notebooks.use_project(tmp_path / name)
        assert registry.tracking_uri() == f"sqlite:///{home / 'mlflow.db'}"
        assert (home / "mlflow.db").exists()
        assert not {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"} & set(os.environ)
