"""``POST /v1/render`` over HTTP: the offer a message shows when it is opened is the best one valid
then; the reward of its orders counts the offer shown; bad renders are refused naming the field."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from nextbest.decision.online import OnlineSettings, event_reward
from nextbest.serving.decision_log import read_records
from nextbest.serving.rebuild import rebuild
from nextbest.serving.records import DecisionRecord
from nextbest.serving.snapshot import Snapshot
from nextbest.serving.store import open_store

CLOCK = datetime.now(timezone.utc).replace(microsecond=0)


def _send(server, ids, **ask):
    """The first marketing send among ``ids`` decided a day ago with ``ask``."""
    for cid in ids:
        r = server.post("/v1/decide", {"customer_id": cid, "now": (CLOCK - timedelta(days=2)).isoformat(), **ask})
        assert r.status_code == 200, r.text
        if r.json()["action"] == "send":
            return r.json()
    pytest.fail(f"no send among {len(ids)} customers for {ask}")


def _at_local_hour(send_at: str, tz: str, hour: int, after_h: float = 0.0) -> datetime:
    """The first time at least ``after_h`` hours after ``send_at`` whose local hour is ``hour``."""
    t = datetime.fromisoformat(send_at.replace("Z", "+00:00")) + timedelta(hours=after_h, minutes=1)
    while t.astimezone(ZoneInfo(tz)).hour != hour:
        t += timedelta(minutes=30)
    return t


def test_an_offer_no_longer_valid_at_open_time_becomes_the_best_valid_one(server, customers, people, cfg, project,
                                                                          tmp_path):
    d = _send(server, customers(80, offset=500), channels=["email"], offers=["pct20"])
    assert d["offer"] == "pct20" and d["channel"] == "email"
    tz = str(people.loc[d["customer_id"], "timezone"])
    ask = {"message_id": d["decision_id"], "customer_id": d["customer_id"]}

    late = _at_local_hour(d["send_at"], tz, 22)  # pct20 holds from 8 to 20 local
    r = server.post("/v1/render", {**ask, "now": late.isoformat()})
    assert r.status_code == 200, r.text
    night = r.json()
    assert night["local_hour"] == 22 and night["channel"] == "email" and night["changed"]
    assert night["offer"] != "pct20" and night["offer"] is not None
    offer = cfg.offers[night["offer"]]
    assert "email" in offer.channels and offer.valid_hours.contains(22)
    expected_end = None if offer.valid_for_hours is None else late + timedelta(hours=offer.valid_for_hours)
    got_end = night["offer_expires_at"] and datetime.fromisoformat(night["offer_expires_at"].replace("Z", "+00:00"))
    assert got_end == expected_end
    assert any("pct20" in why for why in night["reasons"])

    # an order after that open counts the cost of the offer shown, not of the offer decided
    fb = server.post("/v1/feedback", {"decision_id": d["decision_id"], "customer_id": d["customer_id"],
                                      "event": "converted", "value": 100.0,
                                      "ts": (late + timedelta(minutes=5)).isoformat()})
    assert fb.status_code == 200, fb.text
    shown = night["offer"]
    assert fb.json()["reward"] == pytest.approx(event_reward(cfg, "email", shown, "converted", 100.0,
                                                             redeems=shown != "none"))
    assert fb.json()["reward"] != pytest.approx(event_reward(cfg, "email", "pct20", "converted", 100.0))

    # by day, within its 48 hours, pct20 may be shown again; once it has run out it may not
    day = server.post("/v1/render", {**ask, "now": _at_local_hour(d["send_at"], tz, 12).isoformat()}).json()
    assert cfg.offers[day["offer"]].valid_hours.contains(12)
    if day["offer"] == "pct20":
        assert not day["changed"] and day["offer_expires_at"] == d["offer_expires_at"]
    gone = server.post("/v1/render", {**ask, "now": _at_local_hour(d["send_at"], tz, 12, after_h=48).isoformat()})
    assert gone.status_code == 200, gone.text
    assert gone.json()["offer"] != "pct20" and gone.json()["changed"]
    assert any("run out" in why for why in gone.json()["reasons"])

    rows = [x for x in read_records(server.log_dir, "renders") if x["decision_id"] == d["decision_id"]]
    assert [x["offer"] for x in rows] == [night["offer"], day["offer"], gone.json()["offer"]]
    assert all(x["decided_offer"] == "pct20" for x in rows)
    # a store rebuilt from the log keeps the offer shown (later orders count its cost)
    store = open_store(f"sqlite:///{tmp_path / 'rebuilt.db'}")
    rebuild(store, server.log_dir, Snapshot(project.data, cfg), cfg, OnlineSettings.from_config(cfg))
    rec = DecisionRecord.from_json(store.get("decision", d["decision_id"]))
    assert rec.offer == "pct20" and rec.rendered == gone.json()["offer"]


def test_bad_renders_are_refused_naming_the_field(server, customers):
    d = _send(server, customers(80, offset=600))
    ask = {"message_id": d["decision_id"], "customer_id": d["customer_id"]}
    after = (datetime.fromisoformat(d["send_at"].replace("Z", "+00:00")) + timedelta(hours=1)).isoformat()
    before = (datetime.fromisoformat(d["send_at"].replace("Z", "+00:00")) - timedelta(minutes=1)).isoformat()

    def refused(body, status, field, key="all"):
        r = server.post("/v1/render", body, key=key)
        assert r.status_code == status, r.text
        if field is not None:
            assert r.json()["field"] == field, r.text

    refused({**ask, "message_id": "no-such-message"}, 404, None)
    refused({**ask, "customer_id": "someone-else", "now": after}, 400, "customer_id")
    refused({**ask, "now": before}, 400, "now")
    refused({**ask, "now": (CLOCK + timedelta(days=60)).isoformat()}, 400, "now")
    refused({**ask, "now": after}, 403, None, key="feedback")
    t = server.post("/v1/decide", {"customer_id": d["customer_id"], "type": "transactional"}).json()
    refused({"message_id": t["decision_id"], "customer_id": d["customer_id"]}, 400, "message_id")
    refused({**ask, "now": after, "extra": 1}, 400, None)
    assert server.post("/v1/render", {**ask, "now": after}).status_code == 200
