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

Void: a decision is in the log only if its caller got it, or the log says it is void. The engine
appends before it writes the store and answers; when that fails after the append, it appends a
``void`` record naming the decision ids (``{log_dir}/{day}/void-{worker}-{seq}.jsonl``), and
readers (:func:`read_records`, :func:`read_log`, the export, training, rebuilding the store)
skip voided decisions and their feedback. An append that fails (a full disk: :class:`LogFull`)
is cut back to where it began, so no partial line is left for a later line to run into.
Every line carries ``logged_at`` (epoch seconds when it was appended), the order a rebuild
replays the log in.

Epoch: ``{log_dir}/EPOCH`` holds the id of this log, also written in the store it feeds
(``meta:epoch``); a store whose epoch differs, or is missing while the log holds lines, was not
derived from this log (``serving.rebuild``).
"""

from __future__ import annotations

import json
import logging
import os
import errno
import fcntl
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from nextbest.features.behaviour import BEHAVIOUR_EVENTS

log = logging.getLogger(__name__)

KINDS = ("decisions", "feedback", "events", "renders", "void")  # events: other senders' (serving.events);
# renders: offers shown at open time (serving.render)
EPOCH_FILE = "EPOCH"



class LogFull(OSError):
    """The decision log could not be written (no space left, or another I/O error): nothing of
    the call was logged and nothing was answered; retry once the disk has room (507)."""


def read_epoch(log_dir: str | Path) -> str | None:
    """The log's epoch id, or None if it has none yet."""
    try:
        return (Path(log_dir) / EPOCH_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def write_epoch(log_dir: str | Path, epoch: str) -> str:
    """Write the log's epoch id unless it has one; returns the id the log holds."""
    path = Path(log_dir) / EPOCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return read_epoch(log_dir) or epoch
    with os.fdopen(fd, "w") as f:
        f.write(epoch + "\n")
        f.flush()
        os.fsync(f.fileno())
    return epoch


def has_records(log_dir: str | Path) -> bool:
    """Whether the log holds any decision, feedback or event line."""
    return any(p.stat().st_size > 0 for kind in ("decisions", "feedback", "events")
               for p in Path(log_dir).glob(f"*/{kind}-*.jsonl"))


_LINE = (orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
         | orjson.OPT_PASSTHROUGH_DATETIME)


def _line(record: dict) -> bytes:
    """One record as a compact JSON line. orjson, not the standard library: encoding was about an
    eighth of the engine's cost per ingested event. numpy numbers are written as numbers,
    datetimes as ``str()`` (as before), a non-finite float as ``null`` (the standard library
    wrote ``NaN``, which is not JSON), other unknown types as ``str()``."""
    return orjson.dumps(record, default=str, option=_LINE)


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
    context_keys : sequence of str, optional
        The only keys of a decision's request ``context`` the log keeps (``serving.log_context_keys``;
        None keeps all), and the ``follow_up_of`` of a follow-up the service decided (:func:`allowed_context`). A file is held with a shared ``flock`` while open, so erasure
        (``serving.privacy``) never rewrites a file under its writer.
    """

    def __init__(self, log_dir: str | Path, max_bytes: int = 64 << 20, fsync: bool = True, context_keys=None):
        self.context_keys = None if context_keys is None else frozenset(context_keys)
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
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # erasure rewrites only files nobody writes
        self._files[kind] = (day, seq, f)
        return f

    def append(self, kind: str, records: list[dict]) -> None:
        """Append records and make them durable before returning."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if not records:
            return
        at = time.time()
        if kind == "decisions" and self.context_keys is not None:
            records = [allowed_context(r, self.context_keys) for r in records]
        data = b"".join(_line({**r, "logged_at": at}) for r in records)
        with self._lock:
            try:
                f = self._file(kind)
            except OSError as exc:
                raise LogFull(exc.errno, f"decision log {self.dir}: {exc.strerror}") from None
            start = f.tell()
            try:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            except OSError as exc:
                self._cut(kind, f, start)
                raise LogFull(exc.errno or errno.EIO, f"decision log {self.dir}: {exc.strerror or exc}") from None

    def _cut(self, kind: str, f, start: int) -> None:
        """Take back a failed append (a partial line would run into the next one): truncate the
        file to where the append began and drop the open handle (its buffer may hold the rest)."""
        day, seq, _ = self._files.pop(kind)
        try:
            f.close()
        except OSError:
            pass  # the buffered rest could not be written either; the truncate below removes it
        try:
            os.truncate(f.name, start)
            self._files[kind] = (day, seq, open(f.name, "ab"))
        except OSError:
            log.exception("could not cut a failed append back in %s", f.name)

    def void(self, decision_ids: list[str], reason: str) -> None:
        """Mark logged decisions as void: their callers got an error (see the module docstring)."""
        self.append("void", [{"void": list(decision_ids), "reason": reason}])

    def close(self) -> None:
        with self._lock:
            for _, _, f in self._files.values():
                f.close()
            self._files.clear()


