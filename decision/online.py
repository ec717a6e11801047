"""The online learner: a Bayesian linear model of each action's extra reward on top of the offline scores.

The offline policy values every option (channel, offer at its best hour) as extra profit over
sending nothing. Those scores go stale (a channel falls out of favour, an offer stops working),
and for an option the logs rarely show they are guesses. The learner corrects them from the
feedback that comes back. One joint Bayesian linear regression of each decision's realized
profit ``r``::

    r = theta_0 . (1, baseline)                                  shared by every action
      + theta_a . (1, offline value, P(open), extra revenue)     action a's own head (0 for suppress)
      + noise

The shared part is what the customer brings anyway (``baseline``: the offline estimate of the
day's profit without a message); it is the same for every action, so it cancels when actions are
compared and its noise is estimated once from all decisions instead of once per action. Each
action's head describes its *extra* profit: ``theta_a . x_a`` is what the policy ranks.

The prior ``theta_0 ~ N((0, 1), .)``, ``theta_a ~ N((0, 1, 0, 0), .)`` (variance
``sigma^2 / prior_strength``) says "extra profit = the offline value": before any feedback the
learner reproduces the offline policy exactly. A new action (a new offer) starts from that prior
and is explored through the posterior's width.

The learner also carries the response calibration (``decision.calibration``): corrections of the
offline P(open) and P(unsubscribe) learned from opens and unsubscribes, the low-noise feedback.

Customers change: the statistics decay (``half_life_days``: :meth:`OnlineLearner.decay` in the
closed loop, the store's ``decay_stats`` in the service, both by :func:`decay_factor`), so old
feedback fades and the posterior widens again where nothing new arrives.

State = sufficient statistics per action (count ``n``, ``X'X``, ``X'r``, ``r'r`` of the full
input vector, :data:`FEATURES`). They add up: two workers' statistics merged with
:meth:`LearnerState.merge` equal one worker that saw all the feedback, which is how several
serving workers share one learner without lost updates (the store adds the deltas atomically).
The joint posterior is assembled from them on demand (a few dozen dimensions).

Rewards are realized profit (``decision.objective.realized_profit``) and arrive late and in steps
(delivered, opened, clicked, converted with value, unsubscribed): :func:`event_reward` is one
event's increment of it. The service keeps each decision's running reward in its store
(``serving.feedback``); a decision enters the statistics ``learn_after_hours`` after it was
taken with the reward so far (``serving.learning.observation``), and feedback that arrives later
(inside the attribution window) adds its increment to ``X'r`` (and ``r'r``,
``serving.learning.increment``), which keeps the statistics exactly those of the final rewards
(with forgetting on, a late increment enters at full weight while the rest of its decision has
decayed: a small, documented skew). The closed loop (``sim.closed_loop``) plays whole days and
fits each day's realized profit at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from nextbest.features.config import Config, ConfigError
from nextbest.decision.objective import realized_profit

FEATURES = ("intercept", "baseline", "action_intercept", "offline_value", "p_open", "extra_revenue")
D = len(FEATURES)
SHARED = slice(0, 2)       # the shared baseline part of the input
OWN = slice(2, D)          # the action's own part (zero for suppress)
D_OWN = D - 2
PRIOR_SHARED = np.array([0.0, 1.0])
PRIOR_OWN = np.array([0.0, 1.0, 0.0, 0.0])
PRIOR_MEAN = np.r_[PRIOR_SHARED, PRIOR_OWN]
SUPPRESS = "suppress"


def action_key(channel: str | None, offer: str | None) -> str:
    """The learner's name of an action: ``"email/pct10"``, or ``"suppress"``."""
    return SUPPRESS if channel is None else f"{channel}/{offer}"


