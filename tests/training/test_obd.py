"""The estimators and the logged-bandit learner on real data: the Open Bandit Dataset sample."""

import pytest

from nextbest.training.obd import load_obd, run_obd


@pytest.fixture(scope="module")
def report():
    return run_obd(seed=0, n_boot=300).set_index(["check", "estimator"])


def test_the_sample_loads_as_logged_bandit_feedback():
    obd = load_obd("random")
    fb = obd.feedback
    assert fb.n == 10_000 and fb.n_actions == 80 and set(fb.position) == {0, 1, 2}
    assert obd.affinity.shape == (10_000, 80) and len(obd.items) == 80
    assert fb.reward.mean() == pytest.approx(0.0038)


@pytest.mark.parametrize("estimator", ["ips", "snips", "dr"])
def test_bts_value_from_the_random_log_matches_its_on_policy_ctr(report, estimator):
    row = report.loc[("bts_from_random_log", estimator)]
    assert row["ci_low"] <= row["on_policy_ctr"] <= row["ci_high"]
    assert row["relative_error"] < 0.3          # obp reports about 0.1-0.3 on this sample
    assert row["unsupported_logged"] == 0.0


def test_random_from_the_bts_log_reports_its_poor_overlap(report):
    row = report.loc[("random_from_bts_log", "ips")]
    assert row["ess"] < 1000                    # ~340 of 10,000: BTS rarely shows most items
    assert row["ci_low"] <= row["on_policy_ctr"] <= row["ci_high"]


def test_learned_policy_is_evaluated_on_held_out_rounds(report):
    greedy, soft = report.loc[("learned_greedy_vs_random", "dr")], report.loc[("learned_softmax_vs_random", "dr")]
    assert soft["ess"] > 3 * greedy["ess"]      # the softmax keeps far more logged rounds informative
    assert soft["ci_high"] - soft["ci_low"] < greedy["ci_high"] - greedy["ci_low"]
    assert soft["estimate"] > 0 and soft["ci_high"] > soft["on_policy_ctr"]
