"""Worlds assembled from interchangeable mechanisms, written independently of the baseline ``World``.

A :class:`MechanismWorld` is four parts, each chosen and parameterized by a :class:`WorldSpec`:

fatigue
    ``weekly``: open rate x ``exp(-a x messages in the last 7 days)`` (a 7-day count, as the
    baseline). ``stock``: a per-customer fatigue stock; each message adds 1, the stock decays by
    ``exp(-1 / tau)`` a day (``tau`` of weeks), and the open rate is ``exp(-a x stock)``: a burst
    of messages keeps hurting for weeks and recovers slowly. Unsubscribes rise with the level.
hours
    ``fixed``: one preferred local hour per customer. ``weekday``: a preferred hour on working
    days and another at weekends (weekend hours later for morning people, earlier for evening
    people), so the best send hour depends on the weekday. Responsiveness falls off with a
    circular (von Mises) shape around the channel's best hour (``lag`` hours before it for email).
response
    ``uplift``: extra order probability per click ``inc`` (log-normal, larger for young and
    silver customers), percent offers add ``kappa x discount x price sensitivity``.
    ``price``: a continuous price sensitivity ``beta``; an offer worth a fraction ``d`` of the
    order (a percent discount, or a fixed offer's cost over the order value) adds
    ``r x (1 - exp(-beta x d))`` per click, saturating; and a share ``averse_share`` of customers
    whom any message puts off: receiving one (opened or not) lowers their orders that day and
    they unsubscribe more, so a message has negative value for them.
affinity
    ``static``: channel open logits from attributes plus taste. ``drift``: the logits follow a
    mean-reverting random walk, one step a day (``sigma``, ``phi``), so the best channel changes.

A preference shift (``apply_shift``) multiplies a channel's open rates and switches an offer off;
which channel and offer the world's own shift hits is part of the spec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.sim.base import DEVICES, REGION_TIMEZONES, REGIONS, TIERS, TIMEZONES, BaseWorld, _sigmoid, hour_distance, outcome_table

FATIGUE = ("weekly", "stock")
HOURS = ("fixed", "weekday")
RESPONSE = ("uplift", "price")
AFFINITY = ("static", "drift")
_DELIVERY = {"email": 0.96, "sms": 0.99, "push": 0.92}
_CLICK = {"email": 0.14, "sms": 0.20, "push": 0.11}
_UNSUB = {"email": 0.005, "sms": 0.014, "push": 0.009}
MAX_ORDER_P = 0.95


@dataclass(frozen=True)
class WorldSpec:
    """Which mechanism each part uses, and its parameters (see the module docstring)."""

    name: str = "mechanisms"
    seed: int = 0
    fatigue: str = "weekly"
    fatigue_open: float = 0.15      # open rate x exp(-fatigue_open x level)
    fatigue_unsub: float = 0.4      # unsubscribe rate x (1 + fatigue_unsub x level)
    fatigue_tau: float = 21.0       # stock: days for the stock to fall to 1/e
    hours: str = "fixed"
    hour_kappa: float = 1.2         # concentration of the responsiveness around the best hour
    email_lag: int = 1              # email is best this many hours before the preferred hour
    weekend_move: float = 2.5       # weekday hours: mean size of the weekend move (hours)
    response: str = "uplift"
    inc_scale: float = 0.25         # typical extra order probability per click
    offer_kappa: float = 1.5        # uplift: percent offer lift per unit discount
    offer_r: float = 0.35           # price: most an offer can add per click
    beta_mean: float = 6.0          # price: mean price sensitivity (gamma distributed)
    averse_share: float = 0.15      # price: share of customers whom any message puts off
    affinity: str = "static"
    drift_sigma: float = 0.12       # drift: daily random-walk step of the open logits
    drift_phi: float = 0.98         # drift: pull back towards the customer's long-run logits
    shift_channel: str = "email"
    shift_factor: float = 0.3
    shift_offer: str = "pct10"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for part, value, options in (("fatigue", self.fatigue, FATIGUE), ("hours", self.hours, HOURS),
                                     ("response", self.response, RESPONSE), ("affinity", self.affinity, AFFINITY)):
            if value not in options:
                raise ValueError(f"{part} must be one of {options}, got {value!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "WorldSpec":
        return cls(**json.loads(text))


class MechanismWorld(BaseWorld):
    """A world built from the parts a :class:`WorldSpec` names; arrays live in ``self.a``."""

    kind = "mechanisms"

    def __init__(self, config: Config, customers: pd.DataFrame, spec: WorldSpec, arrays: dict):
        self.config, self.customers, self.spec, self.a = config, customers, spec, arrays
        self._dow = int(arrays.get("state_dow", np.array(0)))

    # ------------------------------------------------------------------ views the simulator uses
    @property
    def n(self) -> int:
        return len(self.a["p0"])

    tz_code = property(lambda self: self.a["tz_code"])
    consent = property(lambda self: self.a["consent"])
    p0 = property(lambda self: self.a["p0"])
    order_value = property(lambda self: self.a["order_value"])

    @property
    def pref_hour(self) -> np.ndarray:
        """Today's preferred local hour per customer (opens cluster around it)."""
        if self.spec.hours == "weekday" and self._dow >= 5:
            return self.a["pref_weekend"]
        return self.a["pref_hour"]

    @property
    def weekday(self) -> int:
        return self._dow

    def set_weekday(self, dow: int) -> None:
        self._dow = int(dow)

    @property
    def open_base(self) -> np.ndarray:
        """Open probability at the best hour without fatigue, (n, K), after drift and shifts."""
        return _sigmoid(self.a["logit_open"]) * self.a["channel_mult"][None, :]

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, n_customers: int, seed: int, config: Config, spec: WorldSpec | None = None,
               signup_before: pd.Timestamp | None = None) -> "MechanismWorld":
        """Draw ``n_customers`` customers; deterministic in ``(n_customers, seed, config, spec)``."""
        if n_customers <= 0:
            raise ValueError(f"n_customers must be positive, got {n_customers}")
        spec = spec or WorldSpec(seed=seed)
        rng = np.random.default_rng([seed, 31])
        n, channels, offers = n_customers, config.channel_names, config.offer_names
        K, O = len(channels), len(offers)
        age = np.clip(rng.normal(41, 14, n), 18, 80).astype(np.int64)
        region = rng.choice(len(REGIONS), n, p=[0.4, 0.4, 0.2])
        sizes = [len(z) for z in REGION_TIMEZONES.values()]
        tz_code = np.array([sum(sizes[:r]) for r in region]) + (rng.random(n) * np.array(sizes)[region]).astype(np.int64)
        older = (age - 41) / 14.0
        device = np.where(rng.random(n) < _sigmoid(-1.2 + 0.9 * older), 2, rng.integers(0, 2, n))
        tier = np.where(rng.random(n) < 0.12, 2, np.where(rng.random(n) < 0.3, 1, 0))
        reviews = rng.poisson(0.5 + 2.5 * (tier == 2) + 0.8 * (tier == 1) + 0.3 * rng.exponential(1, n))

        # channel affinity: long-run open logits by attributes and taste
        taste = rng.normal(0, 0.7, (n, K))
        base = {"email": -0.5 + 0.5 * older + 0.5 * (device == 2), "sms": -0.6 - 0.3 * older + 0.2 * (tier > 0),
                "push": -0.3 - 0.6 * older + 0.4 * (device == 1)}
        logit_open = np.stack([base.get(c, -1.0) + taste[:, k] for k, c in enumerate(channels)], axis=1)
        click = np.clip(np.stack([_CLICK.get(c, 0.14) * rng.lognormal(0, 0.35, n) for c in channels], axis=1), 0.01, 0.6)

        # hours: working-day preferred hour, and a weekend hour (later mornings, earlier evenings)
        anchor = np.array([7.5, 13.0, 20.0])[rng.choice(3, n, p=[0.4, 0.2, 0.4])]
        pref = np.clip(np.rint(anchor + rng.normal(0, 1.2, n)), 8, 21).astype(np.int64)
        move = np.sign(13.5 - pref) * rng.gamma(4.0, spec.weekend_move / 4.0, n)
        pref_weekend = np.clip(np.rint(pref + move), 8, 21).astype(np.int64)

        # response
        p0 = np.exp(np.log(0.008) + 0.6 * (tier == 2) + 0.2 * (tier == 1) + rng.normal(0, 0.5, n))
        inc = spec.inc_scale * np.exp(0.3 * (tier == 1) - 0.25 * older + rng.normal(0, 0.8, n) - 0.32)
        inc *= rng.random(n) > 0.2  # a fifth whom a message does not move at all
        value = np.exp(np.log(60) + 0.4 * (tier == 2) - 0.1 * older + rng.normal(0, 0.35, n))
        price_sens = rng.beta(2, 3, n)
        beta = rng.gamma(2.0, spec.beta_mean / 2.0, n) * (1.3 - 0.6 * (tier == 2))
        averse = np.zeros(n)
        if spec.response == "price":
            is_averse = rng.random(n) < spec.averse_share * (0.6 + 0.8 * (age > 55))
            averse = np.where(is_averse, rng.uniform(0.3, 0.8, n), 0.0)
            inc = np.where(is_averse, 0.0, inc)
        unsub_mult = 1.0 + 4.0 * (averse > 0)
        fraction = np.zeros((n, O))  # how much each offer is worth as a share of the order
        for j, o in enumerate(offers):
            of = config.offers[o]
            if of.kind == "percent":
                fraction[:, j] = of.value
            elif of.kind == "fixed":
                fraction[:, j] = of.value / value
        if spec.response == "price":
            lift = spec.offer_r * (1 - np.exp(-beta[:, None] * fraction))
        else:
            is_pct = np.array([config.offers[o].kind == "percent" for o in offers])
            lift = np.where(is_pct[None, :], spec.offer_kappa * fraction * price_sens[:, None],
                            0.2 * _sigmoid((45 - value) / 8.0)[:, None] * (fraction > 0))
        lift *= (averse == 0)[:, None]

        consent = np.stack([rng.random(n) < {"email": 0.9, "sms": 0.5 - 0.1 * older,
                                              "push": 0.75 * (device < 2)}.get(c, 0.5) for c in channels], axis=1)
        signup_before = signup_before or pd.Timestamp("2026-06-01", tz="UTC")
        customers = pd.DataFrame({
            "customer_id": pd.array([f"c{i:07d}" for i in range(n)], dtype="str"),
            "timezone": pd.array(np.array(TIMEZONES, dtype=object)[tz_code], dtype="str"),
            "signup_at": signup_before - pd.to_timedelta(rng.exponential(400, n).astype(np.int64) + 1, unit="D"),
            "age": age,
            "region": pd.array(np.array(REGIONS, dtype=object)[region], dtype="str"),
            "device": pd.array(np.array(DEVICES, dtype=object)[device], dtype="str"),
            "loyalty_tier": pd.array(np.array(TIERS, dtype=object)[tier], dtype="str"),
            "review_count": reviews.astype(np.int64),
            **{f"consent_{c}": consent[:, k].copy() for k, c in enumerate(channels)},
        })
        arrays = {
            "tz_code": tz_code.astype(np.int64), "consent": consent, "logit_open": logit_open,
            "logit_home": logit_open.copy(), "click_given_open": click, "pref_hour": pref,
            "pref_weekend": pref_weekend, "p0": p0, "inc": inc, "averse": averse, "unsub_mult": unsub_mult,
            "offer_lift": lift, "offer_fraction": fraction, "order_value": value, "beta": beta,
            "channel_mult": np.ones(K), "offer_alive": np.ones(O, dtype=bool),
            "sends_by_day": np.zeros((n, 7), dtype=np.int64), "stock": np.zeros(n),
            "state_day": np.array(-1), "state_dow": np.array(0),
        }
        return cls(config, customers, spec, arrays)

    # ------------------------------------------------------------------ dynamics
    def fatigue(self, idx=slice(None)) -> np.ndarray:
        """The fatigue level: messages in the last 7 days (``weekly``) or the decaying stock."""
        if self.spec.fatigue == "stock":
            return self.a["stock"][idx]
        return self.a["sends_by_day"][idx].sum(axis=1)

    def start_day(self, day: int) -> None:
        """Advance the state to day index ``day``: fatigue decay, affinity drift, the weekday."""
        a, spec = self.a, self.spec
        last = int(a["state_day"])
        steps = max(day - last, 0) if last >= 0 else 1
        a["sends_by_day"][:, day % 7] = 0
        if steps:
            a["stock"] *= np.exp(-steps / spec.fatigue_tau)
            if spec.affinity == "drift":
                for t in range(day - steps + 1, day + 1):
                    rng = np.random.default_rng([spec.seed, 77, t])
                    a["logit_open"] = (a["logit_home"] + spec.drift_phi * (a["logit_open"] - a["logit_home"])
                                       + rng.normal(0, spec.drift_sigma, a["logit_open"].shape))
        a["state_day"] = np.array(max(day, last))
        self._dow = self.weekday_of(day)
        a["state_dow"] = np.array(self._dow)

    def record_sends(self, day: int, idx: np.ndarray) -> None:
        np.add.at(self.a["sends_by_day"][:, day % 7], idx, 1)
        np.add.at(self.a["stock"], idx, 1.0)

    def apply_shift(self, channel: str | None, channel_factor: float, offer: str | None) -> None:
        """``channel``'s open rates x ``channel_factor``; ``offer`` no longer adds any orders or clicks."""
        if channel is not None:
            self.a["channel_mult"][self.config.channel_names.index(channel)] *= channel_factor
        if offer is not None:
            self.a["offer_alive"][self.config.offer_names.index(offer)] = False

    def default_shift(self) -> dict:
        s = self.spec
        return {"channel": s.shift_channel, "channel_factor": s.shift_factor, "offer": s.shift_offer}

    # ------------------------------------------------------------------ truth
    def hour_gain(self, idx, channel_code, local_hour) -> np.ndarray:
        """Responsiveness in (0.25, 1] of sending at ``local_hour`` on today's weekday."""
        names = self.config.channel_names
        lag = np.array([self.spec.email_lag if c == "email" else 0 for c in names])[channel_code]
        d = hour_distance(local_hour, self.pref_hour[idx] - lag)
        return 0.25 + 0.75 * np.exp(self.spec.hour_kappa * (np.cos(2 * np.pi * d / 24) - 1) * 6)

    def outcome_probs(self, idx, channel_code, local_hour, offer_code, fatigue=None) -> dict:
        """True response probabilities of a decision (``channel_code == -1``: suppress).

        Same keys as ``World.outcome_probs``, plus ``order_given_unopened``: the order probability
        of a customer whose message was sent but not opened (lower than ``p0`` for put-off customers).
        """
        a, spec, names = self.a, self.spec, self.config.channel_names
        idx = np.asarray(idx)
        m = len(idx)
        ch = np.broadcast_to(np.asarray(channel_code), (m,))
        hour = np.broadcast_to(np.asarray(local_hour), (m,))
        off = np.broadcast_to(np.asarray(offer_code), (m,))
        f = self.fatigue(idx) if fatigue is None else np.asarray(fatigue, dtype=float)
        send = ch >= 0
        chs = np.where(send, ch, 0)
        deliver = np.array([_DELIVERY.get(c, 0.95) for c in names])[chs]
        base = _sigmoid(a["logit_open"][idx, chs]) * a["channel_mult"][chs]
        p_open = deliver * base * self.hour_gain(idx, chs, hour) * np.exp(-spec.fatigue_open * f)
        alive = a["offer_alive"][off]
        boost = 1 + 1.2 * a["offer_fraction"][idx, off] * alive
        cgo = np.clip(a["click_given_open"][idx, chs] * boost, 0, 0.9)
        p0, averse = a["p0"][idx], a["averse"][idx]
        q = np.clip(p0 * (1 - averse) + cgo * (a["inc"][idx] + a["offer_lift"][idx, off] * alive), 0, MAX_ORDER_P)
        unopened = p0 * (1 - 0.5 * averse)
        unsub_rate = np.array([_UNSUB.get(c, 0.008) for c in names])[chs]
        p_unsub = p_open * np.clip(unsub_rate * a["unsub_mult"][idx] * (1 + spec.fatigue_unsub * f), 0, 1)
        return outcome_table(send, deliver, p_open, cgo, q, unopened, p0, p_unsub)

    # ------------------------------------------------------------------ persistence
    def _arrays(self) -> dict:
        return {**self.a, "_spec": np.array(self.spec.to_json())}

    @classmethod
    def _from_arrays(cls, arrays: dict, customers: pd.DataFrame, config: Config) -> "MechanismWorld":
        arrays = dict(arrays)
        spec = WorldSpec.from_json(str(arrays.pop("_spec")))
        return cls(config, customers, spec, arrays)
