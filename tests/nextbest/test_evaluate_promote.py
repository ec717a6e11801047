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

    # what if SMS were switched off? The champion replayed under both rules, logged to MLflow
    (tmp_path / "no_sms.yaml").write_text("channels:\n  email: {cost: 0.002, quiet_hours: {start: 22, end: 7}, "
                                          "caps: {per_day: 1, per_week: 4}}\n  sms: {cost: 0.045, quiet_hours: "
                                          "{start: 21, end: 9}, caps: {per_day: 0, per_week: 0}}\n  push: {cost: "
                                          "0.0005, quiet_hours: {start: 22, end: 8}, caps: {per_day: 2, per_week: 6}}\n")
    nothing = nb("whatif", str(data))
    assert nothing.returncode != 0 and "--config new_rules.yaml" in nothing.stderr
    wi = nb("-q", "whatif", str(data), "--config", str(tmp_path / "no_sms.yaml"), "--days", "3", "--max-rounds",
            "3000", "--n-boot", "200")
    assert wi.returncode == 0, wi.stderr[-3000:]
    assert "messages on sms" in wi.stdout and "per 1,000 decisions" in wi.stdout and "The new rules would" in wi.stdout
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    run = next(r for r in runs if r.data.tags.get("kind") == "what-if")
    assert run.data.metrics["whatif_messages_on_sms_new"] == 0.0 and run.data.metrics["whatif_messages_on_sms_current"] > 0
    assert run.data.tags["mlflow.note.content"].startswith("**What if no_sms.yaml?**")
    files = {f.path for f in mlflow.MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id, "whatif")}
    assert {"whatif/whatif.html", "whatif/whatif.png", "whatif/whatif.csv"} <= files

    # whom to ask for consent
    opt = nb("-q", "optin", str(data), "--channel", "sms", "--top", "5", "--out", str(tmp_path / "optin.csv"))
    assert opt.returncode == 0, opt.stderr[-3000:]
    table = pd.read_csv(tmp_path / "optin.csv")
    assert set(table["channel"]) == {"sms"} and table["gain"].is_monotonic_decreasing
    assert f"sms: {len(table):,} customers without consent" in opt.stdout
