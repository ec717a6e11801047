"""Uplift and off-policy evaluation on any plain table: one row per unit, a treatment, an outcome.

What ``notebooks/04_your_own_data.ipynb`` points at a CSV (or Parquet) file, e.g. the Open
Bandit Dataset sample in ``data/obd/`` or an A/B test export::

    table = load_table("ab_test.csv", treatment="variant", outcome="bought", control="none")
    train, test = table.split(0.5, seed=0)
    model = fit_uplift(train)
    policies = targeting_policies(model, test)        # name -> action_dist (n, arms)
    values = evaluate_targeting(test, policies)       # IPS / SNIPS / DR with 95% intervals

- ``propensity``: the probability with which the row got its own treatment. Without the column
  the table is taken to be a randomized experiment and each arm's share of the rows is used.
  That assumption is the user's to make; a table where treatment followed the outcome's drivers
  needs the real propensities.
- Policies compared: every "everyone gets arm a" (the control arm is "treat nobody") and
  "the uplift model's pick" (each row's arm with the highest predicted outcome). The model is
  fitted on one part of the rows and evaluated on the other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.training.ope import CrossFitRewardModel, LoggedBandit, estimate
from nextbest.training.uplift import UpliftLearner

log = logging.getLogger(__name__)

MAX_CATEGORIES = 1000  # text columns with more distinct values are identifiers, not features


@dataclass
class TreatmentTable:
    X: pd.DataFrame              # (n, d) features
    treatment: np.ndarray        # (n,) str
    y: np.ndarray                # (n,) float outcome
    propensity: np.ndarray       # (n,) P(own treatment)
    control: str
    arms: list[str]              # control first

    @property
    def n(self) -> int:
        return len(self.y)

    def take(self, rows: np.ndarray) -> "TreatmentTable":
        return TreatmentTable(self.X.iloc[rows].reset_index(drop=True), self.treatment[rows], self.y[rows],
                              self.propensity[rows], self.control, self.arms)

    def split(self, fraction: float = 0.5, seed: int = 0) -> tuple["TreatmentTable", "TreatmentTable"]:
        """A random ``fraction`` of the rows to fit on, the rest to evaluate on."""
        first = np.random.default_rng(seed).random(self.n) < fraction
        return self.take(np.flatnonzero(first)), self.take(np.flatnonzero(~first))

    @property
    def action(self) -> np.ndarray:
        """Each row's arm as an index into ``arms``, (n,)."""
        return pd.Series(self.treatment).map({a: k for k, a in enumerate(self.arms)}).to_numpy(np.int64)


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _labels(col: pd.Series) -> np.ndarray:
    """Arm names as text; whole-number floats (an integer column read with gaps) lose their ``.0``."""
    if pd.api.types.is_float_dtype(col) and np.all(np.mod(col.to_numpy(float), 1) == 0):
        col = col.astype(np.int64)
    return col.astype(str).to_numpy()


