"""Held-out evaluation of a trained policy: response models, uplift, and measured incrementality.

Everything here reads the validation split (the last ``validation_days``, after the training
rows in time) and returns plain frames and dicts, which the report plots and MLflow logs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, roc_auc_score

from nextbest.features.config import Config
from nextbest.decision.candidates import candidate_frame
from nextbest.decision.objective import realized_profit
from nextbest.decision.policy import NO_MESSAGE, DecisionPolicy, with_open_estimate
from nextbest.training.train import RESPONSES, Split
from nextbest.training.uplift_eval import auuc, bootstrap_ci, qini_coefficient, qini_curve, uplift_by_decile

HOUR_BANDS = {"morning (6-11)": range(6, 12), "midday (12-16)": range(12, 17),
              "evening (17-21)": range(17, 22), "night (22-5)": list(range(22, 24)) + list(range(0, 6))}


def response_metrics(policy: DecisionPolicy, valid: Split) -> tuple[pd.DataFrame, dict]:
    """AUC, log loss, mean predicted and observed rate per response model and channel;
    reliability curves (10 quantile bins) per model."""
    X = valid.X[valid.send]
    ex = valid.examples[valid.send]
    channel = ex["channel"].astype(str).to_numpy()
    rows, curves = [], {}
    for name, outcome in RESPONSES.items():
        model = getattr(policy.models, name)
        p = model.predict_proba(X)[:, 1]
        y = ex[outcome].to_numpy().astype(int)
        for c in ["all"] + sorted(set(channel)):
            sel = np.ones(len(y), bool) if c == "all" else channel == c
            both = len(np.unique(y[sel])) == 2
            rows.append({"model": name, "channel": c, "rows": int(sel.sum()),
                         "auc": roc_auc_score(y[sel], p[sel]) if both else np.nan,
                         "log_loss": log_loss(y[sel], np.clip(p[sel], 1e-6, 1 - 1e-6), labels=[0, 1]),
                         "mean_predicted": float(p[sel].mean()), "observed": float(y[sel].mean()),
                         "calibrated": getattr(model, "calibrator_", None) is not None})
        if len(np.unique(y)) == 2:
            obs, pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
            curves[name] = pd.DataFrame({"predicted": pred, "observed": obs})
    return pd.DataFrame(rows), curves


def uplift_scores(policy: DecisionPolicy, features: pd.DataFrame, offer: str) -> np.ndarray:
    """Predicted uplift in P(order) of ``offer`` per row, averaged over the channels it goes on,
    at the customer's most frequent open hour (noon without one): a ranking score for Qini."""
    cfg, m = policy.config, policy.models
    j = cfg.offer_names.index(offer)
    hour = np.nan_to_num(features["top_open_hour"].to_numpy(dtype=float), nan=12).astype(int)
    total = np.zeros(len(features))
    chans = [k for k, c in enumerate(cfg.channel_names) if c in cfg.offers[offer].channels]
    for k in chans:
        f = candidate_frame(features, k, hour, j, cfg, m.customer_columns)
        with_open_estimate(f, m.open.predict_proba(f)[:, 1])
        total += m.uplift.predict(f)[offer].to_numpy()
    return total / max(len(chans), 1)


def uplift_evaluation(policy: DecisionPolicy, valid: Split, n_boot: int = 100, seed: int = 0) -> dict:
    """Per offer (vs no message) on validation rows: Qini curve, Qini coefficient and AUUC with
    bootstrap CIs, and observed uplift by predicted decile."""
    ex = valid.examples
    treatment = np.where(valid.send, ex["offer"].astype(object).to_numpy(), NO_MESSAGE)
    y = ex["converted"].to_numpy().astype(float)
    w = 1.0 / np.maximum(ex["propensity"].to_numpy(dtype=float), 1e-3)
    out = {}
    for offer in policy.models.uplift.treatments_[1:]:
        sel = (treatment == offer) | (treatment == NO_MESSAGE)
        if (treatment == offer).sum() < 50:
            continue
        score = uplift_scores(policy, ex[sel], offer)
        treated = treatment[sel] == offer
        ww = _normalize_within(w[sel], treated)
        q = bootstrap_ci(lambda s, t, yy, wt: qini_coefficient(s, t, yy, wt), (score, treated, y[sel], ww),
                         n_boot=n_boot, seed=seed)
        a = bootstrap_ci(lambda s, t, yy, wt: auuc(s, t, yy, wt), (score, treated, y[sel], ww), n_boot=n_boot, seed=seed)
        out[offer] = {"qini": q, "auuc": a, "curve": qini_curve(score, treated, y[sel], ww),
                      "deciles": uplift_by_decile(score, treated, y[sel], ww, n_boot=n_boot, seed=seed)}
    return out


def _normalize_within(w, treated):
    w = w.copy()
    for g in (treated, ~treated):
        if g.any():
            w[g] = w[g] / w[g].mean()
    return w


def measured_incrementality(config: Config, valid: Split, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """What messages added over no message in the held-out logs, per channel, offer and send-hour band.

    Inverse-propensity weighted means of each group's orders and profit minus those of the
    no-message decisions, with 95% bootstrap CIs. Profit per decision = margin x order value -
    offer cost of redeemed orders - channel cost - unsubscribe cost
    (``decision.objective.realized_profit``).
    """
    ex = valid.examples
    send = valid.send
    ch = ex["channel"].astype(object).to_numpy()
    off = ex["offer"].astype(object).to_numpy()
    profit = realized_profit(config, np.where(send, pd.Index(config.channel_names).get_indexer(ch), -1),
                             pd.Index(config.offer_names).get_indexer(off), ex["order_value"].to_numpy(dtype=float),
                             ex["converted_attributed"].to_numpy(), ex["unsubscribed"].to_numpy(dtype=bool))
    conv = ex["converted"].to_numpy(dtype=float)
    w = 1.0 / np.maximum(ex["propensity"].to_numpy(dtype=float), 1e-3)
    hour = ex["local_hour"].to_numpy()
    groups = [("channel", c, send & (ch == c)) for c in config.channel_names]
    groups += [("offer", o, send & (off == o)) for o in config.offer_names]
    groups += [("send hour", b, send & np.isin(hour, list(hs))) for b, hs in HOUR_BANDS.items()]
    control = ~send
    rows = []
    rng = np.random.default_rng(seed)
    ci = np.flatnonzero(control)
    for kind, name, sel in groups:
        ti = np.flatnonzero(sel)
        if len(ti) < 30 or len(ci) < 30:
            continue
        row = {"by": kind, "group": name, "messages": len(ti)}
        for label, yv in (("orders", conv), ("profit", profit)):
            def diff(t_idx, c_idx):
                return np.average(yv[t_idx], weights=w[t_idx]) - np.average(yv[c_idx], weights=w[c_idx])
            point = diff(ti, ci)
            boots = [diff(rng.choice(ti, len(ti)), rng.choice(ci, len(ci))) for _ in range(n_boot)]
            lo, hi = np.percentile(boots, [2.5, 97.5])
            row.update({f"{label}_per_1000": 1000 * point, f"{label}_low": 1000 * lo, f"{label}_high": 1000 * hi})
        rows.append(row)
    return pd.DataFrame(rows)

