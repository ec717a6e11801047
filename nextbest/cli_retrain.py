"""``nextbest retrain``: the history plus the served decision log -> a candidate, judged against the champion.

The export happens here (the command line may import serving; ``training`` may not), then
:func:`training.retrain.retrain` trains, judges with the paired doubly robust difference and
records why in the registry.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from nextbest.cli import _out, add_dask_arguments, dask_options

log = logging.getLogger("nextbest")


def export_log(data_dir, log_dir, out, as_of=None):
    """Export ``data_dir`` + the decision log as of ``as_of`` into ``out``.

    Returns
    -------
    served_ids : array of str
        The exported served decisions' ids (their ``message_id`` in ``logging_decisions``).
    counts : tuple of int
        Decisions and events taken from the log.
    """
    from nextbest.serving.decision_log import export_data_dir, read_log

    counts = export_data_dir(data_dir, log_dir, out, as_of=as_of)
    decisions, _ = read_log(log_dir, as_of)
    return decisions["message_id"].to_numpy(), counts


def cmd_retrain(args) -> int:
    import pandas as pd

    from nextbest.features.config import load_config
    from nextbest.decision import registry
    from nextbest.cli_models import _settings, timing_table
    from nextbest.training.retrain import retrain

    cfg = load_config(args.config)
    rs = cfg.retrain
    if args.min_gain is not None:
        rs = rs.model_copy(update={"min_gain": args.min_gain})
    as_of = pd.Timestamp.now(tz="UTC").floor("s") if args.as_of is None else pd.Timestamp(args.as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    tags = {"retrain_as_of": as_of.isoformat(), "retrain_history": str(Path(args.data_dir).resolve())}
    timings = {}
    if args.log:
        out = Path(args.out) if args.out else registry.project_dir() / "retrain" / f"{as_of:%Y%m%dT%H%M%S}"
        t0 = time.perf_counter()
        served_ids, (n_dec, n_ev) = export_log(args.data_dir, args.log, out, as_of)
        timings["export"] = time.perf_counter() - t0
        _out(f"exported {n_dec:,} served decisions and {n_ev:,} events (as of {as_of:%Y-%m-%d %H:%M:%S} UTC) "
             f"with {args.data_dir} to {out}")
        tags |= {"retrain_log_dir": str(Path(args.log).resolve()), "retrain_export": str(out),
                 "retrain_served_decisions": len(served_ids)}
        data_dir = out
    else:
        log.warning("no --log: judging on the data's own latest logged decisions, not on served ones")
        served_ids, data_dir = None, Path(args.data_dir)
    res = retrain(data_dir, cfg, served_ids=served_ids, settings=_settings(args, cfg), retrain_settings=rs,
                  seed=args.seed, config_path=args.config, promote=not args.no_promote, tags=tags,
                  dask=dask_options(args))
    timings |= res["timings"]
    _out(timing_table(timings))
    _out("training stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in res["train_timings"].items()))
    ev = res["evaluation"]
    if ev is not None:
        e = ev.estimate
        _out(f"paired DR on {e.n:,} {'served' if args.log else 'logged'} decisions: candidate {e.candidate:.4f}, champion {e.champion:.4f}, "
             f"gain {e.difference:+.4f} [{e.ci_low:+.4f}, {e.ci_high:+.4f}] per decision "
             f"(effective sample sizes {ev.ess_candidate:,.0f} / {ev.ess_champion:,.0f})")
        sn = ev.snips
        _out(f"paired SNIPS: candidate {sn.candidate:.4f}, champion {sn.champion:.4f}, gain {sn.difference:+.4f} "
             f"[{sn.ci_low:+.4f}, {sn.ci_high:+.4f}] per decision")
    _out(f"candidate: {registry.MODEL_NAME} version {res['version']} (MLflow run {res['run_id']}); "
         f"champion was {res['champion'] or 'none'}")
    _out(f"decision: {res['decision']}; {res['reason']}")
    return 0


def add_commands(top) -> None:
    r = top.add_parser("retrain", help="train on the history plus the served decision log, judge the candidate "
                                        "against the champion off-policy (paired DR) and promote it if it is better")
    r.add_argument("data_dir", help="the original history (customers, events, logging_decisions)")
    r.add_argument("--log", help="the service's decision log directory (without it: judge on DATA_DIR's own latest "
                                 "logged decisions)")
    r.add_argument("--out", help="where the export goes (default: retrain/<as-of> in the project directory)")
    r.add_argument("--as-of", help="export time (UTC; default: now)")
    r.add_argument("--min-gain", type=float, help="required lower bound of the gain per decision "
                                                  "(default: the config's retrain.min_gain)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--params", help="LightGBM parameters JSON (default: the project's nextbest_params.json)")
    r.add_argument("--no-tuned", action="store_true", help="ignore tuned parameters; use the config's")
    r.add_argument("--no-promote", action="store_true", help="judge and tag the candidate, never move the champion")
    add_dask_arguments(r)
    r.set_defaults(func=cmd_retrain)
