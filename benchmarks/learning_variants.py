"""The served policy's learning variants over the world family, the same trained policy per world.

    .venv/bin/python benchmarks/learning_variants.py CUSTOMERS N_WORLDS VARIANTS

VARIANTS is a comma-separated list of: ``calib`` (response calibration and the realized-profit
heads), ``noprofit`` (response calibration only: the default, ``online.learn_profit: false``),
``nocalib`` (realized-profit heads only: the learner before issue 14), ``nolearn`` (exploration
and the control group, no learning), ``retrain`` (the default learning, plus ``nextbest
retrain``'s loop every RETRAIN_EVERY days: a candidate trained on the history joined with the
loop's own log, served only if the paired doubly robust gain over the serving policy on the
served decisions has its 95% lower bound above ``retrain.min_gain``) and ``retrain_always`` (the
same candidates served without the gate: what retraining alone is worth), ``retrain_recent``
(``retrain_always`` with the candidates' time split validating on the last 2 days instead of
``training.validation_days``, so that they train on the played days) and ``retrain_keep``
(``retrain_always`` with the served learner, its calibration included, going on with each
candidate instead of a fresh one). 60 days of history, 20 closed-loop days, the world's shift
on day 10. Prints each run's daily values and a table of day 0, days 7-9 and 17-19 per world and
variant, and the family mean and worst. Results: benchmarks/RESULTS.md.
"""
import copy
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from nextbest.decision.threads import share_cores

HIST, DAYS, SHIFT = 60, 20, 10
RETRAIN_EVERY = 4  # twice before the shift, twice after; fixed before the first run, never tuned
OUT = Path(__file__).parent / "out" / "learning_variants"


def retrainer(cfg, champion, workdir: Path, gate: bool, seed: int = 5, validation_days: int | None = None):
    """``run_closed_loop``'s retrain hook: train a candidate on the loop's data so far and judge it
    like ``nextbest retrain`` does (paired DR against the serving policy, on the served decisions)."""
    from nextbest.sim.simulate import write
    from nextbest.training.offpolicy import logged_rounds
    from nextbest.training.retrain import paired_evaluation, paired_gate, served_days
    from nextbest.training.settings import TrainingSettings
    from nextbest.training.train import train
    serving = [champion]

    def hook(data, served_ids):
        d = write(data, workdir / data.end.strftime("%Y%m%d"), seed=seed)
        settings = TrainingSettings.from_config(cfg)
        if validation_days is not None:
            settings = dataclasses.replace(settings, validation_days=validation_days)
        candidate = train(d, cfg, settings, seed=0).policy
        days = served_days(d, served_ids, cfg.retrain.eval_days, cfg.offpolicy.reward_window_hours)
        if days == 0:
            return None
        rounds = logged_rounds(d, cfg, days=days, max_rounds=cfg.retrain.max_rounds, seed=seed,
                               message_ids=set(served_ids))
        ev = paired_evaluation(rounds, candidate, serving[0], n_boot=cfg.retrain.n_boot, seed=seed)
        ok, reason = paired_gate(ev.gate(cfg.retrain.gate), cfg.retrain.min_gain)
        print(workdir.name, data.end.date(), reason, f"(ESS candidate {ev.ess_candidate:.0f}, champion "
              f"{ev.ess_champion:.0f} of {ev.rounds} rounds; agreement {ev.agreement:.2f}); paired SNIPS "
              f"{ev.snips.difference:+.4f} [{ev.snips.ci_low:+.4f}, {ev.snips.ci_high:+.4f}]", flush=True)
        if ok or not gate:
            serving[0] = candidate
            return candidate
        return None
    return hook


def run(job):
    """Simulate and train one world, then play each variant on a copy of it; the daily tables."""
    kind, CUST, VARIANTS = job
    from nextbest.features.config import load_config
    from nextbest.sim.closed_loop import Shift, run_closed_loop
    from nextbest.sim.simulate import generate, write
    from nextbest.training.train import train
    from nextbest.decision.online import OnlineLearner
    cfg = load_config()
    sim = generate(CUST, HIST, 5, cfg, progress=False, world=kind)
    d = write(sim, OUT / f"{kind.replace(':', '_')}_{CUST}", seed=5)
    pol = train(d, cfg, seed=0).policy
    out = []
    for v in VARIANTS:
        p = copy.copy(pol)
        if v == "nocalib":
            p.new_learner = lambda p=p: OnlineLearner(dataclasses.replace(p.online, learn_profit=True))
        elif v == "calib":
            p.online = dataclasses.replace(p.online, learn_profit=True)
        elif v == "noprofit":
            p.online = dataclasses.replace(p.online, learn_profit=False)
        s = copy.deepcopy(sim)
        shift = Shift.for_world(s.world, SHIFT)
        learn = v != "nolearn"
        hook = (retrainer(cfg, p, OUT / f"{kind.replace(':', '_')}_{CUST}_{v}", gate=v == "retrain",
                          validation_days=2 if v == "retrain_recent" else None)
                if v.startswith("retrain") else None)
        res = run_closed_loop(p, s, DAYS, seed=5, shift=shift, learn=learn, progress=False,
                              retrain=hook, retrain_every=RETRAIN_EVERY if hook else 0,
                              keep_learner=v == "retrain_keep")
        dl = res.daily.assign(world=kind, variant=v)
        out.append(dl)
        print(kind, v, "retrained on days", dl.loc[dl["retrained"], "day"].tolist(), "treated", dl["normalized_policy_treated"].round(2).tolist(), "frozen", dl["normalized_frozen"].round(2).tolist(), flush=True)
    return pd.concat(out)

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    from nextbest.sim.family import world_family
    CUST, variants = int(sys.argv[1]), sys.argv[3].split(",")
    kinds = world_family(int(sys.argv[2]))
    with ProcessPoolExecutor(2, initializer=share_cores, initargs=(2,)) as ex:
        frames = list(ex.map(run, [(k, CUST, variants) for k in kinds]))
    df = pd.concat(frames)
    df.to_csv(OUT / f"daily_{CUST}.csv", index=False)
    g = df.groupby(["variant", "world"])
    summ = pd.DataFrame({"day0": g.apply(lambda x: x["normalized_policy_treated"].iloc[0]),
                         "d7_9": g.apply(lambda x: x["normalized_policy_treated"].iloc[7:10].mean()),
                         "d17_19": g.apply(lambda x: x["normalized_policy_treated"].iloc[17:20].mean()),
                         "frozen17_19": g.apply(lambda x: x["normalized_frozen"].iloc[17:20].mean())})
    print(summ.round(3).to_string())
    print(summ.groupby("variant").agg(["mean", "min"]).round(3).to_string())
