"""What the service does per request, without HTTP: decide, record, learn. ``serving.service`` is
the thin BentoML layer over this; tests and benchmarks can drive it directly too.

Deciding a batch (one request or ten thousand, the same code):

1. **Check** every request against the config before anything is written (``serving.checks``).
2. **Idempotency**: a ``request_id`` seen before gets its stored answer; a new one is claimed
   (``serving.idempotency``).
3. **Features** from the snapshot the service loaded (``serving.snapshot``); an unknown customer
   gets the cold-start row with what the request's ``profile`` says. Unsubscribes reported
   through feedback revoke consent.
4. **Decide** with the champion ``DecisionPolicy`` (the endpoint has no decision logic of its
   own) on the customers' contact history from the store. Requests are grouped by (type,
   channels, offers, explain); ``now`` and ``horizon_hours`` are per row. Each row's exploration draws
   come from its own key (request id, else decision id), so a request gets the same answer alone
   or inside a batch.
5. **Record** each marketing send by compare-and-set on the customer's contact state. A
   customer whose state changed since it was read (another worker, or an earlier send to the
   same customer in the same batch) is decided again on the new state, so caps hold exactly
   under concurrency; after ``store.MAX_ATTEMPTS`` rounds (plus one per repeat of a customer in
   the batch) the call fails with ``Conflict``. This is a batch of compare-and-sets with a new
   decision per loser, so it uses ``cas_many`` rather than the one-key ``Store.update``.
6. **Log** (write-ahead, fsync; ``serving.records.log_row``) and store the decision records
   feedback needs (``serving.records``), then answer. If storing fails after the log append,
   the log marks the decisions void (``DecisionLog.void``): the caller gets an error, and
   exports, training and rebuilds skip them.

Every decide and feedback call first checks that the store matches the decision log
(``serving.rebuild.EpochGuard``) and refuses with ``StoreMismatch`` if it does not.

Feedback: ``serving.feedback``. Render time (the offer an opened message shows):
``serving.render``. Learner sync and hot swap: ``serving.background``.
"""

from __future__ import annotations

import gc
import logging
import secrets
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from prometheus_client import Counter

from nextbest.decision.exploration import KeyedRandom
from nextbest.decision.policy import DecisionPolicy, Request
from nextbest.serving import idempotency
from nextbest.serving.background import Every, LearnerSync, SnapshotWatch, newer_champion
from nextbest.serving.checks import InvalidInput, check_requests
from nextbest.serving.contact import history
from nextbest.serving.decision_log import DecisionLog
from nextbest.serving.feedback import UnknownDecision, record_feedback
from nextbest.serving.rebuild import EpochGuard, StoreMismatch
from nextbest.serving.retrain_schedule import ScheduledRetrain
from nextbest.serving.render import render
from nextbest.serving.events import BEHAVIOUR_NS, check_events, record_events
from nextbest.serving import followups
from nextbest.serving.records import (DecisionRecord, Pending, enters_learner, iso_z, keep_seconds, log_row,
                                      pending_rows, ttl)
from nextbest.serving.schemas import MAX_HORIZON_HOURS, DecideRequest, FeedbackRequest
from nextbest.serving.settings import ServeSettings
from nextbest.serving.snapshot import Snapshot
from nextbest.serving.store import MAX_ATTEMPTS, Conflict, Store, open_store

__all__ = ["Conflict", "Engine", "InvalidInput", "StoreMismatch", "UnknownDecision"]

log = logging.getLogger(__name__)


# The price of learning, in money (decision.policy.price_of_learning). Counted here, in the engine
# process: BentoML's workers and this child share PROMETHEUS_MULTIPROC_DIR, so GET /metrics adds them up.
EXPLORATION_COST = Counter("nextbest_exploration_cost", "Expected profit given up to exploration (currency units)",
                           ["policy_version"])
CONTROL_COST = Counter("nextbest_control_cost", "Expected profit given up to the control group (currency units)",
                       ["policy_version"])


def _count_price(finished: list[Pending]) -> None:
    for p in finished:
        price = (p.inputs or {}).get("price")
        if price:
            EXPLORATION_COST.labels(p.decision["policy_version"]).inc(price["exploration"])
            CONTROL_COST.labels(p.decision["policy_version"]).inc(price["control"])


