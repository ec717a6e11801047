"""The report's breakdowns of a policy's value: hand-computed on a tiny set of rounds."""

from types import SimpleNamespace

import numpy as np
import pytest

from nextbest.training.policy_breakdown import policy_picks, what_changed


def test_picks_and_what_changed_add_up_by_hand(config):
    K, O = len(config.channel_names), len(config.offer_names)
    A = 1 + K * O
    n = 2
    q = np.zeros((n, A))
    q[:, 0] = 1.0                       # sending nothing is worth 1.0
    q[:, 1] = 1.5                       # channel 0, offer 0: +0.5 over nothing
    q[:, 1 + O] = 0.8                   # channel 1, offer 0: -0.2
    hours = np.full((n, A), 10)         # every option at 10:00 (the morning band)
    candidate = SimpleNamespace(dist=np.zeros((n, A)), hours=hours)
    candidate.dist[0, 1] = 1.0          # round 0: channel 0 / offer 0
    candidate.dist[1, 1 + O] = 1.0      # round 1: channel 1 / offer 0
    champion = SimpleNamespace(dist=np.zeros((n, A)), hours=hours)
    champion.dist[:, 0] = 1.0           # the champion sends nothing

    picks = policy_picks(candidate.dist, q, config).set_index("channel")
    c0, c1 = config.channel_names[0], config.channel_names[1]
    assert picks.loc[c0, "share of customer-days"] == pytest.approx(0.5)
    assert picks.loc[c0, "extra profit /1,000 of its messages"] == pytest.approx(500.0)
    assert picks.loc[c1, "extra profit /1,000 of its messages"] == pytest.approx(-200.0)

    changed = what_changed(candidate, q, champion, q, config).set_index(["by", "group"])
    col = "change in extra profit /1,000 customers"
    assert changed.loc[("channel", c0), col] == pytest.approx(250.0)    # 0.5 on half the rounds
    assert changed.loc[("channel", c1), col] == pytest.approx(-100.0)
    assert changed.loc[("offer", config.offer_names[0]), col] == pytest.approx(150.0)
    assert changed.loc[("send hour", "morning (6-11)"), col] == pytest.approx(150.0)
    assert changed.loc[("send hour", "evening (17-21)"), col] == 0.0
    assert changed.xs("channel")[col].sum() == pytest.approx(150.0)      # the channels add up to the total
    assert changed.loc[("channel", c0), "champion: share messaged"] == 0.0
