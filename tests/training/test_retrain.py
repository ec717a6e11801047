"""The paired off-policy gate of ``nextbest retrain`` against a known truth.

A synthetic bandit whose reward means are known: contexts ``x1 ~ U(0, 1)``, ``x2 ~ N(0, 1)``,
four actions, mean reward ``mu(x, a) = 3 x1 + x2 + theta_a x1 + c_a`` (a large part every action
shares, as a customer's baseline is in nextbest's rewards), noise ``N(0, 1)``, a logging policy
with known propensities. The true value of a policy is ``E_x[sum_a pi(a|x) mu(x, a)]``, computed
exactly for the policies below.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from nextbest.training.ope import CrossFitRewardModel, estimate_paired, estimate_reduced
from nextbest.training.retrain import paired_gate

A = 4
THETA = np.array([0.0, 1.0, -1.0, 0.5])
C = np.array([0.0, -0.3, 0.6, -0.1])


def mu(x1, x2):
    """(n, A) mean reward of every action."""
    return (3 * x1 + x2)[:, None] + THETA[None, :] * x1[:, None] + C[None, :]


def logging_dist(x1):
    """(n, A): the logging policy favours action 0 on small x1 and action 3 on large x1."""
    low, high = np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.1, 0.2, 0.3, 0.4])
    return np.where((x1 < 0.5)[:, None], low, high)


POLICIES = {
    "always_0": lambda x1: np.eye(A)[np.zeros(len(x1), int)],
    # the best action: 2 while x1 < 0.45 (2 x1 + 0.6 > 4 x1 - 0.3), 1 above
    "best": lambda x1: np.eye(A)[np.where(x1 < 0.45, 2, 1)],
    # a retrained policy's usual relation to the champion: the same choice on most customers
    # (here 80%), a worse one (action 0) on the rest
    "best_but_0_above_0.8": lambda x1: np.eye(A)[np.where(x1 < 0.45, 2, np.where(x1 < 0.8, 1, 0))],
}


def true_value(name: str) -> float:
    """E_x[sum_a pi(a|x) mu(x, a)]: x2 has mean 0 and the policies do not read it; exact on a fine x1 grid."""
    x1 = (np.arange(200_000) + 0.5) / 200_000
    return float((POLICIES[name](x1) * mu(x1, np.zeros_like(x1))).sum(axis=1).mean())


def simulate(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(size=n), rng.normal(size=n)
    p = logging_dist(x1)
    action = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    reward = mu(x1, x2)[np.arange(n), action] + rng.normal(size=n)
    return x1, x2, action, p[np.arange(n), action], reward


def paired_and_unpaired(candidate: str, champion: str, n: int, seed: int):
    """Paired DR difference, and the two separate DR estimates (same cross-fitted reward model)."""
    x1, x2, action, propensity, reward = simulate(n, seed)
    cats = pd.CategoricalDtype(range(A))
    X = pd.DataFrame({"x1": x1, "x2": x2, "action": pd.Series(action).astype(cats)})
    X_eval = pd.DataFrame({"x1": np.tile(x1, A), "x2": np.tile(x2, A),
                           "action": pd.Series(np.repeat(np.arange(A), n)).astype(cats)})
    q_logged, q = CrossFitRewardModel(n_folds=2, random_state=seed).fit_predict(X, reward, X_eval, A)
    rows = np.arange(n)
    dist = {name: POLICIES[name](x1) for name in (candidate, champion)}
    pi = {name: d[rows, action] for name, d in dist.items()}
    dm = {name: (d * q).sum(axis=1) for name, d in dist.items()}
    paired = estimate_paired(reward, propensity, pi[candidate], pi[champion], dm[candidate], dm[champion], q_logged,
                             n_boot=1000, seed=seed)
    separate = {name: estimate_reduced(reward, propensity, pi[name], dm[name], q_logged, estimators=("dr",),
                                       n_boot=1000, seed=seed + 1 + k)["dr"]
                for k, name in enumerate((candidate, champion))}
    return paired, separate


def test_the_paired_interval_covers_the_true_difference_and_is_narrower_than_the_unpaired_one():
    candidate, champion = "best", "best_but_0_above_0.8"
    truth = true_value(candidate) - true_value(champion)
    # by hand: the two differ only above 0.8, where action 1 beats action 0 by x - 0.3
    assert truth == pytest.approx(0.12, abs=1e-6)
    covered, ratios = 0, []
    for seed in range(12):
        paired, sep = paired_and_unpaired(candidate, champion, n=2000, seed=seed)
        assert paired.candidate == pytest.approx(sep[candidate].value)  # the same DR values, only paired
        assert paired.champion == pytest.approx(sep[champion].value)
        covered += paired.ci_low <= truth <= paired.ci_high
        unpaired_width = 2 * 1.96 * np.hypot(sep[candidate].se, sep[champion].se)
        ratios.append((paired.ci_high - paired.ci_low) / unpaired_width)
    # a calibrated 95% interval covers the truth in >= 10 of 12 independent logs with probability 0.98
    assert covered >= 10, f"the 95% interval covered the truth in {covered} of 12 logs"
    # where the policies agree, their terms cancel round by round: the interval shrinks a lot
    assert max(ratios) < 0.7, ratios


def test_the_gate_promotes_a_clearly_better_candidate_and_refuses_a_worse_or_equal_one():
    better, sep = paired_and_unpaired("best", "always_0", n=4000, seed=11)
    truth = true_value("best") - true_value("always_0")
    # by hand: int_0^.45 (2x + .6) dx + int_.45^1 (4x - .3) dx - int_0^1 3x dx = 1.9025 - 1.5
    assert truth == pytest.approx(0.4025, abs=1e-6)  # (coverage is the test above's: one log proves nothing)
    # policies that never agree share less, yet pairing still narrows the interval
    assert better.ci_high - better.ci_low < 2 * 1.96 * np.hypot(sep["best"].se, sep["always_0"].se)
    ok, why = paired_gate(better, 0.0)
    assert ok and why.startswith("promote") and better.ci_low > 0
    assert not paired_gate(better, min_gain=better.ci_high)[0]  # a demanding threshold holds it back

    worse, _ = paired_and_unpaired("always_0", "best", n=4000, seed=12)
    truth = true_value("always_0") - true_value("best")
    assert truth < 0 and worse.ci_high < 0
    ok, why = paired_gate(worse, 0.0)
    assert not ok and why.startswith("keep the champion")

    same, _ = paired_and_unpaired("always_0", "always_0", n=2000, seed=13)
    assert same.difference == 0 and same.ci_low == same.ci_high == 0
    assert not paired_gate(same, 0.0)[0]


def test_the_gate_with_snips_too_needs_both_lower_bounds_above_the_gain():
    x1, x2, action, propensity, reward = simulate(4000, 11)
    rows = np.arange(len(action))
    pi = {name: POLICIES[name](x1)[rows, action] for name in ("best", "always_0")}
    snips = estimate_paired(reward, propensity, pi["best"], pi["always_0"], estimator="snips", n_boot=1000, seed=11)
    truth = true_value("best") - true_value("always_0")
    assert snips.ci_low <= truth <= snips.ci_high and snips.ci_low > 0  # no reward model, same verdict
    dr, _ = paired_and_unpaired("best", "always_0", n=4000, seed=11)
    ok, why = paired_gate([dr, snips], 0.0)
    assert ok and "paired DR gain" in why and "paired SNIPS gain" in why and "every lower bound >" in why
    # the reward model says promote, the importance weights alone do not: keep the champion
    doubtful = dataclasses.replace(snips, difference=0.05, ci_low=-0.02, ci_high=0.12)
    ok, why = paired_gate([dr, doubtful], 0.0)
    assert not ok and why.startswith("keep the champion") and "lower bound of SNIPS <=" in why
    with pytest.raises(ValueError):
        paired_gate([], 0.0)
