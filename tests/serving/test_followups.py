"""Follow-ups over HTTP: a marketing send with ``follow_up_hours`` is listed by ``GET /v1/due`` when
it is still unopened, with a new decision (the same one on every call); an opened one is not; an
erased customer's are gone; bad queries name the field."""

from datetime import datetime, timedelta, timezone

import importlib.util

import httpx

from nextbest.serving.decision_log import read_records

# this directory's conftest by path (``from conftest import`` finds whichever conftest pytest imported first)
_spec = importlib.util.spec_from_file_location("serving_conftest", __file__.rsplit("/", 1)[0] + "/conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
auth = _conftest.auth

# 20 hours ago: with a one-hour follow-up, every follow-up falls due between 19 hours ago and 5 hours
# from now (sends within the 24 h horizon), inside the day a due follow-up stays listed
NOW = (datetime.now(timezone.utc) - timedelta(hours=20)).replace(second=0, microsecond=0)
LATER = (datetime.now(timezone.utc) + timedelta(hours=6)).isoformat()


def _sends(server, ids, n, **extra):
    out = []
    for c in ids:
        d = server.post("/v1/decide", {"customer_id": c, "now": NOW.isoformat(), **extra}).json()
        if d["action"] == "send":
            out.append(d)
        if len(out) == n:
            return out
    raise AssertionError(f"fewer than {n} sends among {len(ids)} customers")


def _due(server, until, key="all", **params):
    return httpx.get(f"{server.url}/v1/due", params={"until": until, **params}, timeout=120,
                     headers=auth(key) if key else None)


def test_unopened_sends_come_back_due_with_a_new_decision(server, customers):
    unopened, opened, erased = _sends(server, customers(200, offset=900), 3, follow_up_hours=1)
    plain = _sends(server, customers(100, offset=1100), 1)[0]
    assert plain["follow_up_at"] is None and plain["follow_up_if"] is None
    for d in (unopened, opened, erased):
        send_at = datetime.fromisoformat(d["send_at"].replace("Z", "+00:00"))
        assert datetime.fromisoformat(d["follow_up_at"].replace("Z", "+00:00")) == send_at + timedelta(hours=1)
        assert d["follow_up_if"] == "not_opened"
    r = server.post("/v1/feedback", {"decision_id": opened["decision_id"], "customer_id": opened["customer_id"],
                                     "event": "opened", "ts": opened["send_at"]})
    assert r.status_code == 200 and r.json()["accepted"], r.text
    assert server.delete(f"/v1/customers/{erased['customer_id']}").json()["removed"]["follow_ups"] == 1

    # not yet due an hour before
    early = min(datetime.fromisoformat(d["follow_up_at"].replace("Z", "+00:00")) for d in (unopened, opened))
    before = _due(server, (early - timedelta(hours=1)).isoformat())
    assert before.status_code == 200 and before.json() == {"due": [], "skipped": []}

    first, again = _due(server, LATER).json(), _due(server, LATER).json()
    mine = [x for x in first["due"] if x["follow_up_of"] == unopened["decision_id"]]
    assert len(mine) == 1, first
    follow = mine[0]["decision"]
    assert follow["customer_id"] == unopened["customer_id"] and mine[0]["follow_up_at"] == unopened["follow_up_at"]
    assert follow["request_id"] == f"follow-up-{unopened['decision_id']}"
    # decided as of the follow-up time: a send goes out then or later, inside the decision horizon
    if follow["action"] == "send":
        assert follow["send_at"] >= unopened["follow_up_at"][:19]
    skipped = {x["follow_up_of"]: x["reason"] for x in first["skipped"]}
    assert skipped.get(opened["decision_id"]) == "opened"
    listed = {x["follow_up_of"] for x in first["due"]} | set(skipped)
    assert erased["decision_id"] not in listed  # erased with the customer
    # at least once, and the same decision every time; logged once
    assert [x["decision"]["decision_id"] for x in again["due"] if x["follow_up_of"] == unopened["decision_id"]] \
        == [follow["decision_id"]]
    logged = [x for x in read_records(server.log_dir, "decisions") if x["decision_id"] == follow["decision_id"]]
    assert len(logged) == 1 and logged[0]["request_id"] == f"follow-up-{unopened['decision_id']}"
    # the log links the follow-up to its first message, whatever serving.log_context_keys allows
    assert logged[0]["request"]["context"] == {"follow_up_of": unopened["decision_id"]}


def test_due_queries_are_checked_and_need_the_decide_scope(server):
    assert _due(server, datetime.now(timezone.utc).isoformat(), key=None).status_code == 401
    assert _due(server, datetime.now(timezone.utc).isoformat(), key="feedback").status_code == 403
    for params, field in (({"until": "yesterday"}, "until"), ({"until": ""}, "until"),
                          ({"until": "2026-01-01T00:00:00", "limit": "0"}, "limit"),
                          ({"until": "2026-01-01T00:00:00", "limit": "x"}, "limit"),
                          ({"until": "2026-01-01T00:00:00", "since": "1"}, "since")):
        r = httpx.get(f"{server.url}/v1/due", params=params, timeout=30, headers=server.headers)
        assert r.status_code == 400 and r.json()["field"] == field, (params, r.text)
    r = httpx.get(f"{server.url}/v1/due", timeout=30, headers=server.headers)
    assert r.status_code == 400 and r.json()["field"] == "until"


def test_only_marketing_sends_get_a_follow_up(server, customers):
    r = server.post("/v1/decide", {"customer_id": customers(1)[0], "type": "transactional", "follow_up_hours": 4})
    assert r.status_code == 200 and r.json()["follow_up_at"] is None and r.json()["follow_up_if"] is None
    r = server.post("/v1/decide", {"customer_id": customers(1)[0], "follow_up_hours": 0.5})
    assert r.status_code == 400 and r.json()["field"] == "follow_up_hours"
    far = _due(server, "2494-01-01T00:00:00Z")  # any time is a valid question; nothing is due that late
    assert far.status_code == 200 and isinstance(far.json()["due"], list)
