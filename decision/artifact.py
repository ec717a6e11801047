"""The policy as open data: LightGBM model text, YAML and JSON; no pickled code.

A registered version is a directory that any LightGBM, YAML and JSON reader can inspect, and that
loads whatever the layout of the Python classes that trained it::

    policy.json        the manifest: format, the training run, uplift mode, exploration, the online
                       learner's settings and priors, the customer columns, and per model its
                       kind, inputs, categories, isotonic calibration (thresholds as arrays),
                       value floor or uplift arms; plus the size and SHA-256 of every other file
    config.yaml        the business config (``config.raw``), merged over today's defaults (a key added to
                       nextbest since the version was saved takes its default) and re-validated
    features.json      the feature spec (name, family, description) and the models' inputs
    models/<name>.txt  each LightGBM booster as model text (``Booster.model_to_string``)

:func:`save_policy` writes it, :func:`load_policy` rebuilds a
:class:`~decision.policy.DecisionPolicy` that scores and decides exactly as the trained one. The
loaded models are the small classes below (they follow the protocols of ``decision.policy``);
training's estimators export to them with ``to_artifact()``. Every file is checked against the
manifest's SHA-256 before it is parsed: a truncated or changed file is refused with its name
(LightGBM aborts the process on some truncated model texts instead of raising).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

FORMAT = "nextbest-policy"
FORMAT_VERSION = 2  # 2: conversion and unsubscribe may be stored as the conditional model of a GivenOpen
READS_VERSIONS = (1, 2)
MANIFEST = "policy.json"
RESPONSE_MODELS = ("open", "click", "conversion", "unsubscribe")
SMALL_BATCH = 2000  # rows below which one thread predicts faster than a pool (thread start-up dominates)


class ArtifactError(ValueError):
    """A policy directory that cannot be loaded (missing, corrupt, or of another format)."""


def booster_predict(booster, M: np.ndarray, num_iteration=None) -> np.ndarray:
    """``booster.predict`` on a float matrix; single-threaded for small batches (a single decision
    scores a few dozen rows, where starting the OpenMP pool costs more than the trees)."""
    extra = {"num_threads": 1} if len(M) < SMALL_BATCH else {}
    return booster.predict(M, num_iteration=num_iteration, **extra)


def as_matrix(X, columns: list[str], categories: dict) -> np.ndarray:
    """The model input: ``X`` itself if it is already the float matrix of
    ``decision.candidates.model_input``, else that matrix built from the frame ``X`` (categories
    as codes of the fitted ones, unseen values missing)."""
    if isinstance(X, np.ndarray):
        return X
    from nextbest.decision.candidates import CustomerArrays, model_input

    X = pd.DataFrame(X)
    missing = [c for c in columns if c not in X]
    if missing:
        raise ValueError(f"input lacks {len(missing)} model feature(s), e.g. {missing[:5]}")
    return model_input(columns, categories, CustomerArrays(X), np.arange(len(X)), {})


def iterations(booster, num_iteration=None) -> int | None:
    """The number of boosting rounds a prediction uses (None: all), as ``Booster.predict`` resolves it."""
    n = num_iteration if num_iteration is not None else booster.best_iteration
    return int(n) if n is not None and n > 0 else None


class IsotonicMap:
    """An isotonic calibration as its thresholds: piecewise linear, constant beyond the ends."""

    def __init__(self, x, y):
        self.x = np.asarray(x, dtype=float)
        self.y = np.asarray(y, dtype=float)

    def predict(self, p: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(p, dtype=float), self.x, self.y)


class _Booster:
    """One LightGBM booster with its inputs: the fitted column order and categories."""

    def __init__(self, booster, feature_names: list[str], categories: dict, num_iteration: int | None = None):
        self.booster_ = booster
        self.feature_names_in_ = list(feature_names)
        self.categories_ = {c: list(v) for c, v in categories.items()}
        self.num_iteration = num_iteration

    def raw(self, X) -> np.ndarray:
        return booster_predict(self.booster_, as_matrix(X, self.feature_names_in_, self.categories_),
                               self.num_iteration)


class BoosterClassifier(_Booster):
    """P(response): the booster's probability, through the isotonic map if there is one."""

    def __init__(self, booster, feature_names, categories, num_iteration=None, calibration: IsotonicMap | None = None):
        super().__init__(booster, feature_names, categories, num_iteration)
        self.calibrator_ = calibration
        self.classes_ = np.array([0, 1])

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities (n, 2) of the float matrix or frame ``X``."""
        p = self.raw(X)
        if self.calibrator_ is not None:
            p = self.calibrator_.predict(p)
        p = np.clip(p, 0.0, 1.0)
        return np.stack([1 - p, p], axis=1)

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


class GivenOpen:
    """P(response) of a message as P(open) x P(response | opened): the funnel.

    Orders after a message and unsubscribes follow an open; the open model learns from every
    send (opens are frequent), the conditional model only from the opened ones, so each learns
    what it can see. Estimating the rare joint outcome directly from every send ranked options
    worse over the family of worlds (benchmarks/RESULTS.md, issue 14). Both models read the
    same inputs; ``given_open`` is the conditional model (what a registered policy stores).
    """

    def __init__(self, open_model, given_open):
        if list(open_model.feature_names_in_) != list(given_open.feature_names_in_):
            raise ValueError("the open model and the conditional model must read the same inputs")
        self.open = open_model
        self.given_open = given_open
        self.feature_names_in_ = list(given_open.feature_names_in_)
        self.categories_ = given_open.categories_
        self.classes_ = np.array([0, 1])

    @property
    def calibrator_(self):
        return getattr(self.given_open, "calibrator_", None)

    def predict_given_open(self, X) -> np.ndarray:
        """P(response | opened), (n,)."""
        return self.given_open.predict_proba(X)[:, 1]

    def predict_proba(self, X) -> np.ndarray:
        M = as_matrix(X, self.feature_names_in_, self.categories_)
        p = self.open.predict_proba(M)[:, 1] * self.predict_given_open(M)
        return np.stack([1 - p, p], axis=1)

    def to_artifact(self) -> "GivenOpen":
        return GivenOpen(_exported(self.open, "open", BoosterClassifier),
                         _exported(self.given_open, "given_open", BoosterClassifier))


class BoosterRegressor(_Booster):
    """Expected order value: the booster's prediction, at least ``floor``."""

    def __init__(self, booster, feature_names, categories, num_iteration=None, floor: float = -np.inf):
        super().__init__(booster, feature_names, categories, num_iteration)
        self.floor_ = float(floor)

    def predict(self, X) -> np.ndarray:
        return np.maximum(self.raw(X), self.floor_)


