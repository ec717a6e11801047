"""``nextbest serve`` (the decision service) and ``nextbest log export`` (the decision log as data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nextbest.cli import _out


def serve_command(host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line for the service."""
    return [sys.executable, "-m", "bentoml", "serve", "serving.service:DecisionService", "--host", host,
            "--port", str(port), "--working-dir", str(Path(__file__).resolve().parent.parent)]


def serve_env(args) -> dict:
    """Environment for the worker processes (settings travel as variables; see ``serving.settings``)."""
    from training import registry

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
    from serving.settings import ServeSettings
    from training import registry

    if not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"data directory {args.data_dir} does not exist")
    env = serve_env(args)
    settings = ServeSettings.from_env(env)  # fail here, with a message, rather than in every worker
    if registry.champion_version() is None:
        raise LookupError("no champion to serve: run `nextbest train DATA --promote` (or `nextbest promote VERSION`)")
    _out(f"serving champion version {registry.champion_version()} on http://{args.host}:{args.port} "
         f"(store {settings.store_url}, decision log {settings.log_dir}); Ctrl-C stops it")
    return subprocess.call(serve_command(args.host, args.port), env=env)


def cmd_log_export(args) -> int:
    """Write the base data directory plus the decision log as one data directory."""
    import pandas as pd

    from features.io import load_dataset, read_table, write_table
    from serving.decision_log import read_log

    customers, events = load_dataset(args.data_dir)
    decisions, logged = read_log(args.log_dir)
    if decisions.empty:
        raise ValueError(f"no decisions in {args.log_dir}")
    try:
        base = read_table(args.data_dir, "logging_decisions")
    except FileNotFoundError:
        base = decisions.iloc[:0]
    unknown = sorted(set(decisions["customer_id"]) - set(customers["customer_id"].astype(str)))
    if unknown:  # cold-start customers: add them without consent or attributes (the log has none)
        customers = pd.concat([customers, pd.DataFrame({"customer_id": unknown})], ignore_index=True)
    out = Path(args.out)
    write_table(customers, out, "customers")
    write_table(pd.concat([events, logged[events.columns.intersection(logged.columns)]], ignore_index=True)
                .sort_values("ts", kind="stable"), out, "events")
    write_table(pd.concat([base, decisions[base.columns.intersection(decisions.columns)]], ignore_index=True), out,
                "logging_decisions")
    _out(f"wrote {len(decisions):,} logged decisions and {len(logged):,} events from {args.log_dir} "
         f"with {args.data_dir} to {out}")
    return 0


def add_commands(top) -> None:
    s = top.add_parser("serve", help="start the decision service (BentoML) with the champion from the registry")
    s.add_argument("data_dir", help="customers and events the live features are computed from")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=3000)
    s.add_argument("--workers", type=int, help="worker processes (default: the config's serving.workers)")
    s.add_argument("--store", help="state store URL: sqlite:///path or redis://host:6379/0 "
                                   "(default: NEXTBEST_STORE_URL, else the config's serving.store_url)")
    s.add_argument("--log-dir", help="decision log directory (default: the config's serving.log_dir)")
    s.set_defaults(func=cmd_serve)

    lg = top.add_parser("log", help="the service's decision log").add_subparsers(dest="sub", required=True)
    e = lg.add_parser("export", help="write a data directory = DATA_DIR + the decision log (for `nextbest train` "
                                     "and `nextbest evaluate`)")
    e.add_argument("data_dir")
    e.add_argument("--log-dir", required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_log_export)
