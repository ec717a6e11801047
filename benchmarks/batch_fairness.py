"""Single decisions while 1,000-row batches run (issue 17, "fairness"): ``serving.batch_chunk``.

    .venv/bin/python benchmarks/batch_fairness.py [--customers 5000] [--seconds 15] [--connections 8]

Uses the serving benchmark's project (``benchmarks/out/serving``; trained if missing). For each
setting of ``serving.batch_chunk`` (0: a batch is one engine call, as before; the default 100),
one worker, SQLite:

1. wrk posts single ``/v1/decide`` requests for ``--seconds`` alone: req/s, p50 and p99;
2. again while one client posts batches of 1,000 decisions back to back: the singles' req/s, p50
   and p99, and the batches' decisions/s.

Prints JSON and writes ``benchmarks/out/serving/batch_fairness.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import threading
from pathlib import Path


_spec = importlib.util.spec_from_file_location("bench_serving", Path(__file__).with_name("serving.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # the serving benchmark's project, servers and wrk

log = logging.getLogger("benchmarks.batch_fairness")


def one_setting(chunk: int, home: Path, data: Path, work: Path, ids: list[str], script: Path, args) -> dict:
    cfg = work / f"chunk_{chunk}.yaml"
    cfg.write_text(f"serving:\n  batch_chunk: {chunk}\n")
    sub = work / f"chunk_{chunk}"
    sub.mkdir()
    port = bench.free_port()
    proc = bench.start_service(home, data, port, sub, f"sqlite:///{sub / 'state.db'}", 1,
                               extra_env={"NEXTBEST_CONFIG": str(cfg)})
    url = f"http://127.0.0.1:{port}"
    try:
        bench.wrk(url, script, 3, args.connections)
        alone = bench.wrk(url, script, args.seconds, args.connections)
        box = {}
        feeder = threading.Thread(target=lambda: box.update(bench.batches(url, ids, args.seconds + 2, clients=1)))
        feeder.start()
        during = bench.wrk(url, script, args.seconds, args.connections)
        feeder.join()
    finally:
        bench.stop(proc)
    out = {"singles_alone": alone, "singles_with_batches": during, "batches": box,
           "p99_ratio": during["p99_ms"] / alone["p99_ms"]}
    log.info("batch_chunk %d: singles p99 %.0f ms alone, %.0f ms with batches (x%.1f); batches %.0f decisions/s",
             chunk, alone["p99_ms"], during["p99_ms"], out["p99_ratio"], box.get("decisions_per_s", float("nan")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    home, data, ids, work, script = bench.setup(args.customers, "fairness_")
    results = {f"batch_chunk_{c}": one_setting(c, home, data, work, ids, script, args) for c in (0, 100)}
    results["settings"] = vars(args)
    print(json.dumps(results, indent=2))
    (bench.OUT / "batch_fairness.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
