"""Engagement histories: known answers on a hand-made log, and the cold start."""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.eventlog import EV, EventLog, to_ms
from nextbest.features.history import engagement_history
from nextbest.features.schema import EVENT_TYPES
from nextbest.features.spec import feature_names

AS_OF = pd.Timestamp("2026-03-08 00:00", tz="UTC")


def _events(rows):
    cols = ["customer_id", "ts", "event", "message_id", "channel", "offer", "value", "propensity"]
    df = pd.DataFrame(rows, columns=cols)
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


@pytest.fixture
def hand_made(config):
    customers = pd.DataFrame({
        "customer_id": ["A", "B", "C"],
        "timezone": ["America/New_York", None, "Europe/Paris"],
        "signup_at": pd.to_datetime(["2026-01-01", "2026-02-01", "2026-02-15"], utc=True),
        "consent_email": [True, True, True],
        "consent_sms": [True, False, False],
        "age": [30, 40, 50],
    })
    events = _events([
        ("A", "2026-03-01 10:00", "sent", "m1", "email", "pct10", None, 0.2),
        ("A", "2026-03-01 10:01", "delivered", "m1", None, None, None, None),
        ("A", "2026-03-01 14:00", "opened", "m1", None, None, None, None),   # 09:00 in New York (EST)
        ("A", "2026-03-01 14:05", "clicked", "m1", None, None, None, None),
        ("A", "2026-03-01 15:00", "converted", "m1", None, None, 50.0, None),
        ("C", "2026-03-02 10:00", "sent", "m4", "email", "none", None, 0.5),
        ("C", "2026-03-02 10:01", "delivered", "m4", None, None, None, None),
        ("A", "2026-03-05 12:00", "sent", "m2", "sms", "none", None, 0.1),
        ("A", "2026-03-05 12:00", "delivered", "m2", None, None, None, None),
        ("A", "2026-03-06 12:00", "converted", None, None, None, 30.0, None),  # organic order
        ("A", "2026-03-08 00:00", "sent", "m3", "push", "none", None, 0.1),   # at as_of: excluded
        ("A", "2026-03-09 23:00", "opened", "m3", None, None, None, None),     # after as_of: excluded
    ])
    return EventLog.build(customers, events, config)


def test_known_answers(hand_made, config):
    h = engagement_history(hand_made, ["A", "B", "C"], AS_OF)
    assert list(h.columns[: len(feature_names(config))]) == feature_names(config)
    a, b = h.loc["A"], h.loc["B"]
    assert a["all_sent_7d"] == 2 and a["all_sent_30d"] == 2
    assert a["email_sent_7d"] == 1 and a["sms_sent_7d"] == 1 and a["push_sent_7d"] == 0
    assert a["email_opened_7d"] == 1 and a["email_clicked_7d"] == 1
    assert a["all_converted_7d"] == 2          # the attributed and the organic order
    assert a["email_converted_7d"] == 1        # only the order attributed to the email
    assert a["sms_converted_7d"] == 0
    assert a["order_value_90d"] == pytest.approx(80.0)
    assert a["avg_order_value"] == pytest.approx(40.0)
    assert a["lifetime_orders"] == 2
    assert a["all_days_since_open"] == pytest.approx(6 + 10 / 24, abs=1e-6)
    assert a["all_days_since_conversion"] == pytest.approx(1.5, abs=1e-6)
    assert a["top_open_hour"] == 9             # local New York hour of the open
    assert a["all_sent_24h"] == 0 and a["all_sent_168h"] == 2
    assert a["offer_pct10_sent_90d"] == 1 and a["offer_pct10_converted_90d"] == 1
    assert a["tenure_days"] == pytest.approx((AS_OF - pd.Timestamp("2026-01-01", tz="UTC")).days)
    # empirical Bayes: population (all customers, days before 03-08): 1 open of 3 deliveries
    m = config.features.prior_strength
    assert a["all_open_rate_7d"] == pytest.approx((1 + m / 3) / (2 + m), rel=1e-6)
    assert a["email_open_rate_7d"] == pytest.approx((1 + m * 0.5) / (1 + m), rel=1e-6)
    # B has no events: zero counts, rates at the population's, no recency
    assert b["all_sent_90d"] == 0 and np.isnan(b["all_days_since_open"]) and np.isnan(b["top_open_hour"])
    assert b["all_open_rate_30d"] == pytest.approx(1 / 3, rel=1e-6)
    assert bool(b["consent_sms"]) is False and bool(a["consent_sms"]) is True
    assert str(b["timezone"]) == config.default_timezone
    assert a["age"] == 30


def test_hour_profile_is_smoothed_toward_population(hand_made, config):
    h = engagement_history(hand_made, ["A", "B"], AS_OF)
    shares = h[[f"open_hour_share_{i:02d}" for i in range(24)]]
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert shares.loc["A"].idxmax() == "open_hour_share_09"


