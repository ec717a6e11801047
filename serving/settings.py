"""Serving settings: the config's ``serving`` section, overridden by environment variables.

``nextbest serve`` sets the variables for the BentoML worker processes it starts:
``NEXTBEST_DATA_DIR`` (customers and events the features come from, required),
``NEXTBEST_CONFIG`` (the deployment's YAML, optional), ``NEXTBEST_STORE_URL``,
``NEXTBEST_LOG_DIR`` and ``NEXTBEST_HOME`` (where relative paths and the MLflow store live).
API keys: ``NEXTBEST_API_KEYS_FILE`` (over ``serving.auth.keys_file``) and ``NEXTBEST_API_KEYS``
(``serving.auth``; read by ``serving.auth.Keys``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from nextbest.features.config import ConfigError, load_config


@dataclass(frozen=True)
class ServeSettings:
    data_dir: str
    store_url: str
    log_dir: str
    log_fsync: bool
    reload_seconds: float
    learner_sync_seconds: float
    micro_batch_ms: float
    micro_batch_max: int
    batch_chunk: int
    workers: int
    max_clock_skew_days: float
    auth_required: bool
    keys_file: str | None
    max_body_bytes: int
    max_context_keys: int
    max_context_bytes: int
    max_order_value: float
    log_context_keys: tuple[str, ...]
    log_retention_days: float
    home: str = "."                     # NEXTBEST_HOME, resolved
    config_path: str | None = None      # NEXTBEST_CONFIG
    retrain_schedule_hours: float = 0.0  # retrain.schedule_hours (serving.retrain_schedule)

    @classmethod
    def from_env(cls, env=None) -> "ServeSettings":
        env = os.environ if env is None else env
        cfg = load_config(env.get("NEXTBEST_CONFIG") or None)
        home = Path(env.get("NEXTBEST_HOME", ".")).resolve()
        s = cfg.serving  # typed and range-checked by the config
        store = env.get("NEXTBEST_STORE_URL") or s.store_url
        if store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).is_absolute():
            store = f"sqlite:///{home / store[len('sqlite:///'):]}"
        try:
            workers = int(env.get("NEXTBEST_WORKERS") or s.workers)
        except ValueError:
            raise ConfigError(f"NEXTBEST_WORKERS: expected an integer, got {env.get('NEXTBEST_WORKERS')!r}") from None
        out = cls(
            data_dir=env.get("NEXTBEST_DATA_DIR", ""),
            store_url=store,
            log_dir=str(home / (env.get("NEXTBEST_LOG_DIR") or s.log_dir)),
            log_fsync=s.log_fsync,
            reload_seconds=s.reload_seconds,
            learner_sync_seconds=s.learner_sync_seconds,
            micro_batch_ms=s.micro_batch_ms,
            micro_batch_max=s.micro_batch_max,
            batch_chunk=s.batch_chunk,
            workers=workers,
            max_clock_skew_days=s.max_clock_skew_days,
            auth_required=s.auth.required,
            keys_file=_path(home, env.get("NEXTBEST_API_KEYS_FILE") or s.auth.keys_file),
            max_body_bytes=s.max_body_bytes,
            max_context_keys=s.max_context_keys,
            max_context_bytes=s.max_context_bytes,
            max_order_value=s.max_order_value,
            log_context_keys=tuple(s.log_context_keys),
            log_retention_days=s.log_retention_days,
            home=str(home),
            config_path=env.get("NEXTBEST_CONFIG") or None,
            retrain_schedule_hours=float(cfg.retrain.schedule_hours),
        )
        if not out.data_dir:
            raise ConfigError("NEXTBEST_DATA_DIR must name the data directory the service takes customers "
                              "and their histories from (`nextbest serve DATA_DIR` sets it)")
        if out.reload_seconds <= 0 or out.learner_sync_seconds <= 0 or out.micro_batch_max < 1 or out.workers < 1:
            raise ConfigError("serving: reload_seconds and learner_sync_seconds must be positive, "
                              "micro_batch_max and workers at least 1")
        return out

    def with_(self, **changes) -> "ServeSettings":
        return replace(self, **changes)


def _path(home: Path, path: str | None) -> str | None:
    """A configured file path; relative ones are under ``NEXTBEST_HOME``."""
    return None if not path else str(home / path)
