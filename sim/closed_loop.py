"""Closed-loop simulation: the policy plays the simulator's customers day after day and learns.

Each simulated day:

1. engagement histories are rebuilt from every event so far (the history the policy was trained
   on plus what its own messages caused), exactly as serving would see them;
2. the **learning** policy (the served one: exploration, control group, online learner) decides
   for every customer; its messages are played in the world (``sim.simulate.respond``):
   opens, clicks, orders, unsubscribes and fatigue follow from the world's truth;
3. each decision's realized profit of the day comes back as feedback and updates the learner.

Every day the true expected profit of these decisions is compared, **on the same world state**,
with: the offline policy frozen (greedy, no learner, no control group), a uniformly random
allowed action, sending nothing, and the oracle (best action per customer by true expected
profit under the same business rules). Only the learning policy's messages are played, so the
arms differ only in their decisions of the day, not in the history behind them.

``normalized = (value - suppress) / (oracle - suppress)`` per day. The learning policy's value
is reported over everyone (its control group included: holding 5% out costs their share of the
gains by design) and over the customers outside the control group (``policy_treated``), the
like-for-like comparison with the frozen policy and the oracle.

With ``retrain`` and ``retrain_every``, every ``retrain_every`` days the loop hands the history
joined with its own played days (events and the learning policy's decisions with their exact
propensities, as ``nextbest log export`` would write them: what was known at the day's start) to
``retrain``, which returns a new policy to serve from then on, or None to keep the current one.
The simulator never trains (``sim`` does not import ``training``): the benchmark passes a function
that does (``benchmarks/learning_variants.py``). The frozen arm stays the policy the loop began with.

A :class:`Shift` changes the customers' preferences mid-run (a channel falls out of favour, an
offer stops working); the oracle sees the new world at once, the policies must learn it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nextbest.features.eventlog import EventLog
from nextbest.features.history import Population, engagement_history
from nextbest.features.localtime import local_midnight_utc
from nextbest.decision.calibration import contact_context
from nextbest.decision.objective import realized_profit
from nextbest.sim.simulate import SimulatedData, _Events, respond
from nextbest.sim.world import TIMEZONES
from nextbest.decision.online import OnlineLearner
from nextbest.decision.policy import DecisionPolicy, Request
from nextbest.decision.rules import ContactHistory
from nextbest.sim.simulation_eval import random_policy_value, true_profit

log = logging.getLogger(__name__)

ARMS = ("policy", "policy_treated", "frozen", "random", "suppress", "oracle")
VIOLATIONS = ("consent", "quiet_hours", "channel_cap", "contact_cap", "collision", "horizon")


@dataclass
class DayContext:
    """What a peer policy sees on a closed-loop day (``sim.peers`` style: decide, then learn)."""

    day: int                   # index of the closed-loop day
    history_day: int           # the same day counted from the start of the history
    day_start: pd.Timestamp    # decision time (UTC midnight of the day)
    weekday: int               # local weekday of the day (Monday = 0)
    features: pd.DataFrame     # engagement histories as of ``day_start`` (what the served policy sees)
    events: pd.DataFrame       # every event logged so far (history and the played days)
    allowed: np.ndarray        # (n, K, 24, O) the business rules of the day, consent and quiet hours
    sim: SimulatedData         # the history (customers, events, logging decisions, start, end)


def shadow_outcomes(world, rng, ch, hour, off) -> dict:
    """Draw what a decision per customer would have caused today, without changing the world.

    A peer's decisions are scored on the same world state as the other arms and it learns from
    these draws (the world follows the played policy only). Returns arrays (n,): ``sent``,
    ``opened``, ``order``, ``message_order`` (an order after the opened message), ``value``,
    ``unsubscribed``, ``profit`` (realized profit under the business objective).
    """
    cfg = world.config
    idx = np.arange(world.n)
    p = world.outcome_probs(idx, ch, hour, off)
    sent = ch >= 0
    opened = sent & (rng.random(world.n) < p["open"])
    unopened_p = p.get("order_given_unopened", world.p0)
    order_p = np.where(opened, p["order_given_open"], np.where(sent, unopened_p, world.p0))
    order = rng.random(world.n) < order_p
    unsub = opened & (rng.random(world.n) < p["unsubscribe"] / np.maximum(p["open"], 1e-12))
    value = np.where(order, world.order_value * rng.lognormal(-0.045, 0.3, world.n), 0.0)
    msg_order = order & opened
    profit = realized_profit(cfg, np.where(sent, ch, -1), off, value, msg_order & sent, unsub & sent)
    return {"sent": sent, "opened": opened, "order": order, "message_order": msg_order, "value": value,
            "unsubscribed": unsub, "profit": profit}


class RuleAudit:
    """Counts the played policy's sends that break a rule against the world's state.

    Consent (the customer's consent as of the decision: the world's current consent, less any
    unsubscribe the world already applied but whose event is dated after the decision time: no
    policy can honour an unsubscribe it has not been told of yet; ``known_consent``), quiet hours (the local send hour), the channel caps
    and the contact caps (rolling 24 hours and 7 days up to the send, history sends included),
    the collision rule (``min_hours_between`` after the previous send) and the horizon (send time
    within ``[now, now + horizon)``).
    """

    def __init__(self, cfg, sim: SimulatedData, horizon_hours: float | None = None):  # None: decision.horizon_hours
        self.cfg, self.horizon = cfg, cfg.decision.horizon_hours if horizon_hours is None else horizon_hours
        sent = sim.events[sim.events["event"] == "sent"]
        code = pd.Index(sim.customers["customer_id"].astype(str))
        self.cust = code.get_indexer(sent["customer_id"].astype(str)).astype(np.int64)
        self.chan = pd.Index(cfg.channel_names).get_indexer(sent["channel"].astype(str)).astype(np.int64)
        self.ts = (sent["ts"].astype("int64").to_numpy() // 10**9).astype(np.int64)
        self.counts = {v: 0 for v in VIOLATIONS}

    def check(self, world, now: pd.Timestamp, idx, ch, hour, send_ts, known_consent=None) -> dict:
        """Count violations of today's sends (call before they are played); returns today's counts.

        ``known_consent`` (n, K) bool: consent as the events dated before ``now`` show it (the
        customer table's consent less the unsubscribes logged so far); the world's own consent
        where not given."""
        cfg = self.cfg
        today = {v: 0 for v in VIOLATIONS}
        if len(idx):
            consent = world.consent if known_consent is None else known_consent
            today["consent"] = int((~consent[idx, ch]).sum())
            quiet = np.stack([cfg.channels[c].quiet_hours.contains(np.arange(24)) for c in cfg.channel_names])
            today["quiet_hours"] = int(quiet[ch, hour].sum())
            now_s = now.value // 10**9
            today["horizon"] = int(((send_ts < now_s) | (send_ts >= now_s + self.horizon * 3600)).sum())
            recent = self.ts >= now_s - 8 * 86400
            prev = pd.DataFrame({"c": self.cust[recent], "k": self.chan[recent], "t": self.ts[recent]})
            new = pd.DataFrame({"c": idx, "k_new": ch, "t_new": send_ts, "row": np.arange(len(idx))})
            pair = new.merge(prev, on="c", how="left")
            dt = pair["t_new"] - pair["t"]
            same = pair["k"] == pair["k_new"]
            day_, week = (dt >= 0) & (dt < 86400), (dt >= 0) & (dt < 7 * 86400)
            g = pd.DataFrame({"row": pair["row"], "cd": day_ & same, "cw": week & same, "d": day_, "w": week,
                              "close": (dt >= 0) & (dt < cfg.contact_rules.min_hours_between * 3600)})
            tot = g.groupby("row")[["cd", "cw", "d", "w", "close"]].sum().reindex(np.arange(len(idx)), fill_value=0)
            day_cap = np.array([cfg.channels[c].cap_per_day for c in cfg.channel_names])[ch]
            week_cap = np.array([cfg.channels[c].cap_per_week for c in cfg.channel_names])[ch]
            cr = cfg.contact_rules
            today["channel_cap"] = int(((tot["cd"].to_numpy() + 1 > day_cap) | (tot["cw"].to_numpy() + 1 > week_cap)).sum())
            today["contact_cap"] = int(((tot["d"].to_numpy() + 1 > cr.max_per_day)
                                        | (tot["w"].to_numpy() + 1 > cr.max_per_week)).sum())
            today["collision"] = int((tot["close"].to_numpy() > 0).sum())
            self.cust = np.concatenate([self.cust, idx])
            self.chan = np.concatenate([self.chan, ch])
            self.ts = np.concatenate([self.ts, send_ts])
        for v, c in today.items():
            self.counts[v] += c
        return today


@dataclass(frozen=True)
class Shift:
    """From ``day`` on, ``channel``'s open rates are multiplied by ``channel_factor`` and ``offer``
    no longer adds any orders."""

    day: int
    channel: str | None = "email"
    channel_factor: float = 0.3
    offer: str | None = "pct10"

    def apply(self, world) -> None:
        world.apply_shift(self.channel, self.channel_factor, self.offer)

    @classmethod
    def for_world(cls, world, day: int) -> "Shift":
        """The shift the world names as its own (every member of the family has one), on ``day``."""
        return cls(day=day, **world.default_shift())


@dataclass
class ClosedLoopResult:
    daily: pd.DataFrame        # one row per day: true profit per customer and normalized value per arm
    shift: Shift | None
    learner: OnlineLearner     # the learner's state at the end

    def final_week(self) -> pd.Series:
        """Normalized value over the last 7 days (profit summed over the days, then normalized)."""
        return normalized(self.daily.tail(7)[[f"profit_{a}" for a in ARMS]].sum())

    def recovery_days(self, level: float = 0.9, arm: str = "policy_treated") -> int | None:
        """Days after the shift until the arm's normalized value first reaches ``level`` (None: never)."""
        if self.shift is None:
            return None
        after = self.daily[self.daily["day"] >= self.shift.day]
        hit = after[after[f"normalized_{arm}"] >= level]
        return None if hit.empty else int(hit["day"].iloc[0] - self.shift.day)


def normalized(profit: pd.Series) -> pd.Series:
    s, o = profit["profit_suppress"], profit["profit_oracle"]
    return pd.Series({a: (profit[f"profit_{a}"] - s) / (o - s) for a in ARMS})


def _realized_profit(cfg, idx, ch, off, resp) -> np.ndarray:
    """Each customer's realized profit of the day (the feedback the learner gets;
    ``decision.objective.realized_profit``); ``idx``, ``ch``, ``off``: the customers messaged,
    with their channel and offer codes. An order after the opened message redeems its offer;
    organic orders do not."""
    n = len(resp.organic_value)
    channel, offer, message = np.full(n, -1), np.zeros(n, dtype=int), np.zeros(n)
    redeemed, unsub = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    channel[idx], offer[idx], message[idx] = ch, off, resp.message_value  # 0 where the message led to no order
    redeemed[idx], unsub[idx] = resp.message_order, resp.unsubscribed
    return realized_profit(cfg, channel, offer, resp.organic_value + message, redeemed, unsub, message)


def _served_decisions(cfg, ids, frame, idx, ch, off, hour, send_ts, msg, day_start, prefix) -> pd.DataFrame:
    """The day's decisions in the ``logging_decisions`` contract: a send is stamped with its send
    time and message id, a suppression with the decision time and an id of its own."""
    n = len(ids)
    channel, offer, local_hour = np.full(n, None, dtype=object), np.full(n, None, dtype=object), np.full(n, -1)
    channel[idx] = np.asarray(cfg.channel_names, dtype=object)[ch]
    offer[idx] = np.asarray(cfg.offer_names, dtype=object)[off]
    local_hour[idx] = hour
    ts = np.full(n, int(day_start.timestamp()), dtype=np.int64)
    ts[idx] = send_ts
    mid = np.char.add(prefix, np.arange(n).astype(str)).astype(object)
    mid[idx] = np.char.add("m", np.asarray(msg).astype(str))
    send = np.zeros(n, dtype=bool)
    send[idx] = True
    return pd.DataFrame({
        "customer_id": pd.array(ids, dtype="str"), "ts": pd.to_datetime(ts, unit="s", utc=True),
        "action": pd.array(np.where(send, "send", "suppress"), dtype="str"),
        "channel": pd.array(channel, dtype="str"), "local_hour": local_hour,
        "offer": pd.array(offer, dtype="str"), "propensity": frame["propensity"].to_numpy(dtype=float),
        "message_id": pd.array(mid, dtype="str")})


def run_closed_loop(policy: DecisionPolicy, sim: SimulatedData, days: int, seed: int = 0,
                    shift: Shift | None = None, learn: bool = True, progress: bool = True,
                    peers: dict | None = None,
                    retrain: Callable[[SimulatedData, np.ndarray], DecisionPolicy | None] | None = None,
                    retrain_every: int = 0, refresh_every: int = 1,
                    keep_learner: bool = False) -> ClosedLoopResult:
    """Play ``days`` days after the end of ``sim``'s history (``sim.world`` moves on; see module doc).

    ``peers``: name -> object with ``decide(ctx: DayContext) -> (channel, local_hour, offer)`` code
    arrays (n,) (channel -1 = suppress) and ``learn(ctx, channel, local_hour, offer, outcomes)``;
    each is scored like the other arms on the same world state and learns from
    :func:`shadow_outcomes` of its own decisions. The daily table also counts the played policy's
    rule violations (``violations_<rule>``, see :class:`RuleAudit`) and the peers' sends outside
    the allowed cells (``peer_violations_<name>``).

    ``retrain(data, served_ids)``: called before deciding on every ``retrain_every``-th day (0: never)
    with the history plus the played days as one :class:`SimulatedData` ending at that day's start,
    and the ``message_id`` of every decision the loop logged (the served decisions); it returns the
    policy to serve from that day (with a fresh learner: the calibration is relative to the models
    it corrected) or None. The daily table says which days swapped (``retrained``).
    ``keep_learner``: the served learner (its calibration) goes on with the new policy instead.

    ``refresh_every``: days between engagement snapshots (1: every day, as if every event were
    streamed into the features; 0: only day 0's, as a service whose data export never changes).
    Between snapshots the policies decide on the last snapshot's features with the live contact
    state and consent, which is what the service does between exports (its store holds sends,
    opens and unsubscribes as they happen).
    """
    peers = peers or {}
    audit = RuleAudit(policy.config, sim)
    peer_rng = np.random.default_rng([seed, 5])
    cfg = policy.config
    world = sim.world
    frozen = policy.with_exploration(policy.exploration.with_(method="greedy", control_share=0.0))
    learner = policy.new_learner()
    rng = np.random.default_rng([seed, 4])
    ids = world.customers["customer_id"].astype(str).to_numpy()
    cust_ids = world.customers["customer_id"].to_numpy(dtype=object)
    history_days = int((sim.end - sim.start) / pd.Timedelta(days=1))
    events = _Events()
    next_msg = 10**9  # above the history's message numbers
    idx_all = np.arange(world.n)
    rows, served = [], []
    snapshot = None  # the engagement features the policies decide on (see refresh_every)
    for d in tqdm(range(days), desc="closed loop", unit="day", disable=not progress):
        if shift is not None and d == shift.day:
            shift.apply(world)
        day_start = sim.end + pd.Timedelta(days=d)
        day_s = int(day_start.timestamp())
        world.start_day(history_days + d)
        new = events.frame(cfg, cust_ids, day_s)
        log_events = pd.concat([sim.events, new], ignore_index=True)
        swapped = False
        if retrain is not None and retrain_every > 0 and d > 0 and d % retrain_every == 0:
            logged = pd.concat(served, ignore_index=True)
            logged = logged[logged["ts"] < day_start].reset_index(drop=True)
            data = SimulatedData(sim.customers, log_events, pd.concat([sim.decisions, logged], ignore_index=True),
                                 world, sim.start, day_start)
            candidate = retrain(data, logged["message_id"].to_numpy())
            if candidate is not None:
                policy, swapped = candidate, True
                learner = learner if keep_learner else candidate.new_learner()
                log.info("closed loop day %d: serving the retrained policy", d)
        log_ = EventLog.build(world.customers, log_events, cfg)
        fresh = engagement_history(log_, ids, day_start, Population.from_log(log_))
        contact = ContactHistory.from_features(fresh, cfg)  # live, as the service's store
        if snapshot is None or (refresh_every > 0 and d % refresh_every == 0):
            snapshot = fresh
        unsub = [f"{c}_unsubscribed" for c in cfg.channel_names]  # consent is live too
        feats = fresh if snapshot is fresh else snapshot.assign(**{c: fresh[c] for c in unsub})
        request = Request(now=day_start)
        dec = policy.decide(feats, contact, request, explain=False, rng=rng, learner=learner)
        base = frozen.decide(feats, contact, request, explain=False, rng=rng)
        allowed = dec.scores.eligibility.allowed
        v = {"policy": true_profit(world, dec), "frozen": true_profit(world, base)}
        v["suppress"] = world.expected_profit(idx_all, -1, 0, 0)
        v["oracle"] = world.oracle(idx_all, allowed=allowed)["expected_profit"].to_numpy()
        v["random"] = random_policy_value(world, world.allowed(idx_all) & allowed, v["suppress"], rng)
        peer_rows = {}
        if peers:
            ctx = DayContext(d, history_days + d, day_start, world.weekday_of(history_days + d), feats,
                             log_events, world.allowed(idx_all) & allowed, sim)
            for name, peer in peers.items():
                pc, ph, po = (np.asarray(a, dtype=np.int64) for a in peer.decide(ctx))
                psend = pc >= 0
                bad = psend & ~ctx.allowed[idx_all, np.maximum(pc, 0), np.clip(ph, 0, 23), np.maximum(po, 0)]
                peer_rows[f"peer_violations_{name}"] = int(bad.sum())
                pc, ph, po = np.where(bad, -1, pc), np.where(psend & ~bad, ph, 0), np.where(psend & ~bad, po, 0)
                v[name] = world.expected_profit(idx_all, pc, ph, po)
                peer.learn(ctx, pc, ph, po, shadow_outcomes(world, peer_rng, pc, ph, po))
                peer_rows[f"sent_{name}"] = float((pc >= 0).mean())
        treated = ~dec.frame["control"].to_numpy()
        row = {"day": d, "date": day_start.date().isoformat()}
        for arm, val in v.items():
            row[f"profit_{arm}"] = float(val.mean())
        # outside the control group, scaled to the whole population (so that it normalizes like the others)
        gain = (v["policy"] - v["suppress"])[treated].sum() / max((v["oracle"] - v["suppress"])[treated].sum(), 1e-12)
        row["profit_policy_treated"] = row["profit_suppress"] + gain * (row["profit_oracle"] - row["profit_suppress"])
        # play the learning policy's decisions and learn from what comes back
        frame = dec.frame
        send = dec.choice > 0
        idx = np.flatnonzero(send)
        ch, off = np.divmod(dec.choice[idx] - 1, len(cfg.offer_names))
        hour = frame["local_hour"].to_numpy()[idx]
        send_ts = (frame["send_at"].iloc[idx].astype("int64").to_numpy() // 10**9
                   + rng.integers(0, 600, len(idx)))
        msg = np.arange(next_msg, next_msg + len(idx))
        next_msg += len(idx)
        served.append(_served_decisions(cfg, ids, frame, idx, ch, off, hour, send_ts, msg, day_start,
                                        f"d{d}-"))
        midnight = local_midnight_utc(day_s, world.tz_code, TIMEZONES)
        known = np.stack([feats[f"consent_{c}"].to_numpy(bool) & (feats[f"{c}_unsubscribed"].to_numpy() == 0)
                          for c in cfg.channel_names], axis=1)
        broken = audit.check(world, day_start, idx, ch, hour, send_ts, known_consent=known)
        resp = respond(world, rng, events, history_days + d, idx, ch, hour, off, msg, send_ts, midnight,
                       world.fatigue(idx), propensity=frame["propensity"].to_numpy()[idx])
        reward = _realized_profit(cfg, idx, ch, off, resp)
        if learn:
            learner.decay(1.0)
            learner.partial_fit(frame["action_key"].to_numpy(), dec.learner_inputs[idx_all, dec.choice], reward)
            if learner.calibration is not None and len(idx):  # opens and unsubscribes of today's messages
                z = contact_context(contact, idx, ch)
                cz = {"change_z": learner.settings.change_z, "change_forget": learner.settings.change_forget}
                cal = learner.calibration
                forgot = cal.update("open", ch, dec.scores.p_open[idx, ch, off], z, resp.opened, **cz)
                cal.update("unsubscribe", ch, dec.scores.p_unsub[idx, ch, off], z, resp.unsubscribed)
                o = resp.opened  # P(order | opened) per offer, from the opened messages
                forgot += cal.update("order", off[o], dec.scores.p_order_open[idx[o], ch[o], off[o]], z[o],
                                     resp.message_order[o], **cz)
                if forgot:
                    log.info("day %d: the calibration forgot %s (a change)", d, forgot)
        row.update(explored=float(frame["explored"].mean()), sent=float(send.mean()),
                   realized_profit=float(reward.mean()), learner_n=learner.state.n, retrained=swapped,
                   **{f"violations_{k}": c for k, c in broken.items()}, **peer_rows)
        rows.append(row)
    daily = pd.DataFrame(rows)
    for arm in (*ARMS, *peers):
        daily[f"normalized_{arm}"] = ((daily[f"profit_{arm}"] - daily["profit_suppress"])
                                      / (daily["profit_oracle"] - daily["profit_suppress"]))
    return ClosedLoopResult(daily, shift, learner)

