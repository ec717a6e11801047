"""The decision log: every decision and every feedback event, appended durably as JSON lines.

Write-ahead: the service appends (write + flush + fsync) before it answers, so an acknowledged
decision or feedback event survives a killed process (and, with the fsync, a lost machine).
Files rotate by day and size: ``{log_dir}/{YYYY-MM-DD}/{decisions|feedback}-{worker}-{seq}.jsonl``;
each worker process writes its own files, so lines of two workers never interleave. A line cut
short by a crash mid-write (never acknowledged) is skipped by the reader.

:func:`read_log` turns the log into the data contract's tables (``logging_decisions`` and
``events``: a ``sent`` at ``send_at`` for each marketing send plus the feedback events), which
the off-policy helper (``training.offpolicy``) and ``nextbest train`` read; ``nextbest log export``
writes them into a data directory.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

KINDS = ("decisions", "feedback")


class DecisionLog:
    """Append-only JSONL writer for one worker process.

    Parameters
    ----------
    log_dir : path
    max_bytes : int
        Start a new file after this size.
    fsync : bool
        fsync after every append (True: survives a machine crash; a killed process loses
        nothing either way once ``write`` returned).
    """

    def __init__(self, log_dir: str | Path, max_bytes: int = 64 << 20, fsync: bool = True):
        self.dir = Path(log_dir)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.worker = f"{os.getpid()}-{datetime.now(timezone.utc):%H%M%S%f}"
        self._files: dict[str, tuple] = {}  # kind -> (day, seq, file)
        self._lock = threading.Lock()

    def _file(self, kind: str):
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        cur = self._files.get(kind)
        if cur and cur[0] == day and cur[2].tell() < self.max_bytes:
            return cur[2]
        seq = cur[1] + 1 if cur and cur[0] == day else 0
        if cur:
            cur[2].close()
        folder = self.dir / day
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / f"{kind}-{self.worker}-{seq:04d}.jsonl", "ab")
        self._files[kind] = (day, seq, f)
        return f

    def append(self, kind: str, records: list[dict]) -> None:
        """Append records and make them durable before returning."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if not records:
            return
        data = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records).encode()
        with self._lock:
            f = self._file(kind)
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    def close(self) -> None:
        with self._lock:
            for _, _, f in self._files.values():
                f.close()
            self._files.clear()


def read_records(log_dir: str | Path, kind: str) -> list[dict]:
    """Every complete record of a kind, in file order."""
    out = []
    for path in sorted(Path(log_dir).glob(f"*/{kind}-*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    log.warning("%s: skipping a line cut short (a crash mid-write; it was never acknowledged)", path)
                    continue
                out.append(json.loads(line))
    return out


def read_log(log_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The log as the data contract's ``logging_decisions`` and ``events`` tables.

    Decisions answered from an idempotency key appear once; feedback repeated (a retried
    request) counts once, keyed by ``(decision_id, event, ts)``. Transactional messages are
    left out (they are not marketing decisions); an order reported on a suppressed decision is
    an order without a message.
    """
    dec = pd.DataFrame(read_records(log_dir, "decisions"))
    fb = pd.DataFrame(read_records(log_dir, "feedback"))
    if dec.empty:
        return _empty_decisions(), _empty_events()
    dec = dec.drop_duplicates("decision_id")
    ts = pd.to_datetime(dec["now"], utc=True, format="ISO8601")
    marketing = dec["type"] == "marketing"
    decisions = pd.DataFrame({
        "customer_id": dec["customer_id"].astype(str), "ts": ts, "action": dec["action"],
        "channel": dec["channel"], "local_hour": dec["local_hour"].fillna(-1).astype(int), "offer": dec["offer"],
        "propensity": dec["propensity"].astype(float), "message_id": dec["decision_id"],
        "policy_version": dec["policy_version"],
    })[marketing.to_numpy()].reset_index(drop=True)
    sends = dec[(dec["action"] == "send") & marketing]  # service messages are not marketing history
    sent = pd.DataFrame({
        "customer_id": sends["customer_id"].astype(str), "ts": pd.to_datetime(sends["send_at"], utc=True, format="ISO8601"),
        "event": "sent", "message_id": sends["decision_id"], "channel": sends["channel"],
        "offer": sends["offer"].fillna("none"), "value": float("nan"), "propensity": sends["propensity"].astype(float),
    })
    frames = [sent]
    if not fb.empty:
        fb = fb.drop_duplicates(["decision_id", "event", "ts"])
        fb = fb[fb["decision_id"].isin(set(sends["decision_id"])) | fb["channel"].isna()]
        frames.append(pd.DataFrame({
            "customer_id": fb["customer_id"].astype(str), "ts": pd.to_datetime(fb["ts"], utc=True, format="ISO8601"),
            "event": fb["event"], "message_id": fb["decision_id"].where(fb["channel"].notna()),
            "channel": fb["channel"], "offer": fb["offer"],
            "value": pd.to_numeric(fb["value"]), "propensity": float("nan"),
        }))
    events = pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable").reset_index(drop=True)
    return decisions, events


def _empty_decisions() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in ("customer_id", "ts", "action", "channel", "local_hour", "offer",
                                         "propensity", "message_id", "policy_version")})


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in ("customer_id", "ts", "event", "message_id", "channel", "offer", "value",
                                         "propensity")})


def export_data_dir(data_dir: str | Path, log_dir: str | Path, out: str | Path) -> tuple[int, int]:
    """Write ``data_dir`` plus the decision log in ``log_dir`` as one data directory ``out``.

    What ``nextbest log export`` and the evaluation notebook call; ``train`` and ``evaluate``
    read the result. Returns the numbers of decisions and events taken from the log.
    """
    from nextbest.features.io import load_dataset, read_table, write_table

    customers, events = load_dataset(data_dir)
    decisions, logged = read_log(log_dir)
    if decisions.empty:
        raise ValueError(f"no decisions in {log_dir}")
    try:
        base = read_table(data_dir, "logging_decisions")
    except FileNotFoundError:
        base = decisions.iloc[:0]
    unknown = sorted(set(decisions["customer_id"]) - set(customers["customer_id"].astype(str)))
    if unknown:  # cold-start customers: add them without consent or attributes (the log has none)
        customers = pd.concat([customers, pd.DataFrame({"customer_id": unknown})], ignore_index=True)
    out = Path(out)
    write_table(customers, out, "customers")
    write_table(pd.concat([events, logged[events.columns.intersection(logged.columns)]], ignore_index=True)
                .sort_values("ts", kind="stable"), out, "events")
    write_table(pd.concat([base, decisions[base.columns.intersection(decisions.columns)]], ignore_index=True), out,
                "logging_decisions")
    return len(decisions), len(logged)
