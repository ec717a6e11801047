"""The engine in a process of its own, beside the BentoML worker that answers HTTP.

Deciding is CPU work in Python and so is serving HTTP; in one process they take turns on one
core (the GIL). The worker therefore hands every call to a child process that holds the
:class:`serving.engine.Engine` (policy, snapshot, store connection, decision log, background
learner sync and hot swap) and waits for the answer, so HTTP and decisions run on two cores:
BentoML's classic split of an API server and a model runner. The child is started with
``spawn`` (a fork of a threaded server is unsafe) and dies with its worker: it exits within
:data:`ORPHAN_CHECK_S` once its worker is gone, however the worker ended. Calls are small
pickles: the requests in, plain dicts out.

Self-healing: a child that dies (killed, out of memory) breaks the pool; the call that notices
it starts a new child in the background and every call until that child is up gets
:class:`EngineUnavailable` (503 with Retry-After), never a 500. Store outages inside the child
come back as ``StoreUnavailable`` (logged once per ``background.OUTAGE_LOG_EVERY_S``).
:meth:`EngineProcess.ready` is the readiness probe: the child answers a ping within a short
timeout, and the store is reachable and matches the decision log.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from nextbest.serving.settings import ServeSettings
from nextbest.serving.store import StoreUnavailable, is_outage

log = logging.getLogger(__name__)

_engine = None
RESTART_BACKOFF_S = 2.0  # between attempts to start a new engine process
ORPHAN_CHECK_S = 1.0     # how often the engine process looks whether its worker is still there


def _exit_with_parent(parent: int) -> None:
    """End this process once the worker that started it is gone.

    A worker stopped while its engine was being replaced (the stop signal reached the engine
    first, the worker started a new one) would otherwise leave that new engine running for
    ever, holding the store, the log directory and a core's worth of threads.
    """
    while True:
        time.sleep(ORPHAN_CHECK_S)
        if os.getppid() != parent:
            log.warning("the worker that started this engine process (pid %d) is gone: exiting", parent)
            _stop_children()
            os._exit(0)


def _stop_children() -> None:
    """Stop what this engine process started (a scheduled retrain), before it exits."""
    retrain = getattr(_engine, "retrain", None)
    if retrain is not None:
        retrain.stop()


def _terminate(signum, frame) -> None:
    _stop_children()
    os._exit(0)


class EngineUnavailable(RuntimeError):
    """The engine process died or is being restarted; retry shortly (503)."""


def unavailable_status(exc: BaseException) -> int | None:
    """The HTTP status of a call the service cannot serve now, None for other errors: 507 when
    the decision log's disk is full, 503 (with Retry-After: :data:`RETRY_AFTER_S`) when the
    engine restarts, the store is unreachable or does not match the log, or the log cannot be
    written for another reason."""
    import errno

    from nextbest.serving.decision_log import LogFull

    if isinstance(exc, LogFull):
        return 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 503
    return 503 if isinstance(exc, (EngineUnavailable, StoreUnavailable)) else None


RETRY_AFTER_S = 5


def _guarded(fn):
    """Run ``fn`` in the child; a store outage comes back as a plain ``StoreUnavailable`` (logged
    once per interval there), anything else as itself."""
    def run(*args):
        from nextbest.serving.background import OUTAGES

        try:
            out = fn(*args)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):  # a mismatch or a lost file: already worded
                OUTAGES.warning("store", "refusing: %s", exc)
                raise type(exc)(str(exc)) from None
            if is_outage(exc):
                OUTAGES.warning("store", "store unavailable (%s: %s); answering 503 until it is back",
                                type(exc).__name__, exc)
                raise StoreUnavailable(f"the store is unavailable ({type(exc).__name__}: {exc}); retry") from None
            raise
        if OUTAGES.clear("store"):
            log.warning("the store is available again")
        return out
    run.__name__ = fn.__name__
    return run


def _start(settings: ServeSettings) -> None:
    global _engine
    from nextbest.serving.engine import Engine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker, which stops us
    signal.signal(signal.SIGTERM, _terminate)      # the worker stops us: a scheduled retrain stops too
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="exit-with-worker").start()
    if not logging.getLogger().handlers:  # a spawned child starts without the server's logging: say what we do
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [engine %(process)d]: %(message)s")
        for noisy in ("httpx", "mlflow", "alembic", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    _engine = Engine(settings)
    _engine.start_background()


def _call(method: str, *args):
    return _guarded(getattr(_engine, method))(*args)


def _decide(payload: list[dict], prefix: str):
    from nextbest.serving.schemas import DecideRequest

    return _guarded(_engine.decide)([DecideRequest.model_validate(p) for p in payload], prefix)


def _check(payload: list[dict], prefix: str):
    from nextbest.serving.schemas import DecideRequest

    return _guarded(_engine.check)([DecideRequest.model_validate(p) for p in payload], prefix)


def _decide_each(payload: list[dict]):
    from nextbest.serving.schemas import DecideRequest

    return _guarded(_engine.decide_each)([DecideRequest.model_validate(p) for p in payload])


def _events(payload: list[dict], prefix: str):
    from nextbest.serving.schemas import EventRequest

    # the worker validated these fields a moment ago (``_plain``): constructing the models again
    # without a second validation saves about a twentieth of the cost of an ingested event
    return _guarded(_engine.events)([EventRequest.model_construct(**p) for p in payload], prefix)


def _health() -> str | None:
    try:
        return _guarded(_engine.health)()
    except StoreUnavailable as exc:
        return str(exc)


def _plain(requests) -> list[dict]:
    """BentoML hands over its own subclass of the request model, which does not pickle: send the
    fields (already validated; the engine rebuilds the models)."""
    return [r.model_dump(exclude_unset=True) for r in requests]


def _version() -> str:
    return _engine.policy.version


class EngineProcess:
    """The engine's methods, run in one child process (calls are served in order); a dead child
    is replaced (see the module docstring)."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._pool: ProcessPoolExecutor | None = self._new_pool()
        self.version = self._pool.submit(_version).result()  # raises here if the engine cannot start

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_start,
                                   initargs=(self.settings,))

    def _run(self, fn, *args, timeout: float | None = None):
        pool = self._pool
        if pool is None:
            raise EngineUnavailable("the decision engine is restarting; retry shortly")
        try:
            return pool.submit(fn, *args).result(timeout)
        except BrokenProcessPool:
            self._restart(pool)
            raise EngineUnavailable("the decision engine process died and is being restarted; retry shortly") \
                from None

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        """Replace a broken pool once (whichever call notices first), in the background."""
        with self._lock:
            if self._pool is not broken or self._stopped.is_set():
                return
            self._pool = None
        log.error("the engine process died; starting a new one")
        broken.shutdown(wait=False, cancel_futures=True)
        threading.Thread(target=self._start_new, daemon=True, name="engine-restart").start()

    def _start_new(self) -> None:
        while not self._stopped.is_set():
            t, pool = time.monotonic(), self._new_pool()
            try:
                version = pool.submit(_version).result()
            except Exception as exc:  # noqa: BLE001 - keep trying; the service answers 503 meanwhile
                pool.shutdown(wait=False, cancel_futures=True)
                log.error("a new engine process could not start (%s: %s); retrying in %g s", type(exc).__name__,
                          exc, RESTART_BACKOFF_S)
                self._stopped.wait(RESTART_BACKOFF_S)
                continue
            with self._lock:
                self._pool, self.version = pool, version
            log.warning("engine process restarted in %.1f s (serving %s)", time.monotonic() - t, version)
            return

    def ready(self, timeout: float = 2.0) -> bool:
        """Readiness: the engine process answers within ``timeout`` and its store is reachable
        and matches the decision log."""
        try:
            problem = self._run(_health, timeout=timeout)
        except (EngineUnavailable, TimeoutError) as exc:
            problem = str(exc) or "the engine did not answer in time"
        if problem is not None:
            from nextbest.serving.background import OUTAGES

            OUTAGES.warning("ready", "not ready: %s", problem)
        return problem is None

    def decide(self, requests, prefix: str = ""):
        return self._run(_decide, _plain(requests), prefix)

    def check(self, requests, prefix: str = ""):
        return self._run(_check, _plain(requests), prefix)

    def decide_each(self, requests):
        return self._run(_decide_each, _plain(requests))

    def feedback(self, request):
        from nextbest.serving.schemas import FeedbackRequest

        return self._run(_call, "feedback", FeedbackRequest.model_validate(request.model_dump()))

    def events(self, events, prefix: str = ""):
        return self._run(_events, _plain(events), prefix)

    def render(self, request):
        from nextbest.serving.schemas import RenderRequest

        return self._run(_call, "render", RenderRequest.model_validate(request.model_dump()))

    def due(self, until, limit: int):
        return self._run(_call, "due", until, limit)

    def stop(self) -> None:
        self._stopped.set()
        pool = self._pool
        if pool is None:
            return
        for p in list(getattr(pool, "_processes", {}).values()):
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        pool.shutdown(wait=False, cancel_futures=True)
