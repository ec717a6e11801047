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

    @classmethod
    def from_config(cls, config: Config) -> "TrainingSettings":
        t = config.training  # typed and range-checked by the config
        out = cls(t.warmup_days, t.validation_days, t.max_rows_per_model, t.early_stopping_rounds, t.uplift_mode,
                  t.lightgbm.params())
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


def load_tuned_params(path: Path) -> dict:
    """The best parameters saved by ``nextbest tune`` (empty if there are none yet)."""
    if not path.exists():
        return {}
    params = json.loads(path.read_text())["params"]
    log.info("using tuned LightGBM parameters from %s", path)
    return params
