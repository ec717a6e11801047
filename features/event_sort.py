"""Sorting an event log by ``(customer, time)``: the costliest step of encoding one.

:meth:`features.eventlog.EventLog.build` needs the events' keys in sorted order, their event,
channel and offer codes in the same order, and (rarely, lazily) the input row of a sorted
position, to read an order's value or a response's message id.

The direct way is ``order = argsort(key)`` followed by four gathers ``x[order]``. On 10 million
events that takes about 1.1 s on this machine (argsort 0.67 s on two threads, the random gathers
0.47 s). A plain ``np.sort`` of int64 is about five times faster than ``argsort`` (numpy's SIMD
sort), so :func:`sort_events` packs what the log needs into one integer per event and sorts the
values::

    composite = customer << (tb + pb) | (ms since t0) << pb | payload
    payload   = event << (cb + ob) | (channel + 1) << ob | (offer + 1)

with just enough bits for each field (``tb`` for this log's time span, ``cb``/``ob`` for the
config's channels and offers). The sorted composites decode into the keys and the codes; no
gather is needed. When the fields do not fit in 63 bits (millions of customers over years), the
direct way is used.

The input row of each sorted position is then not known. :class:`SortedRows` finds it per event
type on first use: the rows of event ``e``, sorted by their composite, line up one to one with
the sorted positions of event ``e``. A snapshot only ever asks for the orders' rows (their
values), a small share of the log; training examples ask for all.

Ties (one customer, one millisecond) are ordered by payload here and arbitrarily by the direct
way: features are counts and sums over time windows, which ties do not change.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TIME_BITS = 39  # the key's layout: customer << TIME_BITS | ms since t0 (see features.eventlog)
PARALLEL_SORT_MIN = 1_000_000  # events; below this the direct way argsorts on one thread
COMPOSITE_BITS = 63  # bits of one sortable int64; a log whose fields need more is sorted the direct way


def partition(group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable partition of positions by a small integer ``group``: (permutation, group bounds)."""
    group = group.astype(np.int8 if n_groups < 128 else np.int16, copy=False)
    perm = np.argsort(group, kind="stable")  # radix sort for 8/16-bit integers: linear time
    return perm, np.searchsorted(group[perm], np.arange(n_groups + 1))  # int8 gather: cheap


def argsort_keys(key: np.ndarray, n_customers: int) -> np.ndarray:
    """``argsort(key)`` of ``customer << TIME_BITS | ms`` keys; on two threads for large logs, the
    customers below and from the middle code apart (the customer is the key's high part, so the
    halves concatenate in order; numpy releases the GIL while it sorts)."""
    if len(key) < PARALLEL_SORT_MIN:
        return np.argsort(key)
    low = key < (np.int64(n_customers // 2) << TIME_BITS)

    def part(mask):
        at = np.flatnonzero(mask)
        return at[np.argsort(key[at])]
    with ThreadPoolExecutor(2) as pool:
        high = pool.submit(part, ~low)
        return np.concatenate([part(low), high.result()])


class SortedRows:
    """Input row of each sorted position, found per event type on first use (see the module)."""

    def __init__(self, composite: np.ndarray, event_in: np.ndarray, n_events: int):
        self._composite, self._event_in = composite, event_in
        self._rows = np.empty(len(composite), np.int64)  # pages are touched only where filled
        self._done = np.zeros(n_events, bool)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # a log may be pickled (process pools): the lock is not
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def at(self, positions: np.ndarray, event_sorted: np.ndarray, by_event) -> np.ndarray:
        """Input rows of sorted ``positions``, given the sorted event codes and their
        :func:`partition` ``by_event`` (both held by the log)."""
        positions = np.asarray(positions, np.int64)
        if not self._done.all():
            with self._lock:
                for e in np.unique(event_sorted[positions]):
                    if not self._done[e]:
                        self._fill(int(e), by_event)
                if self._done.all():  # every row known: the sort's inputs are no longer needed
                    self._composite = self._event_in = None
        return self._rows[positions]

    def _fill(self, e: int, by_event) -> None:
        # the rows of event e in composite order line up with e's sorted positions (increasing)
        perm, bounds = by_event
        rows = np.flatnonzero(self._event_in == e)
        self._rows[perm[bounds[e]:bounds[e + 1]]] = rows[np.argsort(self._composite[rows])]
        self._done[e] = True


def sort_events(cust, t_rel, event, channel, offer, n_customers: int, n_events: int, n_channels: int,
                n_offers: int):
    """Sort events by ``(customer, time)``.

    Parameters: input-order arrays of customer codes, ms since t0 (``< 2**TIME_BITS``), event codes
    (``< n_events``), channel and offer codes (``-1``: none); the numbers of each.

    Returns ``(key, event, channel, offer, rows)``: the sorted keys ``customer << TIME_BITS | ms``,
    the int8 codes in the same order, and ``rows``, either an array of the input row of each sorted
    position or a :class:`SortedRows` that finds them on first use (``EventLog.rows_at``).
    """
    n = len(t_rel)
    span = int(t_rel.max()) if n else 0
    cb, tb = max(int(n_customers - 1).bit_length(), 1), max(span.bit_length(), 1)
    eb, chb, ob = int(n_events - 1).bit_length(), int(n_channels).bit_length(), int(n_offers).bit_length()
    pb = eb + chb + ob
    if cb + tb + pb > COMPOSITE_BITS:  # does not fit: the direct way
        key = cust.astype(np.int64) << TIME_BITS
        key |= t_rel
        rows = argsort_keys(key, n_customers)
        return (key[rows], event[rows].astype(np.int8), channel[rows].astype(np.int8),
                offer[rows].astype(np.int8), rows)
    # Every step writes into one of four 80 MB arrays (at 10 million events): fresh temporaries
    # cost page faults that add up to more than the sort itself.
    composite = cust.astype(np.int64)
    composite <<= tb + pb
    scratch = np.empty(n, np.int64)
    for values, shift, plus in ((t_rel, pb, 0), (event, chb + ob, 0), (channel, ob, 1), (offer, 0, 1)):
        np.copyto(scratch, values, casting="unsafe")
        if plus:
            scratch += plus
        scratch <<= shift
        composite |= scratch
    s = composite.copy()  # the unsorted composites stay: SortedRows reads them
    s.sort()  # one thread: splitting the values for two threads costs more than it saves
    key = np.right_shift(s, tb + pb)
    key <<= TIME_BITS
    np.right_shift(s, pb, out=scratch)
    scratch &= (1 << tb) - 1
    key |= scratch

    codes = []
    for shift, bits, minus in ((chb + ob, eb, 0), (ob, chb, 1), (0, ob, 1)):
        np.right_shift(s, shift, out=scratch)
        scratch &= (1 << bits) - 1
        scratch -= minus
        codes.append(scratch.astype(np.int8))
    ev, ch, off = codes
    return key, ev, ch, off, SortedRows(composite, np.asarray(event, np.int8), n_events)
