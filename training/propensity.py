"""Training from the data teams actually have: decisions and propensities from sends and responses alone.

Most message histories are an ESP export (``sent``, ``opened``, ``converted`` ...) without the
logging policy's own decision log. Without ``logging_decisions`` the decisions are rebuilt:

- every ``sent`` event is a decision (its channel, offer and local send hour);
- every customer-day (the customer's local calendar day, between the first and the last day
  with a send, from the customer's signup or first event) without a message is a "no message"
  decision at ``training.estimated_propensity.control_hour`` local time: the control rows;
- the propensity of each decision is the logged one where the ``sent`` event carries
  ``propensity`` (the service's exports do), and is estimated elsewhere (control rows always):
  LightGBM classifiers of the logged action given the customer's features as of the start of the
  decision day (plus its weekday and position in the history), ``P(send | x)`` (binary) times
  ``P(channel x offer | send, x)`` (multiclass, on the sends), cross-fitted by customer (each
  customer's rows are predicted by models that never saw that customer), times the share of the
  pair's sends at the logged local hour. The classifiers' probability of the logged action
  ("no message" or the pair) is clipped at ``clip`` (default 0.01) from below; how many were
  clipped is recorded (:attr:`PropensityModel.info_`).

What this can leave biased (written on the MLflow run too):

- **unmeasured confounding**: the logging policy may have used information that is not in the
  export (a campaign calendar, a segment list, a manager's judgement); the estimated propensities
  then miss it and uplift and off-policy estimates carry that bias;
- the propensities are only as good as the classifier (its out-of-fold log loss against the
  no-feature baseline is recorded), and the hour share assumes the hour was not chosen per customer;
- **overlap**: customers the logging policy (almost) never messaged, or (almost) always, give
  weights that clipping caps, trading variance for bias.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from nextbest.decision.threads import lightgbm_threads
from nextbest.features.config import Config
from nextbest.features.eventlog import EV, EventLog, to_ms
from nextbest.features.examples import decision_columns
from nextbest.features.history import DAY_MS, Population, engagement_history
from nextbest.features.localtime import local_midnight_utc, utc_offsets

log = logging.getLogger(__name__)

SUPPRESS = 0  # action class of "no message"; a send of channel k and offer j is 1 + k * n_offers + j


def _local_day(log_: EventLog, cust: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
    """The customer's local calendar day (days since the epoch) of UTC times ``t_ms``."""
    s = np.asarray(t_ms, dtype=np.int64) // 1000
    return (s + utc_offsets(s, log_.tz_code[cust], log_.tz_names)) // 86400


def _day_start_ms(log_: EventLog, cust: np.ndarray, day: np.ndarray) -> np.ndarray:
    """UTC ms of local midnight of each customer's local ``day``."""
    out = np.empty(len(cust), dtype=np.int64)
    for d in np.unique(day):
        sel = np.flatnonzero(day == d)
        out[sel] = local_midnight_utc(int(d) * 86400, log_.tz_code[cust[sel]], log_.tz_names) * 1000
    return out


