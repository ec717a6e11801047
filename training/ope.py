"""Off-policy evaluation: the value of a candidate policy from data another policy logged.

Vocabulary and shapes follow obp (Saito et al.): ``n`` logged rounds, ``A`` actions, optional
``L`` positions (slots).

- ``action`` (n,) int, ``reward`` (n,), ``propensity`` (n,): what the logging policy did, what
  came back, and the probability with which it chose that action (at that position).
- ``action_dist`` (n, A) or (n, A, L): the candidate's probability of each action per round.
- ``estimated_rewards`` (n, A) or (n, A, L): a reward model's prediction per action (for DM/DR),
  cross-fitted so that no round's prediction saw its own reward (:class:`CrossFitRewardModel`).

Estimators (``w = pi_e(a_i | x_i) / propensity_i``):

- IPS: ``mean(w r)``; unbiased when the logging policy gives every action the candidate
  takes a positive probability.
- SNIPS: ``sum(w r) / sum(w)``; biased but much steadier when the weights are large.
- DR: ``mean(sum_a pi_e(a|x) q(x, a) + w (r - q(x, a_i)))``; unbiased like IPS and with less
  variance where the reward model ``q`` is good.
- DM: ``mean(sum_a pi_e(a|x) q(x, a))``; the reward model alone (biased, shown for reference).

Confidence intervals are percentile bootstraps over rounds (the reward model is held fixed; it
is cross-fitted, so its out-of-fold predictions behave like a fixed function). Diagnostics tell
whether to trust any of it: the effective sample size of the weights ``(sum w)^2 / sum w^2`` and
the share of logged rounds whose action the candidate would never take (``pi_e = 0``; those
rounds carry no information for IPS), the largest weight, and the mean weight (about 1 when the
propensities are right and the logging policy covers every action the candidate takes; well
below 1 means part of the candidate's choices were never logged, and every estimator but DM is
blind there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.decision.threads import lightgbm_threads
from nextbest.features.config import Config, load_config

log = logging.getLogger(__name__)

ESTIMATORS = ("ips", "snips", "dr", "dm")


@dataclass
class LoggedBandit:
    """Logged bandit feedback, validated once (obp's ``bandit_feedback``)."""

    action: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray
    n_actions: int
    context: np.ndarray | pd.DataFrame | None = None
    position: np.ndarray | None = None
    action_context: np.ndarray | None = None

    def __post_init__(self):
        self.action = np.asarray(self.action, dtype=np.int64)
        self.reward = np.asarray(self.reward, dtype=float)
        self.propensity = np.asarray(self.propensity, dtype=float)
        n = len(self.action)
        for name in ("reward", "propensity"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, action has {n}")
        if n == 0:
            raise ValueError("no logged rounds")
        if not np.isfinite(self.reward).all():
            raise ValueError("reward has missing or infinite values")
        if not ((self.propensity > 0) & (self.propensity <= 1)).all():
            bad = int(np.flatnonzero(~((self.propensity > 0) & (self.propensity <= 1)))[0])
            raise ValueError(f"propensity must be in (0, 1]; row {bad} has {self.propensity[bad]}")
        if self.action.min() < 0 or self.action.max() >= self.n_actions:
            raise ValueError(f"action must be in 0..{self.n_actions - 1}")
        if self.position is not None:
            self.position = np.asarray(self.position, dtype=np.int64)
            if len(self.position) != n or self.position.min() < 0:
                raise ValueError("position must have one non-negative entry per round")
        if self.context is not None and len(self.context) != n:
            raise ValueError(f"context has {len(self.context)} rows, action has {n}")

    @property
    def n(self) -> int:
        return len(self.action)

    def subset(self, rows: np.ndarray) -> "LoggedBandit":
        ctx = None if self.context is None else (self.context.iloc[rows] if isinstance(self.context, pd.DataFrame)
                                                 else self.context[rows])
        return LoggedBandit(self.action[rows], self.reward[rows], self.propensity[rows], self.n_actions, ctx,
                            None if self.position is None else self.position[rows], self.action_context)


@dataclass
class Estimate:
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    se: float


@dataclass
class Diagnostics:
    n: int
    ess: float                # effective sample size of the importance weights
    unsupported_logged: float  # share of logged rounds the candidate would never take
    max_weight: float
    mean_weight: float        # ~1 when propensities are right and the candidate is supported


@dataclass
class OPEResult:
    estimates: dict[str, Estimate]
    diagnostics: Diagnostics

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([vars(e) for e in self.estimates.values()]).set_index("estimator")

    def __getitem__(self, name: str) -> Estimate:
        return self.estimates[name]


def _at(arr: np.ndarray, action: np.ndarray, position: np.ndarray | None) -> np.ndarray:
    rows = np.arange(len(action))
    if arr.ndim == 3:
        if position is None:
            raise ValueError("action_dist has positions but the feedback has none")
        return arr[rows, action, position]
    return arr[rows, action]


def _expected(action_dist: np.ndarray, q: np.ndarray, position: np.ndarray | None) -> np.ndarray:
    if action_dist.ndim == 3:
        rows = np.arange(len(action_dist))
        return (action_dist[rows, :, position] * q[rows, :, position]).sum(axis=1)
    return (action_dist * q).sum(axis=1)


def reduce(feedback: LoggedBandit, action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None):
    """The per-round quantities every estimator needs: ``(pi_logged, dm, q_logged)``, each (n,)."""
    action_dist = np.asarray(action_dist, dtype=float)
    if action_dist.shape[:2] != (feedback.n, feedback.n_actions):
        raise ValueError(f"action_dist has shape {action_dist.shape}; expected ({feedback.n}, {feedback.n_actions}[, L])")
    sums = action_dist.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise ValueError("action_dist must sum to one over actions (per round and position)")
    pi = _at(action_dist, feedback.action, feedback.position)
    if estimated_rewards is None:
        return pi, None, None
    q = np.asarray(estimated_rewards, dtype=float)
    if q.shape != action_dist.shape:
        raise ValueError(f"estimated_rewards has shape {q.shape}, action_dist {action_dist.shape}")
    return pi, _expected(action_dist, q, feedback.position), _at(q, feedback.action, feedback.position)


def estimate(feedback: LoggedBandit, action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None,
             estimators=None, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
             clip: float | None = None) -> OPEResult:
    """Estimate the candidate's value with every estimator its inputs allow."""
    pi, dm, q_logged = reduce(feedback, action_dist, estimated_rewards)
    return estimate_reduced(feedback.reward, feedback.propensity, pi, dm, q_logged, estimators, n_boot, alpha,
                            seed, clip)


def estimate_reduced(reward, propensity, pi_logged, dm=None, q_logged=None, estimators=None, n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0, clip: float | None = None) -> OPEResult:
    """Like :func:`estimate`, from per-round arrays (see :func:`reduce`)."""
    reward, propensity, pi = (np.asarray(a, dtype=float) for a in (reward, propensity, pi_logged))
    w = pi / propensity
    if clip is not None:
        w = np.minimum(w, clip)
    estimators = estimators or (ESTIMATORS if dm is not None else ("ips", "snips"))
    n = len(w)
    parts = {}
    for name in estimators:
        if name == "ips":
            parts[name] = (w * reward, None)
        elif name == "snips":
            parts[name] = (w * reward, w)
        elif name in ("dr", "dm"):
            if dm is None:
                raise ValueError(f"{name} needs estimated_rewards")
            parts[name] = (dm + w * (reward - q_logged) if name == "dr" else dm, None)
        else:
            raise ValueError(f"unknown estimator {name!r}; known: {ESTIMATORS}")
    rng = np.random.default_rng(seed)
    out = {}
    boots = {name: [] for name in parts}
    for lo in range(0, n_boot, 50):
        idx = rng.integers(0, n, (min(50, n_boot - lo), n))
        for name, (num, den) in parts.items():
            if den is None:
                boots[name].append(num[idx].sum(axis=1) / n)
            else:  # a resample without any weight has no self-normalized value
                d = den[idx].sum(axis=1)
                boots[name].append(np.where(d > 0, num[idx].sum(axis=1) / np.where(d > 0, d, 1.0), np.nan))
    for name, (num, den) in parts.items():
        b = np.concatenate(boots[name])
        b = b[np.isfinite(b)]
        value = num.sum() / (den.sum() if den is not None else n)
        out[name] = Estimate(name, float(value), float(np.quantile(b, alpha / 2)),
                             float(np.quantile(b, 1 - alpha / 2)), float(b.std(ddof=1)))
    diag = Diagnostics(n=n, ess=float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300)),
                       unsupported_logged=float((pi == 0).mean()), max_weight=float(w.max()),
                       mean_weight=float(w.mean()))
    return OPEResult(out, diag)


