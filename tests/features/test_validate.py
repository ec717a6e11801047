"""Validation: one table row per rule, each a single mutation of a valid dataset."""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.io import read_table, write_table
from nextbest.features.validate import ValidationError, check, validate, validate_dir

NOW = pd.Timestamp("2026-06-01", tz="UTC")


def valid_dataset():
    customers = pd.DataFrame({
        "customer_id": ["c1", "c2", "c3"],
        "timezone": ["Europe/Paris", "America/New_York", None],
        "consent_email": [True, True, False],
        "consent_sms": [True, False, False],
        "age": [31, 45, 60],
        "tier": ["gold", "none", "silver"],
    })
    events = pd.DataFrame({
        "customer_id": ["c1", "c1", "c1", "c1", "c2", "c2", "c3"],
        "ts": ["2026-05-01T10:00:00Z", "2026-05-01T10:01:00Z", "2026-05-01T12:00:00Z", "2026-05-01T13:00:00Z",
               "2026-05-02T09:00:00Z", "2026-05-02T09:00:05Z", "2026-05-03T18:00:00Z"],
        "event": ["sent", "delivered", "opened", "converted", "sent", "bounced", "converted"],
        "message_id": ["m1", "m1", "m1", "m1", "m2", "m2", None],
        "channel": ["email", None, "email", None, "sms", None, None],
        "offer": ["pct10", None, None, None, "none", None, None],
        "value": [np.nan, np.nan, np.nan, 42.0, np.nan, np.nan, 18.5],
        "propensity": [0.25, np.nan, np.nan, np.nan, 0.5, np.nan, np.nan],
    })
    return customers, events


def _set(table, column, row, value):
    def mutate(c, e):
        frame = c if table == "customers" else e
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (numeric and frame[column].dtype.kind in "if"):
            frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    return mutate


def _drop(table, column):
    def mutate(c, e):
        del (c if table == "customers" else e)[column]
    return mutate


def _add(table, column, values):
    def mutate(c, e):
        (c if table == "customers" else e)[column] = values
    return mutate


# (rule, mutation, file, column, 1-based row or None)
CASES = [
    ("missing_column", _drop("events", "ts"), "events", "ts", None),
    ("missing_column", _drop("customers", "customer_id"), "customers", "customer_id", None),
    ("wrong_type", _add("events", "value", [1, 2, 3, 4, 5, 6, "7"]), "events", "value", None),
    ("wrong_type", _add("customers", "customer_id", [1, 2, 3]), "customers", "customer_id", None),
    ("wrong_type", _add("customers", "joined", pd.to_datetime(["2026-01-01"] * 3)), "customers", "joined", None),
    ("unknown_column", _add("events", "campaign", ["x"] * 7), "events", "campaign", None),
    ("unparsable_timestamp", _set("events", "ts", 2, "yesterday"), "events", "ts", 3),
    ("future_timestamp", _set("events", "ts", 6, "2027-01-01T00:00:00Z"), "events", "ts", 7),
    ("unknown_event", _set("events", "event", 1, "read"), "events", "event", 2),
    ("unknown_channel", _set("events", "channel", 4, "fax"), "events", "channel", 5),
    ("unknown_offer", _set("events", "offer", 0, "pct50"), "events", "offer", 1),
    ("unknown_customer", _set("events", "customer_id", 6, "c9"), "events", "customer_id", 7),
    ("response_without_send", _set("events", "message_id", 5, "m7"), "events", "message_id", 6),
    ("response_before_send", _set("events", "ts", 2, "2026-05-01T09:00:00Z"), "events", "ts", 3),
    ("response_customer_mismatch", _set("events", "customer_id", 5, "c1"), "events", "customer_id", 6),
    ("response_channel_mismatch", _set("events", "channel", 2, "sms"), "events", "channel", 3),
    ("response_offer_mismatch", _set("events", "offer", 2, "pct20"), "events", "offer", 3),
    ("duplicate_send", _set("events", "message_id", 4, "m1"), "events", "message_id", 1),
    ("propensity_out_of_range", _set("events", "propensity", 0, 1.5), "events", "propensity", 1),
    ("propensity_out_of_range", _set("events", "propensity", 4, 0.0), "events", "propensity", 5),
    ("propensity_on_non_send", _set("events", "propensity", 1, 0.3), "events", "propensity", 2),
    ("missing_value", _set("events", "channel", 0, None), "events", "channel", 1),
    ("missing_value", _set("events", "message_id", 2, None), "events", "message_id", 3),
    ("missing_value", _set("events", "value", 3, np.nan), "events", "value", 4),
    ("negative_value", _set("events", "value", 6, -3.0), "events", "value", 7),
    ("value_on_non_conversion", _set("events", "value", 1, 10.0), "events", "value", 2),
    ("duplicate_customer_id", _set("customers", "customer_id", 2, "c1"), "customers", "customer_id", 1),
    ("empty_id", _set("customers", "customer_id", 1, ""), "customers", "customer_id", 2),
    ("invalid_timezone", _set("customers", "timezone", 0, "Mars/Olympus"), "customers", "timezone", 1),
    ("unknown_consent_channel", _add("customers", "consent_fax", [True] * 3), "customers", "consent_fax", None),
    ("not_boolean", _set("customers", "consent_email", 1, "maybe"), "customers", "consent_email", 2),
]


