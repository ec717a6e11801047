"""The store is derived from the decision log (issue 15, point 1): wipe it under a running server,
the server refuses (503, not ready) instead of deciding on an empty store, ``nextbest store
rebuild`` brings back exactly what was there, and the server serves again on its own."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
import pytest
import redis

from nextbest.serving.learning import CHECK_NS, CHECK_PREFIX
from nextbest.serving.store import open_store
from serving_waits import poll

NOW = (datetime.now(timezone.utc) - timedelta(days=1)).replace(hour=9, minute=30, second=0, microsecond=0)


def ready(server) -> bool:
    try:
        return httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def traffic(server, ids: list[str]) -> tuple[list[dict], list[tuple[str, str]]]:
    """A decision with a request id for each customer (live: on the server's clock, so they enter
    the learner; every fourth one backdated), and feedback on the sends: opens, an order, and an
    unsubscribe for every third send; every fifth asks for a follow-up."""
    decisions, unsubscribed = [], []
    for i, cid in enumerate(ids):
        body = {"customer_id": cid, "request_id": f"rb-{i}", **({"now": NOW.isoformat()} if i % 4 == 0 else {}),
                **({"follow_up_hours": 2} if i % 5 == 1 else {})}  # follow-ups are rebuilt too
        r = server.post("/v1/decide", body)
        assert r.status_code == 200, r.text
        decisions.append(r.json())
    sends = [d for d in decisions if d["action"] == "send"]
    assert len(sends) >= 10
    for k, d in enumerate(sends):
        at = datetime.fromisoformat(d["send_at"].replace("Z", "+00:00"))
        events = [("opened", None, 1), ("converted", 35.0, 2)] if k % 3 else [("unsubscribed", None, 1)]
        for event, value, hours in events:
            r = server.post("/v1/feedback", {"decision_id": d["decision_id"], "customer_id": d["customer_id"],
                                             "event": event, "ts": (at + timedelta(hours=hours)).isoformat(),
                                             "value": value})
            assert r.status_code == 200, r.text
        if not k % 3:
            unsubscribed.append((d["customer_id"], d["channel"]))
    return decisions, unsubscribed


def settled(store) -> dict | None:
    """The store's content once the learner's queue is empty (every decision matured)."""
    dump = store.dump()
    return dump if not dump["queue"] else None


def without_change_checks(dump: dict) -> dict:
    """The dump without the calibration's change-check windows and claims, which a rebuild does not
    recreate by decision (``serving.learning``, "Known limits")."""
    return {**dump, "kv": {ns: v for ns, v in dump["kv"].items() if ns != CHECK_NS},
            "stats": {k: v for k, v in dump["stats"].items() if not k.startswith(CHECK_PREFIX)}}


def assert_same(before: dict, after: dict) -> None:
    """Equal content: JSON values equal (rewards within float tolerance), statistics within tolerance."""
    assert set(before["kv"]) == set(after["kv"]), (set(before["kv"]), set(after["kv"]))
    for ns, values in before["kv"].items():
        assert set(values) == set(after["kv"][ns]), ns
        for key, value in values.items():
            if ns == "meta":  # the epoch: plain text
                assert value == after["kv"][ns][key]
                continue
            a, b = json.loads(value), json.loads(after["kv"][ns][key])
            if ns == "decision":
                assert a.pop("reward") == pytest.approx(b.pop("reward"), abs=1e-9), key
            assert a == b, (ns, key)
    assert before["queue"] == after["queue"]
    assert set(before["stats"]) == set(after["stats"])
    for action, v in before["stats"].items():
        np.testing.assert_allclose(after["stats"][action], v, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_wiped_store_is_refused_then_rebuilt_equal_from_the_log(backend, server_factory, project, customers,
                                                                  tmp_path, request):
    url = request.getfixturevalue("redis_db") if backend == "redis" else f"sqlite:///{tmp_path / 'state.db'}"
    server = server_factory(store_url=url, workdir=tmp_path)
    decisions, unsubscribed = traffic(server, customers(80, offset=400))
    store = open_store(url)
    before = poll(lambda: settled(store))
    assert before is not None and before["stats"] and before["kv"]["request"]

    if backend == "sqlite":  # the hostile tester's fault: the file deleted under a running server
        (tmp_path / "state.db").unlink()
    else:
        redis.Redis.from_url(url).flushall()
    assert poll(lambda: not ready(server), timeout=10), "readiness must fail once the store is gone"
    r = server.post("/v1/decide", {"customer_id": decisions[0]["customer_id"], "request_id": "rb-0"})
    assert r.status_code == 503 and "nextbest store rebuild" in r.json()["error"], r.text
    assert r.headers["retry-after"]
    r = server.post("/v1/feedback", {"decision_id": decisions[0]["decision_id"], "event": "converted",
                                     "customer_id": decisions[0]["customer_id"],
                                     "ts": (NOW + timedelta(hours=40)).isoformat(), "value": 10.0})
    assert r.status_code == 503, r.text

    project.run("store", "rebuild", str(project.data), "--store", url, "--log-dir", str(server.log_dir))
    t = time.monotonic()
    assert poll(lambda: ready(server), timeout=10), "ready again within 10 s of the rebuild"
    recovery_s = time.monotonic() - t
    after = open_store(url).dump()
    assert any(k.startswith(CHECK_PREFIX) for k in before["stats"])  # the live store had change windows
    assert_same(without_change_checks(before), after)
    assert recovery_s < 10

    # every idempotent replay answers as before; nobody who unsubscribed is messaged there again
    for i, d in enumerate(decisions):
        body = {"customer_id": d["customer_id"], "request_id": f"rb-{i}", **({"now": NOW.isoformat()} if i % 4 == 0 else {})}
        r = server.post("/v1/decide", body)
        assert r.status_code == 200 and r.json() == d, (r.text, d)
    for cid, channel in unsubscribed:
        r = server.post("/v1/decide", {"customer_id": cid})
        assert r.status_code == 200 and r.json()["channel"] != channel, r.text
