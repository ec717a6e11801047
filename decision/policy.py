"""The decision policy: scores -> rules -> choice -> decisions with reasons.

One object, used unchanged by training's evaluation, off-policy evaluation and the service. It
is a pure function of (customer features, contact history, request, config, learned models):
whoever calls it fetches the features and the contact history and passes them in.

How a customer is scored
------------------------
1. The rules (``decision.rules``) leave a grid of allowed (channel, local hour, offer).
2. **Send time**: the open model scores every allowed (channel, hour) for a message without an
   offer; per channel and offer the best hour is the allowed one with the highest of these open
   probabilities (an approximation when an offer shifts the best hour: the open model is called
   once per channel and hour, not once per offer too); P(open) is then re-scored with the offer.
3. **Value** of each (channel, offer) at its best hour, as incremental profit over sending
   nothing (the configured objective, ``decision.objective``)::

       margin x order value x uplift in P(order)          (uplift learner, offer arm vs no message)
       - offer cost x P(order that redeems the offer)     (conversion model)
       - channel cost - unsubscribe cost x P(unsubscribe) (unsubscribe model)

   Where orders and unsubscribes follow opens (``training.response_funnel``), the conversion and
   unsubscribe models are P(open) x P(response | opened) (``decision.artifact.GivenOpen``).

4. **Online correction**: the online learner (``decision.online``) turns each option's scores
   into a posterior over its reward; with no feedback yet it reproduces the offline values.
5. **Choice**: "suppress" (worth 0 on this scale) and every allowed option get a probability
   from the deployment's exploration method (``decision.exploration``: greedy, epsilon-greedy,
   softmax or Thompson sampling, capped by the exploration budget); one is drawn, and the
   decision carries the exact probability of that action. Customers of the random control group
   get no marketing.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.features.localtime import utc_offsets
from nextbest.decision.objective import channel_costs, offer_costs
from nextbest.decision.calibration import ResponseCalibration, contact_context
from nextbest.decision.candidates import CustomerArrays, candidate_arrays, model_input
from nextbest.decision.exploration import Exploration, draw
from nextbest.decision.online import D, SUPPRESS, OnlineLearner, OnlineSettings, action_key
from nextbest.decision.rules import ContactHistory, delay_to_hours, eligible, render_allowed

NO_MESSAGE = "no_message"  # the control arm of the uplift learner
OPEN_ESTIMATE = "cand_p_open"  # the open model's estimate, an input of the uplift learner
UPLIFT_MODES = ("learner", "mediated", "blend")


class Classifier(Protocol):
    """What the policy needs of a response model: the inputs it reads and ``predict_proba``
    on the float matrix ``decision.candidates.model_input`` builds, (r, F) -> (r, 2)."""

    feature_names_in_: list[str]
    categories_: dict

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


class Regressor(Protocol):
    feature_names_in_: list[str]
    categories_: dict

    def predict(self, X: np.ndarray) -> np.ndarray: ...


class ArmModel(Protocol):
    """Per-arm outcome model (the uplift learner): ``predict_arm(X, arm)`` -> P(order) (r,) and
    ``predict(X)`` -> a frame of each offer arm's effect over ``NO_MESSAGE``."""

    feature_names_in_: list[str]
    categories_: dict

    def predict_arm(self, X: np.ndarray, arm: str) -> np.ndarray: ...

    def predict(self, X: np.ndarray) -> pd.DataFrame: ...


@dataclass
class PolicyModels:
    """The fitted models a policy scores with (anything that follows the protocols above)."""

    open: Classifier
    click: Classifier
    conversion: Classifier   # an order that follows (and redeems) the message
    unsubscribe: Classifier
    value: Regressor
    uplift: ArmModel         # P(order in the window) per offer arm vs NO_MESSAGE
    customer_columns: list[str]


def with_open_estimate(frame: pd.DataFrame, p_open: np.ndarray) -> pd.DataFrame:
    """Add the open model's estimate for each row's candidate (NaN: no message) as an uplift input."""
    frame[OPEN_ESTIMATE] = np.asarray(p_open, dtype=np.float32)
    return frame


def _response(model: Classifier, X: np.ndarray, p_open: np.ndarray) -> np.ndarray:
    """P(response) of each candidate; a funnel model (``decision.artifact.GivenOpen``) reuses the
    open probability already computed instead of calling the open model again."""
    if hasattr(model, "predict_given_open"):
        return p_open * model.predict_given_open(X)
    return model.predict_proba(X)[:, 1]


