"""The served log as training data: export as of a time, validate, retrain (issue 14, point 2).

A project of its own (its registry gains a version here, which must not hot-swap the shared
project's servers): 800 simulated customers x 30 days ending the day of the served decisions,
a champion, and a real server. Decisions are taken two days ago at 09:30 UTC; their sends are
planned over the next 24 hours, so an export as of a time in that window must leave out the
sends not yet due (and the feedback dated later), and a later export must bring them in.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

# this directory's conftest by path (``from conftest import`` finds whichever conftest pytest imported first)
_spec = importlib.util.spec_from_file_location("serving_conftest", Path(__file__).with_name("conftest.py"))
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
NEXTBEST, TEST_CONFIG, Project = _conftest.NEXTBEST, _conftest.TEST_CONFIG, _conftest.Project
_spec = importlib.util.spec_from_file_location("serving_waits", Path(__file__).with_name("serving_waits.py"))
_waits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_waits)

D = (datetime.now(timezone.utc) - timedelta(days=2)).replace(hour=9, minute=30, second=0, microsecond=0)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """Overrides the shared project for this module (``server_factory`` serves this one)."""
    p = Project(tmp_path_factory.mktemp("retrain_project"))
    p.config.write_text(yaml.safe_dump(TEST_CONFIG))
    p.run("data", "generate", "--customers", "800", "--days", "30", "--seed", "8", "--end", f"{D:%Y-%m-%d}",
          "--out", str(p.data))
    p.run("train", str(p.data), "--promote")
    return p


def _table(path, name) -> pd.DataFrame:
    return pd.read_parquet(path / f"{name}.parquet")


def _validate(project, data_dir, now=None):
    """The data contract's checks (``nextbest.features.validate``) as of ``now``; the list of problems."""
    from nextbest.features.config import load_config
    from nextbest.features.validate import validate

    return validate(_table(data_dir, "customers"), _table(data_dir, "events"), load_config(project.config), now=now)


