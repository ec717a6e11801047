"""Off-policy evaluation of nextbest policies on their own decision log (the simulator's)."""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.io import read_table
from nextbest.training.offpolicy import evaluate_policies, logged_rounds, promotion_gate, replay


@pytest.fixture(scope="module")
def rounds(small_data_dir, config):
    return logged_rounds(small_data_dir, config, days=2, max_rounds=1500, seed=0)


def test_rounds_keep_the_config_whose_offpolicy_section_evaluates_them(rounds, config):
    assert rounds.config is config and config.offpolicy.reward_window_hours == 24  # the daily profit below


def test_rounds_carry_exact_actions_and_daily_profit(rounds, small_data_dir, config):
    assert rounds.n == 1500 and ((rounds.propensity > 0) & (rounds.propensity <= 1)).all()
    assert ((rounds.action == 0) == (rounds.hour == -1)).all()
    # one suppressed round by hand: margin x the value of the customer's orders on that UTC day
    events = read_table(small_data_dir, "events")
    events["ts"] = pd.to_datetime(events["ts"], utc=True)
    i = int(np.flatnonzero((rounds.action == 0))[0])
    cust, day = rounds.features.index[i], pd.Timestamp(rounds.now[i])
    orders = events[(events["customer_id"] == cust) & (events["event"] == "converted")
                    & (events["ts"] >= day) & (events["ts"] < day + pd.Timedelta(days=1))]
    assert rounds.reward[i] == pytest.approx(config.objective.margin * orders["value"].sum())
    # a sent round without an order or unsubscribe that day costs exactly its channel
    O = len(config.offer_names)
    for j in np.flatnonzero(rounds.action > 0):
        cust, day = rounds.features.index[j], pd.Timestamp(rounds.now[j])
        mine = events[(events["customer_id"] == cust) & (events["ts"] >= day) & (events["ts"] < day + pd.Timedelta(days=1))]
        if not mine["event"].isin(["converted", "unsubscribed"]).any():
            channel = config.channel_names[(rounds.action[j] - 1) // O]
            assert rounds.reward[j] == pytest.approx(-config.channels[channel].cost)
            break
    else:
        pytest.fail("no sent round without an order")


def test_replay_gives_the_served_distribution_and_exact_action_probabilities(trained, rounds):
    rp = replay(trained.policy, rounds, seed=0)
    assert np.allclose(rp.dist.sum(axis=1), 1.0)
    rows = np.arange(rounds.n)
    sent = rounds.action > 0
    same_hour = rp.hours[rows, rounds.action] == rounds.hour
    assert np.allclose(rp.pi_logged[sent & ~same_hour], 0.0)          # another hour is another action
    assert np.allclose(rp.pi_logged[sent & same_hour], rp.dist[rows, rounds.action][sent & same_hour])


def test_evaluate_policies_reports_every_estimator_with_diagnostics(trained, rounds):
    p = trained.policy
    greedy = p.with_exploration(p.exploration.with_(method="greedy", control_share=0.0))
    table = evaluate_policies(rounds, {"greedy": greedy, "served": p}, n_boot=200)
    assert set(table["estimator"]) == {"ips", "snips", "dr", "dm"} and set(table["policy"]) == {"greedy", "served"}
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert (table["ess"] <= rounds.n).all() and (table["unsupported_logged"] > 0).all()


def test_promotion_gate_compares_the_lower_bound_with_the_champion():
    t = pd.DataFrame([{"policy": "new", "estimator": "dr", "value": 0.50, "ci_low": 0.42, "ci_high": 0.58},
                      {"policy": "old", "estimator": "dr", "value": 0.40, "ci_low": 0.35, "ci_high": 0.45}])
    ok, msg = promotion_gate(t, "new", "old")
    assert ok and "passes" in msg
    t.loc[0, "ci_low"] = 0.39
    ok, msg = promotion_gate(t, "new", "old")
    assert not ok and "0.3900 < old's estimate 0.4000" in msg
