"""``nextbest train``: data directory -> examples -> response, send-time and uplift models -> policy.

The one train function that the CLI, ``nextbest tune`` and the notebooks call. Stages (timed,
logged, and returned in ``TrainResult.timings``):

1. **load**: read and validate ``customers``, ``events`` and ``logging_decisions`` (when there is one).
2. **encode**: the event log and the population priors.
2b. **propensity** (only without a complete ``logging_decisions``): the logging policy's
   propensities, estimated where the sent events carry none (``training.propensity``).
3. **examples**: one row per logged decision (suppressions included), features as of the
   decision, outcomes within the attribution window. Decisions in the first ``warmup_days``
   (empty histories) and those whose window is not complete are left out; the last
   ``validation_days`` validate (time-based split, never random); each split is sampled down to
   ``max_rows_per_model`` sends and as many suppressions.
4. **response models**: open, click, conversion (an order after the message) and unsubscribe
   classifiers on the send rows, the order value regressor on the rows with an order.
5. **uplift**: the T-learner with the logged propensities over every decision row, treatment =
   the offer sent or "no message", outcome = any order within the window.

Decisions: the logging policy's own decision log (``logging_decisions``, with suppressions and
exact propensities) is the best input. Without it (what most teams have: an ESP export of sends
and responses) the decisions are rebuilt from the sends, every customer-day without a message
is a control ("no message") row, and the propensities are estimated by a cross-fitted classifier
of the logged action, used only where the ``sent`` events carry no ``propensity``
(:mod:`training.propensity`, which also says what bias this can leave). A decision table that
starts later than the history (a served log exported over an ESP history) is used from its
start; the decisions before it are rebuilt. ``TrainResult.info["propensity_source"]`` says
which (``logged``, ``estimated`` or ``estimated where missing``).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.features.eventlog import EventLog
from nextbest.features.examples import decision_examples
from nextbest.features.history import Population
from nextbest.features.io import find_table, load_dataset, read_optional_table
from nextbest.features.validate import check
from nextbest.decision.candidates import candidate_frame, customer_columns
from nextbest.decision.artifact import GivenOpen
from nextbest.training.models import ResponseClassifier, ValueRegressor
from nextbest.decision.policy import NO_MESSAGE, DecisionPolicy, PolicyModels, with_open_estimate
from nextbest.training.propensity import PropensityModel, decisions_from_sends, fill_propensities, propensity_info
from nextbest.training.settings import TrainingSettings
from nextbest.training.uplift import UpliftLearner

log = logging.getLogger(__name__)

RESPONSES = {"open": "opened", "click": "clicked", "conversion": "converted_attributed",
             "unsubscribe": "unsubscribed"}
FUNNEL = ("conversion", "unsubscribe")  # responses that may follow an open (see use_funnel)
FUNNEL_SHARE = 0.95


@dataclass
class Dataset:
    customers: pd.DataFrame
    events: pd.DataFrame
    decisions: pd.DataFrame
    path: Path
    rebuilt: bool = False          # decisions (some or all) rebuilt from the sends (training.propensity)
    event_log: EventLog | None = None             # the encoded log, when loading needed it already
    propensity_model: PropensityModel | None = None  # fitted when propensities are estimated
    propensity_info: dict = field(default_factory=lambda: {"propensity_source": "logged"})


@dataclass
class Split:
    """Examples of one time period: every decision row, and candidate frames of the sends."""

    examples: pd.DataFrame
    send: np.ndarray          # bool (n,)
    X: pd.DataFrame           # candidate frame of every row (NaN candidate for suppressions)


@dataclass
class TrainResult:
    policy: DecisionPolicy
    settings: TrainingSettings
    train: Split
    valid: Split
    log: EventLog
    population: Population
    dataset: Dataset
    timings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Stopwatch:
    """Wall time per named stage, logged as each ends."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        log.info("stage %s ...", name)
        yield
        self.timings[name] = time.perf_counter() - t0
        log.info("stage %s: %.1f s", name, self.timings[name])


