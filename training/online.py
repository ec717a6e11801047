"""The online learner: a Bayesian linear head per action on top of the offline scores.

The offline policy values every option (channel, offer at its best hour) as extra profit over
sending nothing. Those scores go stale (a channel falls out of favour, an offer stops working),
and for an option the logs rarely show they are guesses. The learner corrects them from the
feedback that comes back, one small linear model per action:

    reward of action a for a customer  ~  theta_a . x_a + noise

with a compact context ``x_a`` (:data:`FEATURES`): an intercept, the offline extra-profit value of
``a``, the customer's baseline profit without a message, the predicted open probability of ``a``
and its predicted extra revenue (margin x order value x uplift). "Suppress" is an action too
(its ``x`` has value, open and revenue 0), so the learner also learns what not sending is worth.

The prior ``theta_a ~ N(mu0, sigma^2 / prior_strength I)`` with ``mu0 = (0, 1, 1, 0, 0)`` says
"reward = offline extra profit + baseline", i.e. before any feedback the learner reproduces the
offline policy exactly. A new action (a new offer) starts from that prior and is explored
through the posterior's width.

State = sufficient statistics per action (count ``n``, ``X'X``, ``X'r``, ``r'r``). They add up:
two workers' statistics merged with :meth:`LearnerState.merge` equal one worker that saw all the
feedback, which is how several serving workers share one learner without lost updates (the
store adds the deltas atomically). Single updates are rank-one (Sherman-Morrison on the cached
posterior covariance); batches recompute it.

Rewards arrive late and in steps (delivered, opened, clicked, converted with value,
unsubscribed): :class:`RewardAssembler` keeps each decision's running reward; a decision enters
the statistics ``learn_after_hours`` after it was taken with the reward so far, and feedback that
arrives later (inside the attribution window) adds its increment to ``X'r`` (and ``r'r``), which
keeps the statistics exactly those of the final rewards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from features.config import Config, ConfigError

FEATURES = ("intercept", "offline_value", "baseline", "p_open", "extra_revenue")
D = len(FEATURES)
PRIOR_MEAN = np.array([0.0, 1.0, 1.0, 0.0, 0.0])
SUPPRESS = "suppress"


def action_key(channel: str | None, offer: str | None) -> str:
    """The learner's name of an action: ``"email/pct10"``, or ``"suppress"``."""
    return SUPPRESS if channel is None else f"{channel}/{offer}"


@dataclass(frozen=True)
class OnlineSettings:
    prior_strength: float
    noise_sd: float
    learn_after_hours: float

    @classmethod
    def from_config(cls, config: Config) -> "OnlineSettings":
        raw = config.raw.get("online")
        if not isinstance(raw, dict):
            raise ConfigError("online: missing section")
        try:
            out = cls(float(raw["prior_strength"]), float(raw["noise_sd"]), float(raw["learn_after_hours"]))
        except KeyError as exc:
            raise ConfigError(f"missing config key online.{exc.args[0]}") from None
        if out.prior_strength <= 0 or out.noise_sd <= 0 or out.learn_after_hours < 0:
            raise ConfigError("online: prior_strength and noise_sd must be positive, learn_after_hours >= 0")
        return out


@dataclass
class ActionStats:
    """Sufficient statistics of one action's rewards (all additive)."""

    n: float = 0.0
    xx: np.ndarray = field(default_factory=lambda: np.zeros((D, D)))
    xr: np.ndarray = field(default_factory=lambda: np.zeros(D))
    rr: float = 0.0

    def __add__(self, other: "ActionStats") -> "ActionStats":
        return ActionStats(self.n + other.n, self.xx + other.xx, self.xr + other.xr, self.rr + other.rr)


class LearnerState:
    """Per-action sufficient statistics; mergeable, JSON-serializable."""

    def __init__(self, stats: dict[str, ActionStats] | None = None):
        self.stats: dict[str, ActionStats] = dict(stats or {})

    def merge(self, other: "LearnerState") -> "LearnerState":
        out = dict(self.stats)
        for key, s in other.stats.items():
            out[key] = out[key] + s if key in out else s
        return LearnerState(out)

    def to_json(self) -> str:
        return json.dumps({k: {"n": s.n, "xx": s.xx.tolist(), "xr": s.xr.tolist(), "rr": s.rr}
                           for k, s in self.stats.items()})

    @classmethod
    def from_json(cls, text: str) -> "LearnerState":
        raw = json.loads(text)
        return cls({k: ActionStats(float(v["n"]), np.array(v["xx"], float), np.array(v["xr"], float),
                                   float(v["rr"])) for k, v in raw.items()})

    @property
    def n(self) -> float:
        return sum(s.n for s in self.stats.values())


