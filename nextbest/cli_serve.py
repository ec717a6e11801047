"""``nextbest serve`` (the decision service) and ``nextbest log export`` (the decision log as data).

``nextbest serve`` loads the champion and takes a smoke decision before it starts BentoML: with
no champion that can serve it exits non-zero with a message instead of starting workers that
would fail, restart and hold the port. SIGTERM or SIGINT to it stops BentoML's whole process
tree (the arbiter, each worker in its own session, each worker's engine process).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from nextbest.cli import _out

log = logging.getLogger("nextbest")


def serve_command(host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line for the service."""
    return [sys.executable, "-m", "bentoml", "serve", "nextbest.serving.service:DecisionService", "--host", host,
            "--port", str(port), "--working-dir", str(Path(__file__).resolve().parent.parent)]


def stop_tree(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Stop a server and every process under it. BentoML's process manager starts each worker in
    a session of its own, so a signal to the server's process group does not reach the workers
    (and the engine process under each): signal the whole tree, then SIGKILL what is left."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [root] + root.children(recursive=True)
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout if sig != signal.SIGKILL else 5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def wait_ready(url: str, proc: subprocess.Popen, workers: int = 1, timeout: float = 180.0,
               path: str = "/readyz") -> None:
    """Return once every worker answers ``path``; RuntimeError if the server exits or times out.

    A worker still loading holds a connection without answering, so readiness is asked on fresh
    connections until ``4 x workers`` answers in a row came back ready. ``nextbest ui`` asks
    MLflow's ``/health`` the same way."""
    import time

    import httpx

    ready, deadline = 0, time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            ready = ready + 1 if httpx.get(f"{url}{path}", timeout=2).status_code == 200 else 0
        except httpx.HTTPError:
            ready = 0
        if ready >= 4 * workers:
            return
        time.sleep(0.1 if ready else 0.5)
    raise RuntimeError(f"{url} not ready after {timeout:g} s")


def serve_env(args) -> dict:
    """Environment for the worker processes (settings travel as variables; see ``serving.settings``)."""
    from nextbest.decision import registry

    env = dict(os.environ)
    env["NEXTBEST_HOME"] = str(registry.project_dir())
    # BentoML keeps its Prometheus files under its home and clears them when a server starts:
    # one home per port, so two servers on one machine never wipe each other's metrics
    env.setdefault("BENTOML_HOME", str(registry.project_dir() / "serving" / "bentoml" / str(args.port)))
    env["NEXTBEST_DATA_DIR"] = str(Path(args.data_dir).resolve())
    env["MLFLOW_TRACKING_URI"] = registry.tracking_uri()
    for var, value in (("NEXTBEST_CONFIG", args.config and str(Path(args.config).resolve())),
                       ("NEXTBEST_STORE_URL", args.store), ("NEXTBEST_LOG_DIR", args.log_dir and str(Path(args.log_dir).resolve())),
                       ("NEXTBEST_WORKERS", args.workers and str(args.workers))):
        if value:
            env[var] = value
    options = [o for o in env.get("BENTOML_CONFIG_OPTIONS", "").split() if o]
    if args.workers:
        options.append(f"services.nextbest.workers={args.workers}")
    options.append("api_server.logging.access.enabled=false")
    env["BENTOML_CONFIG_OPTIONS"] = " ".join(options)
    return env


def cmd_serve(args) -> int:
    from nextbest.serving.auth import load_keys
    from nextbest.serving.settings import ServeSettings
    from nextbest.decision import registry

    if not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"data directory {args.data_dir} does not exist")
    env = serve_env(args)
    scratch = demo_state(args, env) if args.demo else None
    settings = ServeSettings.from_env(env)  # fail here, with a message, rather than in every worker
    key = demo_key(settings, env) if args.demo else None
    load_keys(settings, env)  # authentication required and no key configured: stop here, saying how to add one
    version = registry.champion_version()
    if version is None:
        raise LookupError("no champion to serve: run `nextbest train DATA --promote` (or `nextbest promote VERSION`)")
    try:  # in this process, once: a champion that cannot load must not start a crash loop of workers
        registry.smoke_decision(registry.load_version(version))
    except Exception as exc:  # noqa: BLE001 - whatever stops it from deciding
        raise LookupError(f"the champion (version {version}) cannot be served ({type(exc).__name__}: {exc}); "
                          "promote a version that loads: `nextbest promote VERSION`") from None
    if args.demo:
        try:
            return _demo(args, env, settings.workers, key)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
    _out(f"serving champion version {version} on http://{args.host}:{args.port} "
         f"(store {settings.store_url}, decision log {settings.log_dir}); Ctrl-C stops it")
    return run_until_signal(serve_command(args.host, args.port), env)


