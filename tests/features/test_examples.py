"""Examples for every logged decision (suppressions included), consistent with per-send rows."""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.examples import decision_examples, training_examples


@pytest.fixture(scope="module")
def decided(small_log, small_world):
    return decision_examples(small_log, small_world.decisions, data_end=small_world.end)


def test_one_row_per_decision_with_features_and_outcomes(decided, small_world, config):
    assert len(decided) == len(small_world.decisions)
    assert {"action", "propensity", "all_sent_30d", "converted", "opened"} <= set(decided.columns)
    suppressed = decided[decided["action"] == "suppress"]
    assert len(suppressed) > 1000
    assert not suppressed[["delivered", "opened", "clicked", "converted_attributed"]].any().any()


def test_send_rows_agree_with_per_send_examples(decided, small_log, small_world):
    sends = decided[decided["action"] == "send"].set_index("message_id")
    per_send = training_examples(small_log, data_end=small_world.end).set_index("message_id")
    common = sends.index.intersection(per_send.index)
    assert len(common) == len(per_send)
    for col in ("delivered", "opened", "clicked", "converted", "converted_attributed", "unsubscribed",
                "all_sent_30d", "email_open_rate_30d"):
        left, right = sends.loc[common, col].to_numpy(), per_send.loc[common, col].to_numpy()
        assert np.allclose(left.astype(float), right.astype(float), equal_nan=True), col


def test_suppress_rows_count_the_orders_in_the_window(decided, small_world, config):
    events = small_world.events
    orders = events[events["event"] == "converted"]
    window = pd.Timedelta(hours=config.objective.attribution_window_hours)
    rows = decided[(decided["action"] == "suppress") & decided["outcome_complete"]].sample(300, random_state=2)
    for _, r in rows.iterrows():
        mine = orders[(orders["customer_id"] == r["customer_id"]) & (orders["ts"] >= r["ts"])
                      & (orders["ts"] < r["ts"] + window)]
        assert bool(r["converted"]) == (len(mine) > 0)
        assert r["order_value"] == pytest.approx(mine["value"].sum(), abs=0.05)


def test_the_logged_data_shows_uplift_by_segment(decided, small_world):
    """Persuadables order clearly more after a message than without; sleeping dogs do not."""
    world = small_world.world
    seg = world.segment[pd.Index(world.customers["customer_id"]).get_indexer(decided["customer_id"])]
    sent = (decided["action"] == "send").to_numpy()
    conv = decided["converted"].to_numpy()
    persuadable, dog = seg == 0, seg == 3
    lift_persuadable = conv[persuadable & sent].mean() / conv[persuadable & ~sent].mean()
    lift_dog = conv[dog & sent].mean() / conv[dog & ~sent].mean()
    assert lift_persuadable > 1.3
    assert lift_dog < lift_persuadable - 0.25  # the put-off only bites after an open: small, noisy
