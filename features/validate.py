"""Validation of a dataset against the data contract (``features.schema``).

Every problem is reported with its file, column, 1-based data row (CSV line = row + 1; ``None``
for a problem of the whole table) and the rule broken. Nothing is dropped or coerced: ``check``
refuses to return data that has any problem. All checks are vectorized (10 million events take
seconds).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.features.eventlog import lookup_codes, to_ms
from nextbest.features.io import find_table, load_dataset, read_behaviour
from nextbest.features.localtime import known_timezones
from nextbest.features.schema import CONSENT_PREFIX, EVENT_COLUMNS, EVENT_TYPES, REQUIRED_EVENT_COLUMNS

log = logging.getLogger(__name__)
SHOWN_PER_RULE = 50


@dataclass(frozen=True)
class Problem:
    file: str
    column: str | None
    row: int | None  # 1-based data row; None for the whole table
    rule: str
    message: str
    value: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}" + (f", row {self.row}" if self.row is not None else "") + \
                (f", column {self.column}" if self.column else "")
        shown = f" (value {self.value!r})" if self.value is not None else ""
        return f"{where}: [{self.rule}] {self.message}{shown}"


def format_report(problems: list[Problem]) -> str:
    if not problems:
        return "no problems"
    by_rule: dict[str, list[Problem]] = {}
    for p in problems:
        by_rule.setdefault(p.rule, []).append(p)
    lines = [f"{len(problems)} problem(s) in {len(by_rule)} rule(s):"]
    for rule, items in by_rule.items():
        lines.append(f"- {rule}: {len(items)}")
        lines += [f"    {p}" for p in items[:SHOWN_PER_RULE]]
        if len(items) > SHOWN_PER_RULE:
            lines.append(f"    ... and {len(items) - SHOWN_PER_RULE} more")
    return "\n".join(lines)


class ValidationError(ValueError):
    """The data breaks the contract; ``problems`` lists every violation."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(format_report(problems))


@dataclass
class ValidationReport:
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, int]:
        return pd.Series([p.rule for p in self.problems], dtype="str").value_counts().to_dict()

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(p) for p in self.problems],
                            columns=["file", "column", "row", "rule", "message", "value"])

    def __str__(self) -> str:
        return format_report(self.problems)


class _Problems(list):
    def add(self, file, column, rule, message, rows=None, values=None):
        """Add a table-level problem (``rows`` None) or one per row at 0-based positions ``rows``."""
        if rows is None:
            self.append(Problem(file, column, None, rule, message))
            return
        rows = np.asarray(rows)
        vals = [None] * len(rows) if values is None else [None if _isna(v) else str(v) for v in values]
        self.extend(Problem(file, column, int(r) + 1, rule, message, v) for r, v in zip(rows, vals))


def _isna(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _is_text(col: pd.Series) -> bool:
    if col.isna().all():
        return True
    if pd.api.types.is_string_dtype(col.dtype) and not pd.api.types.is_object_dtype(col.dtype):
        return True
    if isinstance(col.dtype, pd.CategoricalDtype):
        return all(isinstance(c, str) for c in col.cat.categories)
    if pd.api.types.is_object_dtype(col.dtype):
        return bool(col.dropna().map(type).eq(str).all())
    return False


def _is_number(col: pd.Series) -> bool:
    return col.isna().all() or (pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype))


