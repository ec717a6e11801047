"""The family of worlds: every member plugs into the simulator, and each fresh mechanism does what it says."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nextbest.features.validate import validate_dir
from nextbest.sim.base import BaseWorld
from nextbest.sim.closed_loop import Shift
from nextbest.sim.family import KINDS, make_world, random_spec, world_family
from nextbest.sim.simulate import generate, write
from nextbest.sim.simulation_eval import load_truth, random_policy_value

MEMBERS = [*KINDS, "random:3"]


@pytest.fixture(scope="module", params=MEMBERS)
def member_data(request, config):
    return request.param, generate(300, 20, seed=4, config=config, progress=False, world=request.param)


def test_every_member_generates_valid_data_with_responses(member_data, config, tmp_path):
    kind, data = member_data
    out = write(data, tmp_path / "d", seed=4)
    report = validate_dir(out, config)
    assert not report.problems, report.problems
    counts = data.events["event"].value_counts()
    for event in ("sent", "opened", "clicked", "converted"):
        assert counts.get(event, 0) > 10, (kind, event, counts.to_dict())
    back = load_truth(out, data.customers, config).world
    assert type(back) is type(data.world)
    idx = np.arange(50)
    assert np.allclose(back.expected_profit(idx, 0, 12, 1), data.world.expected_profit(idx, 0, 12, 1))


def test_oracle_beats_suppress_and_random_on_every_member(member_data):
    _, data = member_data
    w = data.world
    idx = np.arange(w.n)
    oracle = w.oracle()
    suppress = w.expected_profit(idx, -1, 0, 0)
    rand = random_policy_value(w, w.allowed(idx), suppress, np.random.default_rng(0))
    gain_oracle = (oracle["expected_profit"].to_numpy() - suppress).mean()
    assert (oracle["expected_profit"].to_numpy() >= suppress - 1e-12).all()
    assert gain_oracle > 0.05
    assert (rand - suppress).mean() < 0.5 * gain_oracle


def test_every_member_has_a_shift(member_data, config):
    _, data = member_data
    w = make_world(member_data[0], 200, 4, config)
    shift = Shift.for_world(w, day=10)
    k, j = config.channel_names.index(shift.channel), config.offer_names.index(shift.offer)
    idx = np.arange(w.n)
    before = w.outcome_probs(idx, k, 12, j)
    before_none = w.outcome_probs(idx, k, 12, 0)
    shift.apply(w)
    after = w.outcome_probs(idx, k, 12, j)
    assert after["open"].mean() < 0.6 * before["open"].mean()
    # the offer stops working: what it adds to the order rate after an open falls by more than half
    # (the baseline keeps the discount's pull on clicks; the fresh members switch the offer off)
    after_none = w.outcome_probs(idx, k, 12, 0)
    gain_before = (before["order_given_open"] - before_none["order_given_open"]).mean()
    gain_after = (after["order_given_open"] - after_none["order_given_open"]).mean()
    assert gain_before > 0.002
    assert gain_after < 0.5 * gain_before


def test_randomized_generator_is_deterministic_per_seed_and_differs_across_seeds(config):
    assert random_spec(7) == random_spec(7)
    specs = {random_spec(s).to_json().replace(f'"random:{s}"', "").replace(f'"seed": {s}', "") for s in range(6)}
    assert len(specs) == 6
    kinds = {(random_spec(s).fatigue, random_spec(s).hours, random_spec(s).response, random_spec(s).affinity)
             for s in range(12)}
    assert len(kinds) > 3  # the mechanisms themselves are drawn, not just their parameters
    a, b, c = (make_world(k, 200, 1, config) for k in ("random:7", "random:7", "random:8"))
    idx = np.arange(200)
    assert np.array_equal(a.expected_profit(idx, 0, 12, 1), b.expected_profit(idx, 0, 12, 1))
    assert not np.allclose(a.expected_profit(idx, 0, 12, 1), c.expected_profit(idx, 0, 12, 1))
    assert world_family(8)[:len(KINDS)] == list(KINDS) and len(set(world_family(8))) == 8


def _open_after_burst(w, burst_days, wait_days, k=0):
    idx = np.arange(w.n)
    for d in range(burst_days):
        w.start_day(d)
        w.record_sends(d, idx)
    for d in range(burst_days, burst_days + wait_days + 1):
        w.start_day(d)
    return w.outcome_probs(idx, k, 12, 0)["open"]


def test_slow_fatigue_stays_low_for_weeks_and_recovers(config):
    fresh = make_world("slow_fatigue", 300, 2, config).outcome_probs(np.arange(300), 0, 12, 0)["open"]
    ratio = {wait: (_open_after_burst(make_world("slow_fatigue", 300, 2, config), 6, wait) / fresh).mean()
             for wait in (1, 14, 28, 120)}
    assert ratio[1] < 0.6
    assert ratio[14] < 0.8  # two weeks later still well below fresh
    assert ratio[1] < ratio[14] < ratio[28] < ratio[120]
    assert ratio[120] > 0.97  # and it recovers
    # a 7-day count (the weekly mechanism) is back to fresh after a week
    weekly = make_world("weekday_hours", 300, 2, config)
    fresh_weekly = weekly.outcome_probs(np.arange(300), 0, 12, 0)["open"]
    after = _open_after_burst(make_world("weekday_hours", 300, 2, config), 6, 8)
    assert np.allclose(after, fresh_weekly)


def test_weekday_hour_preference_moves_the_best_hour(config):
    w = make_world("weekday_hours", 500, 3, config)
    idx = np.arange(w.n)

    def best_hour(dow):
        w.set_weekday(dow)
        return np.stack([w.outcome_probs(idx, 2, h, 0)["open"] for h in range(8, 22)], axis=1).argmax(axis=1)

    monday, tuesday, saturday = best_hour(0), best_hour(1), best_hour(5)
    assert np.array_equal(monday, tuesday)
    assert (monday != saturday).mean() > 0.5
    # the calendar ties day indices to weekdays: a Saturday day index gives the weekend hours
    w.set_calendar(pd.Timestamp("2026-08-03", tz="UTC"))  # a Monday
    w.start_day(5)
    assert w.weekday == 5 and np.array_equal(w.pref_hour, w.a["pref_weekend"])


def test_put_off_customers_lose_from_any_message_and_price_sensitivity_is_continuous(config):
    w = make_world("price_averse", 2000, 5, config)
    idx = np.arange(w.n)
    averse = w.a["averse"] > 0
    assert 0.05 < averse.mean() < 0.4
    for k in range(len(config.channel_names)):
        value = w.expected_profit(idx, k, 12, 0) - w.expected_profit(idx, -1, 12, 0)
        assert (value[averse] < 0).all()
        assert value[~averse].mean() > value[averse].mean()
    p = w.outcome_probs(idx, 0, 12, 0)
    assert (p["order_given_unopened"][averse] < w.p0[averse]).all()  # even unopened, a message puts them off
    j = config.offer_names.index("pct20")
    lift = w.a["offer_lift"][~averse, j]
    assert np.corrcoef(w.a["beta"][~averse], lift)[0, 1] > 0.6
    assert len(np.unique(np.round(lift, 6))) > 100  # continuous, not a few segment levels


def test_drifting_affinity_changes_day_by_day_and_static_does_not(config):
    drift = make_world("drifting_affinity", 300, 6, config)
    static = make_world("slow_fatigue", 300, 6, config)
    start_d, start_s = drift.open_base.copy(), static.open_base.copy()
    seen = []
    for d in range(30):
        drift.start_day(d)
        static.start_day(d)
        seen.append(drift.open_base.copy())
    steps = [np.abs(b - a).mean() for a, b in zip(seen, seen[1:])]
    assert min(steps) > 0.003
    assert np.abs(seen[-1] - start_d).mean() > 0.03
    best_changed = (seen[-1].argmax(axis=1) != start_d.argmax(axis=1)).mean()
    assert best_changed > 0.05
    assert np.array_equal(static.open_base, start_s)
    # deterministic: the same days give the same walk
    again = make_world("drifting_affinity", 300, 6, config)
    for d in range(30):
        again.start_day(d)
    assert np.array_equal(again.open_base, seen[-1])


def test_saved_world_loads_as_its_member(config, tmp_path):
    w = make_world("harsh", 200, 1, config)
    w.set_calendar("2026-08-01")
    w.start_day(3)
    w.record_sends(3, np.arange(50))
    w.save(tmp_path / "w.npz")
    back = BaseWorld.load(tmp_path / "w.npz", w.customers, config)
    idx = np.arange(200)
    assert back.spec == w.spec and back.weekday == w.weekday
    assert np.allclose(back.expected_profit(idx, 2, 19, 1), w.expected_profit(idx, 2, 19, 1))


def test_benchmark_peers_play_a_closed_loop_day_within_the_rules(config, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from peers import LightGBMPeer, VWPeer

    from nextbest.sim.closed_loop import run_closed_loop
    from nextbest.training.train import train

    sim = generate(400, 30, seed=8, config=config, progress=False, world="price_averse")
    trained = train(write(sim, tmp_path / "d", seed=8), config, seed=0)
    peers = {"lightgbm": LightGBMPeer(sim, config, n_estimators=20),
             "vw": VWPeer(sim, config, warm_start=500)}
    res = run_closed_loop(trained.policy, sim, 1, seed=1, peers=peers, progress=False)
    row = res.daily.iloc[0]
    for name in peers:
        assert row[f"peer_violations_{name}"] == 0
        assert row[f"sent_{name}"] > 0
        assert np.isfinite(row[f"normalized_{name}"])
    assert row.filter(like="violations_").sum() == 0
