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


def read_log(log_dir: str | Path, as_of=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The log as the data contract's ``logging_decisions`` and ``events`` tables.

    Decisions answered from an idempotency key appear once; feedback repeated (a retried
    request) counts once, keyed by ``(decision_id, event, ts)``. Transactional messages are
    left out (they are not marketing decisions); an order reported on a suppressed decision is
    an order without a message.

    Parameters
    ----------
    log_dir : path
    as_of : timestamp, optional
        What was known at this time (UTC; naive = UTC): a decision taken later is left out, a
        planned send (``send_at`` after ``as_of``) is left out with its decision until it is
        due, and feedback dated after ``as_of`` waits. ``None`` keeps everything.

    Returns
    -------
    decisions : DataFrame (n_decisions, 9)
    events : DataFrame (n_events, 8)
    """
    dec = pd.DataFrame(read_records(log_dir, "decisions"))
    fb = pd.DataFrame(read_records(log_dir, "feedback"))
    if dec.empty:
        return _empty_decisions(), _empty_events()
    dec = dec.drop_duplicates("decision_id")
    ts = pd.to_datetime(dec["now"], utc=True, format="ISO8601")
    send_at = pd.to_datetime(dec["send_at"], utc=True, format="ISO8601")
    if as_of is not None:
        as_of = _utc(as_of)
        due = (ts <= as_of) & (send_at.isna() | (send_at <= as_of))
        if not due.all():
            log.info("as of %s: %d decision(s) taken later or with a send not yet due wait for a later export",
                     as_of, int((~due).sum()))
        dec, ts, send_at = dec[due.to_numpy()], ts[due], send_at[due]
        if not fb.empty:
            fb_ts = pd.to_datetime(fb["ts"], utc=True, format="ISO8601")
            if (fb_ts > as_of).any():
                log.info("as of %s: %d feedback event(s) dated later wait for a later export", as_of,
                         int((fb_ts > as_of).sum()))
            fb = fb[(fb_ts <= as_of).to_numpy()]
    marketing = dec["type"] == "marketing"
    decisions = pd.DataFrame({
        "customer_id": dec["customer_id"].astype(str), "ts": ts, "action": dec["action"],
        "channel": dec["channel"], "local_hour": dec["local_hour"].fillna(-1).astype(int), "offer": dec["offer"],
        "propensity": dec["propensity"].astype(float), "message_id": dec["decision_id"],
        "policy_version": dec["policy_version"],
    })[marketing.to_numpy()].reset_index(drop=True)
    is_send = ((dec["action"] == "send") & marketing).to_numpy()  # service messages are not marketing history
    sends = dec[is_send]
    sent = pd.DataFrame({
        "customer_id": sends["customer_id"].astype(str), "ts": send_at[is_send],
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


def _utc(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _empty_decisions() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in ("customer_id", "ts", "action", "channel", "local_hour", "offer",
                                         "propensity", "message_id", "policy_version")})


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in ("customer_id", "ts", "event", "message_id", "channel", "offer", "value",
                                         "propensity")})


def export_data_dir(data_dir: str | Path, log_dir: str | Path, out: str | Path, as_of=None) -> tuple[int, int]:
    """Write ``data_dir`` plus the decision log in ``log_dir`` as one data directory ``out``.

    What ``nextbest log export``, ``nextbest retrain`` and the evaluation notebook call;
    ``train`` and ``evaluate`` read the result. The export holds what was known at ``as_of``
    (default: now; see :func:`read_log`), so it always validates: a planned send appears once it
    is due, feedback dated later waits for the next export. ``data_dir`` is copied as it is.
    Returns the numbers of decisions and events taken from the log.
    """
    from nextbest.features.io import load_dataset, read_table, write_table

    now = pd.Timestamp.now(tz="UTC")
    as_of = now if as_of is None else _utc(as_of)
    if as_of > now:
        raise ValueError(f"--as-of {as_of} is later than the clock ({now}): an export cannot hold what has not "
                         "happened yet")
    customers, events = load_dataset(data_dir)
    decisions, logged = read_log(log_dir, as_of)
    if decisions.empty:
        raise ValueError(f"no marketing decision in {log_dir} taken (and, for a send, due) by {as_of}")
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
