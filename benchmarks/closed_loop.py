"""Closed-loop benchmark: the served policy (exploration + online learner) plays the simulator for
N days; its value per day against the offline policy frozen, random, nothing and the oracle; then
the same with a preference shift mid-run.

    .venv/bin/python benchmarks/closed_loop.py [--customers 20000] [--history-days 60] [--days 30]

Prints the daily table and the figures the targets name; writes a plot and CSVs under
benchmarks/out/closed_loop/. See training/closed_loop.py for what is measured and how.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nextbest.features.config import load_config
from nextbest.sim.simulate import generate, write
from nextbest.sim.closed_loop import Shift, run_closed_loop
from nextbest.training.train import train

log = logging.getLogger("benchmarks.closed_loop")
OUT = Path(__file__).parent / "out" / "closed_loop"


def plot(results: dict, path: Path) -> None:
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    for i, (name, res) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        d = res.daily
        for arm, style in (("policy_treated", "-"), ("policy", ":"), ("frozen", "--"), ("random", "-.")):
            ax.plot(d["day"], d[f"normalized_{arm}"], style, label=arm)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(0.9, color="grey", lw=0.5, ls=":")
        if res.shift is not None:
            ax.axvline(res.shift.day, color="red", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("day")
        ax.set_ylabel("share of the oracle's extra profit")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20000)
    ap.add_argument("--history-days", type=int, default=60)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--shift-day", type=int, default=15)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    cfg = load_config()
    t0 = time.perf_counter()
    sim = generate(args.customers, args.history_days, args.seed, cfg, progress=False)
    data_dir = write(sim, OUT / f"data_{args.customers}x{args.history_days}_s{args.seed}", seed=args.seed)
    trained = train(data_dir, cfg, seed=0)
    log.info("history simulated and policy trained in %.0f s", time.perf_counter() - t0)
    results = {}
    for name, shift in (("stable", None), ("shift", Shift(day=args.shift_day))):
        t = time.perf_counter()
        res = run_closed_loop(trained.policy, copy.deepcopy(sim), args.days, seed=args.seed, shift=shift)
        results[name] = res
        res.daily.to_csv(OUT / f"daily_{name}.csv", index=False)
        log.info("%s run: %d days in %.0f s", name, args.days, time.perf_counter() - t)
    plot(results, OUT / "closed_loop.png")
    cols = ["day", "explored", "sent"] + [f"normalized_{a}" for a in ("policy", "policy_treated", "frozen", "random")]
    for name, res in results.items():
        print(f"\n== {name} ==")
        print(res.daily[cols].round(3).to_string(index=False))
        print("final week (normalized, profit summed over the last 7 days):")
        print(res.final_week().round(3).to_string())
    shift = results["shift"]
    d = shift.daily
    pre = d[d["day"] < shift.shift.day].tail(7)
    pre_level = ((pre["profit_policy_treated"] - pre["profit_suppress"]).sum()
                 / (pre["profit_oracle"] - pre["profit_suppress"]).sum())
    print(f"\nshift on day {shift.shift.day}: {shift.shift}")
    print(f"days to reach 0.90 of the new oracle: {shift.recovery_days(0.9)}")
    print(f"days to get back to 90% of the pre-shift level ({pre_level:.3f}): "
          f"{shift.recovery_days(0.9 * pre_level)}")
    print(f"plot: {OUT / 'closed_loop.png'}")


if __name__ == "__main__":
    main()
