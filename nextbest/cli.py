"""``nextbest`` command line: thin calls into the package, one subcommand per step.

Diagnostics go to the log (stderr); results meant for the reader (summaries, tables) go to
stdout. Every command exits non-zero on bad input, with a message that says what to fix.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd

log = logging.getLogger("nextbest")


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _config(args):
    from nextbest.features.config import load_config

    return load_config(args.config)


# ---------------------------------------------------------------------------- data
def cmd_data_generate(args) -> int:
    from nextbest.sim.simulate import DEFAULT_END, generate, write

    cfg = _config(args)
    end = pd.Timestamp(args.end, tz="UTC") if args.end else DEFAULT_END
    data = generate(args.customers, args.days, args.seed, cfg, end=end, progress=not args.quiet)
    out = write(data, args.out, args.format, seed=args.seed)
    _out(f"wrote {len(data.customers):,} customers and {len(data.events):,} events "
         f"({data.start:%Y-%m-%d} to {data.end:%Y-%m-%d}) to {out}")
    return 0


def cmd_data_validate(args) -> int:
    from nextbest.features.io import load_dataset, read_behaviour
    from nextbest.features.validate import ValidationReport, validate

    cfg = _config(args)
    opts = dask_options(args)
    if opts is not None:
        return _data_validate_on_dask(args, cfg, opts)
    customers, events = load_dataset(args.data_dir)  # read once: for the rules and the summary
    behaviour = read_behaviour(args.data_dir)
    report = ValidationReport(validate(customers, events, cfg, files=_files(args.data_dir), behaviour=behaviour))
    return _report(args, report, lambda: dataset_summary(args.data_dir, customers, events, cfg))


def _data_validate_on_dask(args, cfg, opts) -> int:
    """``data validate --dask``: every partition on a worker (``features.partitioned.validate``)."""
    from nextbest.features import partitioned
    from nextbest.features.validate import ValidationReport

    with partitioned.dask_client(opts.scheduler, opts.workers) as client, partitioned.scratch_dir(opts) as scratch:
        parts = partitioned.partition(args.data_dir, client, opts.partitions, scratch)
        report = ValidationReport(partitioned.validate(parts, client, cfg, progress=not args.quiet))
    return _report(args, report, lambda: f"valid: {parts.events:,} events in {parts.n} partitions ({args.data_dir})")


def _report(args, report, summary) -> int:
    if args.report:
        report.to_frame().to_csv(args.report, index=False)
        log.info("wrote %d problems to %s", len(report.problems), args.report)
    if not report.ok:
        sys.stderr.write(str(report) + "\n")
        return 1
    _out(summary())
    return 0


def dataset_summary(data_dir, customers: pd.DataFrame, events: pd.DataFrame, cfg) -> str:
    """A short human summary of a valid dataset."""
    ts = pd.to_datetime(events["ts"], utc=True)
    counts = events["event"].value_counts()
    sends = events[events["event"] == "sent"]
    lines = [
        f"dataset {data_dir}: valid",
        f"  customers: {len(customers):,}   events: {len(events):,}   "
        f"from {ts.min():%Y-%m-%d %H:%M} to {ts.max():%Y-%m-%d %H:%M} UTC",
        "  events: " + ", ".join(f"{e} {int(counts.get(e, 0)):,}" for e in
                                 ("sent", "delivered", "bounced", "opened", "clicked", "converted", "unsubscribed")),
        "  messages by channel: " + ", ".join(f"{k} {v:,}" for k, v in sends["channel"].value_counts().items()),
        "  messages by offer: " + ", ".join(f"{k} {v:,}" for k, v in sends["offer"].value_counts().items()),
        "  consent: " + ", ".join(
            f"{c} {customers[f'consent_{c}'].fillna(False).astype(bool).mean():.0%}" if f"consent_{c}" in customers
            else f"{c} 0%" for c in cfg.channel_names),
        f"  propensities logged on {sends['propensity'].notna().mean():.0%} of sends" if "propensity" in sends
        else "  no propensities logged (off-policy evaluation will need them)",
        *training_readiness(data_dir, ts, cfg),
    ]
    return "\n".join(lines)


def training_readiness(data_dir, ts: pd.Series, cfg) -> list[str]:
    """What `nextbest train` will make of valid data: its decision table, and whether the data is
    long enough (the same settings the training's time split reads), so that "valid" does not
    promise what training then refuses."""
    from nextbest.features.io import has_table

    tr, window = cfg.training, cfg.objective.attribution_window_hours
    span_days = (ts.max() - ts.min()) / pd.Timedelta(days=1) if len(ts) else 0.0
    need = pd.Timedelta(days=tr.warmup_days + tr.validation_days, hours=window) / pd.Timedelta(days=1)
    out = ["  decisions: the `logging_decisions` table (exact propensities)" if has_table(data_dir, "logging_decisions")
           else "  decisions: no `logging_decisions` table; training rebuilds them from the sent events and estimates "
                "the propensities (README 'Training data')"]
    if span_days <= need:
        out.append(f"  training: too short for `nextbest train`: the data spans {span_days:.1f} days; training needs more "
                   f"than {tr.warmup_days} + {tr.validation_days} days plus {window:g} hours (training.warmup_days, "
                   "training.validation_days, objective.attribution_window_hours)")
    else:
        out.append(f"  training: long enough for `nextbest train` ({span_days:.1f} days; more than {need:.1f} needed)")
    return out


# ---------------------------------------------------------------------------- features
def cmd_features_build(args) -> int:
    from nextbest.features.eventlog import EventLog
    from nextbest.features.examples import write_training_examples
    from nextbest.features.history import Population, engagement_history
    from nextbest.features.io import load_dataset
    from nextbest.features.validate import check

    cfg = _config(args)
    opts = dask_options(args)
    if opts is not None:
        return _features_build_on_dask(args, cfg, opts)
    t0 = time.perf_counter()
    customers, events = load_dataset(args.data_dir)
    customers, events = check(customers, events, cfg, files=_files(args.data_dir))
    t1 = time.perf_counter()
    if args.as_of:  # pretend it is `as_of`: later events exist for neither features nor outcomes
        as_of = pd.Timestamp(args.as_of, tz="UTC")
        events = events[events["ts"] < as_of]
    else:
        as_of = events["ts"].max().ceil("D")
    event_log = EventLog.build(customers, events, cfg)
    population = Population.from_log(event_log)
    snapshot = engagement_history(event_log, customers["customer_id"], as_of, population)
    t2 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    snapshot.reset_index().to_parquet(out, index=False)
    _out(f"engagement histories of {len(snapshot):,} customers as of {as_of:%Y-%m-%d %H:%M} UTC "
         f"({snapshot.shape[1]} columns) -> {out}   [load+validate {t1 - t0:.1f}s, features {t2 - t1:.1f}s]")
    _out(feature_table(snapshot))
    if args.examples:
        Path(args.examples).parent.mkdir(parents=True, exist_ok=True)
        rows = write_training_examples(event_log, args.examples, data_end=args.as_of, population=population,
                                       progress=not args.quiet)
        _out(f"training examples: {rows:,} sends -> {args.examples}")
    return 0


def _features_build_on_dask(args, cfg, opts) -> int:
    """``features build --dask``: the same snapshot, computed per partition (``features.partitioned``)."""
    from nextbest.features import partitioned

    t0 = time.perf_counter()
    with partitioned.dask_client(opts.scheduler, opts.workers) as client, partitioned.scratch_dir(opts) as scratch:
        parts = partitioned.partition(args.data_dir, client, opts.partitions, scratch)
        t1 = time.perf_counter()
        as_of = pd.Timestamp(args.as_of, tz="UTC") if args.as_of else None
        summary = partitioned.summarize(parts, client, cfg, as_of, progress=not args.quiet)
        as_of = as_of if as_of is not None else (summary.data_end - pd.Timedelta(milliseconds=1)).ceil("D")
        snapshot = partitioned.snapshot(parts, client, cfg, as_of, summary, progress=not args.quiet)
        rows = (partitioned.write_examples(parts, client, cfg, args.examples, summary, args.as_of and as_of,
                                           progress=not args.quiet) if args.examples else None)
    t2 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    snapshot.reset_index().to_parquet(out, index=False)
    _out(f"engagement histories of {len(snapshot):,} customers as of {as_of:%Y-%m-%d %H:%M} UTC "
         f"({snapshot.shape[1]} columns) -> {out}   [partition {t1 - t0:.1f}s ({parts.n} partitions, "
         f"{parts.events:,} events), validate+features {t2 - t1:.1f}s on Dask]")
    _out(feature_table(snapshot))
    if rows is not None:
        _out(f"training examples: {rows:,} sends -> {args.examples}/ (one Parquet file per partition)")
    return 0


def feature_table(snapshot: pd.DataFrame, rows: int = 5) -> str:
    """A readable excerpt: a few key features of the first customers, and their spread."""
    key = [c for c in ("all_sent_30d", "all_open_rate_30d", "email_open_rate_30d", "sms_open_rate_30d",
                       "push_open_rate_30d", "all_days_since_open", "top_open_hour", "all_sent_168h",
                       "order_value_90d", "tenure_days") if c in snapshot]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        head = snapshot[key].head(rows).to_string()
        spread = snapshot[key].describe().loc[["mean", "min", "50%", "max"]].to_string()
    return f"{head}\n\nacross all customers:\n{spread}"


def _files(data_dir):
    from nextbest.features.io import find_table, has_table

    names = ("customers", "events", "behaviour")
    return {name: str(find_table(data_dir, name)) for name in names if name != "behaviour" or has_table(data_dir, name)}


# ---------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """An argument parser that takes ``--config``; its subcommands, at any depth, are parsers of the
    same class (``add_subparsers`` builds them with ``type(self)``), so ``--config`` is accepted
    before or after the subcommand. Subcommands leave it unset unless given (the later one wins)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--config", default=argparse.SUPPRESS,
                          help="business config YAML merged over the defaults (features/defaults.yaml)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nextbest", description=__doc__.splitlines()[0])
    p.set_defaults(config=None)  # only the top parser has a default: no --config anywhere = the defaults
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    top = p.add_subparsers(dest="command", required=True)

    data = top.add_parser("data", help="generate or validate a data directory").add_subparsers(dest="sub", required=True)
    g = data.add_parser("generate", help="simulate customers and a logged message history")
    g.add_argument("--customers", type=_positive, default=10_000)
    g.add_argument("--days", type=_positive, default=90)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--end", help="last day of history (exclusive, UTC date); default 2026-10-01")
    g.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    g.add_argument("--out", required=True, help="data directory to write")
    g.set_defaults(func=cmd_data_generate)
    v = data.add_parser("validate", help="check a data directory against the data contract")
    v.add_argument("data_dir")
    v.add_argument("--report", help="also write every problem to this CSV")
    add_dask_arguments(v)
    v.set_defaults(func=cmd_data_validate)

    feats = top.add_parser("features", help="engagement histories").add_subparsers(dest="sub", required=True)
    b = feats.add_parser("build", help="validate a data directory and build engagement histories as of a time")
    b.add_argument("data_dir")
    b.add_argument("--out", required=True, help="Parquet file for the snapshot (one row per customer)")
    b.add_argument("--as-of", help="snapshot time (UTC): later events are ignored, for features and for the "
                                   "examples' outcomes alike; default: the end of the last event's day")
    b.add_argument("--examples", help="also write training examples (one row per send) to this Parquet file "
                                      "(with --dask: to this folder, one Parquet file per partition)")
    add_dask_arguments(b)
    b.set_defaults(func=cmd_features_build)
    from nextbest import cli_models, cli_retrain, cli_serve, cli_store, cli_ui

    cli_models.add_commands(top)
    cli_serve.add_commands(top)
    cli_ui.add_commands(top)
    cli_retrain.add_commands(top)
    from nextbest import cli_erase, cli_marketing
    cli_erase.add_commands(top)
    cli_marketing.add_commands(top)
    cli_store.add_commands(top)
    _show_defaults(p)
    return p


