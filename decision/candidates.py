"""Model inputs: a customer's features joined with one candidate action (channel, local hour, offer).

Every learned model reads the same frame, built here once: the engagement-history features of
``features.spec`` and the customer attributes, plus the candidate's own columns. Besides the raw
channel, hour and offer, the candidate columns pick out the history that belongs to the
candidate (the open rate *on that channel*, the share of opens *at that hour*, the conversion
rate *of that offer*), which trees would otherwise have to find as interactions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.features.spec import feature_names, history_features

CANDIDATE_COLUMNS = (
    "cand_channel", "cand_offer", "cand_hour", "cand_hour_gap", "cand_hour_open_share",
    "cand_next_hour_open_share", "cand_channel_open_rate", "cand_channel_click_rate",
    "cand_channel_sent_168h", "cand_channel_unanswered", "cand_channel_days_since_open",
    "cand_offer_conversion_rate",
)
def customer_columns(features: pd.DataFrame, config: Config, attributes) -> list[str]:
    """The customer-side model inputs: the spec's features, then the customer attributes that are
    numeric, boolean or categorical (ids and raw timestamps are not inputs), in a fixed order.

    ``attributes``: the customer table's attribute columns (``EventLog.attributes``); naming them
    keeps decision and outcome columns of a training frame out of the inputs.
    """
    names = feature_names(config)
    attrs = [c for c in attributes if c not in names and c in features and _usable(features[c])]
    return names + attrs


def _usable(col: pd.Series) -> bool:
    return (isinstance(col.dtype, pd.CategoricalDtype) or pd.api.types.is_numeric_dtype(col)
            or pd.api.types.is_bool_dtype(col))


def categorical_columns(config: Config) -> list[str]:
    return [f.name for f in history_features(config) if f.categorical] + ["cand_channel", "cand_offer"]


def candidate_frame(features: pd.DataFrame, channel, hour, offer, config: Config,
                    columns: list[str] | None = None) -> pd.DataFrame:
    """Customer features (rows of ``features``) joined with candidate actions.

    Parameters
    ----------
    features : DataFrame (n, ...)
        Output of ``engagement_history`` (or training examples that contain it).
    channel, offer : arrays (n,) of names, or of -1/None for "no message"
    hour : int array (n,), local send hour (-1 for no message)
    columns : list of str, optional
        Customer columns to keep (the fitted model's); default: the spec's features only.

    Returns
    -------
    DataFrame (n, len(columns) + len(CANDIDATE_COLUMNS))
    """
    n = len(features)
    cols = columns if columns is not None else feature_names(config)
    out = {c: (features[c].to_numpy() if not isinstance(features[c].dtype, pd.CategoricalDtype)
               else features[c].array) for c in cols}
    ch = _codes(channel, config.channel_names, n)
    off = _codes(offer, config.offer_names, n)
    cand = candidate_arrays(CustomerArrays(features), np.arange(n), ch, hour, off, config)
    out["cand_channel"] = pd.Categorical.from_codes(ch, categories=list(config.channel_names))
    out["cand_offer"] = pd.Categorical.from_codes(np.where(ch >= 0, off, -1), categories=list(config.offer_names))
    for c in CANDIDATE_COLUMNS[2:]:
        out[c] = cand[c]
    return pd.DataFrame(out, index=features.index)


class CustomerArrays:
    """Customer features as float arrays, converted once per column (the fast scoring path).

    Categorical columns become the codes of the categories a model was fitted with (what
    LightGBM reads, see ``training.models.to_matrix``); unseen values become NaN.

    ``compact``: hold the numeric table in float32 where that is exact (every value survives the
    round trip; the service's snapshot is float32 and int32 already, so it nearly always is),
    else float64. The service's snapshot does (half the table's memory: 1.6 -> 0.8 KB per
    customer, ``benchmarks/snapshot_memory.py``); the rows :meth:`take` hands out are float64
    again, so every model input and computation reads exactly the values it read before.
    """

    def __init__(self, features: pd.DataFrame, compact: bool = False):
        self.features = features
        self.compact = compact
        self._cache: dict = {}
        self._numeric: dict[str, int] | None = None
        self._parent: CustomerArrays | None = None  # set by take: the table these rows come from

    def _numeric_table(self) -> dict[str, int]:
        """All numeric and boolean columns converted in one call (a column per feature is slow)."""
        if self._numeric is None:
            dtypes = self.features.dtypes
            names = [c for c, d in dtypes.items() if not isinstance(d, pd.CategoricalDtype)
                     and (pd.api.types.is_numeric_dtype(d) or pd.api.types.is_bool_dtype(d))]
            self._table = self._compact(names) if self.compact else None
            if self._table is None:
                self._table = self.features[names].to_numpy(dtype=np.float64, na_value=np.nan)
            self._numeric = {c: i for i, c in enumerate(names)}
        return self._numeric

    def _compact(self, names: list[str]) -> np.ndarray | None:
        """The numeric columns as one float32 table, or None where a value would not survive it."""
        exact = (np.float32, np.float16, np.int8, np.int16, np.uint8, np.uint16, np.bool_)
        for c in names:  # other dtypes (float64, wider integers) are checked value by value
            col = self.features[c]
            if col.dtype.type in exact:
                continue
            v = col.to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.array_equal(v.astype(np.float32).astype(np.float64), v, equal_nan=True):
                return None
        return self.features[names].to_numpy(dtype=np.float32, na_value=np.nan)

    def __len__(self) -> int:
        return len(self.features)

    def take(self, rows: np.ndarray, features: pd.DataFrame, refresh=(), fresh_rows=None) -> "CustomerArrays":
        """The arrays of ``rows`` of this table for ``features`` (those rows' frame), without
        converting the frame again; columns named in ``refresh`` were edited and are re-read, and
        so are all columns of the rows ``fresh_rows`` (bool (n,)) marks: rows that differ from this
        table's row (features recomputed from live events, a newcomer's profile on the cold-start row).
        The service converts its whole customer snapshot once and takes each batch from it."""
        numeric = self._numeric_table()
        out = CustomerArrays(features)
        out._numeric, out._table = numeric, self._table[rows].astype(np.float64, copy=False)
        if fresh_rows is not None and np.any(fresh_rows):
            at = np.flatnonzero(fresh_rows)
            out._table[at] = features.iloc[at][list(numeric)].to_numpy(dtype=np.float64, na_value=np.nan)
        for c in refresh:
            if c in numeric:
                out._table[:, numeric[c]] = features[c].to_numpy(dtype=np.float64, na_value=np.nan)
        # other columns (categories as the codes a model reads) come from this table's, converted
        # once for all its rows, except the refreshed columns and the recomputed rows
        out._parent, out._rows, out._refresh = self, rows, set(refresh)
        out._reread = None if fresh_rows is None or not np.any(fresh_rows) else np.flatnonzero(fresh_rows)
        return out

    def get(self, name: str, categories: list | None = None) -> np.ndarray:
        key = (name, None if categories is None else tuple(categories))
        if categories is None and name in self._numeric_table():
            return self._table[:, self._numeric[name]]
        if key not in self._cache:
            if self._parent is not None and name not in self._refresh and name in self._parent.features.columns:
                arr = self._parent.get(name, categories)[self._rows]
                if self._reread is not None:
                    arr[self._reread] = _convert(self.features[name].iloc[self._reread], categories)
            else:
                arr = _convert(self.features[name], categories)
            self._cache[key] = arr
        return self._cache[key]

    def table(self, names: list[str]) -> np.ndarray:
        key = ("table", tuple(names))
        if key not in self._cache:
            self._cache[key] = np.column_stack([self.get(c) for c in names]) if names else np.zeros((len(self), 0))
        return self._cache[key]


def candidate_arrays(cust: CustomerArrays, rows: np.ndarray, channel: np.ndarray, hour, offer: np.ndarray,
                     config: Config) -> dict[str, np.ndarray]:
    """The candidate columns (``CANDIDATE_COLUMNS``) for customers ``rows`` with channel and offer
    codes (-1: no message) and local hours; float arrays (r,), channel/offer as codes."""
    r = len(rows)
    ch = np.broadcast_to(np.asarray(channel, dtype=np.int64), (r,))
    off = np.broadcast_to(np.asarray(offer, dtype=np.int64), (r,))
    h = np.broadcast_to(np.asarray(hour, dtype=float), (r,)).copy()
    send = ch >= 0
    h[~send] = np.nan
    out = {"cand_channel": np.where(send, ch, np.nan).astype(np.float64),
           "cand_offer": np.where(send & (off >= 0), off, np.nan).astype(np.float64),
           "cand_hour": h.astype(np.float32)}
    top = cust.get("top_open_hour")[rows]
    out["cand_hour_gap"] = (((h - top + 12) % 24) - 12).astype(np.float32)
    share = cust.table([f"open_hour_share_{i:02d}" for i in range(24)])[rows].astype(np.float32)
    hi = np.where(send, np.nan_to_num(h, nan=0), 0).astype(np.int64)
    idx = np.arange(r)
    out["cand_hour_open_share"] = np.where(send, share[idx, hi], np.nan).astype(np.float32)
    out["cand_next_hour_open_share"] = np.where(send, share[idx, (hi + 1) % 24], np.nan).astype(np.float32)
    long = config.features.windows_days[-1]
    mid = config.features.windows_days[min(1, len(config.features.windows_days) - 1)]
    per_channel = {
        "cand_channel_open_rate": "{c}_open_rate_%dd" % mid,
        "cand_channel_click_rate": "{c}_click_rate_%dd" % mid,
        "cand_channel_sent_168h": "{c}_sent_168h",
        "cand_channel_unanswered": "{c}_unanswered",
        "cand_channel_days_since_open": "{c}_days_since_open",
    }
    for name, pattern in per_channel.items():
        out[name] = _pick(cust, [pattern.format(c=c) for c in config.channel_names], rows, ch)
    out["cand_offer_conversion_rate"] = _pick(
        cust, [f"offer_{o}_conversion_rate_{long}d" for o in config.offer_names], rows, np.where(send, off, -1))
    return out


def model_input(names: list[str], categories: dict, cust: CustomerArrays, rows: np.ndarray,
                cand: dict[str, np.ndarray]) -> np.ndarray:
    """The float matrix (r, len(names)) a fitted model reads, from customer arrays and candidate columns."""
    numeric = cust._numeric_table()
    plan_key = ("plan", tuple(names))
    if plan_key not in cust._cache:
        # the model's columns as one contiguous block in the model's order (columns that do not
        # come straight from the numeric table are placeholders, filled below): one gather of
        # whole rows is ~10x faster than a (rows x columns) fancy index of the full table
        direct = [i for i, c in enumerate(names) if c not in categories and c in numeric and not c.startswith("cand_")]
        block = np.zeros((len(cust), len(names)))
        block[:, direct] = cust._table[:, [numeric[names[i]] for i in direct]]
        cust._cache[plan_key] = (set(direct), block)
    direct, block = cust._cache[plan_key]
    out = block[rows]
    for i, c in enumerate(names):
        if i not in direct:
            out[:, i] = cand[c] if c in cand else cust.get(c, categories.get(c))[rows]
    return out


def _convert(col: pd.Series, categories: list | None) -> np.ndarray:
    """A column as the floats a model reads: numbers, bools as 0/1, categories as the codes of
    ``categories`` (the fitted ones; unseen values NaN)."""
    if categories is None:
        arr = (col.to_numpy(dtype=np.int8) if pd.api.types.is_bool_dtype(col)
               else col.to_numpy(dtype=np.float64, na_value=np.nan))
    else:
        if isinstance(col.dtype, pd.CategoricalDtype) and list(col.cat.categories) == list(categories):
            codes = col.cat.codes.to_numpy()
        else:
            codes = pd.Index(list(categories)).get_indexer(np.asarray(col.astype(object)))  # unseen: -1
        arr = np.where(codes >= 0, codes, np.nan)
    return np.asarray(arr, dtype=np.float64)


def _codes(values, names, n) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return np.broadcast_to(arr, (n,)).astype(np.int64)
    arr = np.broadcast_to(np.asarray(values, dtype=object), (n,))
    lookup = {name: i for i, name in enumerate(names)}
    try:
        return np.fromiter((-1 if v is None or v != v or v == "" else lookup[v] for v in arr), np.int64, n)
    except KeyError as exc:
        raise ValueError(f"unknown name {exc}; configured: {list(names)}") from None


def _pick(cust: CustomerArrays, columns: list[str], rows: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Per candidate, the value of ``columns[which]`` for its customer (NaN where ``which`` is -1)."""
    table = cust.table(columns)[rows].astype(np.float32)
    idx = np.arange(len(rows))
    return np.where(which >= 0, table[idx, np.maximum(which, 0)], np.nan).astype(np.float32)
