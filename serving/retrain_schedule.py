"""Retraining on a schedule, inside the service (``retrain.schedule_hours``; 0, the default, is off).

Every ``schedule_hours`` (slots counted from the Unix epoch, so every worker and every replica
agrees on them), one engine runs ``nextbest retrain DATA --log LOG``: the history joined with the
service's own decision log trains a candidate, which is judged off-policy against the champion
and promoted only if it passes the gate (``training.retrain``). A promoted candidate reaches
every worker through the champion hot swap (``serving.background.newer_champion``), as a
promotion by hand does.

Decisions:

- **A subprocess, not an import.** Training needs several GiB and minutes of CPU; in a child
  process it cannot stall or grow the engine, it runs at a lower CPU priority
  (:data:`NICENESS`), and ``serving`` keeps not importing ``training`` (tests/test_layers.py).
- **One run per slot across workers and replicas**: the engine that first writes the slot's key
  into the shared store (``Store.put_new``, atomic) runs it; the others skip the slot.
- **Never two at once**: the running engine also holds a ``running`` lease (renewed every
  :data:`RENEW_S`, expiring :data:`RUNNING_TTL_S` after an engine that died); a slot that begins
  while a retrain runs is skipped, so two candidates are never judged against the same champion.
  ``training.retrain`` also refuses to promote a candidate whose champion changed meanwhile.
- **Stopped with the engine**: the engine process stops the child on SIGTERM and when its
  worker is gone (``serving.engine_process``).
- **The first slot is the next one**: a (re)started service waits a whole period boundary before
  its first retrain instead of retraining at every start.
- The command's output goes to ``retrain/scheduled-<UTC time>.log`` under ``NEXTBEST_HOME``, its
  export (a copy of the history plus the log) to ``retrain/scheduled-<UTC time>/``, of which the
  last :data:`KEEP_EXPORTS` are kept; the
  outcome (promoted, kept champion, failed) is logged, counted in ``nextbest_retrains_total`` and
  kept in the store (namespace :data:`NS`, key ``last``). The leases and the outcome are not
  derived from the decision log, so ``nextbest store rebuild`` does not restore them; a lost
  lease cannot rerun a slot, because each engine remembers the last slot it saw.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import Counter

from nextbest.serving.store import Store

log = logging.getLogger(__name__)

NS = "retrain"          # store namespace of the slot leases and the last outcome
NICENESS = 10           # the retrain process's CPU priority below the service's
CHECK_EVERY_S = 60.0    # how often an engine looks whether a new slot began (shorter periods: a quarter)
RUNNING_TTL_S = 600.0   # the "a retrain is running" lease expires this long after its last renewal
RENEW_S = 60.0          # ... which the running engine renews this often
KEEP_EXPORTS = 3        # exports (history + log copies) of this many last scheduled runs are kept
RETRAINS = Counter("nextbest_retrains", "Scheduled retrains by outcome", ["outcome"])


def outcome_of(returncode: int, output: str) -> str:
    """``promoted``, ``kept`` or ``failed``, from the command's exit code and its ``decision:`` line."""
    if returncode != 0:
        return "failed"
    lines = [line for line in output.splitlines() if line.startswith("decision: ")]
    if not lines:
        return "failed"
    return "promoted" if lines[-1].startswith("decision: promoted") else "kept"