def add_dask_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dask`` and where it runs (``features.partitioned``; README "Scaling out")."""
    g = parser.add_argument_group("Dask (README 'Scaling out')")
    g.add_argument("--dask", action="store_true", help="compute per partition of the event log hashed by customer, "
                                                      "on Dask (same results as without)")
    g.add_argument("--scheduler", help="a Dask scheduler's address (tcp://host:8786); default: a LocalCluster")
    g.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    g.add_argument("--partitions", type=int, help="partitions of the event log (default: one per 2,000,000 events, "
                                                  "at least one per worker)")
    g.add_argument("--scratch", help="where the partitions are written (visible to every worker; default: a temporary "
                                     "directory)")


def dask_options(args):
    """The ``DaskOptions`` of ``--dask`` (None without it)."""
    from nextbest.features.partitioned import DaskOptions

    if not getattr(args, "dask", False):
        if getattr(args, "scheduler", None):
            raise SystemExit("--scheduler needs --dask")
        return None
    if args.workers < 1 or (args.partitions is not None and args.partitions < 1):
        raise SystemExit("--workers and --partitions must be at least 1")
    return DaskOptions(args.scheduler, args.workers, args.partitions, args.scratch)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's help names its default (``--help`` of any command), recursively."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
            continue
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or action.help == argparse.SUPPRESS
                or "%(default)" in (action.help or "") or "default" in (action.help or "")):
            continue
        action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call is noise here
    from nextbest.features.config import ConfigError
    from nextbest.features.validate import ValidationError

    try:
        return args.func(args)
    except (ConfigError, ValidationError, FileNotFoundError, ValueError, LookupError, PermissionError) as exc:
        sys.stderr.write(f"nextbest: {exc}\n")
        return 2
