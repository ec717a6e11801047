"""The policy as one MLflow model: features spec, models, config and version in one artifact.

``PolicyModel`` is an ``mlflow.pyfunc.PythonModel``. Its input is a frame of customer features
(the columns of ``features.spec`` plus the customer attributes the models were trained with, as
``engagement_history`` returns them), its output one decision per row. ``params`` may carry
``now`` (UTC ISO time; default: the current time), ``horizon_hours`` and ``type``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from nextbest.decision.rules import ContactHistory

DECISION_COLUMNS = ("customer_id", "decision_id", "action", "channel", "local_hour", "send_at", "offer",
                    "propensity", "expected_value", "policy_version")


class PolicyModel(mlflow.pyfunc.PythonModel):
    """Loads the pickled :class:`decision.policy.DecisionPolicy` and decides for a frame of features."""

    def __init__(self, policy=None):
        self.policy = policy

    def load_context(self, context):
        with open(context.artifacts["policy"], "rb") as fh:
            self.policy = pickle.load(fh)
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.policy.version = meta["version"]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from nextbest.decision.policy import Request

        params = params or {}
        features = typed_features(model_input, self.policy)
        request = Request(now=params.get("now") or pd.Timestamp.now(tz="UTC"),
                          horizon_hours=float(params.get("horizon_hours", 24.0)),
                          type=params.get("type", "marketing"))
        out = self.policy.decide(features, ContactHistory.from_features(features, self.policy.config), request)
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
    """Pickle the policy and write its metadata; returns the ``artifacts`` mapping for log_model."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "policy.pkl", "wb") as fh:
        pickle.dump(policy, fh, protocol=pickle.HIGHEST_PROTOCOL)
    from nextbest.features.spec import history_features

    meta = {"version": version_note, "channels": list(policy.config.channel_names),
            "offers": list(policy.config.offer_names), "config": policy.config.raw,
            "features": [{"name": f.name, "family": f.family, "description": f.description}
                         for f in history_features(policy.config)],
            "model_inputs": policy.models.customer_columns}
    (directory / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    return {"policy": str(directory / "policy.pkl"), "meta": str(directory / "meta.json")}
