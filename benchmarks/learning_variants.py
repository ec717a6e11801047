"""The served policy's learning variants over the world family, the same trained policy per world.

    .venv/bin/python benchmarks/learning_variants.py CUSTOMERS N_WORLDS VARIANTS

VARIANTS is a comma-separated list of: ``calib`` (response calibration and the realized-profit
heads), ``noprofit`` (response calibration only: the default, ``online.learn_profit: false``),
``nocalib`` (realized-profit heads only: the learner before issue 14), ``nolearn`` (exploration
and the control group, no learning). 60 days of history, 20 closed-loop days, the world's shift
on day 10. Prints each run's daily values and a table of day 0, days 7-9 and 17-19 per world and
variant, and the family mean and worst. Results: benchmarks/RESULTS.md.
"""
import copy
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

HIST, DAYS, SHIFT = 60, 20, 10
OUT = Path(__file__).parent / "out" / "learning_variants"


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
        res = run_closed_loop(p, s, DAYS, seed=5, shift=shift, learn=learn, progress=False)
        dl = res.daily.assign(world=kind, variant=v)
        out.append(dl)
        print(kind, v, "treated", dl["normalized_policy_treated"].round(2).tolist(), "frozen", dl["normalized_frozen"].round(2).tolist(), flush=True)
    return pd.concat(out)

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    from nextbest.sim.family import world_family
    CUST, variants = int(sys.argv[1]), sys.argv[3].split(",")
    kinds = world_family(int(sys.argv[2]))
    with ProcessPoolExecutor(2) as ex:
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
