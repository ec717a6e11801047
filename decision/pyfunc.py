"""The policy as one MLflow model: features spec, models, config and version in one artifact.

``PolicyModel`` is an ``mlflow.pyfunc.PythonModel`` logged as *models from code*: MLflow stores
the small file ``decision/pyfunc_model.py`` (which names this class with
``mlflow.models.set_model``) instead of a pickle of the object, and the policy itself as open
data (``decision.artifact``: LightGBM model text, the config as YAML, metadata as JSON) in the
artifact ``policy``. Its input is a frame of customer features (the columns of
``features.spec`` plus the customer attributes the models were trained with, as
``engagement_history`` returns them), its output one decision per row. ``params`` may carry
``now`` (UTC ISO time; default: the current time), ``horizon_hours`` (default 0: the policy's
config's ``decision.horizon_hours``), ``type`` and ``seed`` (a non-negative integer makes the
exploration draws reproducible; default -1: fresh draws).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from nextbest.decision.rules import ContactHistory

DECISION_COLUMNS = ("customer_id", "decision_id", "action", "channel", "local_hour", "send_at", "offer",
                    "propensity", "expected_value", "policy_version")
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # what log_model(python_model=...) stores
PARAMS = {"now": "", "horizon_hours": 0.0, "type": "marketing", "seed": -1}  # the signature's params and defaults


class PolicyModel(mlflow.pyfunc.PythonModel):
    """Rebuilds the :class:`decision.policy.DecisionPolicy` from the ``policy`` artifact
    (``decision.artifact.load_policy``) and decides for a frame of features."""

    def __init__(self, policy=None):
        self.policy = policy

    def load_context(self, context):
        from nextbest.decision.artifact import load_policy

        self.policy = load_policy(context.artifacts["policy"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from nextbest.decision.policy import Request

        params = params or {}
        features = typed_features(model_input, self.policy)
        request = Request(now=params.get("now") or pd.Timestamp.now(tz="UTC"),
                          horizon_hours=float(params.get("horizon_hours") or 0) or None,  # 0: the config's
                          type=params.get("type", "marketing"))
        seed = params.get("seed")
        rng = np.random.default_rng(int(seed)) if seed is not None and int(seed) >= 0 else None
        out = self.policy.decide(features, ContactHistory.from_features(features, self.policy.config), request, rng=rng)
        frame = out.frame.copy()
        frame["send_at"] = frame["send_at"].astype("str")
        frame["reasons"] = [" | ".join(r) for r in out.reasons]
        return frame


def typed_features(frame: pd.DataFrame, policy) -> pd.DataFrame:
    """Restore the dtypes a JSON or CSV round trip loses: categoricals, booleans, the index."""
    f = frame.copy()
    if "customer_id" in f.columns:
        f = f.set_index("customer_id")
    cats = dict(policy.models.open.categories_)
    for c, values in cats.items():
        if c in f and not c.startswith("cand_"):
            f[c] = pd.Categorical(np.asarray(f[c].astype(object)), categories=values)
    for c in policy.config.channel_names:
        f[f"consent_{c}"] = f[f"consent_{c}"].astype(bool)
    return f


def signature_example(features: pd.DataFrame, policy, rows: int = 5) -> pd.DataFrame:
    """A few rows of model input in portable types (text instead of categoricals)."""
    cols = policy.models.customer_columns
    ex = features[cols].head(rows).copy()
    for c in ex.columns:
        if isinstance(ex[c].dtype, pd.CategoricalDtype):
            ex[c] = ex[c].astype(object).astype("str")
    ex.insert(0, "customer_id", features.index[:rows].astype(str))
    return ex.reset_index(drop=True)


def save_artifacts(policy, directory: Path, version_note: str) -> dict:
    """Write the policy as open data (``decision.artifact.save_policy``); returns the
    ``artifacts`` mapping for ``mlflow.pyfunc.log_model``."""
    from nextbest.decision.artifact import save_policy

    save_policy(policy, directory, note=version_note)
    return {"policy": str(directory)}
