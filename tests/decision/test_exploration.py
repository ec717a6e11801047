"""Exploration: exact propensities, the budget, Thompson's Monte Carlo error and the control group;
plus contract tests that run every exploration method through the trained policy."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from nextbest.features.config import load_config
from nextbest.features.history import engagement_history
from nextbest.decision.exploration import METHODS, Exploration, draw
from nextbest.decision.policy import Request
from nextbest.decision.rules import ContactHistory

NEG = -np.inf


@pytest.fixture(scope="module")
def base():
    return Exploration.from_config(load_config())


def values(n=1):
    row = np.array([0.0, 0.30, 0.25, NEG, 0.10, -0.2])
    return np.tile(row, (n, 1))


@pytest.mark.parametrize("method", METHODS)
def test_probabilities_are_a_distribution_over_allowed_options_within_budget(base, method):
    ex = base.with_(method=method, budget=0.2)
    mean = values(50) + np.random.default_rng(0).normal(0, 0.05, (50, 6))
    probs, greedy = ex.distribution(mean, np.full(mean.shape, 0.1), np.random.default_rng(1))
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert (probs >= 0).all() and (probs[:, 3] == 0).all()
    assert (1 - probs[np.arange(50), greedy] <= 0.2 + 1e-12).all()
    choice = draw(probs, np.random.default_rng(2))
    p = probs[np.arange(50), choice]
    assert ((p > 0) & (p <= 1)).all() and (choice != 3).all()


def test_epsilon_greedy_has_the_textbook_probabilities(base):
    probs, greedy = base.with_(method="epsilon_greedy", epsilon=0.1, budget=1.0).distribution(values(), None)
    assert greedy[0] == 1
    assert probs[0, 1] == pytest.approx(0.9 + 0.1 / 5) and probs[0, 0] == pytest.approx(0.1 / 5)
    probs, _ = base.with_(method="epsilon_greedy", epsilon=0.5, budget=0.1).distribution(values(), None)
    assert probs[0, 1] == pytest.approx(0.9)  # the budget caps what goes elsewhere


def test_softmax_is_boltzmann(base):
    probs, _ = base.with_(method="softmax", temperature=0.1, budget=1.0).distribution(values(), None)
    v = values()[0]
    z = np.exp(np.where(np.isfinite(v), v / 0.1, -np.inf))
    assert np.allclose(probs[0], z / z.sum())


@pytest.mark.parametrize("method", METHODS)
def test_empirical_frequencies_match_propensities(base, method):
    n = 40_000
    ex = base.with_(method=method, budget=0.5, samples=64)
    mean, sd = values(n), np.full((n, 6), 0.15)
    probs, _ = ex.distribution(mean, sd, np.random.default_rng(3))
    choice = draw(probs, np.random.default_rng(4))
    expected = probs.mean(axis=0)
    freq = np.bincount(choice, minlength=6) / n
    se = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= 4 * se + 1e-12), (freq, expected)


def thompson_exact(mean, sd):
    """P(option a has the largest draw) for independent normals, by numerical integration."""
    out = []
    for a in range(len(mean)):
        def f(x, a=a):
            others = [stats.norm.cdf(x, mean[b], sd[b]) for b in range(len(mean)) if b != a]
            return stats.norm.pdf(x, mean[a], sd[a]) * math.prod(others)
        out.append(integrate.quad(f, -5, 5, limit=200)[0])
    return np.array(out)


def test_thompson_monte_carlo_error_stays_within_the_documented_bound(base):
    mean, sd = np.array([0.0, 0.10, 0.05, 0.12]), np.array([0.05, 0.10, 0.08, 0.15])
    exact = thompson_exact(mean, sd)
    samples, delta, A = 512, 0.05, 4
    bound = math.sqrt(math.log(2 * A / delta) / (2 * samples))
    ex = base.with_(method="thompson", samples=samples, budget=1.0)
    probs, _ = ex.distribution(np.tile(mean, (400, 1)), np.tile(sd, (400, 1)), np.random.default_rng(7))
    err = np.abs(probs - exact).max(axis=1)
    assert (err <= bound).mean() >= 1 - delta            # the bound holds per decision
    assert np.allclose(probs.mean(axis=0), exact, atol=0.01)  # and the estimate is unbiased


def test_control_group_is_stable_and_of_the_configured_size(base):
    ids = [f"c{i:07d}" for i in range(40_000)]
    ctl = base.with_(control_share=0.05).in_control(ids)
    assert abs(ctl.mean() - 0.05) < 4 * math.sqrt(0.05 * 0.95 / len(ids))
    assert (ctl == base.with_(control_share=0.05).in_control(ids)).all()
    other = base.with_(control_share=0.05, control_salt="another").in_control(ids)
    assert (ctl != other).any()
    assert not base.with_(control_share=0.0).in_control(ids).any()


def test_bad_settings_are_refused(base):
    from nextbest.features.config import ConfigError

    with pytest.raises(ConfigError, match="method"):
        base.with_(method="ucb")
    with pytest.raises(ConfigError, match="budget"):
        base.with_(budget=1.5)


# ---------------------------------------------------------------- contract tests over every policy
@pytest.fixture(scope="module")
def snapshot(trained, small_world):
    ids = small_world.customers["customer_id"]
    return engagement_history(trained.log, ids, small_world.end, trained.population)


@pytest.mark.parametrize("method", METHODS)
def test_every_policy_keeps_the_contract(trained, snapshot, config, method):
    policy = trained.policy.with_exploration(trained.policy.exploration.with_(method=method, budget=0.3,
                                                                               control_share=0.1))
    contact = ContactHistory.from_features(snapshot, config)
    now = pd.Timestamp("2026-10-01 07:00", tz="UTC")
    out = policy.decide(snapshot, contact, Request(now=now), rng=np.random.default_rng(11))
    d, probs = out.frame, out.action_dist
    n = len(d)
    K, O = len(config.channel_names), len(config.offer_names)
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs >= 0).all()
    allowed = np.concatenate([np.ones((n, 1), bool), np.isfinite(out.scores.value).reshape(n, K * O)], axis=1)
    assert (probs[~allowed] == 0).all()                        # ineligible never has probability
    col = np.array([0 if a == "suppress" else 1 + config.channel_names.index(c) * O + config.offer_names.index(o)
                    for a, c, o in zip(d["action"], d["channel"].fillna(""), d["offer"].fillna(""))])
    assert allowed[np.arange(n), col].all()                    # ineligible never chosen
    assert np.allclose(d["propensity"], probs[np.arange(n), col])
    assert ((d["propensity"] > 0) & (d["propensity"] <= 1)).all()
    ctl = d["control"].to_numpy()
    assert ctl.any() and (d.loc[ctl, "action"] == "suppress").all() and (d.loc[ctl, "propensity"] == 1).all()
    again = policy.decide(snapshot, contact, Request(now=now), rng=np.random.default_rng(11)).frame
    pd.testing.assert_frame_equal(d.drop(columns="decision_id"), again.drop(columns="decision_id"))
    if method == "greedy":
        assert (d["propensity"] == 1).all() and not d["explored"].any()
    else:
        assert d["explored"].any() or method == "thompson"
        assert (1 - probs.max(axis=1) <= 0.3 + 1e-9).all()


def test_explored_decisions_say_so(trained, snapshot, config):
    policy = trained.policy.with_exploration(trained.policy.exploration.with_(method="epsilon_greedy",
                                                                               epsilon=0.5, budget=0.5))
    contact = ContactHistory.from_features(snapshot.iloc[:300], config)
    out = policy.decide(snapshot.iloc[:300], contact, Request(now=pd.Timestamp("2026-10-01 07:00", tz="UTC")),
                        rng=np.random.default_rng(0))
    i = int(np.flatnonzero(out.frame["explored"].to_numpy())[0])
    assert any("exploring" in r for r in out.reasons[i])


def test_reasons_use_the_learners_corrected_values(trained, snapshot, config):
    from nextbest.decision.online import D, statistics

    import dataclasses

    p = trained.policy.with_exploration(trained.policy.exploration.with_(method="greedy", control_share=0.0))
    p.online = dataclasses.replace(p.online, learn_profit=True)  # this test is about the realized-profit heads
    keys = np.repeat(p.action_keys, 400)               # feedback: every message lost 5, suppressing 0
    X = np.zeros((len(keys), D))
    X[:, 0] = 1.0
    X[keys != "suppress", 2] = 1.0
    learner = p.new_learner().merge(statistics(keys, X, np.where(keys == "suppress", 0.0, -5.0)))
    f = snapshot.iloc[:50]
    out = p.decide(f, ContactHistory.from_features(f, config), Request(now=pd.Timestamp("2026-10-01 07:00", tz="UTC")),
                   rng=np.random.default_rng(0), learner=learner)
    assert (out.frame["action"] == "suppress").all()     # every message now looks like a loss
    i = int(np.flatnonzero(np.isfinite(out.scores.value.reshape(50, -1)).any(axis=1))[0])
    text = " ".join(out.reasons[i])
    assert "is expected to lose" in text
    loss = float(text.split("is expected to lose ")[1].split(" ")[0])
    corrected, _ = learner.predict(p.action_keys, out.learner_inputs[[i]])
    allowed = np.isfinite(out.scores.value[i].ravel())
    assert loss == pytest.approx(-corrected[0, 1:][allowed].max(), abs=1e-3)   # the corrected value
    assert loss != pytest.approx(-out.scores.value[i].ravel()[allowed].max(), abs=1e-3)  # not the offline one


def test_the_price_of_learning_is_what_exploration_and_the_control_group_give_up():
    from nextbest.decision.policy import price_of_learning

    flat = np.array([[0.0, 2.0, 1.0, -1.0],     # explores: 80% on the best option, 20% on the next
                     [0.0, 2.0, 1.0, -1.0],     # control group: only suppress left
                     [0.0, -1.0, -2.0, 5.0]])   # option 3 not allowed; greedy is suppress
    allowed = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=bool)
    free = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=bool)
    probs = np.array([[0.0, 0.8, 0.2, 0.0], [1.0, 0, 0, 0], [0.9, 0.1, 0.0, 0.0]])
    greedy = np.array([1, 0, 0])
    control = np.array([False, True, False])
    exploration, ctrl = price_of_learning(flat, allowed, free, probs, greedy, control)
    np.testing.assert_allclose(exploration, [2.0 - (0.8 * 2 + 0.2 * 1), 0.0, 0.0 - 0.1 * -1.0])
    np.testing.assert_allclose(ctrl, [0.0, 2.0, 0.0])
