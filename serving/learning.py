"""The online learner's statistics as flat vectors, the shape the store adds atomically.

One vector per action: ``[n, X'X (D*D, row-major), X'r (D), r'r]`` of ``decision.online.ActionStats``;
and one per (response, channel) of the response calibration (``decision.calibration``), under
keys ``"calibration|open|email"`` (and ``"calibration|order|pct10"``): ``[n, A (P*P), b (P)]``.
A marketing send's opens, unsubscribes and orders after an open enter the calibration when it
matures (``calibration_deltas``); a first event reported after that adds its increment
(``calibration_increment``).

Change detection (``decision.calibration``, "Change detection"): a maturing send also adds its
**check window** ``[1, y - q, q (1 - q), p z]`` (``ResponseCalibration.window``, under the
calibration as the worker last read it), followed by the calibration observation it adds, to a
cumulative vector under ``"calibration-check|open|email"`` (and ``|order|<offer>``). These never
decay. A worker that sees at least ``calibration.MIN_BATCH`` new observations since the last check
claims them by compare-and-set on the key's "consumed so far" (kv namespace ``calibration_check``;
a worker whose read is older than the last claim claims nothing), so each observation is checked
once whatever the number of workers. If the window's surprise, measured against the calibration
the worker read before, exceeds ``online.change_z``, the calibration key keeps
``online.change_forget`` of everything else it holds (sends other workers matured since the read
included) and the window's own observations whole: one atomic ``Store.rescale_stats`` (``keep x
value + (1 - keep) x the window's observations``), which never makes statistics negative whatever
was added since the read.

Known limits, by decision: late feedback (``calibration_increment``) does not enter the windows
(by maturity, 24 h, nearly every open has arrived); with several workers a change can be forgotten
twice, when a window scored under a calibration read before the first forget is claimed after it
(more of the old is forgotten, nothing is lost or made invalid); ``nextbest store rebuild`` does
not recreate the windows or replay the forgets (the calibration's statistics are rebuilt without
them; the windows start again and a calibration that no longer fits is caught by the next check).
"""

from __future__ import annotations

import numpy as np

from nextbest.decision import calibration as cal
from nextbest.decision.online import D, ActionStats, LearnerState

SIZE = 1 + D * D + D + 1


def to_vector(s: ActionStats) -> np.ndarray:
    return np.concatenate([[s.n], s.xx.ravel(), s.xr, [s.rr]])


def from_vector(v: np.ndarray) -> ActionStats:
    v = np.asarray(v, dtype=float)
    if len(v) != SIZE:
        raise ValueError(f"learner statistics vector of length {len(v)}, expected {SIZE}")
    return ActionStats(float(v[0]), v[1:1 + D * D].reshape(D, D).copy(), v[1 + D * D:1 + D * D + D].copy(), float(v[-1]))


def state_from_vectors(vectors: dict[str, np.ndarray]) -> LearnerState:
    """The learner's per-action statistics (the calibration's keys are left to :func:`calibration_from_vectors`)."""
    return LearnerState({k: from_vector(v) for k, v in vectors.items() if not is_calibration(k)})


CHECK_PREFIX = cal.CHECK_PREFIX
CHECK_NS = "calibration_check"


def is_calibration(key: str) -> bool:
    """A key of the calibration or of its change checks (not a learner action)."""
    return key.startswith(cal.KEY_PREFIX) or key.startswith(CHECK_PREFIX)


def check_key(calibration_key: str) -> str:
    """``"calibration|open|email"`` -> ``"calibration-check|open|email"``."""
    return CHECK_PREFIX + calibration_key[len(cal.KEY_PREFIX):]


