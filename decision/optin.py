"""Opt-in suggestions: for each channel, the customers whose consent would add the most value.

For a customer without consent to a channel (and who never unsubscribed from it: they said no),
the policy scores the customer twice, as they are and as if they had consented, with the same
rules, contact history and moment. The gain is the difference of the best choice's expected
extra profit (sending nothing is worth 0), per decision: what one day's decision would gain.

The scores are the policy's offline values (``DecisionPolicy.score``), not the online learner's,
and the consent flag is also an input of the models, so the counterfactual is the model's: a
customer group that never consented has no data with consent, and its gain rests on how the models
extrapolate from similar customers who did. Ask the customers with the largest gains first, and
measure the result (a campaign's opt-ins are themselves an experiment).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nextbest.decision.policy import DecisionPolicy, Request
from nextbest.decision.rules import ContactHistory


def _best(policy: DecisionPolicy, features: pd.DataFrame, now) -> np.ndarray:
    s = policy.score(features, ContactHistory.from_features(features, policy.config), Request(now=now))
    v = np.where(np.isfinite(s.value), s.value, -np.inf).reshape(len(features), -1)
    return np.maximum(v.max(axis=1, initial=-np.inf), 0.0)


def optin_gains(policy: DecisionPolicy, features: pd.DataFrame, now, channels: list[str] | None = None) -> pd.DataFrame:
    """One row per (customer without consent, channel): ``value_now``, ``value_with_consent`` and
    ``gain`` (money per decision), sorted by channel and falling gain.

    ``features``: ``engagement_history`` of the customers as of ``now``.
    """
    cfg = policy.config
    channels = list(channels or cfg.channel_names)
    unknown = [c for c in channels if c not in cfg.channel_names]
    if unknown:
        raise ValueError(f"unknown channel(s) {unknown}; the config has {list(cfg.channel_names)}")
    now = pd.Timestamp(now)
    parts = []
    for c in channels:
        ask = ~features[f"consent_{c}"].to_numpy(bool) & (features[f"{c}_unsubscribed"].to_numpy() == 0)
        if not ask.any():
            continue
        who = features[ask]
        with_consent = who.assign(**{f"consent_{c}": True})
        before, after = _best(policy, who, now), _best(policy, with_consent, now)
        parts.append(pd.DataFrame({"channel": c, "customer_id": who.index.astype(str), "value_now": before,
                                   "value_with_consent": after, "gain": after - before}))
    cols = ["channel", "customer_id", "value_now", "value_with_consent", "gain"]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)[cols]
    return out.sort_values(["channel", "gain"], ascending=[True, False], kind="stable").reset_index(drop=True)
