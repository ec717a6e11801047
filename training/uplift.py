"""Multi-treatment uplift: what each treatment adds over the control, per row.

``UpliftLearner`` is a meta-learner on LightGBM with a plain API that works on any tabular
dataset with a treatment column and an outcome column::

    model = UpliftLearner(control="control").fit(X, treatment, y)
    effects = model.predict(X)          # (n, T-1): effect of each treatment vs control

Two methods:

- ``"t"`` (T-learner): one outcome model per arm; the effect is the difference of the arm's
  prediction and the control's. With ``propensity`` (the probability with which the logging
  policy chose the row's own treatment) each arm is fitted with inverse-propensity weights, so
  that every arm model sees the population rather than the customers the logging policy
  favoured for that arm.
- ``"dr"`` (DR-learner): the T-learner's outcome models plus doubly-robust pseudo-outcomes
  ``mu_t - mu_0 + 1[T=t] (y - mu_t) / e_t - 1[T=0] (y - mu_0) / e_0``, regressed on ``X`` per
  treatment. ``e`` is the logged propensity when given, otherwise a multinomial LightGBM
  estimate (clipped to ``[clip, 1]``). Cross-fitting (two folds) keeps each row's nuisance
  predictions out of its own fit.

Binary outcomes get classifiers (effects in probability points), continuous ones regressors.
"""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from nextbest.features.config import Config, load_config
from nextbest.decision.artifact import BoosterArmModel, booster_predict
from nextbest.decision.threads import lightgbm_threads
from nextbest.training.models import _prepare, to_matrix

log = logging.getLogger(__name__)


