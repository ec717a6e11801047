"""The decision policy never breaks the business rules; eligibility and fallback rules work.

Contract tests over every decision of the trained policy for the whole small population at
several times of day, checked against the config independently of ``decision.rules``.
"""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.config import default_config_dict, merge_config, parse_config
from nextbest.features.eventlog import to_ms
from nextbest.features.history import engagement_history
from nextbest.features.localtime import local_hour_dow
from nextbest.decision.policy import DecisionPolicy, Request
from nextbest.decision.rules import ContactHistory, delay_to_hours, eligible


@pytest.fixture(scope="module")
def snapshot(trained, small_world):
    end = small_world.end
    ids = small_world.customers["customer_id"]
    return engagement_history(trained.log, ids, end, trained.population)


@pytest.mark.parametrize("hour_utc", [0, 7, 15, 21])
def test_decisions_never_break_consent_quiet_hours_or_caps(trained, snapshot, config, hour_utc):
    now = trained.dataset.decisions["ts"].max().floor("D") + pd.Timedelta(hours=hour_utc)
    contact = ContactHistory.from_features(snapshot, config)
    out = trained.policy.decide(snapshot, contact, Request(now=now, horizon_hours=12))
    d = out.frame
    sent = d["action"] == "send"
    assert sent.any() and (~sent).any()
    assert d.loc[sent, "send_at"].between(now, now + pd.Timedelta(hours=12)).all()
    for row in d[sent].itertuples():
        f = snapshot.loc[row.customer_id]
        ch, offer = config.channels[row.channel], config.offers[row.offer]
        assert f[f"consent_{row.channel}"] and f[f"{row.channel}_unsubscribed"] == 0
        assert not ch.quiet_hours.contains(row.local_hour)
        assert offer.valid_hours.contains(row.local_hour) and row.channel in offer.channels
        assert f[f"{row.channel}_sent_24h"] < ch.cap_per_day and f[f"{row.channel}_sent_168h"] < ch.cap_per_week
        assert f["all_sent_168h"] < config.contact_rules.max_per_week
        assert 0 < row.propensity <= 1 and np.isfinite(row.expected_value)
        assert row.explored or row.expected_value > 0  # only exploration sends a message not worth it
    # send_at is the local hour the decision names
    tz = snapshot["timezone"]
    s = d[sent]
    hours, _ = local_hour_dow(to_ms(s["send_at"]) // 1000, tz.cat.codes.to_numpy()[sent.to_numpy()],
                              list(tz.cat.categories))
    assert (hours == s["local_hour"].to_numpy()).all()
    assert all(out.reasons[i] for i in range(len(d)))


