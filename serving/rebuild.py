"""The store is derived state: rebuilding it from the decision log, and noticing when it was not
derived from the log it faces.

**Epoch.** At the first start of a deployment (an empty store and an empty log) the service
writes one random id both into the store (``meta:epoch``) and into the log directory
(``{log_dir}/EPOCH``, ``serving.decision_log.write_epoch``). On every call the engine compares
them (:class:`EpochGuard`): a store whose epoch is missing (Redis emptied or restarted without
persistence, a new SQLite file) or differs (another deployment's store) while the log holds
lines does not match, and the service refuses decisions and feedback (503) and reports not
ready until ``nextbest store rebuild`` rebuilt it. Deciding on an empty store would forget who
unsubscribed, who was contacted today, and which request ids were answered.

**Rebuild** (:func:`rebuild`): the log, voided decisions left out, replayed in the order it was
written (``logged_at``) over the data directory's contact history (``serving.snapshot``):

- contact states: each marketing send at its ``send_at``, each feedback event (opens reset the
  unanswered count, unsubscribes revoke the channel), starting from what the data shows, with
  the engagement history of marketing sends, responses and orders (``ContactState.live``);
- behaviour states: each behavioural event (``features.behaviour``) over the data's;
- decision records still inside their keep time (attribution window + learner delay,
  ``serving.records.keep_seconds``), with the rewards their feedback added, the offer each
  message last showed when opened (``renders`` lines, ``serving.render``), and the learner's
  queue of those not yet due;
- idempotency keys: each request id's answer, for the rest of its 7 days;
- the learner's statistics: every decision that enters the learner
  (``serving.records.enters_learner`` at the time it was logged) and is due by now
  (``learn_after_hours`` after it was taken) with its reward, which equals what the live path adds at maturity plus the later increments.
  With forgetting on (``half_life_days``) each observation is weighted by the time since it was
  due (the live path decays in steps of ``DECAY_EVERY_S``: equal within that step);
- the response calibration's statistics (``serving.learning.calibration_deltas``) of the same
  decisions, from their opens and unsubscribes, weighted by ``calibration_half_life_days`` the same way.

Where two workers raced on one customer (a send recorded by compare-and-set before its log line
was written, and an open logged in between) the replayed unanswered count can differ from the
live one by that race; everything else is exact, except the response calibration's change checks:
their windows and claims are not recreated and their forgets are not replayed (the calibration is
rebuilt as if no change had been detected; the checks start again, ``serving.learning``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
import logging
import time
import uuid

import numpy as np
import pandas as pd

from nextbest.features.behaviour import BEHAVIOUR_EVENTS
from nextbest.serving.background import DECAY_EVERY_S
from nextbest.serving import events, followups, learning
from nextbest.serving.contact import ContactState, ms_of
from nextbest.serving.decision_log import has_records, read_epoch, read_records, write_epoch
from nextbest.serving.feedback import after_feedback, counts
from nextbest.serving.idempotency import ANSWER_TTL_S
from nextbest.serving.records import DecisionRecord, enters_learner, follow_up_s, keep_seconds, start_reward
from nextbest.serving.schemas import DecideResponse
from nextbest.serving.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

META, EPOCH = "meta", "epoch"


class StoreMismatch(StoreUnavailable):
    """The store was not derived from this decision log (emptied, replaced, another deployment's);
    the service refuses until ``nextbest store rebuild``."""


def _send_s(send_at: str) -> float:
    return int(pd.Timestamp(send_at).value) / 1e9


def _at_s(text: str) -> float:
    return pd.Timestamp(text).timestamp()


class EpochGuard:
    """Whether a store matches the decision log in ``log_dir`` (see the module docstring).

    Parameters
    ----------
    log_dir : path
    """

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self._log_epoch = read_epoch(log_dir)

    def start(self, store: Store) -> None:
        """At a service's start: give a new deployment (empty store, empty log) its epoch."""
        if store.get(META, EPOCH) is None and self._log_epoch is None and not has_records(self.log_dir):
            store.put_new(META, EPOCH, uuid.uuid4().hex)
            epoch = store.get(META, EPOCH)  # another worker may have won the race
            self._log_epoch = write_epoch(self.log_dir, epoch)
            log.info("new deployment: store and decision log share epoch %s", self._log_epoch)

    def problem(self, store: Store) -> str | None:
        """None if the store matches the log, else why not (what the 503 says)."""
        stored = store.get(META, EPOCH)
        if stored is not None and stored == self._log_epoch:
            return None
        self._log_epoch = read_epoch(self.log_dir)  # a rebuild may have given the log its epoch
        if stored is not None and stored == self._log_epoch:
            return None
        fix = "run `nextbest store rebuild` to rebuild it from the decision log"
        if stored is None:
            return f"the store is empty or new while the decision log {self.log_dir} holds decisions; {fix}"
        if self._log_epoch is None:
            return f"the store belongs to another decision log than {self.log_dir} (which has no epoch); {fix}"
        return f"the store was derived from another decision log (epoch {stored}, the log's is {self._log_epoch}); {fix}"


def rebuild(store: Store, log_dir, snapshot, config, online, now_s: float | None = None) -> dict:
    """Replace everything ``store`` holds with what the decision log says (see the module docstring).

    Parameters
    ----------
    store : Store
        Cleared first; its epoch is written last, so a service facing it refuses until it is done.
    log_dir : path
    snapshot : serving.snapshot.Snapshot
        The data directory's contact history (customers' state before the service's first send).
    config : Config
        The serving policy's config (channels, offers, attribution window).
    online : OnlineSettings
        The serving policy's learner settings (delay, forgetting).
    now_s : float, optional
        The clock (epoch seconds; default: now).

    Returns
    -------
    dict
        Counts of what was written: ``contact``, ``decision``, ``request``, ``queue``, ``matured``.
    """
    now_s = time.time() if now_s is None else now_s
    decisions = read_records(log_dir, "decisions")
    feedback = read_records(log_dir, "feedback")
    ingested = read_records(log_dir, "events")
    renders = read_records(log_dir, "renders")
    lines = sorted([(r.get("logged_at", 0.0), 0, i, r) for i, r in enumerate(decisions)]
                   + [(r.get("logged_at", 0.0), 1, i, r) for i, r in enumerate(feedback)]
                   + [(r.get("logged_at", 0.0), 2, i, r) for i, r in enumerate(ingested)]
                   + [(r.get("logged_at", 0.0), 3, i, r) for i, r in enumerate(renders)], key=lambda t: t[:3])
    keep_s, after_s = keep_seconds(config, online), online.learn_after_hours * 3600.0
    contact: dict[str, ContactState] = {}
    records: dict[str, DecisionRecord] = {}
    logged: dict[str, float] = {}  # decision id -> logged_at
    follow: dict[str, tuple[str, float]] = {}  # decision id -> (customer, follow-up time)
    answers: list[tuple[str, str, float]] = []

    def state(cid: str) -> ContactState:
        if cid not in contact:
            contact[cid] = snapshot.contact_state(cid)
        return contact[cid]

    doing: dict = {}  # customer -> behaviour state (features.behaviour), from the data's and the events'
    answer_keys = set(DecideResponse.model_fields)
    event_ids: dict[str, float] = {}  # other senders' event id -> logged_at of its first line
    for at, kind, _, r in lines:
        if kind == 3:  # the offer a message showed when opened (serving.render): the last one counts
            if r["decision_id"] in records:
                records[r["decision_id"]] = replace(records[r["decision_id"]], rendered=r["offer"] or "none")
            continue
        if kind == 2:  # another sender's event (serving.events): once per id
            if r["event_id"] not in event_ids:
                event_ids[r["event_id"]] = at
                cid = str(r["customer_id"])
                if r["event"] in BEHAVIOUR_EVENTS:
                    if cid not in doing:
                        doing[cid] = snapshot.behaviour_state(cid)
                    doing[cid] = events.apply_behaviour(doing[cid], r, snapshot.behaviour_keep_s)
                else:
                    contact[cid] = events.apply(state(cid), r)
            continue
        if kind == 0:
            did = r["decision_id"]
            if did in records:
                continue  # logged twice (a retry after a crash): the first counts
            send = r["action"] == "send"
            ch, off = (r["channel"], r["offer"]) if send else (None, None)
            decided = _at_s(r["now"])
            sent = _send_s(r["send_at"]) if send else decided
            records[did] = DecisionRecord(customer_id=str(r["customer_id"]), action_key=r["action_key"], channel=ch,
                                          offer=off, learner_input=tuple(r["learner_input"]), decided_at=decided,
                                          sent_at=sent, type=r["type"], reward=start_reward(config, ch, off),
                                          calibration=tuple(r.get("calibration") or ()),
                                          follow_up_at=follow_up_s(r))
            logged[did] = at
            if r.get("follow_up_at"):
                follow[did] = (str(r["customer_id"]), follow_up_s(r))
            if send and r["type"] == "marketing":
                contact[str(r["customer_id"])] = state(str(r["customer_id"])).with_own_send(
                    sent, ms_of(datetime.fromisoformat(r["send_at"])), ch, off, did)
            if r.get("request_id"):
                answer = {k: v for k, v in r.items() if k in answer_keys}
                answers.append((r["request_id"], answer, at))
        else:
            rec = records.get(r["decision_id"])
            if rec is None:
                continue  # its decision is void or not in this log
            key = f"{r['event']}|{r['ts']}"
            inside = counts(rec, _at_s(r["ts"]), config)
            if key not in rec.counted and (inside or rec.type != "marketing"):  # as ``serving.feedback``
                records[r["decision_id"]] = rec.with_event(key, float(r["reward"]) if inside else 0.0)
            contact[rec.customer_id] = after_feedback(state(rec.customer_id), rec, r["decision_id"], r["event"],
                                                      datetime.fromisoformat(r["ts"]), r.get("value"))

    deltas: dict[str, np.ndarray] = {}
    queue, kept, matured = [], [], 0
    for did, rec in records.items():
        due, learns = rec.decided_at + after_s, enters_learner(rec, after_s, logged[did])
        if learns and due <= now_s:
            rec = records[did] = rec.as_matured()
            matured += 1
            obs = learning.observation(np.array(rec.learner_input), rec.reward)
            learning.add(deltas, rec.action_key, obs * _decayed(now_s - due, online.half_life_days))
            for k, v in learning.calibration_deltas(rec).items():
                learning.add(deltas, k, v * _decayed(now_s - due, online.calibration_half_life_days))
        elif learns:
            queue.append((did, due))
        left = max(rec.decided_at, logged[did]) + keep_s - now_s
        if rec.follow_up_at is not None:  # kept until its follow-up is no longer listed (``serving.followups``)
            left = max(left, followups.record_left_s(rec.follow_up_at, now_s))
        if left > 0:
            kept.append((did, rec.to_json(), left))
    requests = [(rid, json.dumps(a), ANSWER_TTL_S - (now_s - at)) for rid, a, at in answers
                if ANSWER_TTL_S - (now_s - at) > 0]
    epoch = read_epoch(log_dir) or write_epoch(log_dir, uuid.uuid4().hex)
    store.clear()
    # live entries the loaded export already holds go, as the live path drops them on its next write
    store.put_many("contact", [(cid, st.without_live_before(snapshot.live_after_ms).to_json(), None)
                               for cid, st in contact.items()])
    store.put_many(events.BEHAVIOUR_NS, [(cid, st.to_json(), None) for cid, st in doing.items()])
    store.put_many("decision", kept)
    store.put_many("request", requests)
    store.put_many(events.EVENT_NS, [(e, "1", events.EVENT_ID_TTL_S - (now_s - at)) for e, at in event_ids.items()
                                     if events.EVENT_ID_TTL_S - (now_s - at) > 0])
    store.enqueue([q for q in queue if q[0] in {k for k, _, _ in kept}])
    due = [(did, cid, at) for did, (cid, at) in follow.items() if at + followups.KEEP_S > now_s]
    followups.schedule(store, due, now_s)
    store.add_stats(deltas)
    store.put(META, EPOCH, epoch)
    out = {"contact": len(contact), "behaviour": len(doing), "decision": len(kept), "request": len(requests), "queue": len(queue),
           "matured": matured, "follow_ups": len(due)}
    log.info("rebuilt the store from %s: %s (epoch %s)", log_dir, out, epoch)
    return out


def _decayed(age_s: float, half_life_days: float) -> float:
    """The weight left of an observation ``age_s`` old: the live path decays in whole steps of
    ``DECAY_EVERY_S``, so the age counts in whole steps too (none within the first)."""
    if half_life_days <= 0:
        return 1.0
    steps = max(age_s, 0.0) // DECAY_EVERY_S
    return 0.5 ** (steps * DECAY_EVERY_S / (half_life_days * 86400.0))
