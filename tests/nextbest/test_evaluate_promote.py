"""`nextbest evaluate` and the promotion gate, through the CLI on a real SQLite MLflow store."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd

BIN = Path(sys.executable).parent / "nextbest"


def test_evaluate_logs_to_mlflow_and_promote_refuses_without_a_passing_gate(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NEXTBEST_HOME": str(tmp_path)}

    def nb(*args):
        return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)

    data = tmp_path / "data"
    assert nb("data", "generate", "--customers", "1500", "--days", "30", "--seed", "4", "--out", str(data)).returncode == 0
    first = nb("-q", "train", str(data), "--promote")
    assert first.returncode == 0 and "champion: version 1" in first.stdout, first.stderr[-2000:]
    shown = nb("-q", "decide", str(data), "--customers", "3")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "decisions of nextbest/1" in shown.stdout and "propensity" in shown.stdout
    assert shown.stdout.count("\nc000000") == 3 and "  - " in shown.stdout   # every customer with its reasons
    second = nb("-q", "train", str(data), "--seed", "1", "--no-tuned", "--promote")
    assert second.returncode == 0 and "not promoted" in second.stdout     # a champion exists: the gate applies
    refused = nb("promote", "2")
    assert refused.returncode == 2 and "nextbest evaluate" in refused.stderr

    ev = nb("evaluate", str(data), "--version", "2", "--days", "3", "--max-rounds", "3000", "--n-boot", "200")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "v2" in ev.stdout and "v1" in ev.stdout and "dr" in ev.stdout
    passed = "passes the promotion gate" in ev.stdout
    assert passed or "fails the promotion gate" in ev.stdout
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    ope = [r for r in runs if r.data.tags.get("kind") == "off-policy evaluation"]
    assert len(ope) == 1 and "ope_candidate_dr_ci_low" in ope[0].data.metrics
    assert ope[0].data.tags["gate"] == ("passed" if passed else "failed")
    version = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("nextbest", "2")
    assert version.tags["ope_champion_version"] == "1"
    low, champ = float(version.tags["ope_dr_low"]), float(version.tags["ope_champion_dr_value"])
    assert passed == (low >= champ)

    promote = nb("promote", "2")
    if passed:
        assert promote.returncode == 0 and "champion: version 2" in promote.stdout
    else:
        assert promote.returncode == 2 and "lower 95% bound" in promote.stderr
        forced = nb("promote", "2", "--force", "--note", "test override")
        assert forced.returncode == 0 and "champion: version 2" in forced.stdout
        history = nb("models").stdout
        assert "forced past the off-policy gate" in history
