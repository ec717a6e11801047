"""The service's fast path to model inputs: rows taken from the snapshot's converted arrays read
exactly like a fresh conversion of the same rows' frame (``decision.candidates.CustomerArrays``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nextbest.decision.candidates import CustomerArrays


def _frame(n: int, rng) -> pd.DataFrame:
    return pd.DataFrame({
        "count": rng.integers(0, 9, n).astype(np.int32),
        "rate": rng.random(n).astype(np.float32),
        "consent_email": rng.random(n) < 0.5,
        "timezone": pd.Categorical(rng.choice(["Europe/Paris", "America/New_York"], n)),
        "region": pd.array(rng.choice(["north", "south", "east"], n), dtype="str"),  # a text attribute
        "loyalty_tier": pd.Categorical(rng.choice(["gold", "silver"], n), categories=["silver", "gold"]),
    }, index=pd.Index([f"c{i}" for i in range(n)], name="customer_id"))


def test_taken_rows_read_like_a_fresh_conversion_with_edited_columns_and_recomputed_rows():
    rng = np.random.default_rng(3)
    snapshot = _frame(50, rng)
    base = CustomerArrays(snapshot)
    rows = np.array([7, 0, 7, 49, 12])
    batch = snapshot.iloc[rows].copy()
    # a recomputed row (live history) and a newcomer on the cold-start row: other values, a time zone
    # the snapshot never had, a region the model never saw
    batch["timezone"] = batch["timezone"].cat.add_categories(["Asia/Tokyo"])
    for i, tz, region in ((1, "Asia/Tokyo", "west"), (3, "America/New_York", "south")):
        batch.iloc[i, batch.columns.get_loc("count")] = 99
        batch.iloc[i, batch.columns.get_loc("timezone")] = tz
        batch.iloc[i, batch.columns.get_loc("region")] = region
    batch["consent_email"] = ~batch["consent_email"]  # an edited column (unsubscribes reported)
    fresh = np.zeros(len(rows), bool)
    fresh[[1, 3]] = True
    fitted = {"timezone": ["America/New_York", "Asia/Tokyo", "Europe/Paris"], "region": ["east", "north", "south"],
              "loyalty_tier": ["gold", "silver"]}
    taken = base.take(rows, batch, refresh=["consent_email"], fresh_rows=fresh)
    reference = CustomerArrays(batch)
    for col in batch.columns:
        np.testing.assert_array_equal(taken.get(col, fitted.get(col)), reference.get(col, fitted.get(col)), err_msg=col)
    assert taken.get("timezone", fitted["timezone"])[1] == 1.0 and np.isnan(taken.get("region", fitted["region"])[1])
    # a column only the batch has (the behaviour features the rules read) is converted from the batch
    batch["visits_7d"] = np.arange(len(rows), dtype=float)
    np.testing.assert_array_equal(base.take(rows, batch).get("visits_7d"), np.arange(len(rows), dtype=float))


def test_compact_table_is_float32_only_where_exact_and_hands_out_the_same_values():
    rng = np.random.default_rng(4)
    snapshot = _frame(60, rng).assign(age=rng.integers(18, 90, 60).astype(np.float64),  # whole numbers
                                      big=rng.integers(0, 2**20, 60).astype(np.int64))
    rows = np.array([5, 0, 59, 5])
    compact, wide = CustomerArrays(snapshot, compact=True), CustomerArrays(snapshot)
    compact._numeric_table(), wide._numeric_table()
    assert compact._table.dtype == np.float32 and wide._table.dtype == np.float64
    assert compact._table.nbytes * 2 == wide._table.nbytes
    taken, reference = compact.take(rows, snapshot.iloc[rows]), wide.take(rows, snapshot.iloc[rows])
    assert taken._table.dtype == np.float64
    for col in ("count", "rate", "consent_email", "age", "big"):
        np.testing.assert_array_equal(taken.get(col), reference.get(col), err_msg=col)
    # one value float32 cannot hold exactly: the whole table stays float64
    for inexact in (snapshot.assign(age=snapshot["age"] + 0.1), snapshot.assign(big=np.int64(2**24 + 1))):
        table = CustomerArrays(inexact, compact=True)
        table._numeric_table()
        assert table._table.dtype == np.float64
        np.testing.assert_array_equal(table.take(rows, inexact.iloc[rows]).get("age"), inexact["age"].to_numpy()[rows])
