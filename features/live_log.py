"""An event log plus the events that arrived after it: engagement histories as of any time, exact.

The service decides on a snapshot of the data's event log (``serving.snapshot``), and events keep
arriving: its own sends, the feedback on them, other senders' messages (``POST /v1/events``).
:class:`LiveLog` joins the data's :class:`~features.eventlog.EventLog` (the *base*) and a small log
of the live events (the *delta*, :func:`delta_log`, same customer codes) and answers every query
``features.history.engagement_history`` makes -- ``selected``, ``open_streams``, ``count``,
``window_counts``, ``last_time`` -- by combining the two: counts and order values add, a last time is
the later of the two. Every feature is a function of those queries, so
``engagement_history(LiveLog(base, delta), ids, now, population)`` equals
``engagement_history(EventLog.build(all events), ids, now, population)`` exactly, feature by
feature: one definition of every feature, for snapshots, training rows and live decisions
(``tests/features/test_live_log.py`` checks it on random event streams, late events included).

The population priors are the caller's (the snapshot's); a live event does not move them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nextbest.features.eventlog import TIME_BITS, EventLog, Stream
from nextbest.features.event_sort import partition
from nextbest.features.schema import EVENT_TYPES


@dataclass
class LiveStream:
    """One kind of event in the base log and in the live events."""

    base: Stream
    delta: Stream


class LiveLog:
    """The query side of an :class:`EventLog`, over a base log and a delta of live events.

    Parameters
    ----------
    base : EventLog
        The data's log: customers, their attributes and time zones, and events.
    delta : EventLog
        Live events of the base's customers, with the base's customer codes (:func:`delta_log`).
    """

    def __init__(self, base: EventLog, delta: EventLog):
        self.base, self.delta = base, delta
        self.config = base.config
        self.customer_ids = base.customer_ids
        self.tz_names, self.tz_code = base.tz_names, base.tz_code
        self.attributes = base.attributes

    @property
    def n_customers(self) -> int:
        return self.base.n_customers

    def first_seen_at(self, cust):
        """The base's signup time; without one, the first event of the base or the delta (as
        ``EventLog.build`` of all events would find it)."""
        cust = np.asarray(cust, np.int64)
        keys = self.delta.keys
        lo = np.searchsorted(keys, cust << TIME_BITS)
        k = keys[np.minimum(lo, len(keys) - 1)] if len(keys) else np.zeros(len(cust), np.int64)
        first_live = np.where((lo < len(keys)) & ((k >> TIME_BITS) == cust),
                              (k & ((1 << TIME_BITS) - 1)) + self.delta.t0, np.nan)
        signup = self.base.signup_at(cust)
        return np.where(np.isnan(signup), np.fmin(self.base.first_seen_at(cust), first_live), signup)

    def selected(self, name, event, channel=None, offer=None, with_value=False) -> LiveStream:
        return LiveStream(self.base.selected(name, event, channel, offer, with_value),
                          self.delta.selected(name, event, channel, offer, with_value))

    def open_streams(self):
        (bh, bd), (dh, dd) = self.base.open_streams(), self.delta.open_streams()
        return [LiveStream(a, b) for a, b in zip(bh, dh)], [LiveStream(a, b) for a, b in zip(bd, dd)]

    # a delta stream without events adds nothing: most are empty (a few live events per customer)
    def count(self, stream: LiveStream, cust, t_ms, window_ms=None, *, value=False):
        out = self.base.count(stream.base, cust, t_ms, window_ms, value=value)
        if len(stream.delta.keys):
            out = out + self.delta.count(stream.delta, cust, t_ms, window_ms, value=value)
        return out

    def window_counts(self, stream: LiveStream, cust, t_ms, windows_ms):
        a = self.base.window_counts(stream.base, cust, t_ms, windows_ms)
        if not len(stream.delta.keys):
            return a
        b = self.delta.window_counts(stream.delta, cust, t_ms, windows_ms)
        return [x + y for x, y in zip(a, b)]

    def last_time(self, stream: LiveStream, cust, t_ms):
        a = self.base.last_time(stream.base, cust, t_ms)
        if not len(stream.delta.keys):
            return a
        return np.fmax(a, self.delta.last_time(stream.delta, cust, t_ms))


def delta_log(base: EventLog, cust, t_ms, event, channel, offer, value) -> EventLog:
    """A log of live events for :class:`LiveLog`: arrays (n,) of the base's customer codes, UTC
    milliseconds, event codes (``EVENT_TYPES``), channel and offer codes (-1: none) and order values
    (NaN: none). Responses carry their message's channel and offer already (the service resolves
    them when the event arrives); no message ids are needed."""
    cust = np.asarray(cust, np.int64)
    t = np.asarray(t_ms, np.int64)
    t0 = int(t.min()) if len(t) else 0
    key = (cust << TIME_BITS) | (t - t0)
    order = np.argsort(key, kind="stable")
    ev = np.asarray(event, np.int8)[order]
    ch = np.asarray(channel, np.int8)[order]
    off = np.asarray(offer, np.int8)[order]
    n_ch = len(base.config.channel_names) + 1
    return EventLog(config=base.config, customer_ids=base.customer_ids, tz_names=base.tz_names, tz_code=base.tz_code,
                    first_seen_ms=base.first_seen_ms, t0=t0, event=ev, channel=ch, offer=off,
                    attributes=base.attributes, keys=key[order],
                    by_event=partition(ev, len(EVENT_TYPES)),
                    by_event_channel=partition(ev.astype(np.int64) * n_ch + ch + 1, len(EVENT_TYPES) * n_ch),
                    order=order, raw={"value": np.asarray(value, float), "propensity": np.full(len(t), np.nan)})

