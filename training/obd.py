"""The Open Bandit Dataset sample (``data/obd``): real logged bandit feedback to check the
off-policy estimators and the logged-bandit learner on.

Two logs of the ZOZOTOWN "ALL" campaign, 10,000 rounds each: one by a uniform random policy
(propensity 1/80 per slot) and one by the production Bernoulli Thompson sampling (BTS) policy.
Each round shows items in 3 slots; a row is one (item, slot) with its click. The BTS policy
ignores the context; its probability of putting item ``i`` in slot ``k`` comes from Monte Carlo
over its Beta priors (``prior_bts.yaml``), which is its ``action_dist`` on any round.

:func:`run_obd` gives three checks with bootstrap confidence intervals:

1. the value (CTR) of BTS estimated from the random log, against BTS's on-policy CTR;
2. the value of the random policy estimated from the BTS log, against the random CTR (poor
   overlap: BTS rarely shows most items, which the effective sample size shows);
3. a policy learned (``training.logged_learner``) on half of the random log, estimated on the
   other half, against the random policy's CTR on that half: greedy (one item per slot, so
   only ~1 in 80 logged rounds matches it and the interval is wide) and as a softmax of the same
   model (better overlap, tighter interval).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from nextbest.features.config import Config, load_config
from nextbest.training.logged_learner import Design, LoggedBanditLearner
from nextbest.training.ope import CrossFitRewardModel, LoggedBandit, estimate

log = logging.getLogger(__name__)

OBD_DIR = Path(__file__).resolve().parents[1] / "data" / "obd"
N_ITEMS, N_SLOTS = 80, 3
USER_COLUMNS = [f"user_feature_{i}" for i in range(4)]
SOFTMAX_TEMPERATURE = 0.01  # on predicted CTR: items within ~0.01 of the best share the slot (ESS ~350 of 5,000)


@dataclass
class ObdLog:
    feedback: LoggedBandit          # context: the 4 user features (categorical); position 0..2
    affinity: np.ndarray            # (n, 80) user-item affinity: the per-(round, item) features
    items: pd.DataFrame             # (80, 4) item features
    behavior: str


def load_obd(behavior: str, data_dir: str | Path | None = None) -> ObdLog:
    """Read the ``random`` or ``bts`` log."""
    if behavior not in ("random", "bts"):
        raise ValueError(f"behavior must be 'random' or 'bts', got {behavior!r}")
    folder = Path(data_dir or OBD_DIR) / behavior
    path = next((p for p in (folder / "all.csv.gz", folder / "all.csv") if p.exists()), None)
    if path is None:
        raise FileNotFoundError(f"no all.csv(.gz) in {folder}")
    raw = pd.read_csv(path, index_col=0)
    items = pd.read_csv(folder / "item_context.csv", index_col=0).set_index("item_id").sort_index()
    context = pd.DataFrame({c: raw[c].astype("category") for c in USER_COLUMNS})
    feedback = LoggedBandit(action=raw["item_id"].to_numpy(), reward=raw["click"].to_numpy(float),
                            propensity=raw["propensity_score"].to_numpy(float), n_actions=N_ITEMS,
                            context=context, position=raw["position"].to_numpy() - 1)
    affinity = raw[[f"user-item_affinity_{i}" for i in range(N_ITEMS)]].to_numpy(float)
    return ObdLog(feedback, affinity, items, behavior)


def bts_action_dist(n_rounds: int, data_dir: str | Path | None = None, n_sim: int = 100_000,
                    seed: int = 0) -> np.ndarray:
    """BTS's probability of each item in each slot, Monte Carlo over its Beta priors; (n, 80, 3)."""
    prior = yaml.safe_load((Path(data_dir or OBD_DIR) / "prior_bts.yaml").read_text())["all"]
    alpha, beta = np.asarray(prior["alpha"], float), np.asarray(prior["beta"], float)
    rng = np.random.default_rng(seed)
    counts = np.zeros((N_ITEMS, N_SLOTS))
    for lo in range(0, n_sim, 10_000):
        draws = rng.beta(alpha, beta, (min(10_000, n_sim - lo), N_ITEMS))
        top = np.argsort(-draws, axis=1)[:, :N_SLOTS]
        for k in range(N_SLOTS):
            counts[:, k] += np.bincount(top[:, k], minlength=N_ITEMS)
    dist = counts / n_sim
    return np.broadcast_to(dist, (n_rounds, N_ITEMS, N_SLOTS))


