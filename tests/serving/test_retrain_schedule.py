"""The scheduled retrain's slots and leases (``serving.retrain_schedule``), on a real SQLite store.

Two engines (two workers, or two replicas) share one store and one clock; the command they run
is replaced by a small Python process that prints what ``nextbest retrain`` prints, so that the
slots can be stepped through in milliseconds. The real command runs inside a real service in
``tests/serving/test_export.py``.
"""

from __future__ import annotations

import json
import sys

import pytest

from nextbest.serving.retrain_schedule import ScheduledRetrain, last_status, outcome_of
from nextbest.serving.store import open_store


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Printing(ScheduledRetrain):
    """The schedule with a command that prints ``lines`` and exits with ``code``."""

    lines = ["exported 3 served decisions", "decision: kept champion; keep the champion: ..."]
    code = 0

    def command(self, out=None):
        script = "import sys; print(%r); sys.exit(%d)" % ("\n".join(self.lines), self.code)
        if out is not None:  # the real command exports there
            script = f"import os; os.makedirs({str(out)!r}); " + script
        return [sys.executable, "-c", script]


def test_one_run_per_slot_across_engines_and_none_at_start(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    clock = Clock(1_000_000 * 3600.0 + 10.0)  # 10 s into an hour slot
    a = Printing(store, 1.0, "data", "log", tmp_path / "home", clock=clock)
    b = Printing(store, 1.0, "data", "log", tmp_path / "home", clock=clock)
    assert a.run_due() is None and b.run_due() is None  # the slot the service started in is skipped
    assert last_status(store) is None
    clock.t += 3600.0  # the next slot begins
    outcomes = [a.run_due(), b.run_due()]
    assert sorted(outcomes, key=str) == [None, "kept"]  # exactly one of the two ran it
    status = last_status(store)
    assert status["outcome"] == "kept" and status["returncode"] == 0
    assert status["decision"].startswith("decision: kept champion")
    output = (tmp_path / "home" / "retrain").glob("scheduled-*.log")
    assert [p.read_text().splitlines()[0] for p in output] == ["exported 3 served decisions"]
    assert a.run_due() is None and b.run_due() is None  # same slot: nothing more
    clock.t += 3600.0
    assert sorted([b.run_due(), a.run_due()], key=str) == [None, "kept"]
    leases = [k for k in store.dump()["kv"].get("retrain", {}) if k.startswith("slot:")]
    assert len(leases) == 2


def test_outcomes_promoted_and_failed(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    clock = Clock(7200.0)
    s = Printing(store, 0.5, "data", "log", tmp_path, clock=clock)
    s.lines = ["decision: promoted; promote: the candidate's paired DR gain is +0.1"]
    assert s.run() == "promoted" and last_status(store)["outcome"] == "promoted"
    s.code = 3
    clock.t += 60.0
    assert s.run() == "failed"
    assert json.loads(json.dumps(last_status(store)))["returncode"] == 3
    assert outcome_of(0, "no decision line") == "failed"
    assert outcome_of(0, "decision: passed, not promoted (--no-promote); ...") == "kept"
    assert s.check_every_s == 60.0  # at most a minute late
    assert Printing(store, 0.001, "data", "log", tmp_path, clock=clock).check_every_s == 0.9  # a quarter period


def test_the_real_command_line(tmp_path):
    s = ScheduledRetrain(open_store(f"sqlite:///{tmp_path / 'state.db'}"), 24, "/d", "/l", tmp_path, "/c.yaml")
    cmd = s.command(tmp_path / "x")
    assert cmd[:3] == ["nice", "-n", "10"] and cmd[3] == sys.executable  # every thread of it at low priority
    assert cmd[4:] == ["-m", "nextbest", "--config", "/c.yaml", "retrain", "/d", "--log", "/l", "--out", str(tmp_path / "x")]
    assert "--config" not in ScheduledRetrain(s.store, 24, "/d", "/l", tmp_path).command()


def test_never_two_at_once_and_an_outage_retries_the_slot(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    clock = Clock(3600.0 * 10)
    a = Printing(store, 1.0, "data", "log", tmp_path, clock=clock)
    store.put_new("retrain", "running", "another engine's retrain", ttl_s=600)  # still running elsewhere
    clock.t += 3600.0
    assert a.run_due() is None and last_status(store) is None  # this slot is skipped, not queued
    store.delete("retrain", ["running"])
    assert a.run_due() is None  # the slot was claimed: it is not run late
    clock.t += 3600.0
    assert a.run_due() == "kept" and store.get("retrain", "running") is None  # the lease is released

    class Down:  # the store does not answer at the slot's start
        def put_new(self, *args, **kwargs):
            raise ConnectionError("store down")

    b = Printing(store, 1.0, "data", "log", tmp_path, clock=clock)
    clock.t += 3600.0
    b.store = Down()
    with pytest.raises(ConnectionError):
        b.run_due()
    b.store = store
    assert b.run_due() == "kept"  # the same slot, once the store is back


def test_a_run_that_cannot_start_is_recorded_as_failed_and_old_exports_go(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    clock = Clock(1_700_000_000.0)
    s = Printing(store, 1.0, "data", "log", tmp_path, clock=clock)
    for k in range(5):
        clock.t += 3600.0
        assert s.run() == "kept"
    exports = sorted(p.name for p in (tmp_path / "retrain").iterdir() if p.is_dir())
    logs = sorted(p.name for p in (tmp_path / "retrain").glob("*.log"))
    assert len(exports) == 3 and len(logs) == 5 and exports == [n[:-4] for n in logs[2:]]  # the last 3 kept

    class Broken(Printing):
        def command(self, out=None):
            return ["/nonexistent/python", "-c", "pass"]

    broken = Broken(store, 1.0, "data", "log", tmp_path, clock=clock)
    clock.t += 3600.0
    assert broken.run() == "failed" and last_status(store)["returncode"] is None
