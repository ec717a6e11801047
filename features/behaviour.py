"""Behavioural events: what customers do besides answering messages, and the features they make.

**The vocabulary** (the data contract's optional ``behaviour`` table, and ``POST /v1/events``):

==================  ==========================================================================
``visit``           a visit to the site or shop; no value
``cart_abandoned``  a cart left without an order; ``value``: the cart's value (>= 0), optional
``review``          a review posted; ``value``: its rating from 1 to 5, optional
``app_open``        the app opened; no value
==================  ==========================================================================

Each row has ``customer_id``, ``ts`` (UTC) and ``event``, and ``value`` where the table says. An
order is not here: it is the events table's ``converted`` (with or without a message).

**The features**, as of a time ``t`` and counting only events before ``t`` (like every engagement
feature, ``features.history``), per event type ``e``: ``{e}_{w}d`` (events in the ``w`` days
before ``t``, for each of ``features.windows_days``), ``{e}_total`` (all before ``t``) and
``hours_since_{e}`` (NaN: none yet). They are computed two ways from one definition:

- :func:`batch_features` over a table (the snapshot a service starts from);
- :class:`BehaviourState`, one customer's running state that the service updates event by event
  (late and out-of-order events included) and reads at each decision's ``now``.

Both give the same numbers for any ``t`` no earlier than the customer's newest event minus
:func:`keep_seconds` (the longest window plus the allowed clock skew): the state keeps every event
time in that span and only counts older ones (``tests/features/test_behaviour.py`` checks equality
on random streams). They are read by the offers' and the triggers' ``when:`` rules
(``{customer: {review_total: {min: 5}}}``); they are not inputs of the learned models, which are
trained on the events table (a model can use them once training data carries them).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

BEHAVIOUR_EVENTS = ("visit", "cart_abandoned", "review", "app_open")
VALUE_RANGE = {"cart_abandoned": (0.0, None), "review": (1.0, 5.0)}  # events that may carry a value
BEHAVIOUR_COLUMNS = ("customer_id", "ts", "event", "value")
HOUR_S = 3600.0
DAY_S = 86400.0


def feature_names(config) -> list[str]:
    """The behaviour features, in a fixed order."""
    out = []
    for e in BEHAVIOUR_EVENTS:
        out += [f"{e}_{w}d" for w in config.features.windows_days]
        out += [f"{e}_total", f"hours_since_{e}"]
    return out


def keep_seconds(config) -> float:
    """How far back from a customer's newest event the state keeps every event time."""
    return max(config.features.windows_days) * DAY_S + config.serving.max_clock_skew_days * DAY_S


