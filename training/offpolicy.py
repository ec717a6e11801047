"""Off-policy evaluation of nextbest policies on nextbest's own decision log.

The decision log is the data contract's ``logging_decisions`` table (every decision, suppressions
included, with the exact propensity of its action) plus the ``events`` that followed; the
service writes both, the simulator too. Each logged decision is a round:

- context: the customer's engagement history at the start of the decision's UTC day (the
  policies are replayed there, with the contact history those features imply);
- action: suppress, or the exact (channel, local hour, offer) sent;
- reward: the profit of the customer's day (the config's ``offpolicy.reward_window_hours``, a day,
  because decisions are daily and longer windows would count the next days' messages too): margin x
  value of every order in the window, minus the offer cost of orders that redeem the message,
  the channel cost, and the unsubscribe cost if the message caused one.

A policy's probability of the exact logged action is its probability of the (channel, offer)
times 1 if its send hour for that pair is the logged hour (else 0): nextbest sends each pair at
one hour. The same code (``DecisionPolicy.decide``) that serves computes these probabilities:
what is evaluated is what is served, exploration and control group included (and the online
learner's corrections when its state is passed in).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nextbest.features.config import Config
from nextbest.features.eventlog import EventLog
from nextbest.features.history import Population, engagement_history
from nextbest.decision.objective import realized_profit
from nextbest.training.ope import CrossFitRewardModel, estimate_reduced
from nextbest.decision.policy import DecisionPolicy, Request
from nextbest.decision.rules import ContactHistory

log = logging.getLogger(__name__)


@dataclass
class LoggedRounds:
    features: pd.DataFrame   # (n, ...) one row per round, indexed by customer_id
    now: np.ndarray          # (n,) datetime64[ns, UTC]: the decision day's start
    action: np.ndarray       # (n,) option column: 0 suppress, 1 + k * O + j
    hour: np.ndarray         # (n,) logged local send hour, -1 for suppress
    propensity: np.ndarray   # (n,)
    reward: np.ndarray       # (n,)
    config: Config | None = None  # the config they were read with (its ``offpolicy`` section evaluates them)
    unsubscribed: np.ndarray | None = None  # (n,) the round's message caused an unsubscribe

    @property
    def n(self) -> int:
        return len(self.action)


def logged_rounds(data_dir: str | Path, config: Config, days: int = 7, max_rounds: int | None = 20000,
                  reward_window_hours: float | None = None, seed: int = 0, message_ids=None) -> LoggedRounds:
    """Rounds from the last ``days`` whole days of a data directory whose reward window is complete
    (only the decisions whose ``message_id`` is in ``message_ids``, if given: e.g. the served ones);
    ``reward_window_hours`` defaults to the config's ``offpolicy.reward_window_hours``."""
    from nextbest.training.train import load_training_data

    if reward_window_hours is None:
        reward_window_hours = config.offpolicy.reward_window_hours

    ds = load_training_data(data_dir, config)
    dec = ds.decisions.copy()
    if message_ids is not None:
        dec = dec[dec["message_id"].isin(set(message_ids))].reset_index(drop=True)
    dec["day"] = dec["ts"].dt.floor("D")
    data_end = ds.events["ts"].max()
    complete = dec["day"] + pd.Timedelta(hours=reward_window_hours) <= data_end
    last_days = sorted(dec.loc[complete, "day"].unique())[-days:]
    if not last_days:
        raise ValueError(f"{data_dir}: no logged day with a complete {reward_window_hours:g} h reward window")
    dec = dec[dec["day"].isin(last_days)].reset_index(drop=True)
    if max_rounds is not None and len(dec) > max_rounds:
        dec = dec.sample(max_rounds, random_state=seed).reset_index(drop=True)
    dec = dec.sort_values("day", kind="stable").reset_index(drop=True)
    log_ = EventLog.build(ds.customers, ds.events, config)
    pop = Population.from_log(log_)
    parts = []
    for day, sub in dec.groupby("day", sort=True):
        parts.append(engagement_history(log_, sub["customer_id"].astype(str).to_numpy(), day, pop))
    features = pd.concat(parts)
    K, O = len(config.channel_names), len(config.offer_names)
    send = (dec["action"] == "send").to_numpy()
    k = pd.Index(config.channel_names).get_indexer(dec["channel"].astype(object).where(send, None))
    j = pd.Index(config.offer_names).get_indexer(dec["offer"].astype(object).where(send, None))
    if (send & ((k < 0) | (j < 0))).any():
        raise ValueError("logged decisions name a channel or offer the config does not have")
    action = np.where(send, 1 + k * O + j, 0)
    hour = dec["local_hour"].to_numpy() if "local_hour" in dec else None
    if hour is None:
        raise ValueError("logging_decisions needs `local_hour` (the send's local hour) for off-policy evaluation")
    reward, unsub = _rewards(dec, ds.events, config, reward_window_hours, send, k, j)
    return LoggedRounds(features, dec["day"].to_numpy(), action, np.where(send, hour, -1),
                        dec["propensity"].to_numpy(float), reward, config, unsub)


