"""The business config: one typed model of every section, validated once.

The defaults are written once, in ``defaults.yaml`` beside this module, and nowhere in code. A
deployment's YAML is merged over them (:func:`merge_config`): its ``channels:`` and ``offers:``
replace the default collections (so a deployment can drop a default channel or offer), every
other section is merged key by key, at any depth. The merged dict is then validated by pydantic
models that refuse unknown keys; an error names the key's full path (``channels.email.cost``)
and suggests the closest known key.

``channels`` and ``offers`` become the frozen dataclasses below (what the decision core reads);
the other sections are the pydantic models themselves (``config.training.lightgbm.num_leaves``).

The config lives in ``features`` (the lowest layer) because validation and the simulator need
the channel and offer lists, and nothing may import upward.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

DEFAULTS_FILE = "defaults.yaml"
COLLECTIONS = ("channels", "offers")  # a deployment's YAML replaces these whole

Int = Annotated[int, Strict()]      # no bools, no floats, no strings
Num = Annotated[float, Strict()]    # ints are fine, bools and strings are not
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]


class ConfigError(ValueError):
    """The business config is malformed; the message names the key."""


# ---------------------------------------------------------------------------- typed sections
class Section(BaseModel):
    """A config section: frozen, every key required unless documented, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = [f.alias or name for name, f in cls.model_fields.items()]
            unknown = [str(k) for k in data if k not in known]
            if unknown:
                raise PydanticCustomError("unknown_key", "unknown key(s) {keys}", {"keys": unknown, "known": known})
        return data


class Hours(Section):
    """Local clock hours ``start <= h < end`` (0-24); wraps midnight when ``start > end``."""

    start: Int = Field(ge=0, le=24)
    end: Int = Field(ge=0, le=24)


class Caps(Section):
    per_day: Int = Field(ge=0)
    per_week: Int = Field(ge=0)


class ChannelSpec(Section):
    cost: Num = Field(ge=0)
    quiet_hours: Hours
    caps: Caps


class Bounds(Section):
    """A customer clause: ``{min: x}``, ``{max: x}`` (inclusive) and/or ``{in: [...]}``."""

    min: Int | Num | None = None   # an int stays an int (``review_count >= 5`` in reasons)
    max: Int | Num | None = None
    in_: list[Any] | None = Field(None, alias="in")

    @model_validator(mode="after")
    def _not_empty(self) -> "Bounds":
        if self.min is None and self.max is None and self.in_ is None:
            raise ValueError("expected {min: x}, {max: x} or {in: [...]}")
        return self


class When(Section):
    context: dict[str, Any] = Field(default_factory=dict)   # key -> allowed value or values
    customer: dict[str, Bounds] = Field(default_factory=dict)


class OfferSpec(Section):
    kind: Literal["none", "percent", "fixed"]
    value: Num = Field(ge=0)
    channels: list[Str]
    valid_hours: Hours
    valid_for_hours: Num | None = Field(None, gt=0)  # how long the offer holds after the send; None: no end
    when: When | None = None  # no rules: always eligible


class ContactRules(Section):
    max_per_day: Int = Field(ge=0)
    max_per_week: Int = Field(ge=0)
    min_hours_between: Num = Field(ge=0)
    fallback_after_unanswered: Int = Field(ge=0)  # 0 disables the fallback rule


class Objective(Section):
    margin: Num = Field(ge=0)
    unsubscribe_cost: Num = Field(ge=0)
    attribution_window_hours: Num = Field(ge=1)


class FeatureSettings(Section):
    windows_days: tuple[Int, ...]
    fatigue_hours: tuple[Int, ...]
    prior_strength: Num = Field(ge=0)
    prior_days: Int = Field(ge=1)


class Customers(Section):
    default_timezone: Str