def decisions_from_sends(log_: EventLog, config: Config, before=None) -> pd.DataFrame:
    """Decision rows rebuilt from the event log: one per send, one per customer-day without a message.

    Parameters
    ----------
    log_ : EventLog
    config : Config
        ``training.estimated_propensity.control_hour`` places the control rows.
    before : timestamp, optional
        Only decisions before this time (the start of a decision table that covers the rest).

    Returns
    -------
    DataFrame (n_sends + n_control_days, ...)
        The ``logging_decisions`` columns (``customer_id``, ``ts``, ``action``, ``channel``,
        ``offer``, ``local_hour``, ``propensity``, ``message_id``) plus ``day_start`` (the local
        decision day's start, UTC) and ``propensity_estimated`` (True where ``propensity`` is
        missing and must be estimated), sorted by ``ts``.
    """
    hour_ms = 3_600_000
    sends = log_.select(EV["sent"])
    dc = decision_columns(log_, sends)
    s_cust = log_.cust_at(sends).astype(np.int64)
    s_t = log_.t_at(sends).astype(np.int64)
    s_day = _local_day(log_, s_cust, s_t)
    if len(sends) == 0:
        raise ValueError("no `sent` events: without logging_decisions, training needs the message history")
    data_end = int(log_.t.max()) + 1
    d0, d1 = int(s_day.min()), int(s_day.max())
    n_days, n_cust = d1 - d0 + 1, log_.n_customers
    # the customer's first day: signup (or first event), not before the first day with a send
    first = log_.first_seen_ms
    first_day = np.full(n_cust, d0, dtype=np.int64)
    known = np.isfinite(first)
    first_day[known] = np.maximum(_local_day(log_, np.flatnonzero(known), first[known].astype(np.int64)), d0)
    messaged = np.zeros(n_cust * n_days, dtype=bool)
    messaged[s_cust * n_days + (s_day - d0)] = True
    cc, dd = np.divmod(np.flatnonzero(~messaged), n_days)
    dd = dd + d0
    keep = dd >= first_day[cc]
    cc, dd = cc[keep], dd[keep]
    c_start = _day_start_ms(log_, cc, dd)
    c_ts = c_start + config.training.estimated_propensity.control_hour * hour_ms
    keep = c_ts < data_end
    cc, dd, c_start, c_ts = cc[keep], dd[keep], c_start[keep], c_ts[keep]
    ids = log_.customer_ids
    send_rows = pd.DataFrame({
        "customer_id": dc["customer_id"].astype(str).to_numpy(), "ts": s_t, "action": "send",
        "channel": dc["channel"].astype(object).to_numpy(), "offer": dc["offer"].astype(object).to_numpy(),
        "local_hour": dc["send_hour"].to_numpy().astype(np.int64), "propensity": dc["propensity"].to_numpy(float),
        "message_id": dc["message_id"].astype(object).to_numpy(), "day_start": _day_start_ms(log_, s_cust, s_day)})
    control_rows = pd.DataFrame({
        "customer_id": ids[cc].astype(str).to_numpy() if len(cc) else np.array([], dtype=object),
        "ts": c_ts, "action": "suppress", "channel": None, "offer": None, "local_hour": -1,
        "propensity": np.nan, "message_id": None, "day_start": c_start})
    out = pd.concat([send_rows, control_rows], ignore_index=True)
    for c in ("ts", "day_start"):
        out[c] = pd.to_datetime(out[c].to_numpy(np.int64), unit="ms", utc=True)
    if before is not None:
        out = out[out["ts"] < pd.Timestamp(before)]
    out = out.sort_values("ts", kind="stable").reset_index(drop=True)
    out["propensity_estimated"] = ~np.isfinite(out["propensity"].to_numpy(float))
    log.info("decisions rebuilt from the event log: %d sends (%d with a logged propensity), %d customer-days "
             "without a message", int((out["action"] == "send").sum()),
             int(((out["action"] == "send") & ~out["propensity_estimated"]).sum()),
             int((out["action"] == "suppress").sum()))
    return out


def action_classes(decisions: pd.DataFrame, config: Config) -> np.ndarray:
    """Action class of each decision: 0 "no message", ``1 + k * n_offers + j`` for channel k, offer j."""
    send = (decisions["action"] == "send").to_numpy()
    k = pd.Index(config.channel_names).get_indexer(decisions["channel"].astype(object).where(send, None))
    j = pd.Index(config.offer_names).get_indexer(decisions["offer"].astype(object).where(send, None))
    if (send & ((k < 0) | (j < 0))).any():
        raise ValueError("sent events name a channel or offer the config does not have")
    return np.where(send, 1 + k * len(config.offer_names) + j, SUPPRESS)


