"""Response models and the trained policy's models on held-out days."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from nextbest.training.evaluate import response_metrics
from nextbest.training.models import ResponseClassifier, ValueRegressor


def frame(n, seed):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                      "flag": rng.random(n) < 0.5, "kind": pd.Categorical(rng.choice(["x", "y", "z"], n))})
    logit = -2 + 1.5 * X["a"] + 0.8 * (X["kind"] == "z") + 0.5 * X["flag"]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y, 1 / (1 + np.exp(-logit))


def test_classifier_learns_and_is_calibrated_on_later_rows():
    X, y, p = frame(30_000, 0)
    Xv, yv, pv = frame(10_000, 1)
    model = ResponseClassifier({"n_estimators": 200, "learning_rate": 0.05}).fit(X, y, eval_set=(Xv, yv))
    proba = model.predict_proba(Xv)
    assert proba.shape == (10_000, 2) and np.allclose(proba.sum(axis=1), 1)
    assert roc_auc_score(yv, proba[:, 1]) > roc_auc_score(yv, pv) - 0.02
    assert abs(proba[:, 1].mean() - yv.mean()) < 0.01
    assert model.feature_importance().index[0] == "a"


def test_classifier_reads_unseen_categories_and_refuses_missing_columns():
    X, y, _ = frame(5_000, 2)
    model = ResponseClassifier({"n_estimators": 20}).fit(X, y)
    X2 = X.head(10).copy()
    X2["kind"] = pd.Categorical(["new"] * 10)
    assert np.isfinite(model.predict_proba(X2)).all()
    with pytest.raises(ValueError, match="lacks"):
        model.predict_proba(X.drop(columns=["b"]))
    with pytest.raises(ValueError, match="nothing to learn"):
        ResponseClassifier().fit(X, np.zeros(len(X)))


def test_fitted_models_export_to_open_data_that_predicts_the_same():
    """``to_artifact()``: the booster as model text, the calibration as its thresholds."""
    import lightgbm as lgb

    from nextbest.decision.artifact import BoosterClassifier, BoosterRegressor, IsotonicMap

    X, y, _ = frame(8_000, 5)
    Xv, yv, _ = frame(4_000, 6)
    model = ResponseClassifier({"n_estimators": 300, "learning_rate": 0.1}, calibrate=True).fit(X, y, eval_set=(Xv, yv))
    art = model.to_artifact()
    assert isinstance(art, BoosterClassifier) and isinstance(art.calibrator_, IsotonicMap)
    text = art.booster_.model_to_string(num_iteration=art.num_iteration)
    loaded = BoosterClassifier(lgb.Booster(model_str=text), art.feature_names_in_, art.categories_,
                               calibration=IsotonicMap(art.calibrator_.x.tolist(), art.calibrator_.y.tolist()))
    np.testing.assert_array_equal(loaded.predict_proba(Xv), model.predict_proba(Xv))
    value = ValueRegressor({"n_estimators": 30}).fit(X[["a", "b"]], np.exp(X["a"]))
    art = value.to_artifact()
    assert isinstance(art, BoosterRegressor) and art.floor_ == value.floor_
    np.testing.assert_array_equal(art.predict(Xv), value.predict(Xv))


def test_value_regressor_predicts_positive_order_values():
    rng = np.random.default_rng(4)
    X = pd.DataFrame({"v": rng.lognormal(4, 0.3, 5000)})
    y = X["v"] * rng.lognormal(0, 0.1, 5000)
    model = ValueRegressor({"n_estimators": 50}).fit(X, y)
    pred = model.predict(X)
    assert (pred > 0).all() and np.corrcoef(pred, X["v"])[0, 1] > 0.9


def test_trained_response_models_beat_chance_on_held_out_days(trained):
    table, curves = response_metrics(trained.policy, trained.valid)
    overall = table[table["channel"] == "all"].set_index("model")
    assert overall.loc["open", "auc"] > 0.6
    assert set(table["channel"]) == {"all", "email", "sms", "push"}
    for name in ("open", "conversion"):
        assert abs(overall.loc[name, "mean_predicted"] - overall.loc[name, "observed"]) < 0.3 * overall.loc[name, "observed"]
        assert len(curves[name]) >= 5
    # the time split: validation decisions come after the training decisions
    assert trained.valid.examples["ts"].min() >= trained.train.examples["ts"].max()


def test_the_funnel_is_used_only_where_responses_follow_opens():
    from nextbest.training.train import use_funnel
    rng = np.random.default_rng(7)
    opened = rng.random(4000) < 0.3
    follows = pd.DataFrame({"opened": opened, "y": opened & (rng.random(4000) < 0.2)})
    assert use_funnel(follows, "y", "auto")
    # a third of the responses without an open (untracked opens): modelled over every send
    loose = follows.assign(y=follows["y"] | (~opened & (rng.random(4000) < 0.05)))
    assert not use_funnel(loose, "y", "auto")
    assert use_funnel(loose, "y", "on") and not use_funnel(follows, "y", "off")
    with pytest.raises(ValueError, match="no training send was opened"):
        use_funnel(follows.assign(opened=False), "y", "on")


def test_funnel_models_multiply_the_open_probability(trained):
    from nextbest.decision.artifact import GivenOpen
    conv = trained.policy.models.conversion
    assert isinstance(conv, GivenOpen)
    X = trained.valid.X[trained.valid.send].iloc[:300]
    p = conv.predict_proba(X)[:, 1]
    np.testing.assert_allclose(p, trained.policy.models.open.predict_proba(X)[:, 1]
                               * conv.given_open.predict_proba(X)[:, 1], rtol=1e-12)
    # on the opened validation sends the conditional model is near the observed conversion rate
    ex = trained.valid.examples[trained.valid.send]
    opened = ex["opened"].to_numpy(bool)
    q = conv.given_open.predict_proba(trained.valid.X[trained.valid.send][opened])[:, 1]
    observed = ex["converted_attributed"].to_numpy()[opened].mean()
    assert abs(q.mean() - observed) < 0.35 * observed
