"""A real MLflow SQLite store: train twice, register, promote with history, load the champion
(open data, no pickles; also in a fresh process), and the uplift report artifact with its charts."""


import pandas as pd
import pytest


@pytest.fixture(scope="module")
def store(tmp_path_factory, monkeypatch_module):
    home = tmp_path_factory.mktemp("project")
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch_module.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch_module.setenv("NEXTBEST_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def two_runs(store, small_data_dir, config):
    from nextbest.training.tracking import run_training

    first = run_training(small_data_dir, config, seed=0)
    second = run_training(small_data_dir, config, seed=1)
    return first, second


def test_runs_register_versions_in_the_project_sqlite_store(two_runs, store):
    from nextbest.decision import registry

    assert registry.tracking_uri() == f"sqlite:///{store / 'mlflow.db'}"
    assert (store / "mlflow.db").exists()
    first, second = two_runs
    assert (first["version"], second["version"]) == ("1", "2")
    assert registry.champion_version() is None  # nothing is served until someone promotes
    for key in ("time_seconds/response_models", "share_of_achievable_extra_profit/nextbest_policy",
                "model_auc/open_all", "uplift_ranking_qini/offer_none",
                "extra_orders_per_1000_messages/channel_email_low_95"):
        assert key in first["metrics"], key


def test_promote_moves_the_champion_and_keeps_history(two_runs):
    from nextbest.decision import registry

    registry.promote("1", note="first")
    registry.promote("2", note="better")
    assert registry.champion_version() == "2"
    history = registry.champion_history()
    assert [h["version"] for h in history] == ["1", "2"] and history[1]["previous"] == "1"
    rows = {r["version"]: r for r in registry.versions()}
    assert rows["1"]["champion_until"] and rows["2"]["champion_since"] and "champion" in rows["2"]["aliases"]
    with pytest.raises(ValueError, match="already"):
        registry.promote("2")
    policy = registry.load_champion()
    assert policy.version == "nextbest/2"


def test_champion_serves_decisions_through_pyfunc(two_runs, small_world):
    import mlflow

    from nextbest.features.eventlog import EventLog
    from nextbest.features.history import engagement_history
    from nextbest.decision import registry
    from nextbest.decision.pyfunc import signature_example

    model = mlflow.pyfunc.load_model(registry.champion_uri())
    policy = model.unwrap_python_model().policy
    log_ = EventLog.build(small_world.customers, small_world.events, policy.config)
    snap = engagement_history(log_, small_world.customers["customer_id"][:20], small_world.end)
    out = model.predict(signature_example(snap, policy, rows=20), params={"now": "2026-10-01T08:00:00Z"})
    assert len(out) == 20 and set(out["action"]) <= {"send", "suppress"}
    assert out["reasons"].str.len().min() > 0
    sent_at = pd.to_datetime(out.loc[out["action"] == "send", "send_at"], utc=True)
    assert (sent_at >= pd.Timestamp("2026-10-01 08:00", tz="UTC")).all()


def test_registered_version_is_open_data_without_pickles(two_runs, tmp_path):
    """Models from code: MLmodel names the code file, the policy is LightGBM text, YAML and JSON."""
    import json
    from pathlib import Path

    import mlflow
    import yaml

    from nextbest.decision import registry

    registry.setup()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/nextbest/2", dst_path=str(tmp_path)))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if Path(f).suffix in (".pkl", ".pickle", ".cloudpickle", ".joblib")], files
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert {p["name"] for p in json.loads(mlmodel["signature"]["params"])} == {"now", "horizon_hours", "type", "seed"}
    assert "python_model" not in flavor and flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert flavor["model_code_path"].endswith("pyfunc_model.py")
    policy_dir = registry.policy_directory(local)
    assert {p.suffix for p in policy_dir.rglob("*") if p.is_file()} == {".json", ".yaml", ".txt"}


def test_champion_decides_in_a_fresh_process_as_the_registry_loads_it(two_runs, small_world, tmp_path):
    """``mlflow.pyfunc.load_model`` in a new interpreter and ``registry.load_version`` (what the
    service loads) give the same decisions for the same features, time and seed."""
    import os
    import subprocess
    import sys

    import numpy as np
    import mlflow

    from nextbest.features.eventlog import EventLog
    from nextbest.features.history import engagement_history
    from nextbest.decision import registry
    from nextbest.decision.policy import Request
    from nextbest.decision.pyfunc import signature_example, typed_features
    from nextbest.decision.rules import ContactHistory

    version = registry.champion_version()
    policy = registry.load_version(version)
    assert policy.version == f"nextbest/{version}"
    log_ = EventLog.build(small_world.customers, small_world.events, policy.config)
    snap = engagement_history(log_, small_world.customers["customer_id"][:60], small_world.end)
    example = signature_example(snap, policy, rows=60)
    example.to_parquet(tmp_path / "in.parquet")
    now, seed = "2026-10-01T08:00:00Z", 11
    script = ("import sys, mlflow, pandas as pd\n"
              "mlflow.set_tracking_uri(sys.argv[1])\n"
              "model = mlflow.pyfunc.load_model(sys.argv[2])\n"
              "params = {'now': sys.argv[4], 'seed': int(sys.argv[5])}\n"
              "out = model.predict(pd.read_parquet(sys.argv[3]), params=params)\n"
              "out.to_parquet(sys.argv[6])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    subprocess.run([sys.executable, "-c", script, registry.tracking_uri(), f"models:/nextbest/{version}",
                    str(tmp_path / "in.parquet"), now, str(seed), str(tmp_path / "out.parquet")],
                   cwd=tmp_path, env=env, check=True, timeout=600)
    served = pd.read_parquet(tmp_path / "out.parquet")
    features = typed_features(example, policy)
    out = policy.decide(features, ContactHistory.from_features(features, policy.config), Request(now=now),
                        rng=np.random.default_rng(seed))
    here = out.frame.assign(send_at=out.frame["send_at"].astype("str"), reasons=[" | ".join(r) for r in out.reasons])
    cols = [c for c in here.columns if c not in ("decision_id", "policy_version")]
    assert len(served) == 60 and (served["action"] == "send").any()
    pd.testing.assert_frame_equal(served[cols].reset_index(drop=True), here[cols].reset_index(drop=True),
                                  check_dtype=False)
    run_id = mlflow.MlflowClient().get_model_version("nextbest", version).run_id
    assert set(served["policy_version"]) == {run_id}  # the pyfunc names the training run


