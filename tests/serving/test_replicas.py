"""Two ``nextbest serve`` replicas on different ports sharing one Redis and one decision log
directory (README "Scaling out"): caps hold across them, feedback works sent to either, and both
serve a new champion after a promotion."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from nextbest.decision.objective import channel_costs
from nextbest.features.config import load_config
from nextbest.serving.decision_log import read_records
from nextbest.serving.records import DecisionRecord
from nextbest.serving.store import open_store
from serving_waits import poll

# yesterday 10:15 UTC: within serving.max_clock_skew_days of the clock
NOW = (datetime.now(timezone.utc) - timedelta(days=1)).replace(hour=10, minute=15, second=0, microsecond=0)


@pytest.fixture
def replicas(server_factory, redis_db, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    return server_factory(store_url=redis_db, workdir=shared), server_factory(store_url=redis_db, workdir=shared)


def test_caps_hold_and_feedback_counts_across_two_replicas(replicas, redis_db, project):
    a, b = replicas
    assert a.port != b.port and a.log_dir == b.log_dir
    cfg = load_config(project.config)
    people = pd.read_parquet(project.data / "customers.parquet")
    full = people[people[[f"consent_{c}" for c in cfg.channel_names]].all(axis=1)]["customer_id"].astype(str).tolist()
    ids = full[10:16]

    def decide(i):
        server = (a, b)[i % 2]
        r = server.post("/v1/decide", {"customer_id": ids[i % len(ids)], "now": NOW.isoformat(),
                                       "request_id": f"replicas-{i}"})
        assert r.status_code == 200, r.text
        return server, r.json()

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(decide, range(240)))
    sends = pd.DataFrame([d for _, d in answers if d["action"] == "send"])
    assert len(sends) >= len(ids), "each customer got at least its first message"
    rules = cfg.contact_rules
    for cid, g in sends.groupby("customer_id"):  # every send at NOW, 24 h horizon: one day each
        assert len(g) <= rules.max_per_day, g
        for c, n in g["channel"].value_counts().items():
            assert n <= cfg.channels[c].cap_per_day, g
        at = pd.to_datetime(g["send_at"], format="ISO8601").sort_values()
        assert (at.diff().dropna() >= pd.Timedelta(hours=rules.min_hours_between)).all(), g
    logged = {r["decision_id"] for r in read_records(a.log_dir, "decisions")}
    assert {d["decision_id"] for _, d in answers} <= logged

    # feedback to the replica that did not decide: accepted, logged once, in the shared record
    costs = dict(zip(cfg.channel_names, channel_costs(cfg)))
    for server, d in [x for x in answers if x[1]["action"] == "send"][:4]:
        other = b if server is a else a
        r = other.post("/v1/feedback", {"decision_id": d["decision_id"], "customer_id": d["customer_id"],
                                        "event": "converted", "value": 80.0, "ts": d["send_at"]})
        assert r.status_code == 200 and r.json()["accepted"], r.text
        again = server.post("/v1/feedback", {"decision_id": d["decision_id"], "customer_id": d["customer_id"],
                                             "event": "converted", "value": 80.0, "ts": d["send_at"]})
        assert again.status_code == 200 and not again.json()["accepted"]  # the first replica knows it was counted
        rec = DecisionRecord.from_json(open_store(redis_db).get("decision", d["decision_id"]))
        assert rec.reward == pytest.approx(-costs[d["channel"]] + r.json()["reward"])


def test_both_replicas_serve_a_new_champion(replicas, project, customers):
    a, b = replicas
    script = ("from mlflow import MlflowClient; c = MlflowClient(); v = c.get_model_version_by_alias('nextbest', "
              "'champion'); n = c.create_model_version('nextbest', source=v.source, run_id=v.run_id); "
              "print(v.version, n.version)")
    out = subprocess.run([sys.executable, "-c", script], env=project.env, capture_output=True, text=True, check=True)
    old_v, new_v = out.stdout.split()[-2:]
    ids = customers(40, offset=300)

    def version(server, i):
        r = server.post("/v1/decide", {"customer_id": ids[i % len(ids)]})
        assert r.status_code == 200, r.text
        return r.json()["policy_version"]

    assert version(a, 0) == version(b, 1) == f"nextbest/{old_v}"
    project.run("promote", new_v, "--force", "--note", "replicas test")
    try:
        for k, server in enumerate((a, b)):
            assert poll(lambda: version(server, k) == f"nextbest/{new_v}", timeout=60), f"replica {k} kept {old_v}"
    finally:
        project.run("promote", old_v, "--force", "--note", "back after the replicas test")
