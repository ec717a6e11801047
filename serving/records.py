"""What the service keeps of each decision: the record feedback and the learner need, and the
answer and log line of a decision as it is taken.

A :class:`DecisionRecord` is stored as JSON under the decision id (store namespace ``decision``)
for the attribution window plus the learner's delay (:func:`keep_seconds`); it changes only by
compare-and-set (``Store.update``). Its ``reward`` is the decision's realized profit so far
(``decision.objective.realized_profit`` of what its feedback reported: the channel cost when it
is taken, then each event's increment, ``decision.online.event_reward``).

:func:`pending_rows` turns the policy's decision for a group of requests into :class:`Pending`
rows: the response (``serving.schemas.DecideResponse``; its ``decision_id`` is 128 random bits,
``secrets.token_hex(16)``, so it cannot be guessed; a request id finds its answer through
``serving.idempotency``), the record, the contact state to write
for a marketing send, and what the decision log keeps (:func:`log_row`; the log's format is a
contract read by ``nextbest log export`` and off-policy evaluation).
"""

from __future__ import annotations

import functools
import json
import secrets
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from nextbest.decision.calibration import contact_context
from nextbest.decision.objective import realized_profit
from nextbest.decision.online import SUPPRESS
from nextbest.serving import followups
from nextbest.serving.followups import CONDITION