class BoosterArmModel:
    """The uplift learner's predictions: an outcome booster per arm (control first) and, for the
    DR-learner, an effect booster per treated arm.

    ``arms`` and ``effects`` map an arm to ``(booster, num_iteration)``.
    """

    def __init__(self, control, arms: dict, feature_names, categories, effects: dict | None = None):
        self.control = control
        self.arms = dict(arms)
        self.effects = None if effects is None else dict(effects)
        self.treatments_ = list(self.arms)
        self.feature_names_in_ = list(feature_names)
        self.categories_ = {c: list(v) for c, v in categories.items()}

    def _run(self, pair, M) -> np.ndarray:
        booster, n = pair
        return booster_predict(booster, M, n)

    def predict_arm(self, X, arm: str) -> np.ndarray:
        """Predicted outcome under one treatment, (n,)."""
        return self._run(self.arms[arm], as_matrix(X, self.feature_names_in_, self.categories_))

    def predict_outcomes(self, X) -> pd.DataFrame:
        """Predicted outcome under each treatment, (n, T), columns in ``treatments_`` order."""
        M = as_matrix(X, self.feature_names_in_, self.categories_)
        return pd.DataFrame({a: self._run(p, M) for a, p in self.arms.items()}, index=getattr(X, "index", None))

    def predict(self, X) -> pd.DataFrame:
        """Effect of each treatment versus the control, (n, T-1), columns ``treatments_[1:]``."""
        if self.effects is not None:
            M = as_matrix(X, self.feature_names_in_, self.categories_)
            return pd.DataFrame({a: self._run(p, M) for a, p in self.effects.items()}, index=getattr(X, "index", None))
        mu = self.predict_outcomes(X)
        return mu[self.treatments_[1:]].sub(mu[self.control], axis=0)


