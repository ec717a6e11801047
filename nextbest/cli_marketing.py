"""Commands for marketers: ``whatif`` (changed rules, estimated on the logged decisions) and
``optin`` (whom to ask for consent on each channel)."""

from __future__ import annotations

import logging
from pathlib import Path

from nextbest.cli import _out

log = logging.getLogger(__name__)


def cmd_whatif(args) -> int:
    from nextbest.decision import registry
    from nextbest.features.config import load_config
    from nextbest.training.whatif import run_what_if

    if not getattr(args, "config", None):
        raise SystemExit("whatif needs the new rules: nextbest whatif DATA_DIR --config new_rules.yaml")
    new = load_config(args.config)
    current = load_config(args.current) if args.current else None
    res = run_what_if(args.data_dir, new, Path(args.config).name, args.version, current, days=args.days,
                      max_rounds=args.max_rounds, n_boot=args.n_boot, seed=args.seed)
    r = res["result"]
    _out(f"version {res['version']} replayed on {r.rounds:,} logged decisions under "
         f"{'the current rules (' + args.current + ')' if args.current else 'its own rules'} and {args.config}:")
    _out(r.table.round(1).to_string())
    _out(f"(per 1,000 decisions; ci_low/ci_high: 95% interval of the difference; effective sample sizes "
         f"{r.ess_current:,.0f} current, {r.ess_new:,.0f} new)")
    _out(r.headline())
    _out(f"MLflow run {res['run_id']} (whatif/whatif.html); MLflow UI: {registry.ui_hint()}")
    return 0


def cmd_optin(args) -> int:
    import pandas as pd

    from nextbest.decision import registry
    from nextbest.decision.optin import optin_gains
    from nextbest.features.eventlog import EventLog
    from nextbest.features.history import Population, engagement_history
    from nextbest.features.io import load_dataset
    from nextbest.features.validate import check

    policy = registry.load_version(args.version) if args.version else registry.load_champion()
    customers, events = check(*load_dataset(args.data_dir), policy.config)
    now = pd.Timestamp(args.now, tz="UTC") if args.now else events["ts"].max().ceil("D")
    log_ = EventLog.build(customers, events[events["ts"] < now], policy.config)
    feats = engagement_history(log_, customers["customer_id"].astype(str).to_numpy(), now, Population.from_log(log_))
    gains = optin_gains(policy, feats, now, args.channel)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        gains.to_csv(args.out, index=False)
    _out(f"opt-in suggestions of {policy.version} at {now:%Y-%m-%d %H:%M} UTC (gain: expected extra profit per "
         "decision if the customer consented; offline scores)")
    for ch, g in gains.groupby("channel", sort=False):
        top = g.head(args.top)
        _out(f"\n{ch}: {len(g):,} customers without consent; {int((g['gain'] > 0).sum()):,} would gain; "
             f"the top {len(top)} would add {top['gain'].sum():,.2f} per decision round")
        with pd.option_context("display.width", 200, "display.precision", 4):
            _out(top.drop(columns="channel").to_string(index=False))
    if gains.empty:
        _out("every customer has consented to every channel asked about (or unsubscribed from it)")
    if args.out:
        _out(f"\nall {len(gains):,} rows -> {args.out}")
    return 0


def add_commands(top) -> None:
    from nextbest.cli_models import add_logged_rounds_arguments

    w = top.add_parser("whatif", help="what changed rules (--config NEW.yaml) would have done: the champion replayed "
                                       "on the logged decisions under its rules and the new ones, estimated "
                                       "off-policy (profit, unsubscribes, messages per channel; logged to MLflow)")
    w.add_argument("data_dir")
    w.add_argument("--current", help="the current rules (default: the version's own config)")
    w.add_argument("--version", help="registered version to replay (default: the champion)")
    add_logged_rounds_arguments(w)
    w.set_defaults(func=cmd_whatif)

    o = top.add_parser("optin", help="for each channel, the customers whose consent would add the most expected "
                                      "value (the champion's counterfactual scores)")
    o.add_argument("data_dir")
    o.add_argument("--channel", action="append", help="only this channel (repeatable; default: every channel)")
    o.add_argument("--top", type=int, default=10, help="customers shown per channel")
    o.add_argument("--out", help="write every (customer, channel) row to this CSV")
    o.add_argument("--now", help="as of this time (UTC; default: the end of the last event's day)")
    o.add_argument("--version", help="registered version (default: the champion)")
    o.set_defaults(func=cmd_optin)