def parse_timestamps(col: pd.Series) -> pd.Series:
    """UTC timestamps; naive values are taken as UTC; unparsable values become NaT."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(col.dtype):
        return col.dt.tz_localize("UTC")
    return pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")


def _check_timestamps(out: _Problems, file, name, col: pd.Series, now, required: bool) -> pd.Series:
    parsed = parse_timestamps(col)
    bad = parsed.isna() & (col.notna() if not required else True)
    if bad.any():
        out.add(file, name, "unparsable_timestamp", "not a timestamp (ISO 8601, UTC)",
                np.flatnonzero(bad.to_numpy()), col[bad].to_numpy())
    future = parsed > now
    if future.any():
        out.add(file, name, "future_timestamp", f"after now ({now:%Y-%m-%d %H:%M} UTC)",
                np.flatnonzero(future.to_numpy()), parsed[future].astype("str").to_numpy())
    return parsed


def _booleans(col: pd.Series):
    """(bool values, bad mask) of a consent column; missing cells are False."""
    if pd.api.types.is_bool_dtype(col.dtype):
        return col.fillna(False).astype(bool).to_numpy(), np.zeros(len(col), bool)
    if pd.api.types.is_numeric_dtype(col.dtype):
        v = col.to_numpy(dtype=float, na_value=np.nan)
        return v == 1, ~(np.isnan(v) | (v == 0) | (v == 1))
    text = col.astype("str").str.strip().str.lower()
    known = text.isin(["true", "false", "1", "0"]) | col.isna()
    return text.isin(["true", "1"]).to_numpy(), ~known.to_numpy()


def _validate_customers(c: pd.DataFrame, config: Config, file: str, now, out: _Problems):
    parsed = {}
    if "customer_id" not in c:
        out.add(file, "customer_id", "missing_column", "required column is missing")
        return None, parsed
    ids = c["customer_id"]
    if not _is_text(ids):
        out.add(file, "customer_id", "wrong_type", f"must be text, got {ids.dtype}")
    empty = ids.isna() | (ids.astype("str").str.strip() == "")
    if empty.any():
        out.add(file, "customer_id", "empty_id", "customer_id is empty", np.flatnonzero(empty.to_numpy()))
    dup = ids.duplicated(keep=False) & ~empty
    if dup.any():
        out.add(file, "customer_id", "duplicate_customer_id", "customer_id appears more than once",
                np.flatnonzero(dup.to_numpy()), ids[dup].to_numpy())
    if "timezone" in c:
        tz = c["timezone"]
        valid = known_timezones()
        uniq = pd.unique(tz.dropna())
        bad_values = {u for u in uniq if not isinstance(u, str) or u not in valid}
        if bad_values:
            bad = tz.isin(bad_values).to_numpy()
            out.add(file, "timezone", "invalid_timezone", "not an IANA time zone name",
                    np.flatnonzero(bad), tz[bad].to_numpy())
    for name in [k for k in c.columns if k.startswith(CONSENT_PREFIX)]:
        channel = name[len(CONSENT_PREFIX):]
        if channel not in config.channels:
            out.add(file, name, "unknown_consent_channel",
                    f"consent for a channel that is not configured ({', '.join(config.channel_names)})")
            continue
        values, bad = _booleans(c[name])
        if bad.any():
            out.add(file, name, "not_boolean", "consent must be true/false (or 1/0)", np.flatnonzero(bad),
                    c[name][bad].to_numpy())
        parsed[name] = values
    if "signup_at" in c:
        parsed["signup_at"] = _check_timestamps(out, file, "signup_at", c["signup_at"], now, required=False)
    for name in c.columns:
        if name in ("customer_id", "timezone", "signup_at") or name.startswith(CONSENT_PREFIX):
            continue
        col = c[name]
        if pd.api.types.is_datetime64_any_dtype(col.dtype) or not (
                _is_number(col) or _is_text(col) or pd.api.types.is_bool_dtype(col.dtype)):
            out.add(file, name, "wrong_type", f"an attribute must be numeric or categorical text, got {col.dtype}"
                    + (" with mixed types" if pd.api.types.is_object_dtype(col.dtype) else ""))
    return ids, parsed


def _validate_events(e: pd.DataFrame, config: Config, file: str, now, ids, out: _Problems):
    for name in e.columns:
        if name not in EVENT_COLUMNS:
            out.add(file, name, "unknown_column", f"not part of the events contract ({', '.join(EVENT_COLUMNS)})")
    missing = [n for n in REQUIRED_EVENT_COLUMNS if n not in e]
    for name in missing:
        out.add(file, name, "missing_column", "required column is missing")
    if missing:
        return None
    for name in ("customer_id", "event", "message_id", "channel", "offer"):
        if name in e and not _is_text(e[name]):
            out.add(file, name, "wrong_type", f"must be text, got {e[name].dtype}")
    for name in ("value", "propensity"):
        if name in e and not _is_number(e[name]):
            out.add(file, name, "wrong_type", f"must be numeric, got {e[name].dtype}")
    if any(p.rule == "wrong_type" and p.file == file for p in out):
        return None  # row checks on mistyped columns would only repeat the problem

    ts = _check_timestamps(out, file, "ts", e["ts"], now, required=True)
    event = e["event"]
    bad = ~event.isin(EVENT_TYPES)
    if bad.any():
        out.add(file, "event", "unknown_event", f"event must be one of {', '.join(EVENT_TYPES)}",
                np.flatnonzero(bad.to_numpy()), event[bad].to_numpy())
    cust = e["customer_id"]
    empty = cust.isna()
    if empty.any():
        out.add(file, "customer_id", "empty_id", "customer_id is empty", np.flatnonzero(empty.to_numpy()))
    cust_code = lookup_codes(cust, ids.dropna()) if ids is not None else lookup_codes(cust, cust.dropna().unique())
    if ids is not None:
        unknown = (cust_code < 0) & ~empty.to_numpy()
        if unknown.any():
            out.add(file, "customer_id", "unknown_customer", "no such customer in customers",
                    np.flatnonzero(unknown), cust.to_numpy()[unknown])
    is_sent = (event == "sent").to_numpy()
    is_conv = (event == "converted").to_numpy()
    for name, allowed, rule in (("channel", config.channel_names, "unknown_channel"),
                                ("offer", config.offer_names, "unknown_offer")):
        col = e[name] if name in e else pd.Series([None] * len(e))
        given = col.notna().to_numpy()
        bad = given & ~col.isin(allowed).to_numpy()
        if bad.any():
            out.add(file, name, rule, f"{name} must be one of {', '.join(allowed)}", np.flatnonzero(bad), col[bad].to_numpy())
        need = is_sent & ~given
        if need.any():
            out.add(file, name, "missing_value", f"a sent event needs its {name}", np.flatnonzero(need))
    msg = e["message_id"]
    has_msg = msg.notna().to_numpy()
    need = ~has_msg & ~is_conv & event.isin(EVENT_TYPES).to_numpy()
    if need.any():
        out.add(file, "message_id", "missing_value",
                "message_id is required (only a converted event may omit it: an organic order)", np.flatnonzero(need))
    sent_pos = np.flatnonzero(is_sent & has_msg)
    dup = msg.iloc[sent_pos].duplicated(keep=False).to_numpy()
    if dup.any():
        out.add(file, "message_id", "duplicate_send", "two sent events share this message_id",
                sent_pos[dup], msg.iloc[sent_pos[dup]].to_numpy())
    resp = np.flatnonzero(~is_sent & has_msg)
    if len(resp):
        at = lookup_codes(msg.iloc[resp], msg.iloc[sent_pos])
        orphan = at < 0
        if orphan.any():
            out.add(file, "message_id", "response_without_send", "no sent event with this message_id",
                    resp[orphan], msg.iloc[resp[orphan]].to_numpy())
        r, s = resp[~orphan], sent_pos[at[~orphan]]
        ms = to_ms(ts.fillna(pd.Timestamp(0, tz="UTC")))  # unparsable times are reported above
        early = ms[r] < ms[s]
        if early.any():
            out.add(file, "ts", "response_before_send", "happens before its message was sent", r[early],
                    ts.iloc[r[early]].astype("str").to_numpy())
        other = cust_code[r] != cust_code[s]
        if other.any():
            out.add(file, "customer_id", "response_customer_mismatch", "not the customer the message was sent to",
                    r[other], cust.iloc[r[other]].to_numpy())
        for name, rule in (("channel", "response_channel_mismatch"), ("offer", "response_offer_mismatch")):
            if name not in e:
                continue
            col = e[name]
            labels = (col.cat.categories.astype("str") if isinstance(col.dtype, pd.CategoricalDtype)
                      else pd.unique(col.dropna().astype("str")))
            codes = lookup_codes(col, list(labels))  # compare integer codes, not 10M Python strings
            differs = (codes[r] >= 0) & (codes[r] != codes[s])
            if differs.any():
                out.add(file, name, rule, f"differs from the {name} of its send", r[differs],
                        col.iloc[r[differs]].astype("str").to_numpy())
    if "value" in e:
        value = e["value"].to_numpy(dtype=float, na_value=np.nan)
        missing_v = is_conv & np.isnan(value)
        if missing_v.any():
            out.add(file, "value", "missing_value", "a converted event needs its order value", np.flatnonzero(missing_v))
        neg = is_conv & (value < 0)
        if neg.any():
            out.add(file, "value", "negative_value", "order value must be >= 0", np.flatnonzero(neg), value[neg])
        stray = ~is_conv & ~np.isnan(value)
        if stray.any():
            out.add(file, "value", "value_on_non_conversion", "only converted events carry a value",
                    np.flatnonzero(stray), value[stray])
    elif is_conv.any():
        out.add(file, "value", "missing_column", "converted events need a value column")
    if "propensity" in e:
        p = e["propensity"].to_numpy(dtype=float, na_value=np.nan)
        stray = ~is_sent & ~np.isnan(p)
        if stray.any():
            out.add(file, "propensity", "propensity_on_non_send", "only sent events carry a propensity",
                    np.flatnonzero(stray), p[stray])
        bad = is_sent & ~np.isnan(p) & ~((p > 0) & (p <= 1))
        if bad.any():
            out.add(file, "propensity", "propensity_out_of_range", "propensity must be in (0, 1]",
                    np.flatnonzero(bad), p[bad])
    return ts


def _now(now) -> pd.Timestamp:
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    return now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")


def validate(customers: pd.DataFrame, events: pd.DataFrame, config: Config, now=None,
             files: dict | None = None, behaviour: pd.DataFrame | None = None) -> list[Problem]:
    """Every problem of ``customers`` and ``events`` (and of the optional ``behaviour`` table,
    ``features.behaviour``) against the contract (empty list: valid)."""
    problems, _ = _run(customers, events, config, now, files)
    if behaviour is not None:
        from nextbest.features.behaviour import validate_behaviour

        ids = customers["customer_id"] if "customer_id" in customers else []
        problems += validate_behaviour(behaviour, ids, (files or {}).get("behaviour", "behaviour"), _now(now))
    return problems


def _run(customers, events, config, now, files):
    files = {"customers": "customers", "events": "events", **(files or {})}
    now = _now(now)
    out = _Problems()
    ids, parsed = _validate_customers(customers, config, files["customers"], now, out)
    ts = _validate_events(events, config, files["events"], now, ids, out)
    return list(out), (parsed, ts)


def check(customers: pd.DataFrame, events: pd.DataFrame, config: Config, now=None,
          files: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate and return ``(customers, events)`` with parsed types, or raise :class:`ValidationError`.

    Events get ``ts`` as UTC datetimes; customers get ``signup_at`` parsed and one boolean
    ``consent_<channel>`` per configured channel (False where the column was absent).
    """
    problems, (parsed, ts) = _run(customers, events, config, now, files)
    if problems:
        raise ValidationError(problems)
    return _typed(customers, events, config, parsed, ts)


