"""Other senders' events into the running service (``POST /v1/events/batch``), SQLite and Redis.

    .venv/bin/python benchmarks/events_ingest.py [--customers 5000] [--seconds 15] [--batch 1000]

Uses the serving benchmark's project (``benchmarks/out/serving``; trained if missing). For each
store (SQLite, then a scratch Redis), one worker, the decision log fsynced as in production:

1. **Ingestion**: two clients post batches of ``--batch`` events (a send, then an open and a
   click of it, for random customers; unique ids) for ``--seconds``: events/s.
2. **Freshness**: 50 times, a customer's consented channel gets an unsubscribe through
   ``/v1/events``, then one decision is asked for at once; the time from posting the event to the
   answer, and whether the answer already leaves the channel out (the target: within 1 s).
3. **Decide under ingestion**: wrk on ``/v1/decide`` for ``--seconds`` alone and again while a
   client posts 1,000 events/s (batches of 100 every 0.1 s), in ``--pairs`` pairs whose order
   alternates (alone first, then loaded first, ...) so a machine slowing down during the run does
   not favour either side: each pair's ratio and their median (target >= 0.9). One pair was
   measured before 2026-12-03, and two runs of one build gave 0.83x and 0.96x.

Prints JSON and writes ``benchmarks/out/serving/events_ingest.json``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

_spec = importlib.util.spec_from_file_location("bench_serving", Path(__file__).with_name("serving.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # the serving benchmark's project, servers and wrk

log = logging.getLogger("benchmarks.events_ingest")


def event_batch(rng, ids, channels, n: int, tag: str) -> list[dict]:
    """``n`` events: sends with an open and a click each, for random customers, dated within the last hour."""
    clock = datetime.now(timezone.utc)
    out = []
    while len(out) < n:
        cid, ch = ids[int(rng.integers(len(ids)))], channels[int(rng.integers(len(channels)))]
        m = f"{tag}-{len(out)}"
        at = clock - timedelta(minutes=int(rng.integers(5, 60)))
        for k, ev in enumerate(("sent", "opened", "clicked")):
            e = {"event_id": f"{m}-{ev}", "customer_id": cid, "event": ev, "message_id": m, "channel": ch,
                 "ts": (at + timedelta(minutes=k)).isoformat()}
            out.append({**e, "offer": "none"} if ev == "sent" else e)
    return out[:n]


def ingest(url, ids, channels, seconds, size, clients=2) -> dict:
    done, lock, stop_at = [], threading.Lock(), time.time() + seconds

    def client(k):
        rng = np.random.default_rng(k)
        with httpx.Client(timeout=120, headers=bench.AUTH) as c:
            i = 0
            while time.time() < stop_at:
                body = {"events": event_batch(rng, ids, channels, size, f"c{k}-{i}-{time.time_ns()}")}
                t = time.perf_counter()
                r = c.post(f"{url}/v1/events/batch", json=body)
                r.raise_for_status()
                with lock:
                    done.append((size, time.perf_counter() - t))
                i += 1

    elapsed = bench.run_clients(client, clients)
    return {"events_per_s": sum(n for n, _ in done) / elapsed, "calls": len(done),
            "seconds_per_call_p50": float(np.median([s for _, s in done]))}


def freshness(url, people, channels, rounds=50) -> dict:
    """Unsubscribe a consented channel, then decide at once; how long until the answer shows it."""
    waits, seen = [], []
    full = people[people[[f"consent_{c}" for c in channels]].all(axis=1)]["customer_id"].astype(str).tolist()
    with httpx.Client(timeout=60, headers=bench.AUTH) as c:
        for i, cid in enumerate(full[:rounds]):
            ch = channels[i % len(channels)]
            now = datetime.now(timezone.utc).isoformat()
            t = time.perf_counter()
            r = c.post(f"{url}/v1/events", json={"event_id": f"fresh-{cid}-{time.time_ns()}", "customer_id": cid,
                                                 "event": "unsubscribed", "message_id": f"fresh-{cid}", "channel": ch,
                                                 "ts": now})
            r.raise_for_status()
            d = c.post(f"{url}/v1/decide", json={"customer_id": cid, "type": "transactional"})
            d.raise_for_status()
            waits.append(time.perf_counter() - t)
            seen.append(ch not in d.json()["channels"])
    return {"rounds": len(waits), "reflected_in_next_decision": float(np.mean(seen)),
            "event_to_decision_s_p50": float(np.median(waits)), "event_to_decision_s_max": float(np.max(waits))}


def steady_events(url, ids, channels, stop: threading.Event, per_s=1000, every=0.1) -> dict:
    """Post ``per_s`` events a second in batches every ``every`` seconds until ``stop``."""
    rng, n, sent, i = np.random.default_rng(99), int(per_s * every), 0, 0
    t0 = time.perf_counter()
    with httpx.Client(timeout=60, headers=bench.AUTH) as c:
        while not stop.is_set():
            due = t0 + i * every
            if time.perf_counter() < due:
                time.sleep(min(due - time.perf_counter(), every))
                continue
            c.post(f"{url}/v1/events/batch", json={"events": event_batch(rng, ids, channels, n, f"s{i}-{time.time_ns()}")})
            sent += n
            i += 1
    return {"events_per_s": sent / (time.perf_counter() - t0)}


def decide_window(url, ids, channels, script, args, loaded: bool) -> tuple[dict, dict]:
    """wrk on ``/v1/decide`` for ``--seconds``, alone or while a client posts 1,000 events/s."""
    if not loaded:
        return bench.wrk(url, script, args.seconds, args.connections), {}
    stop, box = threading.Event(), {}
    feeder = threading.Thread(target=lambda: box.update(steady_events(url, ids, channels, stop)))
    feeder.start()
    try:
        return bench.wrk(url, script, args.seconds, args.connections), box
    finally:
        stop.set()
        feeder.join()


def one_store(name, store_url, home, data, work, ids, people, channels, script, args) -> dict:
    port = bench.free_port()
    work.mkdir(parents=True, exist_ok=True)
    proc = bench.start_service(home, data, port, work, store_url, 1)
    url = f"http://127.0.0.1:{port}"
    out = {}
    try:
        out["ingest"] = ingest(url, ids, channels, args.seconds, args.batch)
        log.info("%s ingest: %s", name, out["ingest"])
        out["freshness"] = freshness(url, people, channels)
        log.info("%s freshness: %s", name, out["freshness"])
        bench.wrk(url, script, 3, args.connections)
        pairs = []
        for k in range(args.pairs):  # alone then loaded, loaded then alone, ...: drift cancels
            first_alone = k % 2 == 0
            got = {}
            for loaded in ((False, True) if first_alone else (True, False)):
                got[loaded] = decide_window(url, ids, channels, script, args, loaded)
            pairs.append({"alone": got[False][0], "with_events": got[True][0], "events_during": got[True][1],
                          "ratio": got[True][0]["rps"] / got[False][0]["rps"]})
            log.info("%s pair %d: decide alone %.0f req/s, with %.0f events/s %.0f req/s (x%.2f)", name, k,
                     got[False][0]["rps"], got[True][1].get("events_per_s", 0), got[True][0]["rps"],
                     pairs[-1]["ratio"])
        out["decide_pairs"] = pairs
        out["decide_ratio"] = float(np.median([p["ratio"] for p in pairs]))
    finally:
        bench.stop(proc)
    return out


def main() -> None:
    import argparse

    from nextbest.features.config import load_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=3, help="alone/loaded pairs of decide windows (median ratio)")
    args = ap.parse_args()
    home, data, ids, work, script = bench.setup(args.customers, "events_bench_")
    people = pd.read_parquet(data / "customers.parquet")
    channels = list(load_config().channel_names)
    results = {"sqlite": one_store("sqlite", f"sqlite:///{work / 'state.db'}", home, data, work / "sqlite_log",
                                   ids, people, channels, script, args)}
    redis_proc, url = bench.start_redis(work)
    try:
        results["redis"] = one_store("redis", url, home, data, work / "redis_log", ids, people, channels, script, args)
    finally:
        os.killpg(redis_proc.pid, signal.SIGTERM)
    results["settings"] = vars(args)
    print(json.dumps(results, indent=2))
    (bench.OUT / "events_ingest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
