"""One MLflow run per ``nextbest train``: parameters, data fingerprint, metrics, report, model.

``run_training`` is what the CLI, ``mlflow run . -e train`` and ``nextbest tune`` (one nested
run per trial, without registering) call.

The headline of every run, real data too, comes first on its page: :func:`offpolicy_headline`
estimates off-policy, on the held-out days' logged decisions (never trained on), the new policy's
extra profit per 1,000 customers per day against sending nothing, against the champion (when
there is one) and against the logging policy, each with a paired doubly robust 95% interval
(``training.ope.estimate_paired``, one cross-fitted reward model for all three). Where the data
is simulated, the simulator's truth follows as a check.
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.decision import registry
from nextbest.training import run_metrics
from nextbest.training.evaluate import measured_incrementality, response_metrics, uplift_evaluation
from nextbest.training.policy_breakdown import policy_picks, what_changed
from nextbest.training.report import ReportData, write_report
from nextbest.training.settings import TrainingSettings, data_fingerprint
from nextbest.sim.simulation_eval import evaluate_on_world, load_truth
from nextbest.training.train import TrainResult, train

log = logging.getLogger(__name__)


def headline_rounds(res: TrainResult, config: Config, seed: int = 0):
    """The held-out logged decisions as off-policy rounds (``training.offpolicy.LoggedRounds``).

    The decisions from the validation cut on (never trained on) whose reward window
    (``offpolicy.reward_window_hours`` from the start of their UTC day) is complete, sampled
    uniformly down to ``training.offpolicy_headline.max_rounds`` (uniformly: the estimators need
    the logging policy's own mix of sends and suppressions); rounds are built as
    :func:`training.offpolicy.logged_rounds` builds them, from the log already encoded. Missing
    propensities are estimated with the run's propensity model.
    """
    from nextbest.features.history import engagement_history
    from nextbest.training.offpolicy import LoggedRounds, _rewards
    from nextbest.training.propensity import action_classes, fill_propensities

    window = config.offpolicy.reward_window_hours
    dec = res.dataset.decisions
    day = dec["ts"].dt.floor("D")
    held = (dec["ts"] >= pd.Timestamp(res.info["validation_cut"])) & \
        (day + pd.Timedelta(hours=window) <= pd.Timestamp(res.info["data_end"]))
    dec = dec[held.to_numpy()]
    cap = config.training.offpolicy_headline.max_rounds
    if len(dec) > cap:
        dec = dec.sample(cap, random_state=seed)
    dec = dec.assign(day=dec["ts"].dt.floor("D")).sort_values(["day", "ts"], kind="stable").reset_index(drop=True)
    if len(dec) < 2:
        raise ValueError("fewer than two held-out decisions with a complete reward window")
    if res.dataset.propensity_model is not None and dec["propensity"].isna().any():
        dec = fill_propensities(res.dataset.propensity_model, res.log, dec, res.population)
    features = pd.concat([engagement_history(res.log, sub["customer_id"].astype(str).to_numpy(), d, res.population)
                          for d, sub in dec.groupby("day", sort=True)])
    send = (dec["action"] == "send").to_numpy()
    action = action_classes(dec, config)
    O = len(config.offer_names)
    k, j = np.where(send, (action - 1) // O, -1), np.where(send, (action - 1) % O, -1)
    reward, unsub = _rewards(dec, res.dataset.events, config, window, send, k, j)
    hour = np.where(send, dec["local_hour"].to_numpy(), -1)
    return LoggedRounds(features, dec["day"].to_numpy(), action, hour, dec["propensity"].to_numpy(float), reward, config,
                        unsub)


def offpolicy_headline(res: TrainResult, config: Config, champion=None, seed: int = 0) -> dict:
    """The new policy against sending nothing, the champion and the logging policy, off-policy.

    Paired doubly robust differences (:func:`training.ope.estimate_paired`) on
    :func:`headline_rounds`, from ONE cross-fitted reward model over the new policy's scores:

    - sending nothing takes "no message" in every round (its value: the reward model's "no
      message" prediction, corrected on the logged suppressions);
    - the logging policy's value is its own logged reward (probability of the logged action =
      its propensity, weight 1, and the reward model's prediction of the logged action as its
      direct term: the doubly robust term is then the reward itself);
    - the champion (a ``DecisionPolicy``; none for a first version) is replayed like the new policy.

    Returns ``{"vs": {name: PairedEstimate}, "rounds": n, "ess": ..., "value": ..., "logging_value": ...}``
    with values in profit per decision (one customer on one day).
    """
    from nextbest.training.offpolicy import _reward_frame, replay
    from nextbest.training.ope import CrossFitRewardModel, estimate_paired

    h = config.training.offpolicy_headline
    rounds = headline_rounds(res, config, seed)
    rp = replay(res.policy, rounds, seed)
    rp_0 = None
    if champion is not None:
        try:
            rp_0 = replay(champion, rounds, seed)
            if rp_0.dist.shape != rp.dist.shape:
                raise ValueError(f"the champion has {rp_0.dist.shape[1]} options, the new policy {rp.dist.shape[1]}")
        except Exception as exc:  # a champion of another config cannot be replayed on these options
            log.warning("off-policy headline: the champion is not compared (%s)", exc)
            rp_0 = None
    n, A = rp.dist.shape
    rows = np.arange(n)
    X = _reward_frame(rp.inputs, rows, rounds.action, rounds.hour, A)
    alt, tiled = np.repeat(np.arange(A), n), np.tile(rows, A)
    X_eval = pd.concat([_reward_frame(rp.inputs, tiled, alt, r.hours[tiled, alt], A) for r in (rp, rp_0) if r],
                       ignore_index=True)
    n_eval = A * (2 if rp_0 else 1)
    q_logged, q = CrossFitRewardModel(n_folds=2, random_state=seed, config=config).fit_predict(
        X, rounds.reward, X_eval, n_eval, groups=rounds.features.index.to_numpy())
    dm = (rp.dist * q[:, :A]).sum(axis=1)
    nothing = (rounds.action == 0).astype(float)
    args = dict(estimator="dr", n_boot=h.n_boot, seed=seed)
    vs = {"nothing": estimate_paired(rounds.reward, rounds.propensity, rp.pi_logged, nothing, dm, q[:, 0], q_logged,
                                     **args),
          "logging": estimate_paired(rounds.reward, rounds.propensity, rp.pi_logged, rounds.propensity, dm, q_logged,
                                     q_logged, **args)}
    if rp_0 is not None:
        vs["champion"] = estimate_paired(rounds.reward, rounds.propensity, rp.pi_logged, rp_0.pi_logged, dm,
                                         (rp_0.dist * q[:, A:]).sum(axis=1), q_logged, **args)
    w = rp.pi_logged / rounds.propensity
    out = {"vs": vs, "rounds": n, "value": vs["nothing"].candidate, "logging_value": vs["logging"].champion,
           "ess": float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300)), "unsupported": float((rp.pi_logged == 0).mean()),
           "picks": policy_picks(rp.dist, q[:, :A], config),
           "changed": what_changed(rp, q[:, :A], rp_0, q[:, A:], config) if rp_0 is not None else None}
    log.info("off-policy headline on %d held-out decisions: %s", n, ", ".join(
        f"vs {k} {1000 * e.difference:+.1f} [{1000 * e.ci_low:+.1f}, {1000 * e.ci_high:+.1f}] per 1,000"
        for k, e in vs.items()))
    return out


def evaluate_and_report(res: TrainResult, config: Config, out_dir: Path, version: str,
                        champion=None, seed: int = 0) -> tuple[dict, Path]:
    """Evaluate the trained policy (off-policy on the held-out days first; held-out rows; the
    simulator's truth when present) and write the report into ``out_dir``; returns the metrics
    and the report path. ``champion``: the current champion's ``DecisionPolicy``, if any."""
    t0 = time.perf_counter()
    try:
        headline = offpolicy_headline(res, config, champion, seed)
    except ValueError as exc:  # too little held-out data: the run still has its other measures
        log.warning("no off-policy headline: %s", exc)
        headline = None
    ope = run_metrics.offpolicy(headline)
    res.timings["offpolicy_headline"] = time.perf_counter() - t0
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
    metrics = (ope | run_metrics.headline(values) | run_metrics.incrementality(inc)
               | run_metrics.send_time(send_time) | run_metrics.model_health(responses, uplift))
    res.timings["evaluate"] = time.perf_counter() - t0
    facts = {"decisions learned from": f"{res.info['train_decisions']:,}",
             "held-out decisions": f"{res.info['valid_decisions']:,}", "held out from": res.info["validation_from"]}
    picks = headline.get("picks") if headline else None
    changed = headline.get("changed") if headline else None
    if changed is not None:
        changed.attrs["champion"] = "version " + str(getattr(champion, "version", "?")).rsplit("/", 1)[-1]
    path = write_report(ReportData("What messages add: uplift report", version, values, note, inc, uplift,
                                   responses, curves, send_time, facts, picks, changed), out_dir)
    return run_metrics.finite(metrics), path


@contextmanager
def _marked_if_failed(name: str):
    """Inside an MLflow run: a failure renames the run ``FAILED: <name>`` (and MLflow marks it FAILED)."""
    import mlflow

    try:
        yield
    except BaseException as exc:
        mlflow.set_tag("mlflow.runName", f"FAILED: {name}")
        mlflow.set_tag("failure", f"{type(exc).__name__}: {exc}"[:500])
        raise


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
    champion_version = registry.champion_version()
    # named after what it does from the start; renamed after its version once registered, marked
    # when it fails (MLflow sets the FAILED status), so the marketer's list reads without opening runs
    name = run_name or f"training on {Path(data_dir).name}"
    with mlflow.start_run(run_name=name, nested=nested) as run, _marked_if_failed(name):
        mlflow.log_params({"data_dir": str(data_dir), "seed": seed, "config": config_path or "defaults",
                           **{f"training.{k}": v for k, v in asdict(settings).items() if k != "lightgbm"},
                           **{f"lightgbm.{k}": v for k, v in settings.lightgbm.items()}})
        mlflow.set_tag("data_fingerprint", data_fingerprint(data_dir))
        res = train(data_dir, config, settings, seed=seed, version=run.info.run_id, callbacks=callbacks,
                    prepared=prepared)
        mlflow.log_params({k: v for k, v in res.info.items()})
        mlflow.set_tag("propensity_source", res.info.get("propensity_source", "logged"))
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
                champion = registry.load_version(champion_version) if champion_version else None
                metrics, report = evaluate_and_report(res, config, Path(tmp) / "report", label, champion, seed)
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
        mlflow.set_tag("mlflow.note.content", run_metrics.run_description(metrics, version, Path(data_dir).resolve(),
                                                                          res.info, champion_version))
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
