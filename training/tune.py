"""``nextbest tune``: Optuna over the LightGBM parameters, with the train function ``nextbest train`` uses.

- Sampler TPE (seeded), pruner ``MedianPruner``: a trial whose validation log loss is worse than
  the median of earlier trials at the same boosting round is stopped.
- Budgets: ``n_trials`` and ``timeout`` seconds, whichever ends first.
- The examples are built once (``training.train.prepare``) and shared by every trial; each trial
  calls :func:`training.train.train` with its parameters and is one nested MLflow run under a
  parent ``tune`` run.
- The objective is the sum of the response models' validation log losses (open, click,
  conversion, unsubscribe), on the held-out days after the training rows. The uplift learner
  uses the same parameters.
- The best parameters are written to a JSON file that the next ``nextbest train`` reads.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from nextbest.features.config import Config
from nextbest.training.settings import TrainingSettings, data_fingerprint
from nextbest.training.train import RESPONSES, Stopwatch, prepare, train

log = logging.getLogger(__name__)


def suggest(trial) -> dict:
    """The search space."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 50, 2000, log=True),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 30.0, log=True),
    }


SPACE = ("learning_rate", "num_leaves", "min_child_samples", "colsample_bytree", "subsample", "reg_lambda")


class _PruningCallback:
    """Reports each boosting round's validation log loss to the trial (one step range per model)."""

    def __init__(self, trial, stride: int = 100_000):
        self.trial, self.stride, self.model, self.last_iter = trial, stride, 0, -1

    def __call__(self, env) -> None:
        import optuna

        if env.iteration < self.last_iter:  # a new model started
            self.model += 1
        self.last_iter = env.iteration
        if not env.evaluation_result_list or env.iteration % 10:
            return
        loss = env.evaluation_result_list[0][2]
        self.trial.report(loss, self.model * self.stride + env.iteration)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at model {self.model}, round {env.iteration}")


class _Progress:
    """Optuna callback: one log line per finished trial (its state, objective, the best so far, time)."""

    def __init__(self, n_trials: int, t0: float):
        self.n_trials, self.t0 = n_trials, t0

    def __call__(self, study, trial) -> None:
        import optuna

        states = [t.state for t in study.trials]
        done = states.count(optuna.trial.TrialState.COMPLETE)
        what = (f"objective {trial.value:.5f}" if trial.state == optuna.trial.TrialState.COMPLETE
                else trial.state.name.lower())
        best = f"best {study.best_value:.5f} (trial {study.best_trial.number})" if done else "no trial complete yet"
        log.info("tuning: trial %d/%d %s; %s; %d pruned; %.0f s", trial.number + 1, self.n_trials, what, best,
                 states.count(optuna.trial.TrialState.PRUNED), time.perf_counter() - self.t0)


def history_plot(study, path: Path) -> Path:
    """The optimisation history: each completed trial's objective and the best so far.

    Drawn on a bare ``matplotlib.figure.Figure``: Optuna's own plot goes through pyplot and sets a
    global style, which changed the plots of a notebook calling :func:`tune`.
    """
    import numpy as np
    import optuna
    from matplotlib.figure import Figure

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    fig = Figure(figsize=(9, 5))
    ax = fig.add_subplot()
    x, y = [t.number for t in done], [t.value for t in done]
    ax.plot(x, y, "o", label="completed trial")
    ax.plot(x, np.minimum.accumulate(y), "-", label="best so far")
    ax.set_xlabel(f"trial ({pruned} pruned, not shown)")
    ax.set_ylabel("summed log loss")
    ax.set_title("Tuning: validation log loss of the response models, summed (lower is better)", fontsize=10)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def tune(data_dir: str | Path, config: Config, settings: TrainingSettings, n_trials: int = 20,
         timeout: float | None = 900, seed: int = 0, out: Path | None = None, prepared=None) -> dict:
    """Run the study; returns the best parameters and a summary (and writes them to ``out``).

    ``prepared`` reuses examples built by :func:`training.train.prepare` (a notebook that already
    looked at them); the result's ``study`` is the Optuna study, for its plots.
    """
    import mlflow
    import optuna

    from nextbest.decision import registry
    from nextbest.training.evaluate import response_metrics

    if n_trials < 1:
        raise ValueError(f"the trial budget must be at least 1, got {n_trials}")
    registry.setup()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    prepared = prepared or prepare(data_dir, config, settings, Stopwatch(), seed)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=30))
    current = {k: settings.lightgbm[k] for k in SPACE if k in settings.lightgbm}
    if len(current) == len(SPACE):
        study.enqueue_trial(current)  # the parameters in use are trial 0: tuning never makes things worse

    def objective(trial):
        params = suggest(trial)
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params(params)
            try:
                res = train(data_dir, config, settings.with_lightgbm(params), seed=seed, prepared=prepared,
                            callbacks=[_PruningCallback(trial)])
            except optuna.TrialPruned:
                mlflow.set_tag("state", "pruned")
                raise
            table, _ = response_metrics(res.policy, res.valid)
            losses = table[table["channel"] == "all"].set_index("model")["log_loss"]
            value = float(losses.loc[list(RESPONSES)].sum())
            mlflow.log_metrics({"objective_log_loss": value,
                                **{f"logloss_{m}": float(v) for m, v in losses.items()}})
            mlflow.set_tag("state", "complete")
            return value

    with mlflow.start_run(run_name="tune") as parent:
        mlflow.log_params({"tune.n_trials": n_trials, "tune.timeout_s": timeout, "tune.seed": seed})
        study.optimize(objective, n_trials=n_trials, timeout=timeout, show_progress_bar=False,
                       callbacks=[_Progress(n_trials, t0)])
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            raise RuntimeError("no trial completed within the budget; raise --timeout or --trials")
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(history_plot(study, Path(tmp) / "optimization_history.png")))
        best = {**settings.lightgbm, **study.best_params}
        mlflow.log_metric("best_objective_log_loss", study.best_value)
        mlflow.log_dict({"params": best}, "best_params.json")
        result = {"params": best, "best_value": float(study.best_value), "trials": len(study.trials),
                  "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
                  "seconds": time.perf_counter() - t0, "run_id": parent.info.run_id, "study": study}
    if out is not None:
        Path(out).write_text(json.dumps({"params": best, "objective_log_loss": result["best_value"],
                                         "data_dir": str(Path(data_dir).resolve()),
                                         "data_fingerprint": data_fingerprint(data_dir),
                                         "tune_run_id": result["run_id"],
                                         "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1))
        log.info("best parameters written to %s", out)
    return result
