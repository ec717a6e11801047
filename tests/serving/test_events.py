"""Other senders' message events over HTTP (``POST /v1/events``, ``/v1/events/batch``): the next
decision sees them, the same event id counts once, bad events are refused naming the field, the
store rebuilt from the log holds them, and the export carries them into training data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from nextbest.features.validate import validate_dir
from nextbest.serving.contact import ContactState
from nextbest.serving.decision_log import export_data_dir
from nextbest.serving.store import open_store

CLOCK = datetime.now(timezone.utc).replace(microsecond=0)


def _event(eid, cid, event, minutes_ago, message=None, channel=None, **kw):
    body = {"event_id": eid, "customer_id": cid, "event": event,
            "ts": (CLOCK - timedelta(minutes=minutes_ago)).isoformat(), **kw}
    if message is not None:
        body["message_id"] = message
    if channel is not None:
        body["channel"] = channel
    return body


def _channels(server, cid):
    r = server.post("/v1/decide", {"customer_id": cid, "type": "transactional"})
    assert r.status_code == 200, r.text
    return r.json()["channels"]


def test_an_unsubscribe_from_another_sender_is_respected_at_once(server, customers):
    for cid in customers(40, offset=300):  # a customer with more than one consented channel
        channels = _channels(server, cid)
        if len(channels) >= 2:
            break
    gone = channels[0]
    events = [_event(f"u-{cid}-sent", cid, "sent", 90, "esp-1", gone, offer="none"),
              _event(f"u-{cid}-open", cid, "opened", 60, "esp-1", gone),
              _event(f"u-{cid}-unsub", cid, "unsubscribed", 59, "esp-1", gone)]
    r = server.post("/v1/events/batch", {"events": events})
    assert r.status_code == 200, r.text
    assert [e["accepted"] for e in r.json()["events"]] == [True, True, True]
    assert gone not in _channels(server, cid)          # the very next decision
    for _ in range(5):
        d = server.post("/v1/decide", {"customer_id": cid}).json()
        assert d["channel"] != gone


def test_sends_by_other_systems_count_against_caps_once(server, customers, cfg):
    store = open_store(server.store_url)
    cid = customers(1, offset=350)[0]
    channel = cfg.channel_names[0]
    before = ContactState.from_json(store.get("contact", cid)) if store.get("contact", cid) else None
    n_before = len(before.sends) if before else 0
    sends = [_event(f"c-{cid}-{i}", cid, "sent", 30 + i, f"crm-{i}", channel, offer="none") for i in range(3)]
    assert all(server.post("/v1/events", e).json()["accepted"] for e in sends)
    # the same events again (a retry): refused as known, nothing counted twice
    again = server.post("/v1/events/batch", {"events": sends})
    assert again.status_code == 200 and not any(e["accepted"] for e in again.json()["events"])
    state = ContactState.from_json(store.get("contact", cid))
    assert len(state.sends) == n_before + 3 and state.unanswered[channel] >= 3
    # a transactional send never counts against marketing caps
    t = _event(f"c-{cid}-tx", cid, "sent", 5, "tx-1", channel, type="transactional")
    assert server.post("/v1/events", t).json()["accepted"]
    assert len(ContactState.from_json(store.get("contact", cid)).sends) == n_before + 3
    # with three messages on the channel today its daily cap leaves it out of the next decision
    if cfg.channels[channel].cap_per_day <= 3:
        d = server.post("/v1/decide", {"customer_id": cid}).json()
        assert d["channel"] != channel and all(s["channel"] != channel for s in d["scores"])


def test_bad_events_are_refused_naming_the_field(server, cfg):
    ok = _event("b-1", "c-any", "opened", 5, "m-1", cfg.channel_names[0])
    cases = [
        ({**ok, "message_id": None}, "message_id"),
        ({k: v for k, v in ok.items() if k != "channel"}, "channel"),
        ({**ok, "channel": "fax"}, "channel"),
        ({**ok, "value": 3.0}, "value"),
        ({**ok, "event": "converted"}, "value"),
        ({**ok, "event": "bought"}, "event"),
        ({**ok, "ts": (CLOCK + timedelta(days=400)).isoformat()}, "ts"),
        (_event("b-2", "c-any", "converted", 5, channel=cfg.channel_names[0], value=20.0), "channel"),
        ({**ok, "surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        r = server.post("/v1/events", body)
        assert r.status_code == 400, (body, r.text)
        assert field in (r.json().get("field") or "") + r.json()["error"], (field, r.json())
    r = server.post("/v1/events/batch", {"events": [ok, {**ok, "event_id": "b-3", "channel": "fax"}]})
    assert r.status_code == 400 and r.json()["field"] == "events[1].channel", r.text
    r = server.post("/v1/events/batch", {"events": [ok, ok]})
    assert r.status_code == 400 and r.json()["field"] == "events[1].event_id", r.text
    # nothing of a refused call was recorded: the valid event is still new
    assert server.post("/v1/events", ok).json()["accepted"]


def test_events_need_the_events_scope(server):
    body = _event("s-1", "c-any", "converted", 5, value=12.0)
    assert server.post("/v1/events", body, key="decide").status_code == 403
    assert server.post("/v1/events", body, key="feedback").status_code == 403


def test_the_rebuilt_store_and_the_export_hold_the_events(server_factory, customers, project, tmp_path, cfg):
    s = server_factory()
    store = open_store(s.store_url)
    ids = customers(6, offset=400)
    ch = cfg.channel_names[0]
    events = []
    for i, cid in enumerate(ids):
        events += [_event(f"x-{i}-s", cid, "sent", 200, f"xm-{i}", ch, offer="none"),
                   _event(f"x-{i}-o", cid, "opened", 150, f"xm-{i}", ch)]
    events += [_event("x-organic", ids[0], "converted", 100, value=42.0),
               _event("x-orphan", ids[1], "clicked", 90, "never-sent", ch),
               _event("x-new", "someone-new", "sent", 80, "xm-new", ch, offer="none"),
               _event("x-again", ids[2], "sent", 70, "xm-2", ch, offer="none"),  # a message id sent twice
               # responses that disagree with their send: another customer, another channel, before it
               _event("x-other", "someone-else", "opened", 60, "xm-3", ch),
               _event("x-chan", ids[3], "opened", 60, "xm-3", cfg.channel_names[1]),
               _event("x-early", ids[4], "clicked", 250, "xm-4", ch)]
    assert s.post("/v1/events/batch", {"events": events}).status_code == 200
    day_ago = (CLOCK - timedelta(days=1)).isoformat()  # a decision whose send is due by the export
    assert s.post("/v1/decide", {"customer_id": ids[2], "now": day_ago}).status_code == 200
    live = {cid: store.get("contact", cid) for cid in [*ids, "someone-new"]}
    ev_keys = {e["event_id"] for e in events}
    s.kill()
    project.run("store", "rebuild", str(project.data), "--store", s.store_url, "--log-dir", str(s.log_dir))
    assert {cid: store.get("contact", cid) for cid in live} == live
    assert all(v is not None for v in store.get_many("event", sorted(ev_keys)))
    out = tmp_path / "export"
    export_data_dir(project.data, s.log_dir, out)
    assert validate_dir(out, cfg).ok
    exported = pd.read_parquet(out / "events.parquet")
    mine = exported[exported["message_id"].astype(str).str.startswith("xm-")]
    assert len(mine) == 2 * len(ids) + 1                       # sends and opens, the new customer's send
    assert "never-sent" not in set(exported["message_id"].astype(str))  # a response to nothing is left out
    assert "someone-else" not in set(exported["customer_id"].astype(str))  # nor one that disagrees with its send
    assert set(mine["event"]) == {"sent", "opened"}
    organic = exported[(exported["customer_id"] == ids[0]) & (exported["event"] == "converted")
                       & exported["message_id"].isna()]
    assert 42.0 in set(organic["value"])
    assert "someone-new" in set(pd.read_parquet(out / "customers.parquet")["customer_id"].astype(str))