class OnlineLearner:
    """Posterior over each action's linear head; see the module docstring.

    Parameters
    ----------
    settings : OnlineSettings
    state : LearnerState, optional
        Statistics to start from (e.g. read from the serving store).
    """

    def __init__(self, settings: OnlineSettings, state: LearnerState | None = None):
        self.settings = settings
        self.state = state or LearnerState()
        self._post: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ posterior
    @property
    def noise_var(self) -> float:
        """Pooled residual variance, shrunk to ``noise_sd**2`` with weight ``prior_strength``."""
        s0, k = self.settings.noise_sd ** 2, self.settings.prior_strength
        sse, n = 0.0, 0.0
        for key, st in self.state.stats.items():
            if st.n <= 0:
                continue
            mu = self.posterior(key)[0]
            sse += max(st.rr - 2 * mu @ st.xr + mu @ st.xx @ mu, 0.0)
            n += st.n
        return (s0 * k + sse) / (k + n)

    def posterior(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(mean (D,), inverse precision (D, D))``; covariance = ``noise_var`` x inverse precision."""
        if key not in self._post:
            lam = self.settings.prior_strength
            st = self.state.stats.get(key, ActionStats())
            inv = np.linalg.inv(lam * np.eye(D) + st.xx)
            self._post[key] = (inv @ (lam * PRIOR_MEAN + st.xr), inv)
        return self._post[key]

    # ------------------------------------------------------------------ updates
    def update(self, key: str, x: np.ndarray, reward: float) -> None:
        """One observation (rank-one: Sherman-Morrison on the cached inverse precision)."""
        x = np.asarray(x, float)
        st = self.state.stats.setdefault(key, ActionStats())
        mean, inv = self.posterior(key)
        st.n += 1
        st.xx += np.outer(x, x)
        st.xr += reward * x
        st.rr += reward * reward
        ix = inv @ x
        inv = inv - np.outer(ix, ix) / (1.0 + x @ ix)
        lam = self.settings.prior_strength
        self._post[key] = (inv @ (lam * PRIOR_MEAN + st.xr), inv)

    def partial_fit(self, keys, X: np.ndarray, reward: np.ndarray) -> "OnlineLearner":
        """Many observations: ``keys`` (m,), ``X`` (m, D), ``reward`` (m,)."""
        keys = np.asarray(keys, dtype=object)
        X, reward = np.asarray(X, float), np.asarray(reward, float)
        self.state = self.state.merge(statistics(keys, X, reward))
        self._post.clear()
        return self

    def add_reward(self, key: str, x: np.ndarray, delta: float, reward_before: float) -> None:
        """A late increment ``delta`` to the reward of a decision already in the statistics."""
        st = self.state.stats.setdefault(key, ActionStats())
        st.xr += delta * np.asarray(x, float)
        st.rr += 2.0 * reward_before * delta + delta * delta
        self._post.pop(key, None)

    def merge(self, other: LearnerState) -> "OnlineLearner":
        self.state = self.state.merge(other)
        self._post.clear()
        return self

    # ------------------------------------------------------------------ prediction
    def predict(self, keys: list[str], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior ``(mean, sd)`` of each action's reward: ``X`` (n, A, D) -> two (n, A) arrays.

        With ``theta_a`` drawn afresh for every decision, a draw of the reward of ``a`` is the
        normal ``mean + sd z``; Thompson sampling needs nothing more.
        """
        post = [self.posterior(k) for k in keys]
        theta = np.stack([p[0] for p in post])                           # (A, D)
        inv = np.stack([p[1] for p in post])                             # (A, D, D)
        mean = np.einsum("nad,ad->na", X, theta)
        var = np.einsum("nad,ade,nae->na", X, inv, X) * self.noise_var
        return mean, np.sqrt(np.maximum(var, 0.0))


def statistics(keys, X: np.ndarray, reward: np.ndarray) -> LearnerState:
    """Sufficient statistics of a batch of observations."""
    keys = np.asarray(keys, dtype=object)
    out = {}
    for key in dict.fromkeys(keys.tolist()):
        sel = keys == key
        x, r = X[sel], reward[sel]
        out[str(key)] = ActionStats(float(sel.sum()), x.T @ x, x.T @ r, float(r @ r))
    return LearnerState(out)


class RewardAssembler:
    """Running reward per decision from stepwise feedback, fed to the learner.

    ``register`` a decision when it is taken (its immediate reward is the channel cost),
    ``feedback`` events as they arrive (idempotent per ``(decision_id, event_id)``), and ``mature``
    at a time to move decisions older than ``learn_after_hours`` into the learner. Feedback
    after a decision's attribution window is ignored; feedback for a matured decision adds its
    increment to the learner directly.
    """

    def __init__(self, learner: OnlineLearner, window_hours: float):
        self.learner = learner
        self.window_s = window_hours * 3600.0
        self.pending: dict[str, list] = {}    # decision_id -> [key, x, reward, t_decided, matured]
        self.seen: set[tuple[str, str]] = set()

    def register(self, decision_id: str, key: str, x: np.ndarray, t: float, immediate_reward: float = 0.0):
        self.pending[decision_id] = [key, np.asarray(x, float), float(immediate_reward), float(t), False]

    def feedback(self, decision_id: str, event_id: str, t: float, reward: float) -> bool:
        """Add ``reward`` (the event's profit increment); returns False if it was ignored."""
        rec = self.pending.get(decision_id)
        if rec is None or (decision_id, event_id) in self.seen or t - rec[3] > self.window_s:
            return False
        self.seen.add((decision_id, event_id))
        if rec[4]:
            self.learner.add_reward(rec[0], rec[1], reward, rec[2])
        rec[2] += reward
        return True

    def mature(self, now: float) -> int:
        """Move decisions taken at least ``learn_after_hours`` before ``now`` into the learner."""
        after = self.learner.settings.learn_after_hours * 3600.0
        ready = [d for d, rec in self.pending.items() if not rec[4] and now - rec[3] >= after]
        if ready:
            recs = [self.pending[d] for d in ready]
            self.learner.partial_fit([r[0] for r in recs], np.stack([r[1] for r in recs]),
                                     np.array([r[2] for r in recs]))
            for r in recs:
                r[4] = True
        closed = [d for d, rec in self.pending.items() if rec[4] and now - rec[3] > self.window_s]
        for d in closed:
            del self.pending[d]
        return len(ready)
