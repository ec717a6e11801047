"""Closed-loop benchmark over a family of worlds (issue 14).

For each world of ``sim.family.world_family`` (the baseline, the members with fresh mechanisms,
then randomized draws): simulate a history, train the policy with the default config (seed 0, no
per-world tuning), then play ``--days`` days in closed loop with the world's own preference shift
on ``--shift-day``. Arms per day, all on the same world state: the served policy learning online
(``policy_treated``: control group left out), the offline policy frozen, random, suppress, the
oracle, and two peers (``benchmarks/peers.py``): a plain LightGBM conversion model retrained daily
and Vowpal Wabbit ``cb_explore_adf``.

    nice -n 10 .venv/bin/python benchmarks/closed_loop.py [--worlds 8] [--customers 5000]
        [--history-days 60] [--days 20] [--shift-day 10] [--quick] [--jobs 1] [--no-vw]

Prints per world and for the family: day 0, days 7-9, days 17-19, the worst drop below day 0
before the shift, rule violations, and MET/MISSED per target; writes CSVs and a plot under
benchmarks/out/closed_loop/.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nextbest.decision.threads import share_cores

sys.path.insert(0, str(Path(__file__).parent))

log = logging.getLogger("benchmarks.closed_loop")
OUT = Path(__file__).parent / "out" / "closed_loop"
ARMS = ("policy_treated", "frozen", "lightgbm", "vw", "random")


def run_world(kind: str, customers: int, history_days: int, days: int, shift_day: int, seed: int,
              use_vw: bool, refresh_every: int = 1) -> pd.DataFrame:
    """Simulate, train, and play one world; the daily table with a ``world`` column."""
    from nextbest.features.config import load_config
    from nextbest.sim.closed_loop import Shift, run_closed_loop
    from nextbest.sim.simulate import generate, write
    from nextbest.training.train import train
    from peers import LightGBMPeer, VWPeer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config()
    t0 = time.perf_counter()
    sim = generate(customers, history_days, seed, cfg, progress=False, world=kind)
    safe = kind.replace(":", "_")
    data_dir = write(sim, OUT / "data" / f"{safe}_{customers}x{history_days}_s{seed}", seed=seed)
    trained = train(data_dir, cfg, seed=0)
    peers = {"lightgbm": LightGBMPeer(sim, cfg, seed=seed)}
    if use_vw:
        peers["vw"] = VWPeer(sim, cfg, seed=seed)
    log.info("%s: history simulated, policy trained, peers warmed in %.0f s", kind, time.perf_counter() - t0)
    shift = Shift.for_world(sim.world, shift_day) if shift_day < days else None
    t = time.perf_counter()
    res = run_closed_loop(trained.policy, copy.deepcopy(sim), days, seed=seed, shift=shift, peers=peers,
                          progress=False, refresh_every=refresh_every)
    log.info("%s: %d closed-loop days in %.0f s (shift: %s)", kind, days, time.perf_counter() - t, shift)
    daily = res.daily.assign(world=kind, shift=str(shift))
    daily.to_csv(OUT / f"daily_{safe}.csv", index=False)
    return daily


def summarize(daily: pd.DataFrame, shift_day: int, days: int) -> pd.DataFrame:
    """Per world and arm: day 0, days 7-9 and 17-19 (mean of daily normalized values), worst pre-shift drop."""
    mid = [d for d in (7, 8, 9) if d < days]
    late = [17, 18, 19] if days >= 20 else [d for d in (days - 3, days - 2, days - 1) if d >= 0]
    rows = []
    for world, d in daily.groupby("world", sort=False):
        d = d.set_index("day")
        for arm in ARMS:
            col = f"normalized_{arm}"
            if col not in d:
                continue
            s = d[col]
            pre = s[s.index < min(shift_day, days)]
            rows.append({"world": world, "arm": arm, "day0": s.loc[0], "days7_9": s.loc[mid].mean() if mid else np.nan,
                         "days17_19": s.loc[late].mean(),
                         "worst_drop_pre_shift": float((s.loc[0] - pre).max()) if len(pre) else np.nan})
    return pd.DataFrame(rows)


def targets(summary: pd.DataFrame, daily: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """The issue's targets for the learning policy (``policy_treated``): (target, figure, met)."""
    p = summary[summary["arm"] == "policy_treated"].set_index("world")
    f = summary[summary["arm"] == "frozen"].set_index("world")
    violations = int(daily.filter(like="violations_").drop(columns=daily.filter(like="peer_violations_").columns).sum().sum())
    margin = p["days17_19"] - f["days17_19"]
    return [
        ("day 0 >= 0.70 on every world", f"mean {p['day0'].mean():.3f}, worst {p['day0'].min():.3f}",
         bool((p["day0"] >= 0.70).all())),
        ("days 7-9 avg >= 0.85 (every world)", f"mean {p['days7_9'].mean():.3f}, worst {p['days7_9'].min():.3f}",
         bool((p["days7_9"] >= 0.85).all())),
        ("no day before the shift > 0.02 below day 0", f"worst drop {p['worst_drop_pre_shift'].max():.3f}",
         bool((p["worst_drop_pre_shift"] <= 0.02).all())),
        ("days 17-19 avg >= 0.75 (every world)", f"mean {p['days17_19'].mean():.3f}, worst {p['days17_19'].min():.3f}",
         bool((p["days17_19"] >= 0.75).all())),
        ("days 17-19 >= frozen + 0.10 (every world)", f"mean margin {margin.mean():+.3f}, worst {margin.min():+.3f}",
         bool((margin >= 0.10).all())),
        ("rule violations zero", f"{violations} violations", violations == 0),
    ]