class LightGBMParams(Section):
    """LightGBM parameters a deployment may set; an absent one keeps LightGBM's own default."""

    n_estimators: Int | None = Field(None, ge=1)
    learning_rate: Num | None = Field(None, gt=0)
    num_leaves: Int | None = Field(None, ge=2)
    min_child_samples: Int | None = Field(None, ge=1)
    subsample: Num | None = Field(None, gt=0, le=1)
    subsample_freq: Int | None = Field(None, ge=0)
    colsample_bytree: Num | None = Field(None, gt=0, le=1)
    reg_lambda: Num | None = Field(None, ge=0)
    reg_alpha: Num | None = Field(None, ge=0)
    max_bin: Int | None = Field(None, ge=2)
    min_split_gain: Num | None = Field(None, ge=0)
    max_depth: Int | None = None

    def params(self) -> dict:
        """The parameters that are set, as LightGBM keyword arguments."""
        return self.model_dump(exclude_none=True)


class EstimatedPropensity(Section):
    """Decisions and propensities without a ``logging_decisions`` table (training/propensity.py)."""

    control_hour: Int = Field(ge=0, le=23)
    clip: Num = Field(gt=0, lt=1)
    folds: Int = Field(ge=2)
    max_rows: Int = Field(ge=1000)
    lightgbm: LightGBMParams


class OffPolicyHeadline(Section):
    """The off-policy headline of every training run (training/tracking.py)."""

    max_rounds: Int = Field(ge=100)
    n_boot: Int = Field(ge=100)


class Training(Section):
    warmup_days: Int = Field(ge=0)
    validation_days: Int = Field(ge=1)
    max_rows_per_model: Int = Field(ge=1000)
    early_stopping_rounds: Int = Field(ge=1)
    uplift_mode: Str          # checked against the policy's modes by TrainingSettings / DecisionPolicy
    response_funnel: Literal["auto", "on", "off"]
    lightgbm: LightGBMParams
    estimated_propensity: EstimatedPropensity
    offpolicy_headline: OffPolicyHeadline


class UpliftSection(Section):
    lightgbm: LightGBMParams          # where the caller passes no parameters (a plain table)
    effect_lightgbm: LightGBMParams   # the DR-learner's effect models, over the outcome models' parameters
    early_stopping_rounds: Int = Field(ge=1)


class OffPolicySection(Section):
    reward_window_hours: Num = Field(gt=0)
    reward_model: LightGBMParams
    obd_reward_model: LightGBMParams  # over reward_model
    logged_learner: LightGBMParams


class RetrainSection(Section):
    min_gain: Num
    eval_days: Int = Field(ge=1)
    max_rounds: Int = Field(ge=2)
    n_boot: Int = Field(ge=100)
    gate: list[Literal["dr", "snips"]] = Field(min_length=1)
    schedule_hours: Num = Field(ge=0)


class ExplorationSection(Section):
    method: Str               # checked against the methods by decision.exploration.Exploration
    epsilon: Num
    temperature: Num
    samples: Int
    budget: Num
    control_share: Num
    control_salt: Str


class OnlineSection(Section):
    prior_strength: Num = Field(gt=0)
    noise_sd: Num = Field(gt=0)
    learn_after_hours: Num = Field(ge=0)
    half_life_days: Num = Field(ge=0)
    change_z: Num = Field(ge=0)
    change_forget: Num = Field(ge=0, le=1)
    calibration_strength: Num = Field(gt=0)
    calibration_half_life_days: Num = Field(ge=0)
    learn_profit: Bool


class DecisionSection(Section):
    horizon_hours: Num = Field(gt=0)
    trigger_horizon_hours: Num = Field(gt=0)


class AuthSection(Section):
    required: Bool            # false serves without API keys (the service logs a warning at start)
    keys_file: Str | None = None


class ServingSection(Section):
    store_url: Str
    log_dir: Str
    log_fsync: Bool
    workers: Int = Field(ge=1)
    reload_seconds: Num = Field(gt=0)
    learner_sync_seconds: Num = Field(gt=0)
    micro_batch_ms: Num = Field(ge=0)
    micro_batch_max: Int = Field(ge=1)
    batch_chunk: Int = Field(ge=0)
    live_history: Bool
    max_clock_skew_days: Num = Field(gt=0)
    auth: AuthSection
    max_body_bytes: Int = Field(ge=1024)
    max_context_keys: Int = Field(ge=0)
    max_context_bytes: Int = Field(ge=2)
    max_order_value: Num = Field(gt=0)
    log_context_keys: list[Str]
    log_retention_days: Num = Field(gt=0)


