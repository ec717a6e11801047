"""The online learner's statistics as flat vectors, the shape the store adds atomically.

One vector per action: ``[n, X'X (D*D, row-major), X'r (D), r'r]`` of ``decision.online.ActionStats``.
"""

from __future__ import annotations

import numpy as np

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
    return LearnerState({k: from_vector(v) for k, v in vectors.items()})


def observation(x: np.ndarray, reward: float) -> np.ndarray:
    """One decision with its reward so far."""
    return to_vector(ActionStats(1.0, np.outer(x, x), reward * x, reward * reward))


def increment(x: np.ndarray, delta: float, reward_before: float) -> np.ndarray:
    """A late reward increment of a decision already in the statistics (as ``OnlineLearner.add_reward``)."""
    return to_vector(ActionStats(0.0, np.zeros((D, D)), delta * x, 2.0 * reward_before * delta + delta * delta))


def add(deltas: dict[str, np.ndarray], key: str, vector: np.ndarray) -> None:
    deltas[key] = deltas[key] + vector if key in deltas else vector
