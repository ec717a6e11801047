"""The response calibration in the service: a send's opens and unsubscribes reach the shared
statistics when it matures (or later, as an increment), the store rebuild and forgetting keep
them, and the service's values follow them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest

from nextbest.decision.calibration import MIN_BATCH, P, CalibrationStats, ResponseCalibration, key
from nextbest.serving import learning
from nextbest.serving.records import DecisionRecord
from nextbest.serving.store import open_store

from serving_waits import poll


def _record(counted=(), p_open=0.2, p_unsub=0.01, q=0.05):
    z = (1.0, 0.3, 0.4, 0.0, 0.5)
    return DecisionRecord(customer_id="c1", action_key="email/pct10", channel="email", offer="pct10",
                          learner_input=(0.0,) * 6, decided_at=0.0, sent_at=0.0, type="marketing", reward=-0.01,
                          matured=True, counted=tuple(counted), calibration=(p_open, p_unsub, q, *z))


OPEN, ORDER = "opened|2026-01-01T10:00:00+00:00", "converted|2026-01-01T12:00:00+00:00"


def _sum(*deltas):
    out = {}
    for d in deltas:
        for k, v in d.items():
            out[k] = out[k] + v if k in out else v
    return out


@pytest.mark.parametrize("late", [(OPEN,), (ORDER,), (OPEN, ORDER), (ORDER, OPEN)])
def test_late_feedback_adds_what_it_would_have_added_at_maturity(late):
    """Whatever arrives after maturity, in whatever order, the statistics end where a record that
    had it all at maturity starts: open, and the order-given-open observation of its offer."""
    at_maturity = learning.calibration_deltas(_record())
    rec, parts = _record(), [at_maturity]
    for k in late:
        parts.append(learning.calibration_increment(rec, k.split("|")[0]))
        rec = rec.with_event(k, 0.0)
    total, want = _sum(*parts), learning.calibration_deltas(rec)
    assert set(total) == set(want)
    for k in want:
        np.testing.assert_allclose(total[k], want[k], atol=1e-12, err_msg=k)
    if OPEN in late:
        assert key("order", "pct10") in want  # an opened message calibrates its offer's P(order | opened)
    else:
        assert key("order", "pct10") not in want


def test_a_late_open_adds_exactly_its_increment():
    unopened, opened = _record(), _record(counted=(OPEN,))
    before, after = learning.calibration_deltas(unopened), learning.calibration_deltas(opened)
    inc = learning.calibration_increment(unopened, "opened")
    assert set(inc) == {key("open", "email"), key("order", "pct10")}
    np.testing.assert_allclose(before[key("open", "email")] + inc[key("open", "email")], after[key("open", "email")])
    # a second open of the same message adds nothing; nor does anything for a suppression
    assert learning.calibration_increment(opened, "opened") == {}
    assert learning.calibration_deltas(DecisionRecord(**{**_record().__dict__, "channel": None, "calibration": ()})) == {}
    # an unsubscribe moves only the unsubscribe calibration
    assert set(learning.calibration_increment(unopened, "unsubscribed")) == {key("unsubscribe", "email")}
    # the record survives its JSON round trip, calibration inputs included
    assert DecisionRecord.from_json(opened.to_json()) == opened
    assert len(opened.calibration) == 3 + P
    # a record written before P(order | opened) was kept calibrates opens and unsubscribes only
    old = DecisionRecord(**{**opened.__dict__, "calibration": opened.calibration[:2] + opened.calibration[3:]})
    assert set(learning.calibration_deltas(old)) == {key("open", "email"), key("unsubscribe", "email")}


def test_the_store_forgets_calibration_at_its_own_half_life(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    store.add_stats({"email/none": np.ones(3), key("open", "email"): np.ones(3)})
    store.decay_stats(0.0, 1000.0, 3600.0, 7 * 86400.0)                 # starts the clock
    store.decay_stats(0.0, 1000.0 + 7 * 86400.0, 3600.0, 7 * 86400.0)   # one calibration half-life later
    _, stats = store.stats()
    np.testing.assert_allclose(stats["email/none"], 1.0)                 # the learner never forgets (half-life 0)
    np.testing.assert_allclose(stats[key("open", "email")], 0.5)


def test_unopened_sends_lower_the_services_open_values(server, customers, cfg):
    """Sends that nobody opens teach the service that P(open) is lower than the offline model says:
    the statistics reach the store with one observation per send, and the values the service
    answers with fall for the channels that were used."""
    store = open_store(server.store_url)
    ref = customers(4, offset=1150)

    def values():  # transactional decisions do not touch the contact state: the same question twice
        out = {}
        for cid in ref:
            r = server.post("/v1/decide", {"customer_id": cid, "type": "transactional"})
            assert r.status_code == 200, r.text
            out.update({(cid, s["channel"], s["offer"]): s["expected_value"] for s in r.json()["scores"]})
        return out

    before = values()
    sends = []
    for cid in customers(150, offset=700):
        r = server.post("/v1/decide", {"customer_id": cid})
        assert r.status_code == 200, r.text
        if r.json()["action"] == "send":
            sends.append(r.json())
    assert len(sends) >= 40
    per_channel = {c: sum(d["channel"] == c for d in sends) for c in cfg.channel_names}
    # one deliberate late open: it arrives after the send matured and adds its increment
    late = sends[0]
    at = datetime.fromisoformat(late["send_at"].replace("Z", "+00:00")) + timedelta(hours=2)

    def matured():
        recs = [store.get("decision", d["decision_id"]) for d in sends]
        return all(r is not None and DecisionRecord.from_json(r).matured for r in recs)

    assert poll(matured, timeout=60), "the sends did not enter the learner in time"
    r = server.post("/v1/feedback", {"decision_id": late["decision_id"], "customer_id": late["customer_id"],
                                     "event": "opened", "ts": at.isoformat()})
    assert r.status_code == 200 and r.json()["accepted"], r.text
    _, stats = store.stats()
    for c, n in per_channel.items():
        if n:
            assert stats[key("open", c)][0] == n and stats[key("unsubscribe", c)][0] == n
    calibration = ResponseCalibration.from_vectors(cfg.channel_names, cfg.online.calibration_strength, stats)
    used = [c for c, n in per_channel.items() if n >= 10]
    for c in used:  # almost none opened: the intercept of the open correction is negative
        assert calibration.beta("open", c)[0] < 0, c

    def lower():
        after = values()
        moved = [k for k in before if k[1] in used and before[k] > 0.01 and after.get(k, before[k]) < before[k] - 1e-9]
        return moved if len(moved) >= 2 else None

    assert poll(lower, timeout=30, every=0.5), "the service's values did not follow the calibration"


def _sends(rng, day: int, m: int, open_rate: float, t0: float):
    """m matured-to-be email sends of one day with offline P(open) 0.2, opened at ``open_rate``."""
    out = {}
    for i in range(m):
        opened = rng.random() < open_rate
        z = (1.0, rng.integers(0, 5) / 3, rng.integers(0, 7) / 5, rng.integers(0, 5) / 5, rng.uniform(0.5, 1.0))
        out[f"d{day}-{i}"] = DecisionRecord(
            customer_id=f"c{i}", action_key="email/none", channel="email", offer="none", learner_input=(0.0,) * 6,
            decided_at=t0, sent_at=t0, type="marketing", reward=-0.01,
            counted=(f"opened|{day}-{i}",) if opened else (), calibration=(0.2, 0.01, 0.05, *z))
    return out


def _week_then_a_shift(store, online, cfg, seed: int = 8) -> list[dict]:
    """Two workers mature seven days of 300 email sends opened at the offline 0.2, then a day
    opened at 0.05; returns the store's statistics after each day."""
    from nextbest.serving.background import LearnerSync
    from nextbest.serving.records import keep_seconds

    keep_s, rng = keep_seconds(cfg, online), np.random.default_rng(seed)
    workers = [LearnerSync(store), LearnerSync(store)]
    t0 = datetime(2026, 11, 1).timestamp()
    names = {"channels": tuple(cfg.channel_names), "offers": tuple(cfg.offer_names)}
    out = []
    for d, rate in enumerate([0.2] * 7 + [0.05]):
        recs = _sends(rng, d, 300, rate, t0 + d * 86400.0)
        store.put_many("decision", [(i, r.to_json(), keep_s) for i, r in recs.items()])
        store.enqueue([(i, t0 + d * 86400.0 + 1.0) for i in recs])
        now = t0 + d * 86400.0 + 2.0
        workers[d % 2].run(online, keep_s, now_s=now, **names)
        for w in workers:  # both look again: only new windows can be claimed
            w.run(online, keep_s, now_s=now, **names)
        out.append(store.stats()[1])
    return out


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_service_forgets_a_channels_calibration_once_when_its_opens_change(backend, tmp_path, redis_db):
    """A week of email sends opened as the offline model says, then a day opened at a quarter of
    it: no change is seen in the stable days, the shift is seen once (one worker's check claims
    each window), the open statistics known before keep ``change_forget`` of their weight, and
    the open factor moves much further towards the new level than without the check."""
    import dataclasses

    from nextbest.decision.online import OnlineSettings
    from nextbest.features.config import load_config

    cfg = load_config()
    online = dataclasses.replace(OnlineSettings.from_config(cfg), learn_after_hours=24.0, calibration_half_life_days=0.0)
    assert online.change_z > 0 and online.change_forget == pytest.approx(0.1)  # the defaults
    url = f"sqlite:///{tmp_path / 'a.db'}" if backend == "sqlite" else redis_db
    days = _week_then_a_shift(open_store(url), online, cfg)
    k = key("open", "email")
    for d, stats in enumerate(days[:7]):
        assert stats[k][0] == pytest.approx(300 * (d + 1))        # nothing forgotten while stable
    assert days[7][k][0] == pytest.approx(0.1 * 2100 + 300)        # 10% of the week, the new day whole: once
    assert days[7][learning.check_key(k)][0] == pytest.approx(2400)  # the windows never decay or shrink

    plain = open_store(f"sqlite:///{tmp_path / 'b.db'}")
    unchecked = _week_then_a_shift(plain, dataclasses.replace(online, change_z=0.0), cfg)[7]
    assert unchecked[k][0] == pytest.approx(2400)
    z1 = np.array([[1.0, 0.3, 0.4, 0.2, 0.7]])

    def factor(stats):
        return ResponseCalibration.from_vectors(cfg.channel_names, online.calibration_strength, stats).factor(
            "open", np.array([0]), z1)[0]

    fast, slow = factor(days[7]), factor(unchecked)
    assert slow > 0.8 and fast < slow - 0.15, (fast, slow)        # towards 0.25 at once, not still near 1


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_workers_with_stale_reads_never_make_the_calibration_invalid(backend, tmp_path, redis_db):
    """Two workers mature alternating halves of each day, each scoring with its own (older) read:
    after the shift both may see it, but a forget only ever scales what the store holds, so the
    statistics stay a valid posterior (positive counts, positive semi-definite ``A``) and the
    claims never go backwards."""
    import dataclasses

    from nextbest.decision.online import OnlineSettings
    from nextbest.features.config import load_config
    from nextbest.serving.background import LearnerSync
    from nextbest.serving.records import keep_seconds

    cfg = load_config()
    online = dataclasses.replace(OnlineSettings.from_config(cfg), learn_after_hours=24.0, calibration_half_life_days=0.0)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else redis_db)
    keep_s, rng = keep_seconds(cfg, online), np.random.default_rng(3)
    a, b = LearnerSync(store), LearnerSync(store)
    names = {"channels": tuple(cfg.channel_names), "offers": tuple(cfg.offer_names)}
    t0 = datetime(2026, 11, 1).timestamp()
    k, claims = key("open", "email"), []
    for d, rate in enumerate([0.2] * 6 + [0.04] * 3):
        recs = list(_sends(rng, d, 400, rate, t0 + d * 86400.0).items())
        for half, worker in ((recs[:200], a), (recs[200:], b)):
            store.put_many("decision", [(i, r.to_json(), keep_s) for i, r in half])
            store.enqueue([(i, t0 + d * 86400.0 + 1.0) for i, _ in half])
            worker.run(online, keep_s, now_s=t0 + d * 86400.0 + 2.0, **names)
            st = CalibrationStats.from_vector(store.stats()[1][k])
            assert st.n > 0 and np.linalg.eigvalsh(st.A).min() > -1e-9, (d, st.n)
            claim = store.get(learning.CHECK_NS, learning.check_key(k))
            claims.append(json.loads(claim)[0] if claim else 0.0)
    assert claims == sorted(claims) and claims[-1] >= 9 * 400 - MIN_BATCH
    calibration = ResponseCalibration.from_vectors(cfg.channel_names, online.calibration_strength, store.stats()[1])
    assert calibration.factor("open", np.array([0]), np.array([[1.0, 0.3, 0.4, 0.2, 0.7]]))[0] < 0.5
