"""The online learner: exact Bayesian updates, mergeable statistics, new actions, forgetting.

Late stepwise rewards (feedback before and after a decision enters the learner) are tested on
the service's own path in ``tests/serving/test_feedback.py``.
"""

import numpy as np
import pytest

from nextbest.features.config import load_config
from nextbest.decision.exploration import Exploration
from nextbest.decision.online import (D, D_OWN, PRIOR_OWN, PRIOR_SHARED, SUPPRESS, LearnerState, OnlineLearner,
                             OnlineSettings, statistics)
from nextbest.serving import learning

KEYS = ["email/none", "sms/pct10"]


@pytest.fixture
def settings():
    """Fixed settings, so that these tests check the mechanics whatever the defaults are."""
    import dataclasses

    return dataclasses.replace(OnlineSettings.from_config(load_config()), prior_strength=200.0, noise_sd=5.0,
                               half_life_days=7.0, change_z=0.0, learn_profit=True)


def data(n, seed, own=((0.05, 0.8, 0.5, 0.3), (-0.05, 1.2, 0.0, 0.6)), shared=(0.1, 1.0)):
    """Decisions for two send actions and suppress with a known linear extra reward."""
    rng = np.random.default_rng(seed)
    keys = rng.choice(KEYS + [SUPPRESS], n)
    X = np.zeros((n, D))
    X[:, 0], X[:, 1] = 1.0, rng.gamma(2.0, 0.3, n)
    send = keys != SUPPRESS
    X[send, 2] = 1.0
    X[send, 3:] = rng.normal(0, 1, (send.sum(), D - 3))
    r = X[:, :2] @ np.asarray(shared)
    for k, th in zip(KEYS, own):
        sel = keys == k
        r[sel] += X[sel, 2:] @ np.r_[th, np.zeros(D_OWN - len(th))]  # the contact context adds nothing here
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
    a, b = slice(2, 2 + D_OWN), slice(2 + D_OWN, 2 + 2 * D_OWN)
    assert np.allclose(learner.posterior("email/none")[0], np.r_[expected[:2], expected[a]])
    assert np.allclose(learner.posterior("sms/pct10")[0], np.r_[expected[:2], expected[b]])
    pad = np.zeros(D_OWN - 4)  # the contact context adds nothing in this data
    truth = np.r_[0.1, 1.0, 0.05, 0.8, 0.5, 0.3, pad, -0.05, 1.2, 0.0, 0.6, pad]
    assert np.allclose(expected, truth, atol=0.1)  # learns the truth


def one_by_one(keys, X, r) -> LearnerState:
    """Statistics as the service builds them: one vector per decision (``serving.learning``),
    added up per action as the store's atomic adds do."""
    vectors: dict = {}
    for k, x, y in zip(keys, X, r):
        learning.add(vectors, str(k), learning.observation(x, y))
    return learning.state_from_vectors(vectors)


def test_decisions_added_one_by_one_equal_the_batch_posterior(settings):
    keys, X, r = data(500, 2)
    one = OnlineLearner(settings, one_by_one(keys, X, r))
    batch = OnlineLearner(settings).partial_fit(keys, X, r)
    for k in KEYS:
        m1, inv1 = one.posterior(k)
        m2, inv2 = batch.posterior(k)
        assert np.allclose(m1, m2) and np.allclose(inv1, inv2)


def test_two_workers_merged_equal_one_worker_that_saw_everything(settings):
    keys, X, r = data(4000, 3)
    half = len(r) // 2
    w1 = OnlineLearner(settings).partial_fit(keys[:half], X[:half], r[:half])
    w2 = OnlineLearner(settings, one_by_one(keys[half:], X[half:], r[half:]))  # the service's way
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


