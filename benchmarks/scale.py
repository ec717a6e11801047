"""Growth benchmark (issue 18): the feature pipeline on Dask as the event log grows.

    .venv/bin/python benchmarks/scale.py                       # 1M, 5M, 10M and 20M events; 1 and 2 workers
    .venv/bin/python benchmarks/scale.py --customers 10000,50000 --workers 1

Data: simulated customers x 110 days (seed 1; about 91 events per customer), generated once under
``benchmarks/out/data_<customers>_110_1`` (shared with ``feature_pipeline.py``).

For every size and worker count, a fresh ``LocalCluster`` (single-threaded worker processes) runs
the stages of ``features.partitioned``. Before each stage every worker returns the memory the last
one freed (``gc``, ``malloc_trim``) and resets its peak RSS (``VmHWM``, by writing 5 to
``/proc/self/clear_refs``), so that the peak is the stage's own (plus what the worker still holds).
Earlier runs restarted the workers instead; on this machine ``Client.restart`` now leaves the
workers gone after the validate stage with two workers (dask/distributed#7312, "Restart can kill a
worker"; reproduced by a minimal script with the feature code from before this change too,
commit a3ca345), so the benchmark no longer restarts.
The workers' imports are therefore warm from the second stage on.

- ``partition``: read ``customers`` and ``events``, hash by customer, write Parquet partitions
  (one per 2,000,000 events, at least one per worker);
- ``validate``: the data contract per partition plus the global message-id check, and the priors
  (``summarize``);
- ``snapshot``: ``engagement_history`` of every customer, gathered on the client;
- ``examples``: the training examples of the decisions ``nextbest train`` would sample
  (``training.max_rows_per_model`` sends and as many non-sends), per partition.

In the same run, in fresh processes on the same Parquet files, ``feature_pipeline.py``'s
single-machine ``snapshot`` (pandas) and its DuckDB reference query are timed (medians of 3).

Printed: wall time, events/s, the peak RSS of the largest worker, and per stage and worker count
the growth exponent ``b`` of ``time ~ events^b`` (least squares on log-log). Targets (issue 18):
``b <= 1.15``; peak memory per worker flat as events grow; the snapshot at 10M events <= 3x DuckDB.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # `features` is the package, not this folder
log = logging.getLogger("benchmarks.scale")
STAGES = ("partition", "validate", "snapshot", "examples")


def _data(customers: int) -> Path:
    data = HERE / "out" / f"data_{customers}_110_1"
    if not (data / "events.parquet").exists():
        from nextbest.sim.simulate import generate, write

        t0 = time.perf_counter()
        sim = generate(customers, 110, 1, progress=False)
        write(sim, data, seed=1)
        log.info("generated %d events in %.0fs", len(sim.events), time.perf_counter() - t0)
    return data


def _fresh_peak() -> None:
    """Give back freed memory and reset this process's peak RSS to its current RSS (Linux)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _sampled_decisions(data: Path, config):
    """The decisions ``nextbest train`` builds examples of (its time split and sampling)."""
    import pandas as pd

    from nextbest.features.io import read_table
    from nextbest.training.settings import TrainingSettings
    from nextbest.training.train import select_decisions

    dec = read_table(data, "logging_decisions")
    dec["ts"] = pd.to_datetime(dec["ts"], utc=True)
    end = pd.read_parquet(data / "events.parquet", columns=["ts"])["ts"].max() + pd.Timedelta(milliseconds=1)
    tr, va = select_decisions(dec, TrainingSettings.from_config(config), config.objective.attribution_window_hours,
                              end, 0)
    return pd.concat([tr, va], ignore_index=True), end


