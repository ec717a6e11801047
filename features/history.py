"""Engagement histories as of a time: one function for snapshots, training rows and live decisions.

``engagement_history(log, customers, as_of)`` computes the features named in ``features.spec``
for any set of ``(customer, as_of)`` pairs: a snapshot (every customer, one ``as_of``), training
examples (one row per send, ``as_of`` = its send time) or one live decision. Only events strictly
before ``as_of`` count, so adding or changing events at or after ``as_of`` never changes a row.

Rates are smoothed toward the population (empirical Bayes). The population's rates come from a
small :class:`Population` table of daily counts and use only days *before* the day of ``as_of``:
it can be computed once over all data and broadcast, and then the per-customer work needs only
that customer's events -- the shape Dask partitions keyed by customer will need.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nextbest.features.eventlog import ATTRIBUTED, EV, EventLog, plain_pages, to_ms
from nextbest.features.spec import COUNT_EVENTS, RATES, RECENCY, feature_names, history_features, scopes

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
THREADED_ROWS = 5000  # below this many rows the feature groups run one after the other
_RATE_EVENTS = sorted({e for pair in RATES.values() for e in pair})


def _event_code(name: str) -> int:
    return ATTRIBUTED if name == "converted_attributed" else EV[name]


@dataclass
class Population:
    """Daily event counts of the whole population, for empirical-Bayes priors.

    ``counts[name]`` is a cumulative array over days (length ``n_days + 1``) so that the count in
    days ``[a, b)`` is ``counts[name][b] - counts[name][a]``; day 0 is ``day0``.
    """

    day0: int
    counts: dict
    _memo: dict = field(default_factory=dict, repr=False, compare=False)  # (name, day, days) -> total

    @classmethod
    @plain_pages
    def from_log(cls, log_: EventLog) -> "Population":
        cfg = log_.config
        if len(log_.keys) == 0:
            return cls(0, {})
        day = log_.t  # a fresh array: the rest in place (80 MB temporaries cost page faults)
        day //= DAY_MS
        day0 = int(day.min())
        day -= day0
        n_days = int(day.max()) + 1

        def per_day(group, n_groups, sel=None):
            """Daily counts per group in one pass: array (n_groups, n_days)."""
            code = np.multiply(group, n_days, dtype=np.int64)
            code += day if sel is None else day[sel]
            return np.bincount(code, minlength=n_groups * n_days).reshape(n_groups, n_days)

        n_ch = len(cfg.channel_names) + 1  # channel code + 1: 0 is "no channel" (organic orders)
        group = log_.event.astype(np.int16)
        group *= n_ch
        group += log_.channel
        group += 1
        by_ev_ch = per_day(group, len(EV) * n_ch)
        by_ev_ch = by_ev_ch.reshape(len(EV), n_ch, n_days)
        counts = {}

        def put(name, daily):
            counts[name] = np.concatenate([[0.0], np.cumsum(daily)])

        for e in _RATE_EVENTS:
            code = EV["converted"] if e == "converted_attributed" else EV[e]
            first = 1 if e == "converted_attributed" else 0  # attributed: orders with a channel
            for s, k in _scope_codes(cfg):
                put((e, s), by_ev_ch[code, first:].sum(axis=0) if k is None else by_ev_ch[code, k + 1])
        for e, code in (("sent", EV["sent"]), ("converted_attributed", ATTRIBUTED)):
            sel = log_.select(code)
            by_offer = per_day(log_.offer[sel], len(cfg.offer_names), sel)
            for j, o in enumerate(cfg.offer_names):
                put((e, f"offer_{o}"), by_offer[j])
        opens, hour, dow = log_.open_times()
        by_hour, by_dow = per_day(hour, 24, opens), per_day(dow, 7, opens)
        for h in range(24):
            put(("opened", f"hour_{h}"), by_hour[h])
        for d in range(7):
            put(("opened", f"dow_{d}"), by_dow[d])
        return cls(day0, counts)

    @classmethod
    def merge(cls, parts: list["Population"]) -> "Population":
        """The population of several logs of disjoint customers (partitions of one log): the daily
        counts are additive, so each part's are aligned on the earliest day and summed; the result
        equals :meth:`from_log` of the whole log exactly (integer counts)."""
        parts = [p for p in parts if p.counts]
        if not parts:
            return cls(0, {})
        day0 = min(p.day0 for p in parts)
        n_days = max(p.day0 + len(next(iter(p.counts.values()))) - 1 for p in parts) - day0
        counts = {}
        for p in parts:
            lo = p.day0 - day0
            for name, cum in p.counts.items():
                daily = np.zeros(n_days)
                daily[lo:lo + len(cum) - 1] = np.diff(cum)
                counts[name] = counts[name] + daily if name in counts else daily
        return cls(day0, {name: np.concatenate([[0.0], np.cumsum(d)]) for name, d in counts.items()})

    def total(self, name, as_of_ms: np.ndarray, days: int) -> np.ndarray:
        """Population count of ``name`` in the ``days`` whole days before the day of each ``as_of``."""
        c = self.counts.get(name)
        if c is None:
            return np.zeros(len(as_of_ms))
        day = np.asarray(as_of_ms) // DAY_MS
        if _one_day(day):  # live decisions: computed once per day
            key = (name, int(day[0]), days)
            v = self._memo.get(key)
            if v is None:
                v = self._memo[key] = float(self._totals(c, day[:1], days)[0])
            return np.full(len(day), v)
        return self._totals(c, day, days)

    def _totals(self, c: np.ndarray, day: np.ndarray, days: int) -> np.ndarray:
        end = np.clip(day - self.day0, 0, len(c) - 1)
        start = np.clip(end - days, 0, len(c) - 1)
        return c[end] - c[start]

    def rate(self, num, den, as_of_ms, days, default=0.0) -> np.ndarray:
        day = np.asarray(as_of_ms) // DAY_MS
        if _one_day(day):
            key = ("rate", num, den, int(day[0]), days, default)
            v = self._memo.get(key)
            if v is None:
                v = self._memo[key] = float(self._rate(num, den, as_of_ms[:1], days, default)[0])
            return np.full(len(day), v)
        return self._rate(num, den, as_of_ms, days, default)

    def _rate(self, num, den, as_of_ms, days, default) -> np.ndarray:
        n, d = self.total(num, as_of_ms, days), self.total(den, as_of_ms, days)
        return np.where(d > 0, n / np.maximum(d, 1), default)


def _one_day(day: np.ndarray) -> bool:
    """Whether a few queries share one day (a live decision's): their priors are remembered."""
    return 0 < len(day) < 64 and bool((day == day[0]).all())


def _scope_codes(cfg):
    return [("all", None)] + [(c, k) for k, c in enumerate(cfg.channel_names)]


def _smooth(k, n, prior, m):
    """Empirical-Bayes rate, float32; capped at 1 (a window can hold responses to earlier sends)."""
    return np.minimum((k + m * prior) / (n + m), 1.0).astype(np.float32)


def engagement_history(log_: EventLog, customer_ids, as_of, population: Population | None = None) -> pd.DataFrame:
    """Features of ``customer_ids`` as of ``as_of`` (exclusive).

    Parameters
    ----------
    log_ : EventLog
    customer_ids : sequence of str (n,)
        Customers to describe; ids unknown to the log get an empty history (cold start).
    as_of : timestamp, or array-like of timestamps (n,)
        One time for all rows (a snapshot) or one per row (training examples).
    population : Population, optional
        Priors; computed from ``log_`` when omitted.

    Returns
    -------
    DataFrame (n, len(feature_names(config)) + attributes)
        Columns in the order of ``features.spec``, then customer attributes; index = customer ids.
    """
    cfg = log_.config
    fs = cfg.features
    ids = pd.Index(pd.Series(customer_ids, dtype="str"))
    n = len(ids)
    codes = log_.customer_ids.get_indexer(ids)
    known = codes >= 0
    cust = np.where(known, codes, log_.n_customers).astype(np.int64)  # unknown -> an empty key range
    if np.ndim(as_of) == 0 or isinstance(as_of, (str, pd.Timestamp)):
        t = np.full(n, to_ms(as_of), dtype=np.int64)
    else:
        t = to_ms(as_of).astype(np.int64)
        if len(t) != n:
            raise ValueError(f"as_of has {len(t)} times for {n} customers")
    pop = population if population is not None else Population.from_log(log_)
    m, pdays = fs.prior_strength, fs.prior_days
    cols: dict[str, np.ndarray] = {}

    jobs = [(_scope_features, (log_, pop, s, k, cust, t)) for s, k in _scope_codes(cfg)]
    jobs += [(_timing, (log_, pop, cust, t, m, pdays)), (_orders_and_offers, (log_, pop, cust, t))]
    if n < THREADED_ROWS:  # a live decision: the work is Python overhead, which threads only contend for
        for fn, args in jobs:
            cols.update(fn(*args))
    else:
        with ThreadPoolExecutor(2) as pool:  # numpy's searches, sorts and gathers release the GIL
            for job in [pool.submit(fn, *args) for fn, args in jobs]:
                cols.update(job.result())

    # per-customer arrays get one extra slot (index n_customers) for customers unknown to the log
    first = log_.first_seen_at(cust)
    cols["tenure_days"] = np.where(first <= t, (t - first) / DAY_MS, np.nan)
    zones = list(log_.tz_names) + [z for z in [cfg.default_timezone] if z not in log_.tz_names]
    tz_code = np.append(log_.tz_code, zones.index(cfg.default_timezone))[cust]
    cols["timezone"] = pd.Categorical.from_codes(tz_code, categories=zones)  # same categories in every call

    names = feature_names(cfg)
    attrs = log_.attributes.reindex(codes).reset_index(drop=True)  # code -1 (unknown) -> a row of NaN
    for c in cfg.channel_names:
        cols[f"consent_{c}"] = attrs[f"consent_{c}"].fillna(False).astype(bool).to_numpy()
    missing, extra = set(names) - set(cols), set(cols) - set(names)
    if missing or extra:
        raise AssertionError(f"features out of sync with features.spec: missing {sorted(missing)}, extra {sorted(extra)}")
    data = {name: _compact(cols[name]) for name in names}
    consent = {f"consent_{c}" for c in cfg.channel_names}
    for c in attrs.columns:  # text attributes are categoricals of the whole customer table (see EventLog)
        if c not in consent:
            data[c] = attrs[c].to_numpy() if not isinstance(attrs[c].dtype, pd.CategoricalDtype) else attrs[c].array
    return pd.DataFrame(data, index=ids.rename("customer_id"))  # one construction: a live row is mostly overhead


def _orders_and_offers(log_: EventLog, pop: Population, cust, t) -> dict:
    """Order value and counts, and the response to each offer."""
    cfg = log_.config
    fs = cfg.features
    m, pdays = fs.prior_strength, fs.prior_days
    cols = {}
    long = fs.windows_days[-1]
    orders = log_.selected(("converted_any", "all"), EV["converted"], with_value=True)
    cols[f"order_value_{long}d"] = log_.count(orders, cust, t, long * DAY_MS, value=True)
    lifetime_n = log_.count(orders, cust, t)
    lifetime_v = log_.count(orders, cust, t, value=True)
    cols["avg_order_value"] = np.where(lifetime_n > 0, lifetime_v / np.maximum(lifetime_n, 1), np.nan)
    cols["lifetime_orders"] = lifetime_n
    for j, o in enumerate(cfg.offer_names):
        sent = log_.selected(("sent", f"offer_{o}"), EV["sent"], offer=j)
        conv = log_.selected(("converted_attributed", f"offer_{o}"), ATTRIBUTED, offer=j)
        ns, nc = log_.count(sent, cust, t, long * DAY_MS), log_.count(conv, cust, t, long * DAY_MS)
        prior = pop.rate(("converted_attributed", f"offer_{o}"), ("sent", f"offer_{o}"), t, pdays)
        cols[f"offer_{o}_sent_{long}d"] = ns
        cols[f"offer_{o}_converted_{long}d"] = nc
        cols[f"offer_{o}_conversion_rate_{long}d"] = _smooth(nc, ns, prior, m)
    return cols


def _scope_features(log_: EventLog, pop: Population, s: str, k: int | None, cust, t) -> dict:
    """Counts, smoothed rates, fatigue, recency and deliverability of one scope (``all`` or a channel)."""
    fs = log_.config.features
    m, pdays = fs.prior_strength, fs.prior_days
    cols = {}
    streams = {e: log_.selected((e, s), _event_code(e), k)
               for e in set(COUNT_EVENTS) | set(_RATE_EVENTS) | {"bounced", "unsubscribed"}}
    if s == "all":  # every order, organic included
        streams["converted"] = log_.selected(("converted_any", s), EV["converted"], with_value=True)
    wins = [w * DAY_MS for w in fs.windows_days]
    fat = [h * HOUR_MS for h in fs.fatigue_hours]
    got = {e: log_.window_counts(streams[e], cust, t, wins + fat if e == "sent" else wins)
           for e in set(COUNT_EVENTS) | set(_RATE_EVENTS)}
    for i, w in enumerate(fs.windows_days):
        for e in COUNT_EVENTS:
            cols[f"{s}_{e}_{w}d"] = got[e][i]
        for r, (num, den) in RATES.items():
            prior = pop.rate((num, s), (den, s), t, pdays)
            cols[f"{s}_{r}_{w}d"] = _smooth(got[num][i], got[den][i], prior, m)
    for i, h in enumerate(fs.fatigue_hours):
        cols[f"{s}_sent_{h}h"] = got["sent"][len(wins) + i]
    for r, e in RECENCY.items():
        cols[f"{s}_days_since_{r}"] = (t - log_.last_time(streams[e], cust, t)) / DAY_MS
    cols[f"{s}_bounced_{fs.windows_days[-1]}d"] = log_.count(streams["bounced"], cust, t, fs.windows_days[-1] * DAY_MS)
    cols[f"{s}_unsubscribed"] = log_.count(streams["unsubscribed"], cust, t)
    last_open = log_.last_time(streams["opened"], cust, t)
    answered = np.where(np.isnan(last_open), 0,
                        log_.count(streams["sent"], cust, np.nan_to_num(last_open, nan=0).astype(np.int64)))
    cols[f"{s}_unanswered"] = log_.count(streams["sent"], cust, t) - answered

    return cols


def _compact(col):
    """int32 counts and float32 measures: training frames hold millions of rows."""
    if isinstance(col, pd.Categorical) or col.dtype == bool:
        return col
    return col.astype(np.int32) if col.dtype.kind in "iu" else col.astype(np.float32)


def _timing(log_: EventLog, pop: Population, cust, t, m, pdays) -> dict:
    """Local hour-of-day and weekday profiles of opens, smoothed toward the population's."""
    cols = {}

    by_hour, by_dow = log_.open_streams()
    hour_n = np.stack([log_.count(k, cust, t) for k in by_hour], axis=1)
    dow_n = np.stack([log_.count(k, cust, t) for k in by_dow], axis=1)
    for counts, pop_names, fmt in ((hour_n, [("opened", f"hour_{h}") for h in range(24)], "open_hour_share_{:02d}"),
                                   (dow_n, [("opened", f"dow_{d}") for d in range(7)], "open_dow_share_{}")):
        pop_counts = np.stack([pop.total(p, t, pdays) for p in pop_names], axis=1)
        pop_share = (pop_counts + 1.0) / (pop_counts.sum(axis=1, keepdims=True) + len(pop_names))
        total = counts.sum(axis=1, keepdims=True)
        share = (counts + m * pop_share) / (total + m)
        for i in range(counts.shape[1]):
            cols[fmt.format(i)] = share[:, i]
    cols["top_open_hour"] = np.where(hour_n.sum(axis=1) > 0, hour_n.argmax(axis=1), np.nan)
    return cols
