"""Writing contact documents into SQLite: INSERT OR REPLACE against an upsert, rowid against WITHOUT ROWID.

    .venv/bin/python benchmarks/store_writes.py [--docs 5000] [--bytes 2756] [--batch 333] [--rounds 30]

The service's ``kv`` table holds one JSON document per customer (``serving.contact``, a few KB
once a customer has a few dozen live events). Ingesting 1,000 events of 333 customers reads and
rewrites 333 documents in one write transaction. This times that round (read with ``IN``, write
with ``executemany``, commit; WAL, ``synchronous=NORMAL`` as in ``serving.store``) on a table of
``--docs`` documents, for each table layout and write statement; medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

_TABLE = "CREATE TABLE kv (ns TEXT, key TEXT, value TEXT, expires REAL, PRIMARY KEY (ns, key))"
LAYOUTS = {
    "without rowid": f"{_TABLE} WITHOUT ROWID",
    "rowid": _TABLE,
}
WRITES = {
    "insert or replace": "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)",
    "upsert": "INSERT INTO kv VALUES (?, ?, ?, ?) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
              "expires = excluded.expires",
}


def one(folder: Path, layout: str, write: str, args) -> float:
    db = sqlite3.connect(folder / f"{layout}-{write}.db".replace(" ", "_"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(LAYOUTS[layout])
    keys = [f"c{i}" for i in range(args.docs)]
    doc = "x" * args.bytes
    db.execute("BEGIN")
    db.executemany("INSERT INTO kv VALUES ('contact', ?, ?, NULL)", [(k, doc) for k in keys])
    db.execute("COMMIT")
    rng, times = random.Random(0), []
    for r in range(args.rounds):
        chosen = rng.sample(keys, args.batch)
        t = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        q = f"SELECT key, value FROM kv WHERE ns = ? AND key IN ({','.join('?' * len(chosen))})"
        got = list(db.execute(q, ["contact", *chosen]))
        db.executemany(WRITES[write], [("contact", k, v[:-1] + str(r % 10), None) for k, v in got])
        db.execute("COMMIT")
        times.append(time.perf_counter() - t)
    db.close()
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--bytes", type=int, default=2756)
    ap.add_argument("--batch", type=int, default=333)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = {f"{layout}, {write}": round(one(Path(tmp), layout, write, args), 2)
               for layout in LAYOUTS for write in WRITES}
    base = out["without rowid, insert or replace"]
    print(json.dumps({"ms_per_round_median": out, "vs_before": {k: round(base / v, 1) for k, v in out.items()},
                      "settings": vars(args), "sqlite": sqlite3.sqlite_version}, indent=2))


if __name__ == "__main__":
    main()
