"""The uplift learner on data with a known treatment effect, and the uplift metrics."""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.config import default_config_dict, merge_config, parse_config
from nextbest.training.uplift import UpliftLearner
from nextbest.training.uplift_eval import auuc, bootstrap_ci, qini_coefficient, qini_curve, uplift_by_decile


def known_effect_data(n=40_000, seed=0):
    """Two treatments over a control; effects depend on x0 (a: +, b: - then +), baseline on x1."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x0": rng.uniform(-1, 1, n), "x1": rng.uniform(-1, 1, n), "noise": rng.normal(size=n),
                      "segment": pd.Categorical(rng.choice(["u", "v"], n))})
    # logging policy: treatment depends on x1 (confounding), propensities known
    p_a = 0.2 + 0.2 * (X["x1"] > 0)
    p_b = np.full(n, 0.3)
    u = rng.random(n)
    t = np.where(u < p_a, "a", np.where(u < p_a + p_b, "b", "control"))
    prop = np.where(t == "a", p_a, np.where(t == "b", p_b, 1 - p_a - p_b))
    base = 0.1 + 0.05 * X["x1"].to_numpy()
    effect = {"a": 0.1 * (X["x0"].to_numpy() > 0), "b": 0.08 * X["x0"].to_numpy()}
    p = base + np.select([t == "a", t == "b"], [effect["a"], effect["b"]], 0.0)
    y = (rng.random(n) < p).astype(int)
    return X, t, y, prop, effect


@pytest.mark.parametrize("method", ["t", "dr"])
def test_recovers_a_known_heterogeneous_effect(method):
    X, t, y, prop, effect = known_effect_data()
    model = UpliftLearner(control="control", method=method, params={"n_estimators": 150},
                          random_state=1).fit(X, t, y, propensity=prop)
    assert model.treatments_ == ["control", "a", "b"]
    pred = model.predict(X)
    assert list(pred.columns) == ["a", "b"]
    for arm in ("a", "b"):
        assert np.corrcoef(pred[arm], effect[arm])[0, 1] > 0.7, arm
        assert abs(pred[arm].mean() - effect[arm].mean()) < 0.02, arm
    # where a helps (x0 > 0) it is predicted to help more than where it does not (true contrast 0.10;
    # the DR-learner's regression on noisy pseudo-outcomes, stopped early, shrinks it more)
    hi, lo = pred["a"][X["x0"] > 0.2].mean(), pred["a"][X["x0"] < -0.2].mean()
    assert hi - lo > (0.06 if method == "t" else 0.03)


def test_plain_api_works_without_propensities_and_on_continuous_outcomes():
    X, t, y, _, effect = known_effect_data(n=20_000, seed=2)
    yc = y + 0.5 * X["x0"].to_numpy()  # continuous outcome: same effects
    model = UpliftLearner(control="control").fit(X, t, yc)
    assert not model.binary_
    assert abs(model.predict(X)["a"].mean() - effect["a"].mean()) < 0.03


def test_bad_input_is_refused_with_a_clear_message():
    X, t, y, prop, _ = known_effect_data(n=2_000)
    with pytest.raises(ValueError, match="control treatment"):
        UpliftLearner(control="nothing").fit(X, t, y)
    with pytest.raises(ValueError, match="differ in length"):
        UpliftLearner(control="control").fit(X, t[:-1], y)
    with pytest.raises(ValueError, match="propensities"):
        UpliftLearner(control="control").fit(X, t, y, propensity=np.zeros(len(y)))
    model = UpliftLearner(control="control", params={"n_estimators": 10}).fit(X, t, y)
    with pytest.raises(ValueError, match="lacks"):
        model.predict(X.drop(columns=["x0"]))


def test_lightgbm_settings_come_from_the_config():
    X, t, y, prop, _ = known_effect_data(n=2_000)
    model = UpliftLearner(control="control", params={"n_estimators": 10}).fit(X, t, y)
    # defaults.yaml's uplift section under the caller's params
    assert {k: model.lgb_params_[k] for k in ("n_estimators", "learning_rate", "min_child_samples")} == {
        "n_estimators": 10, "learning_rate": 0.05, "min_child_samples": 100}
    assert model.early_stopping_rounds_ == 30 and model.effect_lgb_params_["min_child_samples"] == 500
    cfg = parse_config(merge_config(default_config_dict(), {"uplift": {
        "lightgbm": {"n_estimators": 5}, "effect_lightgbm": {"min_child_samples": 50}, "early_stopping_rounds": 3}}))
    model = UpliftLearner(control="control", method="dr", config=cfg).fit(X, t, y, propensity=prop)
    assert (model.lgb_params_["n_estimators"], model.early_stopping_rounds_) == (5, 3)
    assert (model.effect_lgb_params_["n_estimators"], model.effect_lgb_params_["min_child_samples"]) == (5, 50)
    assert UpliftLearner(control="control", early_stopping_rounds=4, config=cfg).fit(X, t, y).early_stopping_rounds_ == 4


def test_qini_rewards_a_good_ranking_and_not_a_random_one():
    rng = np.random.default_rng(3)
    n = 20_000
    tau = rng.uniform(0, 0.2, n)
    treated = rng.random(n) < 0.5
    y = (rng.random(n) < 0.1 + tau * treated).astype(int)
    good, rand = qini_coefficient(tau, treated, y), qini_coefficient(rng.random(n), treated, y)
    assert good > 0.004 and abs(rand) < good / 3
    assert auuc(tau, treated, y) > auuc(-tau, treated, y)
    curve = qini_curve(tau, treated, y)
    assert curve["fraction"].iloc[0] == 0 and curve["fraction"].iloc[-1] == 1
    assert np.isclose(curve["qini"].iloc[-1], curve["random"].iloc[-1])
    deciles = uplift_by_decile(tau, treated, y, n_boot=50)
    assert len(deciles) == 10
    assert deciles["uplift"].iloc[0] > deciles["uplift"].iloc[-1]
    assert (deciles["ci_low"] <= deciles["uplift"]).all() and (deciles["uplift"] <= deciles["ci_high"]).all()
    est, lo, hi = bootstrap_ci(lambda s, t_, yy: qini_coefficient(s, t_, yy), (tau, treated, y), n_boot=30)
    assert lo <= est <= hi
