"""LightGBM on Dask (``lightgbm.dask``) against single-machine LightGBM, same training examples (issue 18).

    .venv/bin/python benchmarks/dask_training.py [--customers 20000] [--days 60] [--workers 2]

The examples are those ``nextbest train`` builds (``training.train.prepare``: its time split and
sampling). The open model, P(open | a message), is fitted with the config's LightGBM parameters
and a fixed number of trees (no early stopping, so both fits do the same work) twice:

- ``single``: ``lightgbm.LGBMClassifier`` in this process;
- ``dask``: ``lightgbm.dask.DaskLGBMClassifier`` on a ``LocalCluster`` of ``--workers`` workers,
  the training rows split into one Dask partition per worker (data-parallel tree learning: each
  worker holds its rows, histograms are merged across workers).

Printed: wall time of each fit and the validation AUC and log loss of each model on the same
held-out days, and their difference. Inputs are the float matrix the policy scores with
(categories as codes), so both learners see the same numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
log = logging.getLogger("benchmarks.dask_training")


def _matrix(X, cols, cats):
    import numpy as np

    out = np.empty((len(X), len(cols)), dtype=np.float32)
    for i, c in enumerate(cols):
        col = X[c]
        if c in cats:
            out[:, i] = np.where(col.cat.codes.to_numpy() < 0, np.nan, col.cat.codes.to_numpy())
        else:
            out[:, i] = col.to_numpy(dtype=np.float32, na_value=np.nan)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=20000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    import dask.array as da
    import lightgbm as lgb
    import numpy as np
    from sklearn.metrics import log_loss, roc_auc_score

    from nextbest.features.config import load_config
    from nextbest.features.partitioned import dask_client
    from nextbest.sim.simulate import generate, write
    from nextbest.training.settings import TrainingSettings
    from nextbest.training.train import Stopwatch, prepare

    config = load_config()
    settings = TrainingSettings.from_config(config)
    with tempfile.TemporaryDirectory(dir=HERE / "out") as tmp:
        data = write(generate(args.customers, args.days, 2, config, progress=False), Path(tmp) / "data", seed=2)
        p = prepare(data, config, settings, Stopwatch(), seed=0)
    cols = [c for c in p.train.X.columns if not c.startswith("cand_")]
    cats = {c for c in cols if str(p.train.X[c].dtype) == "category"}
    Xs, Xv = (_matrix(s.X[s.send], cols, cats) for s in (p.train, p.valid))
    ys, yv = (s.examples[s.send]["opened"].to_numpy(int) for s in (p.train, p.valid))
    params = {**settings.lightgbm, "random_state": 0, "verbose": -1}
    cat_idx = [i for i, c in enumerate(cols) if c in cats]
    log.info("%d training rows, %d validation rows, %d inputs", len(ys), len(yv), len(cols))

    res = {}
    t0 = time.perf_counter()
    single = lgb.LGBMClassifier(**params, n_jobs=args.workers).fit(Xs, ys, categorical_feature=cat_idx)
    res["single"] = {"fit_s": time.perf_counter() - t0, "p": single.predict_proba(Xv)[:, 1]}
    with dask_client(workers=args.workers) as client:
        chunk = -(-len(ys) // args.workers)
        dX, dy = da.from_array(Xs, chunks=(chunk, Xs.shape[1])), da.from_array(ys, chunks=chunk)
        dX, dy = client.persist([dX, dy])
        t0 = time.perf_counter()
        dist = lgb.DaskLGBMClassifier(client=client, **params, n_jobs=1).fit(dX, dy, categorical_feature=cat_idx)
        res["dask"] = {"fit_s": time.perf_counter() - t0, "p": dist.to_local().predict_proba(Xv)[:, 1]}
    out = {k: {"fit_s": round(v["fit_s"], 2), "auc": round(roc_auc_score(yv, v["p"]), 4),
               "log_loss": round(log_loss(yv, v["p"]), 5)} for k, v in res.items()}
    out["difference"] = {"auc": round(out["dask"]["auc"] - out["single"]["auc"], 4),
                         "log_loss": round(out["dask"]["log_loss"] - out["single"]["log_loss"], 5),
                         "max_abs_probability": round(float(np.abs(res["dask"]["p"] - res["single"]["p"]).max()), 4)}
    out["rows"] = {"train": int(len(ys)), "valid": int(len(yv)), "inputs": len(cols), "workers": args.workers}
    print(json.dumps(out, indent=1))
    (HERE / "out" / "dask_training.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
