"""The policy as open data (``decision.artifact``): what is written, that the loaded policy scores
and decides exactly as the trained one, and that old (pickled) or corrupt versions are refused
with a message naming the version, without unpickling anything."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nextbest.features.history import engagement_history
from nextbest.decision.artifact import ArtifactError, GivenOpen, load_policy, save_policy
from nextbest.decision.policy import Request
from nextbest.decision.rules import ContactHistory

OPEN_SUFFIXES = {".json", ".yaml", ".txt"}


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    return save_policy(trained.policy, tmp_path_factory.mktemp("artifact") / "policy", note="run-1")


@pytest.fixture(scope="module")
def snapshot(trained, small_world):
    ids = small_world.customers["customer_id"][:400]
    return engagement_history(trained.log, ids, small_world.end, trained.population)


def test_the_saved_policy_is_open_data(saved, trained):
    files = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    assert {Path(f).suffix for f in files} <= OPEN_SUFFIXES, files
    assert {"policy.json", "config.yaml", "features.json", "models/open.txt", "models/value.txt",
            "models/uplift_outcome_0.txt"} <= set(files)
    manifest = json.loads((saved / "policy.json").read_text())
    assert manifest["uplift_mode"] == trained.policy.uplift_mode
    assert manifest["exploration"]["method"] == trained.policy.exploration.method
    assert manifest["online"]["prior_strength"] == trained.policy.online.prior_strength
    assert [a["arm"] for a in manifest["models"]["uplift"]["arms"]] == trained.policy.models.uplift.treatments_
    assert (saved / "models" / "open.txt").read_text().startswith("tree\n")  # LightGBM model text
    spec = json.loads((saved / "features.json").read_text())
    assert spec["model_inputs"] == trained.policy.models.customer_columns
    # the simulator's orders and unsubscribes follow opens: both are stored as P(response | opened)
    assert manifest["models"]["conversion"]["given_open"] and manifest["models"]["unsubscribe"]["given_open"]
    assert not manifest["models"]["open"]["given_open"]


def test_the_loaded_policy_scores_and_decides_like_the_trained_one(saved, trained, snapshot, config):
    loaded = load_policy(saved)
    assert loaded.version == "run-1" and load_policy(saved, version="nextbest/7").version == "nextbest/7"
    assert loaded.exploration == trained.policy.exploration and loaded.online == trained.policy.online
    cal = [getattr(trained.policy.models, n).calibrator_ is not None for n in ("open", "click", "conversion")]
    assert cal == [getattr(loaded.models, n).calibrator_ is not None for n in ("open", "click", "conversion")]
    contact = ContactHistory.from_features(snapshot, config)
    now = trained.dataset.decisions["ts"].max().floor("D") + pd.Timedelta(hours=9)
    request = Request(now=now, horizon_hours=24)
    a, b = trained.policy.score(snapshot, contact, request), loaded.score(snapshot, contact, request)
    assert isinstance(loaded.models.conversion, GivenOpen) and loaded.models.conversion.open is loaded.models.open
    for name in ("value", "p_open", "uplift", "baseline", "revenue", "p_unsub"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, err_msg=name)
    np.testing.assert_array_equal(b.hour, a.hour)
    da = trained.policy.decide(snapshot, contact, request, rng=np.random.default_rng(3))
    db = loaded.decide(snapshot, contact, request, rng=np.random.default_rng(3))
    cols = [c for c in da.frame.columns if c not in ("decision_id", "policy_version")]
    pd.testing.assert_frame_equal(db.frame[cols], da.frame[cols])
    assert (da.frame["action"] == "send").any() and db.reasons == da.reasons
    np.testing.assert_allclose(db.action_dist, da.action_dist, rtol=1e-12)


def test_the_loaded_models_read_frames_like_the_trained_ones(saved, trained):
    """Reports of a registered version (``nextbest report``) score frames, not matrices."""
    from nextbest.training.evaluate import response_metrics, uplift_scores

    loaded = load_policy(saved)
    ta, ca = response_metrics(trained.policy, trained.valid)
    tb, cb = response_metrics(loaded, trained.valid)
    pd.testing.assert_frame_equal(tb, ta)
    ex = trained.valid.examples.head(300)
    offer = loaded.models.uplift.treatments_[1]
    np.testing.assert_allclose(uplift_scores(loaded, ex, offer), uplift_scores(trained.policy, ex, offer), rtol=1e-12)


def test_a_corrupt_or_incomplete_directory_is_refused_naming_the_file(saved, tmp_path):
    bad = shutil.copytree(saved, tmp_path / "truncated")
    text = (bad / "models" / "conversion.txt").read_text()
    (bad / "models" / "conversion.txt").write_text(text[: len(text) // 2])  # LightGBM would abort on this
    with pytest.raises(ArtifactError, match=r"models/conversion.txt is corrupt"):
        load_policy(bad)
    changed = shutil.copytree(saved, tmp_path / "changed")
    cfg = changed / "config.yaml"
    cfg.write_text(cfg.read_text().replace("margin:", "margin: 0.9 #", 1))
    with pytest.raises(ArtifactError, match=r"config.yaml is corrupt"):
        load_policy(changed)
    gone = shutil.copytree(saved, tmp_path / "gone")
    (gone / "models" / "value.txt").unlink()
    with pytest.raises(ArtifactError, match=r"models/value.txt is missing"):
        load_policy(gone)
    with pytest.raises(ArtifactError, match=r"no policy.json"):
        load_policy(tmp_path)


# ---------------------------------------------------------------------- through the registry
class Tripwire:
    """Unpickling this creates ``path``: proof that nobody unpickled the old version."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (Path(self.path),)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path / "project"))
    (tmp_path / "project").mkdir()
    from nextbest.decision import registry

    registry.setup()
    return tmp_path


