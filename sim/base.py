"""What every simulated world shares: geography, the truth built on ``outcome_probs``, rules, oracle.

A world is a set of latent per-customer parameters plus a dynamic contact state. Each member of
the family (``sim.world.World``, the baseline, and ``sim.mechanisms.MechanismWorld``) supplies the
mechanism: :meth:`BaseWorld.outcome_probs` (true response probabilities of any decision given the
current state), the state's dynamics (``fatigue``, ``start_day``, ``record_sends``), the preferred
hour that open times cluster around (``pref_hour``), the organic order rate ``p0``, the order value
``order_value``, and how a preference shift acts (``apply_shift``). From these this class derives
everything the simulator, the evaluation and the closed loop use: true expected profit, the
allowed actions, the oracle, ``ask``, and persistence.

Days are indexed from the first simulated day; :meth:`set_calendar` ties day 0 to a date, so that
a world whose behaviour depends on the weekday knows which weekday a day index is. A decision day
is the same calendar date in every customer's local time (``sim.simulate`` sends at local hours
of the UTC date), so the local weekday of a day is one value for all customers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.decision.objective import expected_profit

REGION_TIMEZONES = {
    "americas": ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
                 "America/Sao_Paulo"),
    "europe": ("Europe/London", "Europe/Paris", "Europe/Berlin", "Europe/Madrid", "Europe/Warsaw"),
    "asia_pacific": ("Asia/Tokyo", "Asia/Singapore", "Australia/Sydney", "Asia/Kolkata",
                     "Australia/Adelaide"),
}
REGIONS = tuple(REGION_TIMEZONES)
TIMEZONES = tuple(tz for zones in REGION_TIMEZONES.values() for tz in zones)
DEVICES = ("ios", "android", "desktop")
TIERS = ("none", "silver", "gold")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def hour_distance(a, b):
    """Circular distance in hours between local hours ``a`` and ``b``."""
    d = np.abs(np.asarray(a) - np.asarray(b)) % 24
    return np.minimum(d, 24 - d)


def outcome_table(send, deliver, p_open, click_given_open, order_given_open, order_given_unopened, p0, p_unsub) -> dict:
    """The response probabilities of one decision per customer, as every world reports them
    (``BaseWorld.outcome_probs``); arrays (m,), ``send`` False where the decision is suppress."""
    zero = np.zeros(len(send))
    return {
        "deliver": np.where(send, deliver, zero),
        "open": np.where(send, p_open, zero),
        "click": np.where(send, p_open * click_given_open, zero),
        "order": np.where(send, order_given_unopened * (1 - p_open) + p_open * order_given_open, p0),
        "redeem": np.where(send, p_open * order_given_open, zero),
        "order_given_open": np.where(send, order_given_open, zero),
        "order_given_unopened": np.where(send, order_given_unopened, p0),
        "unsubscribe": np.where(send, p_unsub, zero),
    }


class BaseWorld:
    """The machinery shared by every world; subclasses provide the mechanism (see module doc).

    Subclasses set ``config``, ``customers``, ``tz_code`` (index into :data:`TIMEZONES`) and
    ``consent`` ((n, K) bool, revoked by unsubscribes), and implement ``n``, ``fatigue``,
    ``start_day``, ``record_sends``, ``outcome_probs``, ``apply_shift``, ``_arrays`` and
    ``_from_arrays``.
    """

    kind = "base"
    config: Config
    customers: pd.DataFrame
    tz_code: np.ndarray
    consent: np.ndarray

    # ------------------------------------------------------------------ calendar
    def set_calendar(self, start) -> None:
        """Tie day index 0 to the UTC date of ``start`` (the first simulated day)."""
        ts = pd.Timestamp(start)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        self.day0 = ts.floor("D")

    def weekday_of(self, day: int) -> int:
        """Local weekday (Monday = 0) of day index ``day``; day 0 is a Monday without a calendar."""
        day0 = getattr(self, "day0", None)
        return int(day % 7) if day0 is None else int((day0 + pd.Timedelta(days=int(day))).day_of_week)

    def set_weekday(self, dow: int) -> None:
        """Worlds whose responses depend on the weekday override this (``ask`` uses it)."""

    @property
    def weekday(self) -> int:
        return 0

    # ------------------------------------------------------------------ contact state
    def unsubscribe(self, idx: np.ndarray, channel_code: np.ndarray) -> None:
        self.consent[idx, channel_code] = False

    def default_shift(self) -> dict:
        """The preference shift this world suffers (``sim.closed_loop.Shift`` keyword arguments)."""
        return {"channel": "email", "channel_factor": 0.3, "offer": "pct10"}

    # ------------------------------------------------------------------ truth
    def suppress_probs(self, idx) -> dict:
        return self.outcome_probs(np.asarray(idx), -1, 0, 0)

    def expected_profit(self, idx, channel_code, local_hour, offer_code, fatigue=None) -> np.ndarray:
        """True expected profit (business config objective) of a decision per customer, shape (m,)."""
        idx = np.asarray(idx)
        m = len(idx)
        ch = np.broadcast_to(np.asarray(channel_code), (m,))
        off = np.broadcast_to(np.asarray(offer_code), (m,))
        p = self.outcome_probs(idx, ch, local_hour, off, fatigue)
        value = self.order_value[idx]
        out = expected_profit(self.config, None, "none", p["order"], value)
        cfg = self.config
        for k, c in enumerate(cfg.channel_names):
            for j, o in enumerate(cfg.offer_names):
                sel = (ch == k) & (off == j)
                if sel.any():
                    out[sel] = expected_profit(cfg, c, o, p["order"][sel], value[sel],
                                               p["unsubscribe"][sel], p["redeem"][sel])
        return out

    def allowed(self, idx) -> np.ndarray:
        """Which (channel, local hour, offer) each customer may receive today, bool (m, K, 24, O).

        Consent (unsubscribes revoke it), channel quiet hours, and each offer's channels and valid
        hours. Frequency caps are not applied here: the oracle takes one decision per customer
        per day, which every daily cap allows; weekly caps depend on the decisions of other days
        and are checked by whoever plays the days (the logging policy here, the policy later).
        """
        idx = np.asarray(idx)
        cfg = self.config
        hours = np.arange(24)
        quiet = np.stack([cfg.channels[c].quiet_hours.contains(hours) for c in cfg.channel_names])
        offer_ok = np.stack([[c in cfg.offers[o].channels for o in cfg.offer_names] for c in cfg.channel_names])
        valid = np.stack([cfg.offers[o].valid_hours.contains(hours) for o in cfg.offer_names], axis=1)  # (24, O)
        static = (~quiet)[:, :, None] & offer_ok[:, None, :] & valid[None, :, :]  # (K, 24, O)
        consent = self.consent[idx]
        return consent[:, :, None, None] & static[None]

    def oracle(self, idx=None, allowed=None) -> pd.DataFrame:
        """The best decision today per customer, by true expected profit (myopic: today's state).

        ``allowed`` (m, K, 24, O), optional: further restricts :meth:`allowed` (e.g. the business
        rules a policy must obey on that day, so that the oracle plays by the same rules).

        Returns
        -------
        DataFrame with ``channel`` (None = suppress), ``local_hour``, ``offer``, ``expected_profit``,
        ``suppress_profit`` for each customer in ``idx`` (all by default).
        """
        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        cfg = self.config
        K, O = len(cfg.channel_names), len(cfg.offer_names)
        ok = self.allowed(idx)
        if allowed is not None:
            ok = ok & allowed
        f = self.fatigue(idx)
        best = self.expected_profit(idx, -1, 0, 0, f)
        suppress = best.copy()
        best_action = np.full(len(idx), -1, dtype=np.int64)
        for k in range(K):
            for h in range(24):
                for o in range(O):
                    sel = ok[:, k, h, o]
                    if not sel.any():
                        continue
                    v = np.full(len(idx), -np.inf)
                    v[sel] = self.expected_profit(idx[sel], k, h, o, f[sel])
                    better = v > best
                    best[better] = v[better]
                    best_action[better] = (k * 24 + h) * O + o
        send = best_action >= 0
        ch = np.where(send, best_action // (24 * O), -1)
        return pd.DataFrame({
            "customer": idx,
            "channel": pd.array(np.where(send, np.array(cfg.channel_names, dtype=object)[np.maximum(ch, 0)], None),
                                dtype="str"),
            "local_hour": np.where(send, (best_action // O) % 24, -1),
            "offer": pd.array(np.where(send, np.array(cfg.offer_names, dtype=object)[best_action % O], None),
                              dtype="str"),
            "expected_profit": best,
            "suppress_profit": suppress,
        })

    def ask(self, customer_id: str, channel: str | None, send_at, offer: str = "none") -> dict:
        """What customer ``customer_id`` would do if sent ``channel`` at UTC time ``send_at`` with ``offer``.

        Returns the true probabilities of each response (see :meth:`outcome_probs`), the local
        send hour, and the expected profit; ``channel=None`` asks about not sending anything. The
        weekday is the local weekday of ``send_at``; the contact state is the current one.
        """
        from nextbest.features.localtime import local_hour_dow

        cfg = self.config
        ids = self.customers["customer_id"].to_numpy()
        hits = np.flatnonzero(ids == customer_id)
        if len(hits) == 0:
            raise KeyError(f"unknown customer {customer_id!r}")
        if channel is not None and channel not in cfg.channels:
            raise KeyError(f"unknown channel {channel!r}; configured: {list(cfg.channel_names)}")
        if offer not in cfg.offers:
            raise KeyError(f"unknown offer {offer!r}; configured: {list(cfg.offer_names)}")
        i = hits[:1]
        ts = pd.Timestamp(send_at)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        hour, dow = local_hour_dow(np.array([ts.value // 10**9]), self.tz_code[i], TIMEZONES)
        k = -1 if channel is None else cfg.channel_names.index(channel)
        o = cfg.offer_names.index(offer)
        before = self.weekday
        self.set_weekday(int(dow[0]))
        try:
            probs = {name: float(v[0]) for name, v in self.outcome_probs(i, k, hour, o).items()}
            profit = float(self.expected_profit(i, k, hour, o)[0])
        finally:
            self.set_weekday(before)
        return {**probs, "local_hour": int(hour[0]), "expected_profit": profit}

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the latent parameters and state (``.npz``) so a test can ask the world later."""
        meta = {"kind": self.kind,
                "day0": None if getattr(self, "day0", None) is None else self.day0.isoformat()}
        np.savez_compressed(path, _meta=np.array(json.dumps(meta)), **self._arrays())

    @classmethod
    def load(cls, path: str | Path, customers: pd.DataFrame, config: Config) -> "BaseWorld":
        """Load a saved world; called on :class:`BaseWorld` it picks the member class by the saved kind."""
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("_meta"))) if "_meta" in arrays else {"kind": "baseline", "day0": None}
        target = cls
        if cls is BaseWorld:
            from nextbest.sim.family import world_class

            target = world_class(meta["kind"])
        world = target._from_arrays(arrays, customers, config)
        if meta.get("day0"):
            world.set_calendar(meta["day0"])
        return world
