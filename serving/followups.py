"""Follow-ups: a second decision for a marketing message that was not opened.

A decision request may carry ``follow_up_hours``. When it sends a marketing message, the answer
says ``follow_up_at`` (``send_at`` plus those hours) and ``follow_up_if: "not_opened"``, and the
service schedules the follow-up in its store. ``GET /v1/due?until=T`` lists the follow-ups due by
``T`` whose message has had no open, click or order reported (within the attribution window) and
decides each one again, as of its ``follow_up_at``:

- by value, over every channel and offer the rules allow, so the fallback channel is whichever is
  worth most then, not a fixed rule (it may be the same channel, another one, or nothing);
- with the first message counted as unanswered on its channel (the contact state counts every
  send until an open), and its send inside the caps and the collision gap like any other.

Decisions recorded here:

- **At least once.** A due follow-up stays listed by every call until :data:`KEEP_S` after it fell
  due, always with the same decision: the re-decision's request id is ``follow-up-<decision id>``,
  so it is decided and recorded once and replayed after that. A caller that lost an answer asks
  again; a caller acts once per ``follow_up_of``.
- **Storage.** Entries live in the store's key-value space, one key per hour of due time
  (namespace :data:`NS`), each updated by compare-and-set, so any number of workers and both
  store backends share them; they expire :data:`KEEP_S` after their hour. The decision's record is
  kept until then too, for the open check. ``nextbest store rebuild`` schedules them again from
  the decision log, and erasing a customer removes theirs.
"""

from __future__ import annotations

import json
from collections import defaultdict

NS = "followup"
BUCKET_S = 3600.0
KEEP_S = 24 * 3600.0                 # a due follow-up stays listed this long (at-least-once delivery)
MAX_FOLLOW_UP_HOURS = 14 * 24.0      # the longest follow-up a request may ask for
MAX_DUE = 10_000                     # follow-ups answered by one GET /v1/due
ANSWERED = ("opened", "clicked", "converted")  # any of them means the message was opened
CONDITION = "not_opened"


def _bucket(t: float) -> int:
    return int(t // BUCKET_S)


def schedule(store, entries: list[tuple[str, str, float]], now_s: float) -> None:
    """Add ``(decision_id, customer_id, due_s)`` entries (an entry already there is kept once; one
    that would no longer be listed, due more than :data:`KEEP_S` ago, is not stored)."""
    entries = [e for e in entries if e[2] + KEEP_S > now_s]
    if not entries:
        return
    by: dict[str, list] = defaultdict(list)
    for did, cid, due in entries:
        by[str(_bucket(due))].append([did, cid, float(due)])

    def adder(new):
        def fn(current):
            have = json.loads(current) if current else []
            known = {e[0] for e in have}
            add = [e for e in new if e[0] not in known]
            return json.dumps(have + add) if add else current
        return fn

    last = max(e[2] for e in entries)
    store.update_many(NS, {key: adder(new) for key, new in by.items()},
                      ttl_s=max(last - now_s, 0.0) + KEEP_S + BUCKET_S)


def listed(store, until_s: float, now_s: float, limit: int, ahead_s: float) -> list[tuple[str, str, float]]:
    """The entries due by ``until_s`` and not more than :data:`KEEP_S` ago, earliest first; none
    can be due more than ``ahead_s`` from now (:func:`horizon_s`), so a far ``until`` reads no further."""
    start = now_s - KEEP_S
    until_s = min(until_s, now_s + ahead_s)
    if until_s < start:
        return []
    keys = [str(b) for b in range(_bucket(start), _bucket(until_s) + 1)]
    out = []
    for raw in store.get_many(NS, keys):
        for did, cid, due in json.loads(raw) if raw else []:
            if start <= due <= until_s:
                out.append((did, cid, float(due)))
    out.sort(key=lambda e: (e[2], e[0]))
    return out[:limit]


def horizon_s(max_horizon_hours: float) -> float:
    """How far ahead of now an entry can be due: a send planned at the longest horizon plus the
    longest follow-up."""
    return (max_horizon_hours + MAX_FOLLOW_UP_HOURS) * 3600.0 + BUCKET_S


def forget(store, customer_ids: set[str], now_s: float, ahead_s: float) -> int:
    """Remove the entries of ``customer_ids`` (erasure); returns how many there were."""
    keys = [str(b) for b in range(_bucket(now_s - KEEP_S - BUCKET_S), _bucket(now_s + ahead_s) + 1)]
    theirs = {k: sum(e[1] in customer_ids for e in json.loads(raw))
              for k, raw in zip(keys, store.get_many(NS, keys)) if raw}
    theirs = {k: n for k, n in theirs.items() if n}

    def dropper(current):
        have = json.loads(current) if current else []
        keep = [e for e in have if e[1] not in customer_ids]
        return json.dumps(keep) if len(keep) < len(have) else current

    store.update_many(NS, {k: dropper for k in theirs})
    return sum(theirs.values())


def record_left_s(follow_up_at_s: float, now_s: float) -> float:
    """Seconds a followed-up decision's record must still be kept: until its follow-up is no
    longer listed (:data:`KEEP_S` after it falls due)."""
    return follow_up_at_s + KEEP_S - now_s


def answered(counted) -> bool:
    """Whether a decision's counted feedback (``DecisionRecord.counted``) shows an open."""
    return any(k.split("|", 1)[0] in ANSWERED for k in counted)
