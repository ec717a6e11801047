"""The off-policy headline of every training run (issue 14, point 6): the new policy against
sending nothing and the logging policy (and the champion, when there is one), paired doubly
robust on the held-out days, logged first; the simulator's truth beside it as a check."""

import pytest


@pytest.fixture(scope="module")
def evaluated(trained, config, tmp_path_factory):
    from nextbest.training.tracking import evaluate_and_report

    metrics, _ = evaluate_and_report(trained, config, tmp_path_factory.mktemp("report"), "test")
    return metrics


def test_offpolicy_headline_comes_first_with_intervals(evaluated):
    from nextbest.training import run_metrics as rm

    keys = list(evaluated)
    first = [f"{rm.OPE_EXTRA_PROFIT}/{rm.OPE_VS[w]}{end}" for w in ("nothing", "logging") for end in ("", rm.LOW, rm.HIGH)]
    assert keys[:len(first)] == first  # logged in this order: the run page lists them first
    for w in ("nothing", "logging"):
        key = f"{rm.OPE_EXTRA_PROFIT}/{rm.OPE_VS[w]}"
        assert evaluated[key + rm.LOW] <= evaluated[key] <= evaluated[key + rm.HIGH], key
    assert 1000 <= evaluated["ope_rounds/held_out"] <= 20000
    assert keys.index(f"{rm.OPE_EXTRA_PROFIT}/vs_sending_nothing") < keys.index(rm.name(rm.EXTRA_PROFIT, "policy"))


def test_simulator_truth_lies_within_the_interval(evaluated):
    from nextbest.training import run_metrics as rm

    key = f"{rm.OPE_EXTRA_PROFIT}/vs_sending_nothing"
    truth = evaluated[rm.name(rm.EXTRA_PROFIT, "policy")]
    # measured: truth +114 per 1,000 customers, estimate +607 [-159, +1828] (exact-hour matching leaves an
    # effective sample of ~140 of 18,000 rounds: wide). Tolerance: none, inside the interval.
    assert evaluated[key + rm.LOW] <= truth <= evaluated[key + rm.HIGH]


def test_champion_comparison_and_run_description(trained, config):
    from nextbest.training import run_metrics as rm
    from nextbest.training.tracking import offpolicy_headline

    head = offpolicy_headline(trained, config, champion=trained.policy)
    e = head["vs"]["champion"]
    assert e.difference == pytest.approx(0.0, abs=1e-9) and e.ci_low <= 0 <= e.ci_high  # itself: no difference
    metrics = rm.offpolicy(head)
    text = rm.run_description(metrics, "7", "/data", {"propensity_source": "estimated", "propensity_clip": 0.01,
                                                      "propensity_clipped_rows": 3}, "6")
    first = text.splitlines()[0]  # the headline leads (MLflow folds the rest of a description)
    assert first.index("vs sending nothing") < first.index("vs the champion (v6)") < first.index("vs the logging policy")
    assert "unmeasured confounding" in text and "overlap" in text