def test_an_old_pickled_version_is_refused_by_name_and_never_unpickled(store):
    import mlflow

    from nextbest.decision import registry

    class OldPolicyModel(mlflow.pyfunc.PythonModel):  # the layout nextbest registered before open data
        def load_context(self, context):
            with open(context.artifacts["policy"], "rb") as fh:
                self.policy = pickle.load(fh)

        def predict(self, context, model_input, params=None):
            return model_input

    marker = store / "unpickled"
    old = store / "old"
    old.mkdir()
    (old / "policy.pkl").write_bytes(pickle.dumps(Tripwire(marker)))
    (old / "meta.json").write_text(json.dumps({"version": "run-0"}))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="policy", python_model=OldPolicyModel(), pip_requirements=[],
                                       artifacts={"policy": str(old / "policy.pkl"), "meta": str(old / "meta.json")},
                                       registered_model_name=registry.MODEL_NAME)
    version = str(info.registered_model_version)
    with pytest.raises(ArtifactError, match=rf"nextbest version {version}: registered by an older nextbest "
                                            r"\(a pickled policy\).*retrain it with `nextbest train`"):
        registry.load_version(version)
    registry.promote(version)
    with pytest.raises(ArtifactError, match=rf"version {version}: .*older nextbest"):
        registry.load_champion()
    assert not marker.exists()


def test_a_version_with_a_corrupt_file_is_refused_by_name(store, trained):
    import mlflow

    from nextbest.decision import registry
    from nextbest.decision.pyfunc import MODEL_CODE

    policy_dir = save_policy(trained.policy, store / "policy", note="run-x")
    booster = policy_dir / "models" / "uplift_outcome_0.txt"
    booster.write_text(booster.read_text()[:1000])
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="policy", python_model=str(MODEL_CODE), pip_requirements=[],
                                       artifacts={"policy": str(policy_dir)}, registered_model_name=registry.MODEL_NAME)
    version = str(info.registered_model_version)
    with pytest.raises(ArtifactError, match=rf"nextbest version {version}: models/uplift_outcome_0.txt is corrupt"):
        registry.load_version(version)


def test_a_version_saved_before_a_config_key_existed_takes_its_default(saved, tmp_path):
    """A key added to nextbest since a version was saved takes today's default on load (a
    version is not stranded by a new setting); the stored keys keep their stored values."""
    import hashlib

    import yaml

    old = tmp_path / "old"
    shutil.copytree(saved, old)
    raw = yaml.safe_load((old / "config.yaml").read_text())
    del raw["online"]["learn_profit"]                    # as if saved before the key existed
    raw["objective"]["margin"] = 0.3                     # a stored value that differs from today's default
    data = yaml.safe_dump(raw, sort_keys=False).encode()
    (old / "config.yaml").write_bytes(data)
    manifest = json.loads((old / "policy.json").read_text())
    manifest["files"]["config.yaml"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (old / "policy.json").write_text(json.dumps(manifest))
    policy = load_policy(old)
    assert policy.config.online.learn_profit is False and policy.config.objective.margin == 0.3
