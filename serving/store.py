"""The service's shared state behind one small interface, with SQLite and Redis backends.

What it holds (namespaces of string keys with JSON values):

- ``contact``: each customer's contact state (``serving.contact``), changed only by
  compare-and-set, so a decision is recorded only if it was taken on the state that is current
  when it is recorded. That is what keeps caps and collision rules exact when many workers
  decide for the same customer at once: a loser of the race decides again on the new state.
- ``decision``: what feedback needs of each decision (customer, action, learner input, running
  reward), kept for the attribution window.
- ``request``: idempotency keys of decisions (feedback events are keyed inside their decision).
- the online learner's sufficient statistics, one vector per action, changed only by atomic adds
  (``add_stats``), so workers' updates never overwrite each other, and decayed (forgetting) by
  one atomic scaling per period (``decay_stats``, whichever worker asks first); and a queue of
  decisions waiting to enter the learner (``enqueue`` / ``due`` / ``claim``).

Every read-modify-write of a value goes through :meth:`Store.update` (read, change, compare-and-set,
retried up to :data:`MAX_ATTEMPTS` times, then :class:`Conflict`); the decide path's batch of
contact states uses ``cas_many`` directly, with the same bound (``serving.engine``).

Backends: ``sqlite:///path/state.db`` (the embedded default; WAL mode, so several worker
processes on one machine share it) and ``redis://host:port/db`` (several workers and replicas).
``open_store(url)`` picks one; the URL comes from ``NEXTBEST_STORE_URL`` or ``serve --store``.

The store is derived state: ``nextbest store rebuild`` rebuilds it from the decision log
(``serving.rebuild``). Its ``meta:epoch`` key names the log it was derived from; the service
checks it on every call. A store the service cannot reach raises
:class:`StoreUnavailable` (a Redis outage, an SQLite file that cannot be read); an SQLite file
deleted or replaced under a running service is noticed (its inode changed) and never silently
recreated by a worker: the service refuses until ``nextbest store rebuild`` made a new one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

from typing import Callable

import numpy as np

from nextbest.decision.calibration import CHECK_PREFIX, KEY_PREFIX

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 100  # compare-and-set rounds on a value that keeps changing before the caller is told to retry


class Conflict(RuntimeError):
    """A value kept changing under compare-and-set, or a request id is being decided by another
    call; the request can be retried."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached or read (Redis down, SQLite file gone); retry later (503)."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store is unreachable (rather than a bug): Redis connection and
    timeout errors, SQLite I/O errors, :class:`StoreUnavailable`."""
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(w in text for w in ("disk", "unable to open", "no such table", "readonly", "locked"))
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError))


class Store(ABC):
    """The interface; every method is atomic on its own."""

    @abstractmethod
    def get_many(self, ns: str, keys: list[str]) -> list[str | None]:
        """Values (None where absent or expired)."""

    @abstractmethod
    def cas_many(self, ns: str, items: list[tuple[str, str | None, str]], ttl_s: float | None = None) -> list[bool]:
        """For each ``(key, expected, new)``: set ``new`` if the current value equals ``expected``
        (None: absent); returns which were set. Each item is atomic on its own."""

    @abstractmethod
    def put_new(self, ns: str, key: str, value: str, ttl_s: float | None = None) -> bool:
        """Set if absent; False if the key exists."""

    @abstractmethod
    def put_many(self, ns: str, items: list[tuple[str, str, float | None]]) -> None:
        """Set (overwrite) ``(key, value, ttl_s)`` items in one round trip; ``ttl_s`` None (kept) or > 0."""

    def put(self, ns: str, key: str, value: str, ttl_s: float | None = None) -> None:
        self.put_many(ns, [(key, value, ttl_s)])

    @abstractmethod
    def add_stats(self, deltas: dict[str, np.ndarray]) -> None:
        """Atomically add each action's statistics vector."""

    @abstractmethod
    def rescale_stats(self, action: str, keep: float, add: np.ndarray) -> None:
        """Atomically set one statistics vector to ``keep`` x itself + ``add`` (absent: nothing).
        A forget that never makes statistics negative, whatever was added since they were read."""

    @abstractmethod
    def stats(self) -> tuple[int, dict[str, np.ndarray]]:
        """(version, every action's statistics); the version changes with every add."""

    @abstractmethod
    def stats_version(self) -> int:
        """Cheap check whether the statistics changed."""

    @abstractmethod
    def enqueue(self, items: list[tuple[str, float]]) -> None:
        """Decisions ``(id, due time in seconds)`` waiting to enter the learner."""

    @abstractmethod
    def due(self, before_s: float, limit: int = 1000) -> list[str]:
        """Ids due before a time (not yet claimed)."""

    @abstractmethod
    def claim(self, ids: list[str]) -> list[str]:
        """Remove ids from the queue; returns those this caller removed (each id goes to one caller)."""

    @abstractmethod
    def delete(self, ns: str, keys: list[str]) -> None:
        """Remove keys (absent ones are ignored)."""

    @abstractmethod
    def decay_stats(self, half_life_s: float, now_s: float, every_s: float,
                    calibration_half_life_s: float = 0.0) -> float:
        """Forget: scale every statistic by ``0.5 ** (dt / half_life_s)``, ``dt`` the time since
        the last decay, if that is at least ``every_s`` (the first call only starts the clock);
        the response calibration's (keys ``calibration|...``) by its own half-life, its change
        checks' cumulative windows (``calibration-check|...``) never. A half-life
        of 0 keeps those statistics whole. Atomic, so any number of workers may call it: the
        statistics decay once per period. Returns the learner's factor (1.0 when nothing was done)."""

    def get(self, ns: str, key: str) -> str | None:
        return self.get_many(ns, [key])[0]

    def update(self, ns: str, key: str, fn: Callable[[str | None], str | None], ttl_s: float | None = None) -> str | None:
        """Change one value by read, ``fn``, compare-and-set, retried while others change it.

        Parameters
        ----------
        ns, key : str
        fn : callable
            The new value from the current one (None: absent); it may run several times, so it
            must not have effects beyond its result. Returning None, or the current value,
            writes nothing.
        ttl_s : float, optional
            Expiry of the written value.

        Returns
        -------
        str or None
            What ``fn`` returned on the round that counted (None: nothing written).

        Raises
        ------
        Conflict
            The value changed under every one of :data:`MAX_ATTEMPTS` rounds.
        """
        return self.update_many(ns, {key: fn}, ttl_s)[key]

    def update_many(self, ns: str, fns: dict[str, Callable[[str | None], str | None]],
                    ttl_s: float | None = None) -> dict[str, str | None]:
        """:meth:`update` of several keys in one read and one compare-and-set per round (the same
        bound and the same guarantee per key; keys are independent): what each ``fn`` returned."""
        out: dict[str, str | None] = {}
        todo = list(fns)
        for _ in range(MAX_ATTEMPTS):
            if not todo:
                return out
            items = []
            for key, current in zip(todo, self.get_many(ns, todo)):
                new = fns[key](current)
                out[key] = new
                if new is not None and new != current:
                    items.append((key, current, new))
            done = self.cas_many(ns, items, ttl_s) if items else []
            todo = [key for (key, _, _), ok in zip(items, done) if not ok]
        if todo:
            raise Conflict(f"{ns} {todo[0]!r} kept changing; retry")
        return out

    def prune(self) -> int:
        """Drop expired keys where the backend does not do it itself; returns how many."""
        return 0

    @abstractmethod
    def dump(self) -> dict:
        """Everything held: ``{"kv": {ns: {key: value}}, "stats": {action: vector}, "queue": {id: due}}``
        (live keys only; what ``nextbest store rebuild`` is compared with)."""

    @abstractmethod
    def clear(self) -> None:
        """Remove everything this store holds (before a rebuild)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def open_store(url: str) -> Store:
    """A store from its URL (``sqlite:///path`` or ``redis://...``)."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):])
    if url.startswith(("redis://", "rediss://", "unix://")):
        from nextbest.serving.redis_store import RedisStore

        return RedisStore(url)
    raise ValueError(f"store URL must start with sqlite:/// or redis://, got {url!r}")


# an upsert changes the row in place; INSERT OR REPLACE deletes it and inserts it again, overflow
# pages and all. Rewriting 333 documents of 2.7 KB in one transaction: 38-39 ms replaced, 5.3 ms
# upserted into a rowid table (benchmarks/store_writes.py; RESULTS.md, "Ingestion cheaper per event")
_UPSERT = ("INSERT INTO kv VALUES (?, ?, ?, ?) "
           "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, expires = excluded.expires")


class SQLiteStore(Store):
    """One SQLite file; safe for several threads and processes (WAL, IMMEDIATE transactions)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._create = True  # only the constructor creates the file; a worker never recreates it
        self._db().executescript("""
                CREATE TABLE IF NOT EXISTS kv (ns TEXT, key TEXT, value TEXT, expires REAL,
                                               PRIMARY KEY (ns, key));
                CREATE TABLE IF NOT EXISTS stats (action TEXT PRIMARY KEY, value BLOB);
                CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER);
                CREATE TABLE IF NOT EXISTS queue (id TEXT PRIMARY KEY, due REAL);
                CREATE INDEX IF NOT EXISTS queue_due ON queue (due);
                INSERT OR IGNORE INTO meta VALUES ('stats_version', 0);
        """)
        self._create = False
        self._rowid_kv()

    def _rowid_kv(self) -> None:
        """Move a ``kv`` table made ``WITHOUT ROWID`` (stores before 2026-12-03) to a rowid table.
        Values are documents of a few KB; WITHOUT ROWID keeps each in the key's b-tree, and upserting
        333 such documents took 13.2 ms there against 5.3 ms in a rowid table
        (``benchmarks/store_writes.py``). Once, in one transaction."""
        def old(db) -> bool:
            row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'kv'").fetchone()
            return row is not None and "WITHOUT ROWID" in row[0].upper()

        if not old(self._db()):
            return
        with self._tx() as db:
            if old(db):  # another process may have moved it meanwhile
                db.execute("CREATE TABLE kv_rowid (ns TEXT, key TEXT, value TEXT, expires REAL, PRIMARY KEY (ns, key))")
                db.execute("INSERT INTO kv_rowid SELECT ns, key, value, expires FROM kv")
                db.execute("DROP TABLE kv")
                db.execute("ALTER TABLE kv_rowid RENAME TO kv")
                log.info("store %s: kv table moved to a rowid table", self.path)

    def _inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except FileNotFoundError:
            return None

    def _db(self) -> sqlite3.Connection:
        """This thread's connection to the file at ``path``; reopened if the file was replaced
        (a rebuild), :class:`StoreUnavailable` if it is gone (a connection to a deleted file
        would go on writing to nothing)."""
        inode = self._inode()
        db = getattr(self._local, "db", None)
        if db is not None and inode == self._local.inode:
            return db
        if db is not None:
            db.close()
            self._local.db = None
        if inode is None and not self._create:
            raise StoreUnavailable(f"the store file {self.path} is gone; run `nextbest store rebuild` to rebuild "
                                   "it from the decision log")
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process; WAL fsyncs at checkpoints
        self._local.db, self._local.inode = db, self._inode()
        return db

    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, *_):
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self):
        return self._Tx(self._db())

    def get_many(self, ns, keys):
        return self._read(self._db(), ns, keys, time.time()) if keys else []

    @staticmethod
    def _read(db, ns, keys, now) -> list[str | None]:
        out = {}
        for lo in range(0, len(keys), 900):
            chunk = keys[lo:lo + 900]
            q = f"SELECT key, value, expires FROM kv WHERE ns = ? AND key IN ({','.join('?' * len(chunk))})"
            for k, v, exp in db.execute(q, [ns, *chunk]):
                if exp is None or exp > now:
                    out[k] = v
        return [out.get(k) for k in keys]

    def update_many(self, ns, fns, ttl_s=None):
        """The base class's contract in one ``BEGIN IMMEDIATE`` transaction: read, ``fn``, write.
        SQLite admits one writer at a time, so no value can change between this read and this
        write: no compare and no retry. (The compare-and-set rounds read every row a second time
        and wrote it in a statement of its own, about a third of the cost of ingesting an event.) The
        write lock is held while the ``fn`` run, which are short pure functions of the value."""
        out: dict[str, str | None] = {}
        if not fns:
            return out
        keys, now = list(fns), time.time()
        exp = now + ttl_s if ttl_s else None
        with self._tx() as db:
            writes = []
            for key, current in zip(keys, self._read(db, ns, keys, now)):
                new = out[key] = fns[key](current)
                if new is not None and new != current:
                    writes.append((ns, key, new, exp))
            db.executemany(_UPSERT, writes)
        return out

    def cas_many(self, ns, items, ttl_s=None):
        now = time.time()
        exp = now + ttl_s if ttl_s else None
        done = []
        with self._tx() as db:
            for key, expected, new in items:
                row = db.execute("SELECT value, expires FROM kv WHERE ns = ? AND key = ?", (ns, key)).fetchone()
                current = row[0] if row and (row[1] is None or row[1] > now) else None
                ok = current == expected
                if ok:
                    db.execute(_UPSERT, (ns, key, new, exp))
                done.append(ok)
        return done

    def put_new(self, ns, key, value, ttl_s=None):
        return self.cas_many(ns, [(key, None, value)], ttl_s)[0]

    def put_many(self, ns, items):
        if items:
            now = time.time()
            with self._tx() as db:
                db.executemany(_UPSERT,
                               [(ns, k, v, now + ttl if ttl else None) for k, v, ttl in items])

    def delete(self, ns, keys):
        if keys:
            with self._tx() as db:
                db.executemany("DELETE FROM kv WHERE ns = ? AND key = ?", [(ns, k) for k in keys])

    def add_stats(self, deltas):
        if not deltas:
            return
        with self._tx() as db:
            for action, delta in deltas.items():
                row = db.execute("SELECT value FROM stats WHERE action = ?", (action,)).fetchone()
                cur = np.frombuffer(row[0], dtype=np.float64) if row else 0.0
                db.execute("INSERT OR REPLACE INTO stats VALUES (?, ?)",
                           (action, (cur + np.asarray(delta, np.float64)).tobytes()))
            db.execute("UPDATE meta SET value = value + 1 WHERE name = 'stats_version'")

    def rescale_stats(self, action, keep, add):
        with self._tx() as db:
            row = db.execute("SELECT value FROM stats WHERE action = ?", (action,)).fetchone()
            if row is None:
                return
            new = keep * np.frombuffer(row[0], dtype=np.float64) + np.asarray(add, np.float64)
            db.execute("UPDATE stats SET value = ? WHERE action = ?", (new.tobytes(), action))
            db.execute("UPDATE meta SET value = value + 1 WHERE name = 'stats_version'")

    def stats(self):
        with self._tx() as db:  # one snapshot of version and values
            version = db.execute("SELECT value FROM meta WHERE name = 'stats_version'").fetchone()[0]
            rows = db.execute("SELECT action, value FROM stats").fetchall()
        return int(version), {a: np.frombuffer(v, dtype=np.float64).copy() for a, v in rows}

    def stats_version(self):
        return int(self._db().execute("SELECT value FROM meta WHERE name = 'stats_version'").fetchone()[0])

    def decay_stats(self, half_life_s, now_s, every_s, calibration_half_life_s=0.0):
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'stats_decayed_at'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('stats_decayed_at', ?)", (float(now_s),))
                return 1.0
            dt = now_s - float(row[0])
            if dt < every_s or (half_life_s <= 0 and calibration_half_life_s <= 0):
                return 1.0
            factor = 0.5 ** (dt / half_life_s) if half_life_s > 0 else 1.0
            cal = 0.5 ** (dt / calibration_half_life_s) if calibration_half_life_s > 0 else 1.0
            rows = db.execute("SELECT action, value FROM stats").fetchall()
            db.executemany("UPDATE stats SET value = ? WHERE action = ?",
                           [((np.frombuffer(v, dtype=np.float64) * (cal if a.startswith(KEY_PREFIX) else 1.0 if a.startswith(CHECK_PREFIX) else factor))
                             .tobytes(), a) for a, v in rows])
            db.execute("UPDATE meta SET value = ? WHERE name = 'stats_decayed_at'", (float(now_s),))
            db.execute("UPDATE meta SET value = value + 1 WHERE name = 'stats_version'")
        return factor

    def enqueue(self, items):
        if items:
            with self._tx() as db:
                db.executemany("INSERT OR IGNORE INTO queue VALUES (?, ?)", items)

    def due(self, before_s, limit=1000):
        q = "SELECT id FROM queue WHERE due <= ? ORDER BY due LIMIT ?"
        return [r[0] for r in self._db().execute(q, (before_s, limit))]

    def claim(self, ids):
        out = []
        with self._tx() as db:
            for i in ids:
                if db.execute("DELETE FROM queue WHERE id = ?", (i,)).rowcount:
                    out.append(i)
        return out

    def prune(self) -> int:
        """Drop expired keys (idempotency keys and decisions past their window)."""
        with self._tx() as db:
            return db.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (time.time(),)).rowcount

    def dump(self) -> dict:
        now, db = time.time(), self._db()
        kv: dict[str, dict] = {}
        for ns, k, v, exp in db.execute("SELECT ns, key, value, expires FROM kv"):
            if exp is None or exp > now:
                kv.setdefault(ns, {})[k] = v
        stats = {a: np.frombuffer(v, dtype=np.float64).copy() for a, v in db.execute("SELECT action, value FROM stats")}
        return {"kv": kv, "stats": stats, "queue": dict(db.execute("SELECT id, due FROM queue").fetchall())}

    def clear(self) -> None:
        with self._tx() as db:
            for table in ("kv", "stats", "queue"):
                db.execute(f"DELETE FROM {table}")
            db.execute("DELETE FROM meta WHERE name != 'stats_version'")
            db.execute("UPDATE meta SET value = value + 1 WHERE name = 'stats_version'")

    def close(self):
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
