"""The uplift report for marketers: one HTML page with PNG charts, written beside each training run.

Written in marketers' words: "extra orders per 1,000 customers compared with sending nothing",
with ranges (95% confidence intervals) instead of p-values. The page reads a
:class:`ReportData` that ``training.tracking`` fills; charts use matplotlib's object API (no
global pyplot state).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

POLICY_LABELS = {
    "policy": "nextbest policy", "best_single_channel": "everyone on the best single channel, no offer",
    "random": "random channel, time and offer", "suppress": "send nothing", "oracle": "perfect knowledge (simulator only)",
}


@dataclass
class ReportData:
    title: str
    version: str
    values: pd.DataFrame | None            # policy -> per_1000, extra_per_1000, normalized (simulated truth)
    values_note: str
    incrementality: pd.DataFrame           # from evaluate.measured_incrementality
    uplift: dict                           # from evaluate.uplift_evaluation
    responses: pd.DataFrame                # from evaluate.response_metrics
    reliability: dict
    send_time: pd.DataFrame | None = None
    facts: dict = field(default_factory=dict)
    picks: pd.DataFrame | None = None      # per channel: the policy's own picks (policy_breakdown.policy_picks)
    changed: pd.DataFrame | None = None    # against the champion (policy_breakdown.what_changed)


def _figure(w=7.0, h=3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: Path, name: str) -> str:
    """Write the chart as ``out/name`` and return an ``<img>`` that embeds it.

    Embedded (a data URI) because MLflow's artifact viewer shows an HTML artifact on its own,
    without the files beside it, and a single file can be mailed; the PNG stays for reuse.
    """
    fig.tight_layout()
    fig.savefig(out / name)
    data = base64.b64encode((out / name).read_bytes()).decode()
    return f"<img alt='{name}' src='data:image/png;base64,{data}'>"


def _chart_values(values: pd.DataFrame, out: Path) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    order = [k for k in ("suppress", "random", "best_single_channel", "policy", "oracle") if k in values.index]
    v = values.loc[order, "extra_per_1000"]
    ax.barh([POLICY_LABELS[k] for k in order], v, color=["#999", "#bbb", "#88a", "#2a7", "#555"][:len(order)])
    ax.set_xlabel("extra profit per 1,000 customers on one day, vs sending nothing")
    ax.axvline(0, color="black", lw=0.8)
    return _save(fig, out, "policy_value.png")


def _chart_incrementality(inc: pd.DataFrame, out: Path, what: str) -> str:
    fig = _figure(7.5, 4.2)
    axes = fig.subplots(1, 3, sharey=False)
    for ax, by in zip(axes, ("channel", "offer", "send hour")):
        d = inc[inc["by"] == by]
        y = d[f"{what}_per_1000"].to_numpy()
        err = np.stack([y - d[f"{what}_low"].to_numpy(), d[f"{what}_high"].to_numpy() - y])
        ax.bar(range(len(d)), y, yerr=err, capsize=3, color="#4a8")
        ax.set_xticks(range(len(d)), [str(g).split(" (")[0] for g in d["group"]], rotation=35, ha="right")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"by {by}")
    axes[0].set_ylabel(f"extra {what} per 1,000 messages")
    return _save(fig, out, f"incremental_{what}.png")


def _chart_qini(uplift: dict, out: Path) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    for offer, u in uplift.items():
        c = u["curve"]
        ax.plot(c["fraction"], c["qini"], label=f"{offer}")
        ax.plot(c["fraction"], c["random"], ls=":", color="grey", lw=0.8)
    ax.set_xlabel("share of customers targeted, most persuadable first")
    ax.set_ylabel("extra orders (held-out)")
    ax.legend(fontsize=8)
    ax.set_title("Qini curves: above the dotted line = better than random targeting")
    return _save(fig, out, "qini.png")


def _chart_deciles(uplift: dict, out: Path) -> str:
    fig = _figure(7.5, 3.8)
    ax = fig.add_subplot()
    n = len(uplift)
    for i, (offer, u) in enumerate(uplift.items()):
        d = u["deciles"]
        x = d["decile"].to_numpy() + (i - n / 2) * 0.8 / max(n, 1)
        y = 1000 * d["uplift"].to_numpy()
        err = 1000 * np.abs(np.stack([d["uplift"] - d["ci_low"], d["ci_high"] - d["uplift"]]))
        ax.errorbar(x, y, yerr=err, fmt="o", ms=3, capsize=2, label=offer)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("customer decile by predicted uplift (1 = most persuadable)")
    ax.set_ylabel("observed extra orders per 1,000")
    ax.legend(fontsize=8)
    return _save(fig, out, "uplift_deciles.png")


def _chart_reliability(curves: dict, out: Path) -> str:
    fig = _figure(7.5, 3.2)
    axes = fig.subplots(1, max(len(curves), 1))
    for ax, (name, c) in zip(np.atleast_1d(axes), curves.items()):
        top = max(c["predicted"].max(), c["observed"].max()) * 1.05
        ax.plot([0, top], [0, top], ls=":", color="grey")
        ax.plot(c["predicted"], c["observed"], "o-", ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("observed", fontsize=8)
    return _save(fig, out, "reliability.png")


def _table(df: pd.DataFrame, floatfmt="{:,.2f}") -> str:
    return df.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0, classes="t", na_rep="–")


def write_report(data: ReportData, out: str | Path) -> Path:
    """Write ``index.html`` and its PNGs into ``out``; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(data.title)}</h1>",
             f"<p class=sub>Policy version {html.escape(str(data.version))}. "
             + " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in data.facts.items()) + "</p>"]
    if data.values is not None:
        v = data.values.copy()
        pol = v.loc["policy"]
        parts += ["<h2>What the policy adds</h2>",
                  f"<p>On a typical day the policy brings <b>{pol['extra_per_1000']:,.1f}</b> extra profit per "
                  f"1,000 customers compared with sending nothing. {html.escape(data.values_note)}</p>",
                  _chart_values(v, out),
                  _table(pd.DataFrame({"approach": [POLICY_LABELS.get(k, k) for k in v.index],
                                       "profit per 1,000": v["per_1000"].to_numpy(),
                                       "extra vs sending nothing": v["extra_per_1000"].to_numpy(),
                                       "share of the achievable extra": v["normalized"].to_numpy()}))]
    parts += ["<h2>What each channel, offer and send time adds over sending nothing</h2>",
              "<p>Measured on the most recent days the models did not learn from: orders and profit of "
              "customers who got a message, minus those of comparable customers who got nothing (weighted "
              "so that the comparison is fair to how messages were assigned). Bars show the estimate, "
              "whiskers the range the true value lies in with 95% confidence.</p>",
              _chart_incrementality(data.incrementality, out, 'orders'),
              _chart_incrementality(data.incrementality, out, 'profit'),
              _table(data.incrementality.rename(columns={
                  "by": "by", "group": "group", "messages": "messages",
                  "orders_per_1000": "extra orders /1,000", "orders_low": "low", "orders_high": "high",
                  "profit_per_1000": "extra profit /1,000", "profit_low": "low ", "profit_high": "high "}))]
    if data.picks is not None and len(data.picks):
        parts += ["<h2>Per customer, not on average: the messages the policy picks</h2>",
                  "<p>The table above averages over every message that was sent, to whomever the logging policy "
                  "chose. The policy does not send at random: it sends on a channel only to the customers for "
                  "whom it expects that channel to add the most. So a channel can lose money on average and "
                  "still be the right choice for some customers. Below, for the same held-out days: how often the "
                  "policy would pick each channel, and what its own picks add per 1,000 messages (estimated with "
                  "the off-policy reward model of the headline). Where a channel's picks are negative here too, "
                  "the policy's models and this measurement disagree about it: look at that channel before "
                  "trusting the policy's choice of it.</p>",
                  _table(data.picks, "{:,.3f}")]
    if data.changed is not None and len(data.changed):
        ch = data.changed
        total = ch.loc[ch["by"] == "channel", "change in extra profit /1,000 customers"].sum()
        parts += [f"<h2>What changed against the champion ({html.escape(str(ch.attrs.get('champion', '')))})</h2>",
                  f"<p>On the same held-out days, this version would bring <b>{total:+,.1f}</b> extra profit per "
                  "1,000 customers per day against the champion, by the off-policy reward model of the headline "
                  "(the headline's doubly robust interval is the one to trust; this table shows where the "
                  "difference comes from). Per channel, offer and send time: how many customer-days each "
                  "version messages there, and the money it brings over sending nothing.</p>",
                  _table(ch, "{:,.3f}")]
    if data.uplift:
        rows = [{"offer": o, "Qini coefficient": u["qini"][0], "low": u["qini"][1], "high": u["qini"][2],
                 "AUUC": u["auuc"][0]} for o, u in data.uplift.items()]
        parts += ["<h2>Who is worth an offer</h2>",
                  "<p>The models rank customers by how much an offer changes their chance to order. If the ranking "
                  "works, the first deciles show the largest observed lift and the curves rise above the dotted "
                  "line of random targeting. Held-out days only.</p>",
                  _chart_qini(data.uplift, out), _chart_deciles(data.uplift, out),
                  _table(pd.DataFrame(rows), "{:.5f}")]
    if data.send_time is not None:
        st = data.send_time.reset_index().rename(columns={"index": "send time chosen by"})
        parts += ["<h2>Send time</h2>",
                  "<p>Average chance that a message is opened when sent at the hour each approach picks "
                  "(simulated customers, true open rates).</p>", _table(st, "{:.4f}")]
    parts += ["<h2>Model health (for the data team)</h2>",
              "<p>AUC: how well each model separates responders (0.5 = chance). Reliability: predicted vs observed "
              "rates in ten bins (on the diagonal = calibrated).</p>",
              _table(data.responses, "{:.4f}"), _chart_reliability(data.reliability, out)]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(data.title) + "</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
            "img{max-width:100%;display:block;margin:1em 0}.t{border-collapse:collapse;font-size:13px}"
            ".t td,.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}.sub{color:#666}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = out / "index.html"
    path.write_text(page)
    return path