def value_problem(event: str, value) -> str | None:
    """Why ``value`` may not go with ``event`` (None: it may)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if event not in VALUE_RANGE:
        return f"a {event!r} event carries no value"
    lo, hi = VALUE_RANGE[event]
    if value < lo or (hi is not None and value > hi):
        return f"a {event!r} value must be {'from %g to %g' % (lo, hi) if hi is not None else 'at least %g' % lo}"
    return None


def batch_features(table: pd.DataFrame, customer_ids, t: pd.Timestamp, config) -> pd.DataFrame:
    """The behaviour features of ``customer_ids`` as of ``t`` from ``table`` (columns
    ``customer_id``, ``ts`` as UTC datetimes, ``event``); one row per id, float columns."""
    ids = pd.Index(pd.Series(customer_ids).astype(str))
    t_s = pd.Timestamp(t).timestamp()
    out = {}
    cust = pd.Series(ids.get_indexer(table["customer_id"].astype(str)), index=table.index)
    ts = table["ts"].map(pd.Timestamp.timestamp).to_numpy(dtype=float) if len(table) else np.zeros(0)
    before = (ts < t_s) & (cust.to_numpy() >= 0)
    for e in BEHAVIOUR_EVENTS:
        sel = before & (table["event"].astype(str).to_numpy() == e)
        c, s = cust.to_numpy()[sel], ts[sel]
        for w in config.features.windows_days:
            inside = s >= t_s - w * DAY_S
            out[f"{e}_{w}d"] = np.bincount(c[inside], minlength=len(ids)).astype(float)
        out[f"{e}_total"] = np.bincount(c, minlength=len(ids)).astype(float)
        last = np.full(len(ids), -np.inf)
        np.maximum.at(last, c, s)
        out[f"hours_since_{e}"] = np.where(np.isfinite(last), (t_s - last) / HOUR_S, np.nan)
    return pd.DataFrame(out, index=ids)[feature_names(config)]


@dataclass
class BehaviourState:
    """One customer's behaviour: per event type the times (epoch seconds, sorted) within
    ``keep`` seconds of the newest, how many there were in all, and the newest time dropped."""

    times: dict[str, list[float]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)

    def with_event(self, event: str, ts_s: float, keep_s: float) -> "BehaviourState":
        """The state with one more event (any order: a late event lands in its place)."""
        times = {k: list(v) for k, v in self.times.items()}
        totals, dropped = dict(self.totals), dict(self.dropped)
        got = times.setdefault(event, [])
        bisect.insort(got, float(ts_s))
        totals[event] = totals.get(event, 0) + 1
        cut = bisect.bisect_left(got, got[-1] - keep_s)
        if cut:
            dropped[event] = max(dropped.get(event, -np.inf), got[cut - 1])
            del got[:cut]
        return BehaviourState(times, totals, dropped)

    def features(self, t_s: float, config) -> dict[str, float]:
        """The behaviour features as of ``t_s`` (epoch seconds): exact for ``t_s`` at least the
        newest event's time minus ``keep`` (see the module docstring)."""
        out = {}
        for e in BEHAVIOUR_EVENTS:
            got = self.times.get(e, [])
            upto = bisect.bisect_left(got, t_s)  # events before t
            for w in config.features.windows_days:
                out[f"{e}_{w}d"] = float(upto - bisect.bisect_left(got, t_s - w * DAY_S))
            out[f"{e}_total"] = float(self.totals.get(e, 0) - (len(got) - upto))
            last = got[upto - 1] if upto else self.dropped.get(e, -np.inf)
            out[f"hours_since_{e}"] = (t_s - last) / HOUR_S if np.isfinite(last) and last < t_s else np.nan
        return out

    def to_json(self) -> str:
        return json.dumps({"times": self.times, "totals": self.totals, "dropped": self.dropped},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "BehaviourState":
        raw = json.loads(text)
        return cls(raw["times"], raw["totals"], raw["dropped"])


def states_of(table: pd.DataFrame, keep_s: float) -> dict[str, BehaviourState]:
    """Each customer's :class:`BehaviourState` after every row of ``table`` (what a service starts
    from: the data's behaviour before it received any event)."""
    out: dict[str, BehaviourState] = {}
    if table is None or not len(table):
        return out
    ts = table["ts"].map(pd.Timestamp.timestamp).to_numpy(dtype=float)
    frame = pd.DataFrame({"c": table["customer_id"].astype(str).to_numpy(), "e": table["event"].astype(str).to_numpy(),
                          "t": ts}).sort_values("t", kind="stable")
    for (c, e), g in frame.groupby(["c", "e"], sort=False):
        st = out.setdefault(c, BehaviourState())
        t = g["t"].to_numpy()
        kept = t[t >= t[-1] - keep_s]
        st.times[e] = kept.tolist()
        st.totals[e] = len(t)
        if len(kept) < len(t):
            st.dropped[e] = float(t[len(t) - len(kept) - 1])
    return out


def validate_behaviour(table: pd.DataFrame, customer_ids, file: str, now) -> list:
    """Every problem of a ``behaviour`` table against the contract (see the module docstring)."""
    from nextbest.features.validate import _check_timestamps, _Problems

    out = _Problems()
    for name in table.columns:
        if name not in BEHAVIOUR_COLUMNS:
            out.add(file, name, "unknown_column", f"not part of the behaviour contract ({', '.join(BEHAVIOUR_COLUMNS)})")
    missing = [n for n in ("customer_id", "ts", "event") if n not in table]
    for name in missing:
        out.add(file, name, "missing_column", "required column is missing")
    if missing:
        return list(out)
    _check_timestamps(out, file, "ts", table["ts"], now, required=True)
    event = table["event"].astype("str")
    bad = ~event.isin(BEHAVIOUR_EVENTS).to_numpy()
    if bad.any():
        out.add(file, "event", "unknown_event", f"event must be one of {', '.join(BEHAVIOUR_EVENTS)}",
                np.flatnonzero(bad), event[bad].to_numpy())
    unknown = ~table["customer_id"].astype("str").isin(pd.Index(pd.Series(customer_ids).astype(str))).to_numpy()
    if unknown.any():
        out.add(file, "customer_id", "unknown_customer", "no such customer in customers", np.flatnonzero(unknown),
                table["customer_id"].to_numpy()[unknown])
    if "value" in table:
        value = pd.to_numeric(table["value"], errors="coerce").to_numpy(dtype=float)
        wrong = [(i, value_problem(e, v)) for i, (e, v) in enumerate(zip(event, value)) if not bad[i]]
        wrong = [(i, why) for i, why in wrong if why is not None]
        for why in sorted({w for _, w in wrong}):
            rows = np.array([i for i, w in wrong if w == why])
            out.add(file, "value", "bad_value", why, rows, value[rows])
    return list(out)
