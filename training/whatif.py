"""``nextbest whatif``: what changed rules would have done, estimated off-policy on the logged decisions.

A marketer asks "what if SMS were capped at one a week", "what if quiet hours started at 8 pm", "what
if the 20% offer went". The answer replays the logged decisions twice through **the same policy**
(the champion's models, exploration and learner settings, all unchanged), once under the current
rules and once under the new config's, and compares the two on the same rounds:

- **value** (profit per decision, and per 1,000 decisions): a paired doubly robust difference
  (``training.ope.estimate_paired``: one cross-fitted reward model, one bootstrap over rounds for
  both policies), with its 95% interval;
- **unsubscribes** per 1,000 decisions: the same paired estimate with "this message caused an
  unsubscribe" as the reward;
- **messages sent per channel** per 1,000 decisions: exact for each policy on each round (its
  probability of every option is known), so only the rounds' sampling is uncertain; the interval
  is a bootstrap over rounds of the paired difference.

What "the rules" are: everything in the new config. The current rules are the champion's own
config (saved with it), unless ``current`` names another. Money is counted with the current config's
objective and costs for both policies (the new config's costs steer its decisions but do not
rewrite what a logged order was worth). Channels and offers keep their names and order, because the
models and the logged actions are coded by them: take an offer out with its ``when:`` rule or a
channel with ``caps: {per_day: 0}``.

Limits: the estimate holds where the logging policy tried what the new rules would do (the effective
sample size is reported); rules that make the policy send much more than the log ever did lean on
the reward model. The result is an MLflow run with a readable page (``whatif.html``) and a chart.
"""

from __future__ import annotations

import html
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.decision.policy import DecisionPolicy
from nextbest.features.config import Config
from nextbest.training.ope import CrossFitRewardModel, estimate_paired
from nextbest.training.offpolicy import LoggedRounds, _reward_frame, logged_rounds, replay

log = logging.getLogger(__name__)


class RulesMismatch(ValueError):
    """The new config renames or reorders channels or offers."""


def under_rules(policy: DecisionPolicy, config: Config) -> DecisionPolicy:
    """``policy`` deciding under ``config``'s rules: same models, exploration and learner settings."""
    cur = policy.config
    for what, a, b in (("channels", cur.channel_names, config.channel_names), ("offers", cur.offer_names,
                                                                                 config.offer_names)):
        if list(a) != list(b):
            raise RulesMismatch(f"the new config's {what} {list(b)} differ from the policy's {list(a)}: keep the "
                                f"names and order (take an offer out with its `when:` rule, a channel with "
                                "`caps: {per_day: 0}`)")
    out = DecisionPolicy(config, policy.models, policy.version, policy.uplift_mode, policy.exploration)
    out.online = policy.online
    return out


@dataclass
class WhatIf:
    rounds: int
    table: pd.DataFrame    # one row per measure: current, new, difference, ci_low, ci_high (per 1,000 decisions)
    ess_current: float
    ess_new: float

    def headline(self) -> str:
        v = self.table.loc["profit"]
        verdict = ("better" if v["ci_low"] > 0 else "worse" if v["ci_high"] < 0 else
                   "not distinguishable from the current rules")
        return (f"The new rules would change profit by {v['difference']:+,.1f} per 1,000 decisions "
                f"(95% interval {v['ci_low']:+,.1f} to {v['ci_high']:+,.1f}): {verdict}.")


def _paired(rounds: LoggedRounds, cur, new, reward: np.ndarray, n_boot: int, seed: int):
    """Paired DR of new - current: one cross-fitted reward model scores every option at the hour
    each policy would send it (the reward model reads the hour)."""
    n, A = cur.dist.shape
    rows = np.arange(n)
    X = _reward_frame(cur.inputs, rows, rounds.action, rounds.hour, A)
    alt = np.repeat(np.arange(A), n)
    X_eval = pd.concat([_reward_frame(cur.inputs, np.tile(rows, A), alt, rp.hours[np.tile(rows, A), alt], A)
                        for rp in (cur, new)], ignore_index=True)
    q_logged, q = CrossFitRewardModel(n_folds=2, random_state=seed, config=rounds.config).fit_predict(
        X, reward, X_eval, 2 * A, groups=rounds.features.index.to_numpy())
    return estimate_paired(reward, rounds.propensity, new.pi_logged, cur.pi_logged, (new.dist * q[:, A:]).sum(axis=1),
                           (cur.dist * q[:, :A]).sum(axis=1), q_logged, n_boot=n_boot, seed=seed)


def _sends_per_channel(dist: np.ndarray, K: int, O: int) -> np.ndarray:
    """(n, K): each round's probability of a message on each channel."""
    return dist[:, 1:].reshape(len(dist), K, O).sum(axis=2)


