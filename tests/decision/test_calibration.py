"""Response calibration from opens and unsubscribes (decision.calibration)."""

import numpy as np
import pytest

from nextbest.decision.calibration import (CAPS, P, SCALE, CalibrationStats, ResponseCalibration, context,
                                           observations)

CHANNELS = ("email", "sms", "push")


def tired_world(m: int, seed: int):
    """Messages whose true open rate is the offline one times (1 - 0.08 x sends on the channel in the
    last week) on email, and exactly the offline one on sms."""
    rng = np.random.default_rng(seed)
    ch = rng.integers(0, 2, m)
    sends = rng.integers(0, 8, m)
    z = context(sends, sends + rng.integers(0, 3, m), rng.integers(0, 4, m), rng.uniform(4, 200, m))
    p = rng.uniform(0.1, 0.5, m)
    true = np.where(ch == 0, p * np.clip(1 - 0.08 * sends, 0.05, None), p)
    return ch, p, z, (rng.random(m) < true).astype(float), sends


def test_context_is_scaled_and_bounded():
    z = context(np.array([0, 30]), np.array([0, 50]), np.array([0, 99]), np.array([np.inf, 12.0]))
    assert z.shape == (2, P)
    np.testing.assert_allclose(z[0], [1.0, 0.0, 0.0, 0.0, CAPS[4] / SCALE[4]])   # never messaged: days capped
    np.testing.assert_allclose(z[1], [1.0, CAPS[1] / SCALE[1], CAPS[2] / SCALE[2], CAPS[3] / SCALE[3], 0.5 / SCALE[4]])


def test_without_feedback_every_factor_is_one():
    cal = ResponseCalibration(CHANNELS, 50.0)
    z = context(np.arange(5), np.arange(5), np.zeros(5), np.full(5, 30.0))
    assert (cal.factor("open", np.arange(5) % 3, z) == 1.0).all()


def test_learns_how_opens_fall_with_the_messages_before_and_leaves_a_right_channel_alone():
    ch, p, z, y, sends = tired_world(30000, 1)
    cal = ResponseCalibration(CHANNELS, 50.0)
    cal.update("open", ch, p, z, y)
    for k in (0, 6):  # fresh and tired email customers
        zz = context(np.array([k]), np.array([k + 1]), np.array([1]), np.array([48.0]))
        assert cal.factor("open", np.array([0]), zz)[0] == pytest.approx(1 - 0.08 * k, abs=0.08)
    zz = context(np.array([6]), np.array([7]), np.array([1]), np.array([48.0]))
    assert cal.factor("open", np.array([1]), zz)[0] == pytest.approx(1.0, abs=0.08)  # sms: the model was right
    assert cal.factor("open", np.array([2]), zz)[0] == 1.0                             # push: no feedback, no change


def test_statistics_merge_by_adding_and_decay_by_a_factor():
    ch, p, z, y, _ = tired_world(4000, 2)
    one = ResponseCalibration(CHANNELS, 50.0)
    one.update("open", ch, p, z, y)
    a, b = ResponseCalibration(CHANNELS, 50.0), ResponseCalibration(CHANNELS, 50.0)
    a.update("open", ch[:1500], p[:1500], z[:1500], y[:1500])
    b.update("open", ch[1500:], p[1500:], z[1500:], y[1500:])
    merged = ResponseCalibration(CHANNELS, 50.0, {k: a.stats[k] + b.stats[k] for k in a.stats})
    for k in one.stats:
        np.testing.assert_allclose(merged.stats[k].to_vector(), one.stats[k].to_vector())
        back = CalibrationStats.from_vector(one.stats[k].to_vector())
        np.testing.assert_allclose(back.A, one.stats[k].A)
    before = one.stats["calibration|open|email"].n
    one.decay(0.5)
    assert one.stats["calibration|open|email"].n == pytest.approx(before / 2)
    restored = ResponseCalibration.from_vectors(CHANNELS, 50.0, {k: s.to_vector() for k, s in one.stats.items()}
                                                | {"email/none": np.zeros(3)})
    assert set(restored.stats) == set(one.stats)


def test_weighted_least_squares_statistics():
    p, y = np.array([0.2, 0.5]), np.array([1.0, 0.0])
    z = np.ones((2, P))
    st = observations(p, z, y)
    w = 1 / (p * (1 - p))
    assert st.n == 2 and st.A[0, 0] == pytest.approx((w * p * p).sum())
    assert st.b[0] == pytest.approx((w * p * (y - p)).sum())


def test_a_policy_told_that_nobody_opens_sends_nothing(trained, small_world):
    """The policy reads the calibration: when feedback shows messages are not opened, their value
    falls below "don't send" and the greedy policy suppresses."""
    import pandas as pd

    from nextbest.decision.exploration import Exploration
    from nextbest.decision.policy import Request
    from nextbest.decision.rules import ContactHistory
    from nextbest.features.history import engagement_history

    policy = trained.policy.with_exploration(Exploration.from_config(trained.policy.config).with_(
        method="greedy", control_share=0.0))
    ids = small_world.customers["customer_id"].head(400)
    feats = engagement_history(trained.log, ids, small_world.end, trained.population)
    contact = ContactHistory.from_features(feats, policy.config)
    request = Request(now=pd.Timestamp("2026-10-01 07:00", tz="UTC"))
    plain = policy.decide(feats, contact, request, explain=False, rng=np.random.default_rng(0),
                          learner=policy.new_learner())
    assert (plain.frame["action"] == "send").sum() > 20
    learner = policy.new_learner()
    m = 5000
    rng = np.random.default_rng(3)
    z = context(rng.integers(0, 5, m), rng.integers(0, 7, m), rng.integers(0, 5, m), rng.uniform(4, 100, m))
    for k in range(len(policy.config.channel_names)):
        learner.calibration.update("open", np.full(m, k), np.full(m, 0.3), z, np.zeros(m))
    quiet = policy.decide(feats, contact, request, explain=False, rng=np.random.default_rng(0), learner=learner)
    assert (quiet.frame["action"] == "send").sum() < 0.2 * (plain.frame["action"] == "send").sum()


