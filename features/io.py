"""Reading and writing the tables of a data directory (Parquet, CSV or a folder of Parquet parts)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

# Read as text from CSV so that ids such as "00123" survive and validation sees what was written.
CSV_STRING_COLUMNS = ("customer_id", "message_id", "channel", "offer", "event", "timezone", "ts", "signup_at")
# Low-cardinality text columns of events are read as categoricals: Parquet stores them
# dictionary-encoded already, so their integer codes come for free and 10 million rows take a
# fraction of the memory of plain strings.
CATEGORICAL_EVENT_COLUMNS = ("customer_id", "event", "channel", "offer")


def _stored_as(data_dir: Path, name: str) -> list[Path]:
    return [p for p in (data_dir / f"{name}.parquet", data_dir / f"{name}.csv", data_dir / name) if p.exists()]


def has_table(data_dir: str | Path, name: str) -> bool:
    """Whether ``data_dir`` holds table ``name`` in a form :func:`find_table` reads."""
    return bool(_stored_as(Path(data_dir), name))


def find_table(data_dir: str | Path, name: str) -> Path:
    """The file (or folder of Parquet parts) that holds table ``name`` in ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data directory not found")
    found = _stored_as(data_dir, name)
    if not found:
        raise FileNotFoundError(f"{data_dir}: no `{name}` table (expected {name}.parquet, {name}.csv or {name}/)")
    if len(found) > 1:
        raise FileNotFoundError(f"{data_dir}: `{name}` is there more than once ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def csv_dtypes(path: Path) -> dict[str, str]:
    """The text columns of a CSV table, read as text (``CSV_STRING_COLUMNS`` present in its header)."""
    header = pd.read_csv(path, nrows=0).columns
    return {c: "str" for c in CSV_STRING_COLUMNS if c in header}


def read_table(data_dir: str | Path, name: str) -> pd.DataFrame:
    """Read table ``name`` as stored (CSV: id, text and time columns kept as text)."""
    path = find_table(data_dir, name)
    categorical = CATEGORICAL_EVENT_COLUMNS if name == "events" else ()
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=csv_dtypes(path), keep_default_na=True)
        for c in categorical:  # text categories ("001" stays "001")
            if c in frame:
                frame[c] = frame[c].astype("category")
        return frame
    import pyarrow.parquet as pq

    schema = pq.read_schema(path) if path.is_file() else None
    present = [c for c in categorical if schema is None or c in schema.names]
    table = pq.read_table(path, read_dictionary=present or None)
    return table.to_pandas()


def load_dataset(data_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(customers, events)`` of a data directory, as stored."""
    return read_table(data_dir, "customers"), read_table(data_dir, "events")


def read_optional_table(data_dir: str | Path, name: str) -> pd.DataFrame | None:
    """Table ``name`` as stored, or None when ``data_dir`` does not hold it. A missing data
    directory, or a table stored twice, is an error like :func:`find_table`'s, never "absent"."""
    if Path(data_dir).is_dir() and not has_table(data_dir, name):
        return None
    return read_table(data_dir, name)


def read_behaviour(data_dir: str | Path) -> pd.DataFrame | None:
    """The optional ``behaviour`` table (``features.behaviour``) as stored, or None without one."""
    return read_optional_table(data_dir, "behaviour")


def write_table(df: pd.DataFrame, data_dir: str | Path, name: str, fmt: str = "parquet") -> Path:
    """Write ``df`` as ``data_dir/name.{parquet,csv}``; timestamps in CSV are ISO 8601 UTC."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format must be parquet or csv, got {fmt!r}")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{name}.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    log.debug("wrote %d rows to %s", len(df), path)
    return path
