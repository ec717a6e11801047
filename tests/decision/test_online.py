"""The online learner: exact Bayesian updates, mergeable statistics, late rewards, new actions."""

import numpy as np
import pytest

from nextbest.features.config import load_config
from nextbest.decision.exploration import Exploration
from nextbest.decision.online import (D, D_OWN, PRIOR_OWN, PRIOR_SHARED, SUPPRESS, LearnerState, OnlineLearner,
                             OnlineSettings, RewardAssembler, statistics)

KEYS = ["email/none", "sms/pct10"]


@pytest.fixture
def settings():
    """Fixed settings, so that these tests check the mechanics whatever the defaults are."""
    import dataclasses

    return dataclasses.replace(OnlineSettings.from_config(load_config()), prior_strength=200.0, noise_sd=5.0,
                               half_life_days=7.0)


def data(n, seed, own=((0.05, 0.8, 0.5, 0.3), (-0.05, 1.2, 0.0, 0.6)), shared=(0.1, 1.0)):
    """Decisions for two send actions and suppress with a known linear extra reward."""
    rng = np.random.default_rng(seed)
    keys = rng.choice(KEYS + [SUPPRESS], n)
    X = np.zeros((n, D))
    X[:, 0], X[:, 1] = 1.0, rng.gamma(2.0, 0.3, n)
    send = keys != SUPPRESS
    X[send, 2] = 1.0
    X[send, 3:] = rng.normal(0, 1, (send.sum(), 3))
    r = X[:, :2] @ np.asarray(shared)
    for k, th in zip(KEYS, own):
        sel = keys == k
        r[sel] += X[sel, 2:] @ np.asarray(th)
    return keys, X, r + rng.normal(0, 0.5, n)


def joint_design(keys, X):
    Z = np.zeros((len(keys), 2 + D_OWN * len(KEYS)))
    Z[:, :2] = X[:, :2]
    for i, k in enumerate(sorted(KEYS)):
        sel = keys == k
        Z[sel, 2 + D_OWN * i: 2 + D_OWN * (i + 1)] = X[sel, 2:]
    return Z


def test_prior_reproduces_the_offline_values(settings):
    X = np.random.default_rng(0).normal(size=(4, 3, D))
    X[:, 2, 2:] = 0.0
    mean, sd = OnlineLearner(settings).predict(["a", "b", SUPPRESS], X)
    assert np.allclose(mean[:, :2], X[:, :2, 3]) and (mean[:, 2] == 0).all()   # extra profit = offline value
    assert (sd[:, :2] > 0).all() and (sd[:, 2] == 0).all()


def test_posterior_is_the_closed_form_joint_ridge_toward_the_prior(settings):
    keys, X, r = data(4000, 1)
    learner = OnlineLearner(settings).partial_fit(keys, X, r)
    Z = joint_design(keys, X)
    lam = settings.prior_strength
    mu0 = np.r_[PRIOR_SHARED, PRIOR_OWN, PRIOR_OWN]
    expected = np.linalg.solve(lam * np.eye(Z.shape[1]) + Z.T @ Z, lam * mu0 + Z.T @ r)
    assert np.allclose(learner.posterior("email/none")[0], np.r_[expected[:2], expected[2:6]])
    assert np.allclose(learner.posterior("sms/pct10")[0], np.r_[expected[:2], expected[6:10]])
    assert np.allclose(expected, [0.1, 1.0, 0.05, 0.8, 0.5, 0.3, -0.05, 1.2, 0.0, 0.6], atol=0.1)  # learns the truth


def test_rank_one_updates_equal_the_batch_posterior(settings):
    keys, X, r = data(500, 2)
    one = OnlineLearner(settings)
    for k, x, y in zip(keys, X, r):
        one.update(k, x, y)
    batch = OnlineLearner(settings).partial_fit(keys, X, r)
    for k in KEYS:
        m1, inv1 = one.posterior(k)
        m2, inv2 = batch.posterior(k)
        assert np.allclose(m1, m2) and np.allclose(inv1, inv2)


def test_two_workers_merged_equal_one_worker_that_saw_everything(settings):
    keys, X, r = data(4000, 3)
    half = len(r) // 2
    w1 = OnlineLearner(settings).partial_fit(keys[:half], X[:half], r[:half])
    w2 = OnlineLearner(settings)
    for k, x, y in zip(keys[half:], X[half:], r[half:]):
        w2.update(k, x, y)
    merged = OnlineLearner(settings, w1.state.merge(w2.state))
    single = OnlineLearner(settings).partial_fit(keys, X, r)
    for k in KEYS + [SUPPRESS]:
        s1, s2 = merged.state.stats[k], single.state.stats[k]
        assert s1.n == s2.n and np.allclose(s1.xx, s2.xx) and np.allclose(s1.xr, s2.xr) and np.isclose(s1.rr, s2.rr)
        assert np.allclose(merged.posterior(k)[0], single.posterior(k)[0])
    assert np.isclose(merged.noise_var, single.noise_var)
    k, s0 = settings.prior_strength, settings.noise_sd ** 2   # the residual variance (0.5^2) is learned,
    assert merged.noise_var == pytest.approx((s0 * k + 0.25 * 4000) / (k + 4000), rel=0.05)  # shrunk to the prior
    again = LearnerState.from_json(merged.state.to_json())  # how the store keeps it
    assert np.allclose(again.stats["sms/pct10"].xx, merged.state.stats["sms/pct10"].xx)


