"""Live engagement histories (issue 16): a log plus the events that arrived after it gives, feature
by feature, exactly what a batch snapshot of all the events gives, as of any time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.features.eventlog import EventLog, to_ms
from nextbest.features.history import Population, engagement_history
from nextbest.features.live_log import LiveLog, delta_log
from nextbest.features.schema import EVENT_TYPES


def _resolved(log_: EventLog, events: pd.DataFrame) -> pd.DataFrame:
    """``events`` with every response's channel and offer filled from its send, as the service
    stores a live event (and as most exports carry them)."""
    out = events.copy()
    rows = log_.rows_at(np.arange(len(log_.keys)))
    out["channel"] = pd.Series(pd.array([None] * len(out), dtype="string"))
    out["offer"] = pd.Series(pd.array([None] * len(out), dtype="string"))
    ch = np.asarray(list(log_.config.channel_names) + [None], dtype=object)[log_.channel]  # -1 reads None
    off = np.asarray(list(log_.config.offer_names) + [None], dtype=object)[log_.offer]
    out.iloc[rows, out.columns.get_loc("channel")] = ch
    out.iloc[rows, out.columns.get_loc("offer")] = off
    return out


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal column by column, exactly (NaN equals NaN), categories included."""
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_log_plus_live_events_equals_a_batch_snapshot_of_all_of_them(small_world, small_log, config, seed):
    rng = np.random.default_rng(seed)
    events = _resolved(small_log, small_world.events.reset_index(drop=True))
    ts = events["ts"]
    cut = ts.min() + (ts.max() - ts.min()) * rng.uniform(0.5, 0.85)
    live = (ts >= cut).to_numpy().copy()
    late = np.flatnonzero(~live)
    live[rng.choice(late, len(late) // 20, replace=False)] = True  # late and out-of-order: older than the cut
    base = EventLog.build(small_world.customers, events[~live], config)
    full = EventLog.build(small_world.customers, events, config)
    d = events[live]
    code = {e: i for i, e in enumerate(EVENT_TYPES)}
    delta = delta_log(base, base.customer_ids.get_indexer(d["customer_id"].astype(str)), to_ms(d["ts"]),
                      d["event"].map(code).to_numpy(),
                      [config.channel_names.index(c) if isinstance(c, str) else -1 for c in d["channel"]],
                      [config.offer_names.index(o) if isinstance(o, str) else -1 for o in d["offer"]],
                      d["value"].to_numpy(float))
    pop = Population.from_log(base)  # the service's priors are its snapshot's
    ids = small_world.customers["customer_id"].astype(str).to_numpy()
    who = np.append(rng.choice(ids, 400), ["nobody-knows-me"])
    at = cut + pd.to_timedelta(rng.uniform(-10, 12, len(who)), unit="D")  # before the cut, after the last event
    live_features = engagement_history(LiveLog(base, delta), who, at, pop)
    _assert_same(live_features, engagement_history(full, who, at, pop))
    # one live decision: one customer, one time
    one = engagement_history(LiveLog(base, delta), who[:1], at[0], pop)
    _assert_same(one, engagement_history(full, who[:1], at[0], pop))
    assert live_features["all_sent_7d"].sum() > 0 and (live_features["all_sent_7d"] != engagement_history(
        base, who, at, pop)["all_sent_7d"]).any()  # the live events count


def test_live_events_alone_give_a_tenure_where_the_data_has_none(config):
    customers = pd.DataFrame({"customer_id": ["A", "B"], "consent_email": [True, True]})  # no signup_at
    events = pd.DataFrame({"customer_id": ["A"], "ts": pd.to_datetime(["2026-03-05 10:00"], utc=True),
                           "event": ["sent"], "message_id": ["m1"], "channel": ["email"], "offer": ["none"],
                           "value": [np.nan], "propensity": [0.5]})
    base = EventLog.build(customers, events, config)
    t_b = pd.Timestamp("2026-03-06 12:00", tz="UTC").value // 1_000_000
    t_a = pd.Timestamp("2026-03-04 12:00", tz="UTC").value // 1_000_000  # a late event, before A's first
    delta = delta_log(base, [1, 0], [t_b, t_a], [EVENT_TYPES.index("sent")] * 2,
                      [0, 0], [config.offer_names.index("none")] * 2, [np.nan, np.nan])
    h = engagement_history(LiveLog(base, delta), ["A", "B"], pd.Timestamp("2026-03-08", tz="UTC"), Population.from_log(base))
    assert h.loc["A", "tenure_days"] == pytest.approx(3.5) and h.loc["B", "tenure_days"] == pytest.approx(1.5)
    assert h.loc["A", "email_sent_7d"] == 2 and h.loc["B", "email_sent_7d"] == 1