def calibration_windows(rec, calibration: cal.ResponseCalibration | None,
                        added: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a maturing marketing send adds to the change checks of the calibration keys it adds to
    (``added``: its :func:`calibration_deltas`), opens and orders after an open (unsubscribes are
    too rare to tell a change): the check's window (``ResponseCalibration.window``) followed by
    the very observation ``added`` holds for that key, so that a forget keeps the window's own
    observations whole (see the module docstring). Empty without a calibration."""
    x = _inputs(rec)
    if x is None or calibration is None:
        return {}
    p_open, _, q, z = x
    out = {}
    for response, name, p, events in (("open", rec.channel, p_open, OPEN_EVENTS), ("order", rec.offer, q, ORDER_EVENTS)):
        k = cal.key(response, name)
        if k in added and name in calibration.groups(response):
            y = np.array([float(_responded(rec.counted, events))])
            out[check_key(k)] = np.concatenate([calibration.window(response, name, np.array([p]), z, y), added[k]])
    return out


WINDOW = 3 + cal.P  # where a check vector's own calibration observations start


def calibration_from_vectors(channels, strength: float, vectors: dict[str, np.ndarray],
                             offers=()) -> cal.ResponseCalibration:
    return cal.ResponseCalibration.from_vectors(channels, strength, vectors, offers)


def observation(x: np.ndarray, reward: float) -> np.ndarray:
    """One decision with its reward so far."""
    return to_vector(ActionStats(1.0, np.outer(x, x), reward * x, reward * reward))


def increment(x: np.ndarray, delta: float, reward_before: float) -> np.ndarray:
    """A late reward increment of a decision already in the statistics (as ``OnlineLearner.add_reward``)."""
    return to_vector(ActionStats(0.0, np.zeros((D, D)), delta * x, 2.0 * reward_before * delta + delta * delta))


def add(deltas: dict[str, np.ndarray], key: str, vector: np.ndarray) -> None:
    deltas[key] = deltas[key] + vector if key in deltas else vector


# responses of a message that calibrate the offline models, and the events that show each
OPEN_EVENTS, UNSUB_EVENTS, ORDER_EVENTS = ("opened", "clicked"), ("unsubscribed",), ("converted",)


def _responded(counted, events) -> bool:
    return any(k.split("|", 1)[0] in events for k in counted)


def _inputs(rec):
    """(p_open, p_unsub, p_order_open or None, z (1, P)) of a record, or None if it has none."""
    c = rec.calibration
    if not c or rec.channel is None or len(c) not in (2 + cal.P, 3 + cal.P):
        return None
    q = c[2] if len(c) == 3 + cal.P else None
    return c[0], c[1], q, np.asarray(c[-cal.P:], dtype=float)[None, :]


def _obs(p: float, z: np.ndarray, y: bool) -> np.ndarray:
    return cal.observations(np.array([p]), z, np.array([float(y)])).to_vector()


def _order_offer(rec) -> str | None:
    """The offer whose order calibration a send's orders observe: the decided one, unless the
    message showed another when it was opened (``serving.render``); its P(order | opened) was
    estimated for the decided offer, so such a message observes none."""
    return rec.offer if rec.offer is not None and rec.shown_offer == rec.offer else None


def calibration_deltas(rec) -> dict[str, np.ndarray]:
    """What a maturing marketing send adds to the calibration, from the events counted so far:
    did it open, did it unsubscribe, and, if it opened, did an order follow (per offer); empty
    for anything else."""
    x = _inputs(rec)
    if x is None:
        return {}
    p_open, p_unsub, q, z = x
    opened = _responded(rec.counted, OPEN_EVENTS)
    out = {cal.key("open", rec.channel): _obs(p_open, z, opened),
           cal.key("unsubscribe", rec.channel): _obs(p_unsub, z, _responded(rec.counted, UNSUB_EVENTS))}
    if opened and q is not None and _order_offer(rec) is not None:
        out[cal.key("order", rec.offer)] = _obs(q, z, _responded(rec.counted, ORDER_EVENTS))
    return out


def calibration_increment(rec, event: str) -> dict[str, np.ndarray]:
    """A matured send's ``event`` reported late (``rec``: the record before it was counted): what
    it changes in :func:`calibration_deltas`, so that late feedback adds exactly what it would have
    added at maturity. A first open turns "did not open" into "opened" and starts the order
    observation; a first order after an open turns its "no order" into "order"."""
    x = _inputs(rec)
    if x is None:
        return {}
    p_open, p_unsub, q, z = x
    opened = _responded(rec.counted, OPEN_EVENTS)
    out = {}
    if event in OPEN_EVENTS and not opened:
        out[cal.key("open", rec.channel)] = _obs(p_open, z, True) - _obs(p_open, z, False)
        if q is not None and _order_offer(rec) is not None:
            out[cal.key("order", rec.offer)] = _obs(q, z, _responded(rec.counted, ORDER_EVENTS))
    elif event in UNSUB_EVENTS and not _responded(rec.counted, UNSUB_EVENTS):
        out[cal.key("unsubscribe", rec.channel)] = _obs(p_unsub, z, True) - _obs(p_unsub, z, False)
    elif (event in ORDER_EVENTS and opened and q is not None and _order_offer(rec) is not None
          and not _responded(rec.counted, ORDER_EVENTS)):
        out[cal.key("order", rec.offer)] = _obs(q, z, True) - _obs(q, z, False)
    return out
