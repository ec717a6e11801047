"""What the service does per request, without HTTP: decide, record, learn. ``serving.service`` is
the thin BentoML layer over this; tests and benchmarks can drive it directly too.

Deciding a batch (one request or ten thousand, the same code):

1. **Check** every request against the config (unknown channel or offer, time zone) before
   anything is written: a bad request changes nothing.
2. **Idempotency**: a ``request_id`` seen before gets its stored answer; a new one is claimed.
3. **Features**: the customer's engagement history from the snapshot the service loaded
   (``Snapshot``: the same ``features.history`` code as training, as of the data's last day);
   an unknown customer gets the empty history (cold start) with what the request's ``profile``
   says (time zone, consent). Unsubscribes reported through feedback revoke consent.
4. **Decide** with the champion ``DecisionPolicy`` (rules, scores, learner, exploration; the
   endpoint has no decision logic of its own) on the customers' contact history from the store.
   Requests are grouped by (type, channels, offers); ``now`` and ``horizon_hours`` are per row.
   Each row's exploration draws come from its own key (request id, else decision id), so a
   request gets the same answer alone or inside a batch.
5. **Record** each marketing send by compare-and-set on the customer's contact state. A
   customer whose state changed since it was read (another worker, or an earlier send to the
   same customer in the same batch) is decided again on the new state, so caps hold exactly
   under concurrency. A batch needs at most one round per send to the same customer.
6. **Log** (write-ahead, fsync) and store what feedback needs, then answer.

Feedback: the decision must exist (else ``UnknownDecision``, nothing stored); the same
``(decision_id, event, ts)`` counts once; the event is logged first, then its profit
(``decision.online.event_reward``) is added to the decision's running reward by one
compare-and-set that also records the event's key (so "seen" and "counted" cannot part in a
crash), and opens and unsubscribes update the contact state (idempotent, applied again on a
retry). A customer the service has not contacted yet starts from the contact history the data
shows (sends of the last week, unanswered messages). Decisions enter the learner's shared statistics
``learn_after_hours`` after they were taken (``mature``); feedback that arrives later adds its
increment directly. Every worker reloads the shared statistics every ``learner_sync_seconds``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from nextbest.features.eventlog import EventLog
from nextbest.features.history import Population, engagement_history
from nextbest.features.io import load_dataset
from nextbest.decision.objective import channel_costs
from nextbest.serving import learning
from nextbest.serving.contact import ContactState, history
from nextbest.serving.decision_log import DecisionLog
from nextbest.serving.schemas import DecideRequest, FeedbackRequest
from nextbest.serving.settings import ServeSettings
from nextbest.serving.store import Store, open_store
from nextbest.decision.candidates import CustomerArrays
from nextbest.decision.exploration import KeyedRandom
from nextbest.decision.online import SUPPRESS, OnlineLearner, event_reward
from nextbest.decision.policy import DecisionPolicy, Request

log = logging.getLogger(__name__)

COLD = "\x00cold-start"
MAX_ROUNDS = 20  # compare-and-set rounds before a customer is reported as busy


class InvalidInput(ValueError):
    """A request the config rejects; ``field`` names where (e.g. ``requests[3].channels``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message

    def __reduce__(self):  # crosses from the engine's process to the HTTP worker
        return InvalidInput, (self.field, self.message)


class UnknownDecision(LookupError):
    pass


class Conflict(RuntimeError):
    """A request id still being decided by another call."""


class Snapshot:
    """Engagement histories of every customer of a data directory as of its last day, plus the
    cold-start row; built once at start with the training code (``features.history``)."""

    def __init__(self, data_dir: str, config):
        customers, events = load_dataset(data_dir)
        self.as_of = events["ts"].max().ceil("D") if len(events) else pd.Timestamp.now(tz="UTC").ceil("D")
        log_ = EventLog.build(customers, events[events["ts"] < self.as_of], config)
        ids = customers["customer_id"].astype(str).to_numpy()
        pop = Population.from_log(log_)
        feats = engagement_history(log_, np.append(ids, COLD), self.as_of, pop)
        self.frame = feats
        # the data's sends of the last week: a customer's contact state until the service has one
        recent = events[(events["event"] == "sent") & (events["ts"] >= self.as_of - pd.Timedelta(days=7))
                        & (events["ts"] < self.as_of)]
        self._recent = {str(c): [[t.timestamp(), ch] for t, ch in zip(g["ts"], g["channel"].astype(str))]
                        for c, g in recent.groupby("customer_id", observed=True)}
        self.arrays = CustomerArrays(feats)  # converted to float arrays once; batches take rows of it
        self.index = pd.Index(ids)
        self.channels = config.channel_names
        self.default_timezone = config.default_timezone
        log.info("features of %d customers as of %s", len(ids), self.as_of)

    def contact_state(self, customer: str) -> ContactState:
        """What the data shows of a customer's recent contacts (sends of the last week before the
        snapshot, unanswered messages per channel); empty for an unknown customer."""
        i = self.index.get_indexer([customer])[0]
        if i < 0:
            return ContactState()
        row = self.frame.iloc[i]
        unanswered = {c: int(row[f"{c}_unanswered"]) for c in self.channels if row[f"{c}_unanswered"] > 0}
        return ContactState(list(self._recent.get(customer, [])), unanswered, [])

    def rows(self, customer_ids: list[str], profiles: list) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """Feature rows (index = customer ids), which customers are known, and each row's
        position in the snapshot (the cold-start row for unknown customers)."""
        codes = self.index.get_indexer(customer_ids)
        known = codes >= 0
        pos = np.where(known, codes, len(self.index))
        out = self.frame.iloc[pos]
        out.index = pd.Index(customer_ids, name="customer_id")
        cold = np.flatnonzero(~known)
        if len(cold):
            out = out.copy()
            for i in cold:
                p = profiles[i]
                tz = (p.timezone if p and p.timezone else None) or self.default_timezone
                if tz not in out["timezone"].cat.categories:
                    out["timezone"] = out["timezone"].cat.add_categories([tz])
                out.iloc[i, out.columns.get_loc("timezone")] = tz
                for c in self.channels:
                    out.iloc[i, out.columns.get_loc(f"consent_{c}")] = bool(p and p.consent.get(c, False))
        return out, known, pos


@dataclass
class Pending:
    """A decided row waiting to be recorded."""

    row: int           # position in the request list
    decision: dict     # the response
    record: dict       # what the store keeps for feedback
    contact: tuple | None  # (customer, expected state JSON, new state JSON) for a marketing send
    inputs: dict | None = None  # for the log: the request and what the decision was taken on


class Engine:
    """Decisions, feedback and learning over one store and one decision log (thread-safe)."""

    def __init__(self, settings: ServeSettings, policy: DecisionPolicy | None = None, store: Store | None = None):
        from nextbest.decision import registry

        self.settings = settings
        self.policy = policy or registry.load_champion()
        self.config = self.policy.config
        self.store = store or open_store(settings.store_url)
        self.log = DecisionLog(settings.log_dir, fsync=settings.log_fsync)
        self.snapshot = Snapshot(settings.data_dir, self.config)
        self.window_s = self.config.objective.attribution_window_hours * 3600.0
        self.learner = OnlineLearner(self.policy.online)
        self._stats_version = -1
        self._pruned = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sync_learner()

    # ------------------------------------------------------------------ background work
    def start_background(self) -> None:
        """Threads: learner sync (mature + reload statistics) and champion hot swap."""
        for target, every in ((self.sync_learner, self.settings.learner_sync_seconds),
                              (self.check_champion, self.settings.reload_seconds)):
            t = threading.Thread(target=self._every, args=(target, every), daemon=True, name=target.__name__)
            t.start()
            self._threads.append(t)

    def _every(self, fn, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                fn()
            except Exception:  # keep serving; the next round retries
                log.exception("background %s failed", fn.__name__)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self.log.close()

    def check_champion(self) -> bool:
        """Load and swap in a newly promoted champion (requests in flight finish on the old one)."""
        from nextbest.decision import registry

        version = registry.champion_version()
        if version is None or f"{registry.MODEL_NAME}/{version}" == self.policy.version:
            return False
        policy = registry.load_version(version)
        if policy.config.channel_names != self.config.channel_names or policy.config.offer_names != self.config.offer_names:
            log.error("champion %s has other channels or offers than the running one; restart the service to "
                      "load it (the snapshot and contact states follow the configured channels)", version)
            return False
        missing = sorted(set(policy.models.customer_columns) - set(self.snapshot.frame.columns))
        if missing:
            log.error("champion %s needs features the running snapshot lacks (%s); restart the service to load it",
                      version, missing[:5])
            return False
        self.policy, self.config = policy, policy.config
        self.window_s = policy.config.objective.attribution_window_hours * 3600.0
        log.info("hot swap: now serving %s", policy.version)
        return True

    def sync_learner(self, now_s: float | None = None) -> int:
        """Move due decisions into the shared statistics and reload them if they changed."""
        now_s = time.time() if now_s is None else now_s
        matured = 0
        while True:
            ids = self.store.claim(self.store.due(now_s))
            if not ids:
                break
            matured += self._mature(ids)
        if now_s - self._pruned > 300:
            self.store.prune()
            self._pruned = now_s
        version = self.store.stats_version()
        if version != self._stats_version:
            self._stats_version, stats = self.store.stats()
            self.learner = OnlineLearner(self.policy.online, learning.state_from_vectors(stats))
        return matured

    def _mature(self, ids: list[str]) -> int:
        deltas: dict[str, np.ndarray] = {}
        for did in ids:
            for _ in range(MAX_ROUNDS):
                raw = self.store.get("decision", did)
                if raw is None:
                    break  # expired
                rec = json.loads(raw)
                new = json.dumps({**rec, "m": True})
                if self.store.cas_many("decision", [(did, raw, new)], self._ttl(rec["t"]))[0]:
                    learning.add(deltas, rec["k"], learning.observation(np.array(rec["x"]), rec["r"]))
                    break
        self.store.add_stats(deltas)
        return len(ids)

    def _ttl(self, t: float) -> float:
        """Decision records are kept through the attribution window (and the learner's delay)."""
        keep = self.window_s + self.policy.online.learn_after_hours * 3600.0 + 3600.0
        return max(max(t, time.time()) + keep - time.time(), 60.0)

    # ------------------------------------------------------------------ checks
    def check(self, requests: list[DecideRequest], prefix: str = "") -> None:
        """Reject what the config does not allow, naming the field; writes nothing."""
        cfg = self.config
        clock = datetime.now(timezone.utc)
        skew = timedelta(days=self.settings.max_clock_skew_days)
        seen: dict[str, int] = {}
        for i, r in enumerate(requests):
            at = f"{prefix}[{i}]." if prefix else ""
            if r.now is not None and not clock - skew <= r.now <= clock + skew:
                raise InvalidInput(f"{at}now", f"{r.now.isoformat()} is more than {self.settings.max_clock_skew_days:g} "
                                               f"days from the server's clock ({clock:%Y-%m-%dT%H:%M}Z)")
            if r.request_id is not None:
                if r.request_id in seen:
                    raise InvalidInput(f"{at}request_id", f"{r.request_id!r} also names request {seen[r.request_id]}")
                seen[r.request_id] = i
            for name, given, known in (("channels", r.channels, cfg.channel_names), ("offers", r.offers, cfg.offer_names)):
                unknown = sorted(set(given or ()) - set(known))
                if unknown:
                    raise InvalidInput(f"{at}{name}", f"unknown {name[:-1]}(s) {unknown}; configured: {list(known)}")
                if given is not None and not given:
                    raise InvalidInput(f"{at}{name}", "must not be empty (leave it out for all)")
            if r.profile is not None:
                unknown = sorted(set(r.profile.consent) - set(cfg.channel_names))
                if unknown:
                    raise InvalidInput(f"{at}profile.consent", f"unknown channel(s) {unknown}")
                if r.profile.timezone is not None:
                    try:
                        zoneinfo.ZoneInfo(r.profile.timezone)
                    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                        raise InvalidInput(f"{at}profile.timezone", f"unknown time zone {r.profile.timezone!r}") from None

    # ------------------------------------------------------------------ decide
    def decide(self, requests: list[DecideRequest], prefix: str = "") -> list[dict]:
        """Decide, record and log a batch; answers in request order (see the module docstring)."""
        self.check(requests, prefix)
        now = datetime.now(timezone.utc)
        answers: list[dict | None] = [None] * len(requests)
        self._answer(requests, self._claim_requests(requests, answers), now, answers)
        return answers

    def decide_each(self, requests: list[DecideRequest]) -> list:
        """Like :meth:`decide` for independent requests (the micro-batcher's): each gets its answer
        or its own error (``InvalidInput``, ``Conflict``) in the list."""
        now = datetime.now(timezone.utc)
        results: list = [None] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            try:
                self.check([r])
                answer = [None]
                if self._claim_requests([r], answer):
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
            self._release(requests, todo)
            raise

    def _claim_requests(self, requests, answers) -> list[int]:
        ids = {r.request_id: i for i, r in enumerate(requests) if r.request_id}
        if not ids:
            return list(range(len(requests)))
        stored = dict(zip(ids, self.store.get_many("request", list(ids))))
        todo, claimed = [], []
        for i, r in enumerate(requests):
            rid = r.request_id
            if rid is None:
                todo.append(i)
            elif stored.get(rid) not in (None, "pending"):
                answer = json.loads(stored[rid])
                if answer["customer_id"] != r.customer_id:
                    self._release(requests, claimed)
                    raise InvalidInput("request_id", f"{rid!r} was used for customer {answer['customer_id']!r}; "
                                                     "a request id names one request")
                answers[i] = answer
            elif stored.get(rid) == "pending" or not self.store.put_new("request", rid, "pending", 600):
                self._release(requests, claimed)
                raise Conflict(f"request_id {rid!r} is being decided by another call; retry")
            else:
                todo.append(i)
                claimed.append(i)
        return todo

    def _release(self, requests, rows) -> None:
        """Free the claimed request ids of a failed call (so a retry is decided)."""
        self.store.delete("request", [requests[i].request_id for i in rows if requests[i].request_id])

    def _decide_and_record(self, requests, rows: list[int], now: datetime) -> list[Pending]:
        """Decide until every row's sends are recorded on current states, then log and store once
        (a failure before that writes nothing but the sends already recorded, which only make
        later decisions more careful)."""
        done: list[Pending] = []
        left = rows
        repeats = max(np.unique([requests[i].customer_id for i in rows], return_counts=True)[1])
        for _ in range(MAX_ROUNDS + int(repeats)):
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
        policy, learner, cfg = self.policy, self.learner, self.config
        reqs = [requests[i] for i in rows]
        ids = [r.customer_id for r in reqs]
        raw_states = self.store.get_many("contact", ids)
        states = [self._state(cid, raw) for cid, raw in zip(ids, raw_states)]
        times = pd.DatetimeIndex([r.now or now for r in reqs]).as_unit("ns")
        now_s = times.asi8 // 10**9
        contact, unsub = history(states, now_s, list(cfg.channel_names))
        feats, known, pos = self.snapshot.rows(ids, [r.profile for r in reqs])
        edited = [f"consent_{c}" for c in cfg.channel_names] if not known.all() else []
        if unsub.any():
            feats = feats.copy()
            for k, c in enumerate(cfg.channel_names):
                feats[f"{c}_unsubscribed"] = np.where(unsub[:, k], 1, feats[f"{c}_unsubscribed"].to_numpy())
                edited.append(f"{c}_unsubscribed")
        keys = [str(r.request_id) if r.request_id else uuid.uuid4().hex for r in reqs]
        groups: dict[tuple, list[int]] = {}
        for j, r in enumerate(reqs):
            groups.setdefault((r.type, tuple(r.channels or ()) or None, tuple(r.offers or ()) or None), []).append(j)
        out: list[Pending] = []
        costs = channel_costs(cfg)
        for (kind, channels, offers), js in groups.items():
            js = np.array(js)
            request = Request(now=times[js], contexts=[reqs[j].context for j in js],
                              channels=list(channels) if channels else None, offers=list(offers) if offers else None,
                              horizon_hours=np.array([reqs[j].horizon_hours for j in js]), type=kind)
            sub = feats.iloc[js]
            hist = type(contact)(contact.sent_day[js], contact.sent_week[js], contact.hours_since_last[js],
                                 contact.unanswered[js])
            arrays = self.snapshot.arrays.take(pos[js], sub, edited)
            d = policy.decide(sub, hist, request, rng=KeyedRandom([keys[j] for j in js]), learner=learner,
                              arrays=arrays)
            out += self._pending(d, js, reqs, rows, keys, known, states, raw_states, now_s, costs, kind, hist)
        return out

    def _pending(self, d, js, reqs, rows, keys, known, states, raw_states, now_s, costs, kind,
                 hist) -> list[Pending]:
        cfg = self.config
        K, O = len(cfg.channel_names), len(cfg.offer_names)
        f = {c: d.frame[c].tolist() for c in ("action", "channel", "offer", "local_hour", "propensity",
                                               "expected_value", "explored", "control", "policy_version", "action_key")}
        send_at_ns = d.frame["send_at"].to_numpy("datetime64[ns]")
        out = []
        for pos, j in enumerate(js):
            r = reqs[j]
            send = f["action"][pos] == "send"
            ch, off = (f["channel"][pos], f["offer"][pos]) if send else (None, None)
            if kind == "transactional":
                allowed = np.isfinite(d.values[pos, 1:]).reshape(K, O).any(axis=1)
                channels = [c for k, c in enumerate(cfg.channel_names) if allowed[k]]
            else:
                channels = [ch] if send else []
            scores = [{"channel": cfg.channel_names[a // O], "offer": cfg.offer_names[a % O],
                       "local_hour": int(d.scores.hour[pos, a // O, a % O]),
                       "expected_value": float(d.values[pos, a + 1]), "probability": float(d.action_dist[pos, a + 1])}
                      for a in np.flatnonzero(np.isfinite(d.values[pos, 1:]))]
            send_at = str(send_at_ns[pos])[:26] + "Z" if send else None
            decision = {
                "decision_id": keys[j] if not r.request_id else uuid.uuid5(uuid.NAMESPACE_URL, keys[j]).hex,
                "request_id": r.request_id, "customer_id": r.customer_id, "action": f["action"][pos],
                "channel": ch, "channels": channels, "send_at": send_at,
                "local_hour": int(f["local_hour"][pos]) if send else None, "offer": off,
                "propensity": f["propensity"][pos], "expected_value": f["expected_value"][pos],
                "explored": f["explored"][pos], "control": f["control"][pos],
                "known_customer": bool(known[j]), "scores": scores, "reasons": d.reasons[pos],
                "policy_version": f["policy_version"][pos],
            }
            choice = int(d.choice[pos])
            record = {"c": r.customer_id, "k": f["action_key"][pos] if send else SUPPRESS, "ch": ch, "o": off,
                      "x": d.learner_inputs[pos, choice].tolist(), "t": float(now_s[j]), "type": kind,
                      "s": int(send_at_ns[pos].astype(np.int64)) / 1e9 if send else float(now_s[j]),
                      "r": -float(costs[cfg.channel_names.index(ch)]) if send else 0.0, "m": False}
            contact = None
            if send and kind == "marketing":
                t = int(send_at_ns[pos].astype(np.int64)) / 1e9
                contact = (r.customer_id, raw_states[j], states[j].with_send(t, ch).to_json())
            # the features are those of the snapshot (reproducible from the data directory as of
            # its day) plus the contact history read from the store: both are logged by reference
            inputs = {"request": {"context": r.context, "channels": r.channels, "offers": r.offers,
                                  "horizon_hours": r.horizon_hours, "type": r.type},
                      "features_as_of": self.snapshot.as_of.isoformat(),
                      "contact": {"sent_24h": hist.sent_day[pos].tolist(), "sent_168h": hist.sent_week[pos].tolist(),
                                  "hours_since_last": float(hist.hours_since_last[pos])
                                  if np.isfinite(hist.hours_since_last[pos]) else None,
                                  "unanswered": hist.unanswered[pos].tolist()}}
            out.append(Pending(rows[j], decision, record, contact, inputs))
        return out

    def _write(self, finished: list[Pending]) -> None:
        """Log (write-ahead), keep what feedback needs, store idempotent answers."""
        if not finished:
            return
        logged = [{**p.decision, "now": datetime.fromtimestamp(p.record["t"], timezone.utc).isoformat(),
                   "type": p.record["type"], "action_key": p.record["k"], "learner_input": p.record["x"],
                   **(p.inputs or {})} for p in finished]
        self.log.append("decisions", logged)
        self.store.put_many("decision", [(p.decision["decision_id"], json.dumps(p.record), self._ttl(p.record["t"]))
                                         for p in finished])
        after = self.policy.online.learn_after_hours * 3600.0
        self.store.enqueue([(p.decision["decision_id"], p.record["t"] + after) for p in finished
                            if p.record["type"] == "marketing"])
        self.store.put_many("request", [(p.decision["request_id"], json.dumps(p.decision), 7 * 86400.0)
                                        for p in finished if p.decision["request_id"]])

    def _state(self, customer: str, raw: str | None) -> ContactState:
        """The stored contact state, or (never seen by the service) the one the data shows."""
        return ContactState.from_json(raw) if raw is not None else self.snapshot.contact_state(customer)

    # ------------------------------------------------------------------ feedback
    def feedback(self, fb: FeedbackRequest) -> dict:
        """Record one feedback event (see the module docstring); idempotent."""
        raw = self.store.get("decision", fb.decision_id)
        if raw is None:
            raise UnknownDecision(f"no decision {fb.decision_id!r} (unknown, or older than the attribution window)")
        rec = json.loads(raw)
        if rec["ch"] is None and fb.event != "converted":
            raise InvalidInput("event", f"decision {fb.decision_id} sent nothing; only 'converted' (an order "
                                        "without a message) applies to it")
        if fb.event == "converted" and fb.value is None:
            raise InvalidInput("value", "a conversion needs the order value")
        ts = fb.ts
        if ts.timestamp() < rec["s"]:
            at = datetime.fromtimestamp(rec["s"], timezone.utc).isoformat()
            raise InvalidInput("ts", f"{ts.isoformat()} is before the message went out ({at})" if rec["ch"] else
                               f"{ts.isoformat()} is before the decision ({at})")
        reward = event_reward(self.config, rec["o"], fb.event, fb.value, redeems=rec["o"] not in (None, "none"))
        key = f"{fb.event}|{ts.isoformat()}"
        answer = {"decision_id": fb.decision_id, "event": fb.event, "reward": reward}
        if key not in rec.get("f", ()):  # write-ahead; a retry after a crash may log it twice (readers dedupe)
            self.log.append("feedback", [{"decision_id": fb.decision_id, "customer_id": rec["c"], "event": fb.event,
                                          "ts": ts.isoformat(), "value": fb.value, "channel": rec["ch"],
                                          "offer": rec["o"], "reward": reward, "type": rec["type"]}])
        counts = rec["type"] == "marketing" and ts.timestamp() - rec["t"] <= self.window_s
        accepted = self._add_feedback(fb.decision_id, key, reward if counts else 0.0)
        if rec["ch"] is not None:  # idempotent, so applied again on a retry after a crash
            self._update_contact(rec["c"], rec["ch"], fb.event)
        return {**answer, "accepted": accepted}

    def _add_feedback(self, did: str, key: str, reward: float) -> bool:
        """Add an event to its decision's record once (the record keeps the keys of the events it
        counted: compare-and-set makes "seen" and "counted" one step); False if already there."""
        for _ in range(MAX_ROUNDS * 5):
            raw = self.store.get("decision", did)
            if raw is None:
                raise UnknownDecision(f"decision {did!r} expired while its feedback was recorded")
            rec = json.loads(raw)
            if key in rec.get("f", ()):
                return False
            new = {**rec, "r": rec["r"] + reward, "f": rec.get("f", []) + [key]}
            if self.store.cas_many("decision", [(did, raw, json.dumps(new))], self._ttl(rec["t"]))[0]:
                if rec["m"] and reward != 0.0:  # already in the statistics: add the increment
                    self.store.add_stats({rec["k"]: learning.increment(np.array(rec["x"]), reward, rec["r"])})
                return True
        raise Conflict(f"decision {did} kept changing; retry")

    def _update_contact(self, customer: str, channel: str, event: str) -> None:
        for _ in range(MAX_ROUNDS * 5):
            raw = self.store.get("contact", customer)
            new = self._state(customer, raw).with_event(channel, event).to_json()
            if new == raw or self.store.cas_many("contact", [(customer, raw, new)])[0]:
                return
        raise Conflict(f"contact state of {customer} kept changing; retry")
