"""The engine without HTTP (batch = one by one), the decision log as data, and the OpenAPI contract."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from nextbest.serving.decision_log import DecisionLog, read_log, read_records
from nextbest.serving.engine import Engine
from nextbest.serving.schemas import DecideRequest, FeedbackRequest
from nextbest.serving.settings import ServeSettings

# two days ago at 09:30 UTC (requests must be within serving.max_clock_skew_days of the clock)
DAY = (datetime.now(timezone.utc) - timedelta(days=2)).replace(hour=9, minute=30, second=0, microsecond=0)


@pytest.fixture(scope="module")
def engines(project, tmp_path_factory, monkeypatch_module=None):
    """Two engines on separate stores and logs, with the project's champion."""
    import os

    from nextbest.decision import registry

    old = {k: os.environ.get(k) for k in ("NEXTBEST_HOME", "MLFLOW_TRACKING_URI")}
    os.environ.update({k: project.env[k] for k in old})
    try:
        policy = registry.load_champion()
        out = []
        for name in ("one", "two"):
            d = tmp_path_factory.mktemp(f"engine_{name}")
            env = {**project.env, "NEXTBEST_DATA_DIR": str(project.data), "NEXTBEST_CONFIG": str(project.config),
                   "NEXTBEST_STORE_URL": f"sqlite:///{d / 'state.db'}", "NEXTBEST_LOG_DIR": str(d / "log")}
            out.append(Engine(ServeSettings.from_env(env), policy=policy))
        yield out
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_a_batch_gets_the_same_answers_as_one_by_one(engines, customers):
    one, two = engines
    ids = customers(120, offset=50)
    reqs = [DecideRequest(customer_id=c, now=DAY, request_id=f"same-{c}", horizon_hours=18,
                          context={"trigger": "browse"}) for c in ids]
    reqs.append(DecideRequest(customer_id="someone-new", now=DAY, request_id="same-new",
                              profile={"consent": {"email": True}}))
    batch = two.decide(reqs)
    singles = [one.decide([r])[0] for r in reqs]
    # decision ids are 128 random bits each (unguessable); everything else is the same
    assert [{**d, "decision_id": None} for d in batch] == [{**d, "decision_id": None} for d in singles]
    assert len({d["decision_id"] for d in batch + singles}) == 2 * len(reqs)
    assert sum(d["action"] == "send" for d in batch) > 20 and sum(d["explored"] for d in batch) >= 1


def test_the_same_customer_twice_in_a_batch_sees_its_first_send(engines, customers):
    _, two = engines
    cid = customers(1, offset=300)[0]
    out = two.decide([DecideRequest(customer_id=cid, now=DAY + timedelta(days=1), horizon_hours=24)] * 6)
    sends = [d for d in out if d["action"] == "send"]
    assert len(sends) <= 2 and len(out) == 6


