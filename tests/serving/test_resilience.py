"""Killing the server, swapping the champion under traffic, and two workers racing on Redis."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import pandas as pd
import pytest

from nextbest.features.config import load_config
from nextbest.decision.objective import channel_costs
from nextbest.serving.decision_log import read_records
from nextbest.serving.records import DecisionRecord
from nextbest.serving.store import open_store
from serving_waits import ClientThreads, poll

# yesterday 09:30 UTC: requests may not be further than serving.max_clock_skew_days from the clock
NOW = (datetime.now(timezone.utc) - timedelta(days=1)).replace(hour=9, minute=30, second=0, microsecond=0)


class Traffic(ClientThreads):
    """Threads posting decisions (and feedback for the sends) until stopped; keeps what was acknowledged."""

    def __init__(self, server, ids, threads=4, fixed_now=True, feedback=True):
        self.server, self.ids, self.fixed_now, self.feedback = server, ids, fixed_now, feedback
        self.decisions: list[dict] = []
        self.feedbacks: list[tuple[str, str, str, float]] = []  # (decision_id, event, ts, reward) acknowledged
        self.failures: list[str] = []
        self._lock = threading.Lock()
        super().__init__(threads)

    def _post(self, client, path: str, body: dict) -> dict | None:
        """The answer, or None (the failure is kept)."""
        try:
            r = client.post(path, json=body)
        except httpx.HTTPError as exc:
            self.failures.append(f"{path}: {exc!r}")
            return None
        if r.status_code != 200:
            self.failures.append(f"{path} {r.status_code}: {r.text[:200]}")
            return None
        return r.json()

    def _run(self, k):
        # no keep-alive: every request is a new connection, so several workers share the load
        client = httpx.Client(base_url=self.server.url, timeout=30, headers=self.server.headers, limits=httpx.Limits(max_keepalive_connections=0))
        i = 0
        while not self._stop.is_set():
            i += 1
            body = {"customer_id": self.ids[(k * 7919 + i) % len(self.ids)], "request_id": f"t{k}-{i}-{time.time_ns()}"}
            if self.fixed_now:
                body["now"] = NOW.isoformat()
            d = self._post(client, "/v1/decide", body)
            if d is None:
                continue
            with self._lock:
                self.decisions.append(d)
            if not (self.feedback and d["action"] == "send"):
                continue
            for event, value in (("opened", None), ("converted", 40.0)):
                fb = {"decision_id": d["decision_id"], "customer_id": d["customer_id"], "event": event, "ts": (NOW + timedelta(hours=30)).isoformat(),
                      "value": value}
                answer = self._post(client, "/v1/feedback", fb)
                if answer is None:
                    break
                if answer["accepted"]:
                    with self._lock:
                        self.feedbacks.append((d["decision_id"], event, fb["ts"], answer["reward"]))


def test_kill_9_loses_no_acknowledged_decision_or_feedback(server_factory, customers, tmp_path):
    server = server_factory(workdir=tmp_path)
    with Traffic(server, customers(300)) as traffic:
        assert poll(lambda: len(traffic.decisions) > 40 and traffic.feedbacks, timeout=60)
        server.kill()  # SIGKILL to the whole process group, mid-traffic
    assert len(traffic.decisions) > 20 and traffic.feedbacks
    logged = {r["decision_id"] for r in read_records(server.log_dir, "decisions")}
    assert {d["decision_id"] for d in traffic.decisions} <= logged
    logged_fb = {(r["decision_id"], r["event"], r["ts"]) for r in read_records(server.log_dir, "feedback")}
    assert {f[:3] for f in traffic.feedbacks} <= {(d, e, datetime.fromisoformat(t).isoformat()) for d, e, t in logged_fb}

    restarted = server_factory(workdir=tmp_path)  # same store and log
    last = traffic.decisions[-1]
    again = restarted.post("/v1/decide", {"customer_id": last["customer_id"], "request_id": last["request_id"]}).json()
    assert again == last  # the idempotency key survived
    d, event, ts, _ = traffic.feedbacks[-1]
    cid = next(x["customer_id"] for x in traffic.decisions if x["decision_id"] == d)
    assert restarted.post("/v1/feedback", {"decision_id": d, "customer_id": cid, "event": event, "ts": ts,
                                           "value": 40.0 if event == "converted" else None}).json()["accepted"] is False
    sent = [x for x in traffic.decisions if x["action"] == "send"]
    r = restarted.post("/v1/feedback", {"decision_id": sent[0]["decision_id"], "customer_id": sent[0]["customer_id"],
                                        "event": "clicked",
                                        "ts": (NOW + timedelta(hours=31)).isoformat()})
    assert r.status_code == 200 and r.json()["accepted"]


def test_hot_swap_under_traffic_fails_no_request(server_factory, project, customers, tmp_path):
    import subprocess
    import sys

    server = server_factory(workdir=tmp_path)
    # a second version with the champion's artifacts (MLflow resolves them through its global URI,
    # so register in a process with the project's environment)
    script = ("from mlflow import MlflowClient; c = MlflowClient(); v = c.get_model_version_by_alias('nextbest', "
              "'champion'); n = c.create_model_version('nextbest', source=v.source, run_id=v.run_id); "
              "print(v.version, n.version)")
    out = subprocess.run([sys.executable, "-c", script], env=project.env, capture_output=True, text=True, check=True)
    old_v, new_v = out.stdout.split()[-2:]
    champion, new = type("V", (), {"version": old_v}), type("V", (), {"version": new_v})
    swapped_to = f"nextbest/{new.version}"
    with Traffic(server, customers(500), threads=3, fixed_now=False, feedback=False) as traffic:
        assert poll(lambda: len(traffic.decisions) >= 20, timeout=60)  # traffic on the old version first
        project.run("promote", str(new.version), "--force", "--note", "hot swap test")
        assert poll(lambda: any(d["policy_version"] == swapped_to for d in traffic.decisions[-20:]), timeout=60)
        swapped_at = len(traffic.decisions)
        assert poll(lambda: len(traffic.decisions) >= swapped_at + 20, timeout=60)  # and traffic after it
    try:
        assert traffic.failures == []
        versions = [d["policy_version"] for d in traffic.decisions]
        old, swapped = f"nextbest/{champion.version}", f"nextbest/{new.version}"
        assert versions[0] == old and versions[-1] == swapped
        logged = {r["policy_version"] for r in read_records(server.log_dir, "decisions")}
        assert {old, swapped} <= logged
        assert f'nextbest_policy_version{{version="{swapped}"}} 1.0' in server.get("/metrics").text
    finally:
        project.run("promote", str(champion.version), "--force", "--note", "back after the hot swap test")


def test_a_new_export_loads_into_the_running_service_under_traffic(server_factory, project, customers, tmp_path):
    """A new export of the data directory is served without a restart and without a failed request;
    a bad export is refused and the running snapshot stays."""
    import os
    import shutil

    data = tmp_path / "data"
    shutil.copytree(project.data, data)
    server = server_factory(workdir=tmp_path, data_dir=data)
    newcomer = "customer-added-by-the-new-export"

    def known() -> bool:
        r = server.post("/v1/decide", {"customer_id": newcomer})
        assert r.status_code == 200, r.text
        return r.json()["known_customer"]

    assert not known()
    people = pd.read_parquet(data / "customers.parquet")
    added = pd.concat([people, people.iloc[[0]].assign(customer_id=newcomer)], ignore_index=True)
    with Traffic(server, customers(300), threads=2, fixed_now=False, feedback=False) as traffic:
        before = poll(lambda: len(traffic.decisions) >= 20, timeout=60)
        added.to_parquet(tmp_path / "customers.parquet.tmp")
        os.replace(tmp_path / "customers.parquet.tmp", data / "customers.parquet")  # how an export should land
        reloaded = poll(known, timeout=90, every=0.5)
        after = len(traffic.decisions)
        poll(lambda: len(traffic.decisions) >= after + 20, timeout=60)
    assert before and reloaded, server.log_tail()
    assert traffic.failures == []
    assert f"snapshot reloaded: {len(added)} customers" in server.log_tail(200_000)

    # an export that breaks the data contract is refused, and the service keeps the last good one
    events = pd.read_parquet(data / "events.parquet")
    bad = events.copy()
    bad.loc[bad.index[0], "channel"] = "carrier-pigeon"
    bad.to_parquet(tmp_path / "events.parquet.tmp")
    os.replace(tmp_path / "events.parquet.tmp", data / "events.parquet")
    assert poll(lambda: "new export cannot be served" in server.log_tail(200_000), timeout=90, every=0.5), \
        server.log_tail()
    assert known()
    assert server.get("/readyz").status_code == 200


def test_two_workers_on_redis_keep_caps_and_lose_no_feedback(server_factory, redis_db, project, customers):
    cfg = load_config()
    people = pd.read_parquet(project.data / "customers.parquet")
    full = people[people[[f"consent_{c}" for c in cfg.channel_names]].all(axis=1)]["customer_id"].astype(str).tolist()
    ids = full[:6]
    server = server_factory(store_url=redis_db, workers=2)
    with Traffic(server, ids, threads=8) as traffic:
        time.sleep(12)
    assert traffic.failures == []
    records = read_records(server.log_dir, "decisions")
    assert len({r["decision_id"] for r in records}) == len(traffic.decisions) > 100
    workers = {p.name.split("-")[1] for p in server.log_dir.glob("*/decisions-*.jsonl")}
    assert len(workers) == 2, "both workers decided"
    # every decision was at NOW with a 24 h horizon: each customer's sends all fall in one day
    sends = pd.DataFrame([r for r in records if r["action"] == "send"])
    rules = cfg.contact_rules
    for cid, g in sends.groupby("customer_id"):
        assert len(g) <= rules.max_per_day, g
        for c, n in g["channel"].value_counts().items():
            assert n <= cfg.channels[c].cap_per_day
        at = pd.to_datetime(g["send_at"], format="ISO8601").sort_values()
        assert (at.diff().dropna() >= pd.Timedelta(hours=rules.min_hours_between)).all()
    # no lost feedback: every acknowledged event is logged and in its decision's reward
    logged = {(r["decision_id"], r["event"]) for r in read_records(server.log_dir, "feedback")}
    assert {(d, e) for d, e, _, _ in traffic.feedbacks} <= logged
    store = open_store(redis_db)
    costs = dict(zip(cfg.channel_names, channel_costs(cfg)))
    by_decision: dict[str, float] = {}
    for d, _, _, reward in traffic.feedbacks:
        by_decision[d] = by_decision.get(d, 0.0) + reward
    for d in (x for x in traffic.decisions if x["action"] == "send"):
        rec = DecisionRecord.from_json(store.get("decision", d["decision_id"]))
        assert rec.reward == pytest.approx(-costs[d["channel"]] + by_decision.get(d["decision_id"], 0.0))


def test_the_service_snapshot_reads_csv_as_it_reads_parquet(project, tmp_path):
    """`nextbest serve` on a CSV data directory crash-looped (``'str' object has no attribute
    'ceil'``): the snapshot reads CSV and Parquet alike, through the training code's checks."""
    from nextbest.serving.snapshot import Snapshot

    for fmt in ("csv", "parquet"):
        project.run("data", "generate", "--customers", "200", "--days", "15", "--seed", "4", "--format", fmt,
                    "--out", str(tmp_path / fmt))
    cfg = load_config(project.config)
    from_csv, from_parquet = Snapshot(str(tmp_path / "csv"), cfg), Snapshot(str(tmp_path / "parquet"), cfg)
    assert from_csv.as_of == from_parquet.as_of
    pd.testing.assert_frame_equal(from_csv.frame, from_parquet.frame, check_dtype=False, check_categorical=False)
    some = str(from_parquet.index[0])
    assert from_csv.contact_state(some) == from_parquet.contact_state(some)
