"""The off-policy estimators and the logged-bandit learner on real data (Open Bandit Dataset sample).

    .venv/bin/python benchmarks/obd.py [--n-boot 1000] [--seed 0]

Prints, per check and estimator, the estimate with its 95% bootstrap interval, the on-policy CTR
it should match (with its own interval), the relative error and the overlap diagnostics; see
training/obd.py for the three checks.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from nextbest.training.obd import run_obd

OUT = Path(__file__).parent / "out" / "obd"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    OUT.mkdir(parents=True, exist_ok=True)
    table = run_obd(seed=args.seed, n_boot=args.n_boot)
    table.to_csv(OUT / "obd.csv", index=False)
    pd.set_option("display.width", 200)
    cols = ["check", "estimator", "estimate", "ci_low", "ci_high", "on_policy_ctr", "relative_error", "ess",
            "unsupported_logged"]
    print(table[cols].round(5).to_string(index=False))


if __name__ == "__main__":
    main()
