"""Uplift and off-policy evaluation on a plain CSV with a known effect (training.table_uplift)."""

import numpy as np
import pandas as pd
import pytest

from nextbest.training.table_uplift import evaluate_targeting, fit_uplift, load_table, targeting_policies

# the coupon adds 10 points for half the customers (x > 0.5) and costs 3 points for the others
BASE, GAIN, LOSS = 0.10, 0.10, 0.03


def effect(x):
    return np.where(x > 0.5, GAIN, -LOSS)


def ab_test(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    coupon = rng.random(n) < 0.3
    p = BASE + coupon * effect(x)
    return pd.DataFrame({"customer": [f"c{i}" for i in range(n)], "x": x, "noise": rng.normal(size=n),
                         "variant": np.where(coupon, "coupon", "none"), "bought": (rng.random(n) < p).astype(int)})


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "ab_test.csv"
    ab_test(40_000, seed=3).to_csv(path, index=False)
    return path


def test_targeting_by_uplift_beats_treating_everyone_within_honest_intervals(csv):
    table = load_table(csv, treatment="variant", outcome="bought", control="none")
    assert list(table.X.columns) == ["x", "noise"]  # the identifier column is dropped
    assert table.arms == ["none", "coupon"] and np.allclose(np.unique(table.propensity), [0.3, 0.7], atol=0.01)
    train, test = table.split(0.5, seed=0)
    model = fit_uplift(train, seed=0)
    uplift = model.predict(test.X)["coupon"].to_numpy()
    high = test.X["x"].to_numpy() > 0.5
    assert uplift[high].mean() > 0.05 and uplift[high].mean() - uplift[~high].mean() > 0.05  # truth: 0.10 and 0.13
    policies = targeting_policies(model, test)
    values = evaluate_targeting(test, policies, n_boot=200, seed=0)
    dr = values[values["estimator"] == "dr"].set_index("policy")
    x = test.X["x"].to_numpy()
    for name, dist in policies.items():  # the true value of each policy on these rows: the known rates
        truth = np.mean(BASE + dist[:, 1] * effect(x))
        est = dr.loc[name]
        assert abs(est["value"] - truth) <= 3 * est["se"], (name, truth, est.to_dict())
        assert est["ci_low"] < est["value"] < est["ci_high"] and est["se"] < 0.01
    assert dr.loc["uplift model's pick", "value"] > dr.loc["everyone: coupon", "value"] > dr.loc["nobody (control)", "value"]

def test_bad_tables_get_clear_errors(csv, tmp_path):
    with pytest.raises(KeyError, match="no column 'bougth'"):
        load_table(csv, treatment="variant", outcome="bougth", control="none")
    with pytest.raises(ValueError, match="no row has the control 'control'"):
        load_table(csv, treatment="variant", outcome="bought", control="control")
    bad = pd.read_csv(csv).assign(p=0.0)
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"propensity 'p' must lie in \(0, 1\]; row 0"):
        load_table(tmp_path / "bad.csv", treatment="variant", outcome="bought", control="none", propensity="p")
    bad.assign(bought="yes").to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(ValueError, match="outcome 'bought' must be a number on every row; row 0 has 'yes'"):
        load_table(tmp_path / "text.csv", treatment="variant", outcome="bought", control="none")
    with pytest.raises(FileNotFoundError):
        load_table(tmp_path / "none.csv", treatment="variant", outcome="bought", control="none")


def test_arm_labels_survive_csv_round_trips_and_missing_arms_are_named(tmp_path):
    df = ab_test(400, seed=1).assign(slot=lambda d: np.where(d["variant"] == "coupon", 1.0, 3.0))
    df.to_csv(tmp_path / "slots.csv", index=False)
    table = load_table(tmp_path / "slots.csv", treatment="slot", outcome="bought", control=3)
    assert table.arms == ["3", "1"]  # not "3.0"
    df.loc[5, "variant"] = None
    df.to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(ValueError, match="treatment 'variant' is missing on row 5"):
        load_table(tmp_path / "gap.csv", treatment="variant", outcome="bought", control="none")
