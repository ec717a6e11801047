"""An engine's background work: the learner sync and the champion hot swap, each in a daemon
thread that runs it every so many seconds (``serving.learner_sync_seconds``, ``reload_seconds``)
and keeps serving if a round fails (the next round retries). A round that fails because the
store is unreachable logs one line per :data:`OUTAGE_LOG_EVERY_S` (:class:`Throttled`), not a
traceback per round.

Learner sync (:class:`LearnerSync`), every worker:

1. **Mature**: decisions due ``learn_after_hours`` after they were taken are claimed from the
   store's queue (each by one worker), marked as matured on their record (``Store.update``) and
   their reward so far added to the shared statistics (``serving.learning.observation``);
   feedback that arrives later adds its increment directly (``serving.feedback``).
2. **Forget** (``online.half_life_days``): the shared statistics lose half their weight per
   half-life. Decision: the service decays the *store's* statistics, once per
   :data:`DECAY_EVERY_S` by one atomic ``Store.decay_stats`` (whichever worker asks first;
   the factor covers the time since the last decay), rather than each worker decaying its own
   copy: scaling commutes with adding, so every worker then reads the same decayed learner, as
   the closed loop's :meth:`OnlineLearner.decay` does once per simulated day. 0 (the default)
   never forgets.
3. **Reload** the shared statistics when their version changed, after **checking for a change**
   in the response calibration (:func:`detect_changes`, ``online.change_z``; the windows and
   their claim are described in ``serving.learning``).

Hot swap (:func:`newer_champion`): a newly promoted champion with the same channels, offers and
features is loaded, must pass a smoke decision (``decision.registry.smoke_decision``) and is
swapped in (requests in flight finish on the old one). A champion that cannot be loaded or
fails the smoke decision is refused: the service keeps the last good policy and says so once
per refused version.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np

from nextbest.decision import calibration as cal
from nextbest.decision.online import OnlineLearner
from nextbest.serving import learning
from nextbest.serving.records import DecisionRecord, ttl
from nextbest.serving.store import Conflict, Store, is_outage

log = logging.getLogger(__name__)

DECAY_EVERY_S = 3600.0   # the shared statistics are decayed at most this often
PRUNE_EVERY_S = 300.0    # expired keys are dropped (where the backend does not) at most this often
RETRY_AFTER_S = 1.0      # a decision whose record kept changing is matured again this much later
OUTAGE_LOG_EVERY_S = 10.0  # during a store outage, one log line per this many seconds


class Throttled:
    """Log a recurring problem once per ``every_s`` seconds per key (with how often it recurred),
    so an outage writes a line per interval instead of a traceback per request.

    Parameters
    ----------
    every_s : float
    """

    def __init__(self, every_s: float = OUTAGE_LOG_EVERY_S):
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            last, n = self._last.get(key, (-float("inf"), 0))
            if now - last < self.every_s:
                self._last[key] = (last, n + 1)
                return
            self._last[key] = (now, 0)
        log.warning(message + (f" ({n} more time(s) since the last report)" if n else ""), *args)

    def clear(self, key: str) -> bool:
        """Forget ``key``; True if it had been reported (the problem is over)."""
        with self._lock:
            return self._last.pop(key, None) is not None


OUTAGES = Throttled()


class Every:
    """Daemon threads, each running a function every so many seconds until :meth:`stop`."""

    def __init__(self):
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, fn, seconds: float) -> None:
        t = threading.Thread(target=self._loop, args=(fn, seconds), daemon=True, name=fn.__name__)
        t.start()
        self._threads.append(t)

    def _loop(self, fn, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                fn()
            except Exception as exc:  # keep serving; the next round retries
                if is_outage(exc):
                    OUTAGES.warning("store", "store unavailable (%s: %s); background %s waits for it",
                                    type(exc).__name__, exc, fn.__name__)
                else:
                    log.exception("background %s failed", fn.__name__)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)


class LearnerSync:
    """Mature due decisions, decay and reload the shared statistics (see the module docstring).

    Parameters
    ----------
    store : Store
    """

    def __init__(self, store: Store):
        self.store = store
        self._version = -1
        self._pruned = 0.0
        self._calibration = None  # as last read: what maturing sends' change-check windows are measured against

    def run(self, online, keep_s: float, now_s: float | None = None,
            channels: tuple = (), offers: tuple = ()) -> tuple[int, OnlineLearner | None]:
        """One round at ``now_s`` (default: the clock) with the serving policy's ``online``
        settings and records kept ``keep_s``; returns how many decisions matured and a learner
        on the new statistics, its response calibration over ``channels`` and ``offers`` included (None if
        they did not change)."""
        now_s = time.time() if now_s is None else now_s
        matured = 0
        checks = online.change_z > 0
        if checks and self._calibration is None:
            self._calibration = learning.calibration_from_vectors(channels, online.calibration_strength,
                                                                  self.store.stats()[1], offers)
        while True:
            ids = self.store.claim(self.store.due(now_s))
            if not ids:
                break
            matured += mature(self.store, ids, keep_s, now_s, self._calibration if checks else None)
        if online.half_life_days > 0 or online.calibration_half_life_days > 0:
            self.store.decay_stats(online.half_life_days * 86400.0, now_s, DECAY_EVERY_S,
                                   online.calibration_half_life_days * 86400.0)
        if now_s - self._pruned > PRUNE_EVERY_S:
            self.store.prune()
            self._pruned = now_s
        if self.store.stats_version() == self._version:
            return matured, None
        self._version, stats = self.store.stats()
        calibration = learning.calibration_from_vectors(channels, online.calibration_strength, stats, offers)
        if checks and detect_changes(self.store, online, stats, self._calibration or calibration):
            self._version, stats = self.store.stats()
            calibration = learning.calibration_from_vectors(channels, online.calibration_strength, stats, offers)
        self._calibration = calibration
        return matured, OnlineLearner(online, learning.state_from_vectors(stats), calibration=calibration)


def detect_changes(store: Store, online, stats: dict[str, np.ndarray], calibration) -> list[str]:
    """Check every change window with at least ``calibration.MIN_BATCH`` observations since its
    last check (claimed by compare-and-set, so once whatever the number of workers) against
    ``calibration`` (what the window's sends were scored with: the worker's previous read); a
    calibration key whose window's surprise exceeds ``online.change_z`` keeps
    ``online.change_forget`` of everything else it holds (sends other workers matured since this
    worker's read included), the window's own observations whole (``Store.rescale_stats``).
    Returns the keys that forgot (see ``serving.learning``)."""
    forgot = []
    for ck, cum in stats.items():
        if not ck.startswith(learning.CHECK_PREFIX):
            continue
        response, name = ck[len(learning.CHECK_PREFIX):].split("|", 1)
        claimed: dict = {}

        def claim(cur: str | None, cum=cum, claimed=claimed) -> str | None:
            claimed.pop("window", None)
            consumed = np.asarray(json.loads(cur), float) if cur else np.zeros(len(cum))
            if len(consumed) != len(cum) or consumed[0] > cum[0]:
                return None  # another worker claimed from a newer read than this one
            w = cum - consumed
            if w[0] < cal.MIN_BATCH:
                return None
            claimed["window"] = w
            return json.dumps(cum.tolist())

        if store.update(learning.CHECK_NS, ck, claim) is None or "window" not in claimed:
            continue
        w = claimed["window"]
        own = cal.CalibrationStats.from_vector(w[learning.WINDOW:])
        if own.n <= 0 or np.linalg.eigvalsh(own.A).min() < -1e-9 * max(1.0, np.abs(own.A).max()):
            continue  # a claim that mixes two histories (a store cleared while a worker claimed): not a window
        z = calibration.surprise_of(response, name, w[:learning.WINDOW])
        k = cal.key(response, name)
        if abs(z) > online.change_z and k in stats:
            keep = online.change_forget
            store.rescale_stats(k, keep, (1.0 - keep) * w[learning.WINDOW:])
            forgot.append(k)
            log.info("calibration %s: %d sends %.1f standard errors from the calibration; it keeps %.0f%% "
                     "of what it knew before them (a change)", k, w[0], z, 100 * keep)
    return forgot


def mature(store: Store, ids: list[str], keep_s: float, now_s: float, calibration=None) -> int:
    """Mark claimed decisions as matured and add their reward so far to the shared statistics;
    returns how many were claimed. A record that expired is skipped; one that kept changing is
    queued again (:data:`RETRY_AFTER_S`)."""
    deltas: dict[str, np.ndarray] = {}

    def flip(raw: str | None) -> str | None:
        if raw is None:
            return None  # expired
        rec = DecisionRecord.from_json(raw)
        return None if rec.matured else rec.as_matured().to_json()

    try:
        for did, raw in zip(ids, store.get_many("decision", ids)):
            if raw is None:
                continue
            try:
                new = store.update("decision", did, flip, ttl(DecisionRecord.from_json(raw), keep_s, time.time()))
            except Conflict:
                store.enqueue([(did, now_s + RETRY_AFTER_S)])
                continue
            if new is not None:
                rec = DecisionRecord.from_json(new)
                learning.add(deltas, rec.action_key, learning.observation(np.array(rec.learner_input), rec.reward))
                added = learning.calibration_deltas(rec)
                for k, v in (added | learning.calibration_windows(rec, calibration, added)).items():
                    learning.add(deltas, k, v)
    finally:
        store.add_stats(deltas)  # what was marked as matured is in the statistics, whatever failed after
    return len(ids)


def newer_champion(policy, snapshot, refused: set | None = None):
    """The newly promoted champion if there is one the running service can load (same channels,
    offers and features) and that passes a smoke decision, else None. A version that cannot be
    loaded is added to ``refused`` and logged once; it is not tried again."""
    from nextbest.decision import registry

    refused = set() if refused is None else refused
    version = registry.champion_version()
    if version is None or f"{registry.MODEL_NAME}/{version}" == policy.version or version in refused:
        return None
    try:
        new = registry.load_version(version)
        registry.smoke_decision(new)
    except Exception as exc:  # noqa: BLE001 - any failure to load or decide refuses the version
        if is_outage(exc):
            raise
        refused.add(version)
        log.error("champion %s cannot be served (%s: %s); keeping %s. Promote a version that loads "
                  "(`nextbest promote VERSION` checks it)", version, type(exc).__name__, exc, policy.version)
        return None
    if new.config.channel_names != policy.config.channel_names or new.config.offer_names != policy.config.offer_names:
        log.error("champion %s has other channels or offers than the running one; restart the service to "
                  "load it (the snapshot and contact states follow the configured channels)", version)
        refused.add(version)
        return None
    missing = sorted(set(new.models.customer_columns) - set(snapshot.frame.columns))
    if missing:
        log.error("champion %s needs features the running snapshot lacks (%s); restart the service to load it",
                  version, missing[:5])
        refused.add(version)
        return None
    return new


class SnapshotWatch:
    """Watches the data directory for a new export and loads it (``Engine.check_snapshot``).

    An export is loaded once it has stayed unchanged between two looks (``serving.reload_seconds``
    apart), so a writer replacing the tables one by one is never read half way; an export that
    changes while it is read is read again at the next look. Contact states live in the store and
    are kept. An export that fails the data contract, or lacks a feature the serving policy needs,
    is refused (logged once) and the running snapshot stays.
    """

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.seen: tuple | None = None       # the export at the last look
        self.refused: set[tuple] = set()     # exports that could not be loaded

    def newer(self, current, policy):
        """The new export's :class:`Snapshot` if there is one ready to serve, else None."""
        from nextbest.serving.snapshot import Snapshot, source_fingerprint

        seen = source_fingerprint(self.data_dir)
        previous, self.seen = self.seen, seen
        if seen == current.source or seen != previous or seen in self.refused:
            return None
        try:
            new = Snapshot(self.data_dir, policy.config)
        except Exception as exc:  # noqa: BLE001 - bad data keeps the running snapshot
            if is_outage(exc):
                raise
            self.refused.add(seen)
            log.error("the data directory's new export cannot be served (%s: %s); keeping the snapshot as of %s",
                      type(exc).__name__, exc, current.as_of)
            return None
        if new.source != source_fingerprint(self.data_dir):
            return None  # written to while it was read: the next look reads it again
        missing = sorted(set(policy.models.customer_columns) - set(new.frame.columns))
        if missing:
            self.refused.add(seen)
            log.error("the new export lacks features the serving policy needs (%s); keeping the snapshot as of %s",
                      missing[:5], current.as_of)
            return None
        log.info("snapshot reloaded: %d customers as of %s (was %s)", len(new.index), new.as_of, current.as_of)
        return new
