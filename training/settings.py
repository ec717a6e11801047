"""Training settings: the ``training`` section of the business config, validated once."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from nextbest.features.config import Config, ConfigError, LightGBMParams

log = logging.getLogger(__name__)

# LightGBM parameters a deployment may set (the ones `nextbest tune` searches, and a few more)
LIGHTGBM_KEYS = tuple(LightGBMParams.model_fields)


@dataclass(frozen=True)
class TrainingSettings:
    warmup_days: int
    validation_days: int
    max_rows_per_model: int
    early_stopping_rounds: int
    uplift_mode: str
    lightgbm: dict
    response_funnel: str = "auto"

    @classmethod
    def from_config(cls, config: Config) -> "TrainingSettings":
        t = config.training  # typed and range-checked by the config
        out = cls(t.warmup_days, t.validation_days, t.max_rows_per_model, t.early_stopping_rounds, t.uplift_mode,
                  t.lightgbm.params(), t.response_funnel)
        return out.with_lightgbm({})

    def with_lightgbm(self, params: dict) -> "TrainingSettings":
        """A copy with ``params`` merged over the LightGBM parameters (unknown keys are an error)."""
        merged = {**self.lightgbm, **params}
        unknown = sorted(set(merged) - set(LIGHTGBM_KEYS))
        if unknown:
            raise ConfigError(f"training.lightgbm: unknown parameter(s) {unknown}; known: {list(LIGHTGBM_KEYS)}")
        from nextbest.decision.policy import UPLIFT_MODES

        if self.uplift_mode not in UPLIFT_MODES:
            raise ConfigError(f"training.uplift_mode: expected one of {UPLIFT_MODES}, got {self.uplift_mode!r}")
        if self.validation_days < 1 or self.warmup_days < 0 or self.max_rows_per_model < 1000:
            raise ConfigError("training: validation_days >= 1, warmup_days >= 0 and max_rows_per_model >= 1000")
        return replace(self, lightgbm=merged)


def data_fingerprint(data_dir: str | Path) -> str:
    """SHA-256 over the data directory's table files (names and bytes), 16 hex digits: every
    training run is tagged with it, and tuned parameters record the data they were tuned on."""
    import hashlib

    h = hashlib.sha256()
    files = sorted(p for p in Path(data_dir).rglob("*") if p.is_file() and "truth" not in p.parts)
    for p in files:
        h.update(str(p.relative_to(data_dir)).encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def load_tuned_params(path: Path, data_dir: str | Path | None = None, explicit: bool = False) -> dict:
    """The best parameters saved by ``nextbest tune`` (empty if there are none yet).

    Parameters tuned on other data than ``data_dir`` are not applied unless the file was named
    explicitly (``--params``): settings tuned on one dataset may not suit another (a 1,000-customer
    set trained with parameters tuned on 50,000 customers can fall to an AUC of 0.5), so they are
    ignored with a warning that says how to use them anyway.
    """
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    params = saved["params"]
    tuned_on = saved.get("data_fingerprint")
    if data_dir is not None and not explicit and tuned_on != data_fingerprint(data_dir):
        log.warning("ignoring the tuned LightGBM parameters in %s: they were tuned on other data (%s); "
                    "pass --params %s to use them anyway, or run `nextbest tune` on this data",
                    path, saved.get("data_dir", "unknown"), path)
        return {}
    log.info("using tuned LightGBM parameters from %s (tuned on %s)", path, saved.get("data_dir", "unknown"))
    return params
