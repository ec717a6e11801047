"""A customer's contact state in the serving store, and the contact history the rules read from it.

One JSON document per customer::

    {"sends": [[send time (epoch s), channel(, message id)], ...],   marketing sends of the last 7 days and
                                                                     planned ones (other senders' with their id)
     "unanswered": {channel: messages since the last open},
     "unsubscribed": [channel, ...],
     "live": [[time (epoch ms), event, channel, offer, order value, message id, identity], ...]}

``live`` holds the customer's engagement events since the loaded export (``serving.snapshot``):
the service's own marketing sends (at their ``send_at``) and the feedback on them, other
senders' marketing messages and responses, orders. The decision reads the customer's engagement
history as of its ``now`` from the export's events plus these (``features.live_log``), exactly
as a batch snapshot of the same events would. Entries dated up to the export's last event are
the export's and are dropped (:meth:`ContactState.without_live_before`). Absent when empty.
Entries are kept sorted by (time, identity). A send keeps its message id (responses that name no
offer look their send up by it); a response keeps none. The identity is a 12-character digest
of the event's key (:func:`identity`): every event of a customer between two exports lives in this
one document, so its size is what each update reads and writes.

A decision to send at ``send_at`` is recorded as a send at ``send_at`` when it is taken, so a
planned message already counts against caps and collision for every later decision. Counting
planned messages in the rolling windows (``sent_day``: send times after ``now - 24 h``, future
ones included) errs on the safe side. Transactional messages are never recorded: they do not
count against marketing caps. Only ``serving.engine`` changes states, always by compare-and-set.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from operator import itemgetter

import numpy as np
import orjson

from nextbest.decision.rules import ContactHistory
from nextbest.features.localtime import WEEK_S

DAY_S = 86400
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
RESET_UNANSWERED = ("opened", "clicked", "converted")
# a live entry that is no engagement event: another sender's transactional send, kept so that the
# responses to it stay out of the history (the export leaves them out)
TRANSACTIONAL_SENT = "sent_transactional"


@dataclass
class ContactState:
    sends: list = field(default_factory=list)
    unanswered: dict = field(default_factory=dict)
    unsubscribed: list = field(default_factory=list)
    live: list = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str | None) -> "ContactState":
        if text is None:
            return cls()
        raw = orjson.loads(text)
        return cls(raw["sends"], raw["unanswered"], raw["unsubscribed"], _current(raw.get("live", [])))

    def to_json(self) -> str:
        """The store's document. orjson, not the standard library: every event, feedback and
        decision rewrites the customer's whole document, and with a few dozen live entries (3 KB)
        the standard library took 40 us to write it and 29 us to read it, about half the service's
        cost per ingested event; orjson takes a few. Compact, UTF-8, the same values."""
        doc = {"sends": self.sends, "unanswered": self.unanswered, "unsubscribed": self.unsubscribed}
        if self.live:
            doc["live"] = self.live
        return orjson.dumps(doc, default=_plain).decode()

    def _copy(self) -> "ContactState":
        return ContactState(list(self.sends), dict(self.unanswered), list(self.unsubscribed), list(self.live))

    def with_live(self, t_ms: int, event: str, channel: str | None, offer: str | None, value: float | None,
                  message_id: str | None, key: str) -> "ContactState":
        """The state with one more engagement event (see the module docstring). ``key`` is the
        event's identity as the export dedupes it (``event:<event_id>``, ``feedback:<decision
        id>|<event>|<ts>``, ``send:<decision id>``): the same key again (a retried call, a replayed
        log) changes nothing, and two distinct events with equal contents both count."""
        out = self._copy()
        out.add_live(t_ms, event, channel, offer, value, message_id, key)
        return out

    def add_live(self, t_ms: int, event: str, channel: str | None, offer: str | None, value: float | None,
                 message_id: str | None, key: str) -> None:
        """:meth:`with_live` in place (for a caller that owns this state: one just read or built)."""
        ident = identity(key)
        if ident in map(_IDENTITY, self.live):
            return
        sent = event in ("sent", TRANSACTIONAL_SENT)
        entry = [int(t_ms), event, channel, offer, None if value is None else float(value),
                 message_id if sent else None, ident]
        # one order whatever the order of arrival (a rebuilt state equals it); the list is sorted
        bisect.insort(self.live, entry, key=_live_order)

    def with_own_send(self, send_s: float, send_ms: int, channel: str, offer: str | None,
                      decision_id: str) -> "ContactState":
        """The state after the service's own marketing send, planned at ``send_s`` (epoch s; ``send_ms``
        the same time in whole ms): it counts against caps at once and enters the engagement
        history when it is due."""
        return self.with_send(send_s, channel).with_live(send_ms, "sent", channel, offer or "none", None, decision_id,
                                                         f"send:{decision_id}")

    def live_send(self, message_id: str | None) -> list | None:
        """The live entry of the send named ``message_id`` (a transactional one included: event
        :data:`TRANSACTIONAL_SENT`), or None."""
        if not message_id:
            return None
        return next((e for e in self.live if e[5] == message_id and e[1] in ("sent", TRANSACTIONAL_SENT)), None)

    def has_live_between(self, lo_ms: float, hi_ms: float) -> bool:
        """Whether a live entry is dated strictly between ``lo_ms`` and ``hi_ms`` (a binary search)."""
        i = bisect.bisect_right(self.live, lo_ms, key=_TIME)
        return i < len(self.live) and self.live[i][0] < hi_ms

    def without_live_before(self, cut_ms: float) -> "ContactState":
        """The state without the live entries dated up to ``cut_ms`` (the loaded export holds them)."""
        if not self.live or all(e[0] > cut_ms for e in self.live):
            return self
        out = self._copy()
        out.live = [e for e in self.live if e[0] > cut_ms]
        return out

    def with_send(self, t: float, channel: str, message_id: str | None = None) -> "ContactState":
        """The state after a marketing send at ``t``; sends older than a week before it are dropped.
        A send named by ``message_id`` (another sender's message, ``serving.events``) is kept with
        its id and counts once however often it is applied."""
        out = self._copy()
        out.add_send(t, channel, message_id)
        return out

    def add_send(self, t: float, channel: str, message_id: str | None = None) -> None:
        """:meth:`with_send` in place (for a caller that owns this state)."""
        if message_id is not None and any(len(s) > 2 and s[2] == message_id for s in self.sends):
            return
        self.sends = [s for s in self.sends if s[0] > t - WEEK_S]
        self.sends.append([float(t), channel] if message_id is None else [float(t), channel, message_id])
        self.unanswered[channel] = self.unanswered.get(channel, 0) + 1

    def with_event(self, channel: str | None, event: str) -> "ContactState":
        """The state after feedback: an open (or click, order) resets the channel's unanswered
        count; an unsubscribe revokes the channel's consent."""
        out = self._copy()
        out.add_event(channel, event)
        return out

    def add_event(self, channel: str | None, event: str) -> None:
        """:meth:`with_event` in place (for a caller that owns this state)."""
        if channel is None:
            return
        if event in RESET_UNANSWERED:
            self.unanswered[channel] = 0
        if event == "unsubscribed" and channel not in self.unsubscribed:
            self.unsubscribed.append(channel)


def _plain(value):
    """numpy scalars as Python numbers (orjson refuses types it does not know)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _live_order(e: list) -> tuple:
    return e[0], e[6]


_IDENTITY, _TIME = itemgetter(6), itemgetter(0)


def _current(live: list) -> list:
    """Live entries in the current form. A document written before identities were digests holds
    the full key (``send:...``, ``event:...``, ``feedback:...``: a colon, which a digest never has)
    and a response's message id: both are brought to the current form and the list re-sorted, so
    an event retried after an upgrade still counts once (a rebuilt store equals it)."""
    if not any(":" in e[6] for e in live):
        return live
    out = [[*e[:5], e[5] if e[1] in ("sent", TRANSACTIONAL_SENT) else None, identity(e[6]) if ":" in e[6] else e[6]]
           for e in live]
    out.sort(key=_live_order)
    return out


def identity(key: str) -> str:
    """A live entry's identity: 72 bits of BLAKE2b of its key, base64 (12 characters). Keys are
    long (a decision id and an ISO time for feedback) and each is kept per event; at 2**72 values
    two of one customer's events colliding is out of reach."""
    return base64.urlsafe_b64encode(hashlib.blake2b(key.encode(), digest_size=9).digest()).decode()


def ms_of(ts: datetime) -> int:
    """UTC milliseconds of an aware datetime, floored exactly (integer arithmetic, as
    ``features.eventlog.to_ms`` floors a timestamp)."""
    return (ts - _EPOCH) // _MS


def history(states: list[ContactState], now_s: np.ndarray, channels: list[str]) -> tuple[ContactHistory, np.ndarray]:
    """The rules' contact history at each customer's ``now`` and who unsubscribed where, (n, K) bool."""
    n, K = len(states), len(channels)
    code = {c: k for k, c in enumerate(channels)}
    day, week = np.zeros((n, K), np.int64), np.zeros((n, K), np.int64)
    since = np.full(n, np.inf)
    unanswered, unsub = np.zeros((n, K), np.int64), np.zeros((n, K), bool)
    for i, st in enumerate(states):
        now = float(now_s[i])
        for t, c, *_ in st.sends:
            k = code.get(c)
            if k is None:
                continue  # a channel no longer configured
            day[i, k] += t > now - DAY_S
            week[i, k] += t > now - WEEK_S
            since[i] = min(since[i], (now - t) / 3600.0)
        for c, v in st.unanswered.items():
            if c in code:
                unanswered[i, code[c]] = v
        for c in st.unsubscribed:
            if c in code:
                unsub[i, code[c]] = True
    return ContactHistory(day, week, since, unanswered), unsub
