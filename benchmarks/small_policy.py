"""What the in-process decision benchmarks share: a policy trained on a small simulated history,
its customers' features as of the history's end, and a timing loop.

Used by ``decision_latency.py`` and ``tree_compilers.py`` (both run as scripts, so this folder
is on ``sys.path``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class SmallPolicy:
    config: object
    sim: object  # nextbest.sim.simulate's history (world, end)
    result: object  # training.train's result: policy, log, population
    folder: str  # where the data (and anything a benchmark writes) lives
    features: pd.DataFrame  # every customer's engagement history as of sim.end


def small_policy(customers: int, days: int = 30, seed: int = 8) -> SmallPolicy:
    """Simulate ``days`` of history for ``customers``, train the policy on it (seed 0) and compute
    every customer's features as of the history's end."""
    from nextbest.features.config import load_config
    from nextbest.features.history import engagement_history
    from nextbest.sim.simulate import generate, write
    from nextbest.training.train import train

    cfg = load_config()
    folder = tempfile.mkdtemp()
    sim = generate(customers, days, seed, cfg, progress=False)
    res = train(write(sim, folder, seed=seed), cfg, seed=0)
    ids = sim.world.customers["customer_id"].astype(str).to_numpy()
    return SmallPolicy(cfg, sim, res, folder, engagement_history(res.log, ids, sim.end, res.population))


def timed_ms(fn, repeats: int) -> np.ndarray:
    """Wall time of ``repeats`` calls of ``fn``, in milliseconds, one per call."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.array(out) * 1000
