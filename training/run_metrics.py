"""A training run's metrics as MLflow shows them: names a marketer can read without a glossary.

One source of truth for every metric name of a ``nextbest train`` run; the CLI, the benchmarks,
the notebooks and the browser test read the names from here.

- Each name is ``<what is measured>/<for whom>``. The MLflow UI's chart view shows one section
  per prefix before the ``/``; the run page lists metrics in the order they were logged, so
  ``training.tracking`` logs the marketer's (profit, extra orders and profit) before the data
  team's (``model_...``, ``uplift_ranking_...``, ``time_seconds/...``).
- Intervals are two more metrics beside the estimate, ending ``_low_95`` and ``_high_95``
  (an MLflow metric holds one number).
- Headline, first, on every run (real data too): the off-policy estimate on the held-out days'
  logged decisions (``training.tracking.offpolicy_headline``, paired doubly robust):
  ``ope_extra_profit_per_1000_customers/vs_sending_nothing``, ``.../vs_champion`` (when there is
  one) and ``.../vs_logging_policy``, each with its 95% interval; then
  ``ope_profit_per_1000_customers/<approach>`` and the diagnostics (``ope_rounds/held_out``,
  ``ope_effective_sample_size/nextbest_policy``). Per 1,000 customers on one day, the unit of the
  simulator's truth below, which sits beside it as a check.
- The simulator's truth, when the data directory has one:
  ``profit_per_1000_customers/<approach>`` for the policy and the baselines,
  ``extra_profit_per_1000_customers_vs_sending_nothing/<approach>`` and
  ``share_of_achievable_extra_profit/<approach>``.
- Measured on the held-out days (real data too): ``extra_orders_per_1000_messages/<group>`` and
  ``extra_profit_per_1000_messages/<group>`` for each channel, offer and send-hour band, with
  their 95% intervals.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# the simulation's approaches (sim.simulation_eval) -> the names marketers see
APPROACHES = {"policy": "nextbest_policy", "suppress": "send_nothing", "best_single_channel": "best_single_channel",
              "random": "random_choice", "oracle": "perfect_knowledge"}
PROFIT = "profit_per_1000_customers"
EXTRA_PROFIT = "extra_profit_per_1000_customers_vs_sending_nothing"
SHARE = "share_of_achievable_extra_profit"
EXTRA_ORDERS_PER_MESSAGE = "extra_orders_per_1000_messages"
EXTRA_PROFIT_PER_MESSAGE = "extra_profit_per_1000_messages"
OPEN_RATE_AT_SEND_TIME = "open_rate_at_chosen_send_time"
LOW, HIGH = "_low_95", "_high_95"
OPE_EXTRA_PROFIT = "ope_extra_profit_per_1000_customers"
OPE_PROFIT = "ope_profit_per_1000_customers"
OPE_VS = {"nothing": "vs_sending_nothing", "champion": "vs_champion", "logging": "vs_logging_policy"}


def slug(text) -> str:
    """``"morning (6-11)"`` -> ``"morning_6to11"``: letters, digits and underscores only."""
    text = re.sub(r"(\d)-(\d)", r"\1to\2", str(text).lower())
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def name(what: str, who) -> str:
    return f"{what}/{slug(APPROACHES.get(who, who))}"


def headline(values: pd.DataFrame | None) -> dict[str, float]:
    """Profit per 1,000 customers of the policy and the baselines (``simulation_eval`` values)."""
    out = {}
    if values is None:
        return out
    for what, column in ((PROFIT, "per_1000"), (SHARE, "normalized"), (EXTRA_PROFIT, "extra_per_1000")):
        for who, row in values.iterrows():  # one kind at a time: the run page lists them in this order
            out[name(what, who)] = row[column]
    return out


def offpolicy(headline: dict | None) -> dict[str, float]:
    """The off-policy headline (``training.tracking.offpolicy_headline``) per 1,000 customers on one day:
    the new policy's extra profit against each comparison with its 95% interval, then its value."""
    out = {}
    if not headline:
        return out
    for who in ("nothing", "champion", "logging"):
        e = headline["vs"].get(who)
        if e is not None:
            key = f"{OPE_EXTRA_PROFIT}/{OPE_VS[who]}"
            out |= {key: 1000 * e.difference, key + LOW: 1000 * e.ci_low, key + HIGH: 1000 * e.ci_high}
    out[name(OPE_PROFIT, "policy")] = 1000 * headline["value"]
    out[f"{OPE_PROFIT}/logging_policy"] = 1000 * headline["logging_value"]
    if "champion" in headline["vs"]:
        out[f"{OPE_PROFIT}/champion"] = 1000 * headline["vs"]["champion"].champion
    out["ope_rounds/held_out"] = headline["rounds"]
    out["ope_effective_sample_size/nextbest_policy"] = headline["ess"]
    return out


def incrementality(inc: pd.DataFrame) -> dict[str, float]:
    """Extra orders and profit per 1,000 messages by channel, offer and send hour, with intervals."""
    out = {}
    for r in inc.itertuples():
        group = f"{r.by}_{r.group}"
        for what, col in ((EXTRA_ORDERS_PER_MESSAGE, "orders"), (EXTRA_PROFIT_PER_MESSAGE, "profit")):
            key = name(what, group)
            out[key] = getattr(r, f"{col}_per_1000")
            out[key + LOW] = getattr(r, f"{col}_low")
            out[key + HIGH] = getattr(r, f"{col}_high")
    return out


