"""How many threads one LightGBM fit may use.

``OMP_NUM_THREADS`` when it is set (the standard OpenMP setting, which LightGBM's own default
reads too), else every core this process may run on. Every fit in ``training`` passes this
number to LightGBM explicitly, so LightGBM and the OpenMP runtime always agree.

Why it matters: OpenMP threads spin while they wait. Two processes that each start a pool as
large as the machine on the same cores slow each other down far more than sharing would: two
concurrent ``nextbest train`` runs on this project's 2-core machine took 50 s each with two
threads per fit, 21-23 s with one (one alone: 19 s either way). ``make test`` runs two test
processes on two cores, so it sets ``OMP_NUM_THREADS=1``; anyone running several trainings side
by side should do the same. Decisions are unaffected: a single decision already predicts on one
thread (``decision.artifact.booster_predict``).
"""

from __future__ import annotations

import os


def lightgbm_threads() -> int:
    """``OMP_NUM_THREADS`` if set to a positive integer, else the cores this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def share_cores(processes: int) -> None:
    """Give this process its share of the cores when ``processes`` run side by side (a process
    pool's initializer): sets ``OMP_NUM_THREADS`` unless the caller set it already."""
    if not os.environ.get("OMP_NUM_THREADS"):
        os.environ["OMP_NUM_THREADS"] = str(max(1, lightgbm_threads() // max(1, processes)))