class CrossFitRewardModel:
    """LightGBM reward model ``q(x, a)`` with out-of-fold predictions (cross-fitting).

    Parameters
    ----------
    n_folds : int
        Rounds are split into this many folds; each fold is predicted by a model fitted on the others.
    params : dict, optional
        LightGBM regressor parameters over the config's ``offpolicy.reward_model`` (L2 loss: a mean
        reward, which is a probability for 0/1 rewards).
    config : Config, optional
        The business config whose ``offpolicy.reward_model`` is used; default: ``defaults.yaml``'s.
    groups : array (n,), optional
        Rounds of one group (e.g. a customer) stay in one fold.
    """

    def __init__(self, n_folds: int = 2, params: dict | None = None, random_state: int = 0,
                 config: Config | None = None):
        self.n_folds = n_folds
        self.params = params
        self.random_state = random_state
        self.config = config

    def fit_predict(self, X: pd.DataFrame | np.ndarray, reward: np.ndarray,
                    X_eval: pd.DataFrame | np.ndarray, n_eval: int,
                    groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Out-of-fold predictions for the logged rows and for ``n_eval`` alternative inputs.

        ``X`` (n, p) describes each logged round with its logged action; ``X_eval``
        (n_eval * n, p) describes every round with each alternative (an action, or an action at
        a position), alternative-major: row ``j * n + i`` is round ``i`` with alternative ``j``.
        Returns ``q_logged`` (n,) and ``q_eval`` (n, n_eval).
        """
        import lightgbm as lgb

        n = len(reward)
        rng = np.random.default_rng(self.random_state)
        uniq, inv = (np.arange(n), np.arange(n)) if groups is None else np.unique(np.asarray(groups),
                                                                                  return_inverse=True)
        if len(uniq) < self.n_folds:
            raise ValueError(f"cross-fitting needs at least {self.n_folds} rounds (or groups), got {len(uniq)}")
        fold = (rng.permutation(len(uniq)) % self.n_folds)[inv]  # balanced: no fold is empty
        config = load_config() if self.config is None else self.config
        params = {**config.offpolicy.reward_model.params(), "verbose": -1, "force_col_wise": True,
                  "random_state": self.random_state, "n_jobs": lightgbm_threads(), **(self.params or {})}
        q_logged = np.zeros(n)
        q_eval = np.zeros((n, n_eval))
        take = (lambda M, rows: M.iloc[rows]) if isinstance(X, pd.DataFrame) else (lambda M, rows: M[rows])
        for f in range(self.n_folds):
            test, trn = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
            if len(test) == 0:
                continue
            model = lgb.LGBMRegressor(**params).fit(take(X, trn), reward[trn])
            q_logged[test] = model.predict(take(X, test))
            alt_rows = (np.arange(n_eval)[:, None] * n + test[None, :]).ravel()
            q_eval[test, :] = model.predict(take(X_eval, alt_rows)).reshape(n_eval, len(test)).T
        return q_logged, q_eval


@dataclass
class PairedEstimate:
    """The value of a candidate, of the policy it would replace, and of their difference, on one log.

    ``difference`` is ``candidate - champion``; its interval comes from one bootstrap over rounds
    that resamples both policies' terms together (paired), so what the two share (the logged
    reward, the reward model's error, rounds where they agree) cancels instead of adding up.
    """

    estimator: str
    candidate: float
    champion: float
    difference: float
    ci_low: float
    ci_high: float
    se: float
    n: int
    alpha: float


def _round_terms(estimator: str, reward, w, dm, q_logged) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-round numerator (and, for SNIPS, denominator) of an estimator."""
    if estimator == "ips":
        return w * reward, None
    if estimator == "snips":
        return w * reward, w
    if estimator in ("dr", "dm"):
        if dm is None:
            raise ValueError(f"{estimator} needs the reward model's predictions (dm and q_logged)")
        return (dm + w * (reward - q_logged) if estimator == "dr" else np.asarray(dm, dtype=float)), None
    raise ValueError(f"unknown estimator {estimator!r}; known: {ESTIMATORS}")


def estimate_paired(reward, propensity, pi_candidate, pi_champion, dm_candidate=None, dm_champion=None,
                    q_logged=None, estimator: str = "dr", n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                    clip: float | None = None) -> PairedEstimate:
    """Paired off-policy difference ``V(candidate) - V(champion)`` on the same logged rounds.

    Parameters
    ----------
    reward, propensity : array (n,)
        The logged reward and the logging policy's probability of the logged action.
    pi_candidate, pi_champion : array (n,)
        Each policy's probability of the logged action (see :func:`reduce`).
    dm_candidate, dm_champion : array (n,), optional
        ``sum_a pi(a|x) q(x, a)`` of each policy, from ONE cross-fitted reward model ``q``
        (needed for DR and DM).
    q_logged : array (n,), optional
        That reward model's out-of-fold prediction of the logged action.
    estimator : {"dr", "ips", "snips", "dm"}
    n_boot : int
        Bootstrap resamples of the rounds; each resample draws one set of rounds for both policies.
    alpha : float
        The interval is the percentile ``(alpha / 2, 1 - alpha / 2)`` interval of the difference.
    clip : float, optional
        Cap on the importance weights (both policies).

    Returns
    -------
    PairedEstimate
    """
    reward, propensity = np.asarray(reward, dtype=float), np.asarray(propensity, dtype=float)
    n = len(reward)
    if n < 2:
        raise ValueError("a paired difference needs at least two logged rounds")
    terms = []
    for pi, dm in ((pi_candidate, dm_candidate), (pi_champion, dm_champion)):
        w = np.asarray(pi, dtype=float) / propensity
        if clip is not None:
            w = np.minimum(w, clip)
        terms.append(_round_terms(estimator, reward, w, None if dm is None else np.asarray(dm, dtype=float),
                                  None if q_logged is None else np.asarray(q_logged, dtype=float)))
    (num_c, den_c), (num_0, den_0) = terms

    def value(num, den, idx=None):
        if idx is None:
            return num.sum() / (den.sum() if den is not None else n)
        s = num[idx].sum(axis=1)
        if den is None:
            return s / n
        d = den[idx].sum(axis=1)
        return np.where(d > 0, s / np.where(d > 0, d, 1.0), np.nan)

    rng = np.random.default_rng(seed)
    boots = []
    for lo in range(0, n_boot, 50):
        idx = rng.integers(0, n, (min(50, n_boot - lo), n))
        boots.append(value(num_c, den_c, idx) - value(num_0, den_0, idx))
    b = np.concatenate(boots)
    b = b[np.isfinite(b)]
    cand, champ = float(value(num_c, den_c)), float(value(num_0, den_0))
    return PairedEstimate(estimator, cand, champ, cand - champ, float(np.quantile(b, alpha / 2)),
                          float(np.quantile(b, 1 - alpha / 2)), float(b.std(ddof=1)), n, alpha)
