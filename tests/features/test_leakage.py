"""Point-in-time correctness: nothing at or after ``as_of`` may change a feature."""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.eventlog import EV, EventLog
from nextbest.features.examples import training_examples
from nextbest.features.history import engagement_history


@pytest.fixture(scope="module")
def as_of(small_world):
    return small_world.start + pd.Timedelta(days=30, hours=13, minutes=7)


def _snapshot(customers, events, config, as_of):
    log_ = EventLog.build(customers, events, config)
    return engagement_history(log_, customers["customer_id"], as_of)


def _mutations(events, as_of, rng):
    """Edits that only touch events at or after ``as_of``."""
    late = events["ts"] >= as_of
    dropped = events[~late]
    changed = events.copy()
    sel = late & (changed["event"] == "converted")
    changed.loc[sel, "value"] = changed.loc[sel, "value"] * 3 + 1
    sel = late & (changed["event"] == "sent")
    changed.loc[sel, "channel"] = "sms"
    changed.loc[sel, "offer"] = "pct20"
    shifted = events.copy()
    shifted.loc[late, "ts"] = shifted.loc[late, "ts"] + pd.Timedelta(hours=5)
    sample = events[~late].sample(500, random_state=1)
    extra = pd.concat([sample.assign(ts=as_of), sample.assign(ts=as_of + pd.Timedelta(days=1))])
    extra["message_id"] = extra["message_id"].where(extra["message_id"].isna(),
                                                    "x" + extra["message_id"].astype("str") + extra["ts"].astype("str"))
    added = pd.concat([events, extra], ignore_index=True)
    return {"dropped": dropped, "changed": changed, "shifted": shifted, "added_at_and_after": added}


def test_events_at_or_after_as_of_never_change_features(small_world, config, as_of):
    events, customers = small_world.events, small_world.customers
    reference = _snapshot(customers, events, config, as_of)
    assert reference["all_sent_30d"].sum() > 0
    for name, mutated in _mutations(events, as_of, np.random.default_rng(0)).items():
        got = _snapshot(customers, mutated, config, as_of)
        pd.testing.assert_frame_equal(got, reference, obj=f"features after {name}")


def test_events_before_as_of_do_change_features(small_world, config, as_of):
    """The guard above is not vacuous: an edit just before ``as_of`` shows."""
    events, customers = small_world.events, small_world.customers
    reference = _snapshot(customers, events, config, as_of)
    before = events[events["ts"] < as_of - pd.Timedelta(hours=1)]
    assert not _snapshot(customers, before, config, as_of).equals(reference)


def test_training_rows_use_only_the_past_of_their_send(small_log, config):
    ex = training_examples(small_log)
    # each row equals a live snapshot of that customer at that send time (one code path)
    rows = ex.sample(200, random_state=3)
    live = engagement_history(small_log, rows["customer_id"], rows["send_ts"])
    cols = [c for c in live.columns if c in ex.columns]
    pd.testing.assert_frame_equal(rows[cols].reset_index(drop=True), live[cols].reset_index(drop=True),
                                  check_categorical=False)
    # the send itself is not counted in its own features
    first = ex.groupby("customer_id", observed=True).head(1)
    assert (first["all_sent_90d"] == 0).all()


def test_outcomes_fall_within_the_attribution_window(small_log, small_world, config):
    ex = training_examples(small_log, window_hours=24, data_end=small_world.end)
    wide = training_examples(small_log, window_hours=72, data_end=small_world.end)
    assert (ex["converted"] <= wide["converted"]).all()
    assert wide["converted"].sum() > ex["converted"].sum()
    assert (ex["opened"] <= ex["delivered"]).all()
    assert (ex["converted_attributed"] <= ex["converted"]).all()
    assert ex["order_value"][~ex["converted"]].eq(0).all()
    late = ex["send_ts"] + pd.Timedelta(hours=24) > small_world.end
    assert not ex.loc[late, "outcome_complete"].any() and ex.loc[~late, "outcome_complete"].all()
    # channel and offer of each row are those of its send
    sends = small_world.events[small_world.events["event"] == "sent"]
    assert len(ex) == len(sends)
    assert ex["channel"].astype(str).value_counts().to_dict() == sends["channel"].value_counts().to_dict()
    assert ex["offer"].astype(str).value_counts().to_dict() == sends["offer"].value_counts().to_dict()
