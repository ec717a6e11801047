"""Generate a message history from the simulated world under a randomized logging policy.

``generate(n_customers, days, seed)`` plays ``days`` decision days. Each day the logging policy
decides for every customer: suppress (with probability ``1 - send_share``), or a consented
channel (by ``channel_weights``, skipping channels at their weekly cap), an offer valid on it
(uniform; offers with eligibility rules (``when``) are never logged, since the simulator
has no request context) and a send hour outside quiet hours and inside the offer's valid hours (uniform). The
exact probability of the chosen action is logged as ``propensity`` on the ``sent`` event and
in ``logging_decisions`` (which also holds the suppress decisions, for off-policy evaluation).

Event semantics written to ``events``: every event of a message carries its channel and offer
(as ESP exports do); ``value`` is the order value before any discount; an
order that follows an opened message carries that message's ``message_id`` (it redeems the
offer), an order without one is organic (``message_id`` missing). The history stops at ``end``:
events at or after it are not written, as in a real export.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from nextbest.features.config import Config, load_config
from nextbest.features.localtime import local_midnight_utc
from nextbest.sim.base import TIMEZONES, BaseWorld
from nextbest.sim.family import make_world

log = logging.getLogger(__name__)

DEFAULT_END = pd.Timestamp("2026-10-01", tz="UTC")  # fixed so that a seed always gives the same data
EVENT_CODES = ("sent", "delivered", "bounced", "opened", "clicked", "converted", "unsubscribed")
_E = {e: i for i, e in enumerate(EVENT_CODES)}


@dataclass(frozen=True)
class LoggingPolicy:
    """The randomized policy that logged the history (its propensities are exact)."""

    send_share: float = 0.45
    channel_weights: dict = field(default_factory=lambda: {"email": 0.5, "sms": 0.2, "push": 0.3})

    def action_tables(self, config: Config):
        """Per channel: the offers allowed on it, and per (channel, offer) the allowed local hours."""
        hours = np.arange(24)
        offers, slots = {}, {}
        for k, c in enumerate(config.channel_names):
            ch = config.channels[c]
            offers[k] = [j for j, o in enumerate(config.offer_names)
                         if c in config.offers[o].channels and config.offers[o].when.always]
            for j in offers[k]:
                ok = ~ch.quiet_hours.contains(hours) & config.offers[config.offer_names[j]].valid_hours.contains(hours)
                slots[k, j] = hours[ok]
        return offers, slots


@dataclass
class SimulatedData:
    customers: pd.DataFrame
    events: pd.DataFrame
    decisions: pd.DataFrame
    world: BaseWorld
    start: pd.Timestamp
    end: pd.Timestamp


class _Events:
    """Column buffers for events (codes, not strings, until the end)."""

    def __init__(self):
        self.parts = []

    def add(self, cust, ts, event, msg, channel=None, offer=None, value=None, propensity=None):
        n = len(cust)
        if n == 0:
            return
        nan = np.full(n, np.nan)
        self.parts.append((
            np.asarray(cust, np.int64), np.asarray(ts, np.int64), np.full(n, _E[event], np.int8),
            np.asarray(msg, np.int64),
            np.full(n, -1, np.int8) if channel is None else np.asarray(channel, np.int8),
            np.full(n, -1, np.int8) if offer is None else np.asarray(offer, np.int8),
            nan if value is None else np.asarray(value, float),
            nan if propensity is None else np.asarray(propensity, float),
        ))

    def frame(self, config: Config, customer_ids: np.ndarray, end_s: int) -> pd.DataFrame:
        cols = [np.concatenate(c) for c in zip(*self.parts)] if self.parts else [np.array([])] * 8
        cust, ts, ev, msg, ch, off, value, prop = cols
        keep = ts < end_s
        order = np.argsort(ts[keep], kind="stable")
        cust, ts, ev, msg, ch, off, value, prop = (a[keep][order] for a in cols)

        def labels(codes, names):
            arr = pa.DictionaryArray.from_arrays(pa.array(codes, type=pa.int32(), mask=codes < 0),
                                                 pa.array(list(names), type=pa.string()))
            return pd.Series(pd.arrays.ArrowStringArray(arr.cast(pa.large_string()).cast(pa.string())))

        msg_ids = pc.binary_join_element_wise(
            pa.scalar("m"), pa.array(msg, mask=msg < 0).cast(pa.string()), "")
        return pd.DataFrame({
            "customer_id": labels(cust, customer_ids),
            "ts": pd.to_datetime(ts, unit="s", utc=True),
            "event": labels(ev, EVENT_CODES),
            "message_id": pd.Series(pd.arrays.ArrowStringArray(msg_ids)),
            "channel": labels(ch, config.channel_names),
            "offer": labels(off, config.offer_names),
            "value": np.where(ev == _E["converted"], np.round(value, 2), np.nan),
            "propensity": prop,
        })


@dataclass
class Responses:
    """What happened on one simulated day (arrays over the sent messages, ``m``, or customers, ``n``)."""

    opened: np.ndarray         # (m,) bool
    clicked: np.ndarray        # (m,) bool
    unsubscribed: np.ndarray   # (m,) bool
    message_order: np.ndarray  # (m,) bool: an order after the opened message (redeems its offer)
    message_value: np.ndarray  # (m,) its order value
    organic: np.ndarray        # (n,) bool: an order without an opened message
    organic_value: np.ndarray  # (n,)


def respond(world: BaseWorld, rng, events: "_Events", day: int, idx, ch, hour, off, msg, send_ts, midnight,
            fatigue, propensity=None) -> Responses:
    """Play one day: customers ``idx`` get messages (channel, local hour, offer codes) sent at
    ``send_ts`` (s); draw every response from the world's truth, record the events in ``events``,
    apply unsubscribes and count the sends in the fatigue ring. Everyone else may order organically."""
    n, m = world.n, len(idx)
    p = world.outcome_probs(idx, ch, hour, off, fatigue)
    events.add(idx, send_ts, "sent", msg, ch, off, propensity=propensity)

    def tag(sel):  # responses carry their message's channel and offer
        return ch[sel], off[sel]

    delivered = rng.random(m) < p["deliver"]
    deliver_ts = send_ts + rng.integers(1, 120, m)
    events.add(idx[delivered], deliver_ts[delivered], "delivered", msg[delivered], *tag(delivered))
    events.add(idx[~delivered], deliver_ts[~delivered], "bounced", msg[~delivered], *tag(~delivered))
    opened = delivered & (rng.random(m) < p["open"] / np.maximum(p["deliver"], 1e-12))
    wait_pref = ((world.pref_hour[idx] - hour) % 24) * 3600 + rng.normal(0, 2700, m)
    quick = rng.exponential(1200, m)
    open_ts = deliver_ts + np.maximum(np.where(rng.random(m) < 0.5, quick, wait_pref), 30).astype(np.int64)
    events.add(idx[opened], open_ts[opened], "opened", msg[opened], *tag(opened))
    clicked = opened & (rng.random(m) < p["click"] / np.maximum(p["open"], 1e-12))
    click_ts = open_ts + rng.exponential(180, m).astype(np.int64) + 5
    events.add(idx[clicked], click_ts[clicked], "clicked", msg[clicked], *tag(clicked))
    unsub = opened & (rng.random(m) < p["unsubscribe"] / np.maximum(p["open"], 1e-12))
    events.add(idx[unsub], open_ts[unsub] + rng.integers(10, 600, m)[unsub], "unsubscribed", msg[unsub],
               *tag(unsub))
    world.unsubscribe(idx[unsub], ch[unsub])
    # orders: after an opened message (attributed, redeems the offer) or organic
    msg_order = opened & (rng.random(m) < p["order_given_open"])
    t0 = np.maximum(open_ts, np.where(clicked, click_ts, open_ts))
    order_ts = t0 + np.minimum(rng.exponential(5 * 3600, m), 47 * 3600).astype(np.int64) + 60
    values = world.order_value[idx] * rng.lognormal(-0.045, 0.3, m)
    events.add(idx[msg_order], order_ts[msg_order], "converted", msg[msg_order], *tag(msg_order),
               value=values[msg_order])
    not_opened = np.ones(n, dtype=bool)
    not_opened[idx[opened]] = False
    p_organic = world.p0.copy()  # a message that was sent but not opened may still change the day's orders
    if "order_given_unopened" in p:
        p_organic[idx] = p["order_given_unopened"]
    organic = not_opened & (rng.random(n) < p_organic)
    oi = np.flatnonzero(organic)
    organic_ts = midnight[oi] + rng.integers(7 * 3600, 23 * 3600, len(oi))
    organic_value = np.zeros(n)
    organic_value[oi] = world.order_value[oi] * rng.lognormal(-0.045, 0.3, len(oi))
    events.add(oi, organic_ts, "converted", np.full(len(oi), -1), value=organic_value[oi])
    world.record_sends(day, idx)
    return Responses(opened, clicked, unsub, msg_order, np.where(msg_order, values, 0.0), organic, organic_value)


def generate(n_customers: int, days: int, seed: int, config: Config | None = None,
             end: pd.Timestamp | None = None, policy: LoggingPolicy | None = None,
             progress: bool = True, world=None) -> SimulatedData:
    """Simulate ``days`` days of history for ``n_customers`` customers ending at ``end``.

    ``world`` picks the member of the family of worlds (``sim.family.make_world``: ``"baseline"``,
    the default, a named member, ``"random:<seed>"`` or a ``WorldSpec``).
    Deterministic for a given ``(n_customers, days, seed, config, end, policy, world)``.
    """
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    config = config or load_config()
    policy = policy or LoggingPolicy()
    end = pd.Timestamp(end if end is not None else DEFAULT_END)
    end = (end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")).floor("D")
    start = end - pd.Timedelta(days=days)
    world = make_world(world, n_customers, seed, config, signup_before=start)
    world.set_calendar(start)
    rng = np.random.default_rng([seed, 2])
    n, K = world.n, len(config.channel_names)
    weights = np.array([policy.channel_weights.get(c, 1.0) for c in config.channel_names])
    caps = np.array([config.channels[c].cap_per_week for c in config.channel_names])
    offers_of, slots = policy.action_tables(config)
    chan_ring = np.zeros((n, 7, K), dtype=np.int64)
    events, decisions = _Events(), []
    next_msg = 0
    start_s, end_s = int(start.timestamp()), int(end.timestamp())
    all_idx = np.arange(n)

    for day in tqdm(range(days), desc="simulating days", disable=not progress, unit="day"):
        day_s = start_s + day * 86400
        world.start_day(day)
        chan_ring[:, day % 7, :] = 0
        midnight = local_midnight_utc(day_s, world.tz_code, TIMEZONES)
        fatigue = world.fatigue(all_idx)
        eligible = world.consent & (chan_ring.sum(axis=1) < caps[None, :])
        w = eligible * weights[None, :]
        wsum = w.sum(axis=1)
        send = (rng.random(n) < policy.send_share) & (wsum > 0)
        p_send = np.where(wsum > 0, policy.send_share, 0.0)
        # channel
        cum = np.cumsum(w, axis=1) / np.where(wsum > 0, wsum, 1)[:, None]
        ch = (rng.random(n)[:, None] > cum).sum(axis=1).clip(0, K - 1)
        prop = np.where(send, p_send * w[all_idx, ch] / np.where(wsum > 0, wsum, 1), 1 - p_send)
        off = np.zeros(n, dtype=np.int64)
        hour = np.full(n, -1, dtype=np.int64)
        u_off, u_hour = rng.random(n), rng.random(n)
        for k in range(K):
            sel = send & (ch == k)
            opts = np.array(offers_of[k])
            off[sel] = opts[(u_off[sel] * len(opts)).astype(int)]
            prop[sel] /= len(opts)
            for j in opts:
                s2 = sel & (off == j)
                hs = slots[k, j]
                hour[s2] = hs[(u_hour[s2] * len(hs)).astype(int)]
                prop[s2] /= len(hs)

        idx = np.flatnonzero(send)
        m = len(idx)
        msg = np.arange(next_msg, next_msg + m)
        next_msg += m
        send_ts = midnight[idx] + hour[idx] * 3600 + rng.integers(0, 3600, m)
        decisions.append(pd.DataFrame({
            "customer": all_idx, "day": day, "action": np.where(send, "send", "suppress"),
            "channel": np.where(send, ch, -1), "local_hour": hour, "offer": np.where(send, off, -1),
            "propensity": prop, "message": np.full(n, -1, dtype=np.int64),
            "ts": midnight + 8 * 3600,
        }))
        decisions[-1].loc[idx, "message"] = msg
        decisions[-1].loc[idx, "ts"] = send_ts
        respond(world, rng, events, day, idx, ch[idx], hour[idx], off[idx], msg, send_ts, midnight, fatigue[idx],
                propensity=prop[idx])
        np.add.at(chan_ring[:, day % 7, :], (idx, ch[idx]), 1)

    cust_ids = world.customers["customer_id"].to_numpy(dtype=object)
    ev = events.frame(config, cust_ids, end_s)
    dec = pd.concat(decisions, ignore_index=True)
    dec = pd.DataFrame({
        "customer_id": pd.array(cust_ids[dec["customer"].to_numpy()], dtype="str"),
        "ts": pd.to_datetime(dec["ts"].to_numpy(), unit="s", utc=True),
        "action": pd.array(dec["action"].to_numpy(), dtype="str"),
        "channel": pd.array(np.where(dec["channel"] >= 0, np.array(config.channel_names, dtype=object)[dec["channel"].clip(0)], None), dtype="str"),
        "local_hour": dec["local_hour"].to_numpy(),
        "offer": pd.array(np.where(dec["offer"] >= 0, np.array(config.offer_names, dtype=object)[dec["offer"].clip(0)], None), dtype="str"),
        "propensity": dec["propensity"].to_numpy(),
        "message_id": pd.array(np.where(dec["message"] >= 0, "m" + dec["message"].astype(str), None), dtype="str"),
    })
    log.info("simulated %d customers, %d days: %d events, %d messages", n, days, len(ev), next_msg)
    return SimulatedData(world.customers, ev, dec, world, start, end)


def write(data: SimulatedData, out: str | Path, fmt: str = "parquet", seed: int | None = None) -> Path:
    """Write ``customers``, ``events``, ``logging_decisions`` and the world's truth under ``out``."""
    from nextbest.features.io import write_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(data.customers, out, "customers", fmt)
    write_table(data.events, out, "events", fmt)
    write_table(data.decisions, out, "logging_decisions", fmt)
    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    data.world.save(truth / "world.npz")
    (truth / "meta.json").write_text(json.dumps({
        "n_customers": data.world.n, "seed": seed, "start": data.start.isoformat(),
        "end": data.end.isoformat(), "world": getattr(getattr(data.world, "spec", None), "name", data.world.kind),
        "note": "latent parameters of the simulated world; not model input",
    }, indent=2))
    return out


def simulate_if_missing(out: str | Path, n_customers: int, days: int, seed: int, config: Config | None = None) -> bool:
    """Write a simulated data directory at ``out`` unless it already holds a ``customers`` table.

    What the notebooks call so that they run on a fresh clone; returns whether it simulated.
    """
    from nextbest.features.io import has_table

    if has_table(out, "customers"):
        return False
    write(generate(n_customers, days, seed=seed, config=config), out, seed=seed)
    log.info("simulated %d customers over %d days into %s", n_customers, days, out)
    return True
