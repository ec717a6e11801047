"""The decision policy: scores -> rules -> choice -> decisions with reasons.

One object, used unchanged by training's evaluation, off-policy evaluation and the service. It
is a pure function of (customer features, contact history, request, config, learned models):
whoever calls it fetches the features and the contact history and passes them in.

How a customer is scored
------------------------
1. The rules (``training.rules``) leave a grid of allowed (channel, local hour, offer).
2. **Send time**: the open model scores every allowed (channel, hour); per channel and offer
   the best allowed hour is the one with the highest predicted open probability.
3. **Value** of each (channel, offer) at its best hour, as incremental profit over sending
   nothing (the configured objective, ``features.objective``)::

       margin x order value x uplift in P(order)          (uplift learner, offer arm vs no message)
       - offer cost x P(order that redeems the offer)     (conversion model)
       - channel cost - unsubscribe cost x P(unsubscribe) (unsubscribe model)

4. The best option wins if its value is positive; otherwise the customer is not contacted
   ("don't send" is an action worth 0 on this scale). The choice is greedy here; exploration
   (issue 4) fills in :meth:`DecisionPolicy._choose`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.config import Config
from features.localtime import utc_offsets
from training.candidates import candidate_frame
from training.models import ResponseClassifier, ValueRegressor
from training.rules import ContactHistory, delay_to_hours, eligible
from training.uplift import UpliftLearner

NO_MESSAGE = "no_message"  # the control arm of the uplift learner
OPEN_ESTIMATE = "cand_p_open"  # the open model's estimate, an input of the uplift learner
UPLIFT_MODES = ("learner", "mediated", "blend")


@dataclass
class PolicyModels:
    """The fitted models a policy scores with."""

    open: ResponseClassifier
    click: ResponseClassifier
    conversion: ResponseClassifier   # an order that follows (and redeems) the message
    unsubscribe: ResponseClassifier
    value: ValueRegressor
    uplift: UpliftLearner            # P(order in the window) per offer arm vs NO_MESSAGE
    customer_columns: list[str]


def with_open_estimate(frame: pd.DataFrame, p_open: np.ndarray) -> pd.DataFrame:
    """Add the open model's estimate for each row's candidate (NaN: no message) as an uplift input."""
    frame[OPEN_ESTIMATE] = np.asarray(p_open, dtype=np.float32)
    return frame


@dataclass
class Request:
    """What the caller asks (one for the whole batch, or per-customer contexts)."""

    now: pd.Timestamp
    contexts: list[dict] | None = None
    channels: list[str] | None = None
    offers: list[str] | None = None
    horizon_hours: float = 24.0
    type: str = "marketing"

    def __post_init__(self):
        if self.type not in ("marketing", "transactional"):
            raise ValueError(f"type must be 'marketing' or 'transactional', got {self.type!r}")
        if not self.horizon_hours > 0:
            raise ValueError(f"horizon_hours must be positive, got {self.horizon_hours}")
        ts = pd.Timestamp(self.now)
        self.now = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass
class Scores:
    """Per customer and (channel, offer): the best hour and its value; plus the rules' verdict."""

    value: np.ndarray        # (n, K, O) incremental expected profit at the best hour; -inf if not allowed
    hour: np.ndarray         # (n, K, O) best local hour, -1 if none allowed
    p_open: np.ndarray       # (n, K, O)
    uplift: np.ndarray       # (n, K, O) uplift in P(order)
    eligibility: object
    delay_hours: np.ndarray  # (n, 24)


@dataclass
class Decisions:
    """Decisions for a batch: a frame (one row per customer) plus per-option scores and reasons."""

    frame: pd.DataFrame
    scores: Scores
    reasons: list[list[str]] = field(default_factory=list)


