"""Erasure and retention: removing a customer from the service, and old days from the decision log.

:func:`erase` (``nextbest erase CUSTOMER...`` and ``DELETE /v1/customers/{id}``) removes a
customer from

- the store: contact state, behaviour state, decision records, idempotency answers and the
  remembered ids of the customer's events (found through the decision log: the decision, request
  and event ids logged for the customer). Decision: an event id is forgotten too, although a
  retry of that event after the erasure is then accepted as new. A sender may build its ids from
  the customer's own identifiers, and erasure leaves nothing that names the customer; a retry
  after an erasure is new data the sender chose to send;
- the decision log: every file no worker has open is rewritten without the customer's lines
  (a new file, fsynced, then renamed over the old one). A file a worker still appends to (it
  holds a shared ``flock`` on it, ``serving.decision_log``) cannot be rewritten under it: its
  lines stay until the file rotates (daily at the latest) and the next ``nextbest erase``
  (``--expired`` included) rewrites it. Until then readers (the export, training, a store
  rebuild) leave the customer out, because
- the receipt, one JSON line in ``{log_dir}/erasures.jsonl`` per customer (the SHA-256 of the
  id, the time, what was removed, how many lines wait for rotation), is also the list readers
  skip. The receipt holds no customer id.

Learner statistics are sums over many customers and keep no customer's data; they stay.

:func:`expire` (``nextbest erase --expired``) deletes the log's day folders older than
``serving.log_retention_days`` and rewrites rotated files still holding erased customers. The
service never deletes log days by itself: schedule the command (cron, an orchestrator).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from nextbest.serving.events import BEHAVIOUR_NS, EVENT_NS
from nextbest.serving.followups import forget, horizon_s
from nextbest.serving.schemas import MAX_HORIZON_HOURS

log = logging.getLogger(__name__)

RECEIPTS = "erasures.jsonl"
LOG_KINDS = ("decisions", "feedback", "events", "renders")


def customer_hash(customer_id: str) -> str:
    return hashlib.sha256(str(customer_id).encode()).hexdigest()


def erased_hashes(log_dir: str | Path) -> set[str]:
    """The hashed ids of every customer erased from the log at ``log_dir``."""
    path = Path(log_dir) / RECEIPTS
    if not path.exists():
        return set()
    out = set()
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                out.add(json.loads(line)["customer_hash"])
    return out


def _files(log_dir: Path):
    for kind in LOG_KINDS:
        yield from sorted(log_dir.glob(f"*/{kind}-*.jsonl"))


def _lines_of(path: Path, hashes: set[str]):
    """(lines kept, lines of the customers in ``hashes``) of one log file."""
    keep, drop = [], []
    with open(path, "rb") as f:
        for line in f:
            try:
                cid = json.loads(line).get("customer_id") if line.endswith(b"\n") else None
            except ValueError:
                cid = None
            (drop if cid is not None and customer_hash(cid) in hashes else keep).append(line)
    return keep, drop


def rewrite_log(log_dir: str | Path, hashes: set[str]) -> tuple[int, int, list[dict]]:
    """Rewrite the log's files without the lines of the customers in ``hashes``.

    Returns
    -------
    removed : int
        Lines removed.
    pending : int
        Lines left in files a worker still has open (removed once they rotate).
    lines : list of dict
        Every removed or pending line, parsed (what the store keeps is found through them); a
        pending one has ``_pending: True``.
    """
    removed = pending = 0
    found: list[dict] = []
    for path in _files(Path(log_dir)):
        with open(path, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a worker appends to it
                _, drop = _lines_of(path, hashes)
                pending += len(drop)
                found += [{**json.loads(x), "_pending": True} for x in drop]
                continue
            keep, drop = _lines_of(path, hashes)
            if not drop:
                continue
            tmp = path.with_name(path.name + ".erasing")
            with open(tmp, "wb") as out:
                out.writelines(keep)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            removed += len(drop)
            found += [json.loads(x) for x in drop]
    return removed, pending, found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def erase(customer_ids: list[str], store, log_dir: str | Path, now: datetime | None = None) -> list[dict]:
    """Remove customers from the store and the decision log and write a receipt for each.

    Parameters
    ----------
    customer_ids : list of str
    store : Store
    log_dir : path
        The decision log.
    now : datetime, optional
        The receipt's time (default: the clock).

    Returns
    -------
    list of dict
        The receipts: ``customer_hash``, ``at``, ``removed`` (``contact_states``,
        ``decision_records``, ``follow_ups`` (scheduled, ``serving.followups``), ``idempotency_answers``,
        ``event_ids``, ``log_lines``, ``log_lines_pending``).
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    at = (now or datetime.now(timezone.utc)).isoformat()
    hashes = {customer_hash(c): str(c) for c in customer_ids}
    # the receipt first: from now on readers skip the customer, even if the rewrite is cut short
    receipts = [{"customer_hash": h, "at": at, "removed": {}} for h in hashes]
    _append_receipts(log_dir, [{**r, "status": "started"} for r in receipts])
    removed, pending, lines = rewrite_log(log_dir, set(hashes))
    by_customer: dict[str, list[dict]] = {h: [] for h in hashes}
    for line in lines:
        by_customer[customer_hash(line["customer_id"])].append(line)
    for r in receipts:
        cid, mine = hashes[r["customer_hash"]], by_customer[r["customer_hash"]]
        decisions = sorted({x["decision_id"] for x in mine if x.get("decision_id")})
        requests = sorted({x["request_id"] for x in mine if x.get("request_id")})
        event_ids = sorted({x["event_id"] for x in mine if x.get("event_id")})
        held = [k for k, v in zip(decisions, store.get_many("decision", decisions)) if v is not None]
        answers = [k for k, v in zip(requests, store.get_many("request", requests)) if v is not None]
        remembered = [k for k, v in zip(event_ids, store.get_many(EVENT_NS, event_ids)) if v is not None]
        had_contact = store.get("contact", cid) is not None
        had_behaviour = store.get(BEHAVIOUR_NS, cid) is not None
        store.delete("contact", [cid])
        store.delete(BEHAVIOUR_NS, [cid])
        store.delete("decision", decisions)
        store.delete("request", requests)
        store.delete(EVENT_NS, event_ids)
        follow_ups = forget(store, {cid}, time.time(), horizon_s(MAX_HORIZON_HOURS))
        r["removed"] = {"contact_states": int(had_contact), "behaviour_states": int(had_behaviour),
                        "decision_records": len(held), "follow_ups": follow_ups,
                        "idempotency_answers": len(answers), "event_ids": len(remembered),
                        "log_lines": sum(not x.get("_pending") for x in mine),
                        "log_lines_pending": sum(bool(x.get("_pending")) for x in mine)}
    _append_receipts(log_dir, [{**r, "status": "done"} for r in receipts])
    log.info("erased %d customer(s): %d log lines removed, %d wait for their files to rotate",
             len(receipts), removed, pending)
    return receipts


