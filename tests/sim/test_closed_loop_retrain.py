"""The closed loop's retrain hook: the loop's own log joins the history as valid data, and a
retrained policy takes over with a fresh learner (or, with ``keep_learner``, the served one)."""

import pandas as pd

from nextbest.features.validate import validate_dir
from nextbest.sim.closed_loop import run_closed_loop
from nextbest.sim.simulate import generate, write
from nextbest.training.train import train


def test_loop_hands_its_own_log_to_retrain_and_serves_the_candidate(config, tmp_path):
    sim = generate(400, 30, seed=8, config=config, progress=False, world="slow_fatigue")
    policy = train(write(sim, tmp_path / "history", seed=8), config, seed=0).policy
    calls, decided = [], []

    def hook(data, served_ids):
        out = write(data, tmp_path / f"retrain{len(calls)}", seed=8)
        report = validate_dir(out, config)
        assert not report.problems, report.problems
        calls.append((data, set(served_ids)))
        candidate = train(out, config, seed=0).policy
        decide = candidate.decide

        def spy(*args, **kwargs):  # counts the days the candidate decides
            decided.append(kwargs.get("learner"))
            return decide(*args, **kwargs)
        candidate.decide = spy
        return candidate

    res = run_closed_loop(policy, sim, 4, seed=3, progress=False, retrain=hook, retrain_every=2)
    assert res.daily["retrained"].tolist() == [False, False, True, False]
    assert len(calls) == 1
    data, served = calls[0]
    assert data.end == sim.end + pd.Timedelta(days=2)
    loop = data.decisions[data.decisions["message_id"].isin(served)]
    assert len(loop) == len(served) and len(data.decisions) == len(sim.decisions) + len(loop)
    assert (loop["ts"] >= sim.end).all() and (loop["ts"] < data.end).all()
    # the two played days: every customer decided each day; only sends still due after the day's start wait
    assert 0.9 * 800 < len(loop) <= 800
    sends = loop[loop["action"] == "send"]
    assert len(sends) > 0 and sends["propensity"].between(0, 1, inclusive="right").all()
    sent_events = set(data.events.loc[data.events["event"] == "sent", "message_id"])
    assert set(sends["message_id"]) <= sent_events
    assert (loop.loc[loop["action"] == "suppress", "channel"].isna()).all()
    # the candidate decided days 2 and 3, with the fresh learner the loop ends with
    assert len(decided) == 2 and decided[0] is decided[1] is res.learner


def test_keep_learner_carries_the_served_learner_over_to_the_candidate(config, tmp_path):
    import copy

    sim = generate(300, 30, seed=9, config=config, progress=False)
    policy = train(write(sim, tmp_path / "history", seed=9), config, seed=0).policy
    seen = []

    def spying(p):
        decide = p.decide

        def spy(*args, **kwargs):
            seen.append((p, kwargs.get("learner")))
            return decide(*args, **kwargs)
        p.decide = spy
        return p

    served = spying(copy.copy(policy))
    candidate = spying(copy.copy(policy))
    res = run_closed_loop(served, sim, 3, seed=3, progress=False, retrain=lambda data, ids: candidate,
                          retrain_every=2, keep_learner=True)
    assert res.daily["retrained"].tolist() == [False, False, True]
    played = [(p, lr) for p, lr in seen if lr is not None]  # the frozen arm decides without one
    assert [p for p, _ in played] == [served, served, candidate]
    learners = [lr for _, lr in played]
    assert learners[0] is learners[1] is learners[2] is res.learner
    assert res.learner.calibration.stats  # the one learner the three days fed
