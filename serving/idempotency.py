"""Request ids: a ``request_id`` seen before gets its stored answer, a new one is claimed.

Store namespace ``request``: ``"pending"`` while a call decides it (the claim, freed again if
the call fails, and expiring after :data:`CLAIM_TTL_S` if its process died), then the answer
as JSON for :data:`ANSWER_TTL_S`. A request id names one request: the same id for another
customer is rejected. Feedback events are keyed inside their decision's record instead
(``serving.feedback``).
"""

from __future__ import annotations

import json

from nextbest.serving.checks import InvalidInput
from nextbest.serving.store import Conflict, Store

PENDING = "pending"
CLAIM_TTL_S = 600.0
ANSWER_TTL_S = 7 * 86400.0


def claim(store: Store, requests: list, answers: list) -> list[int]:
    """Fill ``answers`` with the stored answers of request ids seen before and claim the new ones.

    Returns
    -------
    list of int
        Positions of the requests to decide (new request ids, and requests without one).

    Raises
    ------
    Conflict
        A request id is being decided by another call (this call's claims are freed).
    InvalidInput
        A request id was used for another customer.
    """
    ids = {r.request_id: i for i, r in enumerate(requests) if r.request_id}
    if not ids:
        return list(range(len(requests)))
    stored = dict(zip(ids, store.get_many("request", list(ids))))
    todo, claimed = [], []
    for i, r in enumerate(requests):
        rid = r.request_id
        if rid is None:
            todo.append(i)
        elif stored.get(rid) not in (None, PENDING):
            answer = json.loads(stored[rid])
            if answer["customer_id"] != r.customer_id:
                release(store, requests, claimed)
                raise InvalidInput("request_id", f"{rid!r} was used for customer {answer['customer_id']!r}; "
                                                 "a request id names one request")
            answers[i] = answer
        elif stored.get(rid) == PENDING or not store.put_new("request", rid, PENDING, CLAIM_TTL_S):
            release(store, requests, claimed)
            raise Conflict(f"request_id {rid!r} is being decided by another call; retry")
        else:
            todo.append(i)
            claimed.append(i)
    return todo


def release(store: Store, requests: list, rows: list[int]) -> None:
    """Free the claimed request ids of a failed call (so a retry is decided)."""
    store.delete("request", [requests[i].request_id for i in rows if requests[i].request_id])


def remember(store: Store, decisions: list[dict]) -> None:
    """Store the answers of the decisions that carry a request id."""
    store.put_many("request", [(d["request_id"], json.dumps(d), ANSWER_TTL_S) for d in decisions if d["request_id"]])
