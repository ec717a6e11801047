"""What-if replay (``training.whatif``): the champion under changed rules, estimated on the logged
decisions of the small simulated world."""

from __future__ import annotations

import numpy as np
import pytest

from nextbest.features.config import default_config_dict, merge_config, parse_config
from nextbest.training.offpolicy import logged_rounds
from nextbest.training.whatif import RulesMismatch, what_if


def _config(**changes):
    return parse_config(merge_config(default_config_dict(), changes))


@pytest.fixture(scope="module")
def rounds(small_data_dir, trained):
    return logged_rounds(small_data_dir, trained.policy.config, days=3, max_rounds=3000, seed=0)


def test_the_same_rules_change_nothing(trained, rounds):
    res = what_if(trained.policy, trained.policy.config, rounds, n_boot=200)
    assert res.rounds == rounds.n == 3000
    np.testing.assert_allclose(res.table["difference"], 0.0, atol=1e-9)
    np.testing.assert_allclose(res.table[["ci_low", "ci_high"]], 0.0, atol=1e-9)
    assert res.ess_current == pytest.approx(res.ess_new)
    assert "not distinguishable" in res.headline()


def test_no_sms_sends_no_sms_and_moves_messages_to_other_channels(trained, rounds):
    cfg = trained.policy.config
    no_sms = _config(**{**cfg.raw, "channels": {**cfg.raw["channels"],
                                                "sms": {**cfg.raw["channels"]["sms"], "caps": {"per_day": 0,
                                                                                                "per_week": 0}}}})
    res = what_if(trained.policy, no_sms, rounds, n_boot=300)
    sms = res.table.loc["messages on sms"]
    assert sms["current"] > 5 and sms["new"] == 0.0
    assert sms["difference"] == pytest.approx(-sms["current"]) and sms["ci_high"] < 0
    others = res.table.loc[["messages on email", "messages on push"], "difference"]
    assert others.sum() > 0, "some customers who would have had an SMS get another channel"
    for row in ("profit", "unsubscribes"):
        r = res.table.loc[row]
        assert r["ci_low"] <= r["difference"] <= r["ci_high"] and np.isfinite(r).all()


def test_renamed_offers_are_refused_with_how_to_remove_one(trained, rounds):
    cfg = trained.policy.config
    offers = dict(cfg.raw["offers"])
    last = list(offers)[-1]
    offers[f"{last}_new"] = offers.pop(last)
    with pytest.raises(RulesMismatch, match="when:"):
        what_if(trained.policy, _config(**{**cfg.raw, "offers": offers}), rounds, n_boot=50)
