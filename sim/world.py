"""The simulated customer world: who the customers are, how they respond, and what is best for each.

The world holds structure that a good policy can find and a naive one misses:

- **Channel affinity** depends on observable attributes (age, device) plus individual taste,
  and shows in each customer's open history.
- **A preferred local hour** per customer: a message sent close to it is opened more often, and
  opens cluster around it. For email the best send hour is one hour *before* the preferred hour
  (the email waits at the top of the inbox); for SMS and push it is the preferred hour itself.
- **Time zones** from the customer's region.
- **Four latent segments** with heterogeneous offer uplift: *persuadables* (a message, and for the
  price-sensitive an offer, raises their chance to order), *sure things* (order anyway: an offer
  only costs the discount), *lost causes*, and *sleeping dogs* (a message puts them off ordering
  and makes them unsubscribe). Segment odds depend on attributes (loyalty tier, reviews, age).
- **Fatigue**: each message in the last 7 days lowers the open rate and raises unsubscribes.
- **Order values** per customer (log-normal, by tier and age), discounted by percent offers.

Time is organised in decision days. Each day a customer gets one decision (suppress, or a
channel + local send hour + offer). ``outcome_probs`` gives the true response probabilities of
any decision, ``expected_profit`` its true expected profit under the business config (the
customer's organic orders of that day included), and ``oracle`` the best decision per customer.
The oracle is myopic: it maximizes the day's expected profit given the current fatigue state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.sim.base import (DEVICES, REGION_TIMEZONES, REGIONS, TIERS, TIMEZONES, BaseWorld,  # noqa: F401
                               _sigmoid, hour_distance, outcome_table)

SEGMENTS = ("persuadable", "sure_thing", "lost_cause", "sleeping_dog")

# Per-segment response parameters: daily organic order probability, extra order probability per
# click, share of organic orders lost when the message is opened, unsubscribe multiplier,
# multiplier on offer lift.
_SEGMENT_P0 = np.array([0.006, 0.05, 0.0015, 0.02])
_SEGMENT_INC = np.array([0.40, 0.04, 0.06, 0.0])
_SEGMENT_PUTOFF = np.array([0.0, 0.0, 0.0, 0.55])
_SEGMENT_UNSUB = np.array([1.0, 0.8, 1.5, 5.0])
_SEGMENT_OFFER = np.array([1.0, 0.1, 0.5, 0.0])
_DELIVERY = {"email": 0.97, "sms": 0.985, "push": 0.93}
_CLICK_GIVEN_OPEN = {"email": 0.16, "sms": 0.22, "push": 0.12}
_UNSUB_GIVEN_OPEN = {"email": 0.006, "sms": 0.012, "push": 0.008}
_PEAK_SHIFT = {"email": -1, "sms": 0, "push": 0}  # best send hour relative to the preferred hour
HOUR_WIDTH = 1.5
FATIGUE_OPEN = 0.15   # open rate x exp(-FATIGUE_OPEN x messages in the last 7 days)
FATIGUE_UNSUB = 0.4   # unsubscribe rate x (1 + FATIGUE_UNSUB x messages in the last 7 days)
OFFER_CLICK_BOOST = 0.35  # clicks x (1 + boost x discount attractiveness x price sensitivity)
MAX_ORDER_P = 0.95


@dataclass
class World(BaseWorld):
    """The baseline member of the family: latent customer parameters (arrays over customers) and the dynamic contact state.

    Build with :meth:`create`; everything is a deterministic function of ``(n, seed, config)``.
    Arrays indexed ``[customer]`` or ``[customer, channel]`` / ``[customer, offer]`` follow the
    order of ``config.channel_names`` and ``config.offer_names``.
    """

    config: Config
    customers: pd.DataFrame          # the observable customer table (data contract)
    tz_code: np.ndarray              # (n,) index into TIMEZONES
    segment: np.ndarray              # (n,) index into SEGMENTS
    pref_hour: np.ndarray            # (n,) preferred local hour
    open_base: np.ndarray            # (n, K) open probability at the best hour, no fatigue
    click_given_open: np.ndarray     # (n, K)
    p0: np.ndarray                   # (n,) daily organic order probability
    inc: np.ndarray                  # (n,) extra order probability per click
    putoff: np.ndarray               # (n,)
    unsub_mult: np.ndarray           # (n,)
    offer_lift: np.ndarray           # (n, O) extra order probability per click, by offer
    order_value: np.ndarray          # (n,) mean order value
    consent: np.ndarray              # (n, K) bool, current consent (unsubscribes revoke it)
    sends_by_day: np.ndarray         # (n, 7) messages sent on each of the last 7 days (ring)

    kind = "baseline"

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, n_customers: int, seed: int, config: Config,
               signup_before: pd.Timestamp | None = None) -> "World":
        """Draw ``n_customers`` customers with seed ``seed``."""
        if n_customers <= 0:
            raise ValueError(f"n_customers must be positive, got {n_customers}")
        rng = np.random.default_rng([seed, 1])
        n = n_customers
        channels, offers = config.channel_names, config.offer_names
        age = rng.integers(18, 76, n)
        region = rng.choice(len(REGIONS), n, p=[0.45, 0.35, 0.20])
        tz_code = np.empty(n, dtype=np.int64)
        offset = 0
        for r, zones in enumerate(REGION_TIMEZONES.values()):
            sel = region == r
            tz_code[sel] = offset + rng.integers(0, len(zones), sel.sum())
            offset += len(zones)
        p_desktop = np.clip(0.1 + 0.01 * (age - 18), 0.1, 0.6)
        u = rng.random(n)
        device = np.where(u < p_desktop, 2, np.where(u < p_desktop + (1 - p_desktop) * 0.5, 0, 1))
        tier = rng.choice(3, n, p=[0.65, 0.25, 0.10])
        reviews = rng.poisson(0.8 + 3.5 * (tier == 2) + 1.0 * (tier == 1))
        young = (45 - age) / 15.0

        # segments depend on attributes
        logits = np.stack([
            0.4 + 0.5 * (tier == 1) + 0.3 * young,
            -1.0 + 1.8 * (tier == 2) + 0.25 * np.minimum(reviews, 6),
            0.2 - 0.3 * young,
            -1.5 + 0.9 * (age > 60) + 0.5 * (device == 2),
        ], axis=1) + rng.gumbel(size=(n, 4))
        segment = logits.argmax(axis=1)

        # channel affinity: email for older/desktop, sms and push for younger/mobile
        mobile = device < 2
        taste = rng.normal(0, 0.6, (n, 3))
        logit_open = {
            "email": -0.3 - 0.35 * young + 0.4 * (device == 2) + taste[:, 0],
            "sms": -0.4 + 0.45 * young + taste[:, 1],
            "push": -0.2 + 0.55 * young + 0.3 * (device == 0) + taste[:, 2],
        }
        open_base = np.stack([_sigmoid(logit_open.get(c, -1.2 + taste[:, 0])) for c in channels], axis=1)
        click = np.stack([_CLICK_GIVEN_OPEN.get(c, 0.15) * rng.lognormal(0, 0.3, n) for c in channels], axis=1)
        click = np.clip(click, 0.01, 0.6)

        # preferred local hour: morning, lunch or evening people
        mode = rng.choice(3, n, p=[0.35, 0.25, 0.40])
        pref = np.array([8.0, 12.5, 19.5])[mode] + rng.normal(0, 1.0, n)
        pref_hour = np.clip(np.rint(pref), 8, 21).astype(np.int64)

        p0 = _SEGMENT_P0[segment] * rng.lognormal(0, 0.3, n)
        inc = _SEGMENT_INC[segment] * rng.lognormal(0, 0.3, n)
        putoff = _SEGMENT_PUTOFF[segment]
        unsub_mult = _SEGMENT_UNSUB[segment]

        value = np.exp(np.log(55) + 0.35 * (tier == 2) + 0.15 * (tier == 1) - 0.08 * young
                       + rng.normal(0, 0.3, n))
        price_sens = _sigmoid(0.9 * young - 0.9 * (tier == 2) + rng.normal(0, 0.7, n))
        ship_sens = _sigmoid((50 - value) / 8.0)
        lift = np.zeros((n, len(offers)))
        for j, name in enumerate(offers):
            offer = config.offers[name]
            if offer.kind == "percent":
                lift[:, j] = 1.6 * offer.value * price_sens
            elif offer.kind == "fixed":
                lift[:, j] = 0.25 * ship_sens
        lift *= _SEGMENT_OFFER[segment][:, None]

        # consent: email for most, sms for some, push only with the app
        consent = np.stack([
            rng.random(n) < {"email": 0.92, "sms": 0.45 + 0.2 * (young > 0), "push": 0.7 * mobile}.get(c, 0.5)
            for c in channels], axis=1)
        signup_before = signup_before or pd.Timestamp("2026-06-01", tz="UTC")
        tenure_days = rng.exponential(500, n).astype(np.int64) + 1
        customers = pd.DataFrame({
            "customer_id": pd.array([f"c{i:07d}" for i in range(n)], dtype="str"),
            "timezone": pd.array(np.array(TIMEZONES, dtype=object)[tz_code], dtype="str"),
            "signup_at": signup_before - pd.to_timedelta(tenure_days, unit="D"),
            "age": age.astype(np.int64),
            "region": pd.array(np.array(REGIONS, dtype=object)[region], dtype="str"),
            "device": pd.array(np.array(DEVICES, dtype=object)[device], dtype="str"),
            "loyalty_tier": pd.array(np.array(TIERS, dtype=object)[tier], dtype="str"),
            "review_count": reviews.astype(np.int64),
            **{f"consent_{c}": consent[:, k].copy() for k, c in enumerate(channels)},
        })
        return cls(config=config, customers=customers, tz_code=tz_code, segment=segment,
                   pref_hour=pref_hour, open_base=open_base, click_given_open=click, p0=p0,
                   inc=inc, putoff=putoff, unsub_mult=unsub_mult, offer_lift=lift,
                   order_value=value, consent=consent,
                   sends_by_day=np.zeros((n, 7), dtype=np.int64))

    @property
    def n(self) -> int:
        return len(self.p0)

    # ------------------------------------------------------------------ dynamics
    def fatigue(self, idx=slice(None)) -> np.ndarray:
        """Messages sent to each customer in the last 7 days."""
        return self.sends_by_day[idx].sum(axis=1)

    def start_day(self, day: int) -> None:
        """Move the 7-day ring to ``day`` (clears the slot that falls out of the window)."""
        self.sends_by_day[:, day % 7] = 0

    def record_sends(self, day: int, idx: np.ndarray) -> None:
        np.add.at(self.sends_by_day[:, day % 7], idx, 1)

    def apply_shift(self, channel: str | None, channel_factor: float, offer: str | None) -> None:
        """A preference shift: ``channel``'s open rates x ``channel_factor``; ``offer`` adds no orders."""
        cfg = self.config
        if channel is not None:
            self.open_base[:, cfg.channel_names.index(channel)] *= channel_factor
        if offer is not None:
            self.offer_lift[:, cfg.offer_names.index(offer)] = 0.0

    # ------------------------------------------------------------------ truth
    def outcome_probs(self, idx, channel_code, local_hour, offer_code, fatigue=None) -> dict:
        """True response probabilities of sending channel ``channel_code`` at ``local_hour`` with ``offer_code``.

        Parameters
        ----------
        idx : int array (m,)
            Customer indices.
        channel_code, local_hour, offer_code : int arrays (m,) or scalars
            ``channel_code == -1`` means suppress.
        fatigue : array (m,), optional
            Messages in the last 7 days; defaults to the world's current state.

        Returns
        -------
        dict of arrays (m,)
            ``deliver, open, click, order, redeem, unsubscribe`` (``order`` counts every order of
            the day; ``redeem`` the orders that follow an opened message and use its offer).
        """
        idx = np.asarray(idx)
        m = len(idx)
        ch = np.broadcast_to(np.asarray(channel_code), (m,))
        hour = np.broadcast_to(np.asarray(local_hour), (m,))
        off = np.broadcast_to(np.asarray(offer_code), (m,))
        f = self.fatigue(idx) if fatigue is None else np.asarray(fatigue)
        send = ch >= 0
        chs = np.where(send, ch, 0)
        names = self.config.channel_names
        deliver = np.array([_DELIVERY.get(c, 0.95) for c in names])[chs]
        shift = np.array([_PEAK_SHIFT.get(c, 0) for c in names])[chs]
        g = 0.3 + 0.7 * np.exp(-hour_distance(hour, self.pref_hour[idx] + shift) ** 2 / (2 * HOUR_WIDTH ** 2))
        p_open = deliver * self.open_base[idx, chs] * g * np.exp(-FATIGUE_OPEN * f)
        attract = np.array([self.config.offers[o].value if self.config.offers[o].kind == "percent" else 0.1
                            if self.config.offers[o].kind == "fixed" else 0.0
                            for o in self.config.offer_names])[off]
        cgo = np.clip(self.click_given_open[idx, chs] * (1 + OFFER_CLICK_BOOST * attract * 4), 0, 0.9)
        p0 = self.p0[idx]
        q = np.clip(p0 * (1 - self.putoff[idx]) + cgo * (self.inc[idx] + self.offer_lift[idx, off]),
                    0, MAX_ORDER_P)
        unsub_rate = np.array([_UNSUB_GIVEN_OPEN.get(c, 0.008) for c in names])[chs]
        p_unsub = p_open * np.clip(unsub_rate * self.unsub_mult[idx] * (1 + FATIGUE_UNSUB * f), 0, 1)
        return outcome_table(send, deliver, p_open, cgo, q, p0, p0, p_unsub)

    # ------------------------------------------------------------------ persistence
    _ARRAYS = ("tz_code", "segment", "pref_hour", "open_base", "click_given_open", "p0", "inc", "putoff",
               "unsub_mult", "offer_lift", "order_value", "consent", "sends_by_day")

    def _arrays(self) -> dict:
        return {k: getattr(self, k) for k in self._ARRAYS}

    @classmethod
    def _from_arrays(cls, arrays: dict, customers: pd.DataFrame, config: Config) -> "World":
        return cls(config=config, customers=customers, **{k: arrays[k] for k in cls._ARRAYS})