def test_valid_dataset_has_no_problem(config):
    c, e = valid_dataset()
    assert validate(c, e, config, now=NOW) == []


@pytest.mark.parametrize("rule, mutate, file, column, row", CASES,
                         ids=[f"{c[0]}-{c[3]}-{c[4]}" for c in CASES])
def test_each_rule_is_reported_where_it_is_broken(config, rule, mutate, file, column, row):
    c, e = valid_dataset()
    mutate(c, e)
    problems = validate(c, e, config, now=NOW)
    hits = [p for p in problems if p.rule == rule]
    assert hits, f"expected {rule}, got {[str(p) for p in problems]}"
    assert any(p.file == file and p.column == column and p.row == row for p in hits), [str(p) for p in hits]
    with pytest.raises(ValidationError) as err:
        check(c, e, config, now=NOW)
    text = str(err.value)
    assert rule in text and file in text and (column in text)
    if row is not None:
        assert f"row {row}" in text


def test_every_bad_row_is_reported(config):
    c, e = valid_dataset()
    e = pd.concat([e] * 400, ignore_index=True)
    e["message_id"] = e["message_id"] + "_" + (e.index // 7).astype(str)
    e.loc[e["event"] == "sent", "propensity"] = 2.0
    problems = validate(c, e, config, now=NOW)
    assert len([p for p in problems if p.rule == "propensity_out_of_range"]) == 800
    report = str(ValidationError(problems))
    assert "... and 750 more" in report


def test_check_returns_parsed_frames(config):
    c, e = valid_dataset()
    c2, e2 = check(c, e, config, now=NOW)
    assert isinstance(e2["ts"].dtype, pd.DatetimeTZDtype)
    assert c2["consent_push"].tolist() == [False, False, False]  # absent column: no consent
    assert c2["consent_email"].tolist() == [True, True, False]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip_through_files(config, tmp_path, fmt):
    c, e = valid_dataset()
    write_table(c, tmp_path, "customers", fmt)
    write_table(e, tmp_path, "events", fmt)
    back = read_table(tmp_path, "events")
    assert len(back) == len(e) and back["message_id"].isna().sum() == 1
    report = validate_dir(tmp_path, config, now=NOW)
    assert report.ok, str(report)
    e.loc[3, "value"] = -1.0
    write_table(e, tmp_path, "events", fmt)
    report = validate_dir(tmp_path, config, now=NOW)
    assert report.summary() == {"negative_value": 1}
    assert report.problems[0].file.endswith(f"events.{fmt}") and report.problems[0].row == 4
    assert list(report.to_frame().columns) == ["file", "column", "row", "rule", "message", "value"]


def test_csv_ids_keep_leading_zeros(config, tmp_path):
    c, e = valid_dataset()
    c["customer_id"] = ["001", "002", "003"]
    e["customer_id"] = e["customer_id"].map({"c1": "001", "c2": "002", "c3": "003"})
    write_table(c, tmp_path, "customers", "csv")
    write_table(e, tmp_path, "events", "csv")
    assert validate_dir(tmp_path, config, now=NOW).ok


def test_missing_table_and_ambiguous_table(config, tmp_path):
    c, e = valid_dataset()
    write_table(c, tmp_path, "customers", "csv")
    with pytest.raises(FileNotFoundError, match="no `events` table"):
        validate_dir(tmp_path, config)
    write_table(e, tmp_path, "events", "csv")
    write_table(e, tmp_path, "events", "parquet")
    with pytest.raises(FileNotFoundError, match="more than once"):
        validate_dir(tmp_path, config)


def test_simulated_data_is_valid(small_world, config):
    assert validate(small_world.customers, small_world.events, config) == []
