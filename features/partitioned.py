"""Features and training examples on Dask: the event log partitioned by customer.

The pandas path (``features.eventlog``, ``features.history``, ``features.examples``) holds the
whole event log in one process. This path runs the same functions on partitions of it, so a log
larger than one machine's memory is handled by a Dask cluster (a ``LocalCluster`` by default):

1. **Partition** (:func:`partition`): ``customers`` and ``events`` are read with Dask and written
   to a scratch directory as Parquet, hashed by customer id (``part = hash(customer_id) % n``,
   :func:`part_of`). Every event of a customer lands in that customer's partition; the scratch
   directory must be visible to every worker (a shared file system on a real cluster).
2. **Validate** each partition with ``features.validate.check``. Checks that span partitions are
   kept global: a ``message_id`` sent twice (by two customers of different partitions) is counted
   over the whole log. Customer ids cannot repeat across partitions (equal ids hash alike). A
   problem's ``file`` names its partition and its row is the row within that partition. Each
   partition is checked once; the later passes only parse it (``features.validate.parse``).
3. **Priors** (``features.history.Population``): each partition's daily counts are additive and
   merged on the client (:meth:`Population.merge`), so the priors are the whole population's.
4. **Features** per partition (``engagement_history``, ``decision_examples``) with the merged
   priors; text attributes and time zones are re-coded to the categories of the whole customer
   table (sorted), not the partition's.

The results equal the pandas path's exactly, feature by feature (``tests/features/test_partitioned.py``).
The pandas path stays the default; ``--dask`` on ``features build``, ``train`` and ``retrain``
selects this one (README "Scaling out").

Memory: a task holds one partition's events (about 40 bytes per event once encoded, several times
that while reading), so the partition count sets the memory per worker; the default gives each
partition about :data:`EVENTS_PER_PARTITION` events.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.features.io import CATEGORICAL_EVENT_COLUMNS, csv_dtypes, find_table

log = logging.getLogger(__name__)

EVENTS_PER_PARTITION = 2_000_000
PART = "part"


def part_of(customer_ids, n_parts: int) -> np.ndarray:
    """The partition of each customer id: a stable hash of its text (the same in every process and
    on every machine; pandas' SipHash with its fixed key), modulo ``n_parts``."""
    text = np.asarray(pd.Series(customer_ids, dtype="str").to_numpy(dtype=object))
    return (pd.util.hash_array(text) % np.uint64(n_parts)).astype(np.int64)


@dataclass(frozen=True)
class DaskOptions:
    """Where the partitioned path runs (``--dask``, ``--scheduler``, ``--workers``, ``--partitions``,
    ``--scratch`` of the CLI): a scheduler's address, else a LocalCluster of ``workers``."""

    scheduler: str | None = None
    workers: int = 2
    partitions: int | None = None
    scratch: str | None = None


@contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2, memory_limit: str | None = None):
    """A Dask client: of the scheduler at ``scheduler`` (``tcp://host:8786``), or of a fresh
    ``LocalCluster`` of ``workers`` single-threaded worker processes, closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=memory_limit or "auto", silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        log.info("Dask LocalCluster with %d worker(s)", workers)
        yield client


def _read(path: Path):
    import dask.dataframe as dd

    if path.suffix == ".csv":
        return dd.read_csv(path, dtype=csv_dtypes(path), blocksize="64MB")
    # a Dask partition per Parquet row group (pandas and pyarrow write 1,048,576 rows per group), so
    # reading holds one group per task whatever the file's size
    return dd.read_parquet(path, split_row_groups=True)


def _with_part(frame: pd.DataFrame, n_parts: int) -> pd.DataFrame:
    """The rows with their partition; text stored as text (a dictionary's index width varies by part)."""
    text = {c: frame[c].astype("str") for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)}
    return frame.assign(**text, **{PART: part_of(frame["customer_id"], n_parts)})