def test_report_artifact_has_html_and_plots(two_runs):
    import mlflow

    from nextbest.decision import registry

    registry.setup()
    run_id = two_runs[0]["run_id"]
    names = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "report")}
    assert "report/index.html" in names
    pngs = {n for n in names if n.endswith(".png")}
    assert {"report/policy_value.png", "report/qini.png", "report/incremental_orders.png",
            "report/uplift_deciles.png", "report/reliability.png"} <= pngs
    html = open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="report/index.html")).read()
    for png in pngs:  # each chart is embedded (MLflow's viewer shows the page without its neighbours)
        assert f"<img alt='{png.split('/')[1]}' src='data:image/png;base64," in html
    assert "extra profit per 1,000 customers" in html
    # why a channel that loses on average can still be picked: the policy's own picks per channel
    picks = html.split("Per customer, not on average", 1)[1].split("<h2>", 1)[0]
    for channel in ("email", "sms", "push"):
        assert f"<td>{channel}</td>" in picks or f">{channel}<" in picks


def test_run_page_speaks_to_marketers(two_runs):
    """Readable metric names with intervals, the version as the run's name and a description."""
    import mlflow

    from nextbest.training import run_metrics

    run = mlflow.MlflowClient().get_run(two_runs[1]["run_id"])
    m, tags = run.data.metrics, run.data.tags
    assert tags["mlflow.runName"] == "nextbest v2" and tags["model_version"] == "2"
    for who in ("policy", "suppress", "best_single_channel", "random", "oracle"):
        assert run_metrics.name(run_metrics.PROFIT, who) in m
    assert m["profit_per_1000_customers/nextbest_policy"] > m["profit_per_1000_customers/send_nothing"]
    for group in ("channel_email", "offer_pct10", "send_hour_morning_6to11"):
        key = f"extra_orders_per_1000_messages/{group}"
        assert m[key + "_low_95"] <= m[key] <= m[key + "_high_95"], key
    assert "Policy version 2" in tags["mlflow.note.content"]
    assert "report/index.html" in tags["mlflow.note.content"]


def test_a_version_whose_evaluation_fails_is_not_left_registered(two_runs, small_data_dir, config, monkeypatch):
    from nextbest.decision import registry
    from nextbest.training import tracking

    def broken(*args, **kwargs):
        raise RuntimeError("report failed")

    monkeypatch.setattr(tracking, "evaluate_and_report", broken)
    before = [v["version"] for v in registry.versions()]
    with pytest.raises(RuntimeError, match="report failed"):
        tracking.run_training(small_data_dir, config, seed=2)
    assert [v["version"] for v in registry.versions()] == before


def test_a_failed_training_run_is_named_and_marked_failed(two_runs, store, small_data_dir, config):
    """The marketer's run list: runs are named after what they did; a failure says so."""
    import mlflow

    from nextbest.decision import registry
    from nextbest.training.tracking import run_training

    def boom(env):  # a LightGBM callback that stops the first model at its first round
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        run_training(small_data_dir, config, seed=2, callbacks=[boom])
    client = mlflow.MlflowClient(tracking_uri=registry.tracking_uri(), registry_uri=registry.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(registry.EXPERIMENT).experiment_id],
                              order_by=["attributes.start_time DESC"])
    failed = runs[0]  # the newest
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mlflow.runName"] == f"FAILED: training on {small_data_dir.name}"
    assert "disk on fire" in failed.data.tags["failure"]
    assert {"nextbest v1", "nextbest v2"} <= {r.data.tags["mlflow.runName"] for r in runs[1:]}
    assert {v["version"] for v in registry.versions()} == {"1", "2"}  # nothing registered for it
