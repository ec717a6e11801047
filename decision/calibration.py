"""Online calibration of the response models from low-noise feedback: opens and unsubscribes.

Why not learn everything from realized profit? A message's profit is mostly noise at the scale
of a day: an order is worth 20-35 in margin and happens a few times in a hundred, while actions
differ by cents, so a per-action profit correction ranks actions by noise for weeks
(``benchmarks/RESULTS.md``, "The online learner on realized profit"). Opens and unsubscribes
are binary, frequent, and where both fatigue and a change of taste show first. The offline
models learned them from a history in which customers were rarely as tired as a policy that
messages most of them every day makes them; this calibration learns, from the policy's own
feedback, how far the offline probabilities are off and how that depends on the customer's
recent contacts.

Model, per response ``r`` (``open``, ``unsubscribe``) and channel ``k``::

    y = p (1 + beta_rk . z) + noise

``p`` is the offline model's probability for the message that was sent, ``y`` the observed
response (0 or 1) and ``z`` the contact context (:data:`CONTEXT`: an intercept, then the
messages on the channel and on every channel in the last 7 days, the messages on the channel
since its last open, the days since the last message; scaled to about one). ``beta`` has a
Gaussian prior at 0 ("the offline model is right") with precision ``strength`` and is fitted by
weighted least squares on ``x = p z``, ``target = y - p`` with weights ``1 / (p (1 - p))`` (the
binomial variance). The correction of a probability is the factor ``1 + beta . z``, clipped to
``[FLOOR, CEILING]``.

State = sufficient statistics ``(n, A = sum w x x', b = sum w x (y - p))`` per (response,
channel): additive, so workers' statistics merge by adding (the store adds them atomically, as
it does the learner's), and they decay by a factor per day (``half_life_days``) so the
calibration follows a customer base that changes.

In the service (``serving.learning``): a marketing send's record keeps its ``p`` and ``z``;
its opens and unsubscribes enter the store's shared statistics when it matures, a later first
open as an exact increment; the store decays them with ``calibration_half_life_days``.

The same model calibrates ``order``, P(order | opened), per **offer** from the opened messages
(did an order follow): an offer that stops working shows there, in days rather than in the
weeks realized profit would need.

Change detection (``online.change_z``, ``online.change_forget``, the settings the profit learner's
detection uses): a day's feedback on one channel's opens, or one offer's orders after an open,
that sits more than ``change_z`` standard errors from what the calibration predicts
(:meth:`ResponseCalibration.surprise_of`) makes that channel (offer) keep only ``change_forget`` of
its statistics, so the calibration follows a shift at once rather than over half-lives, and keeps
its memory otherwise. In the closed loop a batch is a day's messages (``update(..., change_z=)``);
in the service it is the sends that matured since the last check (``serving.learning``). Over
the 8-world family this lifted days 17-19 from 0.458 to 0.487 (worst 0.112 to 0.171) at 2,000
customers and from 0.465 to 0.475 (worst 0.020 to 0.140) at 5,000 (``benchmarks/RESULTS.md``). Unsubscribes are not checked: too rare to tell a change from noise.

How the policy uses it (``decision.policy.DecisionPolicy.score``): the open factor scales
everything a message earns through being opened (P(open), the extra orders and the offer's
cost: orders follow opens), the order factor the orders after an open of that offer (and the
offer's cost with them), the unsubscribe factor P(unsubscribe). A message that a
tired customer will not open is then worth less than nothing and "don't send" wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

CONTEXT = ("intercept", "channel_sends_7d", "all_sends_7d", "channel_unanswered", "days_since_last_send")
SCALE = np.array([1.0, 3.0, 5.0, 5.0, 7.0])  # each context input divided by its typical range
CAPS = np.array([1.0, 14.0, 21.0, 10.0, 7.0])  # inputs above these count as these (bounded inputs)
P = len(CONTEXT)
RESPONSES = ("open", "unsubscribe", "order")  # "order": P(order | opened), per offer (the others per channel)
FLOOR, CEILING = 0.05, 3.0
EPS = 1e-4
MIN_BATCH = 30  # observations a change check needs


def context(sent_week_channel: np.ndarray, sent_week_all: np.ndarray, unanswered: np.ndarray,
            hours_since_last: np.ndarray) -> np.ndarray:
    """The calibration context ``z`` (m, P) of m candidate messages; see :data:`CONTEXT`."""
    days = np.nan_to_num(np.asarray(hours_since_last, float) / 24.0, posinf=CAPS[4])
    raw = np.column_stack([np.ones(len(days)), sent_week_channel, sent_week_all, unanswered, days]).astype(float)
    return np.minimum(raw, CAPS) / SCALE


def contact_context(contact, rows: np.ndarray, channel_code: np.ndarray) -> np.ndarray:
    """``z`` (m, P) of m candidates (customer ``rows``, ``channel_code``) from a
    ``decision.rules.ContactHistory``."""
    return context(contact.sent_week[rows, channel_code], contact.sent_week.sum(axis=1)[rows],
                   contact.unanswered[rows, channel_code], contact.hours_since_last[rows])


@dataclass
class CalibrationStats:
    """Sufficient statistics of one (response, channel): count, ``A`` (P, P), ``b`` (P,)."""

    n: float = 0.0
    A: np.ndarray = field(default_factory=lambda: np.zeros((P, P)))
    b: np.ndarray = field(default_factory=lambda: np.zeros(P))

    def __add__(self, other: "CalibrationStats") -> "CalibrationStats":
        return CalibrationStats(self.n + other.n, self.A + other.A, self.b + other.b)

    def scaled(self, factor: float) -> "CalibrationStats":
        return CalibrationStats(self.n * factor, self.A * factor, self.b * factor)

    def to_vector(self) -> np.ndarray:
        return np.concatenate([[self.n], self.A.ravel(), self.b])

    @classmethod
    def from_vector(cls, v) -> "CalibrationStats":
        v = np.asarray(v, float)
        if len(v) != 1 + P * P + P:
            raise ValueError(f"calibration statistics vector of length {len(v)}, expected {1 + P * P + P}")
        return cls(float(v[0]), v[1:1 + P * P].reshape(P, P).copy(), v[1 + P * P:].copy())


KEY_PREFIX = "calibration|"
CHECK_PREFIX = "calibration-check|"  # the service's change-check windows (serving.learning); never decayed


def key(response: str, channel: str) -> str:
    """The store's name of one calibration: ``"calibration|open|email"``."""
    return f"{KEY_PREFIX}{response}|{channel}"


