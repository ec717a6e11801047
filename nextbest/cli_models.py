"""``nextbest train | tune | report | promote | models``: thin calls into ``training``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nextbest.cli import _out, add_dask_arguments

log = logging.getLogger("nextbest")

PARAMS_FILE = "nextbest_params.json"  # in the project directory: written by tune, read by train


def _settings(args, cfg):
    from nextbest.decision.registry import project_dir
    from nextbest.training.settings import TrainingSettings, load_tuned_params

    settings = TrainingSettings.from_config(cfg)
    params_path = Path(args.params) if getattr(args, "params", None) else project_dir() / PARAMS_FILE
    if getattr(args, "params", None) and not params_path.exists():
        raise FileNotFoundError(f"{params_path}: parameters file not found")
    if not getattr(args, "no_tuned", False):
        settings = settings.with_lightgbm(load_tuned_params(params_path, getattr(args, "data_dir", None),
                                                            explicit=bool(getattr(args, "params", None))))
    return settings


def timing_table(timings: dict) -> str:
    total = sum(timings.values())
    lines = ["stage              seconds   share"]
    for k, v in timings.items():
        lines.append(f"{k:<18} {v:7.1f}  {v / total:6.1%}")
    lines.append(f"{'total':<18} {total:7.1f}")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from nextbest.features.config import load_config
    from nextbest.decision import registry
    from nextbest.training import run_metrics
    from nextbest.training.tracking import run_training

    cfg = load_config(args.config)
    settings = _settings(args, cfg)
    summary = run_training(args.data_dir, cfg, settings, seed=args.seed, register=not args.no_register,
                           promote=args.promote, config_path=args.config,
                           prepared=prepared_on_dask(args, cfg, settings))
    _out(timing_table(summary["timings"]))
    m = summary["metrics"]
    for k, v in run_metrics.headline_summary(m):
        _out(f"{k:<58} {v:10.4f}")
    for k in ("model_auc/open_all", "model_auc/conversion_all"):
        if k in m:
            _out(f"{k:<58} {m[k]:10.4f}")
    _out(f"MLflow run {summary['run_id']}" + (f", registered as {registry.MODEL_NAME} version {summary['version']}"
                                               if summary["version"] else ""))
    if args.promote and summary["version"]:
        _out(f"champion: version {summary['version']}" if summary.get("promoted")
             else f"not promoted: {summary.get('promotion')}")
    _out(f"uplift report: {summary['report']}")
    _out(f"MLflow UI: {registry.ui_hint()}")
    return 0


def prepared_on_dask(args, cfg, settings, data_dir=None):
    """With ``--dask``: the training examples built on Dask (``training.train.prepare``); else None."""
    from nextbest.cli import dask_options
    from nextbest.training.train import Stopwatch, prepare

    opts = dask_options(args)
    if opts is None:
        return None
    return prepare(data_dir or args.data_dir, cfg, settings, Stopwatch(), args.seed, dask=opts)


def cmd_tune(args) -> int:
    from nextbest.features.config import load_config
    from nextbest.decision.registry import project_dir
    from nextbest.training.tune import tune

    cfg = load_config(args.config)
    out = Path(args.params_out) if args.params_out else project_dir() / PARAMS_FILE
    result = tune(args.data_dir, cfg, _settings(args, cfg), n_trials=args.trials, timeout=args.timeout,
                  seed=args.seed, out=out)
    _out(f"{result['trials']} trials ({result['pruned']} pruned) in {result['seconds']:.0f} s; "
         f"best validation log loss {result['best_value']:.5f}")
    _out(json.dumps(result["params"], indent=1))
    _out(f"saved to {out}: the next `nextbest train` uses them")
    return 0


def cmd_report(args) -> int:
    from nextbest.features.config import load_config
    from nextbest.training.tracking import report_for_version

    cfg = load_config(args.config)
    path = report_for_version(args.data_dir, cfg, args.version, Path(args.out), seed=args.seed)
    _out(f"uplift report written to {path}")
    return 0


def cmd_promote(args) -> int:
    from nextbest.decision import registry
    from nextbest.training.ope_tracking import promotion_check

    # a champion the service cannot load or decide with is refused, --force or not (--force
    # skips only the off-policy gate)
    try:
        registry.smoke_decision(registry.load_version(args.version), getattr(args, "data", None))
    except Exception as exc:  # noqa: BLE001 - whatever stops it from deciding refuses it
        raise PermissionError(f"not promoted: version {args.version} cannot be served ({type(exc).__name__}: "
                              f"{exc}); the champion is unchanged") from None
    ok, reason = promotion_check(args.version)
    if not ok and not args.force:
        raise PermissionError(f"not promoted: {reason}")
    note = args.note or ""
    if not ok:
        note = f"forced past the off-policy gate ({reason}) {note}".strip()
        log.warning("promoting version %s although %s", args.version, reason)
    entry = registry.promote(args.version, note=note)
    _out(f"champion: version {entry['version']} (was {entry['previous'] or 'none'}) since {entry['since']}")
    return 0


def cmd_evaluate(args) -> int:
    from nextbest.features.config import load_config
    from nextbest.training.ope_tracking import evaluate_version, summary_table

    cfg = load_config(args.config)
    res = evaluate_version(args.data_dir, cfg, args.version, args.against, days=args.days,
                           max_rounds=args.max_rounds, n_boot=args.n_boot, seed=args.seed)
    _out(f"{res['rounds']} logged decisions; values are profit per decision")
    _out(summary_table(res["table"]))
    _out(res["message"])
    _out(f"MLflow run {res['run_id']}")
    return 0


def cmd_decide(args) -> int:
    """Decisions of the champion for a few customers of a data directory, as the service will give them."""
    import numpy as np
    import pandas as pd

    from nextbest.features.eventlog import EventLog
    from nextbest.features.history import Population, engagement_history
    from nextbest.features.io import load_dataset
    from nextbest.decision import registry
    from nextbest.decision.policy import Request
    from nextbest.decision.rules import ContactHistory

    policy = registry.load_champion()
    customers, events = load_dataset(args.data_dir)
    now = pd.Timestamp(args.now, tz="UTC") if args.now else events["ts"].max().ceil("D")
    log_ = EventLog.build(customers, events[events["ts"] < now], policy.config)
    ids = customers["customer_id"].astype(str).to_numpy()[: args.customers]
    feats = engagement_history(log_, ids, now, Population.from_log(log_))
    out = policy.decide(feats, ContactHistory.from_features(feats, policy.config), Request(now=now),
                        rng=np.random.default_rng(args.seed))
    cols = ["customer_id", "action", "channel", "send_at", "offer", "propensity", "expected_value", "explored",
            "control"]
    _out(f"decisions of {policy.version} at {now:%Y-%m-%d %H:%M} UTC "
         f"(exploration: {policy.exploration.method}, budget {policy.exploration.budget:g}):")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        _out(out.frame[cols].to_string(index=False))
    for cid, reasons in zip(out.frame["customer_id"], out.reasons):
        _out(f"\n{cid}:")
        for r in reasons:
            _out(f"  - {r}")
    return 0


def cmd_models(args) -> int:
    import pandas as pd

    from nextbest.decision import registry

    rows = registry.versions()
    if not rows:
        _out(f"no version of {registry.MODEL_NAME} yet: run `nextbest train DATA`")
        return 0
    _out(pd.DataFrame(rows).to_string(index=False))
    _out("")
    _out("champion history:")
    for e in registry.champion_history():
        _out(f"  {e['since']}  version {e['version']}  (was {e['previous'] or 'none'}) {e.get('note', '')}")
    return 0


def add_logged_rounds_arguments(parser) -> None:
    """Which logged decisions an off-policy estimate reads, and its bootstrap (evaluate, whatif)."""
    parser.add_argument("--days", type=int, default=7, help="the last N logged days with a complete reward window")
    parser.add_argument("--max-rounds", type=int, default=20000, help="sample at most this many logged decisions")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=0)


def add_commands(top) -> None:
    t = top.add_parser("train", help="train the policy, log it to MLflow and register it as `nextbest`")
    t.add_argument("data_dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--params", help="LightGBM parameters JSON (default: the project's nextbest_params.json "
                                    "from `nextbest tune`, if any)")
    t.add_argument("--no-tuned", action="store_true", help="ignore tuned parameters; use the config's")
    t.add_argument("--no-register", action="store_true", help="log the run but do not register a version")
    t.add_argument("--promote", action="store_true", help="make the new version the champion (if there is none "
                                                          "yet; otherwise use `nextbest evaluate` and `promote`)")
    add_dask_arguments(t)
    t.set_defaults(func=cmd_train)

    u = top.add_parser("tune", help="search LightGBM parameters with Optuna (nested MLflow runs)")
    u.add_argument("data_dir")
    u.add_argument("--trials", type=int, default=20, help="trial budget")
    u.add_argument("--timeout", type=float, default=900, help="time budget in seconds")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--params-out", help="where to save the best parameters (default: nextbest_params.json)")
    u.add_argument("--no-tuned", action="store_true", help="start from the config's parameters")
    u.set_defaults(func=cmd_tune)

    r = top.add_parser("report", help="write the uplift report of a registered version on a data directory")
    r.add_argument("data_dir")
    r.add_argument("--version", help="registered version (default: the champion)")
    r.add_argument("--out", required=True, help="directory for index.html and its charts")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_report)

    e = top.add_parser("evaluate", help="off-policy evaluation of a registered version against the champion "
                                         "on a data directory's logged decisions (logged to MLflow)")
    e.add_argument("data_dir")
    e.add_argument("--version", required=True, help="the candidate version")
    e.add_argument("--against", help="the version to compare with (default: the champion)")
    add_logged_rounds_arguments(e)
    e.set_defaults(func=cmd_evaluate)

    p = top.add_parser("promote", help="move the `champion` alias to a registered version (it must load and take a "
                                        "smoke decision, and needs a passing `nextbest evaluate` against the "
                                        "current champion, or --force)")
    p.add_argument("version")
    p.add_argument("--note", help="why (kept in the champion history)")
    p.add_argument("--force", action="store_true", help="promote even if the off-policy gate fails or is missing "
                                                         "(never a version that fails to load or decide)")
    p.add_argument("--data", help="take the smoke decision for a few customers of this data directory "
                                  "(default: a synthetic customer)")
    p.set_defaults(func=cmd_promote)

    d = top.add_parser("decide", help="the champion's decisions (with propensities and reasons) for the first "
                                       "customers of a data directory")
    d.add_argument("data_dir")
    d.add_argument("--customers", type=int, default=5, help="how many customers")
    d.add_argument("--now", help="decision time (UTC; default: the day after the last event)")
    d.add_argument("--seed", type=int, default=0, help="exploration seed")
    d.set_defaults(func=cmd_decide)

    m = top.add_parser("models", help="registered versions and the champion history")
    m.set_defaults(func=cmd_models)