def _rewards(dec: pd.DataFrame, events: pd.DataFrame, config: Config, window_hours: float, send: np.ndarray,
             channel: np.ndarray, offer: np.ndarray):
    """Each round's realized profit in its window (``decision.objective.realized_profit``) and
    whether its message caused an unsubscribe: every order of the customer in the window counts,
    those of the round's message redeem its offer; ``channel``/``offer`` codes of the sends (-1
    elsewhere)."""
    ev = events[["customer_id", "ts", "event", "message_id", "value"]]
    orders = ev[ev["event"] == "converted"]
    start = dec["day"].to_numpy()
    msg = dec["message_id"].astype(object).where(dec["message_id"].notna(), "").to_numpy()
    key = pd.DataFrame({"customer_id": dec["customer_id"].astype(str).to_numpy(), "row": np.arange(len(dec)),
                        "t0": start, "msg": msg})
    m = key.merge(orders.assign(customer_id=orders["customer_id"].astype(str)), on="customer_id")
    m = m[(m["ts"] >= m["t0"]) & (m["ts"] < m["t0"] + pd.Timedelta(hours=window_hours))]
    value = np.bincount(m["row"], weights=m["value"].to_numpy(float), minlength=len(dec))
    order_msg = m["message_id"].astype(object).where(m["message_id"].notna(), "-").to_numpy()
    redeem = m[order_msg == m["msg"].to_numpy()]
    rows = redeem["row"].to_numpy()
    redeemed = np.bincount(rows, minlength=len(dec))
    redeemed_value = np.bincount(rows, weights=redeem["value"].to_numpy(float), minlength=len(dec))
    unsub = key["msg"].isin(ev.loc[ev["event"] == "unsubscribed", "message_id"].dropna().astype(object)).to_numpy()
    return realized_profit(config, np.where(send, channel, -1), offer, value, redeemed, unsub, redeemed_value), unsub


@dataclass
class Replay:
    """A policy replayed on the rounds."""

    dist: np.ndarray        # (n, A) probability of every option
    hours: np.ndarray       # (n, A) its send hour per option (-1: suppress / not allowed)
    pi_logged: np.ndarray   # (n,) probability of the exact logged action
    inputs: np.ndarray      # (n, A, D) the online learner's inputs (its scores), for the reward model


def replay(policy: DecisionPolicy, rounds: LoggedRounds, seed: int = 0, learner=None) -> Replay:
    """Each round's decision distribution under ``policy`` (decided per logged day)."""
    n = rounds.n
    dist = hours = inputs = None
    days = pd.Series(rounds.now)
    for day, idx in days.groupby(days).indices.items():
        f = rounds.features.iloc[idx]
        out = policy.decide(f, ContactHistory.from_features(f, policy.config), Request(now=pd.Timestamp(day)),
                            explain=False, rng=np.random.default_rng(seed), learner=learner)
        if dist is None:
            A = out.action_dist.shape[1]
            dist, hours, inputs = np.zeros((n, A)), np.full((n, A), -1), np.zeros((n, A, out.learner_inputs.shape[2]))
        dist[idx] = out.action_dist
        hours[idx, 1:] = out.scores.hour.reshape(len(idx), -1)
        inputs[idx] = out.learner_inputs
    rows = np.arange(n)
    match = (rounds.action == 0) | (hours[rows, rounds.action] == rounds.hour)
    return Replay(dist, hours, dist[rows, rounds.action] * match, inputs)