def test_same_input_gives_the_same_decision(trained, snapshot, config):
    now = pd.Timestamp("2026-10-01 09:00", tz="UTC")
    contact = ContactHistory.from_features(snapshot, config)
    a, b = (trained.policy.decide(snapshot.iloc[:300], contact_slice(contact, 300), Request(now=now),
                                  rng=np.random.default_rng(5)).frame for _ in range(2))
    cols = ["action", "channel", "local_hour", "offer", "send_at", "expected_value", "propensity"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_decisions_without_reasons_are_the_same_decisions(trained, snapshot, config):
    now = pd.Timestamp("2026-10-01 09:00", tz="UTC")
    contact = ContactHistory.from_features(snapshot, config)
    a, b = (trained.policy.decide(snapshot.iloc[:300], contact_slice(contact, 300), Request(now=now), explain=e,
                                  rng=np.random.default_rng(5)) for e in (True, False))
    cols = ["action", "channel", "local_hour", "offer", "send_at", "expected_value", "propensity"]
    pd.testing.assert_frame_equal(a.frame[cols], b.frame[cols])
    np.testing.assert_array_equal(a.action_dist, b.action_dist)
    assert len(a.reasons) == 300 and all(a.reasons) and b.reasons == []
    # the service reads columns without building the frame: the same values, missing ones as NaN
    for c in b.columns:
        if c != "send_at":
            assert pd.Series(b.column(c), dtype=object).equals(pd.Series(b.frame[c].tolist(), dtype=object)), c
    np.testing.assert_array_equal(pd.DatetimeIndex(b.columns["send_at"]).to_numpy("datetime64[ns]"),
                                  b.frame["send_at"].to_numpy("datetime64[ns]"))


def contact_slice(c, n):
    return ContactHistory(c.sent_day[:n], c.sent_week[:n], c.hours_since_last[:n], c.unanswered[:n])


def test_caps_block_a_channel_and_the_reason_says_so(trained, snapshot, config):
    f = snapshot.iloc[:200]
    contact = ContactHistory.from_features(f, config)
    k = config.channel_names.index("email")
    contact.sent_week[:, k] = config.channels["email"].cap_per_week
    out = trained.policy.decide(f, contact, Request(now=pd.Timestamp("2026-10-01 06:00", tz="UTC")))
    assert not (out.frame["channel"] == "email").any()
    consented = f["consent_email"].to_numpy() & (f["email_unsubscribed"].to_numpy() == 0)
    i = int(np.flatnonzero(consented)[0])
    assert any("frequency cap" in r and "email" in r for r in out.reasons[i])


def test_transactional_sends_without_offer_and_ignores_marketing_caps(trained, snapshot, config):
    f = snapshot.iloc[:200]
    contact = ContactHistory.from_features(f, config)
    contact.sent_week[:] = 99
    out = trained.policy.decide(f, contact, Request(now=pd.Timestamp("2026-10-01 12:00", tz="UTC"), type="transactional"))
    reachable = np.stack([f[f"consent_{c}"].to_numpy() & (f[f"{c}_unsubscribed"].to_numpy() == 0)
                          for c in config.channel_names], axis=1).any(axis=1)
    assert (out.frame["action"].to_numpy() == np.where(reachable, "send", "suppress")).all()
    sent = out.frame[out.frame["action"] == "send"]
    assert (sent["offer"] == "none").all()
    assert (sent["send_at"] == pd.Timestamp("2026-10-01 12:00", tz="UTC")).all()  # now, whatever the hour
    assert (sent["propensity"] == 1.0).all() and not sent["explored"].any()
    with pytest.raises(ValueError, match="type"):
        Request(now=pd.Timestamp("2026-10-01"), type="promo")


def rules_config(**offers):
    raw = default_config_dict()
    return parse_config(merge_config(raw, {"offers": {**raw["offers"], **offers}}))  # offers: replaced whole


def test_eligibility_rules_over_context_and_customer_features(snapshot):
    cfg = rules_config(
        cart_recovery={"kind": "percent", "value": 0.05, "channels": ["email", "push"],
                       "valid_hours": {"start": 0, "end": 24}, "when": {"context": {"trigger": ["cart_abandoned"]}}},
        loyalty_reward={"kind": "fixed", "value": 5.0, "channels": ["email"], "valid_hours": {"start": 0, "end": 24},
                        "when": {"customer": {"review_count": {"min": 5}}}})
    f = snapshot.iloc[:400]
    n = len(f)
    delay = delay_to_hours(np.full(n, 10), np.zeros(n))
    contexts = [{"trigger": "cart_abandoned"} if i % 2 else {"trigger": "browse"} for i in range(n)]
    e = eligible(f, ContactHistory.empty(n, 3), cfg, delay, contexts)
    cart, loyal = cfg.offer_names.index("cart_recovery"), cfg.offer_names.index("loyalty_reward")
    assert not e.allowed[0::2, :, :, cart].any()  # no trigger: never
    assert e.allowed[1::2, :, :, cart].any()
    many = f["review_count"].to_numpy() >= 5
    assert not e.allowed[~many][:, :, :, loyal].any()
    assert e.allowed[many][:, :, :, loyal].any() and (~many).any() and many.any()
    i = int(np.flatnonzero(~many)[0])
    assert any("offer rules not met" in r for r in e.reasons(i))


def test_fallback_prefers_another_channel_after_unanswered_messages(snapshot, config):
    f = snapshot.iloc[:400]
    n = len(f)
    consent = np.stack([f[f"consent_{c}"].to_numpy() & (f[f"{c}_unsubscribed"].to_numpy() == 0)
                        for c in config.channel_names], axis=1)
    contact = ContactHistory.empty(n, 3)
    k = config.channel_names.index("email")
    contact.unanswered[:, k] = config.contact_rules.fallback_after_unanswered
    e = eligible(f, contact, config, delay_to_hours(np.full(n, 10), np.zeros(n)))
    others = consent[:, [j for j in range(3) if j != k]].any(axis=1)
    email_ok = e.allowed[:, k].any(axis=(1, 2))
    assert not email_ok[others & consent[:, k]].any()          # another channel exists: email dropped
    assert email_ok[~others & consent[:, k]].all()             # email is the only one: kept
    assert (~others & consent[:, k]).any() and (others & consent[:, k]).any()


def test_unknown_candidates_and_bad_conditions_are_refused(snapshot, config):
    from nextbest.features.config import ConfigError

    f = snapshot.iloc[:5]
    with pytest.raises(ValueError, match="unknown channel"):
        eligible(f, ContactHistory.empty(5, 3), config, delay_to_hours(np.zeros(5), np.zeros(5)), channels=["fax"])
    with pytest.raises(ConfigError, match="offers.bad.when"):
        rules_config(bad={"kind": "none", "value": 0, "channels": ["email"], "valid_hours": {"start": 0, "end": 24},
                          "when": {"weather": "sunny"}})


def test_per_customer_now_and_horizon_equal_separate_calls(trained, snapshot, config):
    """The service batches requests made at different times: per-row ``now`` and horizons."""
    f = snapshot.iloc[:40]
    contact = ContactHistory.from_features(f, config)
    times = pd.DatetimeIndex([pd.Timestamp("2026-10-01 03:00", tz="UTC") + pd.Timedelta(hours=5 * i) for i in range(40)])
    horizons = np.array([6.0 + (i % 4) * 6 for i in range(40)])
    greedy = trained.policy.with_exploration(trained.policy.exploration.with_(method="greedy"))
    together = greedy.decide(f, contact, Request(now=times, horizon_hours=horizons))
    for i in (0, 7, 23, 39):
        one = greedy.decide(f.iloc[[i]], ContactHistory(contact.sent_day[[i]], contact.sent_week[[i]],
                                                        contact.hours_since_last[[i]], contact.unanswered[[i]]),
                            Request(now=times[i], horizon_hours=horizons[i]))
        for col in ("action", "channel", "offer", "send_at", "local_hour"):
            assert together.frame[col].iloc[i] == one.frame[col].iloc[0] or (
                pd.isna(together.frame[col].iloc[i]) and pd.isna(one.frame[col].iloc[0])), col
        assert together.frame["expected_value"].iloc[i] == pytest.approx(one.frame["expected_value"].iloc[0])


def test_a_triggered_request_sends_within_the_trigger_horizon_or_not_at_all(trained, snapshot, config):
    """``context.trigger`` (a cart abandoned now): a message within decision.trigger_horizon_hours or
    none; other rows of the same batch keep the day-long horizon, and an explicit one wins."""
    f = snapshot.iloc[:300]
    contact = ContactHistory.from_features(f, config)
    now = pd.Timestamp("2026-10-01 09:00", tz="UTC")
    greedy = trained.policy.with_exploration(trained.policy.exploration.with_(method="greedy", control_share=0.0))
    plain = greedy.decide(f, contact, Request(now=now)).frame
    later = (plain["send_at"] - now) > pd.Timedelta(hours=config.decision.trigger_horizon_hours)
    assert later.sum() > 20  # without a trigger, many sends wait for a better hour
    contexts = [{"trigger": "cart_abandoned"} if i % 2 else {} for i in range(len(f))]
    mixed = greedy.decide(f, contact, Request(now=now, contexts=contexts)).frame
    odd = np.arange(len(f)) % 2 == 1
    wait = (mixed["send_at"] - now).where(mixed["action"] == "send")
    assert (wait[odd].dropna() <= pd.Timedelta(hours=config.decision.trigger_horizon_hours)).all()
    assert (mixed["action"][odd] == "send").any() and (mixed["action"][odd & later.to_numpy()] == "suppress").any()
    assert mixed["send_at"][~odd].equals(plain["send_at"][~odd])  # untriggered rows as before
    explicit = greedy.decide(f, contact, Request(now=now, contexts=contexts, horizon_hours=24.0)).frame
    assert explicit["send_at"].equals(plain["send_at"])


def test_send_keeps_its_local_hour_across_a_daylight_saving_change(trained, snapshot, config):
    """Berlin leaves summer time at 01:00 UTC on 2026-10-25: a send planned at 00:30 local for
    08:00 local must go out at 07:00 UTC (08:00 CET), not 06:00 UTC (07:00, inside push quiet hours)."""
    from zoneinfo import ZoneInfo

    f = snapshot.iloc[:300].copy()
    tz = f["timezone"].cat.add_categories(["Europe/Berlin"]) if "Europe/Berlin" not in f["timezone"].cat.categories \
        else f["timezone"]
    f["timezone"] = pd.Categorical(["Europe/Berlin"] * len(f), categories=tz.cat.categories)
    now = pd.Timestamp("2026-10-24 22:30", tz="UTC")  # 00:30 CEST on the night of the change
    out = trained.policy.decide(f, ContactHistory.from_features(f, config), Request(now=now, horizon_hours=24))
    sent = out.frame[out.frame["action"] == "send"]
    assert len(sent) > 20
    for _, d in sent.iterrows():
        local = d["send_at"].to_pydatetime().astimezone(ZoneInfo("Europe/Berlin"))
        assert local.hour == d["local_hour"], (d["send_at"], d["local_hour"])
        assert not config.channels[d["channel"]].quiet_hours.contains(local.hour)
