"""The setup the notebooks in ``notebooks/`` share: which project, which data, quiet output.

Paths default to the repository this package is installed from (``make setup`` installs it
editable), so a notebook gives the same answer whether Jupyter runs it from ``notebooks/`` or
papermill from anywhere else.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[1]
DEMO_DATA = Path("demo") / "data"  # under the project directory, where `make demo` writes it


def quiet() -> None:
    """Warnings and progress output that say nothing to a notebook reader are silenced."""
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm prints text bars here
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logging.basicConfig(level=logging.WARNING)
    import mlflow  # noqa: F401  (configures its loggers on import; set the level after)

    logging.getLogger("mlflow").setLevel(logging.ERROR)


def use_project(home: str | Path | None = None) -> Path:
    """Point the registry and MLflow at ``home`` (default: the repository); returns it.

    A ``MLFLOW_TRACKING_URI`` the user set (a server) still wins, as everywhere in nextbest.
    """
    path = Path(home).resolve() if home else REPOSITORY
    path.mkdir(parents=True, exist_ok=True)
    os.environ["NEXTBEST_HOME"] = str(path)
    from nextbest.decision import registry

    registry.setup()
    return path


def data_dir(path: str | Path | None, home: Path, simulate: bool, customers: int, days: int, seed: int,
             config=None) -> Path:
    """The data directory to read: ``path``, or the demo's under ``home``.

    The demo's is simulated when missing (``customers`` x ``days``, as ``make demo`` does); any
    other empty directory only with ``simulate=True``, so that a mistyped path to real data stops
    here instead of training on simulated customers.
    """
    from nextbest.features.io import has_table
    from nextbest.sim.simulate import simulate_if_missing

    target = Path(path).resolve() if path else home / DEMO_DATA
    if simulate or target == home / DEMO_DATA:
        if simulate_if_missing(target, customers, days, seed, config):
            log.warning("simulated %d customers over %d days into %s", customers, days, target)
    elif not has_table(target, "customers"):
        raise FileNotFoundError(f"{target}: no customers table here; check the path, or pass simulate=True "
                                "to simulate a dataset into it")
    return target