@dataclass
class Partitions:
    """A data directory's ``customers`` and ``events`` hashed by customer into ``n`` partitions
    under ``root`` (Parquet, one folder ``part=i`` per partition and table)."""

    root: Path
    n: int
    events: int

    def read(self, i: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Partition ``i`` as the pandas path reads a data directory (``features.io.read_table``)."""
        import pyarrow.parquet as pq

        out = []
        for name in ("customers", "events"):
            folder = self.root / name / f"{PART}={i}"
            if not folder.exists():  # no customer hashed here
                out.append(pq.read_schema(next((self.root / name).rglob("*.parquet"))).empty_table().to_pandas()
                           .drop(columns=[PART], errors="ignore"))
                continue
            categorical = [c for c in CATEGORICAL_EVENT_COLUMNS if name == "events"]
            table = pq.read_table(folder, read_dictionary=[c for c in categorical
                                                           if c in pq.read_schema(next(folder.glob("*.parquet"))).names])
            out.append(table.to_pandas())
        customers, events = out
        for c in CATEGORICAL_EVENT_COLUMNS:  # as read_table reads them: dictionary-encoded text
            if c in events and not isinstance(events[c].dtype, pd.CategoricalDtype):
                events[c] = events[c].astype("str").astype("category") if len(events) else events[c].astype("category")
        return customers.reset_index(drop=True), events.reset_index(drop=True)


def partition(data_dir: str | Path, client, n_parts: int | None, scratch: str | Path) -> Partitions:
    """Write ``data_dir``'s customers and events hashed by customer under ``scratch`` (see the
    module docstring); ``n_parts`` defaults to one per :data:`EVENTS_PER_PARTITION` events (at
    least one per worker)."""
    root = Path(scratch)
    customers = _read(find_table(data_dir, "customers"))
    events = _read(find_table(data_dir, "events"))
    n_events = int(client.compute(events.map_partitions(len).sum()).result())
    workers = max(len(client.scheduler_info().get("workers", {})), 1)
    n = n_parts or max(math.ceil(n_events / EVENTS_PER_PARTITION), workers)
    for name, frame in (("customers", customers), ("events", events)):
        out = root / name
        if out.exists():
            shutil.rmtree(out)
        frame = frame.map_partitions(_with_part, n, meta=_with_part(frame._meta, n))
        frame.to_parquet(out, partition_on=[PART], write_index=False, compute_kwargs={"scheduler": client})
    log.info("partitioned %s: %d events into %d partitions under %s", data_dir, n_events, n, root)
    return Partitions(root, n, n_events)


# ---------------------------------------------------------------------- per partition (on a worker)
def _validated(parts: Partitions, i: int, config: Config):
    from nextbest.features.validate import check

    customers, events = parts.read(i)
    where = f"partition {i} of {parts.n}"
    return check(customers, events, config, files={"customers": f"customers ({where})", "events": f"events ({where})"})


def _problems(parts: Partitions, i: int, config: Config) -> list:
    """Every problem of partition ``i`` against the contract (``features.validate.validate``)."""
    from nextbest.features.validate import validate

    customers, events = parts.read(i)
    where = f"partition {i} of {parts.n}"
    return validate(customers, events, config, files={"customers": f"customers ({where})", "events": f"events ({where})"})


def _encoded(parts: Partitions, i: int, config: Config, before=None, checked: bool = False):
    """Partition ``i`` encoded; ``checked``: it passed the contract already (a :class:`Summary`
    exists, and only :func:`summarize` makes one), so it is parsed, not checked again."""
    from nextbest.features.eventlog import EventLog
    from nextbest.features.validate import parse

    customers, events = parse(*parts.read(i), config) if checked else _validated(parts, i, config)
    if before is not None:
        events = events[events["ts"] < before]
    return customers, EventLog.build(customers, events, config)


@dataclass
class Summary:
    """What the partitions add up to: the priors and the categories of the whole customer table.

    Only :func:`summarize` makes one, after checking every partition against the contract; the
    passes that take a summary (snapshot, examples) therefore parse their partition without
    checking it again. Pass a summary only with the partitions it was made from."""

    population: object                 # features.history.Population
    zones: list[str]                   # the customers' time zones, sorted (a partition's: its own)
    categories: dict[str, list[str]]   # text attribute -> its sorted values
    data_end: pd.Timestamp | None      # the last event's time + 1 ms (the pandas path's export end)


def _summary(parts: Partitions, i: int, config: Config, before=None) -> Summary:
    from nextbest.features.history import Population

    customers, log_ = _encoded(parts, i, config, before)
    cats = {c: list(log_.attributes[c].cat.categories) for c in log_.attributes.columns
            if isinstance(log_.attributes[c].dtype, pd.CategoricalDtype)}
    end = pd.Timestamp(int(log_.t.max()) + 1, unit="ms", tz="UTC") if len(log_.keys) else None
    return Summary(Population.from_log(log_), list(log_.tz_names), cats, end)


def _recoded(frame: pd.DataFrame, summary: Summary) -> pd.DataFrame:
    """Categorical columns on the whole table's categories (a partition knows only its own)."""
    for c, cats in {**summary.categories, "timezone": summary.zones}.items():
        if c in frame and isinstance(frame[c].dtype, pd.CategoricalDtype):
            frame[c] = frame[c].cat.set_categories(cats)
    return frame


