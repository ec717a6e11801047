"""The price of learning, in money, from the decision log: what exploration and the control group
cost each day, and what the learner got for it.

Every logged decision records ``price`` (``decision.policy.price_of_learning``): the expected
profit it gave up to exploration (the greedy option's value minus the value expected under the
drawn distribution) and, for a customer in the control group, to the control group (the best value
it could have had). Both are the policy's own estimates at decision time, the same values it
decides by. The service's ``/metrics`` counts the same figures live
(``nextbest_exploration_cost_total``, ``nextbest_control_cost_total``).

What was bought: per action, how far the online learner's posterior has narrowed, as the posterior
standard deviation of the action's value at its average logged input now against the prior's (no
feedback), on the same noise scale. A marketer reads both tables to set ``exploration.budget`` and
``exploration.control_share`` knowingly: an action whose posterior has stopped narrowing is not
worth more exploration.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nextbest.decision.online import SUPPRESS, OnlineLearner
from nextbest.serving.learning import is_calibration, state_from_vectors


def daily(rows: list[dict], days: int | None = None) -> pd.DataFrame:
    """One row per UTC day of the logged decisions ``rows`` (``read_records(log_dir, "decisions")``;
    the last ``days`` only, if given): decisions, explored, in the control group, and the money
    given up to each, in total and per 1,000 decisions."""
    cols = ["decisions", "explored", "control", "exploration_cost", "control_cost", "exploration_cost_per_1000",
            "control_cost_per_1000"]
    if not rows:
        return pd.DataFrame(columns=cols)
    frame = pd.DataFrame({"day": pd.to_datetime([r["now"] for r in rows], utc=True, format="ISO8601").floor("D"),
                          "explored": [bool(r.get("explored")) for r in rows],
                          "control": [bool(r.get("control")) for r in rows],
                          "exploration_cost": [(r.get("price") or {}).get("exploration", 0.0) for r in rows],
                          "control_cost": [(r.get("price") or {}).get("control", 0.0) for r in rows]})
    out = frame.groupby("day").agg(decisions=("explored", "size"), explored=("explored", "sum"),
                                   control=("control", "sum"), exploration_cost=("exploration_cost", "sum"),
                                   control_cost=("control_cost", "sum"))
    out["exploration_cost_per_1000"] = out["exploration_cost"] / out["decisions"] * 1000.0
    out["control_cost_per_1000"] = out["control_cost"] / out["decisions"] * 1000.0
    out.index = out.index.strftime("%Y-%m-%d")
    return out[cols].tail(days) if days else out[cols]


def information(rows: list[dict], store, online) -> pd.DataFrame:
    """Per action (sends among the logged decisions ``rows``): logged decisions, explored ones, and
    the posterior standard deviation of its value at its average logged input, now and before any
    feedback, with the narrowing."""
    rows = [r for r in rows if r.get("action_key") not in (None, SUPPRESS)]
    cols = ["decisions", "explored", "sd_prior", "sd_now", "narrowed"]
    if not rows:
        return pd.DataFrame(columns=cols)
    _, vectors = store.stats()
    now = OnlineLearner(online, state_from_vectors({k: v for k, v in vectors.items() if not is_calibration(k)}))
    prior = OnlineLearner(online)
    noise = now.noise_var
    out = {}
    for key, group in pd.DataFrame(rows).groupby("action_key"):
        x = np.mean(np.array(group["learner_input"].tolist(), dtype=float), axis=0)[2:]  # the action's own part
        sd = [float(np.sqrt(max(noise * x @ learner.posterior(key)[1] @ x, 0.0))) for learner in (prior, now)]
        out[key] = (len(group), int(group["explored"].sum()), sd[0], sd[1],
                    1.0 - sd[1] / sd[0] if sd[0] > 0 else 0.0)
    return pd.DataFrame.from_dict(out, orient="index", columns=cols).sort_index()
