"""The closed loop's engagement snapshot: refreshed every day (events streamed into the features),
or kept from day 0 as a service between exports keeps it, with live consent either way."""

import numpy as np
import pandas as pd

from nextbest.sim.closed_loop import run_closed_loop
from nextbest.sim.simulate import generate, write
from nextbest.training.train import train


class Spy:
    """A peer that sends nothing and keeps the features it was shown each day."""

    def __init__(self, channels):
        self.seen, self.unsubscribed, self.channels = [], [], channels

    def decide(self, ctx):
        self.seen.append(ctx.features.copy())
        ev = ctx.events
        gone = ev[(ev["event"].astype(str) == "unsubscribed") & (pd.to_datetime(ev["ts"], utc=True) < ctx.day_start)]
        counts = gone.groupby([gone["customer_id"].astype(str), gone["channel"].astype(str)]).size()
        self.unsubscribed.append(pd.DataFrame({f"{c}_unsubscribed": [counts.get((cid, c), 0) for cid in
                                                                     ctx.features.index.astype(str)]
                                               for c in self.channels}, index=ctx.features.index))
        n = len(ctx.features)
        return np.full(n, -1), np.zeros(n), np.zeros(n)

    def learn(self, ctx, channel, hour, offer, outcomes):
        pass


def test_a_frozen_snapshot_keeps_day_0s_features_with_live_consent(config, tmp_path):
    sim = generate(300, 28, seed=4, config=config, progress=False)
    policy = train(write(sim, tmp_path / "history", seed=4), config, seed=0).policy
    seen = {}
    for every in (0, 1):
        spy = Spy(config.channel_names)
        run_closed_loop(policy, generate(300, 28, seed=4, config=config, progress=False), 3, seed=2, progress=False,
                        peers={"spy": spy}, refresh_every=every)
        seen[every] = spy.seen
        for shown, want in zip(spy.seen, spy.unsubscribed):  # consent is live in both runs
            np.testing.assert_array_equal(shown[want.columns].to_numpy(dtype=float), want.to_numpy(dtype=float))
    unsub = [f"{c}_unsubscribed" for c in config.channel_names]
    frozen, fresh = seen[0], seen[1]
    pd.testing.assert_frame_equal(frozen[0], fresh[0])  # day 0: the same snapshot
    for d in (1, 2):
        # the frozen run shows day 0's engagement features; its consent is the day's own
        pd.testing.assert_frame_equal(frozen[d].drop(columns=unsub), frozen[0].drop(columns=unsub))
        assert not fresh[d].drop(columns=unsub).equals(fresh[0].drop(columns=unsub))  # the day's own features