def test_late_stepwise_rewards_end_in_the_same_statistics(settings):
    rng = np.random.default_rng(4)
    learner = OnlineLearner(settings)
    asm = RewardAssembler(learner, window_hours=72)
    final = {}
    for i in range(50):
        x = np.r_[1.0, rng.gamma(2, 0.3), 1.0, rng.normal(size=D - 3)]
        asm.register(f"d{i}", "email/none", x, t=0.0, immediate_reward=-0.002)
        final[f"d{i}"] = (x, -0.002)
    steps = [(f"d{i}", ev, t, v) for i in range(50)
             for ev, t, v in [("opened", 3600.0 * (i % 30), 0.0), ("converted", 3600.0 * (i % 60), 5.0 * (i % 3))]]
    rng.shuffle(steps)
    for d, ev, t, v in steps[: len(steps) // 2]:
        assert asm.feedback(d, ev, t, v)
    assert asm.mature(now=24 * 3600.0) == 50          # enter the learner with the reward so far
    for d, ev, t, v in steps[len(steps) // 2:]:
        assert asm.feedback(d, ev, t, v)              # later increments go straight to the statistics
    assert not asm.feedback(steps[0][0], steps[0][1], steps[0][2], steps[0][3])  # the same event twice counts once
    assert not asm.feedback("d1", "converted-2", 100 * 3600.0, 9.0)             # outside the attribution window
    for d, ev, t, v in steps:
        x, r0 = final[d]
        final[d] = (x, r0 + v)
    X = np.stack([v[0] for v in final.values()])
    r = np.array([v[1] for v in final.values()])
    want = statistics(np.array(["email/none"] * 50, dtype=object), X, r).stats["email/none"]
    got = learner.state.stats["email/none"]
    assert got.n == want.n and np.allclose(got.xr, want.xr) and np.isclose(got.rr, want.rr)
    assert np.allclose(learner.posterior("email/none")[0], OnlineLearner(settings).partial_fit(
        np.array(["email/none"] * 50, dtype=object), X, r).posterior("email/none")[0])


def test_a_new_action_starts_from_the_prior_and_is_explored(settings):
    keys, X, r = data(20000, 5, own=(PRIOR_OWN, PRIOR_OWN))  # the offline scores are right for known actions
    learner = OnlineLearner(settings).partial_fit(keys, X, r)
    ex = Exploration.from_config(load_config()).with_(method="thompson", budget=1.0, samples=256)
    ctx = np.tile(np.r_[1.0, 0.5, 1.0, 0.2, 0.3, 0.1], (200, 4, 1))
    ctx[:, 3, 2:] = 0.0
    mean, sd = learner.predict(["email/none", "sms/pct10", "push/brand_new", SUPPRESS], ctx)
    assert np.allclose(mean[:, 2], 0.2)               # prior: the offline value
    assert sd[:, 2].min() > 3 * sd[:, 0].max()        # the new action is the uncertain one
    probs, _ = ex.distribution(mean, sd, np.random.default_rng(0))
    assert probs[:, 2].mean() > 0.3                   # and Thompson sampling tries it more than the others


def test_decay_forgets_old_feedback_and_follows_a_change(settings):
    keys, X, r = data(20000, 6)
    learner = OnlineLearner(settings).partial_fit(keys, X, r)
    before = learner.posterior("email/none")[0][2:]
    learner.decay(settings.half_life_days)
    assert learner.state.n == pytest.approx(10000)            # half the weight after one half-life
    assert np.allclose(learner.posterior("email/none")[0][2:], before, atol=0.02)  # same fit, less certain
    # the action's effect changes; with forgetting the learner follows, without it lags behind
    keys2, X2, r2 = data(20000, 7, own=((-0.5, 0.8, 0.5, 0.3), (-0.05, 1.2, 0.0, 0.6)))
    forgetful, stubborn = learner, OnlineLearner(settings).partial_fit(keys, X, r)
    for day in range(5):
        part = slice(day * 4000, (day + 1) * 4000)
        forgetful.decay(1.0).partial_fit(keys2[part], X2[part], r2[part])
        stubborn.partial_fit(keys2[part], X2[part], r2[part])
    err = lambda m: abs(m.posterior("email/none")[0][2] - (-0.5))
    assert err(forgetful) < err(stubborn)


def test_feedback_events_carry_the_business_objective():
    from nextbest.decision.online import event_reward

    cfg = load_config()
    m = cfg.objective.margin
    assert event_reward(cfg, "pct10", "converted", 50.0) == pytest.approx(m * 50 - 0.10 * 50)
    assert event_reward(cfg, "free_shipping", "converted", 50.0) == pytest.approx(m * 50 - 6.0)
    assert event_reward(cfg, "pct10", "converted", 50.0, redeems=False) == pytest.approx(m * 50)
    assert event_reward(cfg, None, "converted", 50.0) == pytest.approx(m * 50)  # an order after "suppress"
    assert event_reward(cfg, "none", "unsubscribed") == -cfg.objective.unsubscribe_cost
    assert event_reward(cfg, "none", "opened") == 0.0
    with pytest.raises(ValueError, match="unknown feedback event"):
        event_reward(cfg, "none", "liked")
    with pytest.raises(ValueError, match="order value"):
        event_reward(cfg, "none", "converted", None)


def test_merging_never_shares_statistics_with_its_inputs(settings):
    keys, X, r = data(30, 8)
    delta = statistics(keys, X, r)
    n_before = {k: s.n for k, s in delta.stats.items()}
    learner = OnlineLearner(settings).merge(delta)
    learner.update(keys[0], X[0], r[0])                 # in place on the learner's own copy
    learner.add_reward(keys[1], X[1], 1.0, r[1])
    assert {k: s.n for k, s in delta.stats.items()} == n_before  # the merged-in delta is untouched