def run_until_signal(cmd: list[str], env: dict) -> int:
    """Run the server in a session of its own and wait; SIGTERM or SIGINT stops its whole tree
    (:func:`stop_tree`) and returns 0, otherwise the server's exit code is returned."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    stopped: list[int] = []

    def stop(signum, _frame):
        if not stopped:
            stopped.append(signum)
            log.info("%s: stopping the service", signal.Signals(signum).name)
            stop_tree(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            stop_tree(proc.pid, signal.SIGTERM)
    return 0 if stopped else code


def demo_state(args, env: dict) -> Path | None:
    """A fresh state store and decision log for ``serve --demo`` (removed when the demo stops),
    unless ``--store`` or ``--log-dir`` name one.

    The demo's data are generated anew with the same dates each time; a store kept from an
    earlier demo would hold its frequency caps and answer "suppress" for every customer the
    first demo contacted. A real ``serve`` keeps its state: that is what the state is for.
    """
    if args.store or args.log_dir:
        return None
    scratch = Path(tempfile.mkdtemp(prefix="nextbest-demo-"))
    env["NEXTBEST_STORE_URL"] = f"sqlite:///{scratch / 'state.db'}"
    env["NEXTBEST_LOG_DIR"] = str(scratch / "log")
    return scratch


def demo_key(settings, env: dict) -> str | None:
    """A random API key (scopes decide, feedback, admin) for the demo, valid while it runs, added
    to ``NEXTBEST_API_KEYS`` in ``env``; None when authentication is off."""
    import secrets

    if not settings.auth_required:
        return None
    key = secrets.token_urlsafe(24)
    env["NEXTBEST_API_KEYS"] = ";".join(k for k in (env.get("NEXTBEST_API_KEYS"), f"{key}:decide,feedback,admin") if k)
    _out(f"demo API key (decide, feedback, admin; valid while the demo runs): {key}")
    return key


def _demo(args, env, workers: int, key: str | None) -> int:
    """Start the service, show real answers of every endpoint, stop it."""
    import json

    import httpx
    import pandas as pd

    from nextbest.features.io import read_table

    url = f"http://{args.host}:{args.port}"
    proc = subprocess.Popen(serve_command(args.host, args.port), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        try:
            wait_ready(url, proc, workers)
        except RuntimeError as exc:
            raise RuntimeError(f"the service did not start ({exc}); run `nextbest serve {args.data_dir}` to see why") \
                from None
        ids = read_table(args.data_dir, "customers")["customer_id"].astype(str).tolist()[:4]
        now = pd.Timestamp.now(tz="UTC").floor("min").isoformat()

        auth = {"Authorization": f"Bearer {key}"} if key else {}
        heads = "".join(f" -H '{k}: {v}'" for k, v in auth.items())

        def show(method, path, body=None):
            r = httpx.request(method, f"{url}{path}", json=body, timeout=60, headers=auth)
            _out(f"\n$ curl -X {method} {url}{path}{heads}" + (f" -H 'Content-Type: application/json' -d "
                                                               f"'{json.dumps(body)}'" if body else ""))
            _out(f"-> {r.status_code}")
            return r

        _out(f"the decision service is up at {url} (OpenAPI: {url}/docs.json)")
        for cid in ids[:3]:
            d = show("POST", "/v1/decide", {"customer_id": cid, "now": now, "request_id": f"demo-{cid}-{now}"}).json()
            _out(f"   {d['action']:8} channel={d['channel']} send_at={d['send_at']} offer={d['offer']} "
                 f"propensity={d['propensity']:.3f} expected_value={d['expected_value']:+.3f} ({d['policy_version']})")
            for reason in d["reasons"]:
                _out(f"   - {reason}")
            sent = d if d["action"] == "send" else None
        d = show("POST", "/v1/decide", {"customer_id": "new-visitor-1", "now": now,
                                        "profile": {"timezone": "Europe/Berlin", "consent": {"email": True}}}).json()
        _out(f"   cold start: {d['action']} channel={d['channel']} send_at={d['send_at']}")
        d = show("POST", "/v1/decide", {"customer_id": ids[3], "now": now, "type": "transactional"}).json()
        _out(f"   transactional: {d['action']} on {d['channels']} at {d['send_at']}")
        b = show("POST", "/v1/decide/batch", {"requests": [{"customer_id": c, "now": now} for c in ids]}).json()
        _out("   " + ", ".join(f"{x['customer_id']}: {x['action']} {x['channel'] or ''}" for x in b["decisions"]))
        if sent is None:
            sent = next((x for x in b["decisions"] if x["action"] == "send"), None)
        if sent is not None:
            at = (pd.Timestamp(sent["send_at"]) + pd.Timedelta(hours=2)).isoformat()
            for event, value in (("opened", None), ("converted", 60.0)):
                f = show("POST", "/v1/feedback", {"decision_id": sent["decision_id"], "customer_id": sent["customer_id"],
                                                  "event": event, "ts": at, "value": value}).json()
                _out(f"   {f}")
        r = show("POST", "/v1/decide", {"customer_id": ids[0], "channels": ["fax"]})
        _out(f"   {r.json()}")
        metrics = [line for line in httpx.get(f"{url}/metrics", headers=auth).text.splitlines() if line.startswith("nextbest_decisions")]
        _out(f"\n$ curl{heads} {url}/metrics   (the decision counters; admin scope)")
        for line in metrics[:6]:
            _out("   " + line)
    finally:
        stop_tree(proc.pid)
    _out(f"\nstopped. Keep it running with: nextbest serve {args.data_dir}   (curl examples: README, 'Serving')")
    return 0


def cmd_log_export(args) -> int:
    """Write the base data directory plus the decision log as one data directory."""
    from nextbest.serving.decision_log import export_data_dir

    n_decisions, n_events = export_data_dir(args.data_dir, args.log_dir, args.out, as_of=args.as_of)
    _out(f"wrote {n_decisions:,} logged decisions and {n_events:,} events from {args.log_dir} "
         f"with {args.data_dir} to {args.out}" + (f" (as of {args.as_of})" if args.as_of else ""))
    return 0


def cmd_log_price(args) -> int:
    """The price of learning: per day, the money given up to exploration and to the control group; per
    action, how far the learner's posterior narrowed (``serving.price_report``)."""
    import argparse

    import pandas as pd

    from nextbest.cli_store import store_settings
    from nextbest.decision import registry
    from nextbest.serving.decision_log import read_records
    from nextbest.serving.price_report import daily, information
    from nextbest.serving.store import open_store

    settings = store_settings(argparse.Namespace(**{**vars(args), "data_dir": "."}))
    if not Path(settings.log_dir).is_dir():
        raise FileNotFoundError(f"decision log {settings.log_dir} does not exist")
    rows = read_records(settings.log_dir, "decisions")  # read once for both tables
    days = daily(rows, args.days)
    info = information(rows, open_store(settings.store_url), registry.load_champion().online)
    with pd.option_context("display.width", 200, "display.precision", 3, "display.max_columns", 20):
        _out(f"the price of learning in {settings.log_dir} (money: expected profit given up, by the policy's own "
             "values at decision time):")
        _out(days.to_string() if len(days) else "no decisions logged")
        _out("\nwhat it bought: the learner's posterior sd of each action's value at its average input, before any "
             f"feedback and now ({settings.store_url}):")
        _out(info.to_string() if len(info) else "no sends logged")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        days.to_csv(out / "price_daily.csv", index_label="day")
        info.to_csv(out / "price_information.csv", index_label="action")
        if len(days):
            _price_chart(days, info, out / "price.png")
        _out(f"\ntables and chart -> {out}")
    return 0