def load_table(path: str | Path, treatment: str, outcome: str, control, propensity: str | None = None,
               features: list[str] | None = None, max_rows: int | None = None, seed: int = 0) -> TreatmentTable:
    """Read and check the table; ``features`` default to every other column (identifiers dropped)."""
    path = Path(path)
    df = _read(path)
    named = [treatment, outcome] + ([propensity] if propensity else []) + list(features or [])
    missing = [c for c in named if c not in df.columns]
    if missing:
        raise KeyError(f"{path.name}: no column {', '.join(map(repr, missing))}; columns are {list(df.columns)}")
    if max_rows is not None and len(df) > max_rows:
        df = df.sample(max_rows, random_state=seed).reset_index(drop=True)
    y = pd.to_numeric(df[outcome], errors="coerce")
    if y.isna().any():
        row = int(np.flatnonzero(y.isna().to_numpy())[0])
        raise ValueError(f"{path.name}: outcome {outcome!r} must be a number on every row; row {row} has "
                         f"{df[outcome].iloc[row]!r}")
    if df[treatment].isna().any():
        row = int(np.flatnonzero(df[treatment].isna().to_numpy())[0])
        raise ValueError(f"{path.name}: treatment {treatment!r} is missing on row {row}; every row needs its arm")
    t = _labels(df[treatment])
    control = _labels(pd.Series([control]))[0]
    arms = sorted(set(t))
    if control not in arms:
        raise ValueError(f"{path.name}: no row has the control {control!r} in {treatment!r}; values are {arms}")
    if len(arms) < 2:
        raise ValueError(f"{path.name}: {treatment!r} has only one value; uplift needs a treated and a control arm")
    arms = [control] + [a for a in arms if a != control]
    if propensity:
        e = pd.to_numeric(df[propensity], errors="coerce").to_numpy(float)
        bad = ~((e > 0) & (e <= 1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path.name}: propensity {propensity!r} must lie in (0, 1]; row {row} has "
                             f"{df[propensity].iloc[row]!r}")
    else:
        share = pd.Series(t).value_counts(normalize=True)
        e = share.loc[t].to_numpy(float)
        log.info("no propensity column: treating %s as randomized (arm shares %s)", path.name,
                 share.round(3).to_dict())
    if features is None:
        features = [c for c in df.columns if c not in (treatment, outcome, propensity)]
    X = df[list(features)].copy()
    for c in list(X.columns):
        if not pd.api.types.is_numeric_dtype(X[c]) and not pd.api.types.is_bool_dtype(X[c]):
            if X[c].nunique() > MAX_CATEGORIES:
                log.info("dropping %r: %d distinct values look like an identifier", c, X[c].nunique())
                X = X.drop(columns=c)
            else:
                X[c] = X[c].astype(str).astype("category")
    return TreatmentTable(X.reset_index(drop=True), t, y.to_numpy(float), e, control, arms)


def fit_uplift(table: TreatmentTable, seed: int = 0, params: dict | None = None,
               config: Config | None = None) -> UpliftLearner:
    """The T-learner (one LightGBM outcome model per arm, inverse-propensity weighted); ``params``
    over the config's ``uplift.lightgbm`` (default: ``defaults.yaml``'s)."""
    return UpliftLearner(control=table.control, method="t", params=params, random_state=seed, config=config).fit(
        table.X, table.treatment, table.y, propensity=table.propensity)


def targeting_policies(model: UpliftLearner, table: TreatmentTable) -> dict[str, np.ndarray]:
    """Deterministic policies as action distributions (n, arms) over ``table.arms``."""
    n, A = table.n, len(table.arms)
    out = {}
    for k, arm in enumerate(table.arms):
        dist = np.zeros((n, A))
        dist[:, k] = 1.0
        out["nobody (control)" if arm == table.control else f"everyone: {arm}"] = dist
    mu = model.predict_outcomes(table.X)[table.arms].to_numpy()
    dist = np.zeros((n, A))
    dist[np.arange(n), mu.argmax(axis=1)] = 1.0
    out["uplift model's pick"] = dist
    return out


def _design(table: TreatmentTable, arm_index: np.ndarray) -> pd.DataFrame:
    X = table.X.copy()
    X["__arm"] = pd.Categorical(arm_index, categories=range(len(table.arms)))
    return X


def evaluate_targeting(table: TreatmentTable, policies: dict[str, np.ndarray], n_boot: int = 500,
                       seed: int = 0, config: Config | None = None) -> pd.DataFrame:
    """IPS, SNIPS and DR value of each policy with 95% bootstrap intervals, one row per (policy, estimator).

    The DR/DM reward model is a cross-fitted LightGBM on the features and the arm (the config's
    ``offpolicy.reward_model``; default: ``defaults.yaml``'s).
    """
    A = len(table.arms)
    action = table.action
    feedback = LoggedBandit(action, table.y, table.propensity, A, table.X)
    X = _design(table, action)
    X_eval = pd.concat([_design(table, np.full(table.n, a)) for a in range(A)], ignore_index=True)
    _, q = CrossFitRewardModel(n_folds=2, random_state=seed, config=config).fit_predict(X, table.y, X_eval, A)
    rows = []
    for name, dist in policies.items():
        res = estimate(feedback, dist, q, n_boot=n_boot, seed=seed)
        for e in res.estimates.values():
            rows.append({"policy": name, "estimator": e.estimator, "value": e.value, "ci_low": e.ci_low,
                         "ci_high": e.ci_high, "se": e.se, "ess": res.diagnostics.ess})
    return pd.DataFrame(rows)
