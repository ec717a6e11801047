"""Policy value on the simulator's ground truth (only for simulated data, which ships its ``truth/``).

On a fresh day right after the history ends, every customer gets a decision from each policy;
the world's true expected profit of each decision is summed. Policies compared:

- ``policy``: the trained policy.
- ``suppress``: contact no one (the profit customers bring anyway).
- ``best_single_channel``: everyone who may get it gets the single best channel at the single
  best local hour with no offer (the best of all such blanket sends, chosen on the truth).
- ``random``: a uniformly random allowed action, "no message" included.
- ``oracle``: the best action per customer by true expected profit, under the same business
  rules as the policy (consent, quiet hours, caps, offers) so that both play the same game.

``normalized = (value - suppress) / (oracle - suppress)``: the share of the achievable extra
profit a policy captures; profit the customers would bring anyway does not count.

The send-time comparison takes every allowed (customer, channel) pair and compares the true
open probability at the policy's hour with the hour of the rule vendors use (the customer's most
frequent past open hour if it is allowed, else the population's best allowed hour for the channel).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.eventlog import EventLog
from nextbest.features.history import Population, engagement_history
from nextbest.sim.base import BaseWorld as World
from nextbest.decision.policy import DecisionPolicy, Request
from nextbest.decision.rules import ContactHistory

log = logging.getLogger(__name__)


@dataclass
class SimulationReport:
    values: pd.DataFrame       # policy -> total, per_1000, normalized
    send_time: pd.DataFrame    # method -> mean true open probability
    decisions: pd.DataFrame    # the trained policy's decisions with their true profit


@dataclass
class Truth:
    world: World
    start: pd.Timestamp   # first simulated day
    end: pd.Timestamp     # the fresh day (the history ends here)


def load_truth(data_dir: str | Path, customers: pd.DataFrame, config) -> Truth | None:
    """The simulator's world saved beside the data, or None for real data."""
    truth = Path(data_dir) / "truth"
    if not (truth / "world.npz").exists():
        return None
    meta = json.loads((truth / "meta.json").read_text())
    world = World.load(truth / "world.npz", customers, config)  # the member class the file names
    world.set_calendar(meta["start"])
    return Truth(world, pd.Timestamp(meta["start"]), pd.Timestamp(meta["end"]))


def evaluate_on_world(policy: DecisionPolicy, truth: Truth, log_: EventLog, population: Population,
                      seed: int = 0) -> SimulationReport:
    """Decide for every customer at the start of the day after the history; score on the truth.

    The policy is evaluated greedy and without its control group (what it believes is best for
    everyone); exploration and the control group are costs measured by the closed-loop benchmark.
    """
    policy = policy.with_exploration(policy.exploration.with_(method="greedy", control_share=0.0))
    cfg = policy.config
    world, day_start = truth.world, truth.end
    K, O = len(cfg.channel_names), len(cfg.offer_names)
    ids = world.customers["customer_id"].astype(str).to_numpy()
    world.start_day(int((truth.end - truth.start) / pd.Timedelta(days=1)))
    feats = engagement_history(log_, ids, day_start, population)
    contact = ContactHistory.from_features(feats, cfg)
    dec = policy.decide(feats, contact, Request(now=day_start), explain=False)
    allowed = dec.scores.eligibility.allowed  # (n, K, 24, O): the business rules of this day
    idx = np.arange(world.n)
    v_policy = true_profit(world, dec)
    v_suppress = world.expected_profit(idx, -1, 0, 0)
    ok = world.allowed(idx) & allowed
    oracle = world.oracle(idx, allowed=allowed)
    none = cfg.offer_names.index("none")
    best_single, best_label = v_suppress.sum(), "nobody"
    for k, c in enumerate(cfg.channel_names):
        for h in range(24):
            who = ok[:, k, h, none]
            if not who.any():
                continue
            v = v_suppress.copy()
            v[who] = world.expected_profit(idx[who], k, h, none)
            if v.sum() > best_single:
                best_single, best_label = v.sum(), f"{c} at {h:02d}:00, no offer"
    v_random = random_policy_value(world, ok, v_suppress, np.random.default_rng(seed))
    totals = {"policy": v_policy.sum(), "suppress": v_suppress.sum(),
              "best_single_channel": best_single, "random": v_random.sum(),
              "oracle": oracle["expected_profit"].sum()}
    s, o = totals["suppress"], totals["oracle"]
    values = pd.DataFrame({
        "total": totals, "per_1000": {k: 1000 * v / world.n for k, v in totals.items()},
        "extra_per_1000": {k: 1000 * (v - s) / world.n for k, v in totals.items()},
        "normalized": {k: (v - s) / (o - s) if o > s else np.nan for k, v in totals.items()},
    })
    values.attrs["best_single_channel"] = best_label
    send_time = _send_time(dec.scores, feats, ok, world, cfg)
    frame = dec.frame.assign(true_profit=v_policy, true_suppress_profit=v_suppress,
                             oracle_profit=oracle["expected_profit"].to_numpy())
    log.info("policy value on the simulator: normalized %.3f (best single channel %.3f, random %.3f)",
             values.loc["policy", "normalized"], values.loc["best_single_channel", "normalized"],
             values.loc["random", "normalized"])
    return SimulationReport(values, send_time, frame)


