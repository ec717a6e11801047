"""Response models: LightGBM estimators in scikit-learn style, with optional calibration.

``ResponseClassifier`` predicts the probability of one response (open, click, conversion,
unsubscribe) of a candidate message; ``ValueRegressor`` the expected order value. Both take the
frame of ``decision.candidates`` (customer features plus the candidate's columns) and keep the
LightGBM booster, the feature order and the categories they were fitted with, so that a frame
built at serving time is read exactly like the training frame.
"""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import log_loss

# the scoring helpers live with the loaded models (decision may not import training)
from nextbest.decision.artifact import (SMALL_BATCH, BoosterClassifier, BoosterRegressor,  # noqa: F401
                                        IsotonicMap, booster_predict)
from nextbest.decision.threads import lightgbm_threads

log = logging.getLogger(__name__)


def _prepare(X: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Bools as 0/1 and text as categories: what LightGBM reads."""
    X = X if columns is None else X[columns]
    out = {}
    for c in X.columns:
        col = X[c]
        if pd.api.types.is_bool_dtype(col):
            out[c] = col.to_numpy(dtype=np.int8)
        elif isinstance(col.dtype, pd.CategoricalDtype) or pd.api.types.is_numeric_dtype(col):
            out[c] = col
        else:
            out[c] = col.astype("category")
    return pd.DataFrame(out, index=X.index)


def _align_categories(X: pd.DataFrame, categories: dict) -> pd.DataFrame:
    """Use the fitted categories (unseen values become missing)."""
    for c, cats in categories.items():
        if c in X:
            values = pd.Series(np.asarray(X[c].astype(object)), index=X.index)
            X[c] = pd.Categorical(values.where(values.isin(cats)), categories=cats)
    return X


def to_matrix(X: pd.DataFrame, columns: list[str], categories: dict) -> np.ndarray:
    """The model input as a float matrix (n, len(columns)), categories as codes of the fitted ones.

    LightGBM reads a categorical feature as the code of its value in the categories it was
    fitted with; passing those codes directly skips pandas' per-call conversions (the result
    equals predicting on the aligned frame). Unseen values are missing. The conversion is
    ``decision.candidates``' (the scoring path), applied to a whole frame.
    """
    from nextbest.decision.candidates import CustomerArrays, model_input

    missing = [c for c in columns if c not in X]
    if missing:
        raise ValueError(f"input lacks {len(missing)} model feature(s), e.g. {missing[:5]}")
    return model_input(columns, categories, CustomerArrays(X), np.arange(len(X)), {})


class _LGBMBase(BaseEstimator):
    _objective = "binary"

    def __init__(self, params: dict | None = None, early_stopping_rounds: int | None = None, random_state: int = 0):
        self.params = params
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state

    def _fit_booster(self, X, y, sample_weight=None, eval_set=None, callbacks=()):
        X = _prepare(X)
        self.feature_names_in_ = list(X.columns)
        self.categories_ = {c: list(X[c].cat.categories) for c in X.columns
                            if isinstance(X[c].dtype, pd.CategoricalDtype)}
        params = {"verbose": -1, "random_state": self.random_state, "n_jobs": lightgbm_threads(), "force_col_wise": True, "enable_sparse": False,
                  **(self.params or {})}
        model = (lgb.LGBMClassifier if self._objective == "binary" else lgb.LGBMRegressor)(**params)
        kwargs, cbs = {}, list(callbacks)
        if eval_set is not None:
            Xv, yv = eval_set
            kwargs["eval_X"], kwargs["eval_y"] = (self._frame(Xv),), (np.asarray(yv),)
            if self.early_stopping_rounds:  # None: no early stopping (the project passes training.early_stopping_rounds)
                cbs.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        model.fit(X, np.asarray(y), sample_weight=sample_weight, callbacks=cbs, **kwargs)
        self.booster_ = model.booster_
        self.best_iteration_ = int(model.best_iteration_ or model.n_estimators)
        return self

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.feature_names_in_ if c not in X]
        if missing:
            raise ValueError(f"input lacks {len(missing)} model feature(s), e.g. {missing[:5]}")
        return _align_categories(_prepare(X, self.feature_names_in_), self.categories_)

    def _raw(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Raw booster output; ``X`` is a frame or the float matrix of ``to_matrix`` / ``candidates.model_input``."""
        M = X if isinstance(X, np.ndarray) else to_matrix(X, self.feature_names_in_, self.categories_)
        return booster_predict(self.booster_, M, self.best_iteration_)

    def feature_importance(self) -> pd.Series:
        """Total gain per feature, largest first."""
        gain = self.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.feature_names_in_).sort_values(ascending=False)


