"""Training examples: one row per historical send, its features as of the send and its outcomes.

Each row holds the decision that was taken (channel, offer, local send hour and weekday, the
logging policy's propensity), the customer's engagement history strictly before the send (the
same ``engagement_history`` that serves live decisions) and what happened within the
attribution window after the send.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nextbest.features.eventlog import EV, EventLog, to_ms
from nextbest.features.history import HOUR_MS, Population, engagement_history

log = logging.getLogger(__name__)

# outcome column -> event linked to the send's message
MESSAGE_OUTCOMES = {"delivered": "delivered", "bounced": "bounced", "opened": "opened",
                    "clicked": "clicked", "unsubscribed": "unsubscribed", "converted_attributed": "converted"}
OUTCOMES = tuple(MESSAGE_OUTCOMES) + ("converted", "order_value", "outcome_complete")


def _first_after_send(log_: EventLog, event: int) -> np.ndarray:
    """Earliest time (ms) of ``event`` per message code, with a trailing +inf for code -1 (none).

    Cached on the log: every chunk of examples reads the same table.
    """
    def build():
        first = np.full(len(log_.select(EV["sent"])) + 1, np.inf)
        sel = log_.select(event)
        msg = log_.column_at("message", sel)
        sel, msg = sel[msg >= 0], msg[msg >= 0]
        np.minimum.at(first, msg, log_.t_at(sel).astype(float))
        return first
    return log_.cached(("first_after_send", event), build)


def decision_columns(log_: EventLog, sends: np.ndarray) -> pd.DataFrame:
    """The logged decision of each send (rows of ``log_`` selected by ``sends``)."""
    cfg = log_.config
    hour, dow = log_.local_hour_dow(sends)
    return pd.DataFrame({
        "customer_id": log_.customer_ids[log_.cust_at(sends)].to_numpy(),
        "message_id": log_.message_ids_at(sends).to_numpy(),
        "send_ts": pd.to_datetime(log_.t_at(sends), unit="ms", utc=True),
        "channel": pd.Categorical.from_codes(log_.channel[sends], categories=list(cfg.channel_names)),
        "offer": pd.Categorical.from_codes(log_.offer[sends], categories=list(cfg.offer_names)),
        "send_hour": hour.astype(np.int8),
        "send_dow": dow.astype(np.int8),
        "propensity": log_.column_at("propensity", sends).astype(np.float32),
    })


def outcome_columns(log_: EventLog, sends: np.ndarray, window_hours: float, data_end_ms: int) -> pd.DataFrame:
    """What followed each send (positions of ``sent`` events) within ``window_hours``."""
    return _outcomes(log_, log_.cust_at(sends), log_.t_at(sends), log_.column_at("message", sends),
                     window_hours, data_end_ms)


def _outcomes(log_: EventLog, cust, t_start, msg, window_hours: float, data_end_ms: int) -> pd.DataFrame:
    """Outcomes in ``[t_start, t_start + window)``: of the message ``msg`` (-1: none sent) and orders."""
    w = window_hours * HOUR_MS
    out = {}
    for col, ev in MESSAGE_OUTCOMES.items():
        first = _first_after_send(log_, EV[ev])[msg]  # msg -1 reads the trailing +inf
        out[col] = (first - t_start) < w
    orders = log_.stream(("converted_any", "all"), lambda: log_.select(EV["converted"]), with_value=True)
    end = t_start + int(w)
    # orders in [start, start + window): "count before end" minus "count before start"
    out["converted"] = (log_.count(orders, cust, end) - log_.count(orders, cust, t_start)) > 0
    out["order_value"] = (log_.count(orders, cust, end, value=True)
                          - log_.count(orders, cust, t_start, value=True)).astype(np.float32)
    out["outcome_complete"] = end <= data_end_ms
    return pd.DataFrame(out)


def _defaults(log_: EventLog, window_hours, data_end, population):
    """The attribution window (config), the export's end (last event) and the priors (from the log)."""
    window_hours = window_hours or log_.config.objective.attribution_window_hours
    data_end_ms = to_ms(data_end) if data_end is not None else (int(log_.t.max()) + 1 if len(log_.keys) else 0)
    population = population if population is not None else Population.from_log(log_)
    return window_hours, data_end_ms, population


