"""Recording what happened to a decision's message (``POST /v1/feedback``).

1. The decision must exist (else :class:`UnknownDecision`, nothing stored), the event must
   apply to it (only ``converted`` to a suppression; a conversion needs its value) and must
   not be dated before the message went out (``InvalidInput``).
2. The event's profit is its increment of the decision's realized profit
   (``decision.online.event_reward``, the per-event step of ``decision.objective.realized_profit``);
   only marketing decisions' events inside the attribution window count.
3. The event is logged first (write-ahead; a retry after a crash may log it twice, readers
   dedupe), then added to the decision's record by one ``Store.update`` that also records the
   event's key ``"{event}|{ts}"``, so "seen" and "counted" cannot part in a crash and the same
   ``(decision_id, event, ts)`` counts once. A decision already in the learner's shared
   statistics gets the increment there too (``serving.learning.increment``).
4. Opens and unsubscribes update the customer's contact state (idempotent, so applied again on
   a retry); a customer the service has not contacted yet starts from what the data shows.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np

from nextbest.decision.online import event_reward
from nextbest.serving import learning
from nextbest.serving.checks import InvalidInput
from nextbest.serving.records import DecisionRecord, keep_seconds, ttl
from nextbest.serving.store import Store


class UnknownDecision(LookupError):
    """Feedback names a decision the store does not hold (unknown, or older than its window)."""


def record_feedback(fb, store: Store, log, snapshot, config, online) -> dict:
    """Record one feedback event (see the module docstring); idempotent.

    Parameters
    ----------
    fb : FeedbackRequest
    store : Store
    log : DecisionLog
    snapshot : Snapshot
        The contact state of customers the service has not contacted yet.
    config : Config
    online : OnlineSettings
        The learner's delay (how long records are kept).

    Returns
    -------
    dict
        ``decision_id``, ``event``, ``reward`` (the event's profit) and ``accepted`` (False if
        the event was counted before).
    """
    raw = store.get("decision", fb.decision_id)
    if raw is None:
        raise UnknownDecision(f"no decision {fb.decision_id!r} (unknown, or older than the attribution window)")
    rec = DecisionRecord.from_json(raw)
    if rec.channel is None and fb.event != "converted":
        raise InvalidInput("event", f"decision {fb.decision_id} sent nothing; only 'converted' (an order "
                                    "without a message) applies to it")
    if fb.event == "converted" and fb.value is None:
        raise InvalidInput("value", "a conversion needs the order value")
    ts = fb.ts
    if ts.timestamp() < rec.sent_at:
        at = datetime.fromtimestamp(rec.sent_at, timezone.utc).isoformat()
        raise InvalidInput("ts", f"{ts.isoformat()} is before the message went out ({at})" if rec.channel else
                           f"{ts.isoformat()} is before the decision ({at})")
    reward = event_reward(config, rec.channel, rec.offer, fb.event, fb.value,
                          redeems=rec.offer not in (None, "none"))
    key = f"{fb.event}|{ts.isoformat()}"
    if key not in rec.counted:  # write-ahead; a retry after a crash may log it twice (readers dedupe)
        log.append("feedback", [{"decision_id": fb.decision_id, "customer_id": rec.customer_id, "event": fb.event,
                                 "ts": ts.isoformat(), "value": fb.value, "channel": rec.channel,
                                 "offer": rec.offer, "reward": reward, "type": rec.type}])
    left = ttl(rec.decided_at, keep_seconds(config, online), time.time())
    accepted = add_event(store, fb.decision_id, key, reward if counts(rec, ts.timestamp(), config) else 0.0, left)
    if rec.channel is not None:  # idempotent, so applied again on a retry after a crash
        store.update("contact", rec.customer_id,
                     lambda cur: snapshot.contact_state(rec.customer_id, cur).with_event(rec.channel, fb.event).to_json())
    return {"decision_id": fb.decision_id, "event": fb.event, "reward": reward, "accepted": accepted}


def counts(rec: DecisionRecord, ts_s: float, config) -> bool:
    """Whether an event at ``ts_s`` (epoch seconds) counts toward its decision's reward: events of
    marketing decisions inside the attribution window do; others are logged and acknowledged only."""
    return rec.type == "marketing" and ts_s - rec.decided_at <= config.objective.attribution_window_hours * 3600.0


def add_event(store: Store, decision_id: str, key: str, reward: float, ttl_s: float) -> bool:
    """Add an event's ``reward`` to its decision's record once (the record keeps the keys of the
    events it counted); False if it was counted before. A decision already in the learner's
    statistics gets the increment there too."""
    before: list[DecisionRecord] = []

    def count(raw: str | None) -> str | None:
        if raw is None:
            raise UnknownDecision(f"decision {decision_id!r} expired while its feedback was recorded")
        rec = DecisionRecord.from_json(raw)
        before[:] = [rec]
        return None if key in rec.counted else rec.with_event(key, reward).to_json()

    if store.update("decision", decision_id, count, ttl_s) is None:
        return False
    rec = before[0]
    if rec.matured and reward != 0.0:  # already in the statistics: add the increment
        store.add_stats({rec.action_key: learning.increment(np.array(rec.learner_input), reward, rec.reward)})
    return True