@dataclass(frozen=True)
class OnlineSettings:
    prior_strength: float
    noise_sd: float
    learn_after_hours: float
    half_life_days: float
    change_z: float
    change_forget: float
    calibration_strength: float
    calibration_half_life_days: float
    learn_profit: bool

    @classmethod
    def from_config(cls, config: Config) -> "OnlineSettings":
        s = config.online  # typed by the config
        out = cls(s.prior_strength, s.noise_sd, s.learn_after_hours, s.half_life_days, s.change_z, s.change_forget,
                  s.calibration_strength, s.calibration_half_life_days, s.learn_profit)
        if out.prior_strength <= 0 or out.noise_sd <= 0 or out.learn_after_hours < 0 or out.half_life_days < 0:
            raise ConfigError("online: prior_strength and noise_sd must be positive, learn_after_hours and "
                              "half_life_days >= 0")
        if out.change_z < 0 or not 0 <= out.change_forget <= 1:
            raise ConfigError("online: change_z must be >= 0 (0 turns change detection off) and change_forget in [0, 1]")
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

    def scaled(self, factor: float) -> "ActionStats":
        return ActionStats(self.n * factor, self.xx * factor, self.xr * factor, self.rr * factor)


class LearnerState:
    """Per-action sufficient statistics; mergeable, JSON-serializable."""

    def __init__(self, stats: dict[str, ActionStats] | None = None):
        self.stats: dict[str, ActionStats] = dict(stats or {})

    def merge(self, other: "LearnerState") -> "LearnerState":
        """A new state with both sets of statistics added (neither input is shared or changed)."""
        out = {k: s.scaled(1.0) for k, s in self.stats.items()}
        for key, s in other.stats.items():
            out[key] = out[key] + s if key in out else s.scaled(1.0)
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

    def scaled(self, factor: float) -> "LearnerState":
        """Every statistic times ``factor`` (forgetting). Scaling commutes with merging, so workers
        stay consistent as long as the shared state is decayed once per period (the store's job)."""
        return LearnerState({k: s.scaled(factor) for k, s in self.stats.items()})