# ---------------------------------------------------------------------- writing
def _exported(model, name: str, kind: type):
    """``model`` as one of the classes above (training's estimators have ``to_artifact()``)."""
    out = model.to_artifact() if hasattr(model, "to_artifact") else model
    if not isinstance(out, kind):
        raise ArtifactError(f"model {name!r} ({type(model).__name__}) cannot be stored as open data: it needs "
                            f"a to_artifact() method that returns decision.artifact.{kind.__name__}")
    return out


def _fields(settings) -> dict:
    """A settings object (a dataclass, or a pydantic model) as a dict of its fields."""
    return settings.model_dump() if hasattr(settings, "model_dump") else dataclasses.asdict(settings)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


class _Writer:
    def __init__(self, directory: Path):
        self.directory = directory
        self.files: dict[str, dict] = {}

    def text(self, rel: str, text: str) -> str:
        data = text.encode()
        path = self.directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return rel

    def booster(self, name: str, booster, num_iteration) -> dict:
        n = iterations(booster, num_iteration)
        return {"file": self.text(f"models/{name}.txt", booster.model_to_string(num_iteration=n or -1))}


def _inputs(m) -> dict:
    return {"feature_names": m.feature_names_in_, "categories": m.categories_}


def save_policy(policy, directory: str | Path, note: str = "") -> Path:
    """Write ``policy`` (a :class:`~decision.policy.DecisionPolicy`) to ``directory`` as open data.

    ``note`` (e.g. the training run id) becomes the loaded policy's version unless the loader
    names one. Returns the directory.
    """
    import yaml

    from nextbest.features.spec import history_features

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    w, pm = _Writer(directory), policy.models
    models = {}
    for name in RESPONSE_MODELS:
        m = getattr(pm, name)
        funnel = isinstance(m.to_artifact() if hasattr(m, "to_artifact") else m, GivenOpen)
        m = _exported(m.given_open if funnel else m, name, BoosterClassifier)
        cal = m.calibrator_
        models[name] = {"kind": "classifier", **_inputs(m), **w.booster(name, m.booster_, m.num_iteration),
                        "calibration": None if cal is None else {"x": cal.x.tolist(), "y": cal.y.tolist()},
                        "given_open": funnel}
    v = _exported(pm.value, "value", BoosterRegressor)
    models["value"] = {"kind": "regressor", **_inputs(v), **w.booster("value", v.booster_, v.num_iteration),
                       "floor": v.floor_}
    u = _exported(pm.uplift, "uplift", BoosterArmModel)
    arms = [{"arm": a, **w.booster(f"uplift_outcome_{i}", *pair)} for i, (a, pair) in enumerate(u.arms.items())]
    effects = None if u.effects is None else [{"arm": a, **w.booster(f"uplift_effect_{i}", *pair)}
                                              for i, (a, pair) in enumerate(u.effects.items())]
    models["uplift"] = {"kind": "arms", **_inputs(u), "control": u.control, "arms": arms, "effects": effects}
    w.text("config.yaml", yaml.safe_dump(policy.config.raw, sort_keys=False))
    spec = {"features": [{"name": f.name, "family": f.family, "description": f.description}
                         for f in history_features(policy.config)],
            "model_inputs": list(pm.customer_columns)}
    w.text("features.json", json.dumps(spec, indent=1, default=_json_default))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "note": note, "uplift_mode": policy.uplift_mode,
                "exploration": _fields(policy.exploration), "online": _fields(policy.online),
                "customer_columns": list(pm.customer_columns), "models": models, "files": w.files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default))
    log.info("policy written to %s (%d files)", directory, len(w.files) + 1)
    return directory