def _append_receipts(log_dir: Path, receipts: list[dict]) -> None:
    with open(log_dir / RECEIPTS, "ab") as f:
        f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in receipts).encode())
        f.flush()
        os.fsync(f.fileno())


def expire(log_dir: str | Path, retention_days: float, now: datetime | None = None) -> dict:
    """Delete the log's day folders older than ``retention_days`` and finish pending erasures.

    Returns
    -------
    dict
        ``days_deleted`` (the folders' names), ``log_lines_erased`` (lines of erased customers
        removed from files that have rotated since).
    """
    log_dir = Path(log_dir)
    cutoff = ((now or datetime.now(timezone.utc)) - timedelta(days=retention_days)).date()
    deleted = []
    for folder in sorted(p for p in log_dir.glob("*") if p.is_dir()):
        try:
            day = datetime.strptime(folder.name, "%Y-%m-%d").date()
        except ValueError:
            continue
        if day < cutoff:
            shutil.rmtree(folder)
            deleted.append(folder.name)
    hashes = erased_hashes(log_dir)
    removed = rewrite_log(log_dir, hashes)[0] if hashes else 0
    if deleted:
        log.info("deleted %d decision log day(s) older than %g days: %s ... %s", len(deleted), retention_days,
                 deleted[0], deleted[-1])
    return {"days_deleted": deleted, "log_lines_erased": removed}