class OnlineLearner:
    """Posterior of the joint model; see the module docstring.

    Parameters
    ----------
    settings : OnlineSettings
    state : LearnerState, optional
        Statistics to start from (e.g. read from the serving store).
    """

    def __init__(self, settings: OnlineSettings, state: LearnerState | None = None, calibration=None):
        self.settings = settings
        # with ``learn_profit`` off the realized-profit heads stay at their prior (the offline values):
        # statistics given here are kept aside (``observed``) and feedback is not added
        self.observed = state or LearnerState()
        self.state = self.observed if settings.learn_profit else LearnerState()
        self.calibration = calibration  # decision.calibration.ResponseCalibration, or None
        self._post = None  # (keys, offsets, mean, inverse precision[, stacked per-key view])
        self._noise = None

    # ------------------------------------------------------------------ posterior
    def _assemble(self, extra_keys=()) -> tuple:
        keys = sorted({k for k in self.state.stats if k != SUPPRESS} | {k for k in extra_keys if k != SUPPRESS})
        if self._post is not None and self._post[0] == keys:
            return self._post
        lam = self.settings.prior_strength
        dim = 2 + D_OWN * len(keys)
        P = lam * np.eye(dim)
        b = np.zeros(dim)
        b[:2] = lam * PRIOR_SHARED
        offsets = {k: 2 + D_OWN * i for i, k in enumerate(keys)}
        for i, k in enumerate(keys):
            o = offsets[k]
            b[o:o + D_OWN] = lam * PRIOR_OWN
        for k, st in self.state.stats.items():
            P[:2, :2] += st.xx[SHARED, SHARED]
            b[:2] += st.xr[SHARED]
            if k == SUPPRESS:
                continue
            o = offsets[k]
            P[o:o + D_OWN, o:o + D_OWN] += st.xx[OWN, OWN]
            P[o:o + D_OWN, :2] += st.xx[OWN, SHARED]
            P[:2, o:o + D_OWN] += st.xx[SHARED, OWN]
            b[o:o + D_OWN] += st.xr[OWN]
        inv = np.linalg.inv(P)
        self._post = (keys, offsets, inv @ b, inv)
        return self._post

    @property
    def noise_var(self) -> float:
        """Residual variance of the joint model, shrunk to ``noise_sd**2`` with weight ``prior_strength``."""
        s0, k = self.settings.noise_sd ** 2, self.settings.prior_strength
        n = self.state.n
        if n == 0:
            return s0
        if self._noise is not None:
            return self._noise
        # any assembled posterior covers every action with statistics; do not drop a cached one
        keys, offsets, mu, _ = (self._post if self._post is not None else self._assemble())[:4]
        sse = 0.0
        for key, st in self.state.stats.items():
            if st.n <= 0:
                continue
            th = np.r_[mu[:2], mu[offsets[key]:offsets[key] + D_OWN] if key != SUPPRESS else np.zeros(D_OWN)]
            sse += max(st.rr - 2 * th @ st.xr + th @ st.xx @ th, 0.0)
        self._noise = (s0 * k + sse) / (k + n)
        return self._noise

    def posterior(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean (D,) of ``(theta_0, theta_key)`` and the inverse precision (D_OWN, D_OWN) of ``theta_key``
        (covariance = ``noise_var`` x inverse precision); suppress has no own part (zeros)."""
        keys, offsets, mu, inv = self._assemble([key])[:4]
        if key == SUPPRESS:
            return np.r_[mu[:2], np.zeros(D_OWN)], np.zeros((D_OWN, D_OWN))
        o = offsets[key]
        return np.r_[mu[:2], mu[o:o + D_OWN]], inv[o:o + D_OWN, o:o + D_OWN]

    # ------------------------------------------------------------------ updates
    def partial_fit(self, keys, X: np.ndarray, reward: np.ndarray) -> "OnlineLearner":
        """Many observations: ``keys`` (m,), ``X`` (m, D), ``reward`` (m,). With change detection on
        (``change_z > 0``), an action whose batch contradicts its posterior first forgets its past
        (:meth:`changed_actions`). Nothing changes with ``learn_profit`` off."""
        if not self.settings.learn_profit:
            return self
        keys = np.asarray(keys, dtype=object)
        X, reward = np.asarray(X, float), np.asarray(reward, float)
        if self.settings.change_z > 0:
            changed = [k for k, z in self.changed_actions(keys, X, reward).items() if abs(z) > self.settings.change_z]
            if changed:
                self.state = LearnerState({k: (s.scaled(self.settings.change_forget) if k in changed else s)
                                           for k, s in self.state.stats.items()})
                self._post = self._noise = None
        return self.merge(statistics(keys, X, reward))

    def changed_actions(self, keys, X: np.ndarray, reward: np.ndarray, min_batch: int = 30) -> dict[str, float]:
        """Change detection: per action already in the statistics with at least ``min_batch`` new
        observations, the z-score of the batch's mean residual under the current posterior mean,
        ``mean(r - x . theta) / sqrt(noise_var / m)``.

        A batch whose mean reward sits ``change_z`` standard errors away from what the action's
        posterior predicts is evidence that the action changed (a channel fell out of favour, an
        offer stopped working): the action then keeps only ``change_forget`` of its old
        statistics and follows the new data at once. Without a change the z-score is a standard
        normal draw and ``|z| > 4`` happens about once in 16,000 batches per action, so a stable
        action keeps its memory (``tests/decision/test_online.py`` checks both).
        """
        keys = np.asarray(keys, dtype=object)
        out = {}
        if self.state.n == 0:
            return out
        noise = self.noise_var
        for key in dict.fromkeys(keys.tolist()):
            old = self.state.stats.get(key)
            sel = keys == key
            m = int(sel.sum())
            if key == SUPPRESS or old is None or old.n < min_batch or m < min_batch:
                continue
            mean, _ = self.posterior(key)
            resid = reward[sel] - X[sel] @ mean
            out[str(key)] = float(resid.mean() / np.sqrt(noise / m))
        return out

    def decay(self, days: float) -> "OnlineLearner":
        """Forget: older feedback loses half its weight every ``half_life_days`` (none if 0)."""
        factor = decay_factor(self.settings.half_life_days, days)
        if factor < 1.0:
            self.state = self.state.scaled(factor)
            self._post = self._noise = None
        if self.calibration is not None:
            self.calibration.decay(decay_factor(self.settings.calibration_half_life_days, days))
        return self

    def merge(self, other: LearnerState) -> "OnlineLearner":
        if not self.settings.learn_profit:
            return self
        self.state = self.state.merge(other)
        self._post = self._noise = None
        return self

    # ------------------------------------------------------------------ prediction
    def _stacked(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Own-part posterior means (A, D_OWN) and inverse precisions (A, D_OWN, D_OWN); zeros for suppress."""
        post = self._assemble(keys)
        cache = post[4] if len(post) > 4 else None
        if cache is not None and cache[0] == tuple(keys):
            return cache[1], cache[2]
        _, offsets, mu, inv = post[:4]
        MU, INV = np.zeros((len(keys), D_OWN)), np.zeros((len(keys), D_OWN, D_OWN))
        for i, k in enumerate(keys):
            if k != SUPPRESS:
                o = offsets[k]
                MU[i], INV[i] = mu[o:o + D_OWN], inv[o:o + D_OWN, o:o + D_OWN]
        self._post = post[:4] + ((tuple(keys), MU, INV),)
        return MU, INV

    def predict(self, keys: list[str], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior ``(mean, sd)`` of each action's extra reward over suppress: ``X`` (n, A, D) -> (n, A).

        Only the action's own part is returned (the shared baseline is the same for every
        action and cancels in any comparison); suppress is 0 with sd 0. Thompson sampling draws
        each action's value from its own marginal ``mean + sd z``, independently across actions:
        an approximation, since the heads are correlated in the joint posterior through the
        shared baseline (the logged propensities stay exact either way).
        """
        MU, INV = self._stacked(keys)
        x = X[:, :, OWN]
        mean = np.einsum("nad,ad->na", x, MU)
        var = np.einsum("nad,ade,nae->na", x, INV, x) * self.noise_var
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


FEEDBACK_EVENTS = ("delivered", "bounced", "opened", "clicked", "converted", "unsubscribed")


def event_reward(config: Config, channel: str | None, offer: str | None, event: str, value: float | None = None,
                 redeems: bool = True) -> float:
    """The profit one feedback event adds to its decision's realized profit.

    The increment of :func:`decision.objective.realized_profit` by the event (it is linear in
    what happened): ``converted`` adds margin x order value, minus the offer's cost if the order
    ``redeems`` the message's offer; ``unsubscribed`` subtracts the unsubscribe cost; delivery,
    opens and clicks add nothing by themselves (their value arrives with the order). The channel
    cost is the decision's own realized profit before any event (``realized_profit`` of nothing
    happening). ``channel`` None: the decision sent nothing (an order is then an order without
    a message).
    """
    if event not in FEEDBACK_EVENTS:
        raise ValueError(f"unknown feedback event {event!r}; expected one of {FEEDBACK_EVENTS}")
    if event == "converted" and (value is None or not np.isfinite(value) or value < 0):
        raise ValueError(f"a conversion needs a non-negative order value, got {value!r}")
    k = -1 if channel is None else config.channel_names.index(channel)
    j = config.offer_names.index(offer if offer is not None else "none")
    order = float(value) if event == "converted" else 0.0
    after = realized_profit(config, [k], [j], [order], [event == "converted" and redeems], [event == "unsubscribed"])
    before = realized_profit(config, [k], [j], [0.0], [False], [False])
    return float(after[0] - before[0])


def decay_factor(half_life_days: float, days: float) -> float:
    """What statistics ``days`` old keep of their weight: half per ``half_life_days`` (1 if 0: never forget)."""
    if half_life_days <= 0 or days <= 0:
        return 1.0
    return float(0.5 ** (days / half_life_days))