def load_training_data(data_dir: str | Path, config: Config, estimate_propensities: bool = True,
                       seed: int = 0) -> Dataset:
    """Customers, events (validated) and the logged decisions of a data directory.

    Without a ``logging_decisions`` table, or before the start of one, the decisions are rebuilt
    from the sends (:func:`training.propensity.decisions_from_sends`); their missing propensities
    are then estimated here (``estimate_propensities``) or left NaN (``propensity_estimated``
    True) for :func:`prepare`, which estimates only those of the rows it uses.
    """
    data_dir = Path(data_dir)
    customers, events = load_dataset(data_dir)
    files = {name: str(find_table(data_dir, name)) for name in ("customers", "events")}
    customers, events = check(customers, events, config, files=files)
    decisions = read_optional_table(data_dir, "logging_decisions")
    if decisions is not None:
        missing = {"customer_id", "ts", "action", "offer", "propensity", "message_id"} - set(decisions.columns)
        if missing:
            raise ValueError(f"{data_dir}: logging_decisions lacks column(s) {sorted(missing)}")
        decisions["ts"] = pd.to_datetime(decisions["ts"], utc=True)
        start = decisions["ts"].min().floor("D")
        sent = events[events["event"].astype(str) == "sent"]
        early = sent[pd.to_datetime(sent["ts"], utc=True) < start]
        if early.empty:  # the table covers the history
            return Dataset(customers, events, decisions, data_dir)
        log.info("%s: logging_decisions starts %s; the %d sends before it are rebuilt into decisions",
                 data_dir, start, len(early))
    else:
        start = None
        log.info("%s: no logging_decisions table: decisions are rebuilt from the sends, every customer-day without "
                 "a message is a control row, missing propensities are estimated", data_dir)
    event_log = EventLog.build(customers, events, config)
    rebuilt = decisions_from_sends(event_log, config, before=start)
    if decisions is not None:
        rebuilt = pd.concat([rebuilt, decisions.assign(propensity_estimated=False)], ignore_index=True)
    data = Dataset(customers, events, rebuilt, data_dir, True, event_log)
    if estimate_propensities:
        population = Population.from_log(event_log)
        estimate_missing_propensities(data, config, population, seed)
        data.decisions = fill_propensities(data.propensity_model, event_log, data.decisions, population)
        data.propensity_info = propensity_info(data.propensity_model, data.decisions)
    return data


def estimate_missing_propensities(data: Dataset, config: Config, population: Population | None = None,
                                  seed: int = 0) -> PropensityModel:
    """Fit the propensity classifier on the rebuilt decisions of ``data`` (kept on ``data``)."""
    if data.propensity_model is None:
        rebuilt = data.decisions[data.decisions["day_start"].notna()] if "day_start" in data.decisions \
            else data.decisions.iloc[:0]
        if rebuilt.empty:
            raise ValueError("no rebuilt decisions to learn the logging policy's propensities from")
        data.propensity_model = PropensityModel(config, random_state=seed).fit(data.event_log, rebuilt, population)
    return data.propensity_model


def _sample(idx: np.ndarray, limit: int, rng) -> np.ndarray:
    return np.sort(rng.choice(idx, limit, replace=False)) if len(idx) > limit else idx


def time_split(decisions: pd.DataFrame, settings: TrainingSettings, window_hours: float,
               data_end: pd.Timestamp) -> tuple[pd.Series, pd.Timestamp]:
    """Which decisions are usable (after the warm-up, with a complete outcome window), and the time
    from which they validate: decisions from ``cut`` on are never trained on."""
    ts = decisions["ts"]
    first = ts.min()
    complete = ts + pd.Timedelta(hours=window_hours) <= data_end
    usable = (ts >= first + pd.Timedelta(days=settings.warmup_days)) & complete
    if not usable.any():
        raise ValueError("no decision has both a warm-up history and a complete outcome window; "
                         f"need more than {settings.warmup_days} days plus {window_hours:g} hours of data")
    return usable, ts[usable].max() - pd.Timedelta(days=settings.validation_days)


