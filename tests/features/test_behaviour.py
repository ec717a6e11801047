"""Behavioural events (``features.behaviour``): the running per-customer state gives exactly the
batch features of the same events, for random streams in any order; the table is validated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.features.behaviour import (BEHAVIOUR_EVENTS, BehaviourState, batch_features, feature_names,
                                         keep_seconds, states_of)
from nextbest.features.io import read_optional_table, write_table
from nextbest.features.validate import validate_dir

T0 = pd.Timestamp("2026-09-01", tz="UTC")


def _stream(rng, n, customers, days):
    ts = T0 + pd.to_timedelta(rng.uniform(0, days * 86400, n), unit="s")
    return pd.DataFrame({"customer_id": rng.choice(customers, n), "ts": ts,
                         "event": rng.choice(BEHAVIOUR_EVENTS, n)})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_running_state_equals_the_batch_features_at_every_time(config, seed):
    rng = np.random.default_rng(seed)
    customers = [f"c{i}" for i in range(12)]
    table = _stream(rng, 1500, customers, days=200)  # longer than the longest window: old events are dropped
    keep = keep_seconds(config)
    states = {c: BehaviourState() for c in customers}
    arrival = rng.permutation(len(table))  # late and out of order
    checks = 0
    for k, i in enumerate(arrival):
        r = table.iloc[i]
        states[r["customer_id"]] = states[r["customer_id"]].with_event(r["event"], r["ts"].timestamp(), keep)
        if k % 300 == 299 or k == len(arrival) - 1:
            seen = table.iloc[arrival[:k + 1]]
            newest = seen.groupby("customer_id")["ts"].max()
            for t in [newest.max() + pd.Timedelta(hours=h) for h in (0, 5, 24 * 40)] + [newest.max() - pd.Timedelta(days=20)]:
                want = batch_features(seen, customers, t, config)
                got = pd.DataFrame([states[c].features(t.timestamp(), config) for c in customers],
                                   index=want.index)[want.columns]
                ok = [c for c in customers if c not in newest or t.timestamp() >= newest[c].timestamp() - keep]
                pd.testing.assert_frame_equal(got.loc[ok], want.loc[ok], check_exact=False, rtol=1e-12, atol=1e-9)
                checks += 1
    assert checks >= 8
    # the state rebuilt from the whole table at once is the same state
    for c, st in states_of(table, keep).items():
        t = (table["ts"].max() + pd.Timedelta(hours=1)).timestamp()
        assert st.features(t, config) == pytest.approx(states[c].features(t, config), nan_ok=True)
        assert BehaviourState.from_json(st.to_json()).features(t, config) == pytest.approx(st.features(t, config),
                                                                                          nan_ok=True)


def test_features_count_only_what_happened_before(config):
    table = pd.DataFrame({"customer_id": ["a", "a", "a"], "event": ["review", "review", "visit"],
                          "ts": [T0, T0 + pd.Timedelta(days=10), T0 + pd.Timedelta(days=10)]})
    f = batch_features(table, ["a", "b"], T0 + pd.Timedelta(days=10), config)
    assert list(f.columns) == feature_names(config)
    assert f.loc["a", "review_total"] == 1 and f.loc["a", "review_7d"] == 0 and f.loc["a", "review_30d"] == 1
    assert f.loc["a", "hours_since_review"] == 240 and np.isnan(f.loc["a", "hours_since_visit"])
    assert f.loc["b"].drop([c for c in f.columns if c.startswith("hours_since")]).eq(0).all()


def test_a_behaviour_table_is_validated_with_the_data(small_data_dir, config, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data_dir, data)
    customers = pd.read_parquet(data / "customers.parquet")["customer_id"].astype(str)
    good = pd.DataFrame({"customer_id": customers.iloc[:4].tolist(), "ts": [T0] * 4,
                         "event": ["visit", "cart_abandoned", "review", "app_open"], "value": [None, 80.0, 4.0, None]})
    write_table(good, data, "behaviour")
    assert validate_dir(data, config).ok
    bad = pd.concat([good, pd.DataFrame({"customer_id": ["nobody", customers.iloc[0], customers.iloc[1]],
                                         "ts": ["2026-09-01T00:00:00Z", "yesterday", "2026-09-01T00:00:00Z"],
                                         "event": ["visit", "review", "dance"], "value": [None, 9.0, None]})])
    bad["ts"] = bad["ts"].astype(str)
    bad["value"] = pd.to_numeric(bad["value"])
    write_table(bad.assign(visit_value=1.0), data, "behaviour")
    rules = pd.Series([p.rule for p in validate_dir(data, config).problems]).value_counts().to_dict()
    assert rules == {"unknown_column": 1, "unknown_customer": 1, "unparsable_timestamp": 1, "unknown_event": 1,
                     "bad_value": 1}


def test_an_optional_table_is_absent_or_read_never_silently_dropped(tmp_path):
    """``behaviour`` (and ``logging_decisions``) may be absent; a table stored twice is an error,
    not "absent", so a second copy can never make the service or training ignore both."""
    table = pd.DataFrame({"customer_id": ["c1"], "event": ["visit"], "ts": ["2026-09-01T10:00:00Z"]})
    assert read_optional_table(tmp_path, "behaviour") is None
    write_table(table, tmp_path, "behaviour", fmt="csv")
    assert read_optional_table(tmp_path, "behaviour")["customer_id"].tolist() == ["c1"]
    write_table(table, tmp_path, "behaviour", fmt="parquet")
    with pytest.raises(FileNotFoundError, match="more than once"):
        read_optional_table(tmp_path, "behaviour")
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        read_optional_table(tmp_path / "nowhere", "behaviour")