@dataclass
class Request:
    """What the caller asks: one for the whole batch, with per-customer contexts; ``now`` and
    ``horizon_hours`` are one value for the batch or one per customer (the service batches
    requests that arrived at different times)."""

    now: pd.Timestamp | pd.DatetimeIndex
    contexts: list[dict] | None = None
    channels: list[str] | None = None
    offers: list[str] | None = None
    horizon_hours: float | np.ndarray | None = None  # None (or NaN/None per row): the config's decision.horizon_hours
    type: str = "marketing"

    def __post_init__(self):
        if self.type not in ("marketing", "transactional"):
            raise ValueError(f"type must be 'marketing' or 'transactional', got {self.type!r}")
        h = np.asarray(self.horizon_hours, dtype=float)
        if not np.all(np.isnan(h) | (h > 0)):
            raise ValueError(f"horizon_hours must be positive, got {self.horizon_hours}")
        if np.ndim(self.now) == 0:
            ts = pd.Timestamp(self.now).as_unit("ns")
            self.now = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        else:
            ts = pd.DatetimeIndex(self.now).as_unit("ns")
            self.now = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")

    def now_ns(self, n: int) -> np.ndarray:
        """Decision time per customer, int64 nanoseconds since the epoch (n,)."""
        if isinstance(self.now, pd.DatetimeIndex):
            if len(self.now) != n:
                raise ValueError(f"now has {len(self.now)} times for {n} customers")
            return self.now.asi8.astype(np.int64)
        return np.full(n, self.now.value, dtype=np.int64)

    def horizons(self, n: int, default: float, triggered: float | None = None) -> np.ndarray:
        """Horizon per customer (n,) where the request gives none: ``triggered`` for a context with a
        ``trigger`` (a cart abandoned now is worth a message now or never), else ``default``."""
        h = np.broadcast_to(np.asarray(self.horizon_hours, dtype=float), (n,))
        fallback = np.full(n, float(default))
        if triggered is not None and self.contexts is not None:
            fallback[[bool((c or {}).get("trigger")) for c in self.contexts]] = triggered
        return np.where(np.isnan(h), fallback, h)


@dataclass
class Scores:
    """Per customer and (channel, offer): the best hour and its value; plus the rules' verdict."""

    value: np.ndarray        # (n, K, O) incremental expected profit at the best hour; -inf if not allowed
    hour: np.ndarray         # (n, K, O) best local hour, -1 if none allowed
    p_open: np.ndarray       # (n, K, O)
    uplift: np.ndarray       # (n, K, O) uplift in P(order)
    eligibility: object
    delay_hours: np.ndarray  # (n, 24)
    baseline: np.ndarray     # (n,) expected profit of the day without a message
    revenue: np.ndarray      # (n, K, O) margin x order value x uplift
    p_unsub: np.ndarray      # (n, K, O) the offline P(unsubscribe) (before calibration; ``p_open`` too)
    p_order_open: np.ndarray  # (n, K, O) the offline P(order after the message | opened) (before calibration)


@dataclass
class Decisions:
    """Decisions for a batch: a table (one row per customer) plus per-option scores and reasons."""

    columns: dict             # the table's columns: arrays (n,), or one value for every row (see ``frame``)
    scores: Scores
    reasons: list[list[str]] = field(default_factory=list)
    action_dist: np.ndarray | None = None     # (n, 1 + K*O) probability of every option, column 0 = suppress
    choice: np.ndarray | None = None          # (n,) the chosen option's column
    learner_inputs: np.ndarray | None = None  # (n, 1 + K*O, D) the online learner's context of every option
    values: np.ndarray | None = None          # (n, 1 + K*O) learner-corrected extra profit, -inf where not allowed


    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        """The decisions as a frame, built on first use (the service reads :meth:`column` instead:
        a frame of a few rows costs more to build than the rest of the bookkeeping)."""
        return pd.DataFrame(self.columns)

    def column(self, name: str) -> list:
        """One column's values as a list (n,)."""
        v = self.columns[name]
        if isinstance(v, (str, int, float, bool)):  # one value for every row
            return [v] * len(self.columns["customer_id"])
        if isinstance(v, list):
            return list(v)
        return list(np.asarray(v, dtype=object)) if isinstance(v, pd.api.extensions.ExtensionArray) else v.tolist()


