"""Production trust (issue 15): API keys with scopes on a real server, and feedback that cannot be
forged or inflated (the learner's statistics are read from the store)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import secrets
import time
import types
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import yaml

from nextbest.features.config import ConfigError
from nextbest.serving.auth import Keys, load_keys
from nextbest.serving.records import DecisionRecord
from nextbest.serving.store import open_store

# this directory's conftest by path (``from conftest import`` finds whichever conftest pytest imported first)
_spec = importlib.util.spec_from_file_location("serving_conftest", __file__.rsplit("/", 1)[0] + "/conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
KEYS, Server, auth = _conftest.KEYS, _conftest.Server, _conftest.auth

log = logging.getLogger(__name__)


def test_keys_are_parsed_hashed_and_checked(tmp_path):
    keys = Keys.from_text("alpha-key-0123456789:decide,feedback; beta-key-0123456789:admin")
    assert keys.scopes("alpha-key-0123456789") == {"decide", "feedback"}
    assert keys.scopes("beta-key-0123456789") == {"admin"}
    assert keys.scopes("alpha-key-012345678") is None and keys.scopes(None) is None and keys.scopes("") is None
    assert "alpha-key-0123456789" not in repr(vars(keys))  # only hashes are kept
    digest = hashlib.sha256(b"gamma-key-0123456789").hexdigest()
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({f"sha256:{digest}": ["events"], "delta-key-0123456789": "decide"}))
    from_file = Keys.from_file(path)
    assert from_file.scopes("gamma-key-0123456789") == {"events"} and from_file.scopes("delta-key-0123456789") == {"decide"}
    with pytest.raises(ConfigError, match="unknown scope"):
        Keys.from_text("alpha-key-0123456789:decide,write")
    with pytest.raises(ConfigError, match="too short"):
        Keys.from_text("short:decide")
    settings = types.SimpleNamespace(auth_required=True, keys_file=None)
    with pytest.raises(ConfigError, match="no API key is configured"):
        load_keys(settings, env={})
    assert len(load_keys(settings, env={"NEXTBEST_API_KEYS": "alpha-key-0123456789:decide"})) == 1
    assert load_keys(types.SimpleNamespace(auth_required=False, keys_file=None), env={}) is None


def test_every_route_but_health_needs_a_key_with_its_scope(server, customers):
    url = server.url
    for path in ("/healthz", "/readyz", "/docs.json"):
        assert httpx.get(url + path).status_code == 200, path
    body = {"customer_id": customers(1)[0]}
    for headers in ({}, {"Authorization": "Bearer not-a-key-at-all-0000"}, {"Authorization": f"Basic {KEYS['all'][0]}"}):
        r = httpx.post(f"{url}/v1/decide", json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["field"] == "Authorization" and set(r.json()) == {"error", "field", "detail"}
    assert server.post("/v1/decide", body, key="decide").status_code == 200
    r = server.post("/v1/decide", body, key="feedback")
    assert r.status_code == 403 and "decide" in r.json()["error"] and "insufficient_scope" in r.headers["www-authenticate"]
    fb = {"decision_id": "x" * 32, "customer_id": "c1", "event": "opened", "ts": datetime.now(timezone.utc).isoformat()}
    assert server.post("/v1/feedback", fb, key="decide").status_code == 403
    assert server.post("/v1/feedback", fb, key="feedback").status_code == 404  # through, to an unknown decision
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert server.get("/metrics", key="decide").status_code == 403
    assert server.get("/metrics", key="admin").status_code == 200
    assert httpx.delete(f"{url}/v1/customers/someone", headers=auth("decide")).status_code == 403


def test_without_auth_only_by_config_and_with_a_warning(project, tmp_path):
    config = tmp_path / "open.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(project.config.read_text()),
                                      "serving": {"auth": {"required": False}}}))
    open_project = types.SimpleNamespace(config=config, env=project.env, home=project.home, data=project.data)
    s = Server(open_project, tmp_path).start()
    try:
        assert httpx.post(f"{s.url}/v1/decide", json={"customer_id": "c-open"}).status_code == 200
        assert "authentication is OFF" in s.log_tail(200_000)
    finally:
        s.kill()


def _settled(store, ids, deadline_s=20.0):
    """Wait until every decision in ``ids`` that enters the learner has (its record is matured)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        recs = [DecisionRecord.from_json(store.get("decision", d)) for d in ids]
        if all(r.matured for r in recs):
            return
        time.sleep(0.1)
    raise AssertionError("decisions did not enter the learner in time")


