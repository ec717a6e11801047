"""The threads LightGBM may use: OMP_NUM_THREADS when set, else the cores, shared between processes."""

import os

from nextbest.decision.threads import lightgbm_threads, threads_per_process


def test_omp_num_threads_wins_and_processes_share_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert lightgbm_threads({}) == cores
    assert lightgbm_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert lightgbm_threads({"OMP_NUM_THREADS": "4,2"}) == 4  # nested OpenMP levels: the outer one
    for bad in ("", "0", "-2", "many"):  # not a positive integer: the cores
        assert lightgbm_threads({"OMP_NUM_THREADS": bad}) == cores
    assert threads_per_process(2, {"OMP_NUM_THREADS": "8"}) == 4
    assert threads_per_process(3, {"OMP_NUM_THREADS": "8"}) == 2
    assert threads_per_process(16, {"OMP_NUM_THREADS": "8"}) == 1  # never less than one
    assert threads_per_process(0, {"OMP_NUM_THREADS": "8"}) == 8