class DecisionPolicy:
    """Greedy expected-profit policy over (suppress | channel x local hour x offer).

    Parameters
    ----------
    config : Config
    models : PolicyModels
    version : str
        Written on every decision (the registered model version when served).
    """

    def __init__(self, config: Config, models: PolicyModels, version: str = "dev", uplift_mode: str = "learner"):
        if uplift_mode not in UPLIFT_MODES:
            raise ValueError(f"uplift_mode must be one of {UPLIFT_MODES}, got {uplift_mode!r}")
        self.config = config
        self.models = models
        self.version = version
        self.uplift_mode = uplift_mode

    # ------------------------------------------------------------------ scoring
    def score(self, features: pd.DataFrame, contact: ContactHistory, request: Request) -> Scores:
        cfg, m = self.config, self.models
        n, K, O = len(features), len(cfg.channel_names), len(cfg.offer_names)
        now_s = int(request.now.timestamp())
        tz_names = list(features["timezone"].cat.categories)
        tz_code = features["timezone"].cat.codes.to_numpy()
        local = now_s + utc_offsets(np.full(n, now_s), tz_code, tz_names)
        delay = delay_to_hours((local // 3600) % 24, (local % 3600) // 60)
        elig = eligible(features, contact, cfg, delay, request.contexts, request.horizon_hours,
                        request.type == "transactional", request.channels, request.offers)
        allowed = elig.allowed
        value = np.full((n, K, O), -np.inf)
        best_hour = np.full((n, K, O), -1, dtype=np.int64)
        p_open_best = np.zeros((n, K, O))
        uplift = np.zeros((n, K, O))
        if not allowed.any():
            return Scores(value, best_hour, p_open_best, uplift, elig, delay)
        ovalue = m.value.predict(features[m.value.feature_names_in_]) if n else np.zeros(0)
        obj = cfg.objective
        for k, c in enumerate(cfg.channel_names):
            any_hour = allowed[:, k].any(axis=2)  # (n, 24)
            rows, hours = np.nonzero(any_hour)
            if len(rows) == 0:
                continue
            p = np.full((n, 24), -1.0)
            frame = candidate_frame(features.iloc[rows], k, hours, 0, cfg, m.customer_columns)
            p[rows, hours] = m.open.predict_proba(frame)[:, 1]
            for j, o in enumerate(cfg.offer_names):
                ok = allowed[:, k, :, j]
                who = np.flatnonzero(ok.any(axis=1))
                if len(who) == 0:
                    continue
                h = np.where(ok[who], p[who], -2.0).argmax(axis=1)
                f = candidate_frame(features.iloc[who], k, h, j, cfg, m.customer_columns)
                po = m.open.predict_proba(f)[:, 1]
                with_open_estimate(f, po)
                p_conv = m.conversion.predict_proba(f)[:, 1]
                up = self._uplift(f, o, po, p_conv)
                p_unsub = m.unsubscribe.predict_proba(f)[:, 1]
                v = ovalue[who]
                value[who, k, j] = (obj.margin * v * up - cfg.offers[o].cost(v) * p_conv
                                    - cfg.channels[c].cost - obj.unsubscribe_cost * p_unsub)
                best_hour[who, k, j] = h
                p_open_best[who, k, j] = po
                uplift[who, k, j] = up
        return Scores(value, best_hour, p_open_best, uplift, elig, delay)

    def _uplift(self, f: pd.DataFrame, offer: str, p_open: np.ndarray, p_conv: np.ndarray) -> np.ndarray:
        """Extra P(order) the candidate causes (see ``uplift_mode``)."""
        m = self.models
        learner = m.uplift.predict(f)[offer].to_numpy() if self.uplift_mode != "mediated" else 0.0
        if self.uplift_mode == "learner":
            return learner
        daily = m.uplift.predict_outcomes(f)[NO_MESSAGE].to_numpy() * 24.0 / self.config.objective.attribution_window_hours
        mediated = p_conv - p_open * daily
        return mediated if self.uplift_mode == "mediated" else 0.5 * (learner + mediated)

    # ------------------------------------------------------------------ choice
    def _choose(self, values: np.ndarray, must_send: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """Pick an option per customer from ``values`` (n, 1 + K*O; column 0 = suppress, -inf =
        not allowed). Returns ``(choice (n,), propensity (n,))``. Greedy: propensity 1."""
        v = values.copy()
        v[must_send, 0] = -np.inf
        return v.argmax(axis=1), np.ones(len(v))

    def decide(self, features: pd.DataFrame, contact: ContactHistory, request: Request,
               explain: bool = True, rng=None) -> Decisions:
        """Decide for every row of ``features``; see the module docstring."""
        cfg = self.config
        n, K, O = len(features), len(cfg.channel_names), len(cfg.offer_names)
        s = self.score(features, contact, request)
        flat = np.concatenate([np.zeros((n, 1)), s.value.reshape(n, K * O)], axis=1)
        must_send = np.full(n, request.type == "transactional") & np.isfinite(flat[:, 1:]).any(axis=1)
        choice, propensity = self._choose(flat, must_send, rng)
        send = choice > 0
        k, j = np.divmod(np.maximum(choice - 1, 0), O)
        hour = np.where(send, s.hour[np.arange(n), k, j], -1)
        delay = np.where(send, s.delay_hours[np.arange(n), np.maximum(hour, 0)], 0.0)
        now = request.now
        send_at = pd.to_datetime(now.value + np.round(delay * 3600).astype(np.int64) * 10**9, utc=True)
        send_at = send_at.where(send, pd.NaT)
        frame = pd.DataFrame({
            "customer_id": features.index.astype(str),
            "decision_id": [uuid.uuid4().hex for _ in range(n)],
            "action": np.where(send, "send", "suppress"),
            "channel": pd.array(np.where(send, np.array(cfg.channel_names, dtype=object)[k], None), dtype="str"),
            "local_hour": hour,
            "send_at": send_at,
            "offer": pd.array(np.where(send, np.array(cfg.offer_names, dtype=object)[j], None), dtype="str"),
            "propensity": propensity,
            "expected_value": np.where(send, flat[np.arange(n), choice], 0.0),
            "policy_version": self.version,
        })
        reasons = [self._reasons(s, i, send[i], k[i], j[i]) for i in range(n)] if explain else []
        return Decisions(frame, s, reasons)

    def _reasons(self, s: Scores, i: int, send: bool, k: int, j: int) -> list[str]:
        cfg = self.config
        out = s.eligibility.reasons(i)
        v = s.value[i]
        if send:
            c, o = cfg.channel_names[k], cfg.offer_names[j]
            offer = "no offer" if o == "none" else f"offer {o}"
            out.append(f"{c} at {s.hour[i, k, j]:02d}:00 local with {offer}: expected profit "
                       f"{v[k, j]:+.3f} over sending nothing (predicted open rate {s.p_open[i, k, j]:.0%}, "
                       f"extra order chance {s.uplift[i, k, j]:+.2%})")
            runner = np.where(np.arange(v.size).reshape(v.shape) == k * v.shape[1] + j, -np.inf, v)
            if np.isfinite(runner).any():
                kk, jj = np.unravel_index(runner.argmax(), v.shape)
                out.append(f"runner-up: {cfg.channel_names[kk]} with {cfg.offer_names[jj]} "
                           f"({runner[kk, jj]:+.3f})")
        elif np.isfinite(v).any():
            kk, jj = np.unravel_index(v.argmax(), v.shape)
            out.append(f"not contacted: the best message ({cfg.channel_names[kk]} with {cfg.offer_names[jj]}) "
                       f"is expected to lose {-v[kk, jj]:.3f} against sending nothing")
        else:
            out.append("not contacted: the rules leave no channel, hour and offer")
        return out
