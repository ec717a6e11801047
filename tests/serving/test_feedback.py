"""Late stepwise feedback on the service's own path (a real SQLite store): decisions enter the
learner with their reward so far, later events add their increments, and the statistics end
exactly as if every decision had entered with its final realized profit."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from nextbest.features.config import load_config
from nextbest.decision.objective import realized_profit
from nextbest.decision.online import D, OnlineLearner, OnlineSettings, event_reward, statistics
from nextbest.serving import learning
from nextbest.serving.background import LearnerSync
from nextbest.serving.feedback import add_event, counts
from nextbest.serving.records import DecisionRecord, keep_seconds, start_reward
from nextbest.serving.store import open_store


def test_late_stepwise_feedback_ends_in_the_statistics_of_the_final_rewards(tmp_path):
    cfg = load_config()
    online = dataclasses.replace(OnlineSettings.from_config(cfg), learn_after_hours=24.0, half_life_days=0.0,
                                 learn_profit=True)
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    keep_s = keep_seconds(cfg, online)
    rng = np.random.default_rng(4)
    t0 = time.time() - 80 * 3600.0
    recs = {}
    for i in range(50):
        x = np.r_[1.0, rng.gamma(2, 0.3), 1.0, rng.normal(size=D - 3)]
        recs[f"d{i}"] = DecisionRecord(f"c{i}", "email/pct10", "email", "pct10", tuple(x), t0, t0, "marketing",
                                       start_reward(cfg, "email", "pct10"))
    store.put_many("decision", [(d, r.to_json(), keep_s) for d, r in recs.items()])
    store.enqueue([(d, t0 + online.learn_after_hours * 3600.0) for d in recs])
    steps = [(f"d{i}", ev, t0 + t, v) for i in range(50)
             for ev, t, v in [("opened", 3600.0 * (i % 30), None), ("converted", 3600.0 * (i % 60), 5.0 * (i % 3))]]
    rng.shuffle(steps)

    def feed(d, ev, t, v):
        reward = event_reward(cfg, "email", "pct10", ev, v) if counts(recs[d], t, cfg) else 0.0
        return add_event(store, d, f"{ev}|{t}", reward, keep_s)

    for step in steps[: len(steps) // 2]:
        assert feed(*step)
    matured, learner = LearnerSync(store).run(online, keep_s, now_s=t0 + 24 * 3600.0)
    assert matured == 50                                   # enter the learner with the reward so far
    for step in steps[len(steps) // 2:]:
        assert feed(*step)                                 # later increments go straight to the statistics
    assert not feed(*steps[0])                             # the same event twice counts once
    _, before = store.stats()
    feed("d1", "converted", t0 + 100 * 3600.0, 9.0)        # outside the attribution window: adds nothing
    _, after = store.stats()
    np.testing.assert_array_equal(after["email/pct10"], before["email/pct10"])

    # the final reward of each decision is its realized profit; the statistics are those of a full recompute
    value = {d: 0.0 for d in recs}
    for d, ev, _, v in steps:
        value[d] += v if ev == "converted" else 0.0
    ordered = {d: sum(ev == "converted" for dd, ev, _, _ in steps if dd == d) for d in recs}
    final = realized_profit(cfg, np.zeros(50, int), np.ones(50, int), [value[d] for d in recs],
                            [ordered[d] for d in recs], np.zeros(50, bool), [value[d] for d in recs])
    for d, r in zip(recs, final):
        assert DecisionRecord.from_json(store.get("decision", d)).reward == pytest.approx(r)
    X = np.stack([np.array(r.learner_input) for r in recs.values()])
    want = statistics(np.array(["email/pct10"] * 50, dtype=object), X, final).stats["email/pct10"]
    _, stats = store.stats()
    got = learning.from_vector(stats["email/pct10"])
    assert got.n == want.n and np.allclose(got.xr, want.xr) and np.isclose(got.rr, want.rr)
    assert np.allclose(OnlineLearner(online, learning.state_from_vectors(stats)).posterior("email/pct10")[0],
                       OnlineLearner(online).partial_fit(["email/pct10"] * 50, X, final).posterior("email/pct10")[0])


def test_an_event_at_the_answers_own_send_time_is_not_before_it():
    """``send_at`` goes out as ISO text to the microsecond; read back, it must never count as
    before the record's float send time (they can differ by a float rounding step)."""
    from datetime import datetime

    import numpy as np

    from nextbest.serving.feedback import before_send

    rng = np.random.default_rng(0)
    for ns in rng.integers(1_700_000_000 * 10**9, 1_900_000_000 * 10**9, 20_000) // 1000 * 1000:
        sent_at = int(ns) / 1e9                                   # as the record keeps it
        text = str(np.datetime64(int(ns), "ns"))[:26] + "Z"       # as the answer says it
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert not before_send(ts, sent_at), text
    assert before_send(datetime.fromisoformat("2026-01-01T00:00:00+00:00"), 1767225600.5)
