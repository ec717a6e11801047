"""Evaluating uplift on held-out rows: Qini and uplift curves, AUUC, uplift by decile, bootstrap CIs.

All functions compare one treatment with the control. Inputs, each of shape (n,): ``score``
(the predicted uplift used to rank rows, highest first), ``treated`` (bool: the row got the
treatment, else the control), ``y`` (outcome) and optional ``weight`` (inverse propensities, so
that a non-uniform logging policy is corrected for).

Definitions (for the ranked top fraction ``phi`` of rows):

- Qini: ``Q(phi) = Y_t(phi) - Y_c(phi) * N_t(phi) / N_c(phi)``, the incremental outcomes
  gained by treating the top ``phi``; it ends at the total incremental outcome ``Q(1)``. A
  random ranking gives the straight line ``phi * Q(1)``.
- Uplift curve: ``U(phi) = (Y_t/N_t - Y_c/N_c)(phi) * n(phi)``, and the **AUUC** is its mean
  over ``phi`` divided by ``n``; the **Qini coefficient** is the mean of ``(Q(phi) - phi Q(1)) / n``
  (0 for a random ranking, positive when the model ranks the persuadable first).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _cumulative(score, treated, y, weight):
    score = np.asarray(score, dtype=float)
    treated = np.asarray(treated, dtype=bool)
    y = np.asarray(y, dtype=float)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
    order = np.argsort(-score, kind="stable")
    t, yy, ww = treated[order], y[order], w[order]
    nt = np.cumsum(ww * t)
    nc = np.cumsum(ww * ~t)
    yt = np.cumsum(ww * yy * t)
    yc = np.cumsum(ww * yy * ~t)
    return nt, nc, yt, yc


def qini_curve(score, treated, y, weight=None, points: int = 101) -> pd.DataFrame:
    """Qini and uplift curves at ``points`` fractions of the ranked rows.

    Returns
    -------
    DataFrame with ``fraction``, ``qini``, ``random`` (the random ranking's Qini) and
    ``uplift_curve``; outcome units are rows' outcomes (e.g. conversions), not per-customer rates.
    """
    nt, nc, yt, yc = _cumulative(score, treated, y, weight)
    n = len(nt)
    if n == 0 or nt[-1] == 0 or nc[-1] == 0:
        raise ValueError("need both treated and control rows")
    idx = np.unique(np.clip(np.round(np.linspace(0, n, points)).astype(int) - 1, -1, n - 1))
    take = np.maximum(idx, 0)
    zero = idx < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = yt[take] - yc[take] * np.where(nc[take] > 0, nt[take] / nc[take], 0.0)
        rate = np.where((nt[take] > 0) & (nc[take] > 0), yt[take] / nt[take] - yc[take] / nc[take], 0.0)
    q[zero] = 0.0
    count = (take + 1).astype(float)
    count[zero] = 0
    frac = count / n
    return pd.DataFrame({"fraction": frac, "qini": q, "random": frac * q[-1],
                         "uplift_curve": np.where(zero, 0.0, rate * count)})


def qini_coefficient(score, treated, y, weight=None) -> float:
    """Mean gap between the Qini curve and the random line, per row (0 = no better than random)."""
    c = qini_curve(score, treated, y, weight)
    return float(np.trapezoid(c["qini"] - c["random"], c["fraction"]) / len(np.asarray(y)))


def auuc(score, treated, y, weight=None) -> float:
    """Area under the uplift curve, per row (see the module docstring)."""
    c = qini_curve(score, treated, y, weight)
    return float(np.trapezoid(c["uplift_curve"], c["fraction"]) / len(np.asarray(y)))


def uplift_by_decile(score, treated, y, weight=None, n_boot: int = 200, seed: int = 0,
                     groups: int = 10) -> pd.DataFrame:
    """Observed uplift per predicted-uplift decile (1 = highest predicted) with 95% bootstrap CIs.

    Returns
    -------
    DataFrame (groups rows): ``decile``, ``predicted``, ``treated_rate``, ``control_rate``,
    ``uplift``, ``ci_low``, ``ci_high``, ``rows``.
    """
    score = np.asarray(score, dtype=float)
    treated = np.asarray(treated, dtype=bool)
    y = np.asarray(y, dtype=float)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
    ranks = pd.Series(-score).rank(method="first").to_numpy()
    decile = np.minimum((ranks - 1) * groups // len(score), groups - 1).astype(int)
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(groups):
        sel = np.flatnonzero(decile == d)
        t, yy, ww = treated[sel], y[sel], w[sel]

        def uplift(i):
            tt, y_, w_ = t[i], yy[i], ww[i]
            a, b = (w_ * tt).sum(), (w_ * ~tt).sum()
            return ((w_ * y_ * tt).sum() / a if a else np.nan) - ((w_ * y_ * ~tt).sum() / b if b else np.nan)

        point = uplift(np.arange(len(sel)))
        boots = np.array([uplift(rng.integers(0, len(sel), len(sel))) for _ in range(n_boot)])
        lo, hi = np.nanpercentile(boots, [2.5, 97.5]) if np.isfinite(boots).any() else (np.nan, np.nan)
        tw, cw = (ww * t).sum(), (ww * ~t).sum()
        rows.append({"decile": d + 1, "predicted": float(score[sel].mean()),
                     "treated_rate": (ww * yy * t).sum() / tw if tw else np.nan,
                     "control_rate": (ww * yy * ~t).sum() / cw if cw else np.nan,
                     "uplift": point, "ci_low": lo, "ci_high": hi, "rows": len(sel)})
    return pd.DataFrame(rows)


def bootstrap_ci(stat, arrays: tuple, n_boot: int = 200, seed: int = 0, level: float = 0.95):
    """Point estimate and percentile CI of ``stat(*arrays)`` over row resamples.

    Returns ``(estimate, low, high)``.
    """
    arrays = tuple(np.asarray(a) if a is not None else None for a in arrays)
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    point = stat(*arrays)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        boots.append(stat(*(a[i] if a is not None else None for a in arrays)))
    a = (1 - level) / 2
    lo, hi = np.nanpercentile(boots, [100 * a, 100 * (1 - a)])
    return float(point), float(lo), float(hi)
