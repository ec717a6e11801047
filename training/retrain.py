"""``nextbest retrain``: the history plus the service's own decision log -> a candidate -> a judgement.

Stages (timed, returned in ``result["timings"]``):

1. **export** (by the command line, ``nextbest/cli_retrain.py``, since training never imports
   serving): the data directory joined with the served decision log as of now
   (``serving.decision_log.export_data_dir``: only due sends and feedback dated by then, so the
   export validates).
2. **train**: :func:`training.tracking.run_training` on the export (one MLflow run, a new
   registered version: the candidate).
3. **rounds**: the latest served decisions with a complete reward window
   (:func:`training.offpolicy.logged_rounds`, at most ``retrain.eval_days`` days).
4. **evaluate**: both policies replayed on those rounds, ONE cross-fitted reward model, and the
   paired doubly robust difference ``V(candidate) - V(champion)`` with one bootstrap over rounds
   (:func:`training.ope.estimate_paired`). Pairing matters: the two values share the rounds,
   the rewards and the reward model's errors, so their difference is known far better than the
   two values are; comparing two separate intervals throws that away.
5. **registry**: promote when the interval's lower bound is above ``retrain.min_gain``, for the
   paired DR and (``retrain.gate``, by default) the paired SNIPS difference too; the
   estimate, interval, number of rounds and the decision are written as ``retrain_*`` tags on
   the candidate version (and metrics on its training run), whatever the decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.config import Config, ConfigError, RetrainSection
from nextbest.decision.policy import DecisionPolicy
from nextbest.training.offpolicy import LoggedRounds, _reward_frame, logged_rounds, replay
from nextbest.training.ope import CrossFitRewardModel, PairedEstimate, estimate_paired

log = logging.getLogger(__name__)


@dataclass
class PairedEvaluation:
    """The paired judgement of a candidate against the champion on logged rounds."""

    estimate: PairedEstimate   # the paired doubly robust difference
    rounds: int
    ess_candidate: float       # effective sample size of each policy's importance weights
    ess_champion: float
    agreement: float           # share of rounds where both give the logged action the same probability
    snips: PairedEstimate | None = None  # the paired self-normalized IPS difference (no reward model)

    def gate(self, names) -> list[PairedEstimate]:
        """The estimates the gate reads, by estimator name (``retrain.gate``)."""
        by = {"dr": self.estimate, "snips": self.snips}
        missing = [n for n in names if by.get(n) is None]
        if missing:
            raise ValueError(f"the gate asks for {missing}, which this evaluation did not estimate; known: dr, snips")
        return [by[n] for n in names]


def paired_evaluation(rounds: LoggedRounds, candidate: DecisionPolicy, champion: DecisionPolicy,
                      n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> PairedEvaluation:
    """Paired doubly robust ``V(candidate) - V(champion)`` on the rounds.

    Both policies are replayed with the code that serves them; one reward model ``q(x, a)``
    (cross-fitted LightGBM, folds by customer, reading the champion's scores of each option, the
    option and its hour) predicts every option at each policy's send hour, so both values are
    corrected by the same model and its errors cancel in the difference.
    """
    rp_c, rp_0 = replay(candidate, rounds, seed), replay(champion, rounds, seed)
    n, A = rp_0.dist.shape
    rows = np.arange(n)
    X = _reward_frame(rp_0.inputs, rows, rounds.action, rounds.hour, A)
    alt = np.repeat(np.arange(A), n)
    tiled = np.tile(rows, A)
    X_eval = pd.concat([_reward_frame(rp_0.inputs, tiled, alt, rp.hours[tiled, alt], A) for rp in (rp_c, rp_0)],
                       ignore_index=True)
    q_logged, q = CrossFitRewardModel(n_folds=2, random_state=seed, config=rounds.config).fit_predict(
        X, rounds.reward, X_eval, 2 * A, groups=rounds.features.index.to_numpy())
    q_c, q_0 = q[:, :A], q[:, A:]
    est = estimate_paired(rounds.reward, rounds.propensity, rp_c.pi_logged, rp_0.pi_logged,
                          (rp_c.dist * q_c).sum(axis=1), (rp_0.dist * q_0).sum(axis=1), q_logged,
                          estimator="dr", n_boot=n_boot, alpha=alpha, seed=seed)
    snips = estimate_paired(rounds.reward, rounds.propensity, rp_c.pi_logged, rp_0.pi_logged, estimator="snips",
                            n_boot=n_boot, alpha=alpha, seed=seed)

    def ess(pi):
        w = pi / rounds.propensity
        return float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300))

    return PairedEvaluation(est, n, ess(rp_c.pi_logged), ess(rp_0.pi_logged),
                            float(np.isclose(rp_c.pi_logged, rp_0.pi_logged).mean()), snips)


def paired_gate(estimates: PairedEstimate | Sequence[PairedEstimate], min_gain: float = 0.0) -> tuple[bool, str]:
    """Promote only if the lower bound of every paired difference in ``estimates`` is above ``min_gain``.

    One estimate (the paired DR) is the classic gate. With the paired SNIPS too (the config's
    ``retrain.gate``), a candidate must also win without the reward model: on the log of a nearly
    greedy policy the DR values of options it rarely took rest on the reward model, whose bias
    the bootstrap interval does not carry (benchmarks/RESULTS.md, "Retraining inside the loop").
    """
    estimates = [estimates] if isinstance(estimates, PairedEstimate) else list(estimates)
    if not estimates:
        raise ValueError("the gate needs at least one paired estimate")
    ok = all(e.ci_low > min_gain for e in estimates)
    first = estimates[0]
    level = f"{1 - first.alpha:.0%}"
    parts = [f"paired {e.estimator.upper()} gain {e.difference:+.4f} per decision ({level} interval "
             f"[{e.ci_low:+.4f}, {e.ci_high:+.4f}]; candidate {e.candidate:.4f}, champion {e.champion:.4f})"
             for e in estimates]
    bound = ("every lower bound >" if ok else
             f"lower bound of {', '.join(e.estimator.upper() for e in estimates if e.ci_low <= min_gain)} <=")
    return ok, (f"{'promote' if ok else 'keep the champion'}: the candidate's {'; '.join(parts)}, on "
                f"{first.n:,} logged decisions; {bound} the required gain {min_gain:g}")


def served_days(data_dir: str | Path, served_ids, max_days: int, window_hours: float) -> int:
    """How many days of served decisions (``message_id`` in ``served_ids``) have a complete reward window
    of ``window_hours`` (at most ``max_days``)."""
    from nextbest.features.io import read_table

    decisions = read_table(data_dir, "logging_decisions")
    data_end = pd.to_datetime(read_table(data_dir, "events")["ts"], utc=True).max()
    days = pd.to_datetime(decisions.loc[decisions["message_id"].isin(set(served_ids)), "ts"], utc=True).dt.floor("D")
    return min(days[days + pd.Timedelta(hours=window_hours) <= data_end].nunique(), max_days)


def retrain(data_dir: str | Path, config: Config, served_ids=None, settings=None,
            retrain_settings: RetrainSection | None = None, seed: int = 0, config_path: str | None = None,
            promote: bool = True, tags: dict | None = None, dask=None) -> dict:
    """Train a candidate, judge it against the champion (paired DR) and maybe promote it.

    Parameters
    ----------
    data_dir : path
        The history joined with the served log (``nextbest log export``; the CLI exports first).
    config : Config
    served_ids : collection of str, optional
        The ``message_id`` of every served decision in ``data_dir`` (the decision ids): the
        judgement uses only those, from their last ``retrain.eval_days`` complete days. ``None``
        judges on the data's own latest ``logging_decisions`` (a history logged by the champion,
        or a benchmark).
    settings : TrainingSettings, optional
    retrain_settings : RetrainSection, optional
        Default: the config's ``retrain`` section.
    promote : bool
        Move the champion when the gate passes (False: judge and tag only).
    tags : dict, optional
        More ``retrain_*`` tags for the candidate version (the CLI adds the log and export time).

    Returns
    -------
    dict
        ``version``, ``run_id``, ``champion``, ``passed``, ``promoted``, ``decision``, ``reason``,
        ``evaluation`` (:class:`PairedEvaluation` or None), ``timings`` (seconds per stage) and
        ``train_timings`` (the training run's own stages).
    """
    import mlflow
    from mlflow import MlflowClient

    from nextbest.decision import registry
    from nextbest.training.tracking import run_training

    rs = retrain_settings or config.retrain
    timings: dict[str, float] = {}
    champion = registry.champion_version()
    t0 = time.perf_counter()
    prepared = None
    if dask is not None:  # the training examples on Dask (features.partitioned)
        from nextbest.training.settings import TrainingSettings
        from nextbest.training.train import Stopwatch, prepare

        prepared = prepare(data_dir, config, settings or TrainingSettings.from_config(config), Stopwatch(), seed,
                           dask=dask)
    summary = run_training(data_dir, config, settings, seed=seed, register=True, promote=False,
                           config_path=config_path, run_name=None, prepared=prepared)
    timings["train"] = time.perf_counter() - t0
    version, run_id = summary["version"], summary["run_id"]
    result = {"version": version, "run_id": run_id, "champion": champion, "evaluation": None, "timings": timings,
              "train_timings": summary["timings"]}
    tags = {**(tags or {}), "retrain_min_gain": rs.min_gain, "retrain_champion_version": champion or "none"}
    ok = False
    if champion is None:
        ok, reason = True, "promote: no champion yet"
    else:
        t0 = time.perf_counter()
        window = config.offpolicy.reward_window_hours  # the rounds' reward window (training.offpolicy)
        days = rs.eval_days if served_ids is None else served_days(data_dir, served_ids, rs.eval_days, window)
        rounds = None
        if days == 0:
            reason = ("keep the champion: no served decision has a complete reward window yet "
                      f"({window:g} h after its day)")
        else:
            rounds = logged_rounds(data_dir, config, days=days, max_rounds=rs.max_rounds,
                                   reward_window_hours=window, seed=seed, message_ids=served_ids)
        timings["rounds"] = time.perf_counter() - t0
        if rounds is not None:
            t0 = time.perf_counter()
            ev = paired_evaluation(rounds, registry.load_version(version), registry.load_version(champion),
                                   n_boot=rs.n_boot, seed=seed)
            timings["evaluate"] = time.perf_counter() - t0
            ok, reason = paired_gate(ev.gate(rs.gate), rs.min_gain)
            result["evaluation"] = ev
            e, sn = ev.estimate, ev.snips
            tags |= {"retrain_gate": ",".join(rs.gate), "retrain_snips_gain": sn.difference,
                     "retrain_snips_gain_low": sn.ci_low, "retrain_snips_gain_high": sn.ci_high, "retrain_estimator": e.estimator, "retrain_gain": e.difference, "retrain_gain_low": e.ci_low,
                     "retrain_gain_high": e.ci_high, "retrain_candidate_value": e.candidate,
                     "retrain_champion_value": e.champion, "retrain_rounds": e.n, "retrain_days": days,
                     "retrain_ess_candidate": round(ev.ess_candidate, 1),
                     "retrain_ess_champion": round(ev.ess_champion, 1)}
    t0 = time.perf_counter()
    now_champion = registry.champion_version()
    if ok and now_champion != champion:  # promoted meanwhile (by hand, or a retrain that overlapped)
        ok, reason = False, (f"keep the champion: the candidate was judged against version {champion}, but version "
                             f"{now_champion} has become the champion since; judge it again")
    promoted = bool(ok and promote)
    decision = "promoted" if promoted else ("passed, not promoted (--no-promote)" if ok else "kept champion")
    tags |= {"retrain_decision": decision, "retrain_reason": reason}
    client = MlflowClient(tracking_uri=registry.tracking_uri(), registry_uri=registry.tracking_uri())
    registry.setup()
    for key, value in tags.items():
        client.set_model_version_tag(registry.MODEL_NAME, version, key, str(value))
        client.set_tag(run_id, key, str(value))
    if result["evaluation"] is not None:
        e = result["evaluation"].estimate
        with mlflow.start_run(run_id=run_id):
            sn = result["evaluation"].snips
            mlflow.log_metrics({"retrain_gain": e.difference, "retrain_gain_low_95": e.ci_low,
                                "retrain_gain_high_95": e.ci_high, "retrain_rounds": e.n,
                                "retrain_snips_gain": sn.difference, "retrain_snips_gain_low_95": sn.ci_low,
                                "retrain_snips_gain_high_95": sn.ci_high})
    if promoted:
        registry.promote(version, note=f"nextbest retrain: {reason}")
    timings["registry"] = time.perf_counter() - t0
    result |= {"promoted": promoted, "passed": ok, "reason": reason, "decision": decision}
    log.info("version %s: %s", version, reason)
    return result