class ResponseClassifier(_LGBMBase, ClassifierMixin):
    """P(response | customer, candidate) with LightGBM; isotonic calibration when it helps.

    Parameters
    ----------
    params : dict, optional
        LightGBM parameters (``training.lightgbm`` of the config).
    calibrate : {"auto", True, False}
        ``auto`` fits an isotonic map on the first half of the validation set and keeps it only if
        it lowers the log loss on the second half; ``True`` always keeps it.
    """

    def __init__(self, params: dict | None = None, early_stopping_rounds: int | None = None, random_state: int = 0,
                 calibrate="auto"):
        super().__init__(params, early_stopping_rounds, random_state)
        self.calibrate = calibrate

    def fit(self, X: pd.DataFrame, y, sample_weight=None, eval_set=None, callbacks=()):
        """Fit on ``X`` (n, d), binary ``y`` (n,); ``eval_set=(X_val, y_val)`` for early stopping
        and calibration (validation rows must come after the training rows in time)."""
        y = np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError("the response never (or always) happened in the training rows: nothing to learn")
        self.classes_ = np.array([0, 1])
        self._fit_booster(X, y, sample_weight, eval_set, callbacks)
        self.calibrator_ = None
        if eval_set is not None and self.calibrate:
            self._fit_calibration(*eval_set)
        return self

    def _fit_calibration(self, Xv, yv):
        yv = np.asarray(yv).astype(int)
        p = self._raw(Xv)
        half = len(p) // 2
        if half < 500 or len(np.unique(yv[:half])) < 2:
            return
        iso = IsotonicRegression(y_min=1e-6, y_max=1 - 1e-6, out_of_bounds="clip").fit(p[:half], yv[:half])
        before = log_loss(yv[half:], np.clip(p[half:], 1e-6, 1 - 1e-6), labels=[0, 1])
        after = log_loss(yv[half:], iso.predict(p[half:]), labels=[0, 1])
        if self.calibrate is True or after < before:
            iso.fit(p, yv)  # keep: refit on the whole validation set, as its thresholds (open data)
            self.calibrator_ = IsotonicMap(iso.X_thresholds_, iso.y_thresholds_)
        log.debug("calibration: log loss %.5f -> %.5f (%s)", before, after,
                  "kept" if self.calibrator_ is not None else "dropped")

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities, shape (n, 2)."""
        p = self._raw(X)
        if getattr(self, "calibrator_", None) is not None:
            p = self.calibrator_.predict(p)
        p = np.clip(p, 0.0, 1.0)
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def to_artifact(self) -> BoosterClassifier:
        """The fitted model as ``decision.artifact.BoosterClassifier`` (what a registered policy stores)."""
        return BoosterClassifier(self.booster_, self.feature_names_in_, self.categories_, self.best_iteration_,
                                 getattr(self, "calibrator_", None))


class ValueRegressor(_LGBMBase, RegressorMixin):
    """Expected order value given the customer's features (fitted on rows with an order)."""

    _objective = "regression"

    def fit(self, X: pd.DataFrame, y, sample_weight=None, eval_set=None, callbacks=()):
        y = np.asarray(y, dtype=float)
        if not np.isfinite(y).all() or len(y) == 0:
            raise ValueError("order values must be finite and there must be at least one order")
        self._fit_booster(X, y, sample_weight, eval_set, callbacks)
        self.floor_ = float(np.quantile(y, 0.01))
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.maximum(self._raw(X), self.floor_)

    def to_artifact(self) -> BoosterRegressor:
        """The fitted model as ``decision.artifact.BoosterRegressor`` (what a registered policy stores)."""
        return BoosterRegressor(self.booster_, self.feature_names_in_, self.categories_, self.best_iteration_,
                                self.floor_)