class ConfigSpec(Section):
    """The whole merged config, as written in YAML."""

    channels: dict[Str, ChannelSpec]
    offers: dict[Str, OfferSpec]
    contact_rules: ContactRules
    objective: Objective
    features: FeatureSettings
    customers: Customers
    decision: DecisionSection
    training: Training
    uplift: UpliftSection
    offpolicy: OffPolicySection
    retrain: RetrainSection
    exploration: ExplorationSection
    online: OnlineSection
    serving: ServingSection


# ---------------------------------------------------------------------------- what the decision core reads
@dataclass(frozen=True)
class HourWindow:
    """A window of local clock hours ``start <= h < end``; wraps midnight when ``start > end``."""

    start: int
    end: int

    def contains(self, hour):
        """Whether local ``hour`` (int or integer array) lies in the window."""
        hour = np.asarray(hour)
        if self.start <= self.end:  # start == end is an empty window
            return (hour >= self.start) & (hour < self.end)
        return (hour >= self.start) | (hour < self.end)

    @classmethod
    def of(cls, hours: Hours) -> "HourWindow":
        return cls(0 if hours.start == 24 else hours.start, hours.end)


@dataclass(frozen=True)
class Channel:
    name: str
    cost: float
    quiet_hours: HourWindow
    cap_per_day: int
    cap_per_week: int


@dataclass(frozen=True)
class Condition:
    """An eligibility rule: every clause must hold.

    ``context``: request context key -> allowed values (``{trigger: [cart_abandoned]}``); a missing
    key fails. ``customer``: customer feature or attribute -> bounds ``{min, max}`` (inclusive) or
    allowed values ``{in: [...]}``; a missing value fails.
    """

    context: dict[str, tuple] = field(default_factory=dict)
    customer: dict[str, dict] = field(default_factory=dict)

    @property
    def always(self) -> bool:
        return not self.context and not self.customer

    def describe(self) -> str:
        parts = [f"context.{k} in {list(v)}" for k, v in self.context.items()]
        for k, b in self.customer.items():
            parts += [f"{k} >= {b['min']}"] if "min" in b else []
            parts += [f"{k} <= {b['max']}"] if "max" in b else []
            parts += [f"{k} in {list(b['in'])}"] if "in" in b else []
        return " and ".join(parts) or "always"

    @classmethod
    def of(cls, when: When | None) -> "Condition":
        if when is None:
            return cls()
        context = {str(k): tuple(str(v) for v in (vs if isinstance(vs, list) else [vs])) for k, vs in when.context.items()}
        customer = {k: b.model_dump(by_alias=True, exclude_none=True) for k, b in when.customer.items()}
        return cls(context, customer)


@dataclass(frozen=True)
class Offer:
    name: str
    kind: str  # none | percent | fixed
    value: float
    channels: tuple[str, ...]
    valid_hours: HourWindow
    when: Condition = field(default_factory=Condition)
    valid_for_hours: float | None = None

    def cost(self, order_value):
        """What the offer costs us on an order of ``order_value`` (scalar or array)."""
        if self.kind == "percent":
            return self.value * order_value
        if self.kind == "fixed":
            return self.value + 0.0 * order_value
        return 0.0 * order_value


