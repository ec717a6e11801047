"""Off-policy evaluation on the simulator, where the truth is known.

    .venv/bin/python benchmarks/ope_simulator.py [--customers 50000] [--seeds 50]

One day of decisions for every customer (50,000 logged decisions) of a trained nextbest policy:

- the **logging** policy is the served one exploring with a softmax (temperature 0.1 on expected
  profit) and its exact propensities;
- the **candidate** is a different policy served the same way: the same models valuing messages
  with the ``blend`` uplift mode (its best option differs from the logger's for about half of
  the customers). A greedy candidate against a softmax or epsilon-greedy logger is far harder
  to evaluate (effective sample size below 10% of the rounds on this data: the weights of the
  rounds where they disagree are 1 / a small propensity), and the printout would show it;
- rewards are drawn from the world's true response probabilities (orders, offer redemptions,
  unsubscribes; order values with their noise) and valued with the business objective.

The candidate's true value is the mean over customers of its action's true expected profit.
For each of ``--seeds`` seeds the logged actions and rewards are redrawn and IPS, SNIPS and DR
(cross-fitted LightGBM reward model on the options' scores) estimate the candidate's value with
95% bootstrap intervals. Printed: the truth, mean relative error, share of seeds within 10%,
interval coverage, and the same for the candidate's extra profit over sending nothing.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nextbest.features.config import load_config
from nextbest.features.history import engagement_history
from nextbest.sim.simulate import generate, write
from nextbest.training.ope import CrossFitRewardModel, estimate_reduced
from nextbest.decision.policy import Request
from nextbest.decision.rules import ContactHistory
from nextbest.training.train import train

log = logging.getLogger("benchmarks.ope_simulator")
OUT = Path(__file__).parent / "out" / "ope_simulator"


def option_truth(world, scores, cfg):
    """Per (customer, option): true P(order), P(redeem), P(unsubscribe), expected profit; (n, A) each."""
    n, K, O = scores.value.shape
    idx = np.arange(n)
    A = 1 + K * O
    out = {k: np.zeros((n, A)) for k in ("order", "redeem", "unsubscribe", "profit", "offer_cost_rate",
                                          "channel_cost")}
    p0 = world.outcome_probs(idx, -1, 0, 0)
    out["order"][:, 0] = p0["order"]
    out["profit"][:, 0] = world.expected_profit(idx, -1, 0, 0)
    for k in range(K):
        for j in range(O):
            a = 1 + k * O + j
            ok = np.isfinite(scores.value[:, k, j])
            if not ok.any():
                continue
            h = scores.hour[ok, k, j]
            p = world.outcome_probs(idx[ok], k, h, j)
            out["order"][ok, a], out["redeem"][ok, a], out["unsubscribe"][ok, a] = p["order"], p["redeem"], p["unsubscribe"]
            out["profit"][ok, a] = world.expected_profit(idx[ok], k, h, j)
            out["channel_cost"][ok, a] = cfg.channels[cfg.channel_names[k]].cost
            offer = cfg.offers[cfg.offer_names[j]]
            out["offer_cost_rate"][ok, a] = offer.cost(np.ones(ok.sum())) if offer.kind == "percent" else 0.0
            out.setdefault("offer_fixed", np.zeros((n, A)))[ok, a] = offer.cost(np.zeros(ok.sum()))
    out.setdefault("offer_fixed", np.zeros((n, A)))
    return out


def draw_rewards(truth, action, order_value, cfg, rng) -> np.ndarray:
    """Realized profit of each logged action, drawn from the world's probabilities."""
    n = len(action)
    rows = np.arange(n)
    p_order, p_redeem = truth["order"][rows, action], truth["redeem"][rows, action]
    unsub = rng.random(n) < truth["unsubscribe"][rows, action]
    u = rng.random(n)
    redeem = u < p_redeem
    order = u < p_order                               # redeeming orders are a subset of all orders
    value = order_value * rng.lognormal(-0.045, 0.3, n)
    cost = truth["offer_cost_rate"][rows, action] * value + truth["offer_fixed"][rows, action]
    return (cfg.objective.margin * value * order - cost * redeem - truth["channel_cost"][rows, action]
            - cfg.objective.unsubscribe_cost * unsub)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=50000)
    ap.add_argument("--history-days", type=int, default=45)
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--n-boot", type=int, default=500)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    cfg = load_config()
    sim = generate(args.customers, args.history_days, 21, cfg, progress=False)
    trained = train(write(sim, OUT / f"data_{args.customers}x{args.history_days}", seed=21), cfg, seed=0)
    world, policy = sim.world, trained.policy
    ids = world.customers["customer_id"].astype(str).to_numpy()
    feats = engagement_history(trained.log, ids, sim.end, trained.population)
    contact = ContactHistory.from_features(feats, cfg)
    request = Request(now=sim.end)
    served = policy.exploration.with_(method="softmax", temperature=args.temperature, budget=1.0, control_share=0.0)
    logging_policy = policy.with_exploration(served)
    logged = logging_policy.decide(feats, contact, request, explain=False, rng=np.random.default_rng(0))
    pi0 = logged.action_dist
    cand_policy = policy.with_exploration(served)
    cand_policy.uplift_mode = "blend"
    cand = cand_policy.decide(feats, contact, request, explain=False, rng=np.random.default_rng(0))
    pi_e = cand.action_dist
    s = logged.scores
    assert (s.hour == cand.scores.hour).all(), "both policies must send at the same hour per option"
    truth = option_truth(world, s, cfg)
    n, A = pi0.shape
    v_true = float((pi_e * truth["profit"]).sum(axis=1).mean())
    v_suppress = float(truth["profit"][:, 0].mean())
    disagree = float((pi_e.argmax(axis=1) != pi0.argmax(axis=1)).mean())
    log.info("candidate true value %.4f per customer (suppress %.4f); disagrees with the logger for %.1f%%",
             v_true, v_suppress, 100 * disagree)
    # reward-model inputs per (customer, option): the option's scores and the customer's baseline
    X_opt = logged.learner_inputs                                   # (n, A, 6)
    def frame(rows, action):
        x = X_opt[rows, action]
        return pd.DataFrame({"baseline": x[:, 1], "value": x[:, 3], "p_open": x[:, 4], "revenue": x[:, 5],
                             "action": pd.Categorical(action, categories=range(A))})
    rows_all = np.arange(n)
    X_eval = pd.concat([frame(rows_all, np.full(n, a)) for a in range(A)], ignore_index=True)
    order_value = world.order_value
    results = []
    cum = pi0.cumsum(axis=1)
    for seed in tqdm(range(args.seeds), desc="seeds"):
        rng = np.random.default_rng(1000 + seed)
        action = (rng.random(n)[:, None] > cum).sum(axis=1).clip(0, A - 1)
        reward = draw_rewards(truth, action, order_value, cfg, rng)
        prop = pi0[rows_all, action]
        q_logged, q = CrossFitRewardModel(n_folds=2, random_state=seed).fit_predict(
            frame(rows_all, action), reward, X_eval, A)
        res = estimate_reduced(reward, prop, pi_e[rows_all, action], (pi_e * q).sum(axis=1), q_logged,
                               n_boot=args.n_boot, seed=seed)
        for e in res.estimates.values():
            results.append({"seed": seed, "estimator": e.estimator, "estimate": e.value, "ci_low": e.ci_low,
                            "ci_high": e.ci_high, "ess": res.diagnostics.ess})
    r = pd.DataFrame(results)
    r["truth"] = v_true
    r["rel_error"] = (r["estimate"] - v_true).abs() / abs(v_true)
    r["covered"] = (r["ci_low"] <= v_true) & (v_true <= r["ci_high"])
    r["extra_rel_error"] = (r["estimate"] - v_true).abs() / abs(v_true - v_suppress)
    r.to_csv(OUT / "seeds.csv", index=False)
    summary = r.groupby("estimator").agg(mean_estimate=("estimate", "mean"), mean_rel_error=("rel_error", "mean"),
                                         max_rel_error=("rel_error", "max"),
                                         within_10pct=("rel_error", lambda x: (x <= 0.10).mean()),
                                         ci_coverage=("covered", "mean"), mean_ci_width=("ci_high", "mean"),
                                         extra_rel_error=("extra_rel_error", "mean"), ess=("ess", "mean"))
    summary["mean_ci_width"] = summary["mean_ci_width"] - r.groupby("estimator")["ci_low"].mean()
    print(f"\n{n} logged decisions, {args.seeds} seeds; logging: softmax {args.temperature} (mediated); candidate: "
          f"softmax {args.temperature}, blend uplift mode (best option differs from the logger's for {disagree:.1%})")
    print(f"candidate's true value {v_true:.4f} per customer; suppress {v_suppress:.4f}; "
          f"extra over suppress {v_true - v_suppress:.4f}")
    print(summary.round(4).to_string())


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    log.info("done in %.0f s", time.perf_counter() - t)
