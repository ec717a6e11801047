"""One realized profit: the five places that need it agree on a hand-built example with known numbers.

Three decisions on the default config (margin 0.35, email 0.002 and push 0.0005 per message,
pct10 = 10 % of the order, free_shipping = 6 per order, unsubscribe cost 4):

- an email with pct10, an order of 100 that redeems it:      35 - 10 - 0.002      = 24.998
- a push with free_shipping, an order of 80 redeeming it and
  an unsubscribe:                                             28 - 6 - 0.0005 - 4  = 17.9995
- no message, an order of 50 without one:                     17.5
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.features.config import load_config
from nextbest.decision.objective import realized_profit
from nextbest.decision.online import event_reward

EXPECTED = np.array([35 - 10 - 0.002, 28 - 6 - 0.0005 - 4, 17.5])
CHANNEL = [0, 2, -1]        # email, push, nothing sent
OFFER = [1, 3, -1]          # pct10, free_shipping
EVENTS = [[("converted", 100.0)], [("unsubscribed", None), ("converted", 80.0)], [("converted", 50.0)]]


@pytest.fixture(scope="module")
def cfg():
    c = load_config()
    assert c.channel_names[:3] == ("email", "sms", "push") and c.offer_names == ("none", "pct10", "pct20", "free_shipping")
    assert c.objective.margin == 0.35 and c.objective.unsubscribe_cost == 4.0
    return c


def test_realized_profit_has_the_known_numbers(cfg):
    got = realized_profit(cfg, CHANNEL, OFFER, [100.0, 80.0, 50.0], [True, True, False], [False, True, False])
    np.testing.assert_allclose(got, EXPECTED)
    # several orders: a fixed offer costs per redeeming order, a percent offer a share of their value
    two = realized_profit(cfg, [0, 0], [3, 1], [130.0, 130.0], [2, 1], [False, False], redeemed_value=[130.0, 100.0])
    np.testing.assert_allclose(two, [0.35 * 130 - 12 - 0.002, 0.35 * 130 - 10 - 0.002])


def test_off_policy_rewards_agree(cfg):
    from nextbest.training.offpolicy import _rewards

    day = pd.Timestamp("2024-03-04", tz="UTC")
    dec = pd.DataFrame({"customer_id": ["a", "b", "c"], "day": [day] * 3, "message_id": ["m1", "m2", None]})
    h = pd.Timedelta(hours=1)
    events = pd.DataFrame({
        "customer_id": ["a", "b", "b", "c", "c"],
        "ts": [day + 2 * h, day + h, day + 3 * h, day + 5 * h, day + 30 * h],  # c's second order is after the window
        "event": ["converted", "unsubscribed", "converted", "converted", "converted"],
        "message_id": ["m1", "m2", "m2", None, None], "value": [100.0, np.nan, 80.0, 50.0, 999.0]})
    send = np.array([True, True, False])
    got, _ = _rewards(dec, events, cfg, 24.0, send, np.array(CHANNEL), np.array(OFFER))
    np.testing.assert_allclose(got, EXPECTED)


def test_measured_incrementality_agrees(cfg):
    from nextbest.training.evaluate import measured_incrementality
    from nextbest.training.train import Split

    rows = [{"channel": "email", "offer": "pct10", "order_value": 100.0, "converted_attributed": True,
             "unsubscribed": False, "converted": True, "propensity": 0.5, "local_hour": 9},
            {"channel": "push", "offer": "free_shipping", "order_value": 80.0, "converted_attributed": True,
             "unsubscribed": True, "converted": True, "propensity": 0.5, "local_hour": 9},
            {"channel": None, "offer": None, "order_value": 50.0, "converted_attributed": False,
             "unsubscribed": False, "converted": True, "propensity": 0.5, "local_hour": -1}]
    ex = pd.DataFrame([r for r in rows for _ in range(40)])
    out = measured_incrementality(cfg, Split(ex, ex["channel"].notna().to_numpy(), None), n_boot=5)
    by = out.set_index(["by", "group"])["profit_per_1000"]
    # every row of a group has the same profit: the difference is exact
    assert by["channel", "email"] == pytest.approx(1000 * (EXPECTED[0] - EXPECTED[2]))
    assert by["channel", "push"] == pytest.approx(1000 * (EXPECTED[1] - EXPECTED[2]))


def test_closed_loop_feedback_agrees(cfg):
    from nextbest.sim.closed_loop import _realized_profit
    from nextbest.sim.simulate import Responses

    resp = Responses(opened=np.array([True, True]), clicked=np.array([False, False]),
                     unsubscribed=np.array([False, True]), message_order=np.array([True, True]),
                     message_value=np.array([100.0, 80.0]), organic=np.array([False, False, True]),
                     organic_value=np.array([0.0, 0.0, 50.0]))
    got = _realized_profit(cfg, np.array([0, 1]), np.array(CHANNEL[:2]), np.array(OFFER[:2]), resp)
    np.testing.assert_allclose(got, EXPECTED)


def test_feedback_events_add_up_to_the_realized_profit(cfg, tmp_path):
    """``event_reward`` is each event's increment; the service's record of a decision starts at
    the channel cost and adds them, in any order, through the store (``serving.feedback``)."""
    from nextbest.serving.feedback import add_event
    from nextbest.serving.records import DecisionRecord, start_reward
    from nextbest.serving.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    for i, (k, j, events) in enumerate(zip(CHANNEL, OFFER, EVENTS)):
        channel = cfg.channel_names[k] if k >= 0 else None
        offer = cfg.offer_names[j] if j >= 0 else None
        steps = [event_reward(cfg, channel, offer, ev, v, redeems=offer not in (None, "none")) for ev, v in events]
        assert start_reward(cfg, channel, offer) + sum(steps) == pytest.approx(EXPECTED[i])
        rec = DecisionRecord(f"c{i}", "x", channel, offer, (0.0,), 0.0, 0.0, "marketing", start_reward(cfg, channel, offer))
        store.put("decision", f"d{i}", rec.to_json())
        for (ev, _), r in reversed(list(zip(events, steps))):
            assert add_event(store, f"d{i}", f"{ev}|t", r, 3600.0)
            assert not add_event(store, f"d{i}", f"{ev}|t", r, 3600.0)  # the same event twice counts once
        assert DecisionRecord.from_json(store.get("decision", f"d{i}")).reward == pytest.approx(EXPECTED[i])
