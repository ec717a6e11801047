"""Recording what happened to a decision's message (``POST /v1/feedback``).

1. The decision must exist (else :class:`UnknownDecision`, nothing stored), belong to the
   customer the feedback names (``customer_id``), the event must apply to it (only ``converted``
   to a suppression; a conversion needs its value) and must not be dated before the message went
   out (``InvalidInput``, 400). Decision ids are 128 random bits, so feedback cannot be forged
   for a decision one was not told of.
2. A decision ends at most once of each terminal kind (:data:`TERMINAL`: one conversion, one
   unsubscribe): a second one with another time answers 200 with ``accepted: false`` and changes
   nothing (it is not logged either). An event after the decision's attribution window is logged
   and applied to the contact state (an unsubscribe is always honoured) but answers
   ``accepted: false``: it adds nothing to the reward and never reaches the learner.
3. The event's profit is its increment of the decision's realized profit
   (``decision.online.event_reward``, the per-event step of ``decision.objective.realized_profit``);
   only marketing decisions' events inside the attribution window count.
4. The event is logged first (write-ahead; a retry after a crash may log it twice, readers
   dedupe), then added to the decision's record by one ``Store.update`` that also records the
   event's key ``"{event}|{ts}"``, so "seen" and "counted" cannot part in a crash and the same
   ``(decision_id, event, ts)`` counts once. A decision already in the learner's shared
   statistics gets the increment there too (``serving.learning.increment``).
5. Opens and unsubscribes update the customer's contact state, and a marketing decision's events
   its engagement history (:func:`after_feedback`; idempotent, so applied again on a retry); a
   customer the service has not contacted yet starts from what the data shows.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np

from nextbest.decision.online import event_reward
from nextbest.serving import learning
from nextbest.serving.checks import InvalidInput
from nextbest.serving.contact import ContactState, ms_of
from nextbest.serving.records import DecisionRecord, keep_seconds, ttl
from nextbest.serving.store import Store


TERMINAL = ("converted", "unsubscribed")  # counted at most once per decision


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
        the event was counted before, is a second terminal event, or is after the window).
    """
    rec = record_of(store, fb.decision_id, fb.customer_id)
    if rec.channel is None and fb.event != "converted":
        raise InvalidInput("event", f"decision {fb.decision_id} sent nothing; only 'converted' (an order "
                                    "without a message) applies to it")
    if fb.event == "converted" and fb.value is None:
        raise InvalidInput("value", "a conversion needs the order value")
    ts = fb.ts
    if before_send(ts, rec.sent_at):
        at = datetime.fromtimestamp(rec.sent_at, timezone.utc).isoformat()
        raise InvalidInput("ts", f"{ts.isoformat()} is before the message went out ({at})" if rec.channel else
                           f"{ts.isoformat()} is before the decision ({at})")
    shown = rec.shown_offer  # a message rendered at open time (serving.render) shows its rendered offer
    reward = event_reward(config, rec.channel, shown, fb.event, fb.value, redeems=shown not in (None, "none"))
    key = f"{fb.event}|{ts.isoformat()}"
    if key not in rec.counted and ended(rec.counted, fb.event, key):
        return {"decision_id": fb.decision_id, "event": fb.event, "reward": 0.0, "accepted": False}
    inside = counts(rec, ts.timestamp(), config) or rec.type != "marketing"
    if key not in rec.counted:  # write-ahead; a retry after a crash may log it twice (readers dedupe)
        log.append("feedback", [{"decision_id": fb.decision_id, "customer_id": rec.customer_id, "event": fb.event,
                                 "ts": ts.isoformat(), "value": fb.value, "channel": rec.channel,
                                 "offer": rec.offer, "reward": reward if inside else 0.0, "type": rec.type}])
    left = ttl(rec, keep_seconds(config, online), time.time())
    accepted = inside and add_event(store, fb.decision_id, key, reward if counts(rec, ts.timestamp(), config) else 0.0,
                                    left)
    # idempotent, so applied again on a retry after a crash
    store.update("contact", rec.customer_id,
                 lambda cur: after_feedback(snapshot.contact_state(rec.customer_id, cur), rec, fb.decision_id,
                                            fb.event, ts, fb.value).to_json())
    return {"decision_id": fb.decision_id, "event": fb.event, "reward": reward if inside else 0.0,
            "accepted": accepted}


def after_feedback(state: ContactState, rec: DecisionRecord, decision_id: str, event: str, ts: datetime,
                   value: float | None) -> ContactState:
    """A contact state after feedback on a decision (the live path and the rebuild share it): an
    open resets the channel's unanswered count, an unsubscribe revokes it; the event enters the
    engagement history (``ContactState.live``) as the export writes it -- a response to a
    marketing message with its channel and offer, or an order on a decision that sent nothing as
    an order without a message -- once per ``(decision, event, ts)``, the export's identity."""
    if rec.channel is not None:
        state = state.with_event(rec.channel, event)
    key = f"feedback:{decision_id}|{event}|{ts.isoformat()}"
    if rec.channel is None:
        return state.with_live(ms_of(ts), event, None, None, value, None, key)
    if rec.type == "marketing":
        state = state.with_live(ms_of(ts), event, rec.channel, rec.offer or "none", value, decision_id, key)
    return state


def record_of(store: Store, decision_id: str, customer_id: str) -> DecisionRecord:
    """The stored record of ``decision_id``, which must be ``customer_id``'s: ``UnknownDecision``
    (404) if the store does not hold it, ``InvalidInput`` on ``customer_id`` (400) for another
    customer (feedback and render both name a decision and its customer)."""
    raw = store.get("decision", decision_id)
    if raw is None:
        raise UnknownDecision(f"no decision {decision_id!r} (unknown, or older than the attribution window)")
    rec = DecisionRecord.from_json(raw)
    if customer_id != rec.customer_id:
        raise InvalidInput("customer_id", f"decision {decision_id} was not taken for customer {customer_id!r}")
    return rec


def before_send(ts, sent_at: float) -> bool:
    """Whether an event at ``ts`` (datetime) is before its message went out at ``sent_at`` (epoch
    seconds). Times travel as ISO text to the microsecond, and two float conversions of the same
    microsecond can differ by a rounding step: an event stamped with the answer's own ``send_at``
    is not before it."""
    return ts.timestamp() < sent_at - 1e-6


def ended(counted, event: str, key: str) -> bool:
    """Whether a terminal ``event`` (:data:`TERMINAL`) other than ``key`` was counted already."""
    return event in TERMINAL and any(k.split("|", 1)[0] == event and k != key for k in counted)


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
        if key in rec.counted or ended(rec.counted, key.split("|", 1)[0], key):
            return None
        return rec.with_event(key, reward).to_json()

    if store.update("decision", decision_id, count, ttl_s) is None:
        return False
    rec = before[0]
    deltas = learning.calibration_increment(rec, key.split("|", 1)[0]) if rec.matured else {}
    if rec.matured and reward != 0.0:  # already in the statistics: add the increment
        deltas[rec.action_key] = learning.increment(np.array(rec.learner_input), reward, rec.reward)
    if deltas:
        store.add_stats(deltas)
    return True