def plot(daily: pd.DataFrame, shift_day: int, path: Path) -> None:
    worlds = list(dict.fromkeys(daily["world"]))
    panels = worlds + ["family mean"]
    cols = 3
    rows = int(np.ceil(len(panels) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    FigureCanvasAgg(fig)
    styles = {"policy_treated": "-", "frozen": "--", "lightgbm": "-.", "vw": ":", "random": (0, (1, 3))}
    for i, name in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        d = daily.groupby("day").mean(numeric_only=True).reset_index() if name == "family mean" else daily[daily["world"] == name]
        for arm, style in styles.items():
            if f"normalized_{arm}" in d:
                ax.plot(d["day"], d[f"normalized_{arm}"], linestyle=style, label=arm)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axvline(shift_day, color="red", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(-0.2, 1.05)
        ax.set_xlabel("day", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("share of oracle's extra profit", fontsize=8)
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=8)
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--history-days", type=int, default=60)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--shift-day", type=int, default=10)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--no-vw", action="store_true", help="leave out the Vowpal Wabbit peer")
    ap.add_argument("--refresh-every", type=int, default=1,
                    help="days between engagement snapshots (1: daily, as if events were streamed; 0: day 0's only, "
                         "as a service whose export never changes); contact state and consent stay live")
    ap.add_argument("--out", help="folder for the tables and the plot (default benchmarks/out/closed_loop)")
    args = ap.parse_args()
    global OUT
    if args.out:
        OUT = Path(args.out)
    if args.quick:
        args.customers, args.history_days, args.days, args.shift_day = 1000, 40, 6, 3
        args.worlds = min(args.worlds, 3)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    from nextbest.sim.family import world_family

    kinds = world_family(args.worlds)
    job = dict(customers=args.customers, history_days=args.history_days, days=args.days,
               shift_day=args.shift_day, seed=args.seed, use_vw=not args.no_vw, refresh_every=args.refresh_every)
    t0 = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=share_cores, initargs=(args.jobs,)) as ex:
            futures = [ex.submit(run_world, k, **job) for k in kinds]
            parts = [f.result() for f in futures]
    else:
        parts = [run_world(k, **job) for k in kinds]
    daily = pd.concat(parts, ignore_index=True)
    daily.to_csv(OUT / "daily_family.csv", index=False)
    summary = summarize(daily, args.shift_day, args.days)
    summary.to_csv(OUT / "summary.csv", index=False)
    plot(daily, args.shift_day, OUT / "closed_loop_family.png")

    pd.set_option("display.width", 200)
    print(f"\n{len(kinds)} worlds x {args.customers} customers, {args.history_days} history days, "
          f"{args.days} closed-loop days, shift on day {args.shift_day}; {time.perf_counter() - t0:.0f} s")
    cols = ["day"] + [f"normalized_{a}" for a in ARMS if f"normalized_{a}" in daily]
    for world, d in daily.groupby("world", sort=False):
        print(f"\n== {world} ({d['shift'].iloc[0]}) ==")
        print(d[cols].rename(columns=lambda c: c.replace("normalized_", "")).round(3).to_string(index=False))
    wide = summary.pivot_table(index="world", columns="arm", values=["day0", "days7_9", "days17_19"], sort=False)
    print("\n== per world (normalized, control group left out) ==")
    print(wide.round(3).to_string())
    by_arm = summary.groupby("arm", sort=False)
    figures = ["day0", "days7_9", "days17_19", "worst_drop_pre_shift"]
    print("\n== family: mean ==")
    print(by_arm[figures].mean().round(3).to_string())
    print("\n== family: worst world (min; max for the drop) ==")
    worst = by_arm[figures[:3]].min().assign(worst_drop_pre_shift=by_arm["worst_drop_pre_shift"].max())
    print(worst.round(3).to_string())
    print("\n== expected profit per customer and day over all the days (the served policy's own trajectory) ==")
    arms = [a for a in ("policy", "frozen", "suppress", "oracle") if f"profit_{a}" in daily]
    total = daily.groupby("world", sort=False)[[f"profit_{a}" for a in arms]].mean()
    print(total.rename(columns=lambda c: c.replace("profit_", "")).round(4).to_string())
    print(total.mean().rename(lambda c: c.replace("profit_", "")).round(4).to_string())
    vcols = [c for c in daily.columns if c.startswith("violations_") or c.startswith("peer_violations_")]
    print("\n== rule violations (sends, summed over worlds and days) ==")
    print(daily[vcols].sum().to_string())
    print("\n== targets (learning policy, policy_treated) ==")
    for name, figure, met in targets(summary, daily):
        print(f"{'MET   ' if met else 'MISSED'}  {name}: {figure}")
    print(f"\nplot: {OUT / 'closed_loop_family.png'}; tables: {OUT}")


if __name__ == "__main__":
    main()
