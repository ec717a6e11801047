"""A policy learner for logged bandit data of any source.

Input is obp-style logged feedback (``training.ope.LoggedBandit``): context, action, reward,
propensity, optionally a position and the actions' own features (``action_context``, one row per
action) and per-(round, action) features such as a user-item affinity (``pair_context``).

The learner fits a LightGBM reward model ``q(x, a[, position])`` on the logged rounds weighted by
``1 / propensity`` (so that actions the logging policy favoured do not dominate; with a uniform
logger the weights are constant) and acts greedily on it, or by a softmax of temperature
``temperature`` to keep exploring. Actions are described by their own features when given, so
the model can generalize across similar actions; their id is a feature too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.decision.threads import lightgbm_threads
from nextbest.features.config import Config, load_config
from nextbest.training.ope import LoggedBandit


@dataclass
class Design:
    """Builds the model input of (rounds, action, position)."""

    context: pd.DataFrame
    n_actions: int
    action_context: pd.DataFrame | None = None
    pair_context: np.ndarray | None = None   # (n, A, r)

    def frame(self, rows: np.ndarray, action: np.ndarray, position: np.ndarray | None) -> pd.DataFrame:
        out = self.context.iloc[rows].reset_index(drop=True).copy()
        out["action"] = pd.Categorical(action, categories=range(self.n_actions))
        if self.action_context is not None:
            ac = self.action_context.iloc[action].reset_index(drop=True)
            for c in ac.columns:
                out[f"action_{c}"] = ac[c].to_numpy() if ac[c].dtype.kind in "fiub" else pd.Categorical(
                    ac[c].to_numpy(), categories=self.action_context[c].astype("category").cat.categories)
        if self.pair_context is not None:
            pc = self.pair_context[rows, action]
            for r in range(pc.shape[1] if pc.ndim == 2 else 1):
                out[f"pair_{r}"] = pc[:, r] if pc.ndim == 2 else pc
        if position is not None:
            out["position"] = np.asarray(position)
        return out


def as_frame(context) -> pd.DataFrame:
    if isinstance(context, pd.DataFrame):
        return context
    context = np.asarray(context)
    return pd.DataFrame(context, columns=[f"x{i}" for i in range(context.shape[1])])


class LoggedBanditLearner:
    """Learn a policy from logged bandit feedback (scikit-learn style).

    Parameters
    ----------
    n_positions : int
        Slots the policy fills (1 without positions).
    temperature : float
        0 acts greedily; > 0 plays a softmax of the predicted rewards / temperature.
    params : dict, optional
        LightGBM regressor parameters over the config's ``offpolicy.logged_learner``.
    config : Config, optional
        The business config whose ``offpolicy.logged_learner`` is used; default: ``defaults.yaml``'s.
    """

    def __init__(self, n_positions: int = 1, temperature: float = 0.0, params: dict | None = None,
                 random_state: int = 0, config: Config | None = None):
        self.n_positions = n_positions
        self.temperature = temperature
        self.params = params
        self.random_state = random_state
        self.config = config

    def fit(self, feedback: LoggedBandit, action_context: pd.DataFrame | None = None,
            pair_context: np.ndarray | None = None) -> "LoggedBanditLearner":
        import lightgbm as lgb

        if feedback.context is None:
            raise ValueError("the learner needs a context")
        self.n_actions_ = feedback.n_actions
        self.action_context_ = action_context
        self.uses_position_ = feedback.position is not None and self.n_positions > 1
        design = Design(as_frame(feedback.context), feedback.n_actions, action_context, pair_context)
        X = design.frame(np.arange(feedback.n), feedback.action, feedback.position if self.uses_position_ else None)
        weight = 1.0 / feedback.propensity
        config = load_config() if self.config is None else self.config
        params = {**config.offpolicy.logged_learner.params(), "verbose": -1, "force_col_wise": True,
                  "random_state": self.random_state, "n_jobs": lightgbm_threads(), **(self.params or {})}
        self.model_ = lgb.LGBMRegressor(**params).fit(X, feedback.reward, sample_weight=weight / weight.mean())
        self.columns_ = list(X.columns)
        return self

    def predict_reward(self, context, pair_context: np.ndarray | None = None) -> np.ndarray:
        """Predicted reward of every action at every position, (n, A, L)."""
        ctx = as_frame(context)
        n, A, L = len(ctx), self.n_actions_, self.n_positions
        design = Design(ctx, A, self.action_context_, pair_context)
        P = L if self.uses_position_ else 1
        alt = np.repeat(np.arange(A * P), n)                      # alternative-major: (action, position), round
        X = design.frame(np.tile(np.arange(n), A * P), alt // P, alt % P if self.uses_position_ else None)
        q = self.model_.predict(X[self.columns_]).reshape(A, P, n).transpose(2, 0, 1)
        return np.broadcast_to(q, (n, A, L)).copy()

    def action_dist(self, context, pair_context: np.ndarray | None = None) -> np.ndarray:
        """The learned policy's probability of every action at every position, (n, A, L)."""
        q = self.predict_reward(context, pair_context)
        if self.temperature > 0:
            z = np.exp((q - q.max(axis=1, keepdims=True)) / self.temperature)
            return z / z.sum(axis=1, keepdims=True)
        best = q.argmax(axis=1)                                   # (n, L)
        out = np.zeros_like(q)
        n, L = best.shape
        out[np.arange(n)[:, None], best, np.arange(L)[None, :]] = 1.0
        return out
