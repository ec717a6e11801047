"""The simulated world: determinism, hidden structure that shows in history, oracle vs random."""

import numpy as np
import pandas as pd
import pytest

from nextbest.sim.simulate import LoggingPolicy, generate
from nextbest.sim.world import World


def test_same_seed_same_data_other_seed_other_data(config):
    a = generate(300, 10, seed=5, config=config, progress=False)
    b = generate(300, 10, seed=5, config=config, progress=False)
    c = generate(300, 10, seed=6, config=config, progress=False)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.customers, b.customers)
    pd.testing.assert_frame_equal(a.decisions, b.decisions)
    assert not a.events["ts"].equals(c.events["ts"])


def test_history_is_within_bounds_and_logs_propensities(small_world):
    ev = small_world.events
    assert ev["ts"].min() >= small_world.start - pd.Timedelta(hours=12)
    assert ev["ts"].max() < small_world.end
    sent = ev[ev["event"] == "sent"]
    assert sent["propensity"].between(0, 1, inclusive="right").all()
    assert ev.loc[ev["event"] != "sent", "propensity"].isna().all()
    # decisions: per customer and day the logged propensities of the chosen actions are valid
    d = small_world.decisions
    assert d["propensity"].between(0, 1, inclusive="right").all()
    assert set(d["action"]) == {"send", "suppress"}


def test_logging_propensities_match_frequencies(config):
    """On day 0 (no caps bind) the logged propensities are exact and match the policy's frequencies."""
    policy = LoggingPolicy()
    data = generate(20000, 1, seed=9, config=config, progress=False, policy=policy)
    consent = data.customers[[f"consent_{c}" for c in config.channel_names]].all(axis=1).to_numpy()
    d = data.decisions[consent]
    n = len(d)
    assert n > 3000
    offers_of, slots = policy.action_tables(config)
    wsum = sum(policy.channel_weights.values())
    for k, c in enumerate(config.channel_names):
        p_channel = policy.send_share * policy.channel_weights[c] / wsum
        observed = (d["channel"] == c).mean()
        assert abs(observed - p_channel) < 3.5 * np.sqrt(p_channel * (1 - p_channel) / n)
        rows = d[d["channel"] == c]
        for j in offers_of[k]:
            o = config.offer_names[j]
            exact = p_channel / len(offers_of[k]) / len(slots[k, j])
            assert np.allclose(rows.loc[rows["offer"] == o, "propensity"], exact)
    assert np.allclose(d.loc[d["action"] == "suppress", "propensity"], 1 - policy.send_share)


def test_opens_cluster_around_the_preferred_hour(small_world, small_log):
    from nextbest.features.eventlog import EV

    opens = np.flatnonzero(small_log.event == EV["opened"])
    hour, _ = small_log.local_hour_dow(opens)
    pref = small_world.world.pref_hour[small_log.cust[opens]]
    d = np.minimum(np.abs(hour - pref) % 24, 24 - np.abs(hour - pref) % 24)
    assert (d <= 1).mean() > 0.4  # uniform would give 3/24


def test_channel_affinity_depends_on_attributes(small_world):
    w = small_world.world
    age = w.customers["age"].to_numpy()
    email, push = w.open_base[:, 0], w.open_base[:, 2]
    assert np.corrcoef(age, email)[0, 1] > 0.2
    assert np.corrcoef(age, push)[0, 1] < -0.2


def test_segments_give_heterogeneous_offer_uplift(small_world, config):
    w = small_world.world
    idx = np.arange(w.n)
    k_email, pct20 = 0, config.offer_names.index("pct20")
    hour = w.pref_hour - 1
    gain_offer = w.expected_profit(idx, k_email, hour, pct20) - w.expected_profit(idx, k_email, hour, 0)
    seg = pd.Series(gain_offer).groupby(w.segment).mean()
    assert seg[1] < 0  # sure things: the discount only costs money
    assert (gain_offer > 0).mean() > 0.05  # but some customers are worth the offer
    msg_gain = w.expected_profit(idx, k_email, hour, 0) - w.expected_profit(idx, -1, hour, 0)
    assert msg_gain[w.segment == 3].mean() < 0  # sleeping dogs: a message costs
    assert msg_gain[w.segment == 0].mean() > 0  # persuadables: a message pays


def test_fatigue_lowers_opens_and_raises_unsubscribes(small_world):
    w = small_world.world
    idx = np.arange(50)
    fresh = w.outcome_probs(idx, 0, 12, 0, fatigue=np.zeros(50))
    tired = w.outcome_probs(idx, 0, 12, 0, fatigue=np.full(50, 6))
    assert (tired["open"] < fresh["open"]).all()
    assert (tired["unsubscribe"] / tired["open"] > fresh["unsubscribe"] / fresh["open"]).all()


def test_oracle_beats_random_by_a_wide_margin(small_world, config):
    w = small_world.world
    oracle = w.oracle()
    assert (oracle["expected_profit"] >= oracle["suppress_profit"] - 1e-12).all()
    rng = np.random.default_rng(0)
    ok = w.allowed(np.arange(w.n))
    n, K, H, O = ok.shape
    flat = ok.reshape(n, -1)
    # random: suppress or any allowed action, uniformly
    choice = np.array([rng.choice(np.append(np.flatnonzero(r), -1)) for r in flat])
    send = choice >= 0
    ch = np.where(send, choice // (H * O), -1)
    hour = np.where(send, (choice // O) % H, 0)
    off = np.where(send, choice % O, 0)
    random_value = w.expected_profit(np.arange(n), ch, hour, off)
    base = oracle["suppress_profit"].to_numpy()
    oracle_gain = (oracle["expected_profit"].to_numpy() - base).mean()
    random_gain = (random_value - base).mean()
    assert oracle_gain > 0.05
    assert random_gain < 0.3 * oracle_gain


def test_ask_answers_what_a_customer_would_do(small_world):
    w = small_world.world
    cid = w.customers["customer_id"].iloc[0]
    pref = int(w.pref_hour[0])
    tz = w.customers["timezone"].iloc[0]
    good = pd.Timestamp("2026-09-10", tz=tz) + pd.Timedelta(hours=pref)
    bad = pd.Timestamp("2026-09-10", tz=tz) + pd.Timedelta(hours=(pref + 12) % 24)
    a, b = w.ask(cid, "push", good), w.ask(cid, "push", bad)
    assert a["local_hour"] == pref
    assert a["open"] > b["open"]
    none = w.ask(cid, None, good)
    assert none["open"] == 0 and none["order"] == pytest.approx(w.p0[0])
    with pytest.raises(KeyError, match="unknown channel"):
        w.ask(cid, "fax", good)


def test_world_saves_and_loads(small_world, config, tmp_path):
    w = small_world.world
    w.save(tmp_path / "w.npz")
    back = World.load(tmp_path / "w.npz", w.customers, config)
    idx = np.arange(100)
    assert np.allclose(back.expected_profit(idx, 1, 12, 1), w.expected_profit(idx, 1, 12, 1))
