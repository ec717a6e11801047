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
- **The first slot is the next one**: a (re)started service waits a whole period boundary before
  its first retrain instead of retraining at every start.
- The command's output goes to ``retrain/scheduled-<UTC time>.log`` under ``NEXTBEST_HOME``; the
  outcome (promoted, kept champion, failed) is logged, counted in ``nextbest_retrains_total`` and
  kept in the store (namespace :data:`NS`, key ``last``). The leases and the outcome are not
  derived from the decision log, so ``nextbest store rebuild`` does not restore them; a lost
  lease cannot rerun a slot, because each engine remembers the last slot it saw.
"""

from __future__ import annotations

import json
import logging
import os
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

    def command(self) -> list[str]:
        cfg = ["--config", self.config_path] if self.config_path else []
        return [sys.executable, "-m", "nextbest", *cfg, "retrain", self.data_dir, "--log", self.log_dir]

    def run_due(self) -> str | None:
        """Run the retrain if a new slot began and this engine claimed it; its outcome, else None."""
        slot = self.slot()
        if slot <= self._last_slot:
            return None
        self._last_slot = slot
        owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "claimed_at": self.clock()})
        if not self.store.put_new(NS, f"slot:{slot}", owner, ttl_s=2 * self.period_s + 3600):
            return None  # another worker or replica runs this one
        return self.run()

    def run(self) -> str:
        """Run the command now (blocking this thread); its outcome."""
        started = self.clock()
        out_dir = self.home / "retrain"
        out_dir.mkdir(parents=True, exist_ok=True)
        out_path = out_dir / f"scheduled-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(started))}.log"
        log.info("scheduled retrain: %s (output: %s)", " ".join(self.command()), out_path)
        with open(out_path, "w") as out:
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}  # not a worker
            self._proc = proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=env)
            try:
                os.setpriority(os.PRIO_PROCESS, proc.pid, NICENESS)
            except OSError:  # it may have finished already, or the platform refuses: run it as is
                pass
            code = proc.wait()
            self._proc = None
        text = out_path.read_text(errors="replace")
        outcome = outcome_of(code, text)
        decision = next((ln for ln in reversed(text.splitlines()) if ln.startswith("decision: ")), "")
        status = {"outcome": outcome, "returncode": code, "started_at": started, "finished_at": self.clock(),
                  "output": str(out_path), "decision": decision}
        self.store.put(NS, "last", json.dumps(status))
        RETRAINS.labels(outcome).inc()
        if outcome == "failed":
            log.error("scheduled retrain failed (exit code %s); its output: %s", code, out_path)
        else:
            log.info("scheduled retrain: %s (%.0f s)", decision, status["finished_at"] - started)
        return outcome


    def stop(self) -> None:
        """End a retrain still running (the service is stopping); it is logged as failed."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()


def last_status(store: Store) -> dict | None:
    """The last scheduled retrain's outcome as the store keeps it, or None."""
    raw = store.get(NS, "last")
    return None if raw is None else json.loads(raw)
