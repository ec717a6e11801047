import pytest


@pytest.fixture()
def clean_mlflow_env(monkeypatch):
    """The kernel inherits the environment: no outside MLflow server or run may leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("NEXTBEST_HOME", raising=False)