def observations(p: np.ndarray, z: np.ndarray, y: np.ndarray) -> CalibrationStats:
    """Statistics of m observed messages: offline probability ``p`` (m,), context ``z`` (m, P),
    observed response ``y`` (m,) in {0, 1}."""
    p = np.clip(np.asarray(p, float), EPS, 1 - EPS)
    w = 1.0 / (p * (1 - p))
    x = p[:, None] * z
    return CalibrationStats(float(len(p)), (x * w[:, None]).T @ x, x.T @ (w * (np.asarray(y, float) - p)))


class ResponseCalibration:
    """Calibration factors per (response, channel), and of ``order`` per offer; see the module docstring.

    Parameters
    ----------
    channels : sequence of str
        The configured channels, in ``config.channel_names`` order.
    strength : float
        Prior precision of ``beta`` (how sure we are that the offline model is right).
    stats : dict, optional
        ``key(response, channel or offer)`` -> :class:`CalibrationStats` to start from.
    offers : sequence of str
        The configured offers, in ``config.offer_names`` order (the groups of ``order``).
    """

    def __init__(self, channels, strength: float, stats: dict | None = None, offers=()):
        self.channels = tuple(channels)
        self.offers = tuple(offers)
        self.strength = float(strength)
        self.stats: dict[str, CalibrationStats] = dict(stats or {})
        self._beta: dict[str, np.ndarray] = {}

    def groups(self, response: str) -> tuple:
        """What a response is calibrated by: the offer for ``order``, else the channel."""
        return self.offers if response == "order" else self.channels

    def beta(self, response: str, channel: str) -> np.ndarray:
        """Posterior mean of ``beta`` (P,); zeros without feedback."""
        k = key(response, channel)
        if k not in self._beta:
            st = self.stats.get(k)
            self._beta[k] = (np.zeros(P) if st is None or st.n == 0
                             else np.linalg.solve(self.strength * np.eye(P) + st.A, st.b))
        return self._beta[k]

    def factor(self, response: str, channel_code: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The correction factor (m,) of m messages on channels ``channel_code`` (m,) (offer codes
        for ``order``) with context ``z`` (m, P)."""
        channel_code = np.asarray(channel_code)
        out = np.ones(len(channel_code))
        if not self.stats:
            return out
        for k, name in enumerate(self.groups(response)):
            sel = channel_code == k
            if sel.any():
                out[sel] = 1.0 + z[sel] @ self.beta(response, name)
        return np.clip(out, FLOOR, CEILING)

    def window(self, response: str, name: str, p: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """What m observations of one (response, channel or offer) add to a change check, under
        the current calibration: ``[m, sum(y - q), sum q (1 - q), sum p z (P)]`` with ``q = p f``
        the calibrated probability. Additive, so the service sums it over maturing sends
        (``serving.learning.calibration_windows``) and checks the sum (:meth:`surprise_of`)."""
        p = np.clip(np.asarray(p, float), EPS, 1 - EPS)
        groups = self.groups(response)
        f = self.factor(response, np.full(len(p), groups.index(name)), z) if name in groups else np.ones(len(p))
        q = np.clip(p * f, EPS, 1 - EPS)
        return np.concatenate([[len(p), (np.asarray(y, float) - q).sum(), (q * (1 - q)).sum()],
                               (p[:, None] * z).sum(axis=0)])

    def surprise_of(self, response: str, name: str, window: np.ndarray) -> float:
        """How far a :meth:`window` of observations sits from what the calibration predicted, in
        standard errors: ``sum(y - q) / sqrt(var)``, ``var`` the binomial variance of the
        responses plus the posterior's uncertainty about ``beta`` (``grad' Sigma grad``, ``grad``
        = ``sum p z``). About a standard normal draw when nothing changed; a channel whose open
        rate fell by half over a day of a few hundred sends sits tens of standard errors below.
        0 without statistics to contradict."""
        st = self.stats.get(key(response, name))
        w = np.asarray(window, float)
        if st is None or st.n == 0 or w[0] <= 0:
            return 0.0
        grad = w[3:3 + P]
        posterior_var = grad @ np.linalg.solve(self.strength * np.eye(P) + st.A, grad)
        return float(w[1] / np.sqrt(max(w[2] + posterior_var, EPS)))

    def surprise(self, response: str, name: str, p: np.ndarray, z: np.ndarray, y: np.ndarray) -> float:
        """:meth:`surprise_of` the :meth:`window` of a batch of observations."""
        return self.surprise_of(response, name, self.window(response, name, p, z, y))

    def forget(self, response: str, name: str, keep: float) -> None:
        """One (response, channel or offer) keeps ``keep`` of its statistics (a change was detected)."""
        kk = key(response, name)
        if kk in self.stats:
            self.stats[kk] = self.stats[kk].scaled(keep)
            self._beta.pop(kk, None)

    def update(self, response: str, channel_code: np.ndarray, p: np.ndarray, z: np.ndarray, y: np.ndarray,
               change_z: float = 0.0, change_forget: float = 1.0, min_batch: int = MIN_BATCH) -> list[str]:
        """Add m observed messages (offline probability ``p``, context ``z``, response ``y``; for
        ``order``: opened messages, ``channel_code`` their offer codes, ``p`` the offline P(order | opened)).

        With ``change_z > 0``, a channel's (offer's) batch of at least ``min_batch`` messages
        whose :meth:`surprise` exceeds ``change_z`` in absolute value first keeps only
        ``change_forget`` of its old statistics (a channel fell out of favour, an offer stopped
        working: the calibration follows the new data at once instead of over half-lives).
        Returns the names that forgot."""
        channel_code = np.asarray(channel_code)
        forgot = []
        for k, name in enumerate(self.groups(response)):
            sel = channel_code == k
            if sel.any():
                kk = key(response, name)
                ps, zs, ys = np.asarray(p)[sel], z[sel], np.asarray(y)[sel]
                if change_z > 0 and len(ps) >= min_batch and abs(self.surprise(response, name, ps, zs, ys)) > change_z:
                    self.forget(response, name, change_forget)
                    forgot.append(name)
                new = observations(ps, zs, ys)
                self.stats[kk] = self.stats[kk] + new if kk in self.stats else new
                self._beta.pop(kk, None)
        return forgot

    def decay(self, factor: float) -> "ResponseCalibration":
        """Old feedback keeps ``factor`` of its weight (once per period)."""
        if factor < 1.0:
            self.stats = {k: s.scaled(factor) for k, s in self.stats.items()}
            self._beta = {}
        return self

    def to_json(self) -> str:
        return json.dumps({k: s.to_vector().tolist() for k, s in self.stats.items()})

    @classmethod
    def from_vectors(cls, channels, strength: float, vectors: dict, offers=()) -> "ResponseCalibration":
        """From the store's vectors (only the keys that name a calibration are read)."""
        return cls(channels, strength, {k: CalibrationStats.from_vector(v) for k, v in vectors.items()
                                        if k.startswith(KEY_PREFIX)}, offers)
