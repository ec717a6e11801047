"""Behavioural events over HTTP (``POST /v1/events``, ``features.behaviour``): a review posted now
makes "after the fifth review" hold in the very next decision, counting the data's reviews too;
the same event id counts once, a late event lands in place, the live state equals a batch snapshot
of the same events, bad events are refused naming the field, and a rebuilt store and the export
keep them."""

from __future__ import annotations

import importlib.util
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import yaml

from nextbest.features.behaviour import BehaviourState, batch_features
from nextbest.features.config import default_config_dict, load_config
from nextbest.features.io import write_table
from nextbest.features.validate import validate_dir
from nextbest.serving.decision_log import export_data_dir
from nextbest.serving.events import BEHAVIOUR_NS
from nextbest.serving.store import open_store

_spec = importlib.util.spec_from_file_location("serving_conftest", __file__.rsplit("/", 1)[0] + "/conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)

CLOCK = datetime.now(timezone.utc).replace(microsecond=0)
LOYALTY = {"kind": "fixed", "value": 5.0, "channels": ["email", "push"], "valid_hours": {"start": 0, "end": 24},
           "when": {"customer": {"review_total": {"min": 5}}}}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A project whose config has an offer for customers with at least five reviews, and whose data
    has a behaviour table: customers A and B have four reviews each (B's long ago)."""
    p = _conftest.Project(tmp_path_factory.mktemp("behaviour_project"))
    cfg = {**_conftest.TEST_CONFIG, "offers": {**default_config_dict()["offers"], "loyalty": LOYALTY}}
    p.config.write_text(yaml.safe_dump(cfg))
    p.run("data", "generate", "--customers", "1000", "--days", "35", "--seed", "3", "--out", str(p.data))
    customers = pd.read_parquet(p.data / "customers.parquet")
    events = pd.read_parquet(p.data / "events.parquet")
    end = pd.to_datetime(events["ts"], utc=True).max()
    gone = set(events.loc[events["event"].astype(str) == "unsubscribed", "customer_id"].astype(str))
    fine = [c for c in customers[customers["consent_email"].astype(bool)]["customer_id"].astype(str) if c not in gone]
    a, b = fine[0], fine[1]
    rows = [(a, end - pd.Timedelta(days=d), "review", 5.0) for d in (1, 3, 6, 9)]
    rows += [(b, end - pd.Timedelta(days=d), "review", None) for d in (60, 70, 80, 85)]
    rows += [(a, end - pd.Timedelta(hours=h), "visit", None) for h in (2, 30)]
    table = pd.DataFrame(rows, columns=["customer_id", "ts", "event", "value"])
    write_table(table, p.data, "behaviour")
    p.run("train", str(p.data), "--promote")
    return p, a, b, table


def _offers(answer) -> set:
    return {s["offer"] for s in answer["scores"]}


def _review(eid, cid, hours_ago, value=4.0):
    return {"event_id": eid, "customer_id": cid, "event": "review", "value": value,
            "ts": (CLOCK - timedelta(hours=hours_ago)).isoformat()}


def test_the_fifth_review_makes_the_offer_rule_hold_in_the_next_decision(shop, tmp_path):
    project, a, b, table = shop
    cfg = load_config(project.config)
    s = _conftest.Server(project, tmp_path).start()
    try:
        ask = {"customer_id": a, "channels": ["email"], "offers": ["loyalty"]}  # nothing else: no send before
        assert "loyalty" not in _offers(s.post("/v1/decide", ask).json())  # four reviews in the data
        r = s.post("/v1/events", _review("rv-a5", a, 1))
        assert r.status_code == 200 and r.json()["accepted"], r.text
        after = s.post("/v1/decide", ask).json()
        assert "loyalty" in _offers(after), after["reasons"]  # the fifth counts at once
        again = s.post("/v1/events", _review("rv-a5", a, 1))
        assert again.status_code == 200 and not again.json()["accepted"]
        # a late review (dated before the data's others) lands in place and counts
        ask_b = {**ask, "customer_id": b}
        assert "loyalty" not in _offers(s.post("/v1/decide", ask_b).json())
        assert s.post("/v1/events/batch", {"events": [_review("rv-b5", b, 24 * 90, value=2.0),
                                                      {"event_id": "v-b", "customer_id": b, "event": "visit",
                                                       "ts": (CLOCK - timedelta(minutes=5)).isoformat()}]}
                      ).status_code == 200
        assert "loyalty" in _offers(s.post("/v1/decide", ask_b).json())

        # the live state equals a batch snapshot of the data's rows plus the events posted
        posted = pd.DataFrame([(a, CLOCK - timedelta(hours=1), "review", 4.0), (b, CLOCK - timedelta(hours=24 * 90),
                               "review", 2.0), (b, CLOCK - timedelta(minutes=5), "visit", None)],
                              columns=["customer_id", "ts", "event", "value"])
        both = pd.concat([table, posted.assign(ts=pd.to_datetime(posted["ts"], utc=True))], ignore_index=True)
        store = open_store(s.store_url)
        t = pd.Timestamp(CLOCK) + pd.Timedelta(minutes=1)
        want = batch_features(both, [a, b], t, cfg)
        for cid in (a, b):
            got = BehaviourState.from_json(store.get(BEHAVIOUR_NS, cid)).features(t.timestamp(), cfg)
            assert got == pytest.approx(want.loc[cid].to_dict(), nan_ok=True)
        assert want.loc[a, "review_total"] == 5 and want.loc[b, "review_total"] == 5

        # refused, naming the field
        for body, field in (({**_review("x1", a, 1), "message_id": "m-1"}, "message_id"),
                            ({**_review("x2", a, 1), "channel": "email"}, "channel"),
                            (_review("x3", a, 1, value=7.0), "value"),
                            ({"event_id": "x4", "customer_id": a, "event": "visit", "value": 3.0,
                              "ts": CLOCK.isoformat()}, "value")):
            bad = s.post("/v1/events", body)
            assert bad.status_code == 400 and field in (bad.json().get("field") or ""), bad.text
        live = {cid: store.get(BEHAVIOUR_NS, cid) for cid in (a, b)}
        s.kill()
        # a store rebuilt from the log holds the same states; the export carries the events
        project.run("store", "rebuild", str(project.data), "--store", s.store_url, "--log-dir", str(s.log_dir))
        assert {cid: store.get(BEHAVIOUR_NS, cid) for cid in (a, b)} == live
        out = tmp_path / "export"
        export_data_dir(project.data, s.log_dir, out)
        assert validate_dir(out, cfg).ok
        exported = pd.read_parquet(out / "behaviour.parquet")
        assert len(exported) == len(table) + 3 and (exported["event"] == "review").sum() == 10
    finally:
        s.kill()