def price_of_learning(flat: np.ndarray, allowed: np.ndarray, free: np.ndarray, probs: np.ndarray, greedy: np.ndarray,
                      control: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected profit each decision gives up to learn, by the policy's own current values ``flat``
    (n, A; suppress = 0):

    - to exploration: the greedy option's value minus the value expected under the drawn
      distribution ``probs`` (0 for a greedy decision);
    - to the control group: for a customer in it, the best value it could have had outside it
      (``free``: the options allowed before the control group took them away; at least 0).
    """
    n = len(flat)
    rows = np.arange(n)
    on = np.where(allowed, flat, 0.0)
    exploration = np.maximum(np.where(allowed[rows, greedy], flat[rows, greedy], 0.0) - (probs * on).sum(axis=1), 0.0)
    best_free = np.where(free, flat, -np.inf).max(axis=1, initial=0.0)
    return exploration, np.where(control, best_free, 0.0)


class DecisionPolicy:
    """Expected-profit policy over (suppress | channel x local hour x offer) with exploration.

    Parameters
    ----------
    config : Config
    models : PolicyModels
    version : str
        Written on every decision (the registered model version when served).
    uplift_mode : str, optional
        Defaults to the config's ``training.uplift_mode``.
    exploration : Exploration, optional
        Defaults to the config's ``exploration`` section.
    """

    def __init__(self, config: Config, models: PolicyModels, version: str = "dev", uplift_mode: str | None = None,
                 exploration: Exploration | None = None):
        uplift_mode = config.training.uplift_mode if uplift_mode is None else uplift_mode
        if uplift_mode not in UPLIFT_MODES:
            raise ValueError(f"uplift_mode must be one of {UPLIFT_MODES}, got {uplift_mode!r}")
        self.config = config
        self.models = models
        self.version = version
        self.uplift_mode = uplift_mode
        self.exploration = exploration or Exploration.from_config(config)
        self.online = OnlineSettings.from_config(config)

    def with_exploration(self, exploration: Exploration) -> "DecisionPolicy":
        """The same models and rules with another exploration (e.g. greedy for evaluation)."""
        out = object.__new__(DecisionPolicy)
        out.__dict__.update(self.__dict__, exploration=exploration)
        return out

    def new_learner(self) -> OnlineLearner:
        """An online learner with no feedback yet (its predictions equal the offline values)."""
        return OnlineLearner(self.online, calibration=self.new_calibration())

    def new_calibration(self) -> ResponseCalibration:
        """Response calibration with no feedback yet (every factor 1)."""
        return ResponseCalibration(self.config.channel_names, self.online.calibration_strength,
                                   offers=self.config.offer_names)

    @property
    def action_keys(self) -> list[str]:
        """The learner's name of each option column: suppress, then (channel, offer) pairs."""
        cfg = self.config
        return [SUPPRESS] + [action_key(c, o) for c in cfg.channel_names for o in cfg.offer_names]

    # ------------------------------------------------------------------ scoring
    def score(self, features: pd.DataFrame, contact: ContactHistory, request: Request,
              arrays: CustomerArrays | None = None, calibration: ResponseCalibration | None = None) -> Scores:
        """Rules, best hour and value of every (channel, offer) for every customer.

        Each model is called once per batch on a float matrix built from per-column customer
        arrays (``decision.candidates.CustomerArrays``), so one customer or fifty thousand cost
        about the same number of calls. ``arrays`` are those of ``features`` when the caller
        already has them (the service converts its snapshot once).
        """
        cfg, m = self.config, self.models
        n, K, O = len(features), len(cfg.channel_names), len(cfg.offer_names)
        now_s = request.now_ns(n) // 10**9
        tz_names = list(features["timezone"].cat.categories)
        tz_code = features["timezone"].cat.codes.to_numpy()
        local = now_s + utc_offsets(now_s, tz_code, tz_names)
        delay = delay_to_hours((local // 3600) % 24, (local % 3600) // 60)
        elig = eligible(features, contact, cfg, delay, request.contexts, request.horizons(n, cfg.decision.horizon_hours,
                                                                                     cfg.decision.trigger_horizon_hours),
                        request.type == "transactional", request.channels, request.offers)
        allowed = elig.allowed
        value = np.full((n, K, O), -np.inf)
        best_hour = np.full((n, K, O), -1, dtype=np.int64)
        p_open_best = np.zeros((n, K, O))
        uplift = np.zeros((n, K, O))
        revenue = np.zeros((n, K, O))
        p_unsub_best = np.zeros((n, K, O))
        q_best = np.zeros((n, K, O))
        if n == 0:
            return Scores(value, best_hour, p_open_best, uplift, elig, delay, np.zeros(0), revenue, p_unsub_best, q_best)
        obj = cfg.objective
        cust = arrays if arrays is not None else CustomerArrays(features)

        def inputs(model, rows, ch, hour, off, p_open=None):
            cand = candidate_arrays(cust, rows, ch, hour, off, cfg)
            if p_open is not None:
                cand[OPEN_ESTIMATE] = np.asarray(p_open, dtype=np.float32)
            return model_input(model.feature_names_in_, model.categories_, cust, rows, cand)

        everyone = np.arange(n)
        ovalue = m.value.predict(model_input(m.value.feature_names_in_, m.value.categories_, cust, everyone, {}))
        base = inputs(m.uplift, everyone, np.full(n, -1), np.full(n, -1), np.full(n, -1), np.full(n, np.nan))
        daily = m.uplift.predict_arm(base, NO_MESSAGE) * 24.0 / obj.attribution_window_hours
        baseline = obj.margin * ovalue * daily
        if not allowed.any():
            return Scores(value, best_hour, p_open_best, uplift, elig, delay, baseline, revenue, p_unsub_best, q_best)
        # send time: the open model over every allowed (channel, hour), one call
        rows, ks, hours = np.nonzero(allowed.any(axis=3))
        p = np.full((n, K, 24), -1.0)
        p[rows, ks, hours] = m.open.predict_proba(inputs(m.open, rows, ks, hours, np.zeros(len(rows))))[:, 1]
        # per (channel, offer): the allowed hour with the highest open probability
        hour_of = np.where(allowed, p[:, :, :, None], -2.0).argmax(axis=2)       # (n, K, O)
        rows, ks, js = np.nonzero(allowed.any(axis=2))
        h = hour_of[rows, ks, js]
        o = self._option_values(cust, rows, ks, h, js, ovalue[rows], contact, calibration)
        value[rows, ks, js] = o["value"]
        best_hour[rows, ks, js] = h
        p_open_best[rows, ks, js] = o["p_open"]
        p_unsub_best[rows, ks, js] = o["p_unsub"]
        q_best[rows, ks, js] = o["q"]
        uplift[rows, ks, js] = o["uplift"]
        revenue[rows, ks, js] = o["revenue"]
        return Scores(value, best_hour, p_open_best, uplift, elig, delay, baseline, revenue, p_unsub_best, q_best)

    def _option_values(self, cust: CustomerArrays, rows, ks, h, js, v, contact: ContactHistory,
                       calibration: ResponseCalibration | None) -> dict:
        """Expected extra profit of each candidate (customer ``rows``, channel ``ks``, local hour
        ``h``, offer ``js``; ``v`` the customers' order values) and its parts, one call per model.
        One set of candidate columns and one input matrix per distinct model input (the funnel's
        models read the open model's) is shared by the models."""
        cfg, m, obj = self.config, self.models, self.config.objective
        cand = candidate_arrays(cust, rows, ks, h, js, cfg)
        matrices: dict = {}

        def at_best(model):
            key = tuple(model.feature_names_in_)
            if key not in matrices:
                matrices[key] = model_input(model.feature_names_in_, model.categories_, cust, rows, cand)
            return matrices[key]

        po = m.open.predict_proba(at_best(m.open))[:, 1]
        cand[OPEN_ESTIMATE] = po.astype(np.float32)
        p_conv = _response(m.conversion, at_best(m.conversion), po)
        p_unsub = _response(m.unsubscribe, at_best(m.unsubscribe), po)
        q = np.clip(p_conv / np.maximum(po, 1e-9), 0.0, 1.0)  # P(order | opened)
        f_open = f_unsub = f_order = 1.0
        if calibration is not None and calibration.stats:  # the feedback's correction (decision.calibration)
            z = contact_context(contact, rows, ks)
            f_open, f_unsub = calibration.factor("open", ks, z), calibration.factor("unsubscribe", ks, z)
            f_order = calibration.factor("order", js, z)
        p_conv_c = p_conv * f_order  # the orders after an open, as the offer's feedback says
        up = self._uplift(at_best(m.uplift), js, po, p_conv_c)
        value = (f_open * (obj.margin * v * up - offer_costs(cfg, js, v) * p_conv_c)
                 - channel_costs(cfg)[ks] - obj.unsubscribe_cost * p_unsub * f_unsub)
        return {"value": value, "p_open": po, "p_unsub": p_unsub, "q": q, "uplift": up * f_open,
                "revenue": obj.margin * v * up * f_open}

    def render(self, features: pd.DataFrame, contact: ContactHistory, now: pd.Timestamp | pd.DatetimeIndex,
               channel: np.ndarray, contexts: list[dict] | None = None, arrays: CustomerArrays | None = None,
               calibration: ResponseCalibration | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The offers a message already sent may show when it is opened ``now``, and their values.

        For each customer (its message's channel codes ``channel``, (n,)): which offers the
        config allows in it at the customer's local hour now (``decision.rules.render_allowed``:
        the offer's channels, ``valid_hours`` and ``when``), and each offer's expected extra
        profit at that hour, valued as :meth:`score` values a send (the message is out: consent,
        caps and quiet hours no longer apply). Returns (allowed (n, O), value (n, O) with -inf
        where not allowed, local hour (n,)).
        """
        cfg = self.config
        n, O = len(features), len(cfg.offer_names)
        now_s = Request(now=now).now_ns(n) // 10**9
        tz_names = list(features["timezone"].cat.categories)
        local = now_s + utc_offsets(now_s, features["timezone"].cat.codes.to_numpy(), tz_names)
        hour = ((local // 3600) % 24).astype(np.int64)
        allowed = render_allowed(features, cfg, np.asarray(channel), hour, contexts)
        value = np.full((n, O), -np.inf)
        rows, js = np.nonzero(allowed)
        if len(rows):
            cust = arrays if arrays is not None else CustomerArrays(features)
            m = self.models
            ovalue = m.value.predict(model_input(m.value.feature_names_in_, m.value.categories_, cust,
                                                 np.arange(n), {}))
            value[rows, js] = self._option_values(cust, rows, np.asarray(channel)[rows], hour[rows], js,
                                                  ovalue[rows], contact, calibration)["value"]
        return allowed, value, hour

    def _uplift(self, X: np.ndarray, offer: np.ndarray, p_open: np.ndarray, p_conv: np.ndarray) -> np.ndarray:
        """Extra P(order) each candidate causes (see ``uplift_mode``); ``offer`` codes (r,)."""
        m = self.models
        names = np.array(self.config.offer_names, dtype=object)[offer]
        if self.uplift_mode != "mediated":
            effects = m.uplift.predict(X)
            learner = np.zeros(len(offer))
            for o in np.unique(names):
                sel = names == o
                learner[sel] = effects[o].to_numpy()[sel]
        else:
            learner = 0.0
        if self.uplift_mode == "learner":
            return learner
        daily = m.uplift.predict_arm(X, NO_MESSAGE) * 24.0 / self.config.objective.attribution_window_hours
        mediated = p_conv - p_open * daily
        return mediated if self.uplift_mode == "mediated" else 0.5 * (learner + mediated)

    def learner_inputs(self, s: Scores) -> np.ndarray:
        """The online learner's input for every option, (n, 1 + K*O, D) (see ``decision.online``):
        the shared part (1, baseline) and the option's own (1, value, P(open), extra revenue),
        zero for suppress."""
        n = len(s.baseline)
        A = 1 + len(self.config.channel_names) * len(self.config.offer_names)
        X = np.zeros((n, A, D))
        X[:, :, 0] = 1.0
        X[:, :, 1] = s.baseline[:, None]
        X[:, 1:, 2] = 1.0
        X[:, 1:, 3] = np.where(np.isfinite(s.value), s.value, 0.0).reshape(n, -1)
        X[:, 1:, 4] = s.p_open.reshape(n, -1)
        X[:, 1:, 5] = s.revenue.reshape(n, -1)
        return X

    # ------------------------------------------------------------------ choice
    def decide(self, features: pd.DataFrame, contact: ContactHistory, request: Request,
               explain: bool = True, rng=None, learner: OnlineLearner | None = None,
               arrays: CustomerArrays | None = None) -> Decisions:
        """Decide for every row of ``features``; see the module docstring.

        ``rng`` (numpy Generator, or ``decision.exploration.KeyedRandom`` for draws that depend
        only on each row's own key) drives exploration: the same seed gives the same decisions.
        ``learner`` is the online learner's current state (none: the offline values).
        """
        cfg = self.config
        n, K, O = len(features), len(cfg.channel_names), len(cfg.offer_names)
        rng = np.random.default_rng() if rng is None else rng
        s = self.score(features, contact, request, arrays, learner.calibration if learner is not None else None)
        allowed = np.concatenate([np.ones((n, 1), dtype=bool), np.isfinite(s.value).reshape(n, K * O)], axis=1)
        transactional = request.type == "transactional"
        must_send = np.full(n, transactional) & allowed[:, 1:].any(axis=1)
        allowed[must_send, 0] = False
        control = np.zeros(n, dtype=bool) if transactional else self.exploration.in_control(features.index)
        free = allowed.copy()  # what the customer could get outside the control group
        allowed[control, 1:] = False
        X = self.learner_inputs(s)
        flat, sd = (learner or self.new_learner()).predict(self.action_keys, X)  # extra profit over suppress
        if transactional:  # a service message is not an experiment: the best channel, no exploration
            probs, greedy = self.exploration.with_(method="greedy").distribution(np.where(allowed, flat, -np.inf))
        else:
            probs, greedy = self.exploration.distribution(np.where(allowed, flat, -np.inf), sd, rng)
        choice = draw(probs, rng)
        propensity = probs[np.arange(n), choice]
        exploration_cost, control_cost = price_of_learning(flat, allowed, free, probs, greedy, control)
        send = choice > 0
        k, j = np.divmod(np.maximum(choice - 1, 0), O)
        hour = np.where(send, s.hour[np.arange(n), k, j], -1)
        delay = np.where(send, s.delay_hours[np.arange(n), np.maximum(hour, 0)], 0.0)
        now_ns = request.now_ns(n)
        send_ns = now_ns + np.round(delay * 3600).astype(np.int64) * 10**9
        # the delay was counted on the local clock at `now`: across a daylight-saving change the
        # send's UTC offset differs, and the send moves by the difference to keep its local hour
        tz_names, tz_code = list(features["timezone"].cat.categories), features["timezone"].cat.codes.to_numpy()
        shift = (utc_offsets(now_ns // 10**9, tz_code, tz_names) - utc_offsets(send_ns // 10**9, tz_code, tz_names))
        send_ns = np.maximum(send_ns + shift * 10**9, now_ns)
        send_at = pd.to_datetime(send_ns, utc=True)
        send_at = send_at.where(send, pd.NaT)
        columns = {
            "customer_id": features.index.astype(str),
            "decision_id": [uuid.uuid4().hex for _ in range(n)],
            "action": np.where(send, "send", "suppress"),
            "channel": pd.array(np.where(send, np.array(cfg.channel_names, dtype=object)[k], None), dtype="str"),
            "local_hour": hour,
            "send_at": send_at,
            "offer": pd.array(np.where(send, np.array(cfg.offer_names, dtype=object)[j], None), dtype="str"),
            "propensity": propensity,
            "expected_value": np.where(send, flat[np.arange(n), choice], 0.0),
            "control": control,
            "explored": choice != greedy,
            "exploration_cost": exploration_cost,
            "control_cost": control_cost,
            "action_key": np.array(self.action_keys, dtype=object)[choice],
            "policy_version": self.version,
        }
        values = np.where(allowed[:, 1:], flat[:, 1:], -np.inf).reshape(n, K, O)
        reasons = [self._reasons(s, values[i], i, send[i], k[i], j[i], control[i], choice[i] != greedy[i],
                                 propensity[i]) for i in range(n)] if explain else []
        return Decisions(columns, s, reasons, probs, choice, X, np.where(allowed, flat, -np.inf))

    def _reasons(self, s: Scores, v: np.ndarray, i: int, send: bool, k: int, j: int, control: bool,
                 explored: bool, propensity: float) -> list[str]:
        """Plain words for decision ``i``; ``v`` (K, O) holds the (learner-corrected) values."""
        cfg = self.config
        out = s.eligibility.reasons(i)
        if control:
            return out + ["not contacted: the customer is in the random control group (no marketing), "
                          "which measures what messages add"]
        if explored:
            out.append(f"exploring ({self.exploration.method}): this option was drawn with probability "
                       f"{propensity:.1%} to learn its value; it is not the current best guess")
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
            best = f"({cfg.channel_names[kk]} with {cfg.offer_names[jj]})"
            if v[kk, jj] <= 0:
                out.append(f"not contacted: the best message {best} is expected to lose {-v[kk, jj]:.3f} "
                           "against sending nothing")
            else:
                out.append(f"not contacted this time although the best message {best} is expected to add "
                           f"{v[kk, jj]:+.3f}: exploration also tries sending nothing")
        else:
            out.append("not contacted: the rules leave no channel, hour and offer")
        return out
