"""Decision time in-process: exploration and the online learner on top of scoring.

    .venv/bin/python benchmarks/decision_latency.py [--customers 5000] [--repeats 300]

A policy is trained on a small simulated history; an online learner is fed one day of feedback
for every customer. Measured, one customer per call (p50/p99 over ``--repeats`` calls):

- ``decide``: the whole ``DecisionPolicy.decide`` (rules, scoring with every model, learner,
  exploration, reasons) with Thompson sampling, 512 Monte Carlo draws, converting the customer's
  features to arrays in the call; and the same with the arrays taken from a table converted once
  (``CustomerArrays.take``), as the service does with its snapshot;
- ``explore+learn``: only what this issue adds per decision (the learner's posterior for every
  option and the exploration draw), the part the 2 ms target is about;
- the baseline in the same run: ``decide`` greedy without a learner (the offline policy).

And per decision in batches of 1,000 customers (how ``/v1/decide/batch`` and the simulator call it).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

from nextbest.decision.exploration import draw
from nextbest.decision.policy import Request
from nextbest.decision.rules import ContactHistory
from small_policy import small_policy, timed_ms as timed

log = logging.getLogger("benchmarks.decision_latency")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    small = small_policy(args.customers)
    cfg, sim, res, feats = small.config, small.sim, small.result, small.features
    policy = res.policy.with_exploration(res.policy.exploration.with_(method="thompson"))
    greedy = res.policy.with_exploration(res.policy.exploration.with_(method="greedy", control_share=0.0))
    contact = ContactHistory.from_features(feats, cfg)
    request = Request(now=sim.end)
    rng = np.random.default_rng(0)
    learner = policy.new_learner()
    day = policy.decide(feats, contact, request, explain=False, rng=rng, learner=learner)
    learner.partial_fit(day.frame["action_key"].to_numpy(), day.learner_inputs[np.arange(len(day.choice)), day.choice],
                        rng.normal(0.4, 4.0, len(day.choice)))
    one = [(feats.iloc[[i]], ContactHistory.from_features(feats.iloc[[i]], cfg)) for i in range(50)]
    X_one = [day.learner_inputs[[i]] for i in range(50)]
    allowed_one = [np.isfinite(np.r_[0.0, day.scores.value[i].ravel()])[None, :] for i in range(50)]
    i = iter(range(10**9))

    def decide_one():
        k = next(i) % 50
        policy.decide(one[k][0], one[k][1], request, rng=rng, learner=learner)

    from nextbest.decision.candidates import CustomerArrays
    arrays = CustomerArrays(feats)  # the service converts its snapshot once and takes each request's rows
    one_pos = [np.array([i]) for i in range(50)]

    def decide_one_service():
        k = next(i) % 50
        policy.decide(one[k][0], one[k][1], request, rng=rng, learner=learner,
                      arrays=arrays.take(one_pos[k], one[k][0]))

    def greedy_one():
        k = next(i) % 50
        greedy.decide(one[k][0], one[k][1], request, rng=rng)

    def explore_learn_one():
        k = next(i) % 50
        mean, sd = learner.predict(policy.action_keys, X_one[k])
        probs, _ = policy.exploration.distribution(np.where(allowed_one[k], mean, -np.inf), sd, rng)
        draw(probs, rng)

    for fn in (decide_one, decide_one_service, greedy_one, explore_learn_one):
        timed(fn, 20)  # warm up
    rows = {}
    for name, fn in (("decide (thompson + the default learner)", decide_one),
                     ("decide, snapshot arrays (as the service)", decide_one_service), ("decide greedy, no learner (baseline)", greedy_one),
                     ("explore+learn only", explore_learn_one)):
        t = timed(fn, args.repeats)
        rows[name] = {"p50_ms": np.median(t), "p99_ms": np.quantile(t, 0.99), "mean_ms": t.mean()}
    batch = feats.iloc[:1000]
    bc = ContactHistory.from_features(batch, cfg)
    t = timed(lambda: policy.decide(batch, bc, request, explain=False, rng=rng, learner=learner), 5) / 1000
    rows["decide batch of 1,000, per decision"] = {"p50_ms": np.median(t), "p99_ms": np.quantile(t, 0.99),
                                                   "mean_ms": t.mean()}
    out = pd.DataFrame(rows).T
    print(out.round(3).to_string())
    print(f"learner statistics: {learner.state.n:.0f} observations, {len(learner.state.stats)} actions "
          f"(online.learn_profit: {policy.online.learn_profit}; off, the default, the learner keeps no profit "
          f"statistics and only the response calibration learns); Thompson draws per decision: "
          f"{policy.exploration.samples}")


if __name__ == "__main__":
    main()