def test_unknown_customer_gets_a_cold_start_row(hand_made):
    h = engagement_history(hand_made, ["A", "nobody"], AS_OF)
    row = h.loc["nobody"]
    assert row["all_sent_90d"] == 0 and np.isnan(row["tenure_days"]) and np.isnan(row["age"])
    assert not row["consent_email"]


def test_per_row_as_of(hand_made):
    times = pd.to_datetime(["2026-03-01 12:00", "2026-03-08 00:00"], utc=True)
    h = engagement_history(hand_made, ["A", "A"], times)
    assert list(h["all_sent_90d"]) == [1, 2]
    assert list(h["all_opened_90d"]) == [0, 1]
    with pytest.raises(ValueError, match="as_of has 2 times for 1 customers"):
        engagement_history(hand_made, ["A"], times)


def test_responses_without_channel_are_linked_to_their_send(small_world, config):
    """Exports that put channel/offer only on `sent` give the same features as those that repeat them."""
    events, customers = small_world.events, small_world.customers
    bare = events.copy()
    responses = bare["event"] != "sent"
    bare.loc[responses, ["channel", "offer"]] = None
    as_of = small_world.end
    full = engagement_history(EventLog.build(customers, events, config), customers["customer_id"], as_of)
    linked = engagement_history(EventLog.build(customers, bare, config), customers["customer_id"], as_of)
    pd.testing.assert_frame_equal(full, linked)
    assert full["email_opened_30d"].sum() > 0


@pytest.mark.parametrize("way", ["direct", "direct on two threads"])
def test_every_way_of_sorting_gives_the_same_log(small_world, config, monkeypatch, way):
    """The packed sort and the direct argsort used when the fields do not fit in one integer (on
    one thread, and on the two used for large logs) give the same log: keys, codes, the input row
    of every position (up to ties, which hold identical events), features."""
    import nextbest.features.event_sort as es

    events, customers = small_world.events, small_world.customers
    one = EventLog.build(customers, events, config)
    if "two threads" in way:
        monkeypatch.setattr(es, "PARALLEL_SORT_MIN", 0)
    monkeypatch.setattr(es, "COMPOSITE_BITS", 0)
    two = EventLog.build(customers, events, config)
    assert isinstance(two.order, np.ndarray) and not isinstance(one.order, np.ndarray)
    assert np.all(np.diff(two.keys) >= 0)
    assert np.array_equal(one.keys, two.keys)
    # within one (customer, millisecond) the order may differ: compare the multisets of codes
    code = lambda lg: (lg.keys.astype(object) * 1000 + lg.event * 100 + (lg.channel + 1) * 10 + lg.offer + 1)
    assert sorted(code(one)) == sorted(code(two))
    positions = np.arange(len(one.keys))
    for lg in (one, two):  # every position's input row holds that position's event
        rows = lg.rows_at(positions)
        assert np.array_equal(np.sort(rows), positions)  # a permutation
        assert np.array_equal(to_ms(events["ts"].iloc[rows]) - lg.t0, lg.keys & ((1 << 39) - 1))
        assert (events["event"].astype(str).to_numpy()[rows] == np.asarray(EVENT_TYPES)[lg.event]).all()
        assert np.array_equal(lg.column_at("value", positions), events["value"].to_numpy(float)[rows], equal_nan=True)
    pd.testing.assert_frame_equal(engagement_history(one, customers["customer_id"], small_world.end),
                                  engagement_history(two, customers["customer_id"], small_world.end))


def test_rows_are_found_only_for_the_event_types_asked(small_world, small_log):
    """A snapshot reads the orders' values only: the packed sort finds those rows and no others."""
    from nextbest.features.event_sort import SortedRows

    log_ = EventLog.build(small_world.customers, small_world.events, small_log.config)
    assert isinstance(log_.order, SortedRows)
    orders = log_.select(EV["converted"])
    rows = log_.rows_at(orders)
    assert (small_world.events["event"].astype(str).to_numpy()[rows] == "converted").all()
    assert log_.order._done.sum() == 1 and log_.order._done[EV["converted"]]
    import pickle

    copy = pickle.loads(pickle.dumps(log_))  # a log crosses process pools: its lazy rows too
    assert np.array_equal(copy.rows_at(np.arange(len(log_.keys))), log_.rows_at(np.arange(len(log_.keys))))
    assert log_.order._done.all() and log_.order._composite is None  # the sort's inputs freed