def settle_heap() -> None:
    """Exempt what the engine holds until its next swap (the snapshot, the policy and its models)
    from the cyclic garbage collector: collect, then ``gc.freeze``. Without it every generation-2
    collection walked about 360,000 long-lived objects: 7-9% of the time of ingesting events,
    1.5% with them frozen (``benchmarks/events_engine.py``). Called after loading and after
    each swap, with ``gc.unfreeze`` first so an old snapshot's reference cycles are collected too
    (one full collection per swap, a fraction of a second).

    Then the memory that building freed goes back to the system (:func:`return_freed_memory`)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return_freed_memory()


def return_freed_memory() -> None:
    """Hand the memory freed while building a snapshot back to the system: glibc's ``malloc_trim``
    and the unused blocks of Arrow's memory pool (reading the data's Parquet files). Building
    peaks well above what the snapshot keeps, and neither allocator returns that on its own: at
    300,000 customers the engine's resident memory fell from 3.42 to 2.28 GiB
    (``benchmarks/snapshot_memory.py``). Does nothing where the C library has no ``malloc_trim``."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


class Engine:
    """Decisions, feedback and learning over one store and one decision log (thread-safe)."""

    def __init__(self, settings: ServeSettings, policy: DecisionPolicy | None = None, store: Store | None = None):
        from nextbest.decision import registry

        self.settings = settings
        self.policy = policy or registry.load_champion()
        self.store = store or open_store(settings.store_url)
        self.log = DecisionLog(settings.log_dir, fsync=settings.log_fsync, context_keys=settings.log_context_keys)
        self.snapshot = Snapshot(settings.data_dir, self.policy.config)
        self.learner = self.policy.new_learner()
        self._sync = LearnerSync(self.store)
        self._threads = Every()
        self._refused: set[str] = set()  # champion versions that could not be loaded (logged once)
        self._watch = SnapshotWatch(settings.data_dir)
        self._epoch = EpochGuard(settings.log_dir)
        self._epoch.start(self.store)
        self._mismatch: str | None = None
        self.retrain: ScheduledRetrain | None = None  # set by start_background where scheduled
        if hasattr(self.store, "ensure_persistence"):
            self.store.ensure_persistence()
        if self.health() is None:
            self.sync_learner()
        settle_heap()

    @property
    def config(self):
        return self.policy.config

    # ------------------------------------------------------------------ background work
    def start_background(self) -> None:
        """Threads: learner sync (mature, decay, reload statistics), champion hot swap, snapshot reload,
        and the scheduled retrain where ``retrain.schedule_hours`` > 0 (``serving.retrain_schedule``)."""
        self._threads.start(self.sync_learner, self.settings.learner_sync_seconds)
        self._threads.start(self.check_champion, self.settings.reload_seconds)
        self._threads.start(self.check_snapshot, self.settings.reload_seconds)
        st = self.settings
        if st.retrain_schedule_hours > 0:
            self.retrain = ScheduledRetrain(self.store, st.retrain_schedule_hours, st.data_dir, st.log_dir, st.home,
                                            st.config_path)
            self._threads.start(self.retrain.run_due, self.retrain.check_every_s)
            log.info("retraining every %g h (next at the next period boundary)", st.retrain_schedule_hours)

    def stop(self) -> None:
        if self.retrain is not None:
            self.retrain.stop()
        self._threads.stop()
        self.log.close()

    def health(self) -> str | None:
        """None if the engine can serve: the store is reachable and matches the decision log;
        else why not (a store outage raises ``StoreUnavailable``)."""
        problem = self._epoch.problem(self.store)
        if problem is None and self._mismatch is not None:
            log.warning("the store matches the decision log again: serving")
            self._sync = LearnerSync(self.store)  # reload the learner's statistics from the rebuilt store
        elif problem is not None and self._mismatch is None:
            log.error("refusing decisions and feedback: %s", problem)
        self._mismatch = problem
        return problem

    def _check_store(self) -> None:
        problem = self.health()
        if problem is not None:
            raise StoreMismatch(problem)

    def sync_learner(self, now_s: float | None = None) -> int:
        """Move due decisions into the shared statistics, decay and reload them (``serving.background``)."""
        if self._mismatch is not None and self.health() is not None:
            return 0  # nothing to learn from a store that does not match the log
        matured, learner = self._sync.run(self.policy.online, keep_seconds(self.config, self.policy.online), now_s,
                                          self.policy.config.channel_names, self.policy.config.offer_names)
        if learner is not None:
            self.learner = learner
        return matured

    def check_champion(self) -> bool:
        """Swap in a newly promoted champion (requests in flight finish on the old one)."""
        policy = newer_champion(self.policy, self.snapshot, self._refused)
        if policy is not None:
            self.policy = policy
            settle_heap()
            log.info("hot swap: now serving %s", policy.version)
        return policy is not None

    def check_snapshot(self) -> bool:
        """Load a new export of the data directory without a restart (``background.SnapshotWatch``);
        requests in flight finish on the snapshot they started with."""
        new = self._watch.newer(self.snapshot, self.policy)
        if new is not None:
            self.snapshot = new
            settle_heap()
        return new is not None

    # ------------------------------------------------------------------ decide
    def check(self, requests: list[DecideRequest], prefix: str = "") -> None:
        """Reject what the config does not allow, naming the field; writes nothing."""
        check_requests(requests, self.config, self.settings.max_clock_skew_days, prefix)

    def decide(self, requests: list[DecideRequest], prefix: str = "") -> list[dict]:
        """Decide, record and log a batch; answers in request order (see the module docstring)."""
        self.check(requests, prefix)
        self._check_store()
        now = datetime.now(timezone.utc)
        answers: list[dict | None] = [None] * len(requests)
        self._answer(requests, idempotency.claim(self.store, requests, answers), now, answers)
        return answers

    def decide_each(self, requests: list[DecideRequest]) -> list:
        """Like :meth:`decide` for independent requests (the micro-batcher's): each gets its answer
        or its own error (``InvalidInput``, ``Conflict``) in the list."""
        self._check_store()
        now = datetime.now(timezone.utc)
        results: list = [None] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            try:
                self.check([r])
                answer = [None]
                if idempotency.claim(self.store, [r], answer):
                    todo.append(i)
                else:
                    results[i] = answer[0]
            except (InvalidInput, Conflict) as exc:
                results[i] = exc
        self._answer(requests, todo, now, results)
        return results

    def _answer(self, requests, todo: list[int], now: datetime, answers: list) -> None:
        """Decide and record the claimed rows ``todo`` into ``answers``; on failure free their
        request ids, so a retry is decided."""
        if not todo:
            return
        try:
            for p in self._decide_and_record(requests, todo, now):
                answers[p.row] = p.decision
        except BaseException:
            idempotency.release(self.store, requests, todo)
            raise

    def _decide_and_record(self, requests, rows: list[int], now: datetime) -> list[Pending]:
        """Decide until every row's sends are recorded on current states, then log and store once
        (a failure before that writes nothing but the sends already recorded, which only make
        later decisions more careful)."""
        done: list[Pending] = []
        left = rows
        repeats = max(np.unique([requests[i].customer_id for i in rows], return_counts=True)[1])
        for _ in range(MAX_ATTEMPTS + int(repeats)):
            pending = sorted(self._decide_rows(requests, left, now), key=lambda p: p.row)
            # every row was decided on the state read at the start of the round; a customer's
            # first send changes it, so that customer's later rows wait for the next round
            changed, sends, later = set(), [], set()
            for p in pending:
                cid = p.decision["customer_id"]
                if cid in changed:
                    later.add(p.row)
                elif p.contact:
                    sends.append(p)
                    changed.add(cid)
            ok = self.store.cas_many("contact", [p.contact for p in sends]) if sends else []
            lost = {p.row for p, won in zip(sends, ok) if not won} | later
            done += [p for p in pending if p.row not in lost]
            left = sorted(lost)
            if not left:
                break
        else:
            raise Conflict(f"contact state of {len(left)} customer(s) kept changing; retry")
        self._write(done)
        return done

    def _decide_rows(self, requests, rows: list[int], now: datetime) -> list[Pending]:
        """Decide ``rows`` of ``requests`` on the current store state (one policy call per group)."""
        policy, learner, cfg, snap = self.policy, self.learner, self.policy.config, self.snapshot  # one of each per call
        reqs = [requests[i] for i in rows]
        ids = [r.customer_id for r in reqs]
        raw_states = self.store.get_many("contact", ids)
        states = [snap.contact_state(cid, raw) for cid, raw in zip(ids, raw_states)]
        times = pd.DatetimeIndex([r.now or now for r in reqs]).as_unit("ns")
        now_s = times.asi8 // 10**9
        contact, unsub = history(states, now_s, list(cfg.channel_names))
        feats, known, pos, edited, differs = snap.features(ids, [r.profile for r in reqs], unsub, states, times)
        if snap.behaviour_keys:  # the rules read behaviour: as of each request's now, events included
            feats = snap.with_behaviour(feats, self.store.get_many(BEHAVIOUR_NS, ids), now_s)
        keys = [str(r.request_id) if r.request_id else secrets.token_hex(16) for r in reqs]
        groups: dict[tuple, list[int]] = {}
        for j, r in enumerate(reqs):
            groups.setdefault((r.type, tuple(r.channels or ()) or None, tuple(r.offers or ()) or None, r.explain),
                              []).append(j)
        out: list[Pending] = []
        for (kind, channels, offers, explain), js in groups.items():
            js = np.array(js)
            request = Request(now=times[js], contexts=[reqs[j].context for j in js],
                              channels=list(channels) if channels else None, offers=list(offers) if offers else None,
                              horizon_hours=np.array([reqs[j].horizon_hours for j in js]), type=kind)
            sub = feats.iloc[js]
            hist = type(contact)(contact.sent_day[js], contact.sent_week[js], contact.hours_since_last[js],
                                 contact.unanswered[js])
            d = policy.decide(sub, hist, request, explain=explain, rng=KeyedRandom([keys[j] for j in js]),
                              learner=learner, arrays=snap.arrays.take(pos[js], sub, edited, differs[js]))
            out += pending_rows(d, js, reqs, rows, keys, known, states, raw_states, now_s, kind, hist, cfg,
                                snap.as_of.isoformat())
        return out

    def _write(self, finished: list[Pending]) -> None:
        """Log (write-ahead), keep what feedback needs, store idempotent answers; if storing fails
        after the log append, mark the decisions void in the log (their callers get the error)."""
        if not finished:
            return
        self.log.append("decisions", [log_row(p) for p in finished])
        try:
            keep_s, clock = keep_seconds(self.config, self.policy.online), time.time()
            self.store.put_many("decision", [(p.decision["decision_id"], p.record.to_json(),
                                              ttl(p.record, keep_s, clock)) for p in finished])
            followups.schedule(self.store, [(p.decision["decision_id"], p.decision["customer_id"],
                                             p.record.follow_up_at)
                                            for p in finished if p.record.follow_up_at is not None], clock)
            after = self.policy.online.learn_after_hours * 3600.0
            self.store.enqueue([(p.decision["decision_id"], p.record.decided_at + after) for p in finished
                                if enters_learner(p.record, after, clock)])
            idempotency.remember(self.store, [p.decision for p in finished])
        except BaseException as exc:
            self.void([p.decision["decision_id"] for p in finished], f"storing failed: {exc!r}"[:300])
            raise
        _count_price(finished)

    def void(self, decision_ids: list[str], reason: str) -> None:
        """Mark logged decisions void (their callers got an error); logs if even that fails."""
        try:
            self.log.void(decision_ids, reason)
        except OSError:
            log.exception("could not mark %d decision(s) void in the log (%s): they stay in the log although "
                          "their callers got an error", len(decision_ids), reason)

    # ------------------------------------------------------------------ feedback
    def due(self, until: datetime, limit: int = 1000) -> dict:
        """``GET /v1/due``: the follow-ups due by ``until`` whose message is still unopened, each
        decided again as of its ``follow_up_at`` (``serving.followups``), and those left out."""
        self._check_store()
        now_s = time.time()
        entries = followups.listed(self.store, until.timestamp(), now_s, limit, followups.horizon_s(MAX_HORIZON_HOURS))
        records = self.store.get_many("decision", [e[0] for e in entries])
        due, skipped, asks = [], [], []
        for (did, cid, at), raw in zip(entries, records):
            if raw is None:
                skipped.append({"follow_up_of": did, "customer_id": cid, "reason": "unknown decision (erased)"})
            elif followups.answered(DecisionRecord.from_json(raw).counted):
                skipped.append({"follow_up_of": did, "customer_id": cid, "reason": "opened"})
            else:
                asks.append((did, at, DecideRequest(customer_id=cid, now=datetime.fromtimestamp(at, timezone.utc),
                                                    request_id=f"follow-up-{did}", context={"follow_up_of": did})))
        if asks:
            for (did, at, _), answer in zip(asks, self.decide([a[2] for a in asks])):
                due.append({"follow_up_of": did, "follow_up_at": iso_z(at), "decision": answer})
        return {"due": due, "skipped": skipped}

    def events(self, events: list, prefix: str = "") -> list[dict]:
        """Record other senders' message events (``serving.events``); idempotent by event id."""
        check_events(events, self.config, self.settings.max_order_value, self.settings.max_clock_skew_days, prefix)
        self._check_store()
        return record_events(events, self.store, self.log, self.snapshot)

    def render(self, req) -> dict:
        """``POST /v1/render``: the offer a message shows when it is opened (``serving.render``)."""
        self._check_store()
        return render(req, self.store, self.log, self.snapshot, self.policy, self.learner,
                      self.settings.max_clock_skew_days)

    def feedback(self, fb: FeedbackRequest) -> dict:
        """Record one feedback event (``serving.feedback``); idempotent."""
        self._check_store()
        return record_feedback(fb, self.store, self.log, self.snapshot, self.config, self.policy.online)
