"""Ingesting events inside the engine, without HTTP: ``Engine.events`` per batch of 1,000.

    .venv/bin/python benchmarks/events_engine.py [--customers 5000] [--batches 120]

``benchmarks/events_ingest.py`` measures the service end to end, where the HTTP worker, the
clients and the engine share two cores and runs vary by a third. This measures only the engine's
part, in this process, on the serving benchmark's project (``benchmarks/out/serving``): batches of
1,000 events (a send, an open and a click of messages to random customers, as in
``events_ingest.py``) into a fresh SQLite store and a scratch Redis, the decision log fsynced.
Customers' live lists grow batch after batch, as in the end-to-end run.

For each store it runs the engine as served (long-lived heap frozen, ``serving.engine.settle_heap``)
and with ``gc.unfreeze()`` after loading, alternately, and prints per batch: wall and CPU ms
(medians over the first and last tenth of the batches, and over all), and the time spent in
garbage collection.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

_here = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("bench_events", _here / "events_ingest.py")
ingest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ingest)  # its event batches, and the serving benchmark's project
bench = ingest.bench

log = logging.getLogger("benchmarks.events_engine")


class GcClock:
    """Time spent in garbage collection (``gc.callbacks``)."""

    def __init__(self):
        self.seconds, self.full, self._t = 0.0, 0, 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t
            self.full += info["generation"] == 2


def one_run(store_url: str, work: Path, frozen: bool, args) -> dict:
    from nextbest.serving.engine import Engine
    from nextbest.serving.schemas import EventRequest
    from nextbest.serving.settings import ServeSettings

    os.environ.update({"NEXTBEST_STORE_URL": store_url, "NEXTBEST_LOG_DIR": str(work / "log")})
    engine = Engine(ServeSettings.from_env())
    if not frozen:
        gc.unfreeze()
    people = pd.read_parquet(Path(os.environ["NEXTBEST_DATA_DIR"]) / "customers.parquet")
    ids = people["customer_id"].astype(str).tolist()
    channels = list(engine.config.channel_names)
    rng, wall, cpu, clock = np.random.default_rng(0), [], [], GcClock()
    gc.callbacks.append(clock)
    try:
        for i in range(args.batches):
            events = [EventRequest.model_validate(e) for e in ingest.event_batch(rng, ids, channels, 1000, f"b{i}")]
            t, c = time.perf_counter(), time.process_time()
            engine.events(events)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    finally:
        gc.callbacks.remove(clock)
        engine.stop()
        gc.unfreeze()
        gc.collect()
    tenth = max(1, args.batches // 10)

    def ms(xs):
        return round(1000 * statistics.median(xs), 1)

    return {"wall_ms": {"first": ms(wall[:tenth]), "last": ms(wall[-tenth:]), "all": ms(wall)},
            "cpu_ms": {"first": ms(cpu[:tenth]), "last": ms(cpu[-tenth:]), "all": ms(cpu)},
            "events_per_s": round(1000 * args.batches / sum(wall)), "gc_s": round(clock.seconds, 3),
            "gc_share": round(clock.seconds / sum(wall), 3), "full_collections": clock.full}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--batches", type=int, default=120)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    home, data, _, _, _ = bench.setup(args.customers, "events_engine_")
    os.environ.update(bench.project_env(home))
    os.environ["NEXTBEST_DATA_DIR"] = str(data)
    os.chdir(home)
    out = {}
    with tempfile.TemporaryDirectory(prefix="events_engine_") as tmp:
        tmp = Path(tmp)
        redis_proc, redis_url = bench.start_redis(tmp)
        try:
            for k, (store, frozen) in enumerate([("sqlite", True), ("sqlite", False), ("redis", False),
                                                 ("redis", True)]):
                work = tmp / f"run{k}"
                if store == "redis":
                    import redis

                    redis.Redis.from_url(redis_url).flushall()
                    url = redis_url
                else:
                    url = f"sqlite:///{work / 'state.db'}"
                out[f"{store}, {'frozen heap' if frozen else 'unfrozen'}"] = one_run(url, work, frozen, args)
                log.warning("%s", json.dumps(out))
        finally:
            os.killpg(redis_proc.pid, signal.SIGTERM)
    print(json.dumps({"runs": out, "settings": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
