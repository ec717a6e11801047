"""The `nextbest` command as a user runs it: generate, validate, build features; errors and exit codes."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nextbest.features.config import default_config_dict
from nextbest.features.spec import feature_names

BIN = Path(sys.executable).parent / "nextbest"


def run(*args, check=True):
    proc = subprocess.run([str(BIN), "-q", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "data"
    proc = run("data", "generate", "--customers", "400", "--days", "20", "--seed", "3", "--out", str(out),
               "--format", "csv")
    assert "wrote 400 customers" in proc.stdout
    return out


def test_generate_writes_the_contract_files(data_dir):
    assert (data_dir / "customers.csv").exists() and (data_dir / "events.csv").exists()
    assert (data_dir / "logging_decisions.csv").exists() and (data_dir / "truth" / "world.npz").exists()


def test_validate_prints_a_summary(data_dir):
    proc = run("data", "validate", str(data_dir))
    assert "valid" in proc.stdout and "customers: 400" in proc.stdout
    assert "propensities logged on 100% of sends" in proc.stdout
    assert "decisions: the `logging_decisions` table" in proc.stdout
    # 20 days: `nextbest train` refuses them with the default 14 days of warm-up and 7 of validation
    assert "too short for `nextbest train`: the data spans 20." in proc.stdout


def test_validate_reads_the_training_settings_of_the_config(data_dir, tmp_path):
    cfg = tmp_path / "short.yaml"
    cfg.write_text("training:\n  warmup_days: 3\n  validation_days: 2\n")
    proc = run("--config", str(cfg), "data", "validate", str(data_dir))
    assert "training: long enough for `nextbest train` (20." in proc.stdout and "more than 8.0 needed" in proc.stdout


def test_validate_refuses_bad_data_naming_file_row_and_rule(data_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "customers.csv").write_text((data_dir / "customers.csv").read_text())
    lines = (data_dir / "events.csv").read_text().splitlines()
    header = lines[0].split(",")
    line = next(i for i, text in enumerate(lines) if ",delivered," in text)  # data row = line index
    row = lines[line].split(",")
    row[header.index("event")] = "read"
    lines[line] = ",".join(row)
    (bad / "events.csv").write_text("\n".join(lines) + "\n")
    report = tmp_path / "problems.csv"
    proc = run("data", "validate", str(bad), "--report", str(report), check=False)
    assert proc.returncode == 1
    assert "unknown_event" in proc.stderr and f"row {line}" in proc.stderr and "events.csv" in proc.stderr
    problems = pd.read_csv(report)
    assert problems[["rule", "row", "column"]].values.tolist() == [["unknown_event", line, "event"]]


def test_features_build_writes_snapshot_and_examples(data_dir, tmp_path, config):
    snap, ex = tmp_path / "snap.parquet", tmp_path / "examples.parquet"
    proc = run("features", "build", str(data_dir), "--out", str(snap), "--examples", str(ex),
               "--as-of", "2026-09-25")
    assert "engagement histories of 400 customers" in proc.stdout and "across all customers" in proc.stdout
    table = pd.read_parquet(snap)
    assert table.columns[0] == "customer_id" and len(table) == 400
    assert list(table.columns[1:len(feature_names(config)) + 1]) == feature_names(config)
    rows = pd.read_parquet(ex)
    assert len(rows) > 1000 and {"opened", "converted", "propensity", "send_hour"} <= set(rows.columns)
    assert rows["send_ts"].max() < pd.Timestamp("2026-09-25", tz="UTC")


def test_bad_arguments_and_missing_data_exit_non_zero(tmp_path):
    proc = run("data", "generate", "--customers", "0", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "positive integer" in proc.stderr
    proc = run("data", "validate", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 2 and "data directory not found" in proc.stderr
    cfg = tmp_path / "bad.yaml"
    offers = default_config_dict()["offers"]  # a deployment's offers replace the defaults: write them whole
    cfg.write_text(yaml.safe_dump({"offers": {**offers, "pct10": {**offers["pct10"], "channels": ["fax"]}}}))
    proc = run("--config", str(cfg), "data", "validate", str(tmp_path), check=False)
    assert proc.returncode == 2 and "offers.pct10.channels" in proc.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_before_or_after_the_subcommand(data_dir, tmp_path, where):
    def validate(cfg, *extra):
        args = ["data", "validate", str(data_dir), *extra]
        return run(*(["--config", str(cfg), *args] if where == "before" else [*args, "--config", str(cfg)]),
                   check=False)

    typo = tmp_path / "typo.yaml"
    typo.write_text("contact_rules:\n  max_per_dya: 3\n")
    proc = validate(typo)
    assert proc.returncode == 2
    assert "contact_rules.max_per_dya: unknown key; did you mean 'max_per_day'?" in proc.stderr
    fewer = tmp_path / "fewer_offers.yaml"  # drops pct20 and free_shipping, which the logged history uses
    offers = default_config_dict()["offers"]
    fewer.write_text(yaml.safe_dump({"offers": {k: offers[k] for k in ("none", "pct10")}}))
    proc = validate(fewer, "--report", str(tmp_path / "problems.csv"))
    assert proc.returncode == 1 and "unknown_offer" in proc.stderr
    problems = pd.read_csv(tmp_path / "problems.csv")
    assert set(problems.loc[problems["rule"] == "unknown_offer", "value"]) == {"pct20", "free_shipping"}
    assert run("data", "validate", str(data_dir)).returncode == 0  # no --config: the defaults


def test_mlflow_run_entry_points_call_the_cli(tmp_path):
    """`mlflow run . -e generate` and `-e features` work from the repository (MLproject)."""
    import os

    root = Path(__file__).parents[2]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PATH": f"{BIN.parent}{os.pathsep}{os.environ['PATH']}"}
    mlflow = str(BIN.parent / "mlflow")
    out = tmp_path / "data"
    for entry, params in (("generate", ["customers=200", "days=7", f"out={out}"]),
                          ("features", [f"data_dir={out}", f"out={tmp_path / 'snap.parquet'}",
                                        f"examples={tmp_path / 'ex.parquet'}"])):
        args = [mlflow, "run", str(root), "-e", entry, "--env-manager", "local"]
        for p in params:
            args += ["-P", p]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "succeeded" in proc.stderr
    assert len(pd.read_parquet(tmp_path / "snap.parquet")) == 200


def test_mlflow_run_train_tune_report_and_promote(tmp_path):
    """`mlflow run . -e train | tune | report` on a clean store; promote with the CLI in between."""
    import os

    import mlflow as mlflow_api

    root = Path(__file__).parents[2]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NEXTBEST_HOME": str(tmp_path),
           "PATH": f"{BIN.parent}{os.pathsep}{os.environ['PATH']}", "MLFLOW_EXPERIMENT_NAME": "nextbest"}
    data = tmp_path / "data"
    run("data", "generate", "--customers", "1500", "--days", "30", "--seed", "4", "--out", str(data))

    def mlflow_run(entry, *params):
        args = [str(BIN.parent / "mlflow"), "run", str(root), "-e", entry, "--env-manager", "local"]
        for p in params:
            args += ["-P", p]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    mlflow_run("train", f"data_dir={data}")
    promote = subprocess.run([str(BIN), "promote", "1", "--note", "test"], capture_output=True, text=True,
                             env=env, cwd=tmp_path)
    assert promote.returncode == 0, promote.stderr[-2000:]
    assert "champion: version 1" in promote.stdout
    tuned = mlflow_run("tune", f"data_dir={data}", "trials=2", "timeout=300")
    progress = [line for line in tuned.stderr.splitlines() if "tuning: trial" in line]
    assert [p.split("tuning: ")[1].split(" ")[1] for p in progress] == ["1/2", "2/2"], tuned.stderr[-3000:]
    assert "best " in progress[-1]
    assert "params" in (tmp_path / "nextbest_params.json").read_text()
    mlflow_run("report", f"data_dir={data}", f"out={tmp_path / 'report'}")
    assert (tmp_path / "report" / "index.html").exists() and list((tmp_path / "report").glob("*.png"))
    mlflow_api.set_tracking_uri(uri)
    runs = mlflow_api.search_runs(search_all_experiments=True, output_format="list")
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(nested) == 2 and all("objective_log_loss" in r.data.metrics for r in nested)
    parent = next(r for r in runs if r.info.run_id == nested[0].data.tags["mlflow.parentRunId"])
    plot = Path(mlflow_api.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                        artifact_path="optimization_history.png",
                                                        dst_path=str(tmp_path / "plot")))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    # the README's `export MLFLOW_EXPERIMENT_NAME=nextbest`: every run in the project's experiment
    nextbest = mlflow_api.get_experiment_by_name("nextbest").experiment_id
    assert {r.info.experiment_id for r in runs} == {nextbest}
    models = subprocess.run([str(BIN), "models"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert models.returncode == 0 and "version 1" in models.stdout


def test_a_mlflow_run_outside_the_project_experiment_is_named_with_the_fix(tmp_path, monkeypatch, caplog):
    """`mlflow run` without an experiment makes its run in MLflow's Default: nextbest logs into it
    (it cannot move a run) and says how to keep the runs together."""
    from mlflow import MlflowClient

    from nextbest.decision import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    default = client.get_experiment_by_name("Default").experiment_id
    run_id = client.create_run(default).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    with caplog.at_level("WARNING", logger="nextbest.decision.registry"):
        assert registry.setup() == default
    assert "'Default', not 'nextbest'" in caplog.text and "MLFLOW_EXPERIMENT_NAME=nextbest" in caplog.text
    ours = client.create_experiment("nextbest")
    monkeypatch.setenv("MLFLOW_RUN_ID", client.create_run(ours).info.run_id)
    caplog.clear()
    with caplog.at_level("WARNING", logger="nextbest.decision.registry"):
        assert registry.setup() == ours
    assert not caplog.text


def test_train_without_a_decision_log_says_what_is_missing(tmp_path):
    data = tmp_path / "data"
    run("data", "generate", "--customers", "100", "--days", "5", "--out", str(data))
    (data / "logging_decisions.parquet").unlink()
    proc = run("train", str(data), check=False)
    assert proc.returncode == 2 and "logging_decisions" in proc.stderr
    # `data validate` says so before training is tried: valid, but neither a decision table nor long enough
    checked = run("data", "validate", str(data))
    assert "valid" in checked.stdout and "no `logging_decisions` table" in checked.stdout
    assert "too short for `nextbest train`" in checked.stdout and "training.warmup_days" in checked.stdout


def test_every_serve_demo_starts_from_a_fresh_state_unless_one_is_named(tmp_path):
    """A second `make demo` must not inherit the first one's caps (it would suppress everyone)."""
    import argparse

    from nextbest.cli_serve import demo_state

    args = argparse.Namespace(store=None, log_dir=None)
    env_a, env_b = {}, {}
    a, b = demo_state(args, env_a), demo_state(args, env_b)
    try:
        assert a != b and a.is_dir() and b.is_dir() and not any(a.iterdir())
        assert env_a["NEXTBEST_STORE_URL"] == f"sqlite:///{a / 'state.db'}" and env_a["NEXTBEST_LOG_DIR"] == str(a / "log")
        assert env_b["NEXTBEST_STORE_URL"] != env_a["NEXTBEST_STORE_URL"]
    finally:
        shutil.rmtree(a), shutil.rmtree(b)
    named = {}
    assert demo_state(argparse.Namespace(store="redis://localhost:6379/0", log_dir=None), named) is None
    assert named == {}


def test_help_names_every_default():
    out = run("data", "generate", "--help").stdout
    assert "--days DAYS           default: 90" in out and "default: 0" in out  # --seed 0 too
    assert "(default: " in run("tune", "--help").stdout
