"""How many threads LightGBM may use in one process.

``OMP_NUM_THREADS`` when it is set (the standard OpenMP setting, which LightGBM's own default
reads too), else every core this process may run on. Every fit in ``training`` passes this
number to LightGBM explicitly, so LightGBM and the OpenMP runtime always agree.

Why it matters: OpenMP threads spin while they wait. Processes that each start a pool as large
as the machine on the same cores slow each other down far more than sharing would: two
concurrent ``nextbest train`` runs on this project's 2-core machine took 50 s each with two
threads per fit, 21-23 s with one (one alone: 19 s either way). So:

- ``make test`` runs two test processes on two cores and sets ``OMP_NUM_THREADS=1``;
- ``nextbest serve`` leaves ``OMP_NUM_THREADS`` as it finds it. A single decision predicts on one
  thread anyway (``decision.artifact.booster_predict``). Giving each of two workers one thread
  was measured and not kept: over four alternating runs of ``benchmarks/serving.py --workers 2``
  single decides were 211-263 req/s with one thread per worker against 270-303 with the default
  (the workers wait on the decision log's fsync, and a second thread uses that idle core), and
  batches no faster (1,193-2,083 decisions/s against 1,871-2,062);
- the benchmarks' process pools call :func:`share_cores` in each process;
- anyone running several trainings side by side should set ``OMP_NUM_THREADS`` too.
"""

from __future__ import annotations

import os


def lightgbm_threads(env=None) -> int:
    """``OMP_NUM_THREADS`` of ``env`` (default: this process's) if it is a positive integer, else
    the cores this process may use."""
    value = (os.environ if env is None else env).get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_process(processes: int, env=None) -> int:
    """Each process's share when ``processes`` run side by side on the cores :func:`lightgbm_threads` names."""
    return max(1, lightgbm_threads(env) // max(1, processes))


def share_cores(processes: int) -> None:
    """A process pool's initializer: this process's share of the cores when ``processes`` run side
    by side, as ``OMP_NUM_THREADS`` (left alone when the caller set it)."""
    if not os.environ.get("OMP_NUM_THREADS"):
        os.environ["OMP_NUM_THREADS"] = str(threads_per_process(processes))
