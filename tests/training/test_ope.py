"""Off-policy estimators: hand-computed values, known truth on simulated data, CI coverage."""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.config import default_config_dict, load_config, merge_config, parse_config
from nextbest.training.ope import CrossFitRewardModel, LoggedBandit, estimate


def test_estimators_match_hand_computed_values():
    fb = LoggedBandit(action=[0, 1, 1, 2], reward=[1.0, 0.0, 2.0, 1.0], propensity=[0.5, 0.25, 0.25, 0.5],
                      n_actions=3)
    pi = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    q = np.array([[0.8, 0.5, 0.2], [0.6, 0.4, 0.1], [0.6, 0.4, 0.1], [0.9, 0.3, 0.7]])
    res = estimate(fb, pi, q, n_boot=200)
    w = np.array([1 / 0.5, 0.5 / 0.25, 1 / 0.25, 0.5 / 0.5])          # 2, 2, 4, 1
    r = np.array([1.0, 0.0, 2.0, 1.0])
    assert res["ips"].value == pytest.approx((2 * 1 + 2 * 0 + 4 * 2 + 1 * 1) / 4)        # 2.75
    assert res["snips"].value == pytest.approx(11 / 9)
    dm = np.array([0.8, 0.5 * 0.6 + 0.5 * 0.4, 0.4, 0.5 * 0.3 + 0.5 * 0.7])
    assert res["dm"].value == pytest.approx(dm.mean())
    q_logged = np.array([0.8, 0.4, 0.4, 0.7])
    assert res["dr"].value == pytest.approx((dm + w * (r - q_logged)).mean())
    assert res.diagnostics.ess == pytest.approx(w.sum() ** 2 / (w ** 2).sum())
    assert res.diagnostics.unsupported_logged == 0.0
    for e in res.estimates.values():
        assert e.ci_low <= e.value <= e.ci_high


def test_positions_and_unsupported_rounds():
    fb = LoggedBandit(action=[0, 1], reward=[1.0, 1.0], propensity=[0.5, 0.5], n_actions=2, position=[0, 1])
    pi = np.zeros((2, 2, 2))
    pi[:, 0, 0] = 1.0   # position 0: always action 0
    pi[:, 0, 1] = 1.0   # position 1: always action 0, so round 2 (action 1 at position 1) is unsupported
    res = estimate(fb, pi, n_boot=50)
    assert res["ips"].value == pytest.approx((2 * 1 + 0) / 2)
    assert res.diagnostics.unsupported_logged == 0.5


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="propensity must be in"):
        LoggedBandit(action=[0, 1], reward=[1, 0], propensity=[0.5, 0.0], n_actions=2)
    with pytest.raises(ValueError, match="action must be in"):
        LoggedBandit(action=[0, 3], reward=[1, 0], propensity=[0.5, 0.5], n_actions=2)
    fb = LoggedBandit(action=[0, 1], reward=[1, 0], propensity=[0.5, 0.5], n_actions=2)
    with pytest.raises(ValueError, match="sum to one"):
        estimate(fb, np.array([[0.5, 0.4], [0.5, 0.5]]))


def world(n, seed):
    """A contextual bandit with a known expected reward per (context, action)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    A = 4
    theta = np.array([[0.5, 0.0, 0.2], [-0.3, 0.6, 0.0], [0.0, -0.4, 0.5], [0.2, 0.2, -0.6]])
    mu = 1 / (1 + np.exp(-(x @ theta.T - 0.5)))                     # (n, A) P(reward = 1)
    logits = 1.5 * (x @ theta.T)
    logging_dist = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cum = logging_dist.cumsum(axis=1)
    action = (rng.random(n)[:, None] > cum).sum(axis=1).clip(0, A - 1)
    reward = (rng.random(n) < mu[np.arange(n), action]).astype(float)
    fb = LoggedBandit(action, reward, logging_dist[np.arange(n), action], A, context=x)
    candidate = np.eye(A)[mu.argmax(axis=1)] * 0.9 + 0.1 / A         # near-greedy on the truth
    return fb, candidate, float((candidate * mu).sum(axis=1).mean())


def reward_model_inputs(fb):
    X = pd.DataFrame(fb.context, columns=["x0", "x1", "x2"]).assign(a=pd.Categorical(fb.action, categories=range(4)))
    X_eval = pd.concat([X.assign(a=pd.Categorical(np.full(fb.n, j), categories=range(4))) for j in range(4)],
                       ignore_index=True)
    return X, X_eval


def test_estimators_find_the_known_truth_and_dr_beats_dm_bias():
    fb, candidate, truth = world(20000, 0)
    X, X_eval = reward_model_inputs(fb)
    q_logged, q = CrossFitRewardModel(n_folds=2, random_state=0).fit_predict(X, fb.reward, X_eval, 4)
    res = estimate(fb, candidate, q, n_boot=300)
    for name in ("ips", "snips", "dr"):
        e = res[name]
        assert e.ci_low <= truth <= e.ci_high, (name, e, truth)
        assert abs(e.value - truth) / truth < 0.08
    assert res["dr"].se < res["ips"].se          # the reward model removes variance


def test_confidence_intervals_cover_the_truth():
    hits = []
    for seed in range(40):
        fb, candidate, truth = world(3000, 100 + seed)
        res = estimate(fb, candidate, n_boot=300, seed=seed, estimators=("ips",))
        hits.append(res["ips"].ci_low <= truth <= res["ips"].ci_high)
    # nominal 95%; with 40 seeds, fewer than 33 hits would be a < 0.1% event for a correct interval
    assert sum(hits) >= 33, sum(hits)


def test_reward_model_takes_its_lightgbm_parameters_from_the_config(monkeypatch):
    import lightgbm

    seen = []
    real = lightgbm.LGBMRegressor
    monkeypatch.setattr(lightgbm, "LGBMRegressor", lambda **kw: seen.append(kw) or real(**kw))
    fb, _, _ = world(400, 0)
    X, X_eval = reward_model_inputs(fb)
    CrossFitRewardModel(random_state=0).fit_predict(X, fb.reward, X_eval, 4)
    assert {k: seen[-1][k] for k in load_config().offpolicy.reward_model.params()} == {
        "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 50,
        "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8}  # defaults.yaml's
    cfg = parse_config(merge_config(default_config_dict(), {"offpolicy": {"reward_model": {"n_estimators": 7}}}))
    CrossFitRewardModel(params={"num_leaves": 3}, config=cfg).fit_predict(X, fb.reward, X_eval, 4)
    assert (seen[-1]["n_estimators"], seen[-1]["num_leaves"], seen[-1]["learning_rate"]) == (7, 3, 0.05)