def test_an_offer_whose_opens_stop_converting_loses_its_sends(trained, small_world):
    """Orders after an open are calibrated per offer: an offer whose opened messages never convert
    any more is worth less, and the greedy policy moves its sends to other offers or to none."""
    import pandas as pd

    from nextbest.decision.exploration import Exploration
    from nextbest.decision.policy import Request
    from nextbest.decision.rules import ContactHistory
    from nextbest.features.history import engagement_history

    policy = trained.policy.with_exploration(Exploration.from_config(trained.policy.config).with_(
        method="greedy", control_share=0.0))
    cfg = policy.config
    ids = small_world.customers["customer_id"].head(600)
    feats = engagement_history(trained.log, ids, small_world.end, trained.population)
    contact = ContactHistory.from_features(feats, cfg)
    request = Request(now=pd.Timestamp("2026-10-01 07:00", tz="UTC"))
    plain = policy.decide(feats, contact, request, explain=False, learner=policy.new_learner())
    counts = plain.frame.loc[plain.frame["action"] == "send", "offer"].value_counts()
    offer = counts.index[0]
    assert counts.iloc[0] >= 20, counts
    j = cfg.offer_names.index(offer)
    learner = policy.new_learner()
    m = 4000
    rng = np.random.default_rng(5)
    z = context(rng.integers(0, 5, m), rng.integers(0, 7, m), rng.integers(0, 5, m), rng.uniform(4, 100, m))
    learner.calibration.update("order", np.full(m, j), np.full(m, 0.08), z, np.zeros(m))
    after = policy.decide(feats, contact, request, explain=False, learner=learner)
    assert (after.frame["offer"] == offer).sum() < 0.5 * counts.iloc[0]
    # the other offers' values are untouched
    other = [k for k in range(len(cfg.offer_names)) if k != j]
    a, b = plain.scores.value[:, :, other], after.scores.value[:, :, other]
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    np.testing.assert_allclose(b[np.isfinite(b)], a[np.isfinite(a)])


def _day(rng, m: int, open_rate: float):
    """One day of m email messages, offline P(open) 0.3, true open rate ``open_rate``."""
    z = context(rng.integers(0, 5, m), rng.integers(0, 7, m), rng.integers(0, 5, m), rng.uniform(4, 100, m))
    return np.zeros(m, dtype=int), np.full(m, 0.3), z, (rng.random(m) < open_rate).astype(float)


def test_change_detection_follows_a_shift_at_once_and_keeps_its_memory_otherwise():
    """A channel whose open rate falls from the offline 0.3 to 0.1 overnight: with change detection
    two days later the factor has come more than half again as close to 1/3 as with the half-life
    alone (the prior, worth about 120 such messages, still pulls towards 1). Over 200
    stable days at the model's own rate (and at a rate the calibration corrected) nothing is forgotten."""
    rng = np.random.default_rng(7)
    with_cd, without = ResponseCalibration(CHANNELS, 50.0), ResponseCalibration(CHANNELS, 50.0)
    stable_forgot = []
    for _ in range(14):  # two weeks as the model predicts
        day = _day(rng, 400, 0.3)
        stable_forgot += with_cd.update("open", *day, change_z=4.0, change_forget=0.1)
        without.update("open", *day)
        with_cd.decay(0.5 ** (1 / 7)), without.decay(0.5 ** (1 / 7))
    assert stable_forgot == []
    z1 = context(np.array([2]), np.array([3]), np.array([1]), np.array([30.0]))
    for day_after in range(2):
        day = _day(rng, 400, 0.1)
        forgot = with_cd.update("open", *day, change_z=4.0, change_forget=0.1)
        without.update("open", *day)
        if day_after == 0:
            assert forgot == ["email"]  # the first day of the new level is a change
    fast, slow = with_cd.factor("open", np.array([0]), z1)[0], without.factor("open", np.array([0]), z1)[0]
    assert fast < 0.5 and slow > 0.6 and fast - 1 / 3 < 0.5 * (slow - 1 / 3), (fast, slow)
    # stable again, at the corrected level: no false alarm in 200 days (|z| > 4 has odds ~1 in 16,000 a day)
    false_alarms = sum(len(with_cd.update("open", *_day(rng, 400, 0.1), change_z=4.0, change_forget=0.1))
                       for _ in range(200))
    assert false_alarms == 0


def test_surprise_is_about_a_standard_normal_when_nothing_changed():
    rng = np.random.default_rng(11)
    cal = ResponseCalibration(CHANNELS, 50.0)
    cal.update("open", *_day(rng, 5000, 0.3))
    draws = np.array([cal.surprise("open", "email", *_day(rng, 300, 0.3)[1:]) for _ in range(400)])
    assert abs(draws.mean()) < 0.2 and 0.8 < draws.std() < 1.2
    assert cal.surprise("open", "sms", *_day(rng, 300, 0.3)[1:]) == 0.0  # no statistics: no verdict