def select_decisions(decisions: pd.DataFrame, settings: TrainingSettings, window_hours: float,
                     data_end: pd.Timestamp, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and validation decisions: warm-up and incomplete windows dropped, time split, sampled."""
    ts = decisions["ts"]
    usable, cut = time_split(decisions, settings, window_hours, data_end)
    rng = np.random.default_rng(seed)
    send = (decisions["action"] == "send").to_numpy()
    out = []
    for sel, share in (((ts < cut) & usable, 1.0), ((ts >= cut) & usable, 0.25)):
        sel = sel.to_numpy()
        limit = max(int(settings.max_rows_per_model * share), 1000)
        rows = np.concatenate([_sample(np.flatnonzero(sel & send), limit, rng),
                               _sample(np.flatnonzero(sel & ~send), limit, rng)])
        out.append(decisions.iloc[np.sort(rows)].reset_index(drop=True))
    if min(len(out[0]), len(out[1])) == 0:
        raise ValueError("the time split left no training or no validation decisions; lower training.validation_days")
    log.info("decisions: %d train (before %s), %d validation", len(out[0]), cut, len(out[1]))
    return out[0], out[1]


def _split(examples: pd.DataFrame, config: Config, columns: list[str] | None) -> Split:
    send = (examples["action"] == "send").to_numpy()
    channel = np.where(send, examples["channel"].astype(object).to_numpy(), None)
    offer = np.where(send, examples["offer"].astype(object).to_numpy(), None)
    hour = np.where(send, examples["local_hour"].to_numpy(), -1)
    X = candidate_frame(examples, channel, hour, offer, config, columns)
    return Split(examples, send, X)


def fit_models(train: Split, valid: Split, config: Config, settings: TrainingSettings, watch: Stopwatch,
               seed: int = 0, callbacks=()) -> PolicyModels:
    """Fit every model of the policy (stages ``response_models`` and ``uplift``)."""
    params = settings.lightgbm
    es = settings.early_stopping_rounds
    Xs, Xv = train.X[train.send], valid.X[valid.send]
    ys, yv = train.examples[train.send], valid.examples[valid.send]
    fitted = {}
    cols = [c for c in train.X.columns if not c.startswith("cand_")]
    with watch.stage("response_models"):
        for name, outcome in RESPONSES.items():
            if name in FUNNEL and use_funnel(ys, outcome, settings.response_funnel, name):
                opened, opened_v = ys["opened"].to_numpy(bool), yv["opened"].to_numpy(bool)
                given = ResponseClassifier(params, es, seed).fit(
                    Xs[opened], ys[outcome].to_numpy()[opened],
                    eval_set=(Xv[opened_v], yv[outcome].to_numpy()[opened_v]), callbacks=callbacks)
                fitted[name] = GivenOpen(fitted["open"], given)
                continue
            fitted[name] = ResponseClassifier(params, es, seed).fit(
                Xs, ys[outcome].to_numpy(), eval_set=(Xv, yv[outcome].to_numpy()), callbacks=callbacks)
        ordered = train.examples["converted"].to_numpy() & (train.examples["order_value"].to_numpy() > 0)
        ordered_v = valid.examples["converted"].to_numpy() & (valid.examples["order_value"].to_numpy() > 0)
        value = ValueRegressor(params, es, seed).fit(
            train.X.loc[ordered, cols], train.examples.loc[ordered, "order_value"].to_numpy(),
            eval_set=(valid.X.loc[ordered_v, cols], valid.examples.loc[ordered_v, "order_value"].to_numpy()))
    with watch.stage("uplift"):
        X = uplift_frame(train, fitted["open"])
        treatment = np.where(train.send, train.examples["offer"].astype(object).to_numpy(), NO_MESSAGE)
        uplift = UpliftLearner(NO_MESSAGE, "t", params=params, early_stopping_rounds=es,
                               random_state=seed).fit(
            X, treatment, train.examples["converted"].to_numpy().astype(float),
            propensity=train.examples["propensity"].to_numpy(), groups=train.examples["customer_id"].to_numpy())
    return PolicyModels(open=fitted["open"], click=fitted["click"], conversion=fitted["conversion"],
                        unsubscribe=fitted["unsubscribe"], value=value, uplift=uplift,
                        customer_columns=cols)


def use_funnel(sends: pd.DataFrame, outcome: str, mode: str, name: str = "") -> bool:
    """Whether ``outcome`` is modelled as P(open) x P(outcome | opened) (``training.response_funnel``):
    ``on``, ``off``, or ``auto``: when at least 95% of the positive outcomes among ``sends`` followed
    an open of the message (untracked opens, as on many SMS gateways, would make the funnel miss
    the rest) and there are opened rows of both outcomes to learn from."""
    if mode == "off":
        return False
    y, opened = sends[outcome].to_numpy(bool), sends["opened"].to_numpy(bool)
    if mode == "on":
        if not opened.any():
            raise ValueError(f"training.response_funnel is on but no training send was opened ({name})")
        return True
    share = (y & opened).sum() / max(y.sum(), 1)
    ok = y.any() and share >= FUNNEL_SHARE and (y & opened).sum() >= 20 and (~y & opened).sum() >= 20
    log.info("%s: %.1f%% of the %d positive outcomes followed an open; %s", name, 100 * share, int(y.sum()),
             "P(open) x P(%s | opened)" % name if ok else "modelled directly over every send")
    return bool(ok)


def uplift_frame(split: Split, open_model: ResponseClassifier) -> pd.DataFrame:
    """Candidate frame plus the open model's estimate for the candidate (NaN for no message)."""
    X = split.X.copy()
    p = np.full(len(X), np.nan, dtype=np.float32)
    if split.send.any():
        p[split.send] = open_model.predict_proba(X[split.send])[:, 1]
    return with_open_estimate(X, p)


@dataclass
class Prepared:
    """Everything before fitting: the data, its encoded log and priors, and the two splits."""

    dataset: Dataset
    log: EventLog
    population: Population
    train: Split
    valid: Split
    info: dict


def prepare(data_dir: str | Path, config: Config, settings: TrainingSettings, watch: Stopwatch,
            seed: int = 0, dataset: Dataset | None = None, dask=None) -> Prepared:
    """Stages ``load``, ``encode`` and ``examples`` (see the module docstring).

    ``dask`` (``features.partitioned.DaskOptions``) builds the training examples on Dask, per
    partition of the event log hashed by customer; they equal the pandas path's. The selected
    decisions are sampled (``training.max_rows_per_model``) before their examples are built, so
    the examples fit in the client's memory and the models are fitted there; the client still
    encodes the whole event log for the later stages (propensities, the off-policy headline and
    the report), which bounds the data ``train --dask`` handles by the client's memory.
    """
    with watch.stage("load"):
        data = dataset or load_training_data(data_dir, config, estimate_propensities=False, seed=seed)
    with watch.stage("encode"):
        event_log = data.event_log or EventLog.build(data.customers, data.events, config)
        data.event_log = event_log
        population = Population.from_log(event_log)
    window = config.objective.attribution_window_hours
    data_end = pd.Timestamp(int(event_log.t.max()) + 1, unit="ms", tz="UTC")
    try:
        tr, va = select_decisions(data.decisions, settings, window, data_end, seed)
        if data.rebuilt:
            with watch.stage("propensity"):
                estimate_missing_propensities(data, config, population, seed)
                tr, va = (fill_propensities(data.propensity_model, event_log, d, population) for d in (tr, va))
                data.propensity_info = propensity_info(data.propensity_model, pd.concat([tr, va], ignore_index=True))
    except ValueError as exc:
        if not data.rebuilt:
            raise
        raise ValueError(f"{exc} (there is no complete `logging_decisions` table, so the decisions were rebuilt from "
                         "the sent events: see README 'Training data')") from exc
    with watch.stage("examples"):
        if dask is not None and not data.rebuilt:
            from nextbest.features.partitioned import training_examples

            (ex_tr, ex_va), _ = training_examples(data_dir, config, dask, [tr, va], window, data_end)
        else:
            ex_tr = decision_examples(event_log, tr, window, data_end, population)
            ex_va = decision_examples(event_log, va, window, data_end, population)
        columns = customer_columns(ex_tr, config, event_log.attributes.columns)
        train_split = _split(ex_tr, config, columns)
        valid_split = _split(ex_va, config, columns)
    info = {"train_decisions": len(ex_tr), "valid_decisions": len(ex_va),
            "train_sends": int(train_split.send.sum()), "valid_sends": int(valid_split.send.sum()),
            "data_end": data_end.isoformat(), "validation_from": str(ex_va["ts"].min()),
            "validation_cut": time_split(data.decisions, settings, window, data_end)[1].isoformat(),
            **data.propensity_info}
    return Prepared(data, event_log, population, train_split, valid_split, info)


def train(data_dir: str | Path, config: Config, settings: TrainingSettings | None = None,
          seed: int = 0, version: str = "dev", dataset: Dataset | None = None, callbacks=(),
          prepared: Prepared | None = None) -> TrainResult:
    """Train the policy on a data directory; see the module docstring for the stages.

    ``prepared`` reuses the examples of an earlier :func:`prepare` (``nextbest tune`` builds
    them once for all trials).
    """
    settings = settings or TrainingSettings.from_config(config)
    watch = Stopwatch()
    p = prepared or prepare(data_dir, config, settings, watch, seed, dataset)
    models = fit_models(p.train, p.valid, config, settings, watch, seed, callbacks)
    policy = DecisionPolicy(config, models, version, settings.uplift_mode)
    return TrainResult(policy, settings, p.train, p.valid, p.log, p.population, p.dataset, watch.timings,
                       dict(p.info))