def _price_chart(days, info, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2)
    ax.bar(days.index, days["exploration_cost_per_1000"], label="exploration")
    ax.bar(days.index, days["control_cost_per_1000"], bottom=days["exploration_cost_per_1000"], label="control group")
    ax.set_ylabel("expected profit given up\nper 1,000 decisions")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend()
    if len(info):
        bx.barh(info.index, info["narrowed"] * 100.0)
        bx.set_xlabel("posterior sd narrowed, %")
    fig.tight_layout()
    fig.savefig(path)


def add_commands(top) -> None:
    s = top.add_parser("serve", help="start the decision service (BentoML) with the champion from the registry")
    s.add_argument("data_dir", help="customers and events the live features are computed from")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=3000)
    s.add_argument("--workers", type=int, help="worker processes (default: the config's serving.workers)")
    s.add_argument("--store", help="state store URL: sqlite:///path or redis://host:6379/0 "
                                   "(default: NEXTBEST_STORE_URL, else the config's serving.store_url)")
    s.add_argument("--log-dir", help="decision log directory (default: the config's serving.log_dir)")
    s.add_argument("--demo", action="store_true", help="start, show one answer of every endpoint, stop")
    s.set_defaults(func=cmd_serve)

    lg = top.add_parser("log", help="the service's decision log").add_subparsers(dest="sub", required=True)
    e = lg.add_parser("export", help="write a data directory = DATA_DIR + the decision log (for `nextbest train` "
                                     "and `nextbest evaluate`)")
    e.add_argument("data_dir")
    e.add_argument("--log-dir", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--as-of", help="export time (UTC; default: now): sends planned for later and feedback dated "
                                   "later wait for the next export, so the export always validates")
    e.set_defaults(func=cmd_log_export)
    pr = lg.add_parser("price", help="the price of learning: money given up per day to exploration and the control "
                                      "group, and how far each action's posterior narrowed")
    pr.add_argument("--log-dir", help="decision log directory (default: the config's serving.log_dir)")
    pr.add_argument("--store", help="state store URL (default: NEXTBEST_STORE_URL, else the config's serving.store_url)")
    pr.add_argument("--days", type=int, help="only the last N days")
    pr.add_argument("--out", help="also write the tables and a chart to this directory")
    pr.set_defaults(func=cmd_log_price)