def read_records(log_dir: str | Path, kind: str, skip_void: bool = True) -> list[dict]:
    """Every complete record of a kind, in file order; decisions marked void, and their
    feedback, are left out unless ``skip_void`` is False."""
    out = []
    for path in sorted(Path(log_dir).glob(f"*/{kind}-*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    log.warning("%s: skipping a line cut short (a crash mid-write; it was never acknowledged)", path)
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError:
                    log.warning("%s: skipping a line that is not JSON (an append cut short and not taken back)", path)
    if skip_void and kind != "void":
        void = voided(log_dir)
        if void:
            out = [r for r in out if r.get("decision_id") not in void]
    from nextbest.serving.privacy import customer_hash, erased_hashes

    erased = erased_hashes(log_dir)  # customers erased, whose lines may wait for their file to rotate
    if erased:
        out = [r for r in out if r.get("customer_id") is None or customer_hash(r["customer_id"]) not in erased]
    return out


def allowed_context(record: dict, keys: frozenset) -> dict:
    """A decision log line whose request ``context`` keeps only ``keys`` (``serving.log_context_keys``),
    plus ``follow_up_of`` on a follow-up the service decided (request id ``follow-up-<decision id>``;
    a client's own ``follow_up_of`` is not kept)."""
    request = record.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("context"), dict):
        return record
    context = request["context"]
    kept = {k: v for k, v in context.items() if k in keys}
    follows = context.get("follow_up_of")
    if isinstance(follows, str) and record.get("request_id") == f"follow-up-{follows}":
        kept["follow_up_of"] = follows  # the service's own link from a follow-up to its first message (GET /v1/due)
    return {**record, "request": {**request, "context": kept}}


def voided(log_dir: str | Path) -> set[str]:
    """Ids of the decisions the log marks void."""
    return {d for r in read_records(log_dir, "void") for d in r["void"]}


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


def read_events(log_dir: str | Path, as_of=None) -> pd.DataFrame:
    """Other senders' events (``serving.events``) as the data contract's ``events`` rows: each
    event id once (the first line), marketing messages only (a transactional send and its
    responses are not marketing history), those dated by ``as_of`` (``None``: all)."""
    ev = pd.DataFrame(read_records(log_dir, "events"))
    if ev.empty:
        return _empty_events()
    ev = ev.drop_duplicates("event_id")
    ev = ev[~ev["event"].isin(BEHAVIOUR_EVENTS)]  # behaviour: read_behaviour_events
    transactional = set(ev.loc[(ev["event"] == "sent") & (ev["type"] != "marketing"), "message_id"])
    ev = ev[~ev["message_id"].isin(transactional) & (ev["type"] == "marketing")]
    ts = pd.to_datetime(ev["ts"], utc=True, format="ISO8601")
    if as_of is not None:
        later = (ts > _utc(as_of)).to_numpy()
        if later.any():
            log.info("as of %s: %d ingested event(s) dated later wait for a later export", as_of, int(later.sum()))
        ev, ts = ev[~later], ts[~later]
    return pd.DataFrame({
        "customer_id": ev["customer_id"].astype(str), "ts": ts, "event": ev["event"],
        "message_id": ev["message_id"], "channel": ev["channel"], "offer": ev["offer"],
        "value": pd.to_numeric(ev["value"]), "propensity": float("nan"),
    }).reset_index(drop=True)


def read_behaviour_events(log_dir: str | Path, as_of=None) -> pd.DataFrame:
    """The behavioural events the service took (``features.behaviour``) as the data contract's
    ``behaviour`` rows: each event id once, those dated by ``as_of`` (``None``: all)."""
    ev = pd.DataFrame(read_records(log_dir, "events"))
    cols = ["customer_id", "ts", "event", "value"]
    if ev.empty:
        return pd.DataFrame({c: [] for c in cols})
    ev = ev.drop_duplicates("event_id")
    ev = ev[ev["event"].isin(BEHAVIOUR_EVENTS)]
    ts = pd.to_datetime(ev["ts"], utc=True, format="ISO8601")
    keep = (ts <= _utc(as_of)).to_numpy() if as_of is not None else np.ones(len(ev), dtype=bool)
    return pd.DataFrame({"customer_id": ev["customer_id"].astype(str), "ts": ts, "event": ev["event"],
                         "value": pd.to_numeric(ev["value"])})[keep].reset_index(drop=True)[cols]


def _with_ingested(events: pd.DataFrame, ingested: pd.DataFrame) -> pd.DataFrame:
    """``ingested`` rows the data contract accepts next to ``events``, each rule counted in the log:
    a send whose message id is taken is a duplicate (the first one reported counts); a response
    must name a message some sent event names, and agree with that send: same customer, same
    channel and offer where it gives them, and not dated before it. The service takes events out
    of order (a response may arrive before its send), so these are checked here, at export."""
    if ingested.empty:
        return ingested
    old_sends = events[events["event"] == "sent"]
    sent_before = set(old_sends["message_id"].astype(str))
    is_sent = (ingested["event"] == "sent").to_numpy()
    mid = ingested["message_id"].astype(str)
    dup = is_sent & (mid.isin(sent_before).to_numpy() | (mid.where(is_sent).duplicated() & is_sent))
    cols = ["message_id", "customer_id", "ts", "channel", "offer"]
    sends = pd.concat([old_sends[cols], ingested.loc[is_sent & ~dup, cols]], ignore_index=True)
    sends = sends.assign(message_id=sends["message_id"].astype(str)).drop_duplicates("message_id").set_index("message_id")
    is_resp = ~is_sent & ingested["message_id"].notna().to_numpy()
    orphan = is_resp & ~mid.isin(sends.index).to_numpy()
    known = is_resp & ~orphan
    disagree = np.zeros(len(ingested), dtype=bool)
    if known.any():
        r = ingested[known]
        s = sends.loc[mid[known]]
        bad = (r["customer_id"].astype(str).to_numpy() != s["customer_id"].astype(str).to_numpy())
        bad |= (pd.to_datetime(r["ts"], utc=True).to_numpy() < pd.to_datetime(s["ts"], utc=True).to_numpy())
        for name in ("channel", "offer"):
            given = r[name].notna().to_numpy()
            bad |= given & (r[name].astype(str).to_numpy() != s[name].astype(str).to_numpy())
        disagree[np.flatnonzero(known)[bad]] = True
    if dup.any() or orphan.any() or disagree.any():
        log.info("ingested events left out of the export: %d send(s) of a message id already sent, %d response(s) "
                 "to a message no sent event names, %d response(s) that disagree with their send (customer, "
                 "channel, offer, or dated before it)", int(dup.sum()), int(orphan.sum()), int(disagree.sum()))
    return ingested[~dup & ~orphan & ~disagree]


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
    Other senders' events (``serving.events``) are written too (:func:`read_events`), the
    behavioural ones into the ``behaviour`` table with the data's (:func:`read_behaviour_events`).
    Returns the numbers of decisions and events taken from the log.
    """
    from nextbest.features.io import load_dataset, read_behaviour, read_optional_table, write_table

    now = pd.Timestamp.now(tz="UTC")
    as_of = now if as_of is None else _utc(as_of)
    if as_of > now:
        raise ValueError(f"--as-of {as_of} is later than the clock ({now}): an export cannot hold what has not "
                         "happened yet")
    customers, events = load_dataset(data_dir)
    decisions, logged = read_log(log_dir, as_of)
    ingested = _with_ingested(pd.concat([events, logged], ignore_index=True), read_events(log_dir, as_of))
    if decisions.empty and ingested.empty:
        raise ValueError(f"no marketing decision in {log_dir} taken (and, for a send, due) by {as_of}, "
                         "and no event of another sender")
    base = read_optional_table(data_dir, "logging_decisions")  # stored twice: an error, never "absent"
    if base is None:
        base = decisions.iloc[:0]
    unknown = sorted((set(decisions["customer_id"]) | set(ingested["customer_id"])
                      | set(read_behaviour_events(log_dir, as_of)["customer_id"])) - set(customers["customer_id"].astype(str)))
    if unknown:  # cold-start customers: add them without consent or attributes (the log has none)
        customers = pd.concat([customers, pd.DataFrame({"customer_id": unknown})], ignore_index=True)
    out = Path(out)
    write_table(customers, out, "customers")
    write_table(pd.concat([events, logged[events.columns.intersection(logged.columns)],
                           ingested[events.columns.intersection(ingested.columns)]], ignore_index=True)
                .sort_values("ts", kind="stable"), out, "events")
    write_table(pd.concat([base, decisions[base.columns.intersection(decisions.columns)]], ignore_index=True), out,
                "logging_decisions")
    before = read_behaviour(data_dir)
    if before is not None:
        before = before.assign(ts=pd.to_datetime(before["ts"], utc=True, format="ISO8601"))
    frames = [f for f in (before, read_behaviour_events(log_dir, as_of)) if f is not None and len(f)]
    if frames:  # the data's behaviour and the service's, as one behaviour table
        write_table(pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable"), out, "behaviour")
    return len(decisions), len(logged) + len(ingested)