@dataclass(frozen=True)
class DecisionRecord:
    """One decision as feedback and the learner see it.

    Attributes
    ----------
    customer_id : str
    action_key : str
        The learner's name of the action (``"email/pct10"`` or ``"suppress"``).
    channel, offer : str or None
        What was sent (None for a suppression).
    learner_input : tuple of float (D,)
        The online learner's input vector of the chosen action.
    decided_at : float
        When the decision was taken (epoch seconds; the request's ``now``).
    sent_at : float
        When the message goes out (``send_at``), or ``decided_at`` for a suppression.
    type : str
        ``marketing`` or ``transactional``.
    reward : float
        Realized profit so far.
    matured : bool
        Already in the learner's shared statistics.
    counted : tuple of str
        Keys ``"{event}|{ts}"`` of the feedback events in ``reward``.
    calibration : tuple of float
        For a marketing send: the offline P(open), P(unsubscribe) and P(order | opened) of the
        message and its contact context ``z`` (``decision.calibration``), from which its opens,
        unsubscribes and orders calibrate the response models
        (``serving.learning.calibration_deltas``); empty otherwise.
    follow_up_at : float or None
        When its follow-up falls due (epoch seconds), if the request asked for one: the record is
        kept until that follow-up is no longer listed, whatever feedback arrives meanwhile.
    rendered : str or None
        The offer the message showed when it was last opened (``serving.render``), if rendered;
        feedback then counts that offer's cost. ``offer`` stays the decided one.
    """

    customer_id: str
    action_key: str
    channel: str | None
    offer: str | None
    learner_input: tuple[float, ...]
    decided_at: float
    sent_at: float
    type: str
    reward: float
    matured: bool = False
    counted: tuple[str, ...] = ()
    calibration: tuple[float, ...] = ()
    follow_up_at: float | None = None
    rendered: str | None = None

    @property
    def shown_offer(self) -> str | None:
        """The offer the customer saw: the rendered one, else the decided one."""
        return self.rendered if self.rendered is not None else self.offer

    def to_json(self) -> str:
        # the fields hold plain values (no nested dataclasses): a flat dict is what ``asdict``
        # gives, without its deep copy of every value (a tenth of a batch's time)
        return json.dumps({f: getattr(self, f) for f in _RECORD_FIELDS}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "DecisionRecord":
        raw = json.loads(text)
        return cls(**{**raw, "learner_input": tuple(raw["learner_input"]), "counted": tuple(raw["counted"]),
                      "calibration": tuple(raw.get("calibration", ()))})

    def with_event(self, key: str, reward: float) -> "DecisionRecord":
        """The record with a feedback event counted (``reward``: its increment)."""
        return replace(self, reward=self.reward + reward, counted=self.counted + (key,))

    def as_matured(self) -> "DecisionRecord":
        return replace(self, matured=True)


_RECORD_FIELDS = tuple(f.name for f in fields(DecisionRecord))


def start_reward(config, channel: str | None, offer: str | None) -> float:
    """A decision's realized profit before any feedback (the channel cost of a send, 0 for a
    suppression); feedback events add their increments (``decision.online.event_reward``)."""
    k = -1 if channel is None else config.channel_names.index(channel)
    j = config.offer_names.index(offer if offer is not None else "none")
    return float(realized_profit(config, [k], [j], [0.0], [False], [False])[0])


def calibration_inputs(d, hist, config) -> np.ndarray:
    """(offline P(open), P(unsubscribe), P(order | opened), z...) of every row's chosen message,
    (m, 3 + P); meaningful for the rows that send."""
    m = len(d.choice)
    rows = np.arange(m)
    k, j = np.divmod(np.maximum(d.choice.astype(np.int64) - 1, 0), len(config.offer_names))
    z = contact_context(hist, rows, k)
    s = d.scores
    return np.column_stack([s.p_open[rows, k, j], s.p_unsub[rows, k, j], s.p_order_open[rows, k, j], z])


# answers carry readable numbers (0.9, not 0.8999999999999999): probabilities to 1e-10, far below
# anything off-policy evaluation could notice; money to a millionth of the currency
PROBABILITY_DIGITS, MONEY_DIGITS = 10, 6


def offer_expiry(send_s: float | None, offer: str | None, config) -> str | None:
    """When the message's offer stops holding (ISO 8601, UTC): ``send_at`` + the offer's
    ``valid_for_hours``; None without a send, an offer, or an end."""
    hours = config.offers[offer].valid_for_hours if send_s is not None and offer is not None else None
    if hours is None:
        return None
    return datetime.fromtimestamp(send_s + hours * 3600.0, timezone.utc).isoformat().replace("+00:00", "Z")


def keep_seconds(config, online) -> float:
    """How long a decision's record is kept after it was taken: the attribution window, the
    learner's delay and an hour's margin."""
    return (config.objective.attribution_window_hours + online.learn_after_hours + 1.0) * 3600.0


CLOCK_TOLERANCE_S = 300.0  # how far a request's ``now`` may lag the server's clock and still count as live


def enters_learner(record: DecisionRecord, delay_s: float, clock_s: float) -> bool:
    """Whether a decision taken now enters the learner (after ``delay_s``): marketing decisions
    whose ``now`` is not backdated beyond the learner's delay. A decision dated further back would
    mature at once, on feedback its caller already knew: it is logged and answered, its feedback
    recorded, but the learner never sees it."""
    return record.type == "marketing" and record.decided_at + delay_s >= clock_s - CLOCK_TOLERANCE_S


def ttl(record: DecisionRecord, keep_s: float, now_s: float) -> float:
    """Seconds a record has left (at least a minute): ``keep_s`` after it was taken, and for a
    record with a follow-up, as long as its follow-up is listed (``serving.followups``)."""
    left = max(record.decided_at, now_s) + keep_s - now_s
    if record.follow_up_at is not None:
        left = max(left, followups.record_left_s(record.follow_up_at, now_s))
    return max(left, 60.0)


@dataclass
class Pending:
    """A decided row waiting to be recorded."""

    row: int                         # position in the request list
    decision: dict                   # the response
    record: DecisionRecord           # what the store keeps for feedback
    contact: tuple | None            # (customer, expected state JSON, new state JSON) for a marketing send
    inputs: dict | None = None       # for the log: the request and what the decision was taken on


def follow_up(send_s: float | None, hours: float | None) -> dict:
    """The answer's ``follow_up_at`` and ``follow_up_if`` (``serving.followups``): set for a marketing
    send whose request asked for a follow-up."""
    if send_s is None or hours is None:
        return {"follow_up_at": None, "follow_up_if": None}
    return {"follow_up_at": iso_z(send_s + hours * 3600.0), "follow_up_if": CONDITION}


def iso_z(epoch_s: float) -> str:
    """An instant as the API writes it: ISO 8601 in UTC to the microsecond, with ``Z``."""
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def follow_up_s(decision: dict) -> float | None:
    """A decision's ``follow_up_at`` in epoch seconds (None without one)."""
    at = decision.get("follow_up_at")
    return None if at is None else datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def log_row(p: Pending) -> dict:
    """The decision log's line of a decision (its format is a contract: ``serving.decision_log``)."""
    return {**p.decision, "now": datetime.fromtimestamp(p.record.decided_at, timezone.utc).isoformat(),
            "type": p.record.type, "action_key": p.record.action_key, "learner_input": list(p.record.learner_input),
            "calibration": list(p.record.calibration), **(p.inputs or {})}


def pending_rows(d, js, reqs, rows, keys, known, states, raw_states, now_s, kind, hist, config,
                 features_as_of: str) -> list[Pending]:
    """Answers, records and contact writes of one policy call.

    Parameters
    ----------
    d : decision.policy.Decision
        The policy's decision for the group (m rows).
    js : int array (m,)
        The group's positions in ``reqs`` (and ``keys``, ``known``, ``states``, ``raw_states``, ``now_s``).
    reqs : list of DecideRequest
    rows : list of int
        Each of ``reqs``'s position in the caller's request list.
    keys : list of str
        Each request's exploration key (its request id, else a fresh decision id).
    known : bool array
        Whether the snapshot knows the customer.
    states, raw_states : list
        Contact states read from the store (``serving.contact.ContactState``) and their JSON.
    now_s : int array
        Each request's ``now`` in epoch seconds.
    kind : str
        ``marketing`` or ``transactional``.
    hist : decision.rules.ContactHistory
        The group's contact history (m rows), logged with the decision.
    config : Config
    features_as_of : str
        The snapshot's day (ISO), logged: the features are reproducible from it.
    """
    K, O = len(config.channel_names), len(config.offer_names)
    f = {c: d.column(c) for c in ("action", "channel", "offer", "local_hour", "propensity", "expected_value",
                                   "explored", "control", "policy_version", "action_key", "exploration_cost",
                                   "control_cost")}
    send_at_ns = pd.DatetimeIndex(d.columns["send_at"]).to_numpy("datetime64[ns]")
    calib = calibration_inputs(d, hist, config) if kind == "marketing" else None
    start = functools.cache(lambda ch, off: start_reward(config, ch, off))  # once per (channel, offer) of the call
    out = []
    for pos, j in enumerate(js):
        r = reqs[j]
        send = f["action"][pos] == "send"
        ch, off = (f["channel"][pos], f["offer"][pos]) if send else (None, None)
        if kind == "transactional":
            allowed = np.isfinite(d.values[pos, 1:]).reshape(K, O).any(axis=1)
            channels = [c for k, c in enumerate(config.channel_names) if allowed[k]]
        else:
            channels = [ch] if send else []
        explain = getattr(r, "explain", True)  # false: no reasons, no per-option scores (cheaper)
        scores = [] if not explain else [{"channel": config.channel_names[a // O], "offer": config.offer_names[a % O],
                   "local_hour": int(d.scores.hour[pos, a // O, a % O]),
                   "expected_value": round(float(d.values[pos, a + 1]), MONEY_DIGITS),
                   "probability": round(float(d.action_dist[pos, a + 1]), PROBABILITY_DIGITS)}
                  for a in np.flatnonzero(np.isfinite(d.values[pos, 1:]))]
        send_s = int(send_at_ns[pos].astype(np.int64)) / 1e9 if send else None
        decision = {
            "decision_id": keys[j] if not r.request_id else secrets.token_hex(16),
            "request_id": r.request_id, "customer_id": r.customer_id, "action": f["action"][pos],
            "channel": ch, "channels": channels, "send_at": str(send_at_ns[pos])[:26] + "Z" if send else None,
            "local_hour": int(f["local_hour"][pos]) if send else None, "offer": off,
            "offer_expires_at": offer_expiry(send_s if send else None, off, config),
            **follow_up(send_s if send and kind == "marketing" else None, getattr(r, "follow_up_hours", None)),
            "propensity": round(f["propensity"][pos], PROBABILITY_DIGITS),
            "expected_value": round(f["expected_value"][pos], MONEY_DIGITS),
            "explored": f["explored"][pos], "control": f["control"][pos],
            "known_customer": bool(known[j]), "scores": scores, "reasons": d.reasons[pos] if explain else [],
            "policy_version": f["policy_version"][pos],
        }
        record = DecisionRecord(
            customer_id=r.customer_id, action_key=f["action_key"][pos] if send else SUPPRESS, channel=ch, offer=off,
            learner_input=tuple(d.learner_inputs[pos, int(d.choice[pos])].tolist()), decided_at=float(now_s[j]),
            sent_at=send_s if send else float(now_s[j]), type=kind,
            reward=start(ch, off),
            calibration=tuple(calib[pos].tolist()) if send and kind == "marketing" else (),
            follow_up_at=follow_up_s(decision))
        contact = None
        if send and kind == "marketing":
            contact = (r.customer_id, raw_states[j],
                       states[j].with_own_send(send_s, int(send_at_ns[pos].astype(np.int64)) // 10**6, ch, off,
                                               decision["decision_id"]).to_json())
        # the features are those of the snapshot (reproducible from the data directory as of
        # its day) plus the contact history read from the store: both are logged by reference
        inputs = {"request": {"context": r.context, "channels": r.channels, "offers": r.offers,
                              "horizon_hours": r.horizon_hours, "type": r.type},
                  "features_as_of": features_as_of,
                  "contact": {"sent_24h": hist.sent_day[pos].tolist(), "sent_168h": hist.sent_week[pos].tolist(),
                              "hours_since_last": float(hist.hours_since_last[pos])
                              if np.isfinite(hist.hours_since_last[pos]) else None,
                              "unanswered": hist.unanswered[pos].tolist()},
                  # expected profit given up to learn (decision.policy.price_of_learning)
                  "price": {"exploration": round(f["exploration_cost"][pos], MONEY_DIGITS),
                            "control": round(f["control_cost"][pos], MONEY_DIGITS)}}
        out.append(Pending(rows[j], decision, record, contact, inputs))
    return out
