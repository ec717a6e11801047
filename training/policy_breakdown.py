"""Where a policy's value comes from, on the off-policy headline's held-out rounds.

Both tables read the replayed decision distributions (``training.offpolicy.replay``) and the
headline's cross-fitted reward model ``q`` ((n, A), option 0 = no message), so that they add up to
the headline's direct-method part and speak in the same money:

- :func:`policy_picks`: per channel, how often the policy would send on it and what its own picks
  add per 1,000 of those messages (the report sets this beside the channel's average over every
  logged message: a channel can lose on average and still be worth it for the customers picked);
- :func:`what_changed`: the candidate against the champion by channel, offer and send-time band:
  each one's share of customer-days messaged in the group and the extra profit per 1,000
  customers the group brings, and the difference (the marketer's "what changed" page).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nextbest.features.config import Config
from nextbest.training.evaluate import HOUR_BANDS


def policy_picks(dist: np.ndarray, q: np.ndarray, config: Config) -> pd.DataFrame:
    """Per channel: share of the customer-days the policy messages on it, and the extra profit per
    1,000 of its messages over sending nothing (by ``q``)."""
    O = len(config.offer_names)
    extra = q[:, 1:] - q[:, :1]
    rows = []
    for k, c in enumerate(config.channel_names):
        d = dist[:, 1:][:, k * O:(k + 1) * O]
        per_message = float((d * extra[:, k * O:(k + 1) * O]).sum() / d.sum()) if d.sum() > 0 else float("nan")
        rows.append({"channel": c, "share of customer-days": float(d.sum(axis=1).mean()),
                     "extra profit /1,000 of its messages": 1000 * per_message})
    return pd.DataFrame(rows)


def _groups(config: Config, hours: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(by, group, mask (n, A-1) over the message options) for every channel, offer and hour band."""
    K, O = len(config.channel_names), len(config.offer_names)
    n = hours.shape[0]
    k_of = np.repeat(np.arange(K), O)[None, :].repeat(n, axis=0)
    j_of = np.tile(np.arange(O), K)[None, :].repeat(n, axis=0)
    h = hours[:, 1:]
    out = [("channel", c, k_of == k) for k, c in enumerate(config.channel_names)]
    out += [("offer", o, j_of == j) for j, o in enumerate(config.offer_names)]
    out += [("send hour", b, np.isin(h, list(hs))) for b, hs in HOUR_BANDS.items()]
    return out


def _breakdown(dist: np.ndarray, q: np.ndarray, hours: np.ndarray, config: Config) -> pd.DataFrame:
    extra = (q[:, 1:] - q[:, :1]) * dist[:, 1:]
    rows = [{"by": by, "group": g, "share": float((dist[:, 1:] * m).sum(axis=1).mean()),
             "extra_per_1000": 1000 * float((extra * m).sum(axis=1).mean())}
            for by, g, m in _groups(config, hours)]
    return pd.DataFrame(rows).set_index(["by", "group"])


def what_changed(candidate, q_candidate: np.ndarray, champion, q_champion: np.ndarray, config: Config) -> pd.DataFrame:
    """Candidate against champion (two ``Replay``s and their ``q``) by channel, offer and send-time
    band: share of customer-days messaged and extra profit per 1,000 customers, each and the difference."""
    a = _breakdown(candidate.dist, q_candidate, candidate.hours, config)
    b = _breakdown(champion.dist, q_champion, champion.hours, config)
    out = pd.DataFrame({"candidate: share messaged": a["share"], "champion: share messaged": b["share"],
                        "candidate: extra profit /1,000 customers": a["extra_per_1000"],
                        "champion: extra profit /1,000 customers": b["extra_per_1000"]})
    out["change in extra profit /1,000 customers"] = (out["candidate: extra profit /1,000 customers"]
                                                      - out["champion: extra profit /1,000 customers"])
    return out.reset_index()
