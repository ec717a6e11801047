"""The online learner's statistics as flat vectors, the shape the store adds atomically.

One vector per action: ``[n, X'X (D*D, row-major), X'r (D), r'r]`` of ``decision.online.ActionStats``;
and one per (response, channel) of the response calibration (``decision.calibration``), under
keys ``"calibration|open|email"``: ``[n, A (P*P), b (P)]``. A marketing send's opens and
unsubscribes enter the calibration when it matures (``calibration_deltas``); a first open or
unsubscribe reported after that adds its increment (``calibration_increment``).
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


def is_calibration(key: str) -> bool:
    return key.startswith(cal.KEY_PREFIX)


def calibration_from_vectors(channels, strength: float, vectors: dict[str, np.ndarray]) -> cal.ResponseCalibration:
    return cal.ResponseCalibration.from_vectors(channels, strength, vectors)


# responses of a message that calibrate the offline models, and the events that show each
CALIBRATED = {"open": ("opened", "clicked"), "unsubscribe": ("unsubscribed",)}


def _responded(counted, events) -> bool:
    return any(k.split("|", 1)[0] in events for k in counted)


def calibration_deltas(rec) -> dict[str, np.ndarray]:
    """What a maturing marketing send adds to the calibration: one observation per response
    (did it open, did it unsubscribe, from the events counted so far); empty for anything else."""
    if not rec.calibration or rec.channel is None:
        return {}
    p = {"open": rec.calibration[0], "unsubscribe": rec.calibration[1]}
    z = np.asarray(rec.calibration[2:], dtype=float)[None, :]
    return {cal.key(r, rec.channel): cal.observations(np.array([p[r]]), z,
                                                      np.array([float(_responded(rec.counted, ev))])).to_vector()
            for r, ev in CALIBRATED.items()}


def calibration_increment(rec, event: str) -> dict[str, np.ndarray]:
    """A matured send's first ``event`` of a calibrated response, reported late: the change from
    "did not respond" to "responded" in its observation (``n`` and ``A`` are unchanged)."""
    if not rec.calibration or rec.channel is None:
        return {}
    out = {}
    for i, (r, ev) in enumerate(CALIBRATED.items()):
        if event in ev and not _responded(rec.counted, ev):
            z = np.asarray(rec.calibration[2:], dtype=float)[None, :]
            p = np.array([rec.calibration[i]])
            out[cal.key(r, rec.channel)] = (cal.observations(p, z, np.ones(1)).to_vector()
                                            - cal.observations(p, z, np.zeros(1)).to_vector())
    return out


def observation(x: np.ndarray, reward: float) -> np.ndarray:
    """One decision with its reward so far."""
    return to_vector(ActionStats(1.0, np.outer(x, x), reward * x, reward * reward))


def increment(x: np.ndarray, delta: float, reward_before: float) -> np.ndarray:
    """A late reward increment of a decision already in the statistics (as ``OnlineLearner.add_reward``)."""
    return to_vector(ActionStats(0.0, np.zeros((D, D)), delta * x, 2.0 * reward_before * delta + delta * delta))


def add(deltas: dict[str, np.ndarray], key: str, vector: np.ndarray) -> None:
    deltas[key] = deltas[key] + vector if key in deltas else vector