def what_if(policy: DecisionPolicy, new_config: Config, rounds: LoggedRounds, n_boot: int = 1000,
            seed: int = 0) -> WhatIf:
    """The estimates of the module docstring on ``rounds`` (see :func:`training.offpolicy.logged_rounds`)."""
    new_policy = under_rules(policy, new_config)
    cur, new = replay(policy, rounds, seed), replay(new_policy, rounds, seed)
    rows = {}
    value = _paired(rounds, cur, new, rounds.reward, n_boot, seed)
    rows["profit"] = (value.champion, value.candidate, value.difference, value.ci_low, value.ci_high)
    unsub = _paired(rounds, cur, new, np.asarray(rounds.unsubscribed, dtype=float), n_boot, seed + 1)
    rows["unsubscribes"] = (unsub.champion, unsub.candidate, unsub.difference, unsub.ci_low, unsub.ci_high)
    cfg = policy.config
    K, O = len(cfg.channel_names), len(cfg.offer_names)
    a, b = _sends_per_channel(cur.dist, K, O), _sends_per_channel(new.dist, K, O)
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, rounds.n, (n_boot, rounds.n))
    for k, ch in enumerate(cfg.channel_names):
        d = b[:, k] - a[:, k]
        lo, hi = np.quantile(d[boot].mean(axis=1), [0.025, 0.975])
        rows[f"messages on {ch}"] = (a[:, k].mean(), b[:, k].mean(), d.mean(), lo, hi)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["current", "new", "difference", "ci_low", "ci_high"])
    table = table * 1000.0  # per 1,000 decisions
    ess = [float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300)) for w in (cur.pi_logged / rounds.propensity,
                                                                        new.pi_logged / rounds.propensity)]
    return WhatIf(rounds.n, table, ess[0], ess[1])


def chart(result: WhatIf, out: Path) -> Path:
    """Messages per channel, current against new, and the profit difference with its interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    ch = result.table[result.table.index.str.startswith("messages on ")]
    x = np.arange(len(ch))
    ax.bar(x - 0.2, ch["current"], 0.4, label="current rules")
    ax.bar(x + 0.2, ch["new"], 0.4, label="new rules")
    ax.set_xticks(x, [i.removeprefix("messages on ") for i in ch.index])
    ax.set_ylabel("messages per 1,000 decisions")
    ax.legend()
    for i, name in enumerate(("profit", "unsubscribes")):
        r = result.table.loc[name]
        bx.errorbar([i], [r["difference"]], yerr=[[r["difference"] - r["ci_low"]], [r["ci_high"] - r["difference"]]],
                    fmt="o", capsize=6)
    bx.axhline(0, color="grey", lw=0.8)
    bx.set_xticks([0, 1], ["profit", "unsubscribes"])
    bx.set_xlim(-0.6, 1.6)
    bx.set_title("new - current, per 1,000\n(95% interval)", fontsize=9)
    fig.tight_layout()
    path = out / "whatif.png"
    fig.savefig(path)
    return path


def page(result: WhatIf, new_name: str, version: str, png: Path) -> str:
    """The marketer's page: the headline, the table and the chart (embedded: MLflow shows an HTML
    artifact on its own, without the files beside it)."""
    import base64

    rows = "".join(f"<tr><td>{html.escape(i)}</td>" + "".join(f"<td>{r[c]:,.1f}</td>" for c in
                                                               ("current", "new", "difference", "ci_low", "ci_high"))
                   + "</tr>" for i, r in result.table.iterrows())
    img = base64.b64encode(png.read_bytes()).decode()
    return (f"<html><head><meta charset='utf-8'><title>What if: {html.escape(new_name)}</title></head><body>"
            f"<h1>What if the rules were {html.escape(new_name)}?</h1><p><b>{html.escape(result.headline())}</b></p>"
            f"<p>Policy version {html.escape(version)} replayed on {result.rounds:,} logged decisions under the current "
            f"and the new rules; per 1,000 decisions, with 95% intervals of the difference. Effective sample sizes "
            f"{result.ess_current:,.0f} (current) and {result.ess_new:,.0f} (new): the fewer, the more the estimate "
            f"leans on the reward model.</p>"
            f"<table border='1' cellpadding='4'><tr><th>per 1,000 decisions</th><th>current rules</th><th>new rules</th>"
            f"<th>difference</th><th>95% low</th><th>95% high</th></tr>{rows}</table>"
            f"<p><img alt='whatif.png' src='data:image/png;base64,{img}'></p></body></html>")


def run_what_if(data_dir: str | Path, new_config: Config, new_name: str, version: str | None = None,
                current: Config | None = None, days: int = 7, max_rounds: int = 20000, n_boot: int = 1000,
                seed: int = 0) -> dict:
    """Load the version (default: the champion), estimate, and log an MLflow run; returns a summary."""
    import mlflow

    from nextbest.decision import registry

    registry.setup()
    version = str(version or registry.champion_version() or "")
    if not version:
        raise LookupError("no champion to replay: pass --version VERSION (or promote a first version)")
    policy = registry.load_version(version)
    if current is not None:
        policy = under_rules(policy, current)
    rounds = logged_rounds(data_dir, policy.config, days=days, max_rounds=max_rounds, seed=seed)
    result = what_if(policy, new_config, rounds, n_boot, seed)
    with mlflow.start_run(run_name=f"what if {new_name}") as run:
        mlflow.set_tags({"kind": "what-if", "model_version": version, "whatif_rules": new_name,
                         "mlflow.note.content": f"**What if {new_name}?** {result.headline()}"})
        mlflow.log_params({"whatif.days": days, "whatif.rounds": rounds.n, "whatif.n_boot": n_boot, "whatif.seed": seed})
        for name, r in result.table.iterrows():
            key = name.replace(" ", "_")
            mlflow.log_metrics({f"whatif_{key}_current": r["current"], f"whatif_{key}_new": r["new"],
                                f"whatif_{key}_difference": r["difference"], f"whatif_{key}_ci_low": r["ci_low"],
                                f"whatif_{key}_ci_high": r["ci_high"]})
        mlflow.log_metrics({"whatif_ess_current": result.ess_current, "whatif_ess_new": result.ess_new})
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "whatif.html").write_text(page(result, new_name, version, chart(result, out)))
            result.table.to_csv(out / "whatif.csv", index_label="measure")
            mlflow.log_artifacts(str(out), "whatif")
    return {"result": result, "run_id": run.info.run_id, "version": version}