# ---------------------------------------------------------------------- reading
class _Reader:
    def __init__(self, directory: Path, manifest: dict):
        self.directory = directory.resolve()
        self.files = manifest.get("files") or {}

    def text(self, rel: str) -> str:
        """A file of the manifest, checked against its recorded size and SHA-256."""
        if rel not in self.files:
            raise ArtifactError(f"{rel} is not listed in {MANIFEST}")
        path = (self.directory / rel).resolve()
        if not path.is_relative_to(self.directory):
            raise ArtifactError(f"{rel} lies outside the policy directory")
        if not path.is_file():
            raise ArtifactError(f"{rel} is missing")
        data = path.read_bytes()
        want = self.files[rel]
        if len(data) != want.get("bytes") or hashlib.sha256(data).hexdigest() != want.get("sha256"):
            raise ArtifactError(f"{rel} is corrupt: {len(data)} bytes whose SHA-256 differs from the one recorded "
                                f"when the policy was saved ({want.get('bytes')} bytes); truncated or changed")
        return data.decode()

    def booster(self, spec: dict, what: str):
        import lightgbm as lgb

        rel = spec["file"]
        text = self.text(rel)
        try:
            booster = lgb.Booster(model_str=text)
        except Exception as exc:  # noqa: BLE001 - LightGBM raises its own error types
            raise ArtifactError(f"{rel} ({what}) is not a LightGBM model: {exc}") from None
        return booster


def _manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST} in {directory}: not a policy saved by decision.artifact.save_policy")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{MANIFEST} is corrupt: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{MANIFEST} is not a nextbest policy manifest")
    if manifest.get("format_version") not in READS_VERSIONS:
        raise ArtifactError(f"{MANIFEST} has format version {manifest.get('format_version')}; this nextbest reads "
                            f"versions {', '.join(map(str, READS_VERSIONS))}")
    return manifest


def load_policy(directory: str | Path, version: str | None = None):
    """The :class:`~decision.policy.DecisionPolicy` saved in ``directory`` by :func:`save_policy`.

    Nothing is unpickled and no code is run: the config is YAML (validated by ``parse_config``),
    the models LightGBM text and JSON. ``version`` is written on its decisions (default: the
    note it was saved with). Raises :class:`ArtifactError` naming the file that is missing or corrupt.
    """
    import yaml

    from nextbest.features.config import ConfigError, default_config_dict, merge_config, parse_config
    from nextbest.decision.exploration import Exploration
    from nextbest.decision.online import OnlineSettings
    from nextbest.decision.policy import DecisionPolicy, PolicyModels

    directory = Path(directory)
    manifest = _manifest(directory)
    r = _Reader(directory, manifest)
    try:
        # over today's defaults: a version saved before a config key existed takes that key's default
        config = parse_config(merge_config(default_config_dict(), yaml.safe_load(r.text("config.yaml"))))
    except (ConfigError, yaml.YAMLError) as exc:
        raise ArtifactError(f"config.yaml is not a valid config: {exc}") from None
    try:
        specs = manifest["models"]
        models = {}
        for name in RESPONSE_MODELS:
            s = specs[name]
            cal = s.get("calibration")
            models[name] = BoosterClassifier(r.booster(s, f"{name} model"), s["feature_names"], s["categories"],
                                             calibration=None if cal is None else IsotonicMap(cal["x"], cal["y"]))
            if s.get("given_open"):  # stored as P(response | opened); "open" comes first in RESPONSE_MODELS
                models[name] = GivenOpen(models["open"], models[name])
        s = specs["value"]
        models["value"] = BoosterRegressor(r.booster(s, "value model"), s["feature_names"], s["categories"],
                                           floor=s["floor"])
        s = specs["uplift"]
        arms = {a["arm"]: (r.booster(a, f"uplift arm {a['arm']}"), None) for a in s["arms"]}
        effects = None if s["effects"] is None else {
            a["arm"]: (r.booster(a, f"uplift effect {a['arm']}"), None) for a in s["effects"]}
        models["uplift"] = BoosterArmModel(s["control"], arms, s["feature_names"], s["categories"], effects)
        policy = DecisionPolicy(config, PolicyModels(**models, customer_columns=list(manifest["customer_columns"])),
                                version=version or manifest.get("note") or "dev", uplift_mode=manifest["uplift_mode"],
                                exploration=Exploration(**manifest["exploration"]))
        policy.online = OnlineSettings(**manifest["online"])
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise ArtifactError(f"{MANIFEST} lacks or misstates an entry ({type(exc).__name__}: {exc})") from None
    return policy
