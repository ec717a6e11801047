"""UTC to customers' local clock, vectorized over millions of events.

Converting each timestamp with its own time zone is slow, so the UTC offset of each zone is
tabulated once on a 15-minute grid over the span of the data and looked up. Every real
daylight-saving transition falls on a quarter hour, so the lookup is exact.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

import numpy as np
import pandas as pd

GRID_S = 15 * 60
DAY_HOURS = 24
WEEK_HOURS = 7 * DAY_HOURS   # the contact caps' week, the longest request horizon
WEEK_S = WEEK_HOURS * 3600
_EPOCH_DOW = 3  # 1970-01-01 was a Thursday; Monday = 0


@lru_cache(maxsize=1)
def known_timezones() -> frozenset[str]:
    return frozenset(available_timezones())


@lru_cache(maxsize=None)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=1 << 18)
def _offset_at(name: str, slot: int) -> int:
    """UTC offset in seconds during one 15-minute slot (few timestamps: the service's path)."""
    return int(datetime.fromtimestamp(slot * GRID_S, _zone(name)).utcoffset().total_seconds())


def _offsets_on_grid(tz: str, first: int, last: int) -> np.ndarray:
    grid = pd.date_range(pd.Timestamp(first * GRID_S, unit="s", tz="UTC"),
                         pd.Timestamp(last * GRID_S, unit="s", tz="UTC"), freq="15min")
    local = grid.tz_convert(ZoneInfo(tz)).tz_localize(None)
    return ((local - grid.tz_localize(None)) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def utc_offsets(ts_s: np.ndarray, tz_code: np.ndarray, tz_names) -> np.ndarray:
    """UTC offset in seconds of each timestamp in its zone.

    Parameters
    ----------
    ts_s : int64 array (n,)
        UTC times in seconds since the epoch.
    tz_code : integer array (n,)
        Index into ``tz_names`` for each timestamp.
    tz_names : sequence of str
        IANA zone names.

    Returns
    -------
    int64 array (n,)
    """
    ts_s = np.asarray(ts_s, dtype=np.int64)
    tz_code = np.asarray(tz_code)
    out = np.zeros(len(ts_s), dtype=np.int64)
    if len(ts_s) == 0:
        return out
    for code, name in enumerate(tz_names):
        if name == "UTC":
            continue
        sel = np.flatnonzero(tz_code == code)
        if len(sel) == 0:
            continue
        slots = ts_s[sel] // GRID_S
        if len(sel) <= 256:  # a few decisions: look each slot up (cached) instead of tabulating a span
            out[sel] = [_offset_at(name, int(x)) for x in slots]
            continue
        first, last = int(slots.min()), int(slots.max())
        table = _offsets_on_grid(name, first, last)
        out[sel] = table[slots - first]
    return out


def local_hour_dow(ts_s: np.ndarray, tz_code: np.ndarray, tz_names) -> tuple[np.ndarray, np.ndarray]:
    """Local hour of day (0-23) and day of week (Monday = 0) of UTC seconds ``ts_s``."""
    local = np.asarray(ts_s, dtype=np.int64) + utc_offsets(ts_s, tz_code, tz_names)
    hour = (local // 3600) % 24
    dow = (local // 86400 + _EPOCH_DOW) % 7
    return hour.astype(np.int8), dow.astype(np.int8)


def local_midnight_utc(day_start_s: int, tz_code: np.ndarray, tz_names) -> np.ndarray:
    """UTC seconds of local midnight on the UTC calendar day starting at ``day_start_s``, per customer."""
    guess = np.full(len(tz_code), day_start_s, dtype=np.int64)
    offset = utc_offsets(guess, tz_code, tz_names)
    return guess - offset