def parse(customers: pd.DataFrame, events: pd.DataFrame, config: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frames :func:`check` returns, for data that has passed :func:`check` already: the same
    parsing, no rules. ``features.partitioned`` checks each partition once (``summarize``) and
    parses it in its later passes; the rules cost more than the parsing."""
    parsed = {name: _booleans(customers[name])[0] for name in (f"{CONSENT_PREFIX}{c}" for c in config.channel_names)
              if name in customers}
    if "signup_at" in customers:
        parsed["signup_at"] = parse_timestamps(customers["signup_at"])
    return _typed(customers, events, config, parsed, parse_timestamps(events["ts"]))


def _typed(customers, events, config, parsed: dict, ts) -> tuple[pd.DataFrame, pd.DataFrame]:
    customers = customers.copy()
    for c in config.channel_names:
        customers[f"{CONSENT_PREFIX}{c}"] = parsed.get(f"{CONSENT_PREFIX}{c}", np.zeros(len(customers), bool))
    if "signup_at" in parsed:
        customers["signup_at"] = parsed["signup_at"]
    events = events.assign(ts=ts)
    return customers, events


def validate_dir(data_dir: str | Path, config: Config, now=None) -> ValidationReport:
    """Load and validate a data directory."""
    customers, events = load_dataset(data_dir)
    behaviour = read_behaviour(data_dir)
    names = ("customers", "events") + (("behaviour",) if behaviour is not None else ())
    files = {name: str(find_table(data_dir, name)) for name in names}
    report = ValidationReport(validate(customers, events, config, now, files, behaviour))
    log.info("validated %s: %d customers, %d events, %d problem(s)", data_dir, len(customers), len(events),
             len(report.problems))
    return report
