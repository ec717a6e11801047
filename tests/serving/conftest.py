"""A trained champion in a scratch project, real servers (BentoML over HTTP, Redis) started per test.

The champion is trained once per test process on 1,200 simulated customers x 35 days with a
config whose learner takes feedback at once (``learn_after_hours: 0``) and whose service checks
the registry every second, so the tests see learning and hot swaps within seconds. Every project
has an API keys file (``serving.auth.keys_file``, :data:`KEYS`); ``Server.post`` sends the key
with every scope.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from nextbest.cli_serve import stop_tree, wait_ready

NEXTBEST = str(Path(sys.executable).parent / "nextbest")
KEYS = {  # name -> (key, scopes); the keys file maps each key to its scopes
    "all": ("test-key-all-scopes-3f9c2a7d41", ["decide", "feedback", "events", "admin"]),
    "decide": ("test-key-decide-only-8b1e6f0c93", ["decide"]),
    "feedback": ("test-key-feedback-only-5d2a9e71c4", ["feedback"]),
    "admin": ("test-key-admin-only-1c7f3b8e20", ["admin"]),
}
KEYS_FILE = "api-keys.yaml"
TEST_CONFIG = {
    "online": {"learn_after_hours": 0},
    "serving": {"reload_seconds": 1, "learner_sync_seconds": 0.5, "auth": {"keys_file": KEYS_FILE}},
}


def auth(name: str = "all") -> dict:
    """The Authorization header of one of :data:`KEYS`."""
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Project:
    """A scratch project directory with its MLflow store, data and config."""

    def __init__(self, home: Path):
        self.home = home
        self.data = home / "data"
        self.config = home / "nextbest.yaml"
        self.env = {**os.environ, "NEXTBEST_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
        for var in ("NEXTBEST_STORE_URL", "NEXTBEST_LOG_DIR", "NEXTBEST_DATA_DIR", "NEXTBEST_WORKERS", "MLFLOW_RUN_ID",
                    "NEXTBEST_API_KEYS", "NEXTBEST_API_KEYS_FILE"):
            self.env.pop(var, None)
        (home / KEYS_FILE).write_text(yaml.safe_dump({key: scopes for key, scopes in KEYS.values()}))

    def run(self, *args) -> subprocess.CompletedProcess:
        out = subprocess.run([NEXTBEST, "-q", "--config", str(self.config), *args], env=self.env, cwd=self.home,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"nextbest {' '.join(args)} failed:\n{out.stderr[-3000:]}"
        return out


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Project:
    p = Project(tmp_path_factory.mktemp("serving_project"))
    p.config.write_text(yaml.safe_dump(TEST_CONFIG))
    p.run("data", "generate", "--customers", "1200", "--days", "35", "--seed", "5", "--out", str(p.data))
    p.run("train", str(p.data), "--promote")
    return p


class Server:
    """``nextbest serve`` in its own process group, on a free port."""

    def __init__(self, project: Project, workdir: Path, store_url: str | None = None, workers: int = 1,
                 data_dir: Path | None = None):
        self.project, self.workdir = project, workdir
        self.data_dir = data_dir or project.data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store_url = store_url or f"sqlite:///{workdir / 'state.db'}"
        self.log_dir = workdir / "log"
        self.workers = workers
        self.proc = None
        self.headers = auth("all")

    def start(self, timeout: float = 120.0) -> "Server":
        env = {**self.project.env, "NEXTBEST_STORE_URL": self.store_url}
        self._out = open(self.workdir / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [NEXTBEST, "--config", str(self.project.config), "serve", str(self.data_dir), "--port", str(self.port),
             "--log-dir", str(self.log_dir), "--workers", str(self.workers)],
            env=env, cwd=self.project.home, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(self.url, self.proc, self.workers, timeout)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}:\n{self.log_tail()}") from None
        return self

    def log_tail(self, n: int = 4000) -> str:
        return (self.workdir / f"server-{self.port}.log").read_text(errors="replace")[-n:]

    def kill(self, sig=signal.SIGKILL) -> None:
        """Signal every process of the server (the CLI, BentoML's arbiter, the workers in their
        own sessions, and each worker's engine process)."""
        if self.proc is not None:
            stop_tree(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None
        # workers can outlive their parent by a moment; wait until the port is free
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def post(self, path: str, body, timeout: float = 60.0, key: str = "all") -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=timeout, headers=auth(key))

    def delete(self, path: str, key: str = "all") -> httpx.Response:
        return httpx.delete(f"{self.url}{path}", timeout=60, headers=auth(key))

    def get(self, path: str, key: str | None = "all") -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60, headers=auth(key) if key else None)


@pytest.fixture
def server_factory(project, tmp_path):
    started = []

    def make(store_url=None, workers=1, workdir=None, data_dir=None) -> Server:
        s = Server(project, workdir or tmp_path, store_url, workers, data_dir).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """One SQLite-backed server shared by a test module."""
    s = Server(project, tmp_path_factory.mktemp("server")).start()
    yield s
    s.kill()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real Redis server (installed by `make system-deps`), without persistence, on a free port."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run `make system-deps` (make test does)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_db(redis_url):
    """An empty Redis database for one test."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


@pytest.fixture(scope="session")
def customers(project):
    """``customers(n, offset=0)``: ids of the project's customers."""
    import pandas as pd

    ids = pd.read_parquet(project.data / "customers.parquet")["customer_id"].astype(str)
    return lambda n, offset=0: ids.iloc[offset:offset + n].tolist()


@pytest.fixture(scope="module")
def cfg():
    from nextbest.features.config import load_config

    return load_config()


@pytest.fixture(scope="module")
def people(project):
    """The project's customer table, indexed by customer id."""
    import pandas as pd

    return pd.read_parquet(project.data / "customers.parquet").set_index("customer_id")
