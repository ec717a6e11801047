"""``nextbest erase CUSTOMER...`` (a customer's right to erasure) and ``nextbest erase --expired``
(the decision log's retention), thin calls into ``serving.privacy``."""

from __future__ import annotations

import json
import os

from nextbest.cli import _out


def cmd_erase(args) -> int:
    from nextbest.decision import registry
    from nextbest.serving.privacy import erase, expire
    from nextbest.serving.settings import ServeSettings
    from nextbest.serving.store import open_store

    if not args.customers and not args.expired:
        raise ValueError("name the customers to erase, or --expired for the log's retention")
    env = {"NEXTBEST_DATA_DIR": "-", "NEXTBEST_HOME": str(registry.project_dir()),
           **({"NEXTBEST_CONFIG": args.config} if args.config else {})}
    for var, value in (("NEXTBEST_STORE_URL", args.store), ("NEXTBEST_LOG_DIR", args.log_dir)):
        if value:
            env[var] = value
    settings = ServeSettings.from_env({**os.environ, **env})
    if args.customers:
        store = open_store(settings.store_url)
        try:
            for receipt in erase(args.customers, store, settings.log_dir):
                _out(json.dumps(receipt))
        finally:
            store.close()
    if args.expired:
        out = expire(settings.log_dir, settings.log_retention_days)
        _out(f"decision log {settings.log_dir}: deleted {len(out['days_deleted'])} day(s) older than "
             f"{settings.log_retention_days:g} days; removed {out['log_lines_erased']} line(s) of erased customers")
    return 0


def add_commands(top) -> None:
    e = top.add_parser("erase", help="erase customers from the service's store, decision log and future exports; "
                                     "--expired applies the log's retention")
    e.add_argument("customers", nargs="*", metavar="CUSTOMER", help="customer ids to erase (a receipt is written to "
                                                                    "LOG_DIR/erasures.jsonl and printed)")
    e.add_argument("--expired", action="store_true", help="delete decision log days older than "
                                                          "serving.log_retention_days (schedule it daily)")
    e.add_argument("--store", help="state store URL (default: NEXTBEST_STORE_URL, else serving.store_url)")
    e.add_argument("--log-dir", help="decision log directory (default: NEXTBEST_LOG_DIR, else serving.log_dir)")
    e.set_defaults(func=cmd_erase)