def decision_examples(log_: EventLog, decisions: pd.DataFrame, window_hours: float | None = None,
                      data_end=None, population: Population | None = None,
                      chunk_rows: int = 500_000) -> pd.DataFrame:
    """One row per logged decision, suppressions included: the decision, features, outcomes.

    The "no message" rows are what uplift models compare sends against, and with the logged
    propensities what off-policy evaluation reweights. ``decisions`` needs ``customer_id``,
    ``ts`` and ``message_id`` (missing for a suppression), as the simulator's
    ``logging_decisions`` and the service's decision log have; its other columns are kept.
    Features are as of ``ts`` (the same ``engagement_history``); outcomes are the decision's
    message's responses (all False when nothing was sent) and every order of the customer within
    the window after ``ts``.
    """
    for column in ("customer_id", "ts", "message_id"):
        if column not in decisions:
            raise ValueError(f"decisions need a `{column}` column")
    window_hours, data_end_ms, population = _defaults(log_, window_hours, data_end, population)
    parts = []
    for lo in range(0, max(len(decisions), 1), chunk_rows):
        d = decisions.iloc[lo:lo + chunk_rows].reset_index(drop=True)
        t_start = to_ms(d["ts"]).astype(np.int64)
        codes = log_.customer_ids.get_indexer(pd.Index(d["customer_id"].astype("str")))
        cust = np.where(codes >= 0, codes, log_.n_customers).astype(np.int64)
        feats = engagement_history(log_, d["customer_id"], d["ts"], population)
        outcome = _outcomes(log_, cust, t_start, log_.message_codes(d["message_id"]), window_hours, data_end_ms)
        parts.append(pd.concat([d, feats.drop(columns=[c for c in feats.columns if c in d]).reset_index(drop=True),
                                outcome], axis=1))
    return _concat_columnwise(parts)


def iter_training_examples(log_: EventLog, window_hours: float | None = None, data_end=None,
                           population: Population | None = None, chunk_rows: int = 500_000,
                           progress: bool = False):
    """Yield training examples in chunks of ``chunk_rows`` sends (see :func:`training_examples`)."""
    window_hours, data_end_ms, population = _defaults(log_, window_hours, data_end, population)
    sends = log_.select(EV["sent"])
    for lo in tqdm(range(0, max(len(sends), 1), chunk_rows), desc="training examples", disable=not progress,
                   unit="chunk"):
        sel = sends[lo:lo + chunk_rows]
        decision = decision_columns(log_, sel)
        feats = engagement_history(log_, decision["customer_id"], decision["send_ts"], population)
        outcome = outcome_columns(log_, sel, window_hours, data_end_ms)
        yield pd.concat([decision, feats.reset_index(drop=True), outcome], axis=1)


def training_examples(log_: EventLog, window_hours: float | None = None, data_end=None,
                      population: Population | None = None, chunk_rows: int = 500_000,
                      progress: bool = False) -> pd.DataFrame:
    """One row per ``sent`` event: decision, features as of the send, outcomes within the window.

    Parameters
    ----------
    log_ : EventLog
    window_hours : float, optional
        Attribution window; defaults to the config's ``objective.attribution_window_hours``.
    data_end : timestamp, optional
        When the export ends; rows whose window reaches past it get ``outcome_complete = False``.
        Defaults to the last event's time.
    population : Population, optional
        Priors for the smoothed rates; computed from ``log_`` when omitted.
    chunk_rows : int
        Rows computed at a time (bounds the memory of intermediate arrays).

    Returns
    -------
    DataFrame (n_sends, decision + features + outcome columns)
    """
    parts = list(iter_training_examples(log_, window_hours, data_end, population, chunk_rows, progress))
    out = _concat_columnwise(parts)
    log.info("built %d training examples (%d with a complete outcome window)", len(out),
             int(out["outcome_complete"].sum()) if len(out) else 0)
    return out


def write_training_examples(log_: EventLog, path, window_hours: float | None = None, data_end=None,
                            population: Population | None = None, chunk_rows: int = 500_000,
                            progress: bool = False) -> int:
    """Stream training examples into one Parquet file chunk by chunk (bounded memory); returns rows.

    Categorical columns are written as text (their categories differ from chunk to chunk).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, rows = None, 0
    try:
        for chunk in iter_training_examples(log_, window_hours, data_end, population, chunk_rows, progress):
            for c in chunk.columns:
                if isinstance(chunk[c].dtype, pd.CategoricalDtype):
                    chunk[c] = chunk[c].astype("str")
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
            rows += len(chunk)
    finally:
        if writer is not None:
            writer.close()
    log.info("wrote %d training examples to %s", rows, path)
    return rows


def _concat_columnwise(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate frames one column at a time, freeing each part's column as it goes (peak ~1x)."""
    if len(parts) == 1:
        return parts[0]
    columns = list(parts[0].columns)
    out = {}
    for c in columns:
        pieces = [p.pop(c) for p in parts]
        if isinstance(pieces[0].dtype, pd.CategoricalDtype):
            out[c] = pd.Series(pd.api.types.union_categoricals([pd.Categorical(x) for x in pieces]))
        else:
            out[c] = pd.Series(np.concatenate([x.to_numpy() for x in pieces])) if pieces[0].dtype.kind in "biufM" \
                else pd.concat(pieces, ignore_index=True)
    return pd.DataFrame(out)