def true_profit(world: World, decisions) -> np.ndarray:
    """True expected profit of each customer's decision (``decision.policy.Decisions`` for every
    customer of ``world``, in its order), shape (n,)."""
    O = len(world.config.offer_names)
    send = decisions.choice > 0
    k, j = np.divmod(np.maximum(decisions.choice - 1, 0), O)
    hour = np.where(send, decisions.frame["local_hour"].to_numpy(), 0)
    return world.expected_profit(np.arange(world.n), np.where(send, k, -1), hour, j)


def random_policy_value(world: World, ok: np.ndarray, v_suppress: np.ndarray, rng) -> np.ndarray:
    """True expected profit per customer of a uniformly random allowed action ("no message" included);
    ``ok`` (n, K, 24, O) are the allowed cells."""
    n, K, _, O = ok.shape
    flat = ok.reshape(n, -1)
    pick = (rng.random(n) * (flat.sum(axis=1) + 1)).astype(int)  # 0 = no message
    out = v_suppress.copy()
    has = pick > 0
    cell = (np.cumsum(flat[has], axis=1) < pick[has, None]).sum(axis=1)  # index of the pick-th allowed cell
    kk, hh, oo = np.unravel_index(cell, (K, 24, O))
    out[has] = world.expected_profit(np.arange(n)[has], kk, hh, oo)
    return out


def _send_time(scores, feats, ok, world: World, cfg) -> pd.DataFrame:
    none = cfg.offer_names.index("none")
    top = feats["top_open_hour"].to_numpy(dtype=float)
    share = feats[[f"open_hour_share_{h:02d}" for h in range(24)]].to_numpy().mean(axis=0)
    rows = {"policy": [], "most_frequent_open_hour": [], "oracle_hour": []}
    for k in range(len(cfg.channel_names)):
        allowed_h = ok[:, k, :, none]
        who = np.flatnonzero(allowed_h.any(axis=1) & (scores.hour[:, k, none] >= 0))
        if len(who) == 0:
            continue
        pop_best = int(np.argmax(np.where(allowed_h[who].any(axis=0), share, -1)))
        t = np.nan_to_num(top[who], nan=-1).astype(int)
        rule = np.where((t >= 0) & allowed_h[who, np.maximum(t, 0)], t, pop_best)
        rule = np.where(allowed_h[who, rule], rule, allowed_h[who].argmax(axis=1))
        truth = np.stack([world.outcome_probs(who, k, h, none)["open"] for h in range(24)], axis=1)
        truth = np.where(allowed_h[who], truth, -1)
        rows["policy"].append(truth[np.arange(len(who)), scores.hour[who, k, none]])
        rows["most_frequent_open_hour"].append(truth[np.arange(len(who)), rule])
        rows["oracle_hour"].append(truth.max(axis=1))
    return pd.DataFrame({"mean_true_open_rate": {k: float(np.concatenate(v).mean()) for k, v in rows.items()},
                         "pairs": {k: int(sum(len(x) for x in v)) for k, v in rows.items()}})
