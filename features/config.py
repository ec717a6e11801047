"""The business config: channels, offers, contact rules, the objective and feature settings.

The defaults are written once, in ``defaults.yaml`` beside this module. A deployment's YAML is
merged over them key by key (``load_config(path)``), then validated once into frozen dataclasses.

The config lives in ``features`` (the lowest layer) because validation and the simulator need
the channel and offer lists, and nothing may import upward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFAULTS_FILE = "defaults.yaml"


class ConfigError(ValueError):
    """The business config is malformed; the message names the key."""


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


@dataclass(frozen=True)
class Offer:
    name: str
    kind: str  # none | percent | fixed
    value: float
    channels: tuple[str, ...]
    valid_hours: HourWindow
    when: Condition = field(default_factory=Condition)

    def cost(self, order_value):
        """What the offer costs us on an order of ``order_value`` (scalar or array)."""
        if self.kind == "percent":
            return self.value * order_value
        if self.kind == "fixed":
            return self.value + 0.0 * order_value
        return 0.0 * order_value


@dataclass(frozen=True)
class ContactRules:
    max_per_day: int
    max_per_week: int
    min_hours_between: float
    fallback_after_unanswered: int  # 0 disables the fallback rule


@dataclass(frozen=True)
class Objective:
    margin: float
    unsubscribe_cost: float
    attribution_window_hours: float


@dataclass(frozen=True)
class FeatureSettings:
    windows_days: tuple[int, ...]
    fatigue_hours: tuple[int, ...]
    prior_strength: float
    prior_days: int


@dataclass(frozen=True)
class Config:
    channels: dict[str, Channel]
    offers: dict[str, Offer]
    contact_rules: ContactRules
    objective: Objective
    features: FeatureSettings
    default_timezone: str
    raw: dict

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(self.channels)

    @property
    def offer_names(self) -> tuple[str, ...]:
        return tuple(self.offers)


def section(config: Config, name: str):
    """Read the ``name`` section of ``config`` as a dataclass-building context: yields the raw dict and
    turns a missing key or a bad value into a ConfigError naming ``name.key``.

    Usage: ``with section(config, "online") as raw: return Settings(float(raw["x"]), ...)``
    """
    return _Section(config, name)


class _Section:
    def __init__(self, config: Config, name: str):
        self.name = name
        self.raw = config.raw.get(name)

    def __enter__(self) -> dict:
        if not isinstance(self.raw, dict):
            raise ConfigError(f"{self.name}: missing section")
        return self.raw

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, KeyError):
            raise ConfigError(f"missing config key {self.name}.{exc.args[0]}") from None
        if isinstance(exc, (TypeError, ValueError)) and not isinstance(exc, ConfigError):
            raise ConfigError(f"{self.name}: {exc}") from None
        return False


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_config_dict() -> dict:
    text = resources.files("nextbest.features").joinpath(DEFAULTS_FILE).read_text()
    return yaml.safe_load(text)


def _hours(raw: Any, where: str) -> HourWindow:
    if not isinstance(raw, dict) or set(raw) != {"start", "end"}:
        raise ConfigError(f"{where}: expected {{start: H, end: H}}, got {raw!r}")
    start, end = raw["start"], raw["end"]
    for name, h in (("start", start), ("end", end)):
        if not isinstance(h, int) or not 0 <= h <= 24:
            raise ConfigError(f"{where}.{name}: expected a local hour 0-24, got {h!r}")
    return HourWindow(start % 24 if start == 24 else start, end)


def _number(raw: Any, where: str, minimum: float = 0.0) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < minimum:
        raise ConfigError(f"{where}: expected a number >= {minimum}, got {raw!r}")
    return float(raw)


def _condition(raw: Any, where: str) -> Condition:
    if raw is None:
        return Condition()
    if not isinstance(raw, dict) or set(raw) - {"context", "customer"}:
        raise ConfigError(f"{where}: expected {{context: ..., customer: ...}}, got {raw!r}")
    context = {}
    for key, values in (raw.get("context") or {}).items():
        values = values if isinstance(values, list) else [values]
        context[str(key)] = tuple(str(v) for v in values)
    customer = {}
    for key, bounds in (raw.get("customer") or {}).items():
        if not isinstance(bounds, dict) or not bounds or set(bounds) - {"min", "max", "in"}:
            raise ConfigError(f"{where}.customer.{key}: expected {{min: x}}, {{max: x}} or {{in: [...]}}, got {bounds!r}")
        for b in ("min", "max"):
            if b in bounds:
                _number(bounds[b], f"{where}.customer.{key}.{b}", minimum=-float("inf"))
        if "in" in bounds and not isinstance(bounds["in"], list):
            raise ConfigError(f"{where}.customer.{key}.in: expected a list, got {bounds['in']!r}")
        customer[str(key)] = dict(bounds)
    return Condition(context, customer)


def parse_config(raw: dict) -> Config:
    """Validate a merged config dict into a :class:`Config`."""
    try:
        channels = {
            name: Channel(
                name=name,
                cost=_number(c["cost"], f"channels.{name}.cost"),
                quiet_hours=_hours(c["quiet_hours"], f"channels.{name}.quiet_hours"),
                cap_per_day=int(_number(c["caps"]["per_day"], f"channels.{name}.caps.per_day")),
                cap_per_week=int(_number(c["caps"]["per_week"], f"channels.{name}.caps.per_week")),
            )
            for name, c in raw["channels"].items()
        }
        if not channels:
            raise ConfigError("channels: at least one channel is needed")
        offers = {}
        for name, o in raw["offers"].items():
            if o["kind"] not in ("none", "percent", "fixed"):
                raise ConfigError(f"offers.{name}.kind: expected none, percent or fixed, got {o['kind']!r}")
            unknown = sorted(set(o["channels"]) - set(channels))
            if unknown:
                raise ConfigError(f"offers.{name}.channels: unknown channel(s) {unknown}")
            value = _number(o["value"], f"offers.{name}.value")
            if o["kind"] == "percent" and value > 1:
                raise ConfigError(f"offers.{name}.value: a percent offer is a share in [0, 1], got {value}")
            offers[name] = Offer(name, o["kind"], value, tuple(o["channels"]),
                                 _hours(o["valid_hours"], f"offers.{name}.valid_hours"),
                                 _condition(o.get("when"), f"offers.{name}.when"))
        if "none" not in offers:
            raise ConfigError("offers: the offer `none` (a message without an offer) must exist")
        cr, ob, fs = raw["contact_rules"], raw["objective"], raw["features"]
        windows = tuple(int(w) for w in fs["windows_days"])
        if not windows or sorted(windows) != list(windows) or windows[0] <= 0:
            raise ConfigError(f"features.windows_days: expected increasing positive days, got {windows}")
        return Config(
            channels=channels,
            offers=offers,
            contact_rules=ContactRules(
                int(_number(cr["max_per_day"], "contact_rules.max_per_day")),
                int(_number(cr["max_per_week"], "contact_rules.max_per_week")),
                _number(cr["min_hours_between"], "contact_rules.min_hours_between"),
                int(_number(cr["fallback_after_unanswered"], "contact_rules.fallback_after_unanswered")),
            ),
            objective=Objective(
                _number(ob["margin"], "objective.margin"),
                _number(ob["unsubscribe_cost"], "objective.unsubscribe_cost"),
                _number(ob["attribution_window_hours"], "objective.attribution_window_hours", 1.0),
            ),
            features=FeatureSettings(
                windows_days=windows,
                fatigue_hours=tuple(int(h) for h in fs["fatigue_hours"]),
                prior_strength=_number(fs["prior_strength"], "features.prior_strength"),
                prior_days=int(_number(fs["prior_days"], "features.prior_days", 1)),
            ),
            default_timezone=str(raw["customers"]["default_timezone"]),
            raw=raw,
        )
    except KeyError as exc:
        raise ConfigError(f"missing config key {exc}") from None


def load_config(path: str | Path | None = None) -> Config:
    """Load the defaults, merge the YAML at ``path`` over them (if given) and validate."""
    raw = default_config_dict()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        override = yaml.safe_load(path.read_text()) or {}
        if not isinstance(override, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        raw = _deep_merge(raw, override)
    return parse_config(raw)
