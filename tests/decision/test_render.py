"""Render time (``DecisionPolicy.render``): which offers an opened message may show now, valued as
a send is valued."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.decision.policy import Request
from nextbest.decision.rules import ContactHistory, render_allowed
from nextbest.features.history import engagement_history
from nextbest.features.localtime import utc_offsets


@pytest.fixture(scope="module")
def snapshot(small_world, small_log, trained):
    now = small_world.end
    ids = small_world.customers["customer_id"].astype(str).to_numpy()[:300]
    return engagement_history(small_log, ids, now, trained.population), now


def _local_hour(feats, now_s):
    tz = list(feats["timezone"].cat.categories)
    s = np.full(len(feats), now_s)
    return ((s + utc_offsets(s, feats["timezone"].cat.codes.to_numpy(), tz)) // 3600) % 24


def test_an_offer_is_valued_at_render_time_as_score_values_it_at_that_hour(trained, snapshot):
    policy, (feats, now) = trained.policy, snapshot
    cfg = policy.config
    contact = ContactHistory.from_features(feats, cfg)
    s = policy.score(feats, contact, Request(now=pd.Timestamp(now)))
    checked = 0
    for k in range(len(cfg.channel_names)):
        for j in range(len(cfg.offer_names)):
            rows = np.flatnonzero(s.hour[:, k, j] >= 0)[:40]
            for i in rows:  # open the message at the hour score chose for it: the same value
                f = feats.iloc[[i]]
                base = pd.Timestamp(now).floor("h")
                at = next(base + pd.Timedelta(hours=d) for d in range(24)
                          if _local_hour(f, int((base + pd.Timedelta(hours=d)).timestamp()))[0] == s.hour[i, k, j])
                c = ContactHistory(contact.sent_day[[i]], contact.sent_week[[i]], contact.hours_since_last[[i]],
                                   contact.unanswered[[i]])
                allowed, value, hour = policy.render(f, c, at, np.array([k]))
                assert hour[0] == s.hour[i, k, j]
                assert allowed[0, j]
                assert value[0, j] == pytest.approx(s.value[i, k, j], rel=1e-9, abs=1e-12)
                checked += 1
    assert checked > 100


def test_only_offers_valid_on_the_channel_now_and_under_their_rule_may_be_shown(trained, snapshot):
    cfg = trained.policy.config
    feats = snapshot[0].iloc[:50]
    channel = np.arange(50) % len(cfg.channel_names)
    hour = np.arange(50) % 24
    ok = render_allowed(feats, cfg, channel, hour)
    for i in range(50):
        for j, o in enumerate(cfg.offer_names):
            offer = cfg.offers[o]
            expect = cfg.channel_names[channel[i]] in offer.channels and bool(offer.valid_hours.contains(hour[i]))
            assert ok[i, j] == expect, (i, o)
    # pct20 holds from 8 to 20 local: at 22 it is never shown, at 10 it is on email
    pct20 = cfg.offer_names.index("pct20")
    email = cfg.channel_names.index("email")
    assert not render_allowed(feats, cfg, np.full(50, email), np.full(50, 22))[:, pct20].any()
    assert render_allowed(feats, cfg, np.full(50, email), np.full(50, 10))[:, pct20].all()
    _, value, _ = trained.policy.render(feats, ContactHistory.from_features(feats, cfg), snapshot[1],
                                        np.full(50, email))
    assert np.isfinite(value).any(axis=1).all()


def test_an_offer_rule_reads_the_render_context(trained, snapshot, tmp_path):
    import yaml

    from nextbest.features.config import default_config_dict, load_config

    base = trained.policy.config
    raw = {"offers": {**default_config_dict()["offers"], "cart_recovery": {"kind": "percent", "value": 0.05, "channels": ["email"],
                                        "valid_hours": {"start": 0, "end": 24},
                                        "when": {"context": {"trigger": ["cart_abandoned"]}}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml")
    assert "cart_recovery" in cfg.offer_names and base.channel_names == cfg.channel_names
    feats = snapshot[0].iloc[:3]
    j, email = cfg.offer_names.index("cart_recovery"), cfg.channel_names.index("email")
    no = render_allowed(feats, cfg, np.full(3, email), np.full(3, 12), [{}] * 3)
    yes = render_allowed(feats, cfg, np.full(3, email), np.full(3, 12), [{"trigger": "cart_abandoned"}] * 3)
    assert not no[:, j].any() and yes[:, j].all()
