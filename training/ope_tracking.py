"""``nextbest evaluate``: a registered version against the champion on logged data, in MLflow.

The result is an MLflow run (metrics per policy and estimator, the table as an artifact) and
tags on the candidate's model version (``ope_*``) that ``nextbest promote`` reads: a candidate
is promoted only if its lower 95% bound (DR) is at least the champion's DR estimate on the same
rounds, unless forced.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd

from nextbest.features.config import Config
from nextbest.decision import registry
from nextbest.training.offpolicy import evaluate_policies, logged_rounds, promotion_gate

log = logging.getLogger(__name__)

GATE_ESTIMATOR = "dr"


def load_version(version: str):
    return registry.load_version(version)  # from the open-format artifact, never unpickled


def evaluate_version(data_dir: str | Path, config: Config, version: str, against: str | None = None,
                     days: int = 7, max_rounds: int = 20000, n_boot: int = 1000, seed: int = 0) -> dict:
    """Estimate ``version`` and ``against`` (default: the champion) on the data's logged decisions."""
    import mlflow
    from mlflow import MlflowClient

    registry.setup()
    version = str(version)
    against = str(against or registry.champion_version() or "")
    if not against:
        raise LookupError("no champion to compare with: pass --against VERSION (or promote a first version)")
    if against == version:
        raise ValueError(f"version {version} is the one it would be compared with")
    rounds = logged_rounds(data_dir, config, days=days, max_rounds=max_rounds, seed=seed)
    names = {f"v{version}": load_version(version), f"v{against}": load_version(against)}
    table = evaluate_policies(rounds, names, n_boot=n_boot, seed=seed, progress=True)
    ok, message = promotion_gate(table, f"v{version}", f"v{against}", GATE_ESTIMATOR)
    with mlflow.start_run(run_name=f"ope version {version} vs {against}") as run:
        mlflow.set_tags({"kind": "off-policy evaluation", "candidate_version": version, "champion_version": against,
                         "gate": "passed" if ok else "failed"})
        mlflow.log_params({"ope.days": days, "ope.rounds": rounds.n, "ope.n_boot": n_boot, "ope.seed": seed})
        for r in table.itertuples():
            who = "candidate" if r.policy == f"v{version}" else "champion"
            mlflow.log_metrics({f"ope_{who}_{r.estimator}_value": r.value, f"ope_{who}_{r.estimator}_ci_low": r.ci_low,
                                f"ope_{who}_{r.estimator}_ci_high": r.ci_high})
            if r.estimator == GATE_ESTIMATOR:
                mlflow.log_metrics({f"ope_{who}_effective_sample_size": r.ess,
                                    f"ope_{who}_unsupported_share": r.unsupported_logged})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ope.csv"
            table.to_csv(path, index=False)
            mlflow.log_artifact(str(path), "ope")
    t = table.set_index(["policy", "estimator"])
    cand, champ = t.loc[(f"v{version}", GATE_ESTIMATOR)], t.loc[(f"v{against}", GATE_ESTIMATOR)]
    client = MlflowClient()
    for key, value in {"ope_champion_version": against, "ope_dr_value": cand["value"], "ope_dr_low": cand["ci_low"],
                       "ope_dr_high": cand["ci_high"], "ope_champion_dr_value": champ["value"],
                       "ope_passed": str(ok).lower(), "ope_run_id": run.info.run_id}.items():
        client.set_model_version_tag(registry.MODEL_NAME, version, key, str(value))
    log.info(message)
    return {"table": table, "passed": ok, "message": message, "run_id": run.info.run_id, "rounds": rounds.n}


def promotion_check(version: str) -> tuple[bool, str]:
    """Whether ``version`` may become the champion (see the module docstring)."""
    from mlflow import MlflowClient

    registry.setup()
    champion = registry.champion_version()
    if champion is None:
        return True, "no champion yet"
    tags = MlflowClient().get_model_version(registry.MODEL_NAME, str(version)).tags
    if tags.get("ope_champion_version") != champion:
        return False, (f"version {version} has no off-policy evaluation against the current champion "
                       f"(version {champion}): run `nextbest evaluate DATA --version {version}` first, "
                       "or promote with --force")
    low, champ = float(tags["ope_dr_low"]), float(tags["ope_champion_dr_value"])
    if low < champ:
        return False, (f"version {version}'s lower 95% bound {low:.4f} is below champion {champion}'s estimate "
                       f"{champ:.4f} (off-policy evaluation run {tags.get('ope_run_id')}); promote with --force to "
                       "override")
    return True, f"lower 95% bound {low:.4f} >= champion {champion}'s estimate {champ:.4f}"


def summary_table(table: pd.DataFrame) -> str:
    cols = ["policy", "estimator", "value", "ci_low", "ci_high", "ess", "unsupported_logged"]
    return table[cols].round(4).to_string(index=False)