def _reward_frame(inputs: np.ndarray, rows: np.ndarray, action: np.ndarray, hour: np.ndarray, A: int) -> pd.DataFrame:
    x = inputs[rows, action]
    return pd.DataFrame({"baseline": x[:, 1], "value": x[:, 3], "p_open": x[:, 4], "revenue": x[:, 5],
                         "hour": np.where(action > 0, hour, -1).astype(float),
                         "action": pd.Categorical(action, categories=range(A))})


def evaluate_policies(rounds: LoggedRounds, policies: dict[str, DecisionPolicy], n_boot: int = 1000,
                      seed: int = 0, progress: bool = False, learners: dict | None = None) -> pd.DataFrame:
    """IPS, SNIPS, DR and DM value of each policy on the rounds, one row per (policy, estimator).

    ``learners`` (policy name -> ``OnlineLearner``) replays a policy with its online learner's
    state; without one a policy is evaluated on its offline values (``nextbest evaluate`` does
    that: a registered version carries no learner state).

    The DR/DM reward model (cross-fitted LightGBM with the rounds' config's ``offpolicy.reward_model``,
    folds by customer) reads the first policy's scores of the option (baseline, value, P(open),
    extra revenue), the option and its hour.
    """
    names = list(policies)
    learners = learners or {}
    replays = {name: replay(policies[name], rounds, seed, learners.get(name))
               for name in tqdm(names, desc="replaying", disable=not progress)}
    ref = replays[names[0]]
    n, A = ref.dist.shape
    rows = np.arange(n)
    X = _reward_frame(ref.inputs, rows, rounds.action, rounds.hour, A)
    groups = rounds.features.index.to_numpy()
    out = []
    for name in names:
        rp = replays[name]
        alt = np.repeat(np.arange(A), n)
        X_eval = _reward_frame(ref.inputs, np.tile(rows, A), alt, rp.hours[np.tile(rows, A), alt], A)
        q_logged, q = CrossFitRewardModel(n_folds=2, random_state=seed, config=rounds.config).fit_predict(
            X, rounds.reward, X_eval, A, groups=groups)
        res = estimate_reduced(rounds.reward, rounds.propensity, rp.pi_logged, (rp.dist * q).sum(axis=1), q_logged,
                               n_boot=n_boot, seed=seed)
        for e in res.estimates.values():
            out.append({"policy": name, "estimator": e.estimator, "value": e.value, "ci_low": e.ci_low,
                        "ci_high": e.ci_high, "se": e.se, "ess": res.diagnostics.ess,
                        "unsupported_logged": res.diagnostics.unsupported_logged,
                        "mean_weight": res.diagnostics.mean_weight, "rounds": n})
    return pd.DataFrame(out)


def promotion_gate(table: pd.DataFrame, candidate: str, champion: str, estimator: str = "dr") -> tuple[bool, str]:
    """Promote only if the candidate's lower confidence bound is at least the champion's estimate."""
    t = table.set_index(["policy", "estimator"])
    cand, champ = t.loc[(candidate, estimator)], t.loc[(champion, estimator)]
    ok = bool(cand["ci_low"] >= champ["value"])
    verdict = "passes" if ok else "fails"
    return ok, (f"{candidate} {verdict} the promotion gate ({estimator}): lower 95% bound {cand['ci_low']:.4f} "
                f"{'>=' if ok else '<'} {champion}'s estimate {champ['value']:.4f} "
                f"(candidate {cand['value']:.4f} [{cand['ci_low']:.4f}, {cand['ci_high']:.4f}])")
