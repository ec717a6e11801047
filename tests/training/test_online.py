"""The online learner: exact Bayesian updates, mergeable statistics, late rewards, new actions."""

import numpy as np
import pytest

from features.config import load_config
from training.exploration import Exploration
from training.online import D, PRIOR_MEAN, LearnerState, OnlineLearner, OnlineSettings, RewardAssembler, statistics


@pytest.fixture
def settings():
    return OnlineSettings.from_config(load_config())


def data(n, seed, theta=(0.1, 0.8, 1.0, 0.5, 0.3)):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(0, 1, (n, D - 1))])
    keys = rng.choice(["email/none", "sms/pct10", "suppress"], n)
    r = X @ np.asarray(theta) + rng.normal(0, 0.5, n)
    return keys, X, r


def test_prior_reproduces_the_offline_values(settings):
    learner = OnlineLearner(settings)
    X = np.random.default_rng(0).normal(size=(4, 3, D))
    mean, sd = learner.predict(["a", "b", "suppress"], X)
    assert np.allclose(mean, X @ PRIOR_MEAN) and (sd > 0).all()


def test_posterior_is_the_closed_form_ridge_toward_the_prior(settings):
    keys, X, r = data(3000, 1)
    learner = OnlineLearner(settings).partial_fit(keys, X, r)
    sel = keys == "email/none"
    lam = settings.prior_strength
    expected = np.linalg.solve(lam * np.eye(D) + X[sel].T @ X[sel], lam * PRIOR_MEAN + X[sel].T @ r[sel])
    assert np.allclose(learner.posterior("email/none")[0], expected)
    assert np.allclose(expected, [0.1, 0.8, 1.0, 0.5, 0.3], atol=0.1)  # and it learns the truth


def test_rank_one_updates_equal_the_batch_posterior(settings):
    keys, X, r = data(500, 2)
    one = OnlineLearner(settings)
    for k, x, y in zip(keys, X, r):
        one.update(k, x, y)
    batch = OnlineLearner(settings).partial_fit(keys, X, r)
    for k in set(keys):
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
    for k in set(keys):
        s1, s2 = merged.state.stats[k], single.state.stats[k]
        assert s1.n == s2.n and np.allclose(s1.xx, s2.xx) and np.allclose(s1.xr, s2.xr) and np.isclose(s1.rr, s2.rr)
        assert np.allclose(merged.posterior(k)[0], single.posterior(k)[0])
    assert np.isclose(merged.noise_var, single.noise_var)
    # and the state survives a round trip through JSON (how the store keeps it)
    again = LearnerState.from_json(merged.state.to_json())
    assert np.allclose(again.stats["sms/pct10"].xx, merged.state.stats["sms/pct10"].xx)


def test_late_stepwise_rewards_end_in_the_same_statistics(settings):
    rng = np.random.default_rng(4)
    learner = OnlineLearner(settings)
    asm = RewardAssembler(learner, window_hours=72)
    final = {}
    for i in range(50):
        x = np.r_[1.0, rng.normal(size=D - 1)]
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


def test_a_new_action_starts_from_the_prior_and_is_explored(settings):
    keys, X, r = data(20000, 5, theta=PRIOR_MEAN)  # the offline scores are right for the known actions
    learner = OnlineLearner(settings).partial_fit(keys, X, r)
    ex = Exploration.from_config(load_config()).with_(method="thompson", budget=1.0, samples=256)
    ctx = np.tile(np.r_[1.0, 0.2, 0.5, 0.3, 0.1], (200, 4, 1))
    mean, sd = learner.predict(["email/none", "sms/pct10", "push/brand_new", "suppress"], ctx)
    assert sd[:, 2].min() > 3 * sd[:, 0].max()        # the new action is the uncertain one
    probs, _ = ex.distribution(mean, sd, np.random.default_rng(0))
    assert probs[:, 2].mean() > 0.3                   # and Thompson sampling tries it more than the others