@dataclass(frozen=True)
class Config:
    """The validated business config; ``raw`` is the merged plain dict it was built from."""

    channels: dict[str, Channel]
    offers: dict[str, Offer]
    spec: ConfigSpec  # every other section, typed: ``config.training``, ``config.online``, ... read through it
    raw: dict

    def __getattr__(self, name: str):
        """The typed sections of :class:`ConfigSpec` (``contact_rules``, ``objective``, ``features``,
        ``customers``, ``decision``, ``training``, ``uplift``, ``offpolicy``, ``retrain``, ``exploration``,
        ``online``, ``serving``)."""
        if name != "spec" and name in ConfigSpec.model_fields:
            return getattr(self.spec, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(self.channels)

    @property
    def offer_names(self) -> tuple[str, ...]:
        return tuple(self.offers)

    @property
    def default_timezone(self) -> str:
        return self.customers.default_timezone

    def to_yaml(self) -> str:
        """The merged config as YAML; ``parse_config(yaml.safe_load(text))`` gives this config back."""
        return yaml.safe_dump(self.raw, sort_keys=False)


# ---------------------------------------------------------------------------- loading
def merge_config(base: dict, override: dict) -> dict:
    """``override`` over ``base``: top-level ``channels`` and ``offers`` are replaced whole,
    every other mapping is merged key by key at any depth."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in COLLECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else copy.deepcopy(value)
    return out


def default_config_dict() -> dict:
    text = resources.files("nextbest.features").joinpath(DEFAULTS_FILE).read_text()
    return yaml.safe_load(text)


def _messages(exc: ValidationError) -> list[str]:
    """One ``path: problem`` line per pydantic error."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        if err["type"] == "unknown_key":
            for key in err["ctx"]["keys"]:
                near = difflib.get_close_matches(key, err["ctx"]["known"], n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(err['ctx']['known'])}"
                out.append(f"{'.'.join([*loc, key])}: unknown key{hint}")
        elif err["type"] == "missing":
            out.append(f"{'.'.join(loc)}: missing")
        elif err["type"] == "value_error":
            out.append(f"{'.'.join(loc) or 'config'}: {err['ctx']['error']}, got {err['input']!r}")
        else:
            out.append(f"{'.'.join(loc) or 'config'}: {err['msg'][0].lower()}{err['msg'][1:]}, got {err['input']!r}")
    return out


def parse_config(raw: dict) -> Config:
    """Validate a full merged config dict into a :class:`Config` (raises :class:`ConfigError`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping, got {raw!r}")
    try:
        spec = ConfigSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_messages(exc))) from None
    channels = {name: Channel(name, c.cost, HourWindow.of(c.quiet_hours), c.caps.per_day, c.caps.per_week)
                for name, c in spec.channels.items()}
    if not channels:
        raise ConfigError("channels: at least one channel is needed")
    offers = {}
    for name, o in spec.offers.items():
        unknown = sorted(set(o.channels) - set(channels))
        if unknown:
            raise ConfigError(f"offers.{name}.channels: unknown channel(s) {unknown}; configured: {list(channels)}")
        if o.kind == "percent" and o.value > 1:
            raise ConfigError(f"offers.{name}.value: a percent offer is a share in [0, 1], got {o.value}")
        if name == "none" and o.valid_for_hours is not None:
            raise ConfigError("offers.none.valid_for_hours: a message without an offer has nothing that expires")
        offers[name] = Offer(name, o.kind, o.value, tuple(o.channels), HourWindow.of(o.valid_hours),
                             Condition.of(o.when), o.valid_for_hours)
    if "none" not in offers:
        raise ConfigError("offers: the offer `none` (a message without an offer) must exist")
    windows = spec.features.windows_days
    if not windows or sorted(windows) != list(windows) or windows[0] <= 0:
        raise ConfigError(f"features.windows_days: expected increasing positive days, got {list(windows)}")
    if any(h <= 0 for h in spec.features.fatigue_hours):
        raise ConfigError(f"features.fatigue_hours: expected positive hours, got {list(spec.features.fatigue_hours)}")
    return Config(channels=channels, offers=offers, spec=spec, raw=copy.deepcopy(raw))


def load_config(path: str | Path | None = None) -> Config:
    """Load the defaults, merge the YAML at ``path`` over them (if given) and validate."""
    raw = default_config_dict()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            override = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:  # one line: where and what, without the parser's traceback
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{where} not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(override, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        raw = merge_config(raw, override)
    return parse_config(raw)