def dask_run(data: Path, workers: int, config) -> dict:
    import tempfile

    from nextbest.features import partitioned

    decisions, end = _sampled_decisions(data, config)
    out = {}
    with partitioned.dask_client(workers=workers) as client, tempfile.TemporaryDirectory(dir=HERE / "out") as tmp:
        def timed(name, fn):
            client.run(_fresh_peak)
            t0 = time.perf_counter()
            result = fn()
            wall = time.perf_counter() - t0
            peak = max(client.run(_peak_rss_gib).values())
            out[name] = {"wall_s": wall, "peak_worker_gib": peak}
            log.info("%s, %d worker(s), %s: %.1f s, peak worker %.2f GiB", data.name, workers, name, wall, peak)
            return result

        parts = timed("partition", lambda: partitioned.partition(data, client, None, tmp))
        summary = timed("validate", lambda: partitioned.summarize(parts, client, config))
        snap = timed("snapshot", lambda: partitioned.snapshot(parts, client, config, None, summary))
        ex = timed("examples", lambda: partitioned.examples(parts, client, config, decisions,
                                                            config.objective.attribution_window_hours, end, summary))
        out["events"], out["partitions"], out["customers"], out["n_examples"] = parts.events, parts.n, len(snap), len(ex)
    return out


def single_machine(data: Path) -> dict:
    """``feature_pipeline.py``'s pandas snapshot and DuckDB reference: medians of 3 fresh processes."""
    res = {}
    for stage in ("snapshot", "duckdb"):
        runs = sorted(json.loads(subprocess.run([sys.executable, str(HERE / "feature_pipeline.py"), "--stage", stage,
                                                 "--data", str(data)], capture_output=True, text=True, check=True)
                                 .stdout.strip().splitlines()[-1])["wall_s"] for _ in range(3))
        res[stage] = runs[1]
    return res


def exponent(events: list[int], seconds: list[float]) -> float:
    import numpy as np

    return float(np.polyfit(np.log(events), np.log(seconds), 1)[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", default="10000,50000,100000,200000", help="sizes (x 110 days, ~91 events each)")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    from nextbest.features.config import load_config

    config = load_config()
    sizes, workers = [int(c) for c in args.customers.split(",")], [int(w) for w in args.workers.split(",")]
    rows = []
    for c in sizes:
        data = _data(c)
        base = single_machine(data)
        for w in workers:
            r = dask_run(data, w, config)
            rows.append({"customers": c, "events": r["events"], "workers": w, "partitions": r["partitions"],
                     "examples": r["n_examples"],
                         **{f"{s}_s": r[s]["wall_s"] for s in STAGES},
                         **{f"{s}_peak_gib": r[s]["peak_worker_gib"] for s in STAGES},
                         "pandas_snapshot_s": base["snapshot"], "duckdb_s": base["duckdb"]})
    import pandas as pd

    t = pd.DataFrame(rows)
    t["events_per_s_all_stages"] = t["events"] / t[[f"{s}_s" for s in STAGES]].sum(axis=1)
    t["snapshot_vs_duckdb"] = t["snapshot_s"] / t["duckdb_s"]  # the pass that reads, checks, encodes and computes
    t["with_priors_vs_duckdb"] = (t["validate_s"] + t["snapshot_s"]) / t["duckdb_s"]  # plus the priors' pass
    t["pandas_snapshot_vs_duckdb"] = t["pandas_snapshot_s"] / t["duckdb_s"]
    pd.set_option("display.width", 250)
    print(t.round(3).to_string(index=False))
    print("\ngrowth exponent b of time ~ events^b (target <= 1.15):")
    for w, g in t.groupby("workers"):
        print(f"  {w} worker(s): " + ", ".join(f"{s} {exponent(g['events'].tolist(), g[f'{s}_s'].tolist()):.2f}"
                                            for s in STAGES))
    print("\npeak RSS of the largest worker, GiB (target: flat as events grow):")
    for w, g in t.groupby("workers"):
        print(f"  {w} worker(s): " + "; ".join(f"{s} " + " / ".join(f"{v:.2f}" for v in g[f'{s}_peak_gib'])
                                            for s in STAGES))
    (HERE / "out" / "scale.json").write_text(t.to_json(orient="records", indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