def test_the_log_exports_as_a_data_directory_training_reads(engines, project, customers, tmp_path):
    one, _ = engines
    out = one.decide([DecideRequest(customer_id=c, now=DAY + timedelta(days=1, hours=1)) for c in customers(200, offset=500)])
    from nextbest.serving.engine import InvalidInput

    for d in out[:50]:
        if d["action"] == "send":
            sent = datetime.fromisoformat(d["send_at"].replace("Z", "+00:00"))
            with pytest.raises(InvalidInput, match="before the message went out"):
                one.feedback(FeedbackRequest(decision_id=d["decision_id"], customer_id=d["customer_id"], event="opened", ts=sent - timedelta(minutes=5)))
            one.feedback(FeedbackRequest(decision_id=d["decision_id"], customer_id=d["customer_id"], event="opened", ts=sent + timedelta(hours=1)))
    decisions, events = read_log(one.settings.log_dir)
    assert {"customer_id", "ts", "action", "channel", "local_hour", "offer", "propensity", "message_id"} <= set(decisions)
    assert len(events[events["event"] == "sent"]) == (decisions["action"] == "send").sum()
    assert (events["event"] == "opened").any()
    dest = tmp_path / "exported"
    res = subprocess.run([str(Path(sys.executable).parent / "nextbest"), "log", "export", str(project.data),
                          "--log-dir", one.settings.log_dir, "--out", str(dest)], env=project.env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([str(Path(sys.executable).parent / "nextbest"), "data", "validate", str(dest)],
                         env=project.env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path):
    log = DecisionLog(tmp_path, fsync=False)
    log.append("decisions", [{"decision_id": "a"}, {"decision_id": "b"}])
    log.close()
    path = next(tmp_path.glob("*/decisions-*.jsonl"))
    with open(path, "ab") as f:
        f.write(b'{"decision_id": "c", "cu')
    assert [r["decision_id"] for r in read_records(tmp_path, "decisions")] == ["a", "b"]


def test_the_reward_recorded_for_feedback_is_the_realized_profit(engines, customers):
    """The service's running reward of a decision (its record in the store) after an order and an
    unsubscribe equals ``decision.objective.realized_profit`` of those outcomes."""
    from nextbest.decision.objective import realized_profit
    from nextbest.serving.records import DecisionRecord

    one, _ = engines
    out = one.decide([DecideRequest(customer_id=c, now=DAY + timedelta(days=1, hours=3))
                      for c in customers(100, offset=900)])
    d = next(x for x in out if x["action"] == "send" and x["offer"] not in (None, "none"))
    sent = datetime.fromisoformat(d["send_at"].replace("Z", "+00:00"))
    for event, value, hours in (("opened", None, 1), ("converted", 100.0, 2), ("unsubscribed", None, 3)):
        one.feedback(FeedbackRequest(decision_id=d["decision_id"], customer_id=d["customer_id"], event=event, value=value,
                                     ts=sent + timedelta(hours=hours)))
    cfg = one.config
    want = realized_profit(cfg, [cfg.channel_names.index(d["channel"])], [cfg.offer_names.index(d["offer"])],
                           [100.0], [True], [True])[0]
    assert DecisionRecord.from_json(one.store.get("decision", d["decision_id"])).reward == pytest.approx(want)


def test_feedback_does_not_shorten_a_followed_up_decisions_keep_time(engines, customers):
    """A decision whose follow-up falls due after the attribution window keeps its record until the
    follow-up is no longer listed, also after feedback rewrote it (else ``GET /v1/due`` would skip it
    as erased)."""
    import sqlite3

    from nextbest.serving import followups
    from nextbest.serving.records import keep_seconds

    _, two = engines
    hours = followups.MAX_FOLLOW_UP_HOURS
    now = DAY + timedelta(days=1, hours=3)
    out = two.decide([DecideRequest(customer_id=c, now=now, follow_up_hours=hours) for c in customers(100, offset=1000)])
    d = next(x for x in out if x["action"] == "send")
    due_s = datetime.fromisoformat(d["follow_up_at"].replace("Z", "+00:00")).timestamp()
    keep_s = keep_seconds(two.config, two.policy.online)
    assert due_s - now.timestamp() > keep_s  # the case: the follow-up outlives the attribution window

    def expires():
        with sqlite3.connect(two.settings.store_url.removeprefix("sqlite:///")) as db:
            return db.execute("SELECT expires FROM kv WHERE ns='decision' AND key=?", (d["decision_id"],)).fetchone()[0]

    assert expires() >= due_s + followups.KEEP_S - 5
    sent = datetime.fromisoformat(d["send_at"].replace("Z", "+00:00"))
    r = two.feedback(FeedbackRequest(decision_id=d["decision_id"], customer_id=d["customer_id"], event="delivered",
                                     ts=sent + timedelta(minutes=1)))
    assert r["accepted"]
    assert expires() >= due_s + followups.KEEP_S - 5
