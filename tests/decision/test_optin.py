"""Opt-in suggestions (``decision.optin``): who lacks consent, and what consent would add, from the
policy's own counterfactual scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.decision.optin import optin_gains
from nextbest.decision.policy import Request
from nextbest.decision.rules import ContactHistory
from nextbest.features.history import engagement_history


@pytest.fixture(scope="module")
def snapshot(small_world, small_log, trained):
    now = small_world.end
    ids = small_world.customers["customer_id"].astype(str).to_numpy()[:600]
    return engagement_history(small_log, ids, now, trained.population), now


def test_every_customer_without_consent_is_listed_with_the_gain_consent_would_bring(trained, snapshot):
    feats, now = snapshot
    out = optin_gains(trained.policy, feats, now)
    for c in trained.policy.config.channel_names:
        ask = feats.index[~feats[f"consent_{c}"] & (feats[f"{c}_unsubscribed"] == 0)].astype(str)
        got = out[out["channel"] == c]
        assert sorted(got["customer_id"]) == sorted(ask)
        assert (np.diff(got["gain"].to_numpy()) <= 0).all(), "largest gain first"
    assert len(out) > 0 and (out["gain"] > 0).any()
    np.testing.assert_allclose(out["gain"], out["value_with_consent"] - out["value_now"])
    assert (out[["value_now", "value_with_consent"]] >= 0).all().all(), "sending nothing is worth 0"


def test_the_gain_is_the_policys_value_with_the_consent_flag_set(trained, snapshot):
    feats, now = snapshot
    out = optin_gains(trained.policy, feats, now, ["sms"])
    assert set(out["channel"]) == {"sms"}
    top = out.iloc[0]
    one = feats.loc[[top["customer_id"]]]
    cfg = trained.policy.config

    def best(f):
        s = trained.policy.score(f, ContactHistory.from_features(f, cfg), Request(now=pd.Timestamp(now)))
        return max(np.nanmax(np.where(np.isfinite(s.value), s.value, np.nan)) if np.isfinite(s.value).any() else 0.0,
                   0.0)

    assert top["value_now"] == pytest.approx(best(one))
    assert top["value_with_consent"] == pytest.approx(best(one.assign(consent_sms=True)))
    with pytest.raises(ValueError, match="unknown channel"):
        optin_gains(trained.policy, feats, now, ["pigeon"])
