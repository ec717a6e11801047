"""The decision service under load, against a no-op BentoML endpoint measured in the same run.

    .venv/bin/python benchmarks/serving.py [--customers 5000] [--seconds 20] [--connections 16] [--mixed-seconds 60]

1. A champion is trained on a simulated history (5,000 customers x 30 days) in a scratch project
   under ``benchmarks/out/serving`` (reused if it exists).
2. **Single decisions**: wrk (``--connections`` connections, one thread) posts ``/v1/decide``
   for random customers at random times over the 8 weeks around today (so caps rarely bind and
   every request is scored) to (a) the baseline, ``benchmarks/noop_service.py``: the same server settings and
   request model, a fixed answer, and (b) ``nextbest serve`` with the SQLite store. Requests per
   second and p99 latency of each, and the ratios the targets are about.
3. **Batches**: ``/v1/decide/batch`` with 1,000 customers per call, two clients, decisions/s; then
   the same with ``explain: false`` (no reasons, no per-option scores).
4. **Redis, 2 workers, mixed load** for ``--mixed-seconds``: 8 threads decide (at one fixed time,
   so caps bind) and post opened/converted feedback for every send; afterwards the decision log
   and the store are checked: caps and collision per customer, every acknowledged feedback
   logged and in its decision's reward.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python benchmarks/serving.py` puts benchmarks/ first on sys.path, where this file would shadow
# the `serving` package: take the package from the project instead (the name is the issue's).
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]
sys.modules.pop("serving", None)

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
import pandas as pd

from nextbest.cli_serve import stop_tree, wait_ready

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "serving"
BIN = Path(sys.executable).parent
log = logging.getLogger("benchmarks.serving")
KEY = "benchmark-key-7d3f0a9c2e51b846"  # API key of the benchmark's servers (decide, feedback, admin)
AUTH = {"Authorization": f"Bearer {KEY}"}

WRK_SCRIPT = """
local ids = {%s}
local base = %d
math.randomseed(7)
request = function()
  local id = ids[math.random(#ids)]
  local now = os.date("!%%Y-%%m-%%dT%%H:%%M:%%SZ", base + math.random(0, 86400 * 56))
  return wrk.format("POST", "/v1/decide", {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s"},
                    '{"customer_id":"' .. id .. '","now":"' .. now .. '"}')
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc) -> None:
    stop_tree(proc.pid)
    proc.wait(timeout=30)


def project_env(home: Path) -> dict:
    env = {**os.environ, "NEXTBEST_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    for var in ("NEXTBEST_STORE_URL", "NEXTBEST_LOG_DIR", "NEXTBEST_WORKERS", "MLFLOW_RUN_ID"):
        env.pop(var, None)
    return env


def prepare(home: Path, customers: int) -> Path:
    data = home / "data"
    env = project_env(home)
    if not (home / "mlflow.db").exists():
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run([BIN / "nextbest", "-q", "data", "generate", "--customers", str(customers), "--days", "30",
                        "--seed", "21", "--out", str(data)], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([BIN / "nextbest", "-q", "train", str(data), "--promote"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return data


def start_service(home: Path, data: Path, port: int, workdir: Path, store: str, workers: int = 1,
                  extra_env: dict | None = None):
    env = {**project_env(home), "NEXTBEST_STORE_URL": store, "NEXTBEST_API_KEYS": f"{KEY}:decide,feedback,events,admin",
           **(extra_env or {})}
    out = open(workdir / f"server-{port}.log", "ab")
    proc = subprocess.Popen([BIN / "nextbest", "serve", str(data), "--port", str(port), "--workers", str(workers),
                             "--log-dir", str(workdir / "log")], env=env, cwd=home, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}", proc, workers)
    return proc


def start_noop(home: Path, port: int, workdir: Path, workers: int = 1):
    env = {**project_env(home), "BENTOML_HOME": str(workdir / f"bentoml-{port}"),
           "NEXTBEST_DATA_DIR": str(home / "data"),  # the error middleware reads the service's settings
           "BENTOML_CONFIG_OPTIONS": f"services.nextbest.workers={workers} api_server.logging.access.enabled=false"}
    out = open(workdir / f"noop-{port}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "benchmarks.noop_service:NoopService", "--host",
                             "127.0.0.1", "--port", str(port), "--working-dir", str(ROOT)],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}", proc, workers)
    return proc


def wrk(url: str, script: Path, seconds: int, connections: int) -> dict:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed: run `make system-deps`")
    out = subprocess.run([exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label):
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)\b", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99"), "non_2xx": int(errors.group(1)) if errors else 0,
            "timeouts": int(timeouts.group(1)) if timeouts else 0}


def run_clients(client, clients: int) -> float:
    """Run ``client(k)`` for k in range(clients) in threads until all return; the wall time."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def batches(url: str, ids: list[str], seconds: float, size: int = 1000, clients: int = 2, explain: bool = True) -> dict:
    done, lock, stop_at = [], threading.Lock(), time.time() + seconds
    rng = np.random.default_rng(3)
    base = datetime.now(timezone.utc) - timedelta(days=28)  # requests stay within the allowed clock skew

    def client(k):
        with httpx.Client(timeout=120, headers=AUTH) as c:
            while time.time() < stop_at:
                pick = rng.choice(len(ids), size)
                now = (base + timedelta(hours=int(rng.integers(0, 24 * 56)))).isoformat()
                t = time.perf_counter()
                r = c.post(f"{url}/v1/decide/batch", json={"requests": [{"customer_id": ids[i], "now": now, "explain": explain}
                                                                      for i in pick]})
                r.raise_for_status()
                with lock:
                    done.append((len(r.json()["decisions"]), time.perf_counter() - t))

    elapsed = run_clients(client, clients)
    n = sum(d for d, _ in done)
    return {"decisions_per_s": n / elapsed, "calls": len(done), "seconds_per_call_p50": float(np.median([s for _, s in done]))}


def start_redis(workdir: Path):
    """A scratch redis-server (no persistence) on a free port, answering pings; (process, URL)."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed: run `make system-deps`")
    rport = free_port()
    proc = subprocess.Popen([exe, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{rport}/0"
    deadline = time.time() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def mixed_load(home: Path, data: Path, workdir: Path, seconds: int) -> dict:
    """Redis + 2 workers, 8 threads deciding and posting feedback; checked afterwards."""
    from nextbest.features.config import load_config
    from nextbest.decision.objective import channel_costs
    from nextbest.serving.decision_log import read_records
    from nextbest.serving.records import DecisionRecord
    from nextbest.serving.store import open_store

    redis_proc, url = start_redis(workdir)
    port = free_port()
    cfg = load_config()
    people = pd.read_parquet(data / "customers.parquet")
    full = people[people[[f"consent_{c}" for c in cfg.channel_names]].all(axis=1)]["customer_id"].astype(str).tolist()[:200]
    proc = start_service(home, data, port, workdir, url, workers=2)
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    acked_dec, acked_fb, failures, lock = [], [], [], threading.Lock()
    stop_at = time.time() + seconds

    def worker(k):
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=AUTH,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while time.time() < stop_at:
                r = c.post("/v1/decide", json={"customer_id": full[int(rng.integers(len(full)))], "now": now.isoformat()})
                if r.status_code != 200:
                    failures.append(r.text[:200])
                    continue
                d = r.json()
                with lock:
                    acked_dec.append(d)
                if d["action"] != "send":
                    continue
                ts = (datetime.fromisoformat(d["send_at"].replace("Z", "+00:00")) + timedelta(hours=1)).isoformat()
                for event, value in (("opened", None), ("converted", 35.0)):
                    f = c.post("/v1/feedback", json={"decision_id": d["decision_id"], "customer_id": d["customer_id"],
                                                     "event": event, "ts": ts,
                                                     "value": value})
                    if f.status_code != 200:
                        failures.append(f.text[:200])
                    elif f.json()["accepted"]:
                        with lock:
                            acked_fb.append((d["decision_id"], event, f.json()["reward"]))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop(proc)
    records = read_records(workdir / "log", "decisions")
    logged_ids = {r["decision_id"] for r in records}
    sends = pd.DataFrame([r for r in records if r["action"] == "send"])
    rules, violations = cfg.contact_rules, 0
    for _, g in sends.groupby("customer_id"):
        at = pd.to_datetime(g["send_at"], format="ISO8601").sort_values()
        violations += int(len(g) > rules.max_per_day)
        violations += int(sum(n > cfg.channels[c].cap_per_day for c, n in g["channel"].value_counts().items()))
        violations += int((at.diff().dropna() < pd.Timedelta(hours=rules.min_hours_between)).sum())
    fb_logged = {(r["decision_id"], r["event"]) for r in read_records(workdir / "log", "feedback")}
    lost_fb = sum((d, e) not in fb_logged for d, e, _ in acked_fb)
    store = open_store(url)
    costs = dict(zip(cfg.channel_names, channel_costs(cfg)))
    per_decision: dict[str, float] = {}
    for d, _, r in acked_fb:
        per_decision[d] = per_decision.get(d, 0.0) + r
    wrong_reward = 0
    for d in (x for x in acked_dec if x["action"] == "send"):
        rec = DecisionRecord.from_json(store.get("decision", d["decision_id"]))
        wrong_reward += abs(rec.reward - (-costs[d["channel"]] + per_decision.get(d["decision_id"], 0.0))) > 1e-9
    workers = {p.name.split("-")[1] for p in (workdir / "log").glob("*/decisions-*.jsonl")}
    os.killpg(redis_proc.pid, signal.SIGTERM)
    return {"decisions": len(acked_dec), "sends": int(len(sends)), "feedback_acknowledged": len(acked_fb),
            "customers": len(full), "workers_that_decided": len(workers), "failed_requests": len(failures),
            "lost_decisions": sum(d["decision_id"] not in logged_ids for d in acked_dec),
            "cap_or_collision_violations": violations, "lost_feedback": lost_fb,
            "rewards_off_in_store": int(wrong_reward)}


def setup(customers: int, prefix: str) -> tuple[Path, Path, list[str], Path, Path]:
    """What every serving benchmark starts from: logging, the trained project of ``customers``
    (``prepare``), its customer ids, a fresh work directory and the wrk script deciding for them.
    Returns (home, data, ids, work, script)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    home = OUT / f"project_{customers}"
    data = prepare(home, customers)
    ids = pd.read_parquet(data / "customers.parquet")["customer_id"].astype(str).tolist()
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=OUT))
    script = work / "decide.lua"
    base = int((datetime.now(timezone.utc) - timedelta(days=28)).timestamp())
    script.write_text(WRK_SCRIPT % (",".join(f'"{i}"' for i in ids), base, KEY))
    return home, data, ids, work, script


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--mixed-seconds", type=int, default=60, help="0 skips the Redis run")
    ap.add_argument("--workers", type=int, default=1, help="worker processes of both servers (same settings)")
    args = ap.parse_args()
    home, data, ids, work, script = setup(args.customers, "serving_bench_")
    results = {}

    port = free_port()
    proc = start_noop(home, port, work, args.workers)
    try:
        wrk(f"http://127.0.0.1:{port}", script, 3, args.connections)  # warm-up
        results["baseline_noop"] = wrk(f"http://127.0.0.1:{port}", script, args.seconds, args.connections)
    finally:
        stop(proc)
    log.info("baseline: %s", results["baseline_noop"])

    port = free_port()
    proc = start_service(home, data, port, work, f"sqlite:///{work / 'state.db'}", args.workers)
    try:
        wrk(f"http://127.0.0.1:{port}", script, 3, args.connections)
        results["decide"] = wrk(f"http://127.0.0.1:{port}", script, args.seconds, args.connections)
        log.info("decide: %s", results["decide"])
        results["batch_1000"] = batches(f"http://127.0.0.1:{port}", ids, args.seconds)
        log.info("batch: %s", results["batch_1000"])
        results["batch_1000_no_explain"] = batches(f"http://127.0.0.1:{port}", ids, args.seconds, explain=False)
        log.info("batch without reasons and scores: %s", results["batch_1000_no_explain"])
    finally:
        stop(proc)

    b, d = results["baseline_noop"], results["decide"]
    results["decide_vs_baseline"] = {"rps_ratio": d["rps"] / b["rps"], "p99_ratio": d["p99_ms"] / b["p99_ms"]}
    results["settings"] = {"workers": args.workers, "connections": args.connections, "seconds": args.seconds}
    if args.mixed_seconds > 0:
        (work / "mixed").mkdir()
        results["redis_2_workers_mixed"] = mixed_load(home, data, work / "mixed", args.mixed_seconds)
    print(json.dumps(results, indent=2))
    (OUT / f"results_{args.workers}_workers.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
