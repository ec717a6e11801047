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

A :class:`Shift` changes the customers' preferences mid-run (a channel falls out of favour, an
offer stops working); the oracle sees the new world at once, the policies must learn it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nextbest.features.eventlog import EventLog
from nextbest.features.history import Population, engagement_history
from nextbest.features.localtime import local_midnight_utc
from nextbest.decision.objective import channel_costs, offer_costs
from nextbest.sim.simulate import SimulatedData, _Events, respond
from nextbest.sim.world import TIMEZONES
from nextbest.decision.online import OnlineLearner
from nextbest.decision.policy import DecisionPolicy, Request
from nextbest.decision.rules import ContactHistory
from nextbest.sim.simulation_eval import random_policy_value, true_profit

log = logging.getLogger(__name__)

ARMS = ("policy", "policy_treated", "frozen", "random", "suppress", "oracle")


@dataclass(frozen=True)
class Shift:
    """From ``day`` on, ``channel``'s open rates are multiplied by ``channel_factor`` and ``offer``
    no longer adds any orders."""

    day: int
    channel: str | None = "email"
    channel_factor: float = 0.3
    offer: str | None = "pct10"

    def apply(self, world) -> None:
        cfg = world.config
        if self.channel is not None:
            world.open_base[:, cfg.channel_names.index(self.channel)] *= self.channel_factor
        if self.offer is not None:
            world.offer_lift[:, cfg.offer_names.index(self.offer)] = 0.0


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
    """Each customer's realized profit of the day (the feedback the learner gets); ``idx``, ``ch``,
    ``off``: the customers messaged, with their channel and offer codes."""
    obj = cfg.objective
    profit = obj.margin * resp.organic_value
    value = resp.message_value
    profit[idx] += (obj.margin * value - np.where(resp.message_order, offer_costs(cfg, off, value), 0.0)
                    - channel_costs(cfg)[ch] - obj.unsubscribe_cost * resp.unsubscribed)
    return profit


def run_closed_loop(policy: DecisionPolicy, sim: SimulatedData, days: int, seed: int = 0,
                    shift: Shift | None = None, learn: bool = True, progress: bool = True) -> ClosedLoopResult:
    """Play ``days`` days after the end of ``sim``'s history (``sim.world`` moves on; see module doc)."""
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
    rows = []
    for d in tqdm(range(days), desc="closed loop", unit="day", disable=not progress):
        if shift is not None and d == shift.day:
            shift.apply(world)
        day_start = sim.end + pd.Timedelta(days=d)
        day_s = int(day_start.timestamp())
        world.start_day(history_days + d)
        new = events.frame(cfg, cust_ids, day_s)
        log_ = EventLog.build(world.customers, pd.concat([sim.events, new], ignore_index=True), cfg)
        feats = engagement_history(log_, ids, day_start, Population.from_log(log_))
        contact = ContactHistory.from_features(feats, cfg)
        request = Request(now=day_start)
        dec = policy.decide(feats, contact, request, explain=False, rng=rng, learner=learner)
        base = frozen.decide(feats, contact, request, explain=False, rng=rng)
        allowed = dec.scores.eligibility.allowed
        v = {"policy": true_profit(world, dec), "frozen": true_profit(world, base)}
        v["suppress"] = world.expected_profit(idx_all, -1, 0, 0)
        v["oracle"] = world.oracle(idx_all, allowed=allowed)["expected_profit"].to_numpy()
        v["random"] = random_policy_value(world, world.allowed(idx_all) & allowed, v["suppress"], rng)
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
        midnight = local_midnight_utc(day_s, world.tz_code, TIMEZONES)
        resp = respond(world, rng, events, history_days + d, idx, ch, hour, off, msg, send_ts, midnight,
                       world.fatigue(idx), propensity=frame["propensity"].to_numpy()[idx])
        reward = _realized_profit(cfg, idx, ch, off, resp)
        if learn:
            learner.decay(1.0)
            learner.partial_fit(frame["action_key"].to_numpy(), dec.learner_inputs[idx_all, dec.choice], reward)
        row.update(explored=float(frame["explored"].mean()), sent=float(send.mean()),
                   realized_profit=float(reward.mean()), learner_n=learner.state.n)
        rows.append(row)
    daily = pd.DataFrame(rows)
    for arm in ARMS:
        daily[f"normalized_{arm}"] = ((daily[f"profit_{arm}"] - daily["profit_suppress"])
                                      / (daily["profit_oracle"] - daily["profit_suppress"]))
    return ClosedLoopResult(daily, shift, learner)

