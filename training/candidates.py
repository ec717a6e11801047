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

from features.config import Config
from features.spec import feature_names, history_features

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
    h = np.broadcast_to(np.asarray(hour, dtype=float), (n,)).copy()
    send = ch >= 0
    h[~send] = np.nan
    out["cand_channel"] = pd.Categorical.from_codes(ch, categories=list(config.channel_names))
    out["cand_offer"] = pd.Categorical.from_codes(np.where(send, off, -1), categories=list(config.offer_names))
    out["cand_hour"] = h.astype(np.float32)
    top = features["top_open_hour"].to_numpy(dtype=float)
    out["cand_hour_gap"] = (((h - top + 12) % 24) - 12).astype(np.float32)
    share = features[[f"open_hour_share_{i:02d}" for i in range(24)]].to_numpy(dtype=np.float32)
    hi = np.where(send, np.nan_to_num(h, nan=0), 0).astype(np.int64)
    rows = np.arange(n)
    out["cand_hour_open_share"] = np.where(send, share[rows, hi], np.nan).astype(np.float32)
    out["cand_next_hour_open_share"] = np.where(send, share[rows, (hi + 1) % 24], np.nan).astype(np.float32)
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
        out[name] = _pick(features, [pattern.format(c=c) for c in config.channel_names], ch)
    out["cand_offer_conversion_rate"] = _pick(
        features, [f"offer_{o}_conversion_rate_{long}d" for o in config.offer_names], np.where(send, off, -1))
    return pd.DataFrame(out, index=features.index)


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


def _pick(features: pd.DataFrame, columns: list[str], which: np.ndarray) -> np.ndarray:
    """Per row, the value of ``columns[which]`` (NaN where ``which`` is -1)."""
    table = features[columns].to_numpy(dtype=np.float32)
    rows = np.arange(len(features))
    return np.where(which >= 0, table[rows, np.maximum(which, 0)], np.nan).astype(np.float32)