def send_time(table: pd.DataFrame | None) -> dict[str, float]:
    if table is None:
        return {}
    return {name(OPEN_RATE_AT_SEND_TIME, who): row["mean_true_open_rate"] for who, row in table.iterrows()}


def model_health(responses: pd.DataFrame, uplift: dict) -> dict[str, float]:
    """For the data team: AUC and log loss per response model and channel, uplift ranking quality."""
    out = {}
    for r in responses.itertuples():
        out[f"model_auc/{slug(r.model)}_{slug(r.channel)}"] = r.auc
        out[f"model_log_loss/{slug(r.model)}_{slug(r.channel)}"] = r.log_loss
    for offer, u in uplift.items():
        out[f"uplift_ranking_qini/offer_{slug(offer)}"] = u["qini"][0]
        out[f"uplift_ranking_auuc/offer_{slug(offer)}"] = u["auuc"][0]
    return out


def timings(stages: dict) -> dict[str, float]:
    return {f"time_seconds/{slug(k)}": v for k, v in stages.items()}


def finite(metrics: dict) -> dict[str, float]:
    """The metrics MLflow can store: finite floats."""
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


def headline_summary(metrics: dict) -> list[tuple[str, float]]:
    """The few numbers a marketer looks at first, in reading order (those the run has)."""
    keys = [f"{OPE_EXTRA_PROFIT}/{v}" for v in OPE_VS.values()]
    keys += [name(PROFIT, w) for w in ("policy", "suppress", "best_single_channel", "random", "oracle")]
    keys += [name(SHARE, "policy")]
    return [(k, metrics[k]) for k in keys if k in metrics]


def offpolicy_description(metrics: dict, champion: str | None = None) -> list[str]:
    """Markdown lines of the off-policy headline (empty without one)."""
    parts = []
    for who, label in (("nothing", "vs sending nothing"),
                       ("champion", f"vs the champion (v{champion})" if champion else "vs the champion"),
                       ("logging", "vs the logging policy")):
        key = f"{OPE_EXTRA_PROFIT}/{OPE_VS[who]}"
        if key in metrics:
            parts.append(f"{label} **{metrics[key]:+,.1f}** ({metrics[key + LOW]:+,.1f} to {metrics[key + HIGH]:+,.1f})")
    if not parts:
        return []
    n = metrics.get("ope_rounds/held_out")
    # one short paragraph first: MLflow shows the first lines of a description and folds the rest
    # under "Show more", so the headline must fit there
    return [f"**Extra profit per 1,000 customers per day** (off-policy, 95% interval): " + " · ".join(parts), "",
            f"Estimated on {'' if n is None else f'{n:,.0f} '}held-out logged decisions (doubly robust).", ""]


def propensity_description(info: dict | None) -> list[str]:
    """What the run's propensities are, and the bias estimated ones can leave."""
    source = (info or {}).get("propensity_source", "logged")
    if source == "logged":
        return []
    clipped = (info or {}).get("propensity_clipped_rows")
    return [f"Propensities: **{source}** (no complete `logging_decisions` table): a cross-fitted classifier of the "
            f"logged action on the customer's features, clipped at {info.get('propensity_clip', 0.01):g}"
            + (f" ({clipped:,} decisions clipped)" if clipped is not None else "") + ". Uplift and off-policy figures "
            "can be biased where the logging policy used information the data does not hold (unmeasured "
            "confounding), where the classifier is wrong, and where it (almost) never or always messaged a kind of "
            "customer (overlap).", ""]


def run_description(metrics: dict, version: str | None, data_dir, info: dict | None = None,
                    champion: str | None = None) -> str:
    """The markdown MLflow shows at the top of the run page (the ``mlflow.note.content`` tag)."""
    lines = offpolicy_description(metrics, champion)
    lines += [f"**Policy version {version or '(not registered)'}**, trained on `{data_dir}`.", ""]
    lines += propensity_description(info)
    head = [(k, v) for k, v in headline_summary(metrics) if not k.startswith(OPE_EXTRA_PROFIT)]
    if head:
        lines += ["Expected profit per 1,000 customers on one day (simulated customers, true response rates):", ""]
        lines += [f"- {k.split('/')[1].replace('_', ' ')}: **{v:,.1f}**" for k, v in head if k.startswith(PROFIT)]
        share = metrics.get(name(SHARE, "policy"))
        if share is not None:
            lines += ["", f"The policy captures **{share:.0%}** of the extra profit that perfect knowledge would add "
                          "over sending nothing."]
    else:
        lines += ["No simulator truth in this data: see the off-policy estimate above and the measured extra "
                  "orders and profit per 1,000 messages below."]
    lines += ["", "The full uplift report with charts: **Artifacts → report/index.html**. Metrics ending "
                  "`_low_95` / `_high_95` are the 95% range of the estimate before them."]
    return "\n".join(lines)