class PropensityModel:
    """The logging policy's probability of each logged decision, estimated from the history.

    Parameters
    ----------
    config : Config
        ``training.estimated_propensity`` (clip, folds, max_rows, lightgbm).
    random_state : int

    Attributes
    ----------
    models_ : list of (LGBMClassifier, LGBMClassifier)
        Per fold, ``P(send | x)`` and ``P(channel x offer | send, x)``; fold ``f``'s models never
        saw the customers of fold ``f``.
    fold_ : array (n_customers,)
        Each customer's fold.
    hour_share_ : dict
        Action class -> (24,) share of its sends at each local hour.
    columns_ : list of str
    info_ : dict
        ``propensity_source``, rows, out-of-fold log loss, the no-feature baseline's, clipping.
    """

    def __init__(self, config: Config, random_state: int = 0):
        self.config = config
        self.random_state = random_state

    def _frame(self, log_: EventLog, decisions: pd.DataFrame, population: Population) -> pd.DataFrame:
        from nextbest.decision.candidates import customer_columns

        start = decisions["day_start"]
        f = engagement_history(log_, decisions["customer_id"].astype(str).to_numpy(), start, population)
        if not hasattr(self, "columns_"):
            self.columns_ = customer_columns(f, self.config, log_.attributes.columns)
        X = f[self.columns_].reset_index(drop=True)
        s = to_ms(start).astype(np.int64)
        # local weekday: local midnight + 12 h falls on the local date in UTC (1970-01-01 was a Thursday)
        X["decision_weekday"] = (((s + DAY_MS // 2) // DAY_MS + 3) % 7).astype(np.int8)
        X["decision_day"] = ((s - self.t0_) / DAY_MS).astype(np.float32)
        return X

    def _folds(self, log_: EventLog, decisions: pd.DataFrame) -> np.ndarray:
        codes = log_.customer_ids.get_indexer(pd.Index(decisions["customer_id"].astype(str)))
        return self.fold_[np.where(codes >= 0, codes, 0)]

    def fit(self, log_: EventLog, decisions: pd.DataFrame, population: Population | None = None) -> "PropensityModel":
        """Learn the logging policy from ``decisions`` (:func:`decisions_from_sends`): a uniform
        sample of at most ``max_rows`` of them, and the hour shares from every send."""
        import lightgbm as lgb

        ep = self.config.training.estimated_propensity
        population = population if population is not None else Population.from_log(log_)
        rng = np.random.default_rng(self.random_state)
        self.fold_ = rng.permutation(log_.n_customers) % ep.folds
        self.t0_ = int(to_ms(decisions["day_start"]).min())
        y_all = action_classes(decisions, self.config)
        self.hour_share_ = {}
        hours = decisions["local_hour"].to_numpy()
        for a in np.unique(y_all[y_all != SUPPRESS]):
            counts = np.bincount(hours[y_all == a], minlength=24)[:24].astype(float)
            self.hour_share_[int(a)] = counts / counts.sum()
        rows = np.arange(len(decisions))
        if len(rows) > ep.max_rows:
            rows = np.sort(rng.choice(rows, ep.max_rows, replace=False))
        sample = decisions.iloc[rows].reset_index(drop=True)
        X, y, fold = self._frame(log_, sample, population), y_all[rows], self._folds(log_, sample)
        self.classes_ = np.unique(y)
        params = {**ep.lightgbm.params(), "verbose": -1, "n_jobs": lightgbm_threads()}
        self.models_ = []
        oof = np.zeros(len(y))
        for f in range(ep.folds):
            trn, tst = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            sends = trn[y[trn] != SUPPRESS]
            if len(np.unique(y[trn] != SUPPRESS)) < 2 or len(sends) == 0:
                raise ValueError("the propensity classifier needs both sends and customer-days without a message")
            send_model = lgb.LGBMClassifier(random_state=self.random_state + f, **params).fit(
                X.iloc[trn], y[trn] != SUPPRESS)
            pair_model = lgb.LGBMClassifier(random_state=self.random_state + f, **params).fit(
                X.iloc[sends], y[sends]) if len(np.unique(y[sends])) > 1 else _Constant(y[sends][0])
            self.models_.append((send_model, pair_model))
            if len(tst):
                oof[tst] = self._proba_of(self.models_[-1], X.iloc[tst], y[tst])
        marginal = pd.Series(y).map(pd.Series(y).value_counts(normalize=True)).to_numpy(float)
        self.info_ = {"propensity_source": "estimated", "propensity_classifier_rows": int(len(y)),
                      "propensity_classifier_classes": int(len(self.classes_)),
                      "propensity_classifier_log_loss": float(-np.log(np.clip(oof, 1e-12, 1)).mean()),
                      "propensity_baseline_log_loss": float(-np.log(marginal).mean()),
                      "propensity_clip": float(ep.clip)}
        log.info("propensity classifier: %d customer-days, %d actions, out-of-fold log loss %.4f (no features: %.4f)",
                 len(y), len(self.classes_), self.info_["propensity_classifier_log_loss"],
                 self.info_["propensity_baseline_log_loss"])
        return self

    @staticmethod
    def _proba_of(models, X: pd.DataFrame, y: np.ndarray) -> np.ndarray:
        """Each row's probability of its own action ``y`` (0 for a pair the models never saw)."""
        send_model, pair_model = models
        p_send = send_model.predict_proba(X)[:, 1]
        out = 1.0 - p_send
        s = np.flatnonzero(y != SUPPRESS)
        if len(s):
            p = pair_model.predict_proba(X.iloc[s])
            col = pd.Index(pair_model.classes_).get_indexer(y[s])
            out[s] = p_send[s] * np.where(col >= 0, p[np.arange(len(s)), np.maximum(col, 0)], 0.0)
        return out

    def predict(self, log_: EventLog, decisions: pd.DataFrame, population: Population | None = None,
                chunk_rows: int = 500_000) -> tuple[np.ndarray, np.ndarray]:
        """The estimated probability of each decision's exact action, and whether it was clipped.

        ``P(no message | x)`` for a control row; ``P(channel, offer | x) x share of the pair's sends
        at the logged hour`` for a send; the classifier's part is at least ``clip``. Cross-fitted:
        a row is predicted by the model of its customer's fold. Returns two arrays (n,).
        """
        population = population if population is not None else Population.from_log(log_)
        clip = self.config.training.estimated_propensity.clip
        y = action_classes(decisions, self.config)
        out, clipped = np.zeros(len(decisions)), np.zeros(len(decisions), dtype=bool)
        for lo in range(0, len(decisions), chunk_rows):
            d = decisions.iloc[lo:lo + chunk_rows].reset_index(drop=True)
            X, yy, fold = self._frame(log_, d, population), y[lo:lo + chunk_rows], self._folds(log_, d)
            p = np.zeros(len(d))
            for f, model in enumerate(self.models_):
                sel = np.flatnonzero(fold == f)
                if len(sel):
                    p[sel] = self._proba_of(model, X.iloc[sel], yy[sel])
            clipped[lo:lo + len(d)] = p < clip
            p = np.maximum(p, clip)
            hours = d["local_hour"].to_numpy()
            for a in np.unique(yy[yy != SUPPRESS]):
                sel = np.flatnonzero(yy == a)
                share = self.hour_share_.get(int(a), np.full(24, 1 / 24))
                p[sel] *= np.maximum(share[np.clip(hours[sel], 0, 23)], 1 / 24 / 1000)
            out[lo:lo + len(d)] = p
        return out, clipped


class _Constant:
    """A "classifier" of one class (every send of the history had the same channel and offer)."""

    def __init__(self, label):
        self.classes_ = np.array([label])

    def predict_proba(self, X):
        return np.ones((len(X), 1))


def fill_propensities(model: PropensityModel, log_: EventLog, decisions: pd.DataFrame,
                      population: Population | None = None) -> pd.DataFrame:
    """``decisions`` with the missing propensities (``propensity_estimated``) estimated by ``model``;
    a ``propensity_clipped`` column says where the classifier's probability was raised to the clip."""
    out = decisions.copy()
    need = out["propensity_estimated"].to_numpy(bool) if "propensity_estimated" in out else \
        ~np.isfinite(out["propensity"].to_numpy(float))
    out["propensity_clipped"] = False
    if need.any():
        p, clipped = model.predict(log_, out[need], population)
        out.loc[need, "propensity"] = p
        out.loc[need, "propensity_clipped"] = clipped
    return out


def propensity_info(model: PropensityModel, decisions: pd.DataFrame) -> dict:
    """What the run records about the propensities of ``decisions`` (after :func:`fill_propensities`)."""
    est = decisions["propensity_estimated"].to_numpy(bool)
    send = (decisions["action"] == "send").to_numpy()
    source = "estimated" if est[send].all() else "estimated where missing"
    return {**model.info_, "propensity_source": source,
            "propensity_estimated_rows": int(est.sum()), "propensity_logged_rows": int((~est).sum()),
            "propensity_clipped_rows": int(decisions.get("propensity_clipped", pd.Series(False, index=decisions.index))
                                           .to_numpy(bool).sum())}