def _snapshot(parts: Partitions, i: int, config: Config, as_of, summary: Summary) -> pd.DataFrame:
    from nextbest.features.history import engagement_history

    customers, log_ = _encoded(parts, i, config, as_of, checked=True)
    return _recoded(engagement_history(log_, customers["customer_id"], as_of, summary.population), summary)


def _examples(parts: Partitions, i: int, config: Config, decisions: pd.DataFrame, window_hours: float,
              data_end, summary: Summary) -> pd.DataFrame:
    from nextbest.features.examples import decision_examples

    _, log_ = _encoded(parts, i, config, checked=True)
    return _recoded(decision_examples(log_, decisions, window_hours, data_end, summary.population), summary)


def _write_examples(parts: Partitions, i: int, config: Config, out: str, data_end, summary: Summary, before) -> int:
    from nextbest.features.examples import write_training_examples

    _, log_ = _encoded(parts, i, config, before, checked=True)
    return write_training_examples(log_, Path(out) / f"part-{i:05d}.parquet", None, data_end, summary.population)


# ---------------------------------------------------------------------- the client's side
def _gathered(futures, what: str, progress: bool):
    """Results of ``futures`` in order (a progress bar per partition if ``progress``); a failed
    partition's error is raised as is (a validation error names its partition)."""
    from tqdm.auto import tqdm

    return [f.result() for f in tqdm(futures, desc=what, unit="partition", disable=not progress)]


def summarize(parts: Partitions, client, config: Config, before=None, progress: bool = False) -> Summary:
    """Validate every partition and merge what they add up to; a message id sent twice anywhere
    in the log is refused as the pandas path refuses it."""
    import dask.dataframe as dd

    from nextbest.features.history import Population
    from nextbest.features.validate import Problem, ValidationError

    sums = _gathered([client.submit(_summary, parts, i, config, before, pure=False) for i in range(parts.n)],
                     "validating and counting", progress)
    ev = dd.read_parquet(parts.root / "events", columns=["event", "message_id"])
    sent = ev[ev["event"].astype("str") == "sent"]["message_id"].astype("str")
    counts = sent.value_counts()
    twice = client.compute(counts[counts > 1]).result().head(5)  # only the duplicates come back
    if len(twice):
        raise ValidationError([Problem("events", "message_id", None, "duplicate_send",
                                       "two sent events share this message_id", str(m)) for m in twice.index])
    zones = sorted(set().union(*(s.zones for s in sums)))  # as engagement_history codes them
    zones += [z for z in [config.default_timezone] if z not in zones]
    names = {c for s in sums for c in s.categories}
    cats = {c: sorted(set().union(*(s.categories.get(c, []) for s in sums))) for c in names}
    ends = [s.data_end for s in sums if s.data_end is not None]
    return Summary(Population.merge([s.population for s in sums]), zones, cats, max(ends) if ends else None)


