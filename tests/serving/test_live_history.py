"""Engagement histories kept live in the service (issue 16): after real decisions, feedback and
other senders' events over HTTP, the features the service decides on equal, feature by feature,
a batch snapshot of the exported data (``nextbest log export``) taken as of the same time; the
store rebuilt from the log holds the same histories."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from nextbest.features.config import load_config
from nextbest.features.eventlog import EventLog
from nextbest.features.history import engagement_history
from nextbest.features.io import load_dataset
from nextbest.features.spec import feature_names
from nextbest.features.validate import check, validate_dir
from nextbest.serving.decision_log import export_data_dir
from nextbest.serving.snapshot import Snapshot
from nextbest.serving.store import open_store

CLOCK = datetime.now(timezone.utc).replace(microsecond=0)


def _iso(t: datetime) -> str:
    return t.isoformat()


def test_live_histories_equal_a_batch_snapshot_of_the_export(server_factory, customers, project, tmp_path):
    cfg = load_config(project.config)
    s = server_factory()
    ids = customers(30, offset=700)
    day_ago = CLOCK - timedelta(days=1, hours=3)
    rng = np.random.default_rng(3)
    sent, suppressed = [], []
    for cid in ids:
        r = s.post("/v1/decide", {"customer_id": cid, "now": _iso(day_ago)})
        assert r.status_code == 200, r.text
        d = r.json()
        (sent if d["action"] == "send" else suppressed).append(d)
    assert len(sent) >= 8, "too few sends to compare"
    for d in suppressed[:3]:  # an order on a decision that sent nothing: an order without a message
        r = s.post("/v1/feedback", {"decision_id": d["decision_id"], "customer_id": d["customer_id"],
                                    "event": "converted", "ts": _iso(day_ago + timedelta(hours=5)), "value": 19.0})
        assert r.status_code == 200, r.text
    for i, d in enumerate(sent):  # responses to the service's own messages
        at = datetime.fromisoformat(d["send_at"].replace("Z", "+00:00"))
        for event, hours, value in (("opened", 1, None), ("clicked", 1.5, None), ("converted", 2, 37.5)):
            if rng.uniform() < 0.6 or event == "opened" and i < 4:
                body = {"decision_id": d["decision_id"], "customer_id": d["customer_id"], "event": event,
                        "ts": _iso(at + timedelta(hours=hours))}
                if value is not None:
                    body["value"] = value
                r = s.post("/v1/feedback", body)
                assert r.status_code == 200, r.text
    ch, offer = cfg.channel_names[0], cfg.offer_names[1]
    events = []
    for i, cid in enumerate(ids[:10]):  # another sender's messages, responses (in and out of order), orders
        t = CLOCK - timedelta(hours=20 - i)
        events += [{"event_id": f"lh-{i}-o", "customer_id": cid, "event": "opened", "message_id": f"lh-{i}",
                    "channel": ch, "offer": offer, "ts": _iso(t + timedelta(minutes=30))},
                   {"event_id": f"lh-{i}-s", "customer_id": cid, "event": "sent", "message_id": f"lh-{i}",
                    "channel": ch, "offer": offer, "ts": _iso(t)},
                   {"event_id": f"lh-{i}-c", "customer_id": cid, "event": "converted", "message_id": f"lh-{i}",
                    "channel": ch, "value": 20.0 + i, "ts": _iso(t + timedelta(hours=1))},
                   {"event_id": f"lh-{i}-org", "customer_id": cid, "event": "converted", "value": 11.0,
                    "ts": _iso(t + timedelta(hours=2))}]
    t = CLOCK - timedelta(hours=30)
    events += [  # two distinct opens with equal contents both count; responses to a transactional send do not
        {"event_id": "lh-twice-1", "customer_id": ids[0], "event": "opened", "message_id": "lh-0", "channel": ch,
         "offer": offer, "ts": _iso(CLOCK - timedelta(hours=19))},
        {"event_id": "lh-twice-2", "customer_id": ids[0], "event": "opened", "message_id": "lh-0", "channel": ch,
         "offer": offer, "ts": _iso(CLOCK - timedelta(hours=19))},
        {"event_id": "lh-t-s", "customer_id": ids[1], "event": "sent", "message_id": "lh-t", "channel": ch,
         "type": "transactional", "ts": _iso(t)},
        {"event_id": "lh-t-o", "customer_id": ids[1], "event": "opened", "message_id": "lh-t", "channel": ch,
         "ts": _iso(t + timedelta(minutes=3))}]
    r = s.post("/v1/events/batch", {"events": events})
    assert r.status_code == 200 and all(x["accepted"] for x in r.json()["events"]), r.text

    store = open_store(s.store_url)
    snap = Snapshot(str(project.data), cfg)
    states = [snap.contact_state(c, store.get("contact", c)) for c in ids]
    times = pd.DatetimeIndex([CLOCK] * len(ids))
    feats, known, _, _, fresh = snap.features(ids, [None] * len(ids), np.zeros((len(ids), len(cfg.channel_names)), bool),
                                              states, times)
    assert known.all() and fresh.sum() >= 10

    out = tmp_path / "export"
    export_data_dir(project.data, s.log_dir, out, as_of=CLOCK)
    assert validate_dir(out, cfg).ok
    full = EventLog.build(*check(*load_dataset(out), cfg), cfg)
    who = [c for c, f in zip(ids, fresh) if f]
    batch = engagement_history(full, who, CLOCK, snap.population)  # the service's priors are its export's
    names = feature_names(cfg)  # every engagement feature, exactly; the attributes by value (the
    pd.testing.assert_frame_equal(feats[fresh][names], batch[names], check_exact=True)  # export may retype them)
    pd.testing.assert_frame_equal(feats[fresh].drop(columns=names), batch.drop(columns=names), check_dtype=False,
                                  check_categorical=False)
    before = snap.frame.loc[who]
    assert (batch["all_sent_7d"] > before["all_sent_7d"]).any() and (batch["lifetime_orders"] > before["lifetime_orders"]).any()

    # a batch holding customers with live events and an unknown customer whose profile brings a
    # time zone the data does not have
    batch = [{"customer_id": c} for c in who[:5]] + [
        {"customer_id": "lh-newcomer", "profile": {"timezone": "Pacific/Chatham", "consent": {ch: True}}}]
    r = s.post("/v1/decide/batch", {"requests": batch})
    assert r.status_code == 200, r.text

    # the store rebuilt from the log holds the same histories
    live = {c: store.get("contact", c) for c in ids}
    s.kill()
    project.run("store", "rebuild", str(project.data), "--store", s.store_url, "--log-dir", str(s.log_dir))
    assert {c: store.get("contact", c) for c in ids} == live
