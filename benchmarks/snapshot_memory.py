"""Memory of the service's snapshot as the customer base grows (issue 17: worker RSS at 1M customers).

    .venv/bin/python benchmarks/snapshot_memory.py                        # 10,000 and 100,000 customers
    .venv/bin/python benchmarks/snapshot_memory.py --customers 100000,300000

For each size: simulated data of ``--days`` days (seed 1; generated once under
``benchmarks/out/data_<customers>_<days>_1``, shared with ``feature_pipeline.py``), then, in a
fresh process, the imports alone and then ``serving.snapshot.Snapshot(data_dir, config)``: what
every engine process builds at start and holds until the next export (one per BentoML worker).
Printed per size: resident memory (VmRSS) after the imports, right after building the snapshot,
after ``serving.engine.settle_heap`` (what the engine holds from then on: freed memory returned
to the system) and after the first decision's conversion of the models' numeric inputs into one
float table (float32 where exact, ``decision.candidates.CustomerArrays``); the peak (VmHWM) while
building; and what the snapshot's parts hold (the feature frame, that float table, the encoded
event log kept for live histories), in bytes per customer. "held" is the resident memory after
the first decision less that after the imports.

The per-customer figures are nearly constant, so the line through the measured sizes gives the
figure at sizes too large to generate on this machine in a benchmark's time; the output labels
such a figure as extrapolated. (1,000,000 customers x 60 days could not be generated here: the
simulator itself passed 20 of this machine's 24 GiB before writing anything, 2026-12-04.) The
engine's policy (the models) adds a constant few tens of MB that this benchmark leaves out.
Target (issue 17): under 2 GiB per worker at 1M customers.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # `features` is the package
log = logging.getLogger("benchmarks.snapshot_memory")
GIB = 2 ** 30


def _status(key: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _nbytes(obj) -> int:
    """Bytes held by numpy arrays and pandas objects reachable one level down from ``obj``."""
    import numpy as np
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return int(obj.memory_usage(deep=True).sum())
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    seen = 0
    for v in vars(obj).values():
        if isinstance(v, np.ndarray):
            seen += v.nbytes
        elif isinstance(v, (pd.DataFrame, pd.Series, pd.Index)):
            seen += int(v.memory_usage(deep=True).sum() if isinstance(v, pd.DataFrame) else v.memory_usage(deep=True))
        elif isinstance(v, dict):
            seen += sum(int(a.nbytes) for a in v.values() if isinstance(a, np.ndarray))
    return seen


def measure(data_dir: Path) -> dict:
    """In this (fresh) process: RSS after the imports, after building the snapshot, after the
    engine's ``settle_heap`` and after the first decision's float table (see the module)."""
    import gc

    from nextbest.features.config import load_config
    from nextbest.serving.engine import settle_heap
    from nextbest.serving.snapshot import Snapshot

    config = load_config()
    gc.collect()
    before = _status("VmRSS")
    t0 = time.perf_counter()
    snap = Snapshot(str(data_dir), config)
    wall = time.perf_counter() - t0
    gc.collect()
    built = _status("VmRSS")
    settle_heap()  # what the engine does after loading: collect, freeze, return freed memory
    settled = _status("VmRSS")
    snap.arrays._numeric_table()  # the model inputs as one float table: built by the first decision
    return {"customers": len(snap.index), "events": int(len(snap.log.keys)), "build_s": wall,
            "rss_imports": before, "rss_built": built, "rss_settled": settled, "rss_decided": _status("VmRSS"),
            "peak": _status("VmHWM"), "frame": _nbytes(snap.frame),
            "numeric_table": int(snap.arrays._table.nbytes), "event_log": _nbytes(snap.log)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", default="10000,100000", help="comma-separated sizes")
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--target-customers", type=int, default=1_000_000)
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.measure:
        sys.stdout.write(json.dumps(measure(Path(args.measure))) + "\n")
        return 0
    rows = []
    for n in (int(x) for x in args.customers.split(",")):
        data = HERE / "out" / f"data_{n}_{args.days}_1"
        if not (data / "events.parquet").exists():
            from nextbest.sim.simulate import generate, write

            t0 = time.perf_counter()
            sim = generate(n, args.days, 1, progress=False)
            write(sim, data, seed=1)
            log.info("generated %d customers, %d events in %.0fs", n, len(sim.events), time.perf_counter() - t0)
            del sim
        out = subprocess.run([sys.executable, __file__, "--measure", str(data)], capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'customers':>10}{'events':>12}{'build s':>9}{'RSS imports':>13}{'RSS built':>11}{'RSS settled':>13}"
          f"{'+ 1st decide':>14}{'peak':>9}{'held B/cust':>13}{'frame B/cust':>14}{'table B/cust':>14}"
          f"{'log B/cust':>12}")
    for r in rows:
        n = r["customers"]
        print(f"{n:>10,}{r['events']:>12,}{r['build_s']:>9.1f}{r['rss_imports'] / GIB:>12.2f}G"
              f"{r['rss_built'] / GIB:>10.2f}G{r['rss_settled'] / GIB:>12.2f}G{r['rss_decided'] / GIB:>13.2f}G"
              f"{r['peak'] / GIB:>8.2f}G"
              f"{(r['rss_decided'] - r['rss_imports']) / n:>13,.0f}{r['frame'] / n:>14,.0f}"
              f"{r['numeric_table'] / n:>14,.0f}{r['event_log'] / n:>12,.0f}")
    big, target = rows[-1], args.target_customers
    if big["customers"] >= target:
        print(f"measured at {big['customers']:,} customers: RSS {big['rss_decided'] / GIB:.2f} GiB, "
              f"peak {big['peak'] / GIB:.2f} GiB (target < 2 GiB)")
    elif len(rows) >= 2:
        a = rows[-2]
        slope = (big["rss_decided"] - a["rss_decided"]) / (big["customers"] - a["customers"])
        peak_slope = (big["peak"] - a["peak"]) / (big["customers"] - a["customers"])
        at = big["rss_decided"] + slope * (target - big["customers"])
        peak_at = big["peak"] + peak_slope * (target - big["customers"])
        print(f"extrapolated (a line through {a['customers']:,} and {big['customers']:,}) to {target:,} customers: "
              f"RSS {at / GIB:.2f} GiB, peak {peak_at / GIB:.2f} GiB (target < 2 GiB; not measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