class UpliftLearner(BaseEstimator):
    """Multi-treatment T- or DR-learner on LightGBM.

    Parameters
    ----------
    control : hashable
        The treatment value of the control arm ("no message").
    method : {"t", "dr"}
    params : dict, optional
        LightGBM parameters of every model, over the config's ``uplift.lightgbm`` (the DR-learner's
        effect models take ``uplift.effect_lightgbm`` over both).
    clip : float
        Lower bound for propensities in pseudo-outcomes.
    max_weight : float
        Inverse-propensity weights are normalized to mean 1 within each arm and capped here
        (a few rows with tiny propensities would otherwise dominate an arm's fit).
    validation_fraction : float
        Share of each arm's rows held out (at random) to stop boosting early; without it an arm
        with few positive outcomes overfits and its predictions drift from the control's.
    early_stopping_rounds : int, optional
        Rounds without improvement on the held-out rows; default: the config's ``uplift.early_stopping_rounds``.
    random_state : int
    config : Config, optional
        The business config whose ``uplift`` section gives the defaults; default: ``defaults.yaml``'s.
    """

    def __init__(self, control="control", method: str = "t", params: dict | None = None,
                 clip: float = 0.01, max_weight: float = 20.0, validation_fraction: float = 0.2,
                 early_stopping_rounds: int | None = None, random_state: int = 0, config: Config | None = None):
        self.control = control
        self.method = method
        self.params = params
        self.clip = clip
        self.max_weight = max_weight
        self.validation_fraction = validation_fraction
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.config = config

    # ------------------------------------------------------------------ fit
    def fit(self, X: pd.DataFrame, treatment, y, propensity=None, sample_weight=None, groups=None):
        """Fit on ``X`` (n, d), ``treatment`` (n,), outcome ``y`` (n,).

        ``propensity`` (n,), optional: probability of each row's own treatment under the policy
        that assigned it. ``sample_weight`` (n,), optional: e.g. to undo sampling.
        ``groups`` (n,), optional: rows of one group (say, one customer's decisions on
        neighbouring days, whose outcome windows overlap) are held out together; a row-wise
        holdout would leak and never stop the boosting.
        """
        if self.method not in ("t", "dr"):
            raise ValueError(f"method must be 't' or 'dr', got {self.method!r}")
        X = _prepare(pd.DataFrame(X).reset_index(drop=True))
        t = pd.Series(np.asarray(treatment, dtype=object))
        y = np.asarray(y, dtype=float)
        if not (len(X) == len(t) == len(y)):
            raise ValueError(f"X, treatment and y differ in length: {len(X)}, {len(t)}, {len(y)}")
        if t.isna().any() or not np.isfinite(y).all():
            raise ValueError("treatment and outcome must not be missing")
        arms = sorted(t.unique(), key=str)
        if self.control not in arms:
            raise ValueError(f"no row has the control treatment {self.control!r}; treatments: {arms}")
        self.treatments_ = [self.control] + [a for a in arms if a != self.control]
        for a in self.treatments_:
            if (t == a).sum() < 20:
                raise ValueError(f"treatment {a!r} has fewer than 20 rows; merge or drop it")
        self.binary_ = bool(np.isin(y, (0.0, 1.0)).all())
        section = (load_config() if self.config is None else self.config).uplift
        self.lgb_params_ = {"verbose": -1, "random_state": self.random_state, "n_jobs": lightgbm_threads(), "force_col_wise": True,
                            "enable_sparse": False, **section.lightgbm.params(), **(self.params or {})}
        self.effect_lgb_params_ = {**self.lgb_params_, **section.effect_lightgbm.params()}
        self.early_stopping_rounds_ = (section.early_stopping_rounds if self.early_stopping_rounds is None
                                       else self.early_stopping_rounds)
        self.feature_names_in_ = list(X.columns)
        self.categories_ = {c: list(X[c].cat.categories) for c in X.columns
                            if isinstance(X[c].dtype, pd.CategoricalDtype)}
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if propensity is not None:
            e = np.asarray(propensity, dtype=float)
            if np.any(~np.isfinite(e)) or np.any(e <= 0) or np.any(e > 1):
                raise ValueError("propensities must lie in (0, 1]")
            w = w / np.maximum(e, self.clip)
        rng = np.random.default_rng(self.random_state)
        if groups is None:
            self._hold = rng.random(len(y)) < self.validation_fraction
        else:
            codes, uniq = pd.factorize(pd.Series(np.asarray(groups)))
            self._hold = (rng.random(len(uniq)) < self.validation_fraction)[codes]
        self.models_ = {}
        for a in self.treatments_:
            sel = (t == a).to_numpy()
            ww = np.minimum(w[sel] / w[sel].mean(), self.max_weight)
            self.models_[a] = self._fit_outcome(X[sel], y[sel], ww, self._hold[sel])
        if self.method == "dr":
            self._fit_dr(X, t, y, propensity, sample_weight)
        del self._hold
        return self

    def _outcome_model(self):
        return (lgb.LGBMClassifier if self.binary_ else lgb.LGBMRegressor)(**self.lgb_params_)

    def _fit_outcome(self, X, y, w=None, hold=None):
        """One arm's outcome model, boosting stopped early on the held-out rows ``hold``."""
        model = self._outcome_model()
        if not self.validation_fraction or len(y) < 200 or hold is None or hold.all() or not hold.any():
            return model.fit(X, y, sample_weight=w)
        if self.binary_ and (len(np.unique(y[hold])) < 2 or len(np.unique(y[~hold])) < 2):
            return model.fit(X, y, sample_weight=w)
        wt = None if w is None else w[~hold]
        wv = None if w is None else [w[hold]]
        return model.fit(X[~hold], y[~hold], sample_weight=wt, eval_X=(X[hold],), eval_y=(y[hold],),
                         eval_sample_weight=wv,
                         callbacks=[lgb.early_stopping(self.early_stopping_rounds_, verbose=False)])

    def _fit_dr(self, X, t, y, propensity, sample_weight):
        rng = np.random.default_rng(self.random_state)
        fold = rng.integers(0, 2, len(y))
        n, T = len(y), len(self.treatments_)
        mu = np.zeros((n, T))
        e = np.zeros((n, T))
        codes = t.map({a: i for i, a in enumerate(self.treatments_)}).to_numpy().astype(int)
        for f in (0, 1):
            tr, te = fold != f, fold == f
            for i, a in enumerate(self.treatments_):
                sel = tr & (codes == i)
                mu[te, i] = self._predict_outcome(self._fit_outcome(X[sel], y[sel], None, self._hold[sel]), X[te])
            if propensity is None:
                clf = lgb.LGBMClassifier(**self.lgb_params_).fit(X[tr], codes[tr])
                e[te] = clf.predict_proba(X[te])
        own = np.arange(n), codes
        if propensity is not None:  # only the row's own arm's propensity is known, which is all we need
            e[own] = np.asarray(propensity, dtype=float)
        e = np.maximum(e, self.clip)
        self.effect_models_ = {}
        for i, a in enumerate(self.treatments_[1:], start=1):
            psi = (mu[:, i] - mu[:, 0] + (codes == i) * (y - mu[:, i]) / e[:, i]
                   - (codes == 0) * (y - mu[:, 0]) / e[:, 0])
            hold = self._hold
            model = lgb.LGBMRegressor(**self.effect_lgb_params_)
            if hold.any() and not hold.all():
                sw = None if sample_weight is None else np.asarray(sample_weight)
                model.fit(X[~hold], psi[~hold], sample_weight=None if sw is None else sw[~hold],
                          eval_X=(X[hold],), eval_y=(psi[hold],),
                          callbacks=[lgb.early_stopping(self.early_stopping_rounds_, verbose=False)])
            else:
                model.fit(X, psi, sample_weight=sample_weight)
            self.effect_models_[a] = model

    # ------------------------------------------------------------------ predict
    def _predict_outcome(self, model, M):
        # the booster on the code matrix (see training.models.to_matrix); LightGBM's binary
        # booster returns P(y = 1) directly
        return booster_predict(model.booster_, M, model.best_iteration_ or None)

    def _matrix(self, X) -> np.ndarray:
        if isinstance(X, np.ndarray):  # already the model input (decision.candidates.model_input)
            return X
        return to_matrix(pd.DataFrame(X), self.feature_names_in_, self.categories_)

    def predict_arm(self, X, arm: str) -> np.ndarray:
        """Predicted outcome under one treatment, (n,) (one model call: the serving path)."""
        return self._predict_outcome(self.models_[arm], self._matrix(X))

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        """Predicted outcome under each treatment, (n, T), columns in ``treatments_`` order."""
        M = self._matrix(X)
        return pd.DataFrame({a: self._predict_outcome(m, M) for a, m in self.models_.items()},
                            index=getattr(X, "index", None))

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """Effect of each treatment versus the control, (n, T-1), columns ``treatments_[1:]``."""
        if self.method == "dr":
            M = self._matrix(X)
            return pd.DataFrame({a: self._predict_outcome(m, M) for a, m in self.effect_models_.items()},
                                index=getattr(X, "index", None))
        mu = self.predict_outcomes(X)
        return mu[self.treatments_[1:]].sub(mu[self.control], axis=0)

    def to_artifact(self) -> BoosterArmModel:
        """The fitted learner as ``decision.artifact.BoosterArmModel`` (what a registered policy stores)."""
        def pair(model):
            return model.booster_, model.best_iteration_ or None

        effects = {a: pair(m) for a, m in self.effect_models_.items()} if self.method == "dr" else None
        return BoosterArmModel(self.control, {a: pair(m) for a, m in self.models_.items()}, self.feature_names_in_,
                               self.categories_, effects)
