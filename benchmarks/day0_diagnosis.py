"""Where the trained policy loses to the oracle on day 0, world by world.

    .venv/bin/python benchmarks/day0_diagnosis.py [--customers 2000] [--worlds 8]

Per world of the family (``sim.family``): 60 days of history, the policy trained with the
default config (seed 0), then every customer decided greedily at the start of the next day and
scored on the world's truth. Printed per world:

- ``norm``: the policy's normalized value (as in the closed loop, day 0);
- ``norm_best_option_at_our_hours``: what the best (channel, offer) by *true* value would reach
  at the hours the policy chose (the gap to 1 is what the send hour costs);
- ``sent`` and ``sent_oracle``: shares of customers messaged;
- ``loss_bad_sends``, ``loss_missed``, ``loss_choice``: the value lost to messages worth less than
  nothing, to customers not messaged whom the oracle messages, and to choosing another option;
- ``norm_mediated`` / ``norm_learner`` / ``norm_blend``: ``norm`` with the same trained models when
  a message's extra orders are valued each way (``training.uplift_mode``);
- ``norm_true_offer_on_our_channel`` / ``norm_true_channel_with_our_offer``: for the customers the
  policy messages, at its hours, what the true best offer on the policy's channel, or the true
  best channel with the policy's offer for it, would reach (which half of the choice loses more);
- ``norm_feature_ceiling``: what the models' inputs can tell, whatever the learning: a LightGBM
  regression of each option's *true* extra profit (noise-free labels, every allowed option at
  the policy's hours) on the same customer and candidate columns, fitted on one half of the
  customers and deciding greedily for the other (two folds); against
  ``norm_best_option_at_our_hours``, the gap is information the inputs do not carry, and against
  ``norm``, the gap is the learning from noisy, logged outcomes;
- ``corr_value``: correlation of estimated and true extra profit over every allowed option;
- ``open_at_hour`` (policy / customer's most frequent open hour / oracle): the true open rate at
  the hour each picks (email, no offer);
- ``norm_margin_0`` / ``q20`` / ``q40``: the normalized value if the policy sent its best option only
  where that option's estimated value exceeds a send margin: 0 (the greedy rule), the 20th / 40th
  percentile of the positive best values (what a learned "send only when clearly worth it" threshold could gain against the
  winner's curse; by the true values of the same options at the same hours).
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from nextbest.decision.threads import share_cores

HIST = 60


def diagnose(job) -> dict:
    import tempfile

    from nextbest.decision.policy import UPLIFT_MODES, Request
    from nextbest.decision.rules import ContactHistory
    from nextbest.features.config import load_config, merge_config, parse_config
    from nextbest.features.eventlog import EventLog
    from nextbest.features.history import Population, engagement_history
    from nextbest.sim.simulate import generate, write
    from nextbest.sim.simulation_eval import _send_time, true_profit
    from nextbest.training.train import train

    kind, customers, lgb, folds = job
    cfg = load_config()
    if lgb:  # LightGBM parameters over the config's (--lightgbm key=value)
        cfg = parse_config(merge_config(cfg.raw, {"training": {"lightgbm": lgb}}))
    sim = generate(customers, HIST, 5, cfg, progress=False, world=kind)
    with tempfile.TemporaryDirectory() as tmp:
        policy = train(write(sim, f"{tmp}/data", seed=5), cfg, seed=0).policy
    policy = policy.with_exploration(policy.exploration.with_(method="greedy", control_share=0.0))
    world = sim.world
    world.start_day(int((sim.end - sim.start) / pd.Timedelta(days=1)))
    ids = world.customers["customer_id"].astype(str).to_numpy()
    log_ = EventLog.build(world.customers, sim.events, cfg)
    feats = engagement_history(log_, ids, sim.end, Population.from_log(log_))
    dec = policy.decide(feats, ContactHistory.from_features(feats, cfg), Request(now=sim.end), explain=False)
    n, K, O = world.n, len(cfg.channel_names), len(cfg.offer_names)
    idx, s = np.arange(n), dec.scores
    sup = world.expected_profit(idx, -1, 0, 0)
    best = world.oracle(idx, allowed=s.eligibility.allowed)
    vo, vp = best["expected_profit"].to_numpy(), true_profit(world, dec)
    true_inc = np.full((n, K, O), np.nan)
    for k in range(K):
        for o in range(O):
            ok = s.hour[:, k, o] >= 0
            if ok.any():
                true_inc[ok, k, o] = world.expected_profit(idx[ok], k, s.hour[ok, k, o], o) - sup[ok]
    gap, send = (vo - sup).sum(), dec.choice > 0
    est = np.where(np.isfinite(s.value), s.value, np.nan)
    m = np.isfinite(est) & np.isfinite(true_inc)
    bad = -np.minimum(vp - sup, 0)[send].sum() / gap
    ok = world.allowed(idx) & s.eligibility.allowed
    hours = _send_time(s, feats, ok, world, cfg)["mean_true_open_rate"]
    flat_est = np.where(np.isfinite(s.value), s.value, -np.inf).reshape(n, -1)
    best_est, best_at = flat_est.max(axis=1), flat_est.argmax(axis=1)
    true_best = np.nan_to_num(true_inc, nan=0.0).reshape(n, -1)[idx, best_at]
    positive = best_est[best_est > 0]
    margin = {q: (true_best[best_est > (np.percentile(positive, q) if q else 0.0)].sum() / gap
                  if len(positive) else np.nan) for q in (0, 20, 40)}
    # where the choice loses, for the customers we message: the channel or the offer
    chosen_k = np.maximum(dec.choice - 1, 0) // O
    ti = np.nan_to_num(true_inc, nan=-np.inf)
    true_offer = np.where(send, ti[idx, chosen_k].max(axis=1), 0.0)          # our channel, the true best offer
    est_offer = np.where(np.isfinite(s.value), s.value, -np.inf).argmax(axis=2)  # (n, K) our offer per channel
    true_channel = np.where(send, ti[idx[:, None], np.arange(K)[None, :], est_offer].max(axis=1), 0.0)
    split = {"norm_true_offer_on_our_channel": true_offer.sum() / gap,
             "norm_true_channel_with_our_offer": true_channel.sum() / gap}
    ceiling = feature_ceiling(feats, log_, s.hour, true_inc, cfg, folds) / gap
    by_mode = {}
    for mode in UPLIFT_MODES:  # the same trained models, each way of valuing a message's extra orders
        other = policy.with_exploration(policy.exploration)
        other.uplift_mode = mode
        d = other.decide(feats, ContactHistory.from_features(feats, cfg), Request(now=sim.end), explain=False)
        by_mode[f"norm_{mode}"] = (true_profit(world, d) - sup).sum() / gap
    return {
        "world": str(kind), "norm": (vp - sup).sum() / gap, "norm_feature_ceiling": ceiling, **by_mode, **split,
        "norm_margin_0": margin[0], "norm_margin_q20": margin[20], "norm_margin_q40": margin[40],
        "norm_best_option_at_our_hours": np.maximum(np.nan_to_num(true_inc, nan=-1e9).reshape(n, -1).max(1), 0).sum() / gap,
        "sent": send.mean(), "sent_oracle": best["channel"].notna().mean(),
        "loss_bad_sends": bad, "loss_missed": (vo - sup)[~send].sum() / gap,
        "loss_choice": ((vo - vp)[send]).sum() / gap - bad,
        "corr_value": np.corrcoef(est[m], true_inc[m])[0, 1],
        "open_at_hour": f"{hours['policy']:.3f} / {hours['most_frequent_open_hour']:.3f} / {hours['oracle_hour']:.3f}",
    }


def feature_ceiling(feats, log_, hour, true_inc, cfg, folds: int = 2) -> float:
    """The summed true extra profit of greedy choices by a regression of the true values on the
    model inputs, cross-fitted over customer folds (see ``norm_feature_ceiling``)."""
    import lightgbm as lgb

    from nextbest.decision.candidates import candidate_frame, customer_columns

    n, K, O = true_inc.shape
    cols = customer_columns(feats, cfg, list(log_.attributes.columns))
    ii, kk, oo = np.nonzero(np.isfinite(true_inc))
    X = candidate_frame(feats.iloc[ii], np.array(cfg.channel_names)[kk], hour[ii, kk, oo],
                        np.array(cfg.offer_names)[oo], cfg, columns=cols)
    y = true_inc[ii, kk, oo]
    fold = np.random.default_rng(0).integers(folds, size=n)[ii]
    pred = np.full(len(y), np.nan)
    for f in range(folds):
        model = lgb.LGBMRegressor(n_estimators=400, learning_rate=0.05, num_leaves=31, min_child_samples=50,
                                  subsample=0.8, subsample_freq=1, colsample_bytree=0.5, verbose=-1, random_state=0)
        model.fit(X[fold != f], y[fold != f])
        pred[fold == f] = model.predict(X[fold == f])
    est = np.full((n, K * O), -np.inf)
    est[ii, kk * O + oo] = pred
    truth = np.nan_to_num(true_inc, nan=0.0).reshape(n, -1)
    pick = est.argmax(axis=1)
    return float(np.where(est.max(axis=1) > 0, truth[np.arange(n), pick], 0.0).sum())


def main() -> None:
    from nextbest.sim.family import world_family

    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--worlds", type=int, default=8)
    ap.add_argument("--random-from", type=int, default=None,
                    help="only random worlds, from this seed on (a held-out family to choose settings on, so the "
                         "standard family stays a test)")
    ap.add_argument("--lightgbm", nargs="*", default=[], metavar="KEY=VALUE",
                    help="LightGBM parameters over the config's, e.g. min_child_samples=100")
    ap.add_argument("--ceiling-folds", type=int, default=2,
                    help="customer folds of norm_feature_ceiling (k folds: fitted on (k-1)/k of the customers)")
    args = ap.parse_args()
    lgb = {k: (float(v) if "." in v else int(v)) for k, v in (kv.split("=", 1) for kv in args.lightgbm)}
    logging.basicConfig(level=logging.WARNING)
    with ProcessPoolExecutor(2, initializer=share_cores, initargs=(2,)) as ex:
        kinds = (world_family(args.worlds) if args.random_from is None
                 else [f"random:{s}" for s in range(args.random_from, args.random_from + args.worlds)])
        rows = list(ex.map(diagnose, [(k, args.customers, lgb, args.ceiling_folds) for k in kinds]))
    table = pd.DataFrame(rows).set_index("world")
    pd.set_option("display.width", 200)
    print(table.round(3).to_string())
    num = table.select_dtypes("number")
    print("\nmean\n" + num.mean().round(3).to_string() + "\n\nworst\n" + num.min().round(3).to_string())


if __name__ == "__main__":
    main()