def reward_model(obd: ObdLog, seed: int = 0, config: Config | None = None) -> np.ndarray:
    """Cross-fitted LightGBM click model for every (round, item, slot), (n, 80, 3): the config's
    ``offpolicy.obd_reward_model`` over its ``offpolicy.reward_model`` (default: ``defaults.yaml``)."""
    config = load_config() if config is None else config
    fb = obd.feedback
    design = Design(fb.context, N_ITEMS, obd.items, obd.affinity[:, :, None])
    rows = np.arange(fb.n)
    X = design.frame(rows, fb.action, fb.position)
    alt = np.repeat(np.arange(N_ITEMS * N_SLOTS), fb.n)      # alternative-major: (item, slot) j, round i
    X_eval = design.frame(np.tile(rows, N_ITEMS * N_SLOTS), alt // N_SLOTS, alt % N_SLOTS)
    params = config.offpolicy.obd_reward_model.params()
    _, q = CrossFitRewardModel(n_folds=2, params=params, random_state=seed, config=config).fit_predict(
        X, fb.reward, X_eval, N_ITEMS * N_SLOTS)
    return q.reshape(fb.n, N_ITEMS, N_SLOTS)


def _rows(name: str, truth: float, truth_ci: tuple[float, float], res) -> list[dict]:
    out = []
    for e in res.estimates.values():
        out.append({"check": name, "estimator": e.estimator, "estimate": e.value, "ci_low": e.ci_low,
                    "ci_high": e.ci_high, "on_policy_ctr": truth, "on_policy_ci_low": truth_ci[0],
                    "on_policy_ci_high": truth_ci[1], "relative_error": abs(e.value - truth) / truth,
                    "ess": res.diagnostics.ess, "unsupported_logged": res.diagnostics.unsupported_logged})
    return out


def _mean_ci(x: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    b = np.array([x[rng.integers(0, len(x), len(x))].mean() for _ in range(n_boot)])
    return float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))


def run_obd(data_dir: str | Path | None = None, seed: int = 0, n_boot: int = 1000,
            config: Config | None = None) -> pd.DataFrame:
    """The three checks of the module docstring, one row per (check, estimator); the LightGBM
    models' parameters are the config's ``offpolicy`` ones (default: ``defaults.yaml``)."""
    config = load_config() if config is None else config
    random, bts = load_obd("random", data_dir), load_obd("bts", data_dir)
    ctr = {b.behavior: b.feedback.reward.mean() for b in (random, bts)}
    ci = {b.behavior: _mean_ci(b.feedback.reward, n_boot, seed) for b in (random, bts)}
    rows = []
    # 1. BTS from the random log
    dist = bts_action_dist(random.feedback.n, data_dir, seed=seed)
    res = estimate(random.feedback, dist, reward_model(random, seed, config), n_boot=n_boot, seed=seed)
    rows += _rows("bts_from_random_log", ctr["bts"], ci["bts"], res)
    # 2. random from the BTS log
    uniform = np.full((bts.feedback.n, N_ITEMS, N_SLOTS), 1.0 / N_ITEMS)
    res = estimate(bts.feedback, uniform, reward_model(bts, seed, config), n_boot=n_boot, seed=seed)
    rows += _rows("random_from_bts_log", ctr["random"], ci["random"], res)
    # 3. a learned policy: fit on half the random log, evaluate on the other half
    rng = np.random.default_rng(seed)
    train = rng.random(random.feedback.n) < 0.5
    tr, te = np.flatnonzero(train), np.flatnonzero(~train)
    learner = LoggedBanditLearner(n_positions=N_SLOTS, random_state=seed, config=config).fit(
        random.feedback.subset(tr), random.items, random.affinity[tr][:, :, None])
    held = ObdLog(random.feedback.subset(te), random.affinity[te], random.items, "random")
    q_held = reward_model(held, seed, config)
    held_ci = _mean_ci(held.feedback.reward, n_boot, seed)
    greedy = learner.action_dist(held.feedback.context, held.affinity[:, :, None])
    res = estimate(held.feedback, greedy, q_held, n_boot=n_boot, seed=seed)
    rows += _rows("learned_greedy_vs_random", held.feedback.reward.mean(), held_ci, res)
    # the same model played as a softmax over the top items: less certain, far better overlap
    learner.temperature = SOFTMAX_TEMPERATURE
    soft = learner.action_dist(held.feedback.context, held.affinity[:, :, None])
    res = estimate(held.feedback, soft, q_held, n_boot=n_boot, seed=seed)
    rows += _rows("learned_softmax_vs_random", held.feedback.reward.mean(), held_ci, res)
    out = pd.DataFrame(rows)
    log.info("OBD checks:\n%s", out.to_string())
    return out
