"""One MLflow run per ``nextbest train``: parameters, data fingerprint, metrics, report, model.

``run_training`` is what the CLI, ``mlflow run . -e train`` and ``nextbest tune`` (one nested
run per trial, without registering) call.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from nextbest.features.config import Config
from nextbest.decision import registry
from nextbest.training import run_metrics
from nextbest.training.evaluate import measured_incrementality, response_metrics, uplift_evaluation
from nextbest.training.report import ReportData, write_report
from nextbest.training.settings import TrainingSettings
from nextbest.sim.simulation_eval import evaluate_on_world, load_truth
from nextbest.training.train import TrainResult, train

log = logging.getLogger(__name__)


def data_fingerprint(data_dir: str | Path) -> str:
    """SHA-256 over the data directory's table files (names and bytes), 16 hex digits."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(data_dir).rglob("*") if p.is_file() and "truth" not in p.parts)
    for p in files:
        h.update(str(p.relative_to(data_dir)).encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def evaluate_and_report(res: TrainResult, config: Config, out_dir: Path, version: str) -> tuple[dict, Path]:
    """Evaluate the trained policy (held-out rows; the simulator's truth when present) and write
    the report into ``out_dir``; returns the metrics and the report path."""
    t0 = time.perf_counter()
    responses, curves = response_metrics(res.policy, res.valid)
    uplift = uplift_evaluation(res.policy, res.valid)
    inc = measured_incrementality(config, res.valid)
    truth = load_truth(res.dataset.path, res.dataset.customers, config)
    values = send_time = None
    note = ""
    if truth is not None:
        sim = evaluate_on_world(res.policy, truth, res.log, res.population)
        values, send_time = sim.values, sim.send_time
        note = (f"Measured with the simulator's true response rates on the day after the history. The best "
                f"single channel was {values.attrs.get('best_single_channel', '?')}.")
    # logged in this order, which is the order of the run page's metrics table: the marketer's first
    metrics = (run_metrics.headline(values) | run_metrics.incrementality(inc) | run_metrics.send_time(send_time)
               | run_metrics.model_health(responses, uplift))
    res.timings["evaluate"] = time.perf_counter() - t0
    facts = {"decisions learned from": f"{res.info['train_decisions']:,}",
             "held-out decisions": f"{res.info['valid_decisions']:,}", "held out from": res.info["validation_from"]}
    path = write_report(ReportData("What messages add: uplift report", version, values, note, inc, uplift,
                                   responses, curves, send_time, facts), out_dir)
    return run_metrics.finite(metrics), path


def run_training(data_dir: str | Path, config: Config, settings: TrainingSettings | None = None, seed: int = 0,
                 register: bool = True, promote: bool = False, nested: bool = False,
                 run_name: str | None = None, config_path: str | None = None, callbacks=(), prepared=None) -> dict:
    """Train, evaluate, report and (optionally) register and promote; returns a summary dict.

    ``prepared`` reuses the examples of an earlier :func:`training.train.prepare`.
    """
    import mlflow
    from mlflow.models import infer_signature

    from nextbest.decision.pyfunc import MODEL_CODE, PARAMS, PolicyModel, save_artifacts, signature_example

    registry.setup()
    settings = settings or TrainingSettings.from_config(config)
    with mlflow.start_run(run_name=run_name, nested=nested) as run:
        mlflow.log_params({"data_dir": str(data_dir), "seed": seed, "config": config_path or "defaults",
                           **{f"training.{k}": v for k, v in asdict(settings).items() if k != "lightgbm"},
                           **{f"lightgbm.{k}": v for k, v in settings.lightgbm.items()}})
        mlflow.set_tag("data_fingerprint", data_fingerprint(data_dir))
        res = train(data_dir, config, settings, seed=seed, version=run.info.run_id, callbacks=callbacks,
                    prepared=prepared)
        mlflow.log_params({k: v for k, v in res.info.items()})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            artifacts = save_artifacts(res.policy, Path(tmp) / "policy", run.info.run_id)
            example = signature_example(res.valid.examples.set_index("customer_id"), res.policy)
            wrapper = PolicyModel(res.policy)
            output = wrapper.predict(None, example, {"now": res.info["data_end"]})
            info = mlflow.pyfunc.log_model(  # models from code: the class by its file, the policy as open data
                name="policy", python_model=str(MODEL_CODE), artifacts=artifacts,
                signature=infer_signature(example, output, params=PARAMS),
                registered_model_name=registry.MODEL_NAME if register else None, pip_requirements=[])
            res.timings["log_model"] = time.perf_counter() - t0
            version = getattr(info, "registered_model_version", None)
            version = None if version is None else str(version)
            # registered first, so that the report and the run page can name the version; a version
            # whose evaluation fails is deleted again (no version without its report)
            label = (f"{version} (MLflow run {run.info.run_id})" if version
                     else f"(not registered; MLflow run {run.info.run_id})")
            try:
                metrics, report = evaluate_and_report(res, config, Path(tmp) / "report", label)
            except BaseException:
                if version is not None:
                    mlflow.MlflowClient().delete_model_version(registry.MODEL_NAME, version)
                    log.error("evaluation failed: version %s deleted again", version)
                raise
            mlflow.log_metrics(metrics)
            mlflow.log_artifacts(str(report.parent), "report")
        times = run_metrics.timings(res.timings)
        mlflow.log_metrics(times)
        metrics.update(times)
        if version is not None:  # the compare view labels runs by name: make it the version
            mlflow.set_tags({"model_version": version, "mlflow.runName": run_name or f"{registry.MODEL_NAME} v{version}"})
        mlflow.set_tag("mlflow.note.content", run_metrics.run_description(metrics, version, Path(data_dir).resolve()))
        summary = {"run_id": run.info.run_id, "version": version, "timings": res.timings, "metrics": metrics,
                   "report": f"{run.info.artifact_uri}/report/index.html"}
    if promote and version is not None:
        from nextbest.training.ope_tracking import promotion_check

        ok, reason = promotion_check(version)  # a first version passes; later ones need `nextbest evaluate`
        summary["promoted"] = ok
        summary["promotion"] = reason
        if ok:
            registry.promote(version, note=f"trained on {data_dir}")
        else:
            log.warning("version %s not promoted: %s", version, reason)
    return summary


def report_for_version(data_dir: str | Path, config: Config, version: str | None, out: Path, seed: int = 0) -> Path:
    """The uplift report of a registered version (default: the champion) on a data directory.

    The version's policy is evaluated on the data's held-out days (the same time split as
    training); the report is written to ``out`` and logged to a ``report`` MLflow run.
    """
    import mlflow

    from nextbest.training.train import Stopwatch, TrainResult, prepare

    registry.setup()
    version = version or registry.champion_version()
    if version is None:
        raise LookupError("no champion yet: pass --version or run `nextbest promote VERSION`")
    policy = registry.load_version(version)  # from the open-format artifact, never unpickled
    settings = TrainingSettings.from_config(config)
    watch = Stopwatch()
    p = prepare(data_dir, config, settings, watch, seed)
    res = TrainResult(policy, settings, p.train, p.valid, p.log, p.population, p.dataset, watch.timings, p.info)
    with mlflow.start_run(run_name=f"report version {version}"):
        mlflow.set_tags({"model_version": version, "data_fingerprint": data_fingerprint(data_dir)})
        metrics, path = evaluate_and_report(res, config, Path(out), policy.version)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(path.parent), "report")
    return path
