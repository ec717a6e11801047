"""Events encoded once as integer arrays, for fast point-in-time queries.

``EventLog.build(customers, events, config)`` encodes a validated dataset: customer and message
ids become integer codes, every response gets the channel and offer of its ``sent`` event, and
the events are sorted by ``(customer, time)`` into one int64 key per event::

    key = customer << 39 | (ms since the log's first event)

A *stream* is the sorted keys of one kind of event (say, opens on email). "How many opens on
email did customer c have in ``[t - w, t)``" is then two ``searchsorted`` calls, for any number of
(customer, time) queries at once. That is what makes one feature function serve a snapshot of
every customer, one row per historical send, and a single live decision.

Times are floored to milliseconds for events and for queries alike, so an event in the same
millisecond as ``as_of`` is left out (never leaked in). 39 bits of milliseconds cover 17 years;
the remaining bits allow 16 million customers per log (per Dask partition, later).
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nextbest.features.config import Config
from nextbest.features.event_sort import TIME_BITS, partition, sort_events
from nextbest.features.localtime import local_hour_dow
from nextbest.features.schema import EVENT_TYPES

log = logging.getLogger(__name__)

MAX_CUSTOMERS = 1 << (63 - TIME_BITS)
EV = {e: i for i, e in enumerate(EVENT_TYPES)}
ATTRIBUTED = len(EVENT_TYPES)  # pseudo event code: an order linked to a message


def to_ms(ts) -> np.ndarray:
    """UTC timestamps (Series, Index, array or scalar) to int64 milliseconds since the epoch."""
    if isinstance(ts, (pd.Timestamp, str)):
        t = pd.Timestamp(ts)
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        return np.int64(t.value // 1_000_000)  # .value is always nanoseconds
    s = ts if isinstance(ts, pd.Series) else pd.Series(ts)
    if not isinstance(s.dtype, pd.DatetimeTZDtype):
        s = pd.to_datetime(s, utc=True)
    return s.dt.as_unit("ms").array.asi8


def _arrow_strings(values) -> pa.Array:
    """A string column as one pyarrow array (zero-copy for pandas' arrow-backed strings)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    else:
        arr = pa.array(pd.Series(values).astype("str"), from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    return arr


def lookup_codes(values, categories) -> np.ndarray:
    """Position of each value in ``categories`` (int32; -1 where missing or absent)."""
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        # dictionary-encoded: look up the (few) categories, then map the integer codes
        lookup = np.append(lookup_codes(pd.Series(values.cat.categories.astype("str")), categories), -1).astype(np.int32)
        return lookup[values.cat.codes.to_numpy()]  # code -1 (missing) reads the trailing -1
    values = _arrow_strings(values)
    categories = _arrow_strings(categories).cast(values.type)
    idx = pc.index_in(values, value_set=categories)
    if idx.null_count:
        idx = idx.fill_null(-1)
    return idx.to_numpy(zero_copy_only=False)  # int32, may be read-only


@contextmanager
def without_hugepage_advice():
    """Let the kernel back fresh arrays with ordinary pages while big arrays are built.

    numpy advises the kernel to back large arrays with transparent huge pages. Where the kernel
    then compacts memory synchronously at the first touch (THP ``defrag=madvise``, as here), each
    fresh 80 MB temporary costs about 0.2 s; building a 10-million-event log allocates dozens.
    Measured on this machine: build 2.5 s with the advice, 1.4 s without. Only phases that
    *create* big arrays use this; searching them (the features) is faster on huge pages (fewer TLB
    misses). The switch is numpy's own (process-wide) and is restored on exit; without it
    (another numpy) nothing changes.
    """
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    if setter is None:
        yield
        return
    previous = setter(False)
    try:
        yield
    finally:
        setter(previous)


def plain_pages(fn):
    """Decorator: run ``fn`` inside :func:`without_hugepage_advice`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with without_hugepage_advice():
            return fn(*args, **kwargs)
    return wrapper


class _MessageLinker:
    """Links each response to its send by ``message_id``; the hash join runs on first use only."""

    def __init__(self, msg_all: pa.Array, ev: np.ndarray, sent: np.ndarray):
        self.msg_all, self.ev, self.sent = msg_all, ev, sent
        self._codes = None

    def send_of(self, positions: np.ndarray) -> np.ndarray:
        """Index among sends of the send of each response at ``positions`` (input order); -1 if none."""
        return lookup_codes(self.msg_all.take(pa.array(positions)), self.msg_all.take(pa.array(self.sent)))

    def codes_of(self, message_ids) -> np.ndarray:
        """Message code (index of the send) of each id in ``message_ids``; -1 where missing or unknown."""
        return lookup_codes(pd.Series(message_ids), self.msg_all.take(pa.array(self.sent)))

    def codes(self) -> np.ndarray:
        """(n_events,) message code of every event (input order): its send's index, -1 for none."""
        if self._codes is None:
            codes = np.full(len(self.ev), -1, np.int64)
            codes[self.sent] = np.arange(len(self.sent))
            responses = np.flatnonzero(self.ev != EV["sent"])
            codes[responses] = self.send_of(responses)
            self._codes = codes
        return self._codes


def _floats(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame:
        return np.full(len(frame), np.nan)
    return frame[column].to_numpy(dtype=float, na_value=np.nan)


@dataclass
class Stream:
    keys: np.ndarray                     # sorted int64 keys
    cum_value: np.ndarray | None = None  # cumulative order value, aligned with keys (prefix sums)


@dataclass
class EventLog:
    """An encoded, sorted event log and the customers it covers."""

    config: Config
    customer_ids: pd.Index        # code -> customer_id
    tz_names: tuple[str, ...]
    tz_code: np.ndarray           # (n_customers,)
    first_seen_ms: np.ndarray     # (n_customers,) signup time (or first event), float ms, NaN unknown
    t0: int                       # ms of the epoch of relative times
    event: np.ndarray             # (n_events,) int8 code into EVENT_TYPES
    channel: np.ndarray           # (n_events,) int8 code into config channels, -1 for organic orders
    offer: np.ndarray             # (n_events,) int8 code into config offers, -1 for organic orders
    attributes: pd.DataFrame      # customer attributes indexed by code
    keys: np.ndarray              # (n_events,) int64 sorted keys ``customer << 39 | ms since t0``
    by_event: tuple               # (positions grouped by event type, group bounds)
    by_event_channel: tuple       # (positions grouped by (event type, channel + 1), group bounds)
    order: object                 # input row of each sorted position: an array, or a
                                  # features.event_sort.SortedRows (read through rows_at)
    raw: dict                     # input-order columns gathered on demand: message (lazy), value,
                                  # propensity; and the message linker
    _cache: dict = field(default_factory=dict, repr=False)  # streams and profiles built on first use
    signup_ms: np.ndarray | None = None  # (n_customers,) signup time, float ms, NaN unknown; None: no column

    # ------------------------------------------------------------------ building
    @classmethod
    @plain_pages
    def build(cls, customers: pd.DataFrame, events: pd.DataFrame, config: Config) -> "EventLog":
        """Encode validated ``customers`` and ``events`` frames (see ``features.validate.check``).

        String columns are encoded with pyarrow's hash kernels (an order of magnitude faster than
        pandas' on millions of rows). A message's code is the position of its ``sent`` event
        among all sends, which is all a response needs to find its channel and offer.
        """
        ids = _arrow_strings(customers["customer_id"])
        if len(ids) >= MAX_CUSTOMERS:
            raise ValueError(f"{len(ids)} customers in one log; at most {MAX_CUSTOMERS - 1} (partition by customer)")
        def codes_or_none(column, names):
            return lookup_codes(events[column], names) if column in events else np.full(len(events), -1, np.int32)

        with ThreadPoolExecutor(2) as pool:  # pyarrow's hash kernels release the GIL: use both cores
            cust_job = pool.submit(lambda: (lookup_codes(events["customer_id"], ids),
                                            codes_or_none("offer", config.offer_names)))
            ev = lookup_codes(events["event"], pa.array(EVENT_TYPES)).astype(np.int8)
            channel = codes_or_none("channel", config.channel_names)
            cust, offer = cust_job.result()
        sent = np.flatnonzero(ev == EV["sent"])
        msg_all = _arrow_strings(events["message_id"])
        has_msg = ~msg_all.is_null().to_numpy(zero_copy_only=False)
        # Responses that carry their channel and offer (most exports do) need no lookup; the others
        # take them from their send. The full message linkage is only needed for training outcomes
        # and is built on first use.
        linker = _MessageLinker(msg_all, ev, sent)
        lookup = np.flatnonzero(has_msg & (ev != EV["sent"]) & ((channel < 0) | (offer < 0)))
        if len(lookup):
            channel, offer = channel.copy(), offer.copy()
            at = linker.send_of(lookup)
            ok = at >= 0
            channel[lookup[ok]] = channel[sent[at[ok]]]
            offer[lookup[ok]] = offer[sent[at[ok]]]
        channel, offer = channel.astype(np.int8), offer.astype(np.int8)
        if (cust < 0).any():
            bad = events["customer_id"].to_numpy()[cust < 0][:5]
            raise ValueError(f"events of unknown customers, e.g. {list(bad)}: validate the data first")
        t = to_ms(events["ts"])
        value, propensity = _floats(events, "value"), _floats(events, "propensity")

        tz = customers["timezone"] if "timezone" in customers else pd.Series([None] * len(ids))
        tz = tz.fillna(config.default_timezone).astype("str").to_numpy()
        tz_codes, tz_names = pd.factorize(tz, sort=True)  # sorted: the same codes whatever the row order (partitions)
        t0 = int(t.min()) if len(t) else 0
        if len(t) and int(t.max()) - t0 >= (1 << TIME_BITS):
            raise ValueError("events span more than 17 years; split the log in time")
        if (ev < 0).any():
            raise ValueError("events of unknown types: validate the data first")
        key, ev, channel, offer, rows = sort_events(cust, t - t0, ev, channel, offer, len(ids), len(EVENT_TYPES),
                                                    len(config.channel_names), len(config.offer_names))
        # sorted by key, a customer's first event comes first
        starts = np.searchsorted(key, np.arange(len(ids), dtype=np.int64) << TIME_BITS)
        has = starts < np.append(starts[1:], len(key))
        first_key = key[np.minimum(starts, max(len(key) - 1, 0))] if len(key) else np.zeros(len(ids), np.int64)
        first_seen = np.where(has, (first_key & ((1 << TIME_BITS) - 1)) + t0, np.nan)
        if "signup_at" in customers:
            signup = pd.to_datetime(customers["signup_at"], utc=True)
            s_ms = np.where(signup.isna(), np.nan, to_ms(signup.fillna(pd.Timestamp(0, tz="UTC"))).astype(float))
            first_seen = np.where(np.isnan(s_ms), first_seen, s_ms)
        else:
            s_ms = None
        attr_cols = [c for c in customers.columns if c not in ("customer_id", "timezone", "signup_at")
                     and not c.startswith("consent_")]
        consent = pd.DataFrame({f"consent_{c}": customers[f"consent_{c}"].fillna(False).astype(bool).to_numpy()
                                if f"consent_{c}" in customers else np.zeros(len(ids), bool)
                                for c in config.channel_names})
        attributes = pd.concat([consent, customers[attr_cols].reset_index(drop=True)], axis=1)
        for c in attr_cols:  # text attributes: categories fixed by the whole table, so that a
            col = attributes[c]  # one-customer live call encodes them like a training snapshot
            if not (pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype)):
                attributes[c] = col.astype(pd.CategoricalDtype(sorted(col.dropna().astype("str").unique())))

        n_ch = len(config.channel_names) + 1
        with ThreadPoolExecutor(2) as pool:
            by_event_channel = pool.submit(partition, ev * n_ch + channel + 1, len(EVENT_TYPES) * n_ch)
            by_event, bounds = partition(ev, len(EVENT_TYPES))
            by_event_channel = by_event_channel.result()
        log.debug("encoded %d events of %d customers", len(key), len(ids))
        return cls(config=config, customer_ids=pd.Index(ids.to_pandas(types_mapper=pd.ArrowDtype).astype("str")),
                   tz_names=tuple(tz_names), tz_code=tz_codes,
                   first_seen_ms=first_seen.astype(float), t0=t0,
                   event=ev, channel=channel, offer=offer, attributes=attributes,
                   keys=key, by_event=(by_event, bounds), by_event_channel=by_event_channel, order=rows,
                   raw={"message": linker.codes, "value": value, "propensity": propensity, "linker": linker},
                   signup_ms=s_ms)

    @property
    def n_customers(self) -> int:
        return len(self.customer_ids)

    def first_seen_at(self, cust: np.ndarray) -> np.ndarray:
        """Signup time (or first event), float ms, of customer codes; NaN for code ``n_customers``
        (unknown) and customers without either."""
        cust = np.asarray(cust, np.int64)
        known = cust < self.n_customers
        if not len(self.first_seen_ms):
            return np.full(len(cust), np.nan)
        return np.where(known, self.first_seen_ms[np.minimum(cust, self.n_customers - 1)], np.nan)

    def signup_at(self, cust: np.ndarray) -> np.ndarray:
        """Signup time, float ms, of customer codes; NaN where unknown."""
        cust = np.asarray(cust, np.int64)
        if self.signup_ms is None or not len(self.signup_ms):
            return np.full(len(cust), np.nan)
        return np.where(cust < self.n_customers, self.signup_ms[np.minimum(cust, self.n_customers - 1)], np.nan)

    def cached(self, name, build):
        """``build()`` once per log, then the same object (streams, profiles)."""
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    @property
    def cust(self) -> np.ndarray:
        """(n_events,) int64 customer code of each event, in key order (derived from the key)."""
        return self.keys >> TIME_BITS

    def cust_at(self, positions: np.ndarray) -> np.ndarray:
        return self.keys[positions] >> TIME_BITS

    def t_at(self, positions: np.ndarray) -> np.ndarray:
        return (self.keys[positions] & ((1 << TIME_BITS) - 1)) + self.t0

    @property
    def t(self) -> np.ndarray:
        """(n_events,) int64 UTC milliseconds of each event, in key order (derived from the key)."""
        return (self.keys & ((1 << TIME_BITS) - 1)) + self.t0

    def message_ids_at(self, positions: np.ndarray) -> pd.Series:
        """The ``message_id`` text of the events at sorted ``positions``."""
        ids = self.raw["linker"].msg_all.take(pa.array(self.rows_at(positions)))
        return pd.Series(ids.to_pandas(types_mapper=pd.ArrowDtype)).astype("str")

    def message_codes(self, message_ids) -> np.ndarray:
        """Message code (the index of its send) of each message id; -1 where missing or unknown."""
        return self.raw["linker"].codes_of(message_ids)

    def column_at(self, name: str, positions: np.ndarray) -> np.ndarray:
        """``message``, ``value`` or ``propensity`` at sorted ``positions`` (gathers only those)."""
        column = self.raw[name]
        return (column() if callable(column) else column)[self.rows_at(positions)]

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """Input row (of the frame the log was built from) of each sorted position."""
        if isinstance(self.order, np.ndarray):
            return self.order[positions]
        return self.order.at(positions, self.event, self.by_event)

    def select(self, event: int, channel: int | None = None, offer: int | None = None) -> np.ndarray:
        """Positions (sorted by key) of one kind of event; ``event == ATTRIBUTED`` means orders linked to a message."""
        e = EV["converted"] if event == ATTRIBUTED else event
        if channel is None:
            perm, bounds = self.by_event
            idx = perm[bounds[e]:bounds[e + 1]]
            if event == ATTRIBUTED:  # an order linked to a message has its send's channel
                idx = idx[self.channel[idx] >= 0]
        else:
            perm, bounds = self.by_event_channel
            g = e * (len(self.config.channel_names) + 1) + channel + 1
            idx = perm[bounds[g]:bounds[g + 1]]
        if offer is not None:
            idx = idx[self.offer[idx] == offer]
        return idx

    def stream(self, name: tuple, select_fn=None, with_value: bool = False) -> Stream:
        """The cached stream ``name``; built from the positions ``select_fn()`` the first time."""
        def build():
            sel = select_fn()
            cum = None
            if with_value:
                cum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(self.column_at("value", sel)))])
            return Stream(self.keys[sel], cum)
        return self.cached(("stream",) + tuple(name), build)

    def selected(self, name: tuple, event: int, channel: int | None = None, offer: int | None = None,
                 with_value: bool = False) -> Stream:
        """The cached stream ``name`` of the events :meth:`select` picks (what the feature code reads;
        ``features.live_log.LiveLog`` answers the same call for a log plus live events)."""
        return self.stream(name, lambda: self.select(event, channel, offer), with_value)

    def open_streams(self) -> tuple[list[Stream], list[Stream]]:
        """Opens by local hour of day (24 streams) and by local weekday (7), cached."""
        def build():
            opens, hour, dow = self.open_times()
            return ([Stream(self.keys[opens[hour == h]]) for h in range(24)],
                    [Stream(self.keys[opens[dow == d]]) for d in range(7)])
        return self.cached("open_keys_by_hour_and_weekday", build)

    def open_times(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions of opens with their local hour and weekday (cached: profiles and priors share them)."""
        def build():
            opens = self.select(EV["opened"])
            return (opens, *self.local_hour_dow(opens))
        return self.cached("open_times", build)

    def local_hour_dow(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local hour and weekday of the selected events in their customer's time zone."""
        return local_hour_dow(self.t_at(sel) // 1000, self.tz_code[self.cust_at(sel)], self.tz_names)

    # ------------------------------------------------------------------ queries
    def query_keys(self, cust: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        # minimum/maximum rather than np.clip: the same values, without clip's per-call overhead
        # (a live decision makes hundreds of these queries on one row)
        rel = np.minimum(np.maximum(np.asarray(t_ms, np.int64) - self.t0, 0), (1 << TIME_BITS) - 1)
        return (np.asarray(cust, np.int64) << TIME_BITS) | rel

    def window_counts(self, stream: Stream, cust, t_ms, windows_ms) -> list[np.ndarray]:
        """``count`` for several windows at once: the upper bound and every window's lower bound
        in one stacked search (a live decision makes dozens of these calls on one row)."""
        cust, t_ms = np.broadcast_arrays(np.asarray(cust, np.int64), np.asarray(t_ms, np.int64))
        shape = cust.shape
        cust, t_ms = cust.ravel(), t_ms.ravel()
        shifts = np.array([0, *windows_ms], np.int64)[:, None]
        pos = np.searchsorted(stream.keys, self.query_keys(cust, t_ms[None, :] - shifts).ravel(), side="left")
        pos = pos.reshape(len(shifts), len(t_ms))
        return [(pos[0] - p).reshape(shape) for p in pos[1:]]

    def count(self, stream: Stream, cust, t_ms, window_ms=None, *, value=False) -> np.ndarray:
        """Events (or order value with ``value=True``) of ``stream`` in ``[t - window, t)`` per query."""
        cust, t_ms = np.broadcast_arrays(np.asarray(cust, np.int64), np.asarray(t_ms, np.int64))
        shape = cust.shape
        cust, t_ms = cust.ravel(), t_ms.ravel()
        hi_keys = self.query_keys(cust, t_ms)
        lo_keys = cust << TIME_BITS if window_ms is None else self.query_keys(cust, t_ms - window_ms)
        both = np.searchsorted(stream.keys, np.concatenate([hi_keys, lo_keys]), side="left")
        hi, lo = both[:len(cust)].reshape(shape), both[len(cust):].reshape(shape)
        if value:
            return stream.cum_value[hi] - stream.cum_value[lo]
        return hi - lo

    def last_time(self, stream: Stream, cust, t_ms) -> np.ndarray:
        """Time (ms, float) of the last event of ``stream`` before ``t`` per query; NaN if none."""
        i = np.searchsorted(stream.keys, self.query_keys(cust, t_ms), side="left") - 1
        ok = i >= 0
        k = stream.keys[np.maximum(i, 0)] if len(stream.keys) else np.zeros(len(i), np.int64)
        ok &= (k >> TIME_BITS) == np.asarray(cust, np.int64)
        return np.where(ok, (k & ((1 << TIME_BITS) - 1)) + self.t0, np.nan)