def test_a_new_action_starts_from_the_prior_and_is_explored(settings):
    keys, X, r = data(20000, 5, own=(PRIOR_OWN, PRIOR_OWN))  # the offline scores are right for known actions
    learner = OnlineLearner(settings).partial_fit(keys, X, r)
    ex = Exploration.from_config(load_config()).with_(method="thompson", budget=1.0, samples=256)
    ctx = np.tile(np.r_[1.0, 0.5, 1.0, 0.2, 0.3, 0.1, np.zeros(D - 6)], (200, 4, 1))
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
    assert event_reward(cfg, "email", "pct10", "converted", 50.0) == pytest.approx(m * 50 - 0.10 * 50)
    assert event_reward(cfg, "email", "free_shipping", "converted", 50.0) == pytest.approx(m * 50 - 6.0)
    assert event_reward(cfg, "email", "pct10", "converted", 50.0, redeems=False) == pytest.approx(m * 50)
    assert event_reward(cfg, None, None, "converted", 50.0) == pytest.approx(m * 50)  # an order after "suppress"
    assert event_reward(cfg, "sms", "none", "unsubscribed") == pytest.approx(-cfg.objective.unsubscribe_cost)
    assert event_reward(cfg, "sms", "none", "opened") == 0.0
    with pytest.raises(ValueError, match="unknown feedback event"):
        event_reward(cfg, "sms", "none", "liked")
    with pytest.raises(ValueError, match="order value"):
        event_reward(cfg, "sms", "none", "converted", None)


def test_merging_never_shares_statistics_with_its_inputs(settings):
    keys, X, r = data(30, 8)
    delta = statistics(keys, X, r)
    n_before = {k: s.n for k, s in delta.stats.items()}
    learner = OnlineLearner(settings).merge(delta)
    own = learner.state.stats[keys[0]]                  # changed in place on the learner's own copy
    own.n += 1
    own.xx += np.outer(X[0], X[0])
    own.xr += 1.0 * X[1]
    assert {k: s.n for k, s in delta.stats.items()} == n_before  # the merged-in delta is untouched


def test_change_detection_forgets_after_a_shift_and_not_otherwise(settings):
    """The learner tracks a shift on synthetic data: one action's effect drops; with change detection
    the learner's estimate is near the new truth after two days of feedback, without it it lags;
    on stable data it never forgets (every observation is still in the statistics)."""
    import dataclasses

    detect = dataclasses.replace(settings, half_life_days=0.0, change_z=4.0, change_forget=0.1)
    stubborn_settings = dataclasses.replace(detect, change_z=0.0)
    keys, X, r = data(20000, 6)
    alert, stubborn = OnlineLearner(detect).partial_fit(keys, X, r), OnlineLearner(stubborn_settings).partial_fit(keys, X, r)
    assert alert.state.n == stubborn.state.n == 20000
    # stable: 10 more days of the same world, nothing forgotten
    for day in range(10):
        k, x, y = data(4000, 100 + day)
        alert.partial_fit(k, x, y)
    assert alert.state.n == pytest.approx(60000)
    # the shift: email/none's own intercept falls from 0.05 to -0.5
    alert, stubborn = OnlineLearner(detect).partial_fit(keys, X, r), OnlineLearner(stubborn_settings).partial_fit(keys, X, r)
    k2, x2, y2 = data(4000, 7, own=((-0.5, 0.8, 0.5, 0.3), (-0.05, 1.2, 0.0, 0.6)))
    assert abs(alert.changed_actions(k2, x2, y2)["email/none"]) > 4 > abs(alert.changed_actions(k2, x2, y2)["sms/pct10"])
    for day in range(2):  # two days of feedback after the shift
        k2, x2, y2 = data(4000, 7 + day, own=((-0.5, 0.8, 0.5, 0.3), (-0.05, 1.2, 0.0, 0.6)))
        alert.partial_fit(k2, x2, y2)
        stubborn.partial_fit(k2, x2, y2)
    assert alert.posterior("email/none")[0][2] == pytest.approx(-0.5, abs=0.12)
    assert stubborn.posterior("email/none")[0][2] > -0.25          # a month of old statistics holds it back
    assert alert.state.stats["sms/pct10"].n == stubborn.state.stats["sms/pct10"].n  # the unchanged action kept its past