def test_forged_or_repeated_feedback_never_changes_the_learner(server, customers):
    store = open_store(server.store_url)
    clock = datetime.now(timezone.utc).replace(microsecond=0)
    decided = [server.post("/v1/decide", {"customer_id": c, "now": clock.isoformat()}).json()
               for c in customers(60, offset=1100)]
    sends = [d for d in decided if d["action"] == "send"]
    assert len(sends) >= 2
    assert all(len(d["decision_id"]) == 32 and int(d["decision_id"], 16) >= 0 for d in decided)
    d, late = sends[0], sends[1]
    _settled(store, [x["decision_id"] for x in decided])
    at = datetime.fromisoformat(d["send_at"].replace("Z", "+00:00")) + timedelta(hours=1)
    first = {"decision_id": d["decision_id"], "customer_id": d["customer_id"], "event": "converted", "value": 40.0,
             "ts": at.isoformat()}
    r = server.post("/v1/feedback", first)
    assert r.status_code == 200 and r.json()["accepted"]
    _, stats = store.stats()
    reward = DecisionRecord.from_json(store.get("decision", d["decision_id"])).reward

    forged = [
        ({**first, "customer_id": customers(1, offset=1199)[0]}, 400, "customer_id"),   # another customer's
        ({**first, "decision_id": secrets.token_hex(16)}, 404, "decision_id"),           # a guessed id
        ({**first, "value": 4000.0, "ts": (at + timedelta(hours=1)).isoformat()}, 200, None),  # a second conversion
        (first, 200, None),                                                              # the same again
        ({**first, "value": 1e9}, 400, "value"),                                         # over the order bound
        ({**first, "event": "opened", "value": 5.0}, 400, "value"),                      # a value on an open
    ]
    for body, status, field in forged:
        r = server.post("/v1/feedback", body)
        assert r.status_code == status, (body, r.text)
        if status == 200:
            assert r.json()["accepted"] is False
        else:
            assert r.json()["field"] == field
    _same(stats, store.stats()[1])
    # one unsubscribe per decision too
    unsub = {"decision_id": d["decision_id"], "customer_id": d["customer_id"], "event": "unsubscribed"}
    assert server.post("/v1/feedback", {**unsub, "ts": (at + timedelta(hours=2)).isoformat()}).json()["accepted"]
    _, stats = store.stats()
    reward = DecisionRecord.from_json(store.get("decision", d["decision_id"])).reward
    assert not server.post("/v1/feedback", {**unsub, "ts": (at + timedelta(hours=3)).isoformat()}).json()["accepted"]

    # after the attribution window (72 h): acknowledged, not counted, the learner untouched
    sent = datetime.fromisoformat(late["send_at"].replace("Z", "+00:00"))
    r = server.post("/v1/feedback", {"decision_id": late["decision_id"], "customer_id": late["customer_id"],
                                     "event": "converted", "value": 60.0, "ts": (sent + timedelta(hours=80)).isoformat()})
    assert r.status_code == 200 and r.json() == {**r.json(), "accepted": False, "reward": 0.0}

    # a decision backdated beyond the learner's delay never enters it; its feedback stays in its record
    back = next(x for x in (server.post("/v1/decide", {"customer_id": c, "now": (clock - timedelta(days=2)).isoformat()})
                            .json() for c in customers(40, offset=1150)) if x["action"] == "send")
    assert back["decision_id"] not in store.due(time.time() + 1e9, limit=10**6)
    r = server.post("/v1/feedback", {"decision_id": back["decision_id"], "customer_id": back["customer_id"],
                                     "event": "converted", "value": 70.0, "ts": (clock - timedelta(days=1)).isoformat()})
    assert r.json()["accepted"]
    rec = DecisionRecord.from_json(store.get("decision", back["decision_id"]))
    assert not rec.matured and rec.reward > 0

    _same(stats, store.stats()[1])
    assert DecisionRecord.from_json(store.get("decision", d["decision_id"])).reward == reward
    log.info("forged, repeated, late and backdated feedback left %d action statistics unchanged", len(stats))


def _same(before: dict, after: dict) -> None:
    assert after.keys() == before.keys()
    for k in before:
        assert (after[k] == before[k]).all(), k
