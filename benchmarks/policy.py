"""Benchmark: `nextbest train` on 50,000 simulated customers x 90 days; policy value and send time.

Prints the wall time split by stage and the peak memory of the `nextbest train` process, the
trained policy's value on the simulator's truth (a fresh day) normalized as
(policy - suppress everyone) / (oracle - suppress everyone) next to the baselines measured in the
same run (send everyone the best single channel with no offer; random), and the true open rate
at the policy's send hours next to the most-frequent-open-hour rule.

    .venv/bin/python benchmarks/policy.py [--customers 50000] [--days 90] [--seed 3]

Targets (issue 3): normalized value >= 0.85 and clearly above the baselines; send time above
the rule; train < 10 minutes and < 8 GiB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    data = HERE / "out" / f"policy_{args.customers}x{args.days}_s{args.seed}"
    if not (data / "events.parquet").exists():
        subprocess.run([str(BIN / "nextbest"), "-q", "data", "generate", "--customers", str(args.customers),
                        "--days", str(args.days), "--seed", str(args.seed), "--out", str(data)], check=True)
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "NEXTBEST_HOME": home}
        env.pop("MLFLOW_TRACKING_URI", None)
        t0 = time.perf_counter()
        proc = subprocess.run([str(BIN / "nextbest"), "-q", "train", str(data), "--no-tuned"],
                              capture_output=True, text=True, env=env, cwd=home)
        wall = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            return proc.returncode
        import mlflow

        from nextbest.training import run_metrics as rm

        mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow.db")
        run = mlflow.search_runs(experiment_names=["nextbest"], output_format="list")[0]
        m = run.data.metrics
    lines = [f"data: {args.customers:,} customers x {args.days} days (seed {args.seed})",
             f"nextbest train wall time: {wall:.0f} s (target < 600 s); peak memory {peak_gib:.2f} GiB (target < 8 GiB)",
             "time split by stage (s):"]
    lines += [f"  {k.split('/')[1]:<16} {v:7.1f}" for k, v in m.items() if k.startswith("time_seconds/")]
    lines += ["policy value on a fresh day, normalized (policy - suppress) / (oracle - suppress):"]
    for who in ("policy", "best_single_channel", "random", "suppress", "oracle"):
        lines.append(f"  {who:<20} {m[rm.name(rm.SHARE, who)]:7.3f}   profit per 1,000 customers "
                     f"{m[rm.name(rm.PROFIT, who)]:8.1f}")
    lines += ["true open rate at the chosen send hour:"]
    for who in ("policy", "most_frequent_open_hour", "oracle_hour"):
        lines.append(f"  {who:<24} {m[rm.name(rm.OPEN_RATE_AT_SEND_TIME, who)]:.4f}")
    print("\n".join(lines))
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "policy_last.json").write_text(json.dumps({"wall_s": wall, "peak_gib": peak_gib, **m}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
