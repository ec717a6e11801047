"""``nextbest store rebuild``: the serving store rebuilt from the decision log (``serving.rebuild``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from nextbest.cli import _out

log = logging.getLogger("nextbest")


def store_settings(args):
    """The serving settings ``nextbest serve`` would use with these arguments."""
    from nextbest.decision import registry
    from nextbest.serving.settings import ServeSettings

    env = dict(os.environ)
    env["NEXTBEST_HOME"] = str(registry.project_dir())
    env["NEXTBEST_DATA_DIR"] = str(Path(args.data_dir).resolve())
    for var, value in (("NEXTBEST_CONFIG", args.config and str(Path(args.config).resolve())),
                       ("NEXTBEST_STORE_URL", args.store),
                       ("NEXTBEST_LOG_DIR", args.log_dir and str(Path(args.log_dir).resolve()))):
        if value:
            env[var] = value
    return ServeSettings.from_env(env)


def open_for_rebuild(url: str):
    """The store at ``url``; an SQLite file that was deleted leaves its ``-wal`` and ``-shm``
    files behind, which a new file must not replay: they are removed first."""
    from nextbest.serving.store import open_store

    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.exists():
            for stale in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                if stale.exists():
                    log.info("removing %s, left behind by a deleted store file", stale)
                    stale.unlink()
    return open_store(url)


def cmd_store_rebuild(args) -> int:
    from nextbest.decision import registry
    from nextbest.serving.rebuild import rebuild
    from nextbest.serving.snapshot import Snapshot

    if not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"data directory {args.data_dir} does not exist")
    settings = store_settings(args)
    if not Path(settings.log_dir).is_dir():
        raise FileNotFoundError(f"decision log {settings.log_dir} does not exist")
    policy = registry.load_champion()
    snapshot = Snapshot(settings.data_dir, policy.config)
    store = open_for_rebuild(settings.store_url)
    counts = rebuild(store, settings.log_dir, snapshot, policy.config, policy.online)
    store.close()
    _out(f"rebuilt {settings.store_url} from {settings.log_dir}: {counts['contact']:,} contact states, "
         f"{counts['decision']:,} decision records ({counts['queue']:,} waiting for the learner), "
         f"{counts['request']:,} idempotency keys, {counts['matured']:,} decisions in the learner's statistics")
    return 0


def add_commands(top) -> None:
    st = top.add_parser("store", help="the service's state store").add_subparsers(dest="sub", required=True)
    r = st.add_parser("rebuild", help="rebuild the store (contact states, decision records, idempotency keys, "
                                      "learner statistics) from the decision log; the service refuses (503) until "
                                      "its store matches its log")
    r.add_argument("data_dir", help="the data directory the service runs on (contact history before the log)")
    r.add_argument("--store", help="state store URL (default: NEXTBEST_STORE_URL, else the config's serving.store_url)")
    r.add_argument("--log-dir", help="decision log directory (default: the config's serving.log_dir)")
    r.set_defaults(func=cmd_store_rebuild)
