"""The decision service over HTTP: every endpoint and the contract's rules, on a real BentoML server."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import httpx
import pandas as pd
import pytest

from nextbest.features.config import load_config
from nextbest.serving.decision_log import read_records
from nextbest.serving.store import open_store

# yesterday 09:30 UTC: requests may not be further than serving.max_clock_skew_days from the clock
NOW = (datetime.now(timezone.utc) - timedelta(days=1)).replace(hour=9, minute=30, second=0, microsecond=0)


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def consented(people, cid, cfg) -> set[str]:
    return {c for c in cfg.channel_names if bool(people.loc[cid].get(f"consent_{c}", False))}


def test_decide_follows_consent_quiet_hours_and_horizon(server, project, customers, people, cfg):
    sends = 0
    for cid in customers(60):
        r = server.post("/v1/decide", {"customer_id": cid, "now": NOW.isoformat(), "horizon_hours": 12})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["customer_id"] == cid and d["known_customer"] and d["policy_version"] == "nextbest/1"
        assert 0 < d["propensity"] <= 1 and d["reasons"]
        for x in [d["propensity"], d["expected_value"], *[v for s in d["scores"] for v in s.values()
                                                         if isinstance(v, float)]]:
            assert len(repr(x).split(".")[-1].split("e")[0]) <= 10, x  # readable, not 0.8999999999999999
        assert sum(s["probability"] for s in d["scores"]) <= 1 + 1e-9
        if d["action"] == "suppress":
            assert d["channel"] is None and d["send_at"] is None and d["offer_expires_at"] is None
            continue
        sends += 1
        hold = cfg.offers[d["offer"]].valid_for_hours  # the offer holds this long after the send
        if hold is None:
            assert d["offer_expires_at"] is None
        else:
            assert parse(d["offer_expires_at"]) == parse(d["send_at"]) + timedelta(hours=hold)
        assert d["channel"] in consented(people, cid, cfg), (cid, d)
        at = parse(d["send_at"])
        assert NOW <= at < NOW + timedelta(hours=12)
        local = at.astimezone(ZoneInfo(people.loc[cid, "timezone"]))
        assert local.hour == d["local_hour"]
        assert not cfg.channels[d["channel"]].quiet_hours.contains(local.hour), (cid, d)
        assert d["channels"] == [d["channel"]]
        chosen = [x for x in d["scores"] if (x["channel"], x["offer"]) == (d["channel"], d["offer"])]
        assert chosen[0]["probability"] == pytest.approx(d["propensity"])
    assert sends >= 10


def test_request_id_is_idempotent_and_recorded_once(server, project, customers):
    cid, other = customers(2, offset=100)
    body = {"customer_id": cid, "now": NOW.isoformat(), "request_id": "order-42"}
    first, again = server.post("/v1/decide", body).json(), server.post("/v1/decide", body).json()
    assert first == again
    reused = server.post("/v1/decide", {**body, "customer_id": other})
    assert reused.status_code == 400 and reused.json()["field"] == "request_id"
    logged = [r for r in read_records(server.log_dir, "decisions") if r["request_id"] == "order-42"]
    assert len(logged) == 1 and logged[0]["decision_id"] == first["decision_id"]


def test_caps_collision_and_transactional(server, project, customers, people, cfg):
    cid = next(c for c in customers(400) if consented(people, c, cfg) == set(cfg.channel_names))
    store = open_store(server.store_url)
    decided = [server.post("/v1/decide", {"customer_id": cid, "now": NOW.isoformat(), "horizon_hours": 24}).json()
               for _ in range(12)]
    sends = [d for d in decided if d["action"] == "send"]
    rules = cfg.contact_rules
    assert 1 <= len(sends) <= rules.max_per_day
    for c in cfg.channel_names:
        assert sum(d["channel"] == c for d in sends) <= cfg.channels[c].cap_per_day
    times = sorted(parse(d["send_at"]) for d in sends)
    assert all(b - a >= timedelta(hours=rules.min_hours_between) for a, b in zip(times, times[1:]))
    capped = [d for d in decided if d["action"] == "suppress"]
    assert any("cap" in " ".join(d["reasons"]) or "too soon" in " ".join(d["reasons"]) for d in capped)

    state = store.get("contact", cid)
    t = server.post("/v1/decide", {"customer_id": cid, "now": NOW.isoformat(), "type": "transactional"}).json()
    assert t["action"] == "send" and parse(t["send_at"]) == NOW
    assert set(t["channels"]) == set(cfg.channel_names) and t["offer"] in (None, "none")
    assert t["propensity"] == 1.0 and not t["explored"]
    assert store.get("contact", cid) == state  # not counted against marketing caps


def test_cold_start_uses_the_profile(server, cfg):
    d = server.post("/v1/decide", {"customer_id": "brand-new-1", "now": NOW.isoformat(),
                                   "profile": {"timezone": "Asia/Tokyo", "consent": {"push": True}}}).json()
    assert not d["known_customer"]
    assert {s["channel"] for s in d["scores"]} <= {"push"}
    if d["action"] == "send":
        local = parse(d["send_at"]).astimezone(ZoneInfo("Asia/Tokyo"))
        assert not cfg.channels["push"].quiet_hours.contains(local.hour)
    nothing = server.post("/v1/decide", {"customer_id": "brand-new-2", "now": NOW.isoformat()}).json()
    assert nothing["action"] == "suppress" and any("no consent" in r for r in nothing["reasons"])


def test_feedback_is_idempotent_and_unknown_decisions_are_rejected(server, project, customers):
    import sqlite3

    def rows():
        with sqlite3.connect(server.store_url.removeprefix("sqlite:///")) as db:
            return db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]

    before, stored = len(read_records(server.log_dir, "feedback")), rows()
    r = server.post("/v1/feedback", {"decision_id": "does-not-exist", "customer_id": "c1", "event": "opened",
                                     "ts": NOW.isoformat()})
    assert r.status_code == 404 and "decision_id" in r.text
    assert len(read_records(server.log_dir, "feedback")) == before and rows() == stored  # stored nowhere

    sent = next(d for d in (server.post("/v1/decide", {"customer_id": c, "now": NOW.isoformat()}).json()
                            for c in customers(80, offset=200)) if d["action"] == "send")
    event = {"decision_id": sent["decision_id"], "customer_id": sent["customer_id"], "event": "converted", "value": 80.0,
             "ts": (NOW + timedelta(hours=25)).isoformat()}
    first, again = server.post("/v1/feedback", event).json(), server.post("/v1/feedback", event).json()
    assert first["accepted"] and not again["accepted"] and first["reward"] > 0
    assert len(read_records(server.log_dir, "feedback")) >= before + 1
    r = server.post("/v1/feedback", {**event, "value": None, "ts": (NOW + timedelta(hours=27)).isoformat()})
    assert r.status_code == 400 and r.json()["field"] == "value"


def test_unsubscribe_revokes_the_channel(server, project, customers, people, cfg):
    for cid in customers(200, offset=400):
        d = server.post("/v1/decide", {"customer_id": cid, "now": NOW.isoformat()}).json()
        if d["action"] == "send" and len(consented(people, cid, cfg)) > 1:
            break
    else:
        pytest.fail("no send to a customer with two consented channels")
    r = server.post("/v1/feedback", {"decision_id": d["decision_id"], "customer_id": cid, "event": "unsubscribed",
                                     "ts": (NOW + timedelta(hours=25)).isoformat()})
    assert r.json()["accepted"]
    later = NOW + timedelta(days=8)  # past every cap window
    for _ in range(5):
        again = server.post("/v1/decide", {"customer_id": cid, "now": later.isoformat()}).json()
        assert again["channel"] != d["channel"]
        assert d["channel"] not in {s["channel"] for s in again["scores"]}
        later += timedelta(days=1)


def test_feedback_reaches_the_shared_learner_within_seconds(server, project, customers):
    # decided at the clock's time: a decision backdated beyond the learner's delay (0 h here) never enters it
    now = datetime.now(timezone.utc).replace(microsecond=0)
    store = open_store(server.store_url)
    _, before = store.stats()
    n_before = sum(v[0] for v in before.values())
    sent = [d for d in (server.post("/v1/decide", {"customer_id": c, "now": now.isoformat()}).json()
                        for c in customers(40, offset=700)) if d["action"] == "send"]
    for d in sent:
        r = server.post("/v1/feedback", {"decision_id": d["decision_id"], "customer_id": d["customer_id"],
                                         "event": "converted", "value": 50.0,
                                         "ts": (parse(d["send_at"]) + timedelta(hours=2)).isoformat()})
        assert r.json()["accepted"]
    deadline = time.time() + 10
    while time.time() < deadline:
        _, stats = store.stats()
        if sum(v[0] for v in stats.values()) >= n_before + 40:
            break
        time.sleep(0.2)
    assert sum(v[0] for v in stats.values()) >= n_before + 40
    # the rewards arrived too: r'r grew by at least the conversions' squared profit
    gained = sum(v[-1] for v in stats.values()) - sum(v[-1] for v in before.values())
    assert gained >= len(sent) * (0.35 * 50.0 - 10) ** 2 * 0.5


def test_health_readiness_and_metrics(server, project, customers):
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    server.post("/v1/decide", {"customer_id": customers(1)[0]})
    assert httpx.get(f"{server.url}/metrics").status_code == 401  # behind the admin scope
    text = server.get("/metrics").text
    assert 'nextbest_decisions_total{action=' in text
    assert 'nextbest_policy_version{version="nextbest/1"} 1.0' in text
    assert "nextbest_decide_seconds_bucket" in text


def test_batch_answers_in_order_and_all_or_nothing(server, project, customers):
    ids = customers(50, offset=900)
    out = server.post("/v1/decide/batch", {"requests": [{"customer_id": c, "now": NOW.isoformat()} for c in ids]})
    assert out.status_code == 200
    assert [d["customer_id"] for d in out.json()["decisions"]] == ids
    logged = len(read_records(server.log_dir, "decisions"))
    bad = [{"customer_id": c} for c in ids[:5]]
    bad[3]["channels"] = ["fax"]
    r = server.post("/v1/decide/batch", {"requests": bad})
    assert r.status_code == 400 and r.json()["field"] == "requests[3].channels"
    assert len(read_records(server.log_dir, "decisions")) == logged  # nothing written
    # explain: false leaves out reasons and per-option scores, in the same batch as explained rows
    mixed = server.post("/v1/decide/batch", {"requests": [{"customer_id": c, "now": NOW.isoformat(),
                                                           "explain": i % 2 == 0} for i, c in enumerate(ids[:20])]})
    assert mixed.status_code == 200, mixed.text
    got = mixed.json()["decisions"]
    assert [d["customer_id"] for d in got] == ids[:20]
    assert all(d["reasons"] for d in got[0::2]) and any(d["scores"] for d in got[0::2])
    assert all(d["reasons"] == [] and d["scores"] == [] for d in got[1::2])


def test_a_batch_over_one_chunk_answers_like_one_call_and_is_checked_whole(server, customers):
    """Batches are decided in chunks of serving.batch_chunk (100) rows: the same answers as one by
    one, in order; a bad row in a later chunk refuses the whole batch before anything is decided."""
    ids = customers(250, offset=300)
    reqs = [{"customer_id": c, "now": NOW.isoformat(), "request_id": f"chunked-{i}"} for i, c in enumerate(ids)]
    out = server.post("/v1/decide/batch", {"requests": reqs})
    assert out.status_code == 200, out.text
    decisions = out.json()["decisions"]
    assert [d["customer_id"] for d in decisions] == ids
    assert [d["request_id"] for d in decisions] == [r["request_id"] for r in reqs]
    for i in (0, 99, 100, 249):  # across chunk borders: each answer is the one its request id gets alone
        again = server.post("/v1/decide", reqs[i]).json()
        assert again["decision_id"] == decisions[i]["decision_id"]
    logged = len(read_records(server.log_dir, "decisions"))
    bad = [{"customer_id": c, "now": NOW.isoformat()} for c in ids]
    bad[180]["channels"] = ["fax"]
    r = server.post("/v1/decide/batch", {"requests": bad})
    assert r.status_code == 400 and r.json()["field"] == "requests[180].channels"
    assert len(read_records(server.log_dir, "decisions")) == logged  # the first chunk was not decided either


BAD = [
    ("/v1/decide", {"customer_id": "c1", "channels": ["fax"]}, "channels"),
    ("/v1/decide", {"customer_id": "c1", "offers": ["pct99"]}, "offers"),
    ("/v1/decide", {"customer_id": "c1", "now": "yesterday-ish"}, "now"),
    ("/v1/decide", {"customer_id": "c1", "now": "0001-01-01T00:00:00Z"}, "now"),
    ("/v1/decide", {"customer_id": "c1", "now": (NOW + timedelta(days=400)).isoformat()}, "now"),
    ("/v1/decide", {"customer_id": "c1", "now": 1700000000}, "now"),
    ("/v1/decide", {"customer_id": "c1", "horizon_hours": 0}, "horizon_hours"),
    ("/v1/decide", {"customer_id": "c1", "horizon_hours": 1000}, "horizon_hours"),
    ("/v1/decide", {"customer_id": "c1", "type": "promo"}, "type"),
    ("/v1/decide", {"customer_id": 12}, "customer_id"),
    ("/v1/decide", {"customer_id": "c1", "colour": "red"}, "colour"),
    ("/v1/decide", {"customer_id": "c1", "profile": {"timezone": "Mars/Base"}}, "profile.timezone"),
    ("/v1/decide", {}, "customer_id"),
    ("/v1/decide/batch", {"requests": []}, "requests"),
    ("/v1/decide/batch", {"requests": [{"customer_id": "a", "request_id": "d"}, {"customer_id": "b", "request_id": "d"}]},
     "requests[1].request_id"),
    ("/v1/decide/batch", {"requests": [{"customer_id": "c"}] * 10_001}, "requests"),
    ("/v1/feedback", {"decision_id": "x", "customer_id": "c1", "event": "liked", "ts": "2026-11-20T10:00:00Z"}, "event"),
    ("/v1/feedback", {"decision_id": "x", "customer_id": "c1", "event": "opened"}, "ts"),
    ("/v1/feedback", {"decision_id": "x", "customer_id": "c1", "event": "converted", "ts": "2026-11-20", "value": -5},
     "value"),
    ("/v1/feedback", {"decision_id": "x", "customer_id": "c1", "event": "converted", "ts": "2026-11-20", "value": 1e12},
     "value"),
]


def test_bad_input_gets_a_4xx_naming_the_field_and_writes_nothing(server):
    import sqlite3

    state = server.store_url.removeprefix("sqlite:///")

    def rows():
        with sqlite3.connect(state) as db:
            return db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]

    before = (len(read_records(server.log_dir, "decisions")), len(read_records(server.log_dir, "feedback")), rows())
    for path, body, field in BAD:
        r = server.post(path, body)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text[:300])
        assert field in r.text, (path, body, r.text[:300])
    after = (len(read_records(server.log_dir, "decisions")), len(read_records(server.log_dir, "feedback")), rows())
    assert after == before
    r = httpx.post(f"{server.url}/v1/decide", content=b"{not json", headers={"content-type": "application/json", **server.headers})
    assert r.status_code == 400
    r = httpx.post(f"{server.url}/v1/feedback", content=b'{"decision_id": "x", "event": "converted", '
                   b'"ts": "2026-11-20T00:00:00Z", "value": 1e999}', headers={"content-type": "application/json", **server.headers})
    assert r.status_code == 400 and "value" in r.text
    assert json.loads(r.text)


def test_contact_history_of_the_data_counts_before_the_first_decision(server, project, people, cfg, customers):
    """A customer the service never contacted starts from the data's recent sends and unanswered
    counts (the snapshot), not from an empty history."""
    events = pd.read_parquet(project.data / "events.parquet")
    sent = events[events["event"] == "sent"]
    last_day = sent["ts"].max().ceil("D")
    recent = sent[sent["ts"] >= last_day - pd.Timedelta(days=7)].groupby("customer_id").size()
    untouched = [c for c in customers(200, offset=1000) if c in recent.index and consented(people, c, cfg)]
    cid = max(untouched, key=lambda c: recent[c])  # customers no other test decides for
    store = open_store(server.store_url)
    assert store.get("contact", cid) is None
    d = server.post("/v1/decide", {"customer_id": cid, "type": "transactional"}).json()
    assert d["action"] == "send", d
    fb = server.post("/v1/feedback", {"decision_id": d["decision_id"], "customer_id": cid, "event": "unsubscribed",
                                      "ts": d["send_at"]})
    assert fb.status_code == 200 and fb.json().get("accepted"), (fb.status_code, fb.text)
    state = json.loads(store.get("contact", cid))
    assert len(state["sends"]) == recent[cid] >= 1 and state["unsubscribed"] == [d["channel"]]


def test_the_api_docs_page_is_nextbests_and_loads_nothing_from_elsewhere(server):
    """`/` in a real browser: nextbest's title and version, the routes rendered from the published
    document, and every request the page makes goes to the service itself (BentoML's page loads
    Google Tag Manager and a GitHub badge)."""
    import shutil
    from urllib.parse import urlparse

    from playwright.sync_api import expect, sync_playwright

    from nextbest.serving.schemas import API_TITLE, release

    requested = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium")
        page = browser.new_page()
        page.on("request", lambda r: requested.append(r.url))
        page.goto(server.url + "/")
        expect(page).to_have_title(f"{API_TITLE} {release()}")
        expect(page.get_by_text("/v1/decide", exact=True).first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("/v1/events/batch", exact=True).first).to_be_visible()
        expect(page.locator("h2.title")).to_contain_text(API_TITLE)
        browser.close()
    hosts = {urlparse(u).netloc for u in requested if not u.startswith("data:")}
    assert hosts == {urlparse(server.url).netloc}, requested
    assert any(u.endswith("/docs.json") for u in requested)
    html = server.get("/", key=None)
    assert html.status_code == 200 and "googletagmanager" not in html.text and "github" not in html.text.lower()


def test_metrics_count_the_price_of_exploration_and_of_the_control_group(server, customers):
    """``nextbest_exploration_cost_total`` and ``nextbest_control_cost_total`` (counted in the engine
    process) add up the price each logged decision records."""
    import re

    r = server.post("/v1/decide/batch", {"requests": [{"customer_id": c, "now": NOW.isoformat()}
                                                      for c in customers(300, offset=500)]})
    assert r.status_code == 200
    logged = read_records(server.log_dir, "decisions")
    text = server.get("/metrics").text
    for kind in ("exploration", "control"):
        want = sum(d["price"][kind] for d in logged if d.get("price"))
        got = sum(float(v) for v in re.findall(rf'^nextbest_{kind}_cost_total{{policy_version="[^"]+"}} (\S+)$', text,
                                               re.M))
        assert got == pytest.approx(want, rel=1e-9, abs=1e-6), kind
    assert sum(d["price"]["exploration"] for d in logged) > 0, "some decisions explored"
    assert any(d["control"] and d["price"]["control"] > 0 for d in logged), "the control group costs something"


def test_log_price_reports_the_daily_price_and_the_posterior_narrowing(server, project, customers, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    server.post("/v1/decide/batch", {"requests": [{"customer_id": c, "now": NOW.isoformat()}
                                                  for c in customers(100, offset=700)]})
    out = subprocess.run([str(Path(sys.executable).with_name("nextbest")), "--config", str(project.config), "log", "price", "--log-dir",
                          str(server.log_dir), "--store", server.store_url, "--out", str(tmp_path / "price")],
                         env=project.env, cwd=project.home, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "exploration_cost_per_1000" in out.stdout and "narrowed" in out.stdout
    days = pd.read_csv(tmp_path / "price" / "price_daily.csv")
    logged = read_records(server.log_dir, "decisions")
    assert days["decisions"].sum() == len(logged)
    assert days["exploration_cost"].sum() == pytest.approx(sum(d["price"]["exploration"] for d in logged), abs=1e-6)
    assert days["control"].sum() == sum(d["control"] for d in logged)
    info = pd.read_csv(tmp_path / "price" / "price_information.csv", index_col="action")
    assert len(info) > 0 and (info["sd_prior"] > 0).all() and info["narrowed"].between(0, 1).all()
    assert (tmp_path / "price" / "price.png").stat().st_size > 1000
