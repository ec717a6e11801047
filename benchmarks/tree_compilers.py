"""Tree compilers against LightGBM's own predict, on the policy's real models and inputs (issue 17).

    .venv/bin/python benchmarks/tree_compilers.py [--customers 5000] [--repeats 300]

A policy is trained on a small simulated history (``benchmarks/small_policy.py``, shared with
``decision_latency.py``). For
every booster the policy calls when it decides (open, click, conversion and unsubscribe given
open, order value, the uplift learner's arms), on the model inputs of real candidates:

- ``lightgbm``: ``Booster.predict`` single-threaded (how ``decision.artifact.booster_predict``
  calls it for small batches), the baseline, measured in the same run;
- ``treelite_gtil``: Treelite's interpreter (``treelite.gtil.predict``), no compilation;
- ``tl2cgen``: the model compiled to a shared library with gcc (``tl2cgen.export_lib``), called
  through ``tl2cgen.Predictor`` (the ``DMatrix`` built in the timed call, as a decision would);
- ``lleaves`` (LLVM): tried, reported if it cannot compile here.

Medians (and p99) over ``--repeats`` calls at 20 rows (one customer's candidates) and 1,000 rows
(a batch), the largest difference of the predictions from LightGBM's, and the compile time. Then
the share of a whole single decision that LightGBM's predict takes (cProfile), which bounds
what any faster predict can save there.

Treelite and TL2cgen are the benchmark's dev dependencies (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import time

import numpy as np
import pandas as pd

from small_policy import small_policy, timed_ms

log = logging.getLogger("benchmarks.tree_compilers")


def timed(fn, repeats):
    a = timed_ms(fn, repeats)
    return float(np.median(a)), float(np.quantile(a, 0.99))


def boosters(models) -> dict:
    """name -> (booster, the model that reads it: its inputs) of every booster a decision calls."""
    out = {"open": (models.open.booster_, models.open)}
    for name in ("conversion", "unsubscribe", "click", "value"):
        m = getattr(models, name)
        inner = getattr(m, "given_open", m)  # the funnel's P(response | opened) model
        out[name] = (inner.booster_, inner)
    for arm, (b, _) in models.uplift.arms.items():
        out[f"uplift_{arm}"] = (b, models.uplift)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import treelite
    import tl2cgen

    from nextbest.decision.artifact import load_policy, save_policy
    from nextbest.decision.candidates import CustomerArrays, candidate_arrays, model_input
    from nextbest.decision.policy import OPEN_ESTIMATE, Request
    from nextbest.decision.rules import ContactHistory

    small = small_policy(args.customers)
    cfg, sim, tmp, feats = small.config, small.sim, small.folder, small.features
    policy = load_policy(save_policy(small.result.policy, f"{tmp}/policy"))  # as registered: trees cut at early stopping
    cust = CustomerArrays(feats)
    rng = np.random.default_rng(0)
    K, O = len(cfg.channel_names), len(cfg.offer_names)
    r = 1000
    rows = rng.integers(0, len(feats), r)
    cand = candidate_arrays(cust, rows, rng.integers(0, K, r), rng.integers(8, 21, r), rng.integers(0, O, r), cfg)
    cand[OPEN_ESTIMATE] = rng.uniform(0.05, 0.5, r).astype(np.float32)
    table = []
    for name, (booster, reader) in boosters(policy.models).items():
        M = model_input(list(reader.feature_names_in_), reader.categories_, cust, rows, cand)
        ref = booster.predict(M, num_threads=1)
        tm = treelite.frontend.from_lightgbm(booster)
        lib = f"{tmp}/{name}.so"
        t = time.perf_counter()
        tl2cgen.export_lib(tm, toolchain="gcc", libpath=lib, params={"parallel_comp": 2}, nthread=2)
        compile_s = time.perf_counter() - t
        pred = tl2cgen.Predictor(lib, nthread=1)
        diff_gtil = np.abs(np.ravel(treelite.gtil.predict(tm, M, nthread=1)) - ref).max()
        diff_tl2 = np.abs(np.ravel(pred.predict(tl2cgen.DMatrix(M))) - ref).max()
        for n in (20, 1000):
            X = np.ascontiguousarray(M[:n])
            lgb = timed(lambda: booster.predict(X, num_threads=1), args.repeats)
            gtil = timed(lambda: treelite.gtil.predict(tm, X, nthread=1), args.repeats)
            tl2 = timed(lambda: pred.predict(tl2cgen.DMatrix(X)), args.repeats)
            table.append({"model": name, "trees": booster.num_trees(), "rows": n, "lightgbm_ms": lgb[0],
                          "gtil_ms": gtil[0], "tl2cgen_ms": tl2[0], "tl2cgen_speedup": lgb[0] / tl2[0],
                          "lightgbm_p99": lgb[1], "tl2cgen_p99": tl2[1], "max_diff_gtil": diff_gtil,
                          "max_diff_tl2cgen": diff_tl2, "compile_s": compile_s})
    out = pd.DataFrame(table)
    pd.set_option("display.width", 220)
    print(out.round(4).to_string(index=False))
    for n in (20, 1000):
        sub = out[out["rows"] == n]
        print(f"{n} rows, all models: LightGBM {sub['lightgbm_ms'].sum():.3f} ms, GTIL {sub['gtil_ms'].sum():.3f} ms, "
              f"TL2cgen {sub['tl2cgen_ms'].sum():.3f} ms ({sub['lightgbm_ms'].sum() / sub['tl2cgen_ms'].sum():.2f}x); "
              f"compile {out.loc[out['rows'] == n, 'compile_s'].sum():.1f} s")
    try:
        import lleaves

        path = f"{tmp}/open.txt"
        policy.models.open.booster_.save_model(path)
        lleaves.Model(model_file=path).compile()
        print("lleaves: compiled")
    except Exception as exc:  # noqa: BLE001 - reported, it is one of the candidates
        print(f"lleaves: cannot compile here ({type(exc).__name__}: {exc})")

    # the share of a whole single decision that LightGBM's predict takes
    contact = ContactHistory.from_features(feats, cfg)
    request = Request(now=sim.end)
    one = [(feats.iloc[[i]], i) for i in range(50)]

    def decide(k):
        f, i = one[k % 50]
        h = type(contact)(*(getattr(contact, a)[[i]] for a in ("sent_day", "sent_week", "hours_since_last",
                                                                 "unanswered")))
        policy.decide(f, h, request, rng=rng, arrays=cust.take(np.array([i]), f))

    for k in range(20):
        decide(k)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.runcall(lambda: [decide(k) for k in range(200)])
    wall = time.perf_counter() - t
    st = pstats.Stats(prof)
    predict = sum(v[3] for k, v in st.stats.items() if k[2] == "booster_predict")
    total = sum(v[3] for k, v in st.stats.items() if k[2] == "decide" and "policy" in k[0])
    print(f"single decision (snapshot arrays, as the service): {wall / 200 * 1000:.2f} ms under the profiler; "
          f"LightGBM predict {predict / total:.1%} of it")


if __name__ == "__main__":
    main()