def test_export_as_of_a_time_then_later_then_retrain(project, server_factory, tmp_path):
    server = server_factory()
    ids = pd.read_parquet(project.data / "customers.parquet")["customer_id"].astype(str).tolist()[:40]
    r = server.post("/v1/decide/batch", {"requests": [{"customer_id": c, "now": D.isoformat(), "horizon_hours": 24,
                                                       "request_id": f"export-{c}"} for c in ids]})
    assert r.status_code == 200, r.text
    decisions = r.json()["decisions"]
    sends = sorted((d for d in decisions if d["action"] == "send"), key=lambda d: d["send_at"])
    at = {d["decision_id"]: pd.Timestamp(d["send_at"]) for d in sends}
    times = sorted(set(at.values()))
    assert len(times) >= 2, "the sends should be planned at different times"
    k = len(times) // 2
    as_of = times[k - 1] + (times[k] - times[k - 1]) / 2  # some sends due by then, some planned later
    due = {i for i, t in at.items() if t <= as_of}
    planned = set(at) - due
    assert due and planned

    late = pd.Timestamp(D) + pd.Timedelta(hours=20)  # an order dated after the first export time
    assert late > as_of and at[sends[0]["decision_id"]] <= late
    for d in sends:
        body = {"decision_id": d["decision_id"], "customer_id": d["customer_id"], "event": "opened", "ts": (at[d["decision_id"]] + pd.Timedelta(hours=1))
                .isoformat()}
        assert server.post("/v1/feedback", body).status_code == 200
    body = {"decision_id": sends[0]["decision_id"], "customer_id": sends[0]["customer_id"], "event": "converted", "ts": late.isoformat(), "value": 80.0}
    assert server.post("/v1/feedback", body).status_code == 200

    first, second = tmp_path / "as_of", tmp_path / "now"
    project.run("log", "export", str(project.data), "--log-dir", str(server.log_dir), "--out", str(first),
                "--as-of", as_of.isoformat())
    project.run("data", "validate", str(first))  # with the clock's now
    assert _validate(project, first, now=as_of) == []  # and as of the export time: nothing after it
    logged, events = _table(first, "logging_decisions"), _table(first, "events")
    served = set(logged["message_id"]) & {d["decision_id"] for d in decisions}
    assert served == {d["decision_id"] for d in decisions} - planned  # suppressions and due sends only
    mine = events[events["message_id"].isin(set(at))]
    assert set(mine.loc[mine["event"] == "sent", "message_id"]) == due
    assert not (events["ts"] > as_of).any()
    assert not ((mine["event"] == "converted").any())  # dated after the export time: it waits

    project.run("log", "export", str(project.data), "--log-dir", str(server.log_dir), "--out", str(second))
    project.run("data", "validate", str(second))
    logged, events = _table(second, "logging_decisions"), _table(second, "events")
    assert {d["decision_id"] for d in decisions} <= set(logged["message_id"])
    mine = events[events["message_id"].isin(set(at))]
    assert set(mine.loc[mine["event"] == "sent", "message_id"]) == set(at)  # now due: they appear
    assert (mine["event"] == "opened").sum() == len(sends) and (mine["event"] == "converted").sum() == 1
    # refused: an export cannot hold what has not happened yet
    res = subprocess.run([NEXTBEST, "--config", str(project.config), "log", "export", str(project.data),
                          "--log-dir", str(server.log_dir), "--out", str(tmp_path / "future"),
                          "--as-of", (pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)).isoformat()],
                         env=project.env, capture_output=True, text=True)
    assert res.returncode == 2 and "later than the clock" in res.stderr

    out = project.run("retrain", str(project.data), "--log", str(server.log_dir), "--out", str(tmp_path / "retrain"))
    assert "candidate: nextbest version 2" in out.stdout and "paired DR on 40 served decisions" in out.stdout
    uri = project.env["MLFLOW_TRACKING_URI"]  # the registry too: MLflow keeps another test's registry URI in module state
    tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("nextbest", "2").tags
    assert tags["retrain_champion_version"] == "1" and tags["retrain_rounds"] == "40"
    assert tags["retrain_estimator"] == "dr" and tags["retrain_days"] == "1"
    low, gain, high = (float(tags[f"retrain_gain{s}"]) for s in ("_low", "", "_high"))
    assert low <= gain <= high
    assert tags["retrain_gate"] == "dr,snips"  # the default gate: both lower bounds above the required gain
    promoted = min(low, float(tags["retrain_snips_gain_low"])) > float(tags["retrain_min_gain"])
    assert tags["retrain_decision"] == ("promoted" if promoted else "kept champion")
    assert tags["retrain_reason"] in out.stdout
    models = project.run("models").stdout
    assert ("version 2  (was 1)" in models) == promoted

    # the same retrain, run by the service itself on its schedule (retrain.schedule_hours)
    server.kill()
    config = yaml.safe_load(project.config.read_text())
    config["retrain"] = {**config.get("retrain", {}), "schedule_hours": 0.003}  # 10.8-second periods
    project.config.write_text(yaml.safe_dump(config))
    scheduled = server_factory(workdir=tmp_path)  # the same store and decision log
    pattern = re.compile(r'^nextbest_retrains_total\{outcome="(\w+)"\} 1\.0$', re.M)
    outcome = _waits.poll(lambda: (m := pattern.search(scheduled.get("/metrics").text)) and m.group(1),
                          timeout=400, every=1.0)
    assert outcome in ("promoted", "kept"), (outcome, scheduled.log_tail())
    tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("nextbest", "3").tags
    assert tags["retrain_log_dir"] == str(server.log_dir.resolve()) and tags["retrain_rounds"] == "40"
    assert tags["retrain_decision"] == ("promoted" if outcome == "promoted" else "kept champion")
    logs = sorted((project.home / "retrain").glob("scheduled-*.log"))  # the first run's comes first
    assert logs and f"decision: {tags['retrain_decision']}" in logs[0].read_text()
    assert (project.home / "retrain" / logs[0].stem / "events.parquet").exists()  # its export
    if outcome == "promoted":  # the hot swap brings it to the running service
        body = {"customer_id": ids[0], "now": D.isoformat()}
        assert _waits.poll(lambda: scheduled.post("/v1/decide", {**body, "request_id": f"swap-{time.monotonic()}"})
                           .json().get("policy_version") == "nextbest/3", timeout=60, every=0.5)
