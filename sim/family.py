"""The family of worlds: named members and randomized draws, so a benchmark is not one world's story.

Members:

``baseline``
    ``sim.world.World``: segments, a 7-day fatigue count, one preferred hour, static affinity.
``slow_fatigue``
    fatigue is a stock that compounds over weeks and recovers slowly (``tau`` = 25 days).
``weekday_hours``
    the preferred send hour differs between working days and weekends.
``price_averse``
    offers work through a continuous price sensitivity (saturating), and a share of customers
    is put off by any message (negative value of a message).
``drifting_affinity``
    channel open rates follow a mean-reverting random walk, one step a day.
``harsh``
    all four fresh mechanisms at once.
``random:<seed>`` (or an int)
    every part and parameter drawn from ``seed`` (:func:`random_spec`), the shift included.

``make_world(kind, n_customers, seed, config)`` builds one; ``world_family(n_worlds, ...)`` lists
the specs of a family of ``n_worlds`` (the named members first, then random draws).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.sim.base import BaseWorld
from nextbest.sim.mechanisms import MechanismWorld, WorldSpec
from nextbest.sim.world import World

MEMBERS = {
    "slow_fatigue": WorldSpec(name="slow_fatigue", fatigue="stock", fatigue_open=0.12, fatigue_tau=25.0,
                              shift_channel="push", shift_offer="pct20"),
    "weekday_hours": WorldSpec(name="weekday_hours", hours="weekday", weekend_move=3.0,
                               shift_channel="email", shift_offer="pct10"),
    "price_averse": WorldSpec(name="price_averse", response="price", averse_share=0.18,
                              shift_channel="sms", shift_factor=0.25, shift_offer="pct20"),
    "drifting_affinity": WorldSpec(name="drifting_affinity", affinity="drift", drift_sigma=0.15,
                                   shift_channel="push", shift_offer="free_shipping"),
    "harsh": WorldSpec(name="harsh", fatigue="stock", hours="weekday", response="price", affinity="drift",
                       shift_channel="email", shift_factor=0.3, shift_offer="pct10"),
}
KINDS = ("baseline", *MEMBERS)


def random_spec(seed: int, config: Config | None = None) -> WorldSpec:
    """A spec with every mechanism and parameter drawn from ``seed`` (deterministic per seed)."""
    rng = np.random.default_rng([seed, 1414])
    channels = list(config.channel_names) if config is not None else ["email", "sms", "push"]
    offers = [o for o in (config.offer_names if config is not None else ("pct10", "pct20", "free_shipping"))
              if o != "none"]
    return WorldSpec(
        name=f"random:{seed}", seed=int(seed),
        fatigue=str(rng.choice(["weekly", "stock"])), fatigue_open=float(rng.uniform(0.08, 0.22)),
        fatigue_unsub=float(rng.uniform(0.2, 0.8)), fatigue_tau=float(rng.uniform(10, 40)),
        hours=str(rng.choice(["fixed", "weekday"])), hour_kappa=float(rng.uniform(0.7, 1.8)),
        email_lag=int(rng.integers(0, 3)), weekend_move=float(rng.uniform(1.5, 4.0)),
        response=str(rng.choice(["uplift", "price"])), inc_scale=float(rng.uniform(0.15, 0.4)),
        offer_kappa=float(rng.uniform(0.8, 2.5)), offer_r=float(rng.uniform(0.2, 0.5)),
        beta_mean=float(rng.uniform(3, 10)), averse_share=float(rng.uniform(0.05, 0.3)),
        affinity=str(rng.choice(["static", "drift"])), drift_sigma=float(rng.uniform(0.05, 0.2)),
        drift_phi=float(rng.uniform(0.95, 0.995)),
        shift_channel=str(rng.choice(channels)), shift_factor=float(rng.uniform(0.2, 0.5)),
        shift_offer=str(rng.choice(offers)),
    )


def resolve(kind) -> str | WorldSpec:
    """``"baseline"``, or the :class:`WorldSpec` of a named member, ``random:<seed>``, an int seed or a spec."""
    if kind is None or kind == "baseline":
        return "baseline"
    if isinstance(kind, WorldSpec):
        return kind
    if isinstance(kind, (int, np.integer)):
        return random_spec(int(kind))
    if isinstance(kind, str) and kind in MEMBERS:
        return MEMBERS[kind]
    if isinstance(kind, str) and kind.startswith("random:"):
        return random_spec(int(kind.split(":", 1)[1]))
    raise ValueError(f"unknown world kind {kind!r}; known: {list(KINDS)}, 'random:<seed>' or an int seed")


def make_world(kind, n_customers: int, seed: int, config: Config,
               signup_before: pd.Timestamp | None = None) -> BaseWorld:
    """Build the world ``kind`` (see :func:`resolve`) with ``n_customers`` customers drawn with ``seed``."""
    spec = resolve(kind)
    if spec == "baseline":
        return World.create(n_customers, seed, config, signup_before=signup_before)
    if isinstance(kind, WorldSpec) or isinstance(kind, str) and kind in MEMBERS:
        spec = replace(spec, seed=seed)  # named members: the drift steps follow the data seed
    return MechanismWorld.create(n_customers, seed, config, spec, signup_before=signup_before)


def world_family(n_worlds: int, first_random_seed: int = 1) -> list[str]:
    """The kinds of a family of ``n_worlds`` worlds: baseline, the named members, then random draws."""
    kinds = list(KINDS[:n_worlds])
    kinds += [f"random:{first_random_seed + i}" for i in range(n_worlds - len(kinds))]
    return kinds


def world_class(kind: str) -> type[BaseWorld]:
    """The class that loads a saved world of ``kind``."""
    if kind == "baseline":
        return World
    if kind == "mechanisms":
        return MechanismWorld
    raise ValueError(f"unknown saved world kind {kind!r}")
