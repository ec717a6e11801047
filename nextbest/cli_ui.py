"""``nextbest ui``: the MLflow UI on the project's store, with the links a marketer needs.

Starts ``mlflow server`` on the project's SQLite store (one worker, no job runner: it is one
person's browser) and prints, once it answers, the pages to open: the champion's training run
(and the newest version's, if different), its uplift report, and the compare view of the two
newest versions. Ctrl-C stops it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

from nextbest.cli import _out

log = logging.getLogger(__name__)

# A one-user UI: MLflow's job runner and telemetry are off (both start extra processes or calls)
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
# MLflow 3's UI opens in its GenAI view unless the page asks for the model-training one (the
# `workflowType` parameter beats what the browser remembers): every printed link asks for it
ML_VIEW = "?workflowType=machine_learning"


def server_command(store_uri: str, host: str, port: int) -> list[str]:
    exe = Path(sys.executable).parent / "mlflow"
    return [str(exe) if exe.exists() else "mlflow", "server", "--backend-store-uri", store_uri, "--host", host,
            "--port", str(port), "--workers", "1"]


def run_links(base_url: str) -> list[tuple[str, str]]:
    """``(label, url)`` of the pages to open, champion first; empty without a registered version.

    A version whose run is gone (``mlflow gc``) is left out with a log line.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from nextbest.decision import registry

    registry.setup()
    client = MlflowClient()
    experiments, registered = {}, registry.versions()  # newest first
    for v in registered:
        try:
            experiments[v["version"]] = client.get_run(v["run_id"]).info.experiment_id
        except MlflowException as exc:
            log.warning("version %s: its run %s is gone (%s)", v["version"], v["run_id"], exc)
    versions = [v for v in registered if v["version"] in experiments]
    if not versions:
        return []
    champion = registry.champion_version()
    by_number = {v["version"]: v for v in versions}
    links = []
    for number in dict.fromkeys(n for n in (champion, versions[0]["version"]) if n in by_number):
        v = by_number[number]
        run = f"{base_url}/#/experiments/{experiments[number]}/runs/{v['run_id']}"
        who = f"version {number}" + (" (champion)" if number == champion else " (newest)")
        links += [(f"training run of {who}", run + ML_VIEW),
                  (f"uplift report of {who}", f"{run}/artifacts/report/index.html{ML_VIEW}")]
    if len(versions) >= 2:
        older, newer = versions[1], versions[0]
        query = urllib.parse.urlencode({"runs": json.dumps([older["run_id"], newer["run_id"]]),
                                        "experiments": json.dumps(sorted({experiments[older["version"]],
                                                                          experiments[newer["version"]]}))})
        links.append((f"versions {older['version']} and {newer['version']} side by side",
                      f"{base_url}/#/compare-runs?{query}&{ML_VIEW[1:]}"))
    return links


def _print_links(base_url: str) -> None:
    links = run_links(base_url)
    if not links:
        _out("no registered version yet: run `nextbest train DATA` first")
    for label, url in links:
        _out(f"  {label}: {url}")
    sys.stdout.flush()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _stop_on_hangup(signum, frame):  # a closed terminal or a `kill` must stop the server too
    raise SystemExit(128 + signum)


def cmd_ui(args) -> int:
    from nextbest.cli_serve import stop_tree, wait_ready
    from nextbest.decision import registry

    uri = registry.tracking_uri()
    if uri.startswith(("http://", "https://")):
        _out(f"MLflow runs on the server at {uri}:")
        _print_links(uri.rstrip("/"))
        return 0
    if not uri.startswith("sqlite:"):
        _out(f"MLflow tracking is at {uri}: start `mlflow server --backend-store-uri {uri}` to browse it")
        return 0
    if not _port_free(args.host, args.port):
        raise ValueError(f"port {args.port} on {args.host} is in use (another MLflow UI?): pass --port")
    base = f"http://{args.host}:{args.port}"
    proc = subprocess.Popen(server_command(uri, args.host, args.port), env={**os.environ, **SERVER_ENV},
                            cwd=registry.project_dir(), start_new_session=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_hangup)
    try:
        try:
            wait_ready(base, proc, path="/health")
        except RuntimeError as exc:
            raise ValueError(f"mlflow server: {exc} (its log is above)") from None
        _out(f"MLflow UI on {uri} at {base} (Ctrl-C stops it)")
        _print_links(base)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_tree(proc.pid)


def add_commands(top) -> None:
    u = top.add_parser("ui", help="start the MLflow UI on the project's store and print the training run, "
                                  "uplift report and compare pages to open")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=cmd_ui)
