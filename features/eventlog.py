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

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.config import Config
from features.localtime import local_hour_dow
from features.schema import EVENT_TYPES

log = logging.getLogger(__name__)

TIME_BITS = 39
MAX_CUSTOMERS = 1 << (63 - TIME_BITS)
EV = {e: i for i, e in enumerate(EVENT_TYPES)}
ATTRIBUTED = len(EVENT_TYPES)  # pseudo event code: an order linked to a message


def to_ms(ts) -> np.ndarray:
    """UTC timestamps (Series, Index, array or scalar) to int64 milliseconds since the epoch."""
    if isinstance(ts, (pd.Timestamp, str)):
        t = pd.Timestamp(ts)
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        return np.int64(t.value // 1_000_000)  # .value is always nanoseconds
    idx = pd.DatetimeIndex(pd.to_datetime(pd.Series(ts), utc=True))
    return idx.as_unit("ms").asi8.copy()


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
    cust: np.ndarray              # (n_events,) int64, sorted by key
    t: np.ndarray                 # (n_events,) int64 ms
    event: np.ndarray             # (n_events,) int8 code into EVENT_TYPES
    channel: np.ndarray           # (n_events,) int8 code into config channels, -1 for organic orders
    offer: np.ndarray             # (n_events,) int8 code into config offers, -1 for organic orders
    value: np.ndarray             # (n_events,) float64, NaN except orders
    message: np.ndarray           # (n_events,) int64 message code, -1 for organic orders
    propensity: np.ndarray        # (n_events,) float64, the logging policy's propensity on sends, else NaN
    attributes: pd.DataFrame      # customer attributes indexed by code
    _streams: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, customers: pd.DataFrame, events: pd.DataFrame, config: Config) -> "EventLog":
        """Encode validated ``customers`` and ``events`` frames (see ``features.validate.check``)."""
        ids = pd.Index(customers["customer_id"].astype("str"))
        if len(ids) >= MAX_CUSTOMERS:
            raise ValueError(f"{len(ids)} customers in one log; at most {MAX_CUSTOMERS - 1} (partition by customer)")
        cust = ids.get_indexer(events["customer_id"].astype("str"))
        if (cust < 0).any():
            bad = events["customer_id"].to_numpy()[cust < 0][:5]
            raise ValueError(f"events of unknown customers, e.g. {list(bad)}: validate the data first")
        t = to_ms(events["ts"])
        ev = pd.Categorical(events["event"], categories=EVENT_TYPES).codes.astype(np.int8)
        msg_codes, _ = pd.factorize(events["message_id"], use_na_sentinel=True)
        msg_codes = msg_codes.astype(np.int64)
        n_msg = int(msg_codes.max()) + 1 if len(msg_codes) else 0
        # channel and offer of every message, from its send
        ch_of = np.full(n_msg + 1, -1, np.int8)
        off_of = np.full(n_msg + 1, -1, np.int8)
        sent = (ev == EV["sent"]) & (msg_codes >= 0)
        ch_sent = pd.Categorical(events["channel"].to_numpy()[sent], categories=config.channel_names).codes
        off_sent = pd.Categorical(events["offer"].to_numpy()[sent], categories=config.offer_names).codes
        ch_of[msg_codes[sent]] = ch_sent
        off_of[msg_codes[sent]] = off_sent
        channel = ch_of[msg_codes]   # msg code -1 reads the spare last slot, which stays -1
        offer = off_of[msg_codes]
        value = _floats(events, "value")
        propensity = _floats(events, "propensity")

        tz = customers["timezone"] if "timezone" in customers else pd.Series([None] * len(ids))
        tz = tz.fillna(config.default_timezone).astype("str").to_numpy()
        tz_codes, tz_names = pd.factorize(tz)
        t0 = int(t.min()) if len(t) else 0
        if len(t) and int(t.max()) - t0 >= (1 << TIME_BITS):
            raise ValueError("events span more than 17 years; split the log in time")
        first_seen = np.full(len(ids), np.nan)
        if len(t):
            first = np.full(len(ids), np.iinfo(np.int64).max)
            np.minimum.at(first, cust, t)
            first_seen = np.where(first < np.iinfo(np.int64).max, first, np.nan).astype(float)
        if "signup_at" in customers:
            signup = pd.to_datetime(customers["signup_at"], utc=True)
            s_ms = np.where(signup.isna(), np.nan, to_ms(signup.fillna(pd.Timestamp(0, tz="UTC"))).astype(float))
            first_seen = np.where(np.isnan(s_ms), first_seen, s_ms)
        attr_cols = [c for c in customers.columns if c not in ("customer_id", "timezone", "signup_at")
                     and not c.startswith("consent_")]
        consent = pd.DataFrame({f"consent_{c}": customers[f"consent_{c}"].fillna(False).astype(bool).to_numpy()
                                if f"consent_{c}" in customers else np.zeros(len(ids), bool)
                                for c in config.channel_names})
        attributes = pd.concat([consent, customers[attr_cols].reset_index(drop=True)], axis=1)

        key = (cust.astype(np.int64) << TIME_BITS) | (t - t0)
        order = np.argsort(key, kind="stable")
        log.debug("encoded %d events of %d customers", len(t), len(ids))
        return cls(config=config, customer_ids=ids, tz_names=tuple(tz_names), tz_code=tz_codes,
                   first_seen_ms=first_seen, t0=t0, cust=cust.astype(np.int64)[order], t=t[order],
                   event=ev[order], channel=channel[order], offer=offer[order], value=value[order],
                   message=msg_codes[order], propensity=propensity[order], attributes=attributes)

    @property
    def n_customers(self) -> int:
        return len(self.customer_ids)

    @property
    def keys(self) -> np.ndarray:
        if "_keys" not in self._streams:
            self._streams["_keys"] = (self.cust << TIME_BITS) | (self.t - self.t0)
        return self._streams["_keys"]

    # ------------------------------------------------------------------ streams
    def mask(self, event: int, channel: int | None = None, offer: int | None = None) -> np.ndarray:
        """Boolean mask of one kind of event; ``event == ATTRIBUTED`` means orders linked to a message."""
        if event == ATTRIBUTED:
            m = (self.event == EV["converted"]) & (self.message >= 0)
        else:
            m = self.event == event
        if channel is not None:
            m &= self.channel == channel
        if offer is not None:
            m &= self.offer == offer
        return m

    def stream(self, name: tuple, mask_fn=None, with_value: bool = False) -> Stream:
        """The cached stream ``name``; built from ``mask_fn()`` the first time."""
        s = self._streams.get(name)
        if s is None:
            sel = mask_fn()
            cum = None
            if with_value:
                cum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(self.value[sel]))])
            s = Stream(self.keys[sel], cum)
            self._streams[name] = s
        return s

    def local_hour_dow(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local hour and weekday of the selected events in their customer's time zone."""
        return local_hour_dow(self.t[sel] // 1000, self.tz_code[self.cust[sel]], self.tz_names)

    # ------------------------------------------------------------------ queries
    def query_keys(self, cust: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        rel = np.clip(np.asarray(t_ms, np.int64) - self.t0, 0, (1 << TIME_BITS) - 1)
        return (np.asarray(cust, np.int64) << TIME_BITS) | rel

    def count(self, stream: Stream, cust, t_ms, window_ms=None, *, value=False) -> np.ndarray:
        """Events (or order value with ``value=True``) of ``stream`` in ``[t - window, t)`` per query."""
        hi = np.searchsorted(stream.keys, self.query_keys(cust, t_ms), side="left")
        if window_ms is None:
            lo = np.searchsorted(stream.keys, np.asarray(cust, np.int64) << TIME_BITS, side="left")
        else:
            lo = np.searchsorted(stream.keys, self.query_keys(cust, np.asarray(t_ms, np.int64) - window_ms),
                                 side="left")
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
