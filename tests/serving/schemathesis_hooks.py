"""Schemathesis hooks for ``test_input_contract``: what a schema cannot say about the server's clock.

The published document says ``now`` and ``ts`` are ISO 8601 date-times, but the service takes
only times within ``serving.max_clock_skew_days`` of its clock (refusing the rest with a 400
naming the field, tested on their own), and a ``request_id`` names one request (the same id for
another customer is a 400; an ``event_id`` names one event of a batch), and feedback must name its decision's customer (schemathesis reuses
decision ids it was answered, with a customer of its own: a 400), an event after its message went
out, and only a conversion on a suppression. Positive cases get times near the clock, request ids
of their own and, for a decision id the server gave out, feedback that fits the decision (its
customer, a time after its send, a conversion on a suppression) and a render that opens a
marketing message it sent (its customer, a time after its send), so ``positive_data_acceptance``
judges everything else the schema promises. Negative cases are left
as generated.
"""

from __future__ import annotations

import random
import threading
import uuid
from datetime import datetime, timedelta, timezone

import schemathesis


def _fix(body: dict) -> None:
    clock = datetime.now(timezone.utc)
    for name in ("now", "ts"):
        if isinstance(body.get(name), str):
            body[name] = (clock - timedelta(minutes=random.randint(0, 20 * 24 * 60))).isoformat()
    for name in ("request_id", "event_id"):  # one id names one request (event) of a batch
        if isinstance(body.get(name), str):
            body[name] = f"{body[name][:150]}-{uuid.uuid4().hex}"


DECISIONS: dict[str, dict] = {}  # decision id -> the server's answer
_LOCK = threading.Lock()  # schemathesis --workers 2 calls the hooks from two threads


def _positive(case) -> bool:
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


@schemathesis.hook
def after_call(context, case, response):
    try:
        data = response.json() if response.status_code == 200 else None
    except ValueError:
        return
    body = case.body if isinstance(case.body, dict) else {}
    asked = body.get("requests", [body]) if isinstance(body.get("requests", [body]), list) else []
    for i, d in enumerate(data.get("decisions", [data]) if isinstance(data, dict) else []):
        if isinstance(d, dict) and isinstance(d.get("decision_id"), str) and isinstance(d.get("customer_id"), str):
            r = asked[i] if i < len(asked) and isinstance(asked[i], dict) else {}
            with _LOCK:
                DECISIONS[d["decision_id"]] = {**d, "_type": r.get("type", "marketing")}


def _marketing_send(d: dict) -> bool:
    return d.get("action") == "send" and d.get("_type") == "marketing"


def _render(body: dict) -> None:
    """A positive render case opens a marketing message the server sent (when there is one): its
    customer, a time after its send."""
    with _LOCK:
        sends = [d for d in DECISIONS.values() if _marketing_send(d)]
        d = DECISIONS.get(body["message_id"])
    if not sends:
        return
    d = d if d is not None and _marketing_send(d) else random.choice(sends)
    body["message_id"], body["customer_id"] = d["decision_id"], d["customer_id"]
    at = max(datetime.now(timezone.utc), datetime.fromisoformat(d["send_at"].replace("Z", "+00:00")))
    body["now"] = (at + timedelta(minutes=random.randint(1, 600))).isoformat()


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if _positive(case) and isinstance(body, dict) and isinstance(body.get("message_id"), str):
        return _render(body)
    with _LOCK:
        d = (DECISIONS.get(body["decision_id"]) if _positive(case) and isinstance(body, dict)
             and isinstance(body.get("decision_id"), str) else None)
    if d is None:
        return
    body["customer_id"] = d["customer_id"]
    at = datetime.now(timezone.utc)
    if d.get("send_at"):
        at = max(at, datetime.fromisoformat(d["send_at"].replace("Z", "+00:00")))
    body["ts"] = (at + timedelta(minutes=1)).isoformat()
    if d.get("action") != "send" and body.get("event") != "converted":
        body["event"], body["value"] = "converted", 10.0


@schemathesis.hook
def map_case(context, case):
    if _positive(case) and isinstance(case.body, dict):
        _fix(case.body)
        for r in (case.body.get("requests") or []) + (case.body.get("events") or []):
            if isinstance(r, dict):
                _fix(r)
    return case