def validate(parts: Partitions, client, config: Config, progress: bool = False) -> list:
    """Every problem of the partitioned data (``nextbest data validate --dask``): each partition
    checked by the pandas rules on a worker, and the one rule that needs the whole log, a message
    id sent twice, over all partitions. A customer's rows are all in one partition, so the
    per-customer rules (unknown customer, responses and their sends) see everything they need. A
    problem names its partition; its row is the row within that partition, not the file's. With
    a message id sent in two partitions, each partition's responses are matched with its own send,
    so the response rules may count differently than on the whole table; the duplicate is
    reported either way, and the data is refused."""
    import dask.dataframe as dd

    from nextbest.features.validate import Problem

    found = _gathered([client.submit(_problems, parts, i, config, pure=False) for i in range(parts.n)],
                      "validating", progress)
    problems = [p for part in found for p in part if p.rule != "duplicate_send"]
    ev = dd.read_parquet(parts.root / "events", columns=["event", "message_id"])
    sent = ev[ev["event"].astype("str") == "sent"]["message_id"].astype("str")
    counts = sent.value_counts()
    twice = client.compute(counts[counts > 1]).result()
    problems += [Problem("events", "message_id", None, "duplicate_send",
                         f"two sent events share this message_id ({n} sends)", str(m)) for m, n in twice.items()]
    return problems


def snapshot(parts: Partitions, client, config: Config, as_of=None, summary: Summary | None = None,
             progress: bool = False) -> pd.DataFrame:
    """``engagement_history`` of every customer as of ``as_of`` (default: the day after the last
    event, as ``nextbest features build``), computed per partition; rows in partition order."""
    before = None if as_of is None else pd.Timestamp(as_of)
    summary = summary or summarize(parts, client, config, before, progress)
    as_of = before if before is not None else (summary.data_end - pd.Timedelta(milliseconds=1)).ceil("D")
    shared = client.scatter(summary, broadcast=True, hash=False)
    frames = _gathered([client.submit(_snapshot, parts, i, config, as_of, shared, pure=False)
                        for i in range(parts.n)], "engagement histories", progress)
    return pd.concat(frames)


def examples(parts: Partitions, client, config: Config, decisions: pd.DataFrame, window_hours: float,
             data_end, summary: Summary, progress: bool = False) -> pd.DataFrame:
    """``decision_examples`` of ``decisions`` computed per partition, in the order of ``decisions``."""
    rows = decisions.reset_index(drop=True).assign(_row=np.arange(len(decisions)))
    where = part_of(rows["customer_id"], parts.n)
    shared = client.scatter(summary, broadcast=True, hash=False)  # sent once; a fresh key (the same summary may be scattered again)
    futures = [client.submit(_examples, parts, i, config,
                             client.scatter(rows[where == i].reset_index(drop=True), hash=False),
                             window_hours, data_end, shared, pure=False) for i in range(parts.n) if (where == i).any()]
    out = pd.concat(_gathered(futures, "training examples", progress), ignore_index=True)
    return out.sort_values("_row", kind="stable").drop(columns="_row").reset_index(drop=True)


@contextmanager
def scratch_dir(opts: DaskOptions):
    """``opts.scratch`` (kept), or a temporary directory removed on exit."""
    if opts.scratch:
        yield Path(opts.scratch)
        return
    with tempfile.TemporaryDirectory(prefix="nextbest_partitions_") as tmp:
        yield Path(tmp)


def training_examples(data_dir: str | Path, config: Config, opts: DaskOptions, splits: list[pd.DataFrame],
                      window_hours: float, data_end) -> tuple[list[pd.DataFrame], Summary]:
    """``decision_examples`` of each frame of ``splits`` (train, validation), computed on Dask."""
    with dask_client(opts.scheduler, opts.workers) as client, scratch_dir(opts) as scratch:
        parts = partition(data_dir, client, opts.partitions, scratch)
        summary = summarize(parts, client, config)
        return [examples(parts, client, config, d, window_hours, data_end, summary) for d in splits], summary


def write_examples(parts: Partitions, client, config: Config, out: str | Path, summary: Summary, as_of=None,
                   progress: bool = False) -> int:
    """Every send's training example (``features.examples.write_training_examples``), written by the
    workers as one Parquet file per partition into the folder ``out`` (visible to every worker);
    returns the rows. Outcomes end at ``as_of`` (default: the last event of the whole log)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    before = None if as_of is None else pd.Timestamp(as_of)
    data_end = before if before is not None else summary.data_end
    shared = client.scatter(summary, broadcast=True, hash=False)
    return sum(_gathered([client.submit(_write_examples, parts, i, config, str(out), data_end, shared, before,
                                        pure=False) for i in range(parts.n)], "training examples", progress))
