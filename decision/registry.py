"""MLflow: where runs go, the policy as one registered model, and the ``champion`` alias.

- Tracking defaults to an embedded SQLite store in the project directory (``./mlflow.db``,
  artifacts under ``./mlruns``); ``MLFLOW_TRACKING_URI`` points it at a server instead. The
  project directory is the working directory unless ``NEXTBEST_HOME`` names another.
- Every ``nextbest train`` registers a new version of the model ``nextbest``.
- ``nextbest promote VERSION`` moves the alias ``champion`` to a version and records the move:
  the versions carry ``champion_since`` / ``champion_until`` tags and the registered model keeps
  the whole list in its ``champion_history`` tag. Serving loads ``models:/nextbest@champion``,
  never ``latest``.
- Before a version becomes the champion (``nextbest promote``), and before a running service
  swaps it in, it must load and take a smoke decision (:func:`smoke_decision`): a version that
  cannot decide is refused, with or without ``--force``.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_NAME = "nextbest"
CHAMPION = "champion"
EXPERIMENT = "nextbest"


def project_dir() -> Path:
    return Path(os.environ.get("NEXTBEST_HOME", ".")).resolve()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_dir() / 'mlflow.db'}"


# ``mlflow.set_tracking_uri``, ``set_registry_uri`` and ``set_experiment`` also write these; left
# there, the first project a process used would outlive a change of NEXTBEST_HOME and leak into
# every subprocess it starts
_EXPORTED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")


def setup(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the tracking store and the experiment (created on first use); returns its id.

    MLflow keeps the choice in its module state; the process environment is left as the user set it.
    """
    user_set = {k: os.environ.get(k) for k in _EXPORTED}
    try:
        return _setup(experiment)
    finally:
        for key, value in user_set.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _setup(experiment: str) -> str:
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`: log into the run (and experiment) it made
        exp_id = mlflow.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
        name = mlflow.get_experiment(exp_id).name
        if name != experiment:
            log.warning("this `mlflow run` run is in the experiment %r, not %r, where nextbest's other runs are: "
                        "export MLFLOW_EXPERIMENT_NAME=%s (or pass --experiment-name %s) before `mlflow run`",
                        name, experiment, experiment, experiment)
        return exp_id
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if uri.startswith("sqlite:"):
            location = (project_dir() / "mlruns").as_uri()
        exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def ui_hint() -> str:
    """How to open the MLflow UI on this store."""
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        return "nextbest ui  (starts MLflow on this store and prints the training run and report pages)"
    return f"open {uri} in a browser"


def _client():
    from mlflow import MlflowClient

    setup()
    return MlflowClient()


def champion_version() -> str | None:
    """The version the ``champion`` alias points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except MlflowException:
        return None


def promote(version: str | int, note: str = "") -> dict:
    """Move ``champion`` to ``version``; returns the history entry written."""
    client = _client()
    version = str(version)
    client.get_model_version(MODEL_NAME, version)  # raises with a clear message if it does not exist
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous = champion_version()
    if previous == version:
        raise ValueError(f"version {version} is already the champion")
    if previous is not None:
        client.set_model_version_tag(MODEL_NAME, previous, "champion_until", now)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    client.set_model_version_tag(MODEL_NAME, version, "champion_since", now)
    entry = {"version": version, "since": now, "previous": previous, "note": note}
    history = champion_history() + [entry]
    client.set_registered_model_tag(MODEL_NAME, "champion_history", json.dumps(history))
    log.info("champion: version %s (was %s)", version, previous)
    return entry


def champion_history() -> list[dict]:
    """Every promotion, oldest first."""
    model = _client().get_registered_model(MODEL_NAME)
    return json.loads(model.tags.get("champion_history", "[]"))


def versions() -> list[dict]:
    """Registered versions with their run, creation time and champion tags, newest first."""
    client = _client()
    out = []
    for found in client.search_model_versions(f"name='{MODEL_NAME}'"):
        v = client.get_model_version(MODEL_NAME, found.version)  # search results carry no aliases
        out.append({"version": str(v.version), "run_id": v.run_id,
                    "created": datetime.fromtimestamp(v.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
                    "aliases": ",".join(v.aliases), "champion_since": v.tags.get("champion_since", ""),
                    "champion_until": v.tags.get("champion_until", "")})
    return sorted(out, key=lambda r: int(r["version"]), reverse=True)


def champion_uri() -> str:
    return f"models:/{MODEL_NAME}@{CHAMPION}"


def load_champion():
    """The champion's :class:`decision.policy.DecisionPolicy` (raises if there is none)."""
    version = champion_version()
    if version is None:
        raise LookupError(f"no version of model {MODEL_NAME!r} is the {CHAMPION!r}; run `nextbest promote VERSION`")
    return load_version(version)


def load_version(version: str):
    """The :class:`decision.policy.DecisionPolicy` of a registered version (pinned, not an alias).

    The version's files are downloaded and the policy rebuilt from its open-format artifact
    (``decision.artifact.load_policy``): nothing is unpickled and none of its code runs. A version
    registered by an older nextbest (a pickled policy) or with a corrupt file is refused with an
    :class:`~decision.artifact.ArtifactError` that names the version.
    """
    import tempfile

    import mlflow

    from nextbest.decision.artifact import ArtifactError, load_policy

    setup()
    version = str(version)
    with tempfile.TemporaryDirectory(prefix="nextbest-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{version}", dst_path=tmp))
        try:
            return load_policy(policy_directory(local), version=f"{MODEL_NAME}/{version}")
        except ArtifactError as exc:
            raise ArtifactError(f"{MODEL_NAME} version {version}: {exc}") from None


class SmokeFailed(ValueError):
    """A policy loaded but could not take a valid decision."""


def smoke_decision(policy, data_dir: str | Path | None = None, n: int = 3):
    """Decide for ``n`` customers of ``data_dir`` (default: one synthetic customer with consent on
    every channel and no history, its features built by ``features.history``) and check the
    answer; raises :class:`SmokeFailed` (or the policy's own error) if it is not a decision.

    Returns
    -------
    decision.policy.Decision
    """
    import numpy as np
    import pandas as pd

    from nextbest.decision.policy import Request
    from nextbest.decision.rules import ContactHistory
    from nextbest.features.eventlog import EventLog
    from nextbest.features.history import Population, engagement_history
    from nextbest.features.schema import EVENT_COLUMNS
    from nextbest.features.validate import check

    cfg = policy.config
    now = pd.Timestamp.now(tz="UTC").floor("h")
    if data_dir is not None:
        from nextbest.features.io import load_dataset

        customers, events = check(*load_dataset(data_dir), cfg)
        customers, events = customers.iloc[:n], events[events["ts"] < now]
        events = events[events["customer_id"].astype(str).isin(set(customers["customer_id"].astype(str)))]
    else:
        customers = pd.DataFrame({"customer_id": ["smoke-test"], "timezone": [cfg.default_timezone],
                                  **{f"consent_{c}": [True] for c in cfg.channel_names}})
        events = pd.DataFrame({c: pd.Series([], dtype="object") for c in EVENT_COLUMNS})
        customers, events = check(customers, events, cfg, now=now)
    log_ = EventLog.build(customers, events, cfg)
    ids = customers["customer_id"].astype(str).to_numpy()
    feats = engagement_history(log_, ids, now, Population.from_log(log_))
    for c in policy.models.customer_columns:  # attributes the synthetic customer has not got: unknown
        if c not in feats:
            feats[c] = np.nan
    out = policy.decide(feats, ContactHistory.from_features(feats, cfg), Request(now=now),
                        rng=np.random.default_rng(0))
    p = np.asarray(out.frame["propensity"], float)
    dist = np.asarray(out.action_dist, float)
    if len(out.frame) != len(ids) or not np.all((p > 0) & (p <= 1)) or not np.allclose(dist.sum(axis=1), 1.0):
        raise SmokeFailed(f"{policy.version}: the smoke decision is not a decision (propensities {p.tolist()})")
    if not set(out.frame["action"]) <= {"send", "suppress"}:
        raise SmokeFailed(f"{policy.version}: the smoke decision has actions {sorted(set(out.frame['action']))}")
    return out


def policy_directory(model_dir: Path) -> Path:
    """The ``policy`` artifact inside a downloaded MLflow model directory (read from ``MLmodel``)."""
    import yaml

    from nextbest.decision.artifact import ArtifactError

    mlmodel = Path(model_dir) / "MLmodel"
    if not mlmodel.is_file():
        raise ArtifactError("the model has no MLmodel file")
    flavor = ((yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}).get("python_function") or {}
    artifacts = flavor.get("artifacts") or {}
    if "python_model" in flavor or "meta" in artifacts or any(Path(model_dir).rglob("*.pkl")):
        raise ArtifactError("registered by an older nextbest (a pickled policy), which is never unpickled: loading "
                            "it would run whatever code the pickle holds; retrain it with `nextbest train` and "
                            "promote the new version")
    rel = (artifacts.get("policy") or {}).get("path")
    if not rel:
        raise ArtifactError("the model has no `policy` artifact")
    return Path(model_dir) / rel