class ScheduledRetrain:
    """Runs the retrain command once per slot of ``hours`` (see the module docstring).

    Parameters
    ----------
    store : Store
        The shared store (slot leases, the last outcome).
    hours : float
        The schedule, > 0.
    data_dir, log_dir : str
        The service's history and its decision log.
    home : path
        ``NEXTBEST_HOME``: where the command's output is written.
    config_path : str, optional
        The deployment's YAML (``NEXTBEST_CONFIG``).
    clock : callable
        Seconds since the epoch (tests pass their own).
    """

    def __init__(self, store: Store, hours: float, data_dir: str, log_dir: str, home, config_path: str | None = None,
                 clock=time.time):
        if hours <= 0:
            raise ValueError("retrain.schedule_hours must be > 0 to schedule retraining")
        self.store, self.period_s = store, hours * 3600.0
        self.data_dir, self.log_dir, self.home, self.config_path = data_dir, log_dir, Path(home), config_path
        self.clock = clock
        self._last_slot = self.slot()  # the first run is at the next slot boundary
        self._proc: subprocess.Popen | None = None

    @property
    def check_every_s(self) -> float:
        return min(CHECK_EVERY_S, self.period_s / 4)

    def slot(self) -> int:
        return int(self.clock() // self.period_s)

    def command(self, out: Path | None = None) -> list[str]:
        nice = ["nice", "-n", str(NICENESS)] if shutil.which("nice") else []  # every thread of the child
        cfg = ["--config", self.config_path] if self.config_path else []
        export = ["--out", str(out)] if out is not None else []
        return [*nice, sys.executable, "-m", "nextbest", *cfg, "retrain", self.data_dir, "--log", self.log_dir,
                *export]

    def run_due(self) -> str | None:
        """Run the retrain if a new slot began, this engine claimed it and no retrain is still
        running anywhere; its outcome, else None."""
        slot = self.slot()
        if slot <= self._last_slot:
            return None
        owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "slot": slot, "claimed_at": self.clock()})
        claimed = self.store.put_new(NS, f"slot:{slot}", owner, ttl_s=2 * self.period_s + 3600)
        self._last_slot = slot  # only once the store answered: an outage retries the slot
        if not claimed:
            return None  # another worker or replica has this one
        if not self.store.put_new(NS, "running", owner, ttl_s=RUNNING_TTL_S):
            log.warning("scheduled retrain skipped: the previous one is still running (%s)", self.store.get(NS, "running"))
            return None
        try:
            return self.run(owner)
        finally:
            self.store.delete(NS, ["running"])
            self._last_slot = max(self._last_slot, self.slot())  # slots that began while it ran are skipped

    def run(self, owner: str = "") -> str:
        """Run the command now (blocking this thread, renewing the ``running`` lease); its outcome.
        Whatever goes wrong is recorded as ``failed``, never raised."""
        started = self.clock()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))
        out_dir = self.home / "retrain"
        out_path = out_dir / f"scheduled-{stamp}.log"
        code: int | None = None
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}  # not a worker
            cmd = self.command(out_dir / f"scheduled-{stamp}")
            log.info("scheduled retrain: %s (output: %s)", " ".join(cmd), out_path)
            with open(out_path, "w") as out:
                self._proc = proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                     stdin=subprocess.DEVNULL, env=env)
                while True:
                    try:
                        code = proc.wait(timeout=RENEW_S)
                        break
                    except subprocess.TimeoutExpired:
                        self.store.put(NS, "running", owner, ttl_s=RUNNING_TTL_S)
            self._proc = None
            text = out_path.read_text(errors="replace")
        except Exception:  # noqa: BLE001 - the schedule goes on; the outcome says it failed
            log.exception("scheduled retrain could not run")
            text = ""
        outcome = outcome_of(code if code is not None else -1, text)
        decision = next((ln for ln in reversed(text.splitlines()) if ln.startswith("decision: ")), "")
        status = {"outcome": outcome, "returncode": code, "started_at": started, "finished_at": self.clock(),
                  "output": str(out_path), "decision": decision}
        RETRAINS.labels(outcome).inc()
        try:
            self.store.put(NS, "last", json.dumps(status))
        except Exception as exc:  # noqa: BLE001 - the log line below still says what happened
            log.warning("could not record the scheduled retrain's outcome in the store: %s", exc)
        self._prune(out_dir)
        if outcome == "failed":
            log.error("scheduled retrain failed (exit code %s); its output: %s", code, out_path)
        else:
            log.info("scheduled retrain: %s (%.0f s)", decision, status["finished_at"] - started)
        return outcome

    @staticmethod
    def _prune(out_dir: Path) -> None:
        """Keep the exports of the last :data:`KEEP_EXPORTS` scheduled runs (each is a copy of the
        history plus the log); the older ones go. The output logs stay."""
        exports = sorted(p for p in out_dir.glob("scheduled-*") if p.is_dir())
        for old in exports[:-KEEP_EXPORTS]:
            shutil.rmtree(old, ignore_errors=True)

    def stop(self, wait_s: float = 10.0) -> None:
        """End a retrain still running (the engine is stopping): terminate, then kill."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()


def last_status(store: Store) -> dict | None:
    """The last scheduled retrain's outcome as the store keeps it, or None."""
    raw = store.get(NS, "last")
    return None if raw is None else json.loads(raw)