def test_30_day_counts_agree_with_an_independent_sql_implementation(small_world, small_log, config):
    """DuckDB's GROUP BY over the raw events gives the same 30-day per-channel counts."""
    import importlib.util

    import duckdb  # a dev dependency: installed by `make test`
    path = __import__("pathlib").Path(__file__).parents[2] / "benchmarks" / "feature_pipeline.py"
    spec = importlib.util.spec_from_file_location("bench_features", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    as_of = small_world.end - pd.Timedelta(days=3, hours=5)
    con = duckdb.connect()
    con.register("events", small_world.events)
    sql = con.execute(bench.DUCKDB_SQL, {"as_of": as_of.to_pydatetime()}).df()
    ours = engagement_history(small_log, small_world.customers["customer_id"], as_of)
    for channel in config.channel_names:
        theirs = sql[sql["channel"] == channel].set_index("customer_id")
        for e in ("sent", "delivered", "opened", "clicked", "converted"):
            expected = theirs[f"{e}_30d"].reindex(ours.index, fill_value=0).astype(int)
            assert (ours[f"{channel}_{e}_30d"] == expected).all(), (channel, e)
    total = sql.groupby("customer_id")["converted_30d"].sum().reindex(ours.index, fill_value=0)
    assert (ours["all_converted_30d"] == total).all()  # organic orders (no channel) included


def test_categories_do_not_depend_on_which_customers_are_asked(small_log, small_world):
    """A one-customer live call encodes text attributes and time zones like the full snapshot."""
    ids = small_world.customers["customer_id"]
    full = engagement_history(small_log, ids, small_world.end)
    one = engagement_history(small_log, ids.iloc[[7]], small_world.end)
    for c in ("timezone", "region", "device", "loyalty_tier"):
        assert list(one[c].cat.categories) == list(full[c].cat.categories), c
        assert one[c].cat.codes.iloc[0] == full[c].cat.codes.iloc[7], c


def test_counts_take_scalars_or_arrays_alike(small_log, small_world):
    """The log's count queries broadcast a customer and a time like numpy does (one stacked search
    inside): scalars, (n,) arrays, and one against many all give the per-query answers."""
    from nextbest.features.eventlog import EV, to_ms

    sent = small_log.selected(("sent", "all"), EV["sent"])
    orders = small_log.selected(("converted_any", "all"), EV["converted"], with_value=True)
    cust = np.arange(40, dtype=np.int64)
    t = np.full(40, to_ms(small_world.end), np.int64) - np.arange(40) * 86_400_000
    week = 7 * 86_400_000
    each = small_log.count(sent, cust, t, week)
    assert each.shape == (40,) and each.sum() > 0
    assert [int(small_log.count(sent, int(c), int(x), week)) for c, x in zip(cust, t)] == each.tolist()
    assert small_log.count(sent, cust[:1], t).tolist() == [int(small_log.count(sent, 0, int(x))) for x in t]
    np.testing.assert_array_equal(small_log.count(orders, cust, int(t[0]), value=True),
                                  [small_log.count(orders, int(c), int(t[0]), value=True) for c in cust])
    one, two = small_log.window_counts(sent, cust, t, [week, 4 * week])
    np.testing.assert_array_equal(one, each)
    np.testing.assert_array_equal(two, small_log.count(sent, cust, t, 4 * week))
    assert [int(w) for w in small_log.window_counts(sent, 3, int(t[3]), [week])] == [each[3]]


def test_partitions_keyed_by_customer_give_the_same_features(small_world, small_log, config):
    """The Dask shape: encode each customer partition on its own, share one Population, concat."""
    from nextbest.features.history import Population

    customers, events = small_world.customers, small_world.events
    whole = engagement_history(small_log, customers["customer_id"], small_world.end)
    population = Population.from_log(small_log)  # the one global reduction
    parts = []
    for half in (customers.iloc[::2], customers.iloc[1::2]):
        part_events = events[events["customer_id"].isin(half["customer_id"])]
        part_log = EventLog.build(half, part_events, config)
        parts.append(engagement_history(part_log, half["customer_id"], small_world.end, population))
    joined = pd.concat(parts).loc[whole.index]
    pd.testing.assert_frame_equal(joined.drop(columns=["timezone", "region", "device", "loyalty_tier"]),
                                  whole.drop(columns=["timezone", "region", "device", "loyalty_tier"]))
    for c in ("timezone", "region", "device", "loyalty_tier"):  # same values (categories per partition)
        assert (joined[c].astype(str) == whole[c].astype(str)).all()


def test_a_log_without_events_gives_cold_start_rows(config):
    customers = pd.DataFrame({"customer_id": ["A", "B"], "consent_email": [True, False]})
    events = _events([])
    log_ = EventLog.build(customers, events, config)
    h = engagement_history(log_, ["A", "B", "C"], AS_OF)
    assert len(h) == 3 and (h["all_sent_90d"] == 0).all() and h["all_days_since_open"].isna().all()
    assert h["consent_email"].tolist() == [True, False, False]
    from nextbest.features.examples import training_examples

    assert len(training_examples(log_)) == 0
