"""The engine in a process of its own, beside the BentoML worker that answers HTTP.

Deciding is CPU work in Python and so is serving HTTP; in one process they take turns on one
core (the GIL). The worker therefore hands every call to a child process that holds the
:class:`serving.engine.Engine` (policy, snapshot, store connection, decision log, background
learner sync and hot swap) and waits for the answer, so HTTP and decisions run on two cores:
BentoML's classic split of an API server and a model runner. The child is started with
``spawn`` (a fork of a threaded server is unsafe) and dies with its worker; killing the server's
process group kills it too. Calls are small pickles: the requests in, plain dicts out.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor

from nextbest.serving.settings import ServeSettings

_engine = None


def _start(settings: ServeSettings) -> None:
    global _engine
    from nextbest.serving.engine import Engine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker, which stops us
    _engine = Engine(settings)
    _engine.start_background()


def _call(method: str, *args):
    return getattr(_engine, method)(*args)


def _decide(payload: list[dict], prefix: str):
    from nextbest.serving.schemas import DecideRequest

    return _engine.decide([DecideRequest.model_validate(p) for p in payload], prefix)


def _decide_each(payload: list[dict]):
    from nextbest.serving.schemas import DecideRequest

    return _engine.decide_each([DecideRequest.model_validate(p) for p in payload])


def _plain(requests) -> list[dict]:
    """BentoML hands over its own subclass of the request model, which does not pickle: send the
    fields (already validated; the engine rebuilds the models)."""
    return [r.model_dump(exclude_unset=True) for r in requests]


def _version() -> str:
    return _engine.policy.version


class EngineProcess:
    """The engine's methods, run in one child process (calls are served in order)."""

    def __init__(self, settings: ServeSettings):
        self._pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_start,
                                         initargs=(settings,))
        self.version = self._pool.submit(_version).result()  # raises here if the engine cannot start

    def decide(self, requests, prefix: str = ""):
        return self._pool.submit(_decide, _plain(requests), prefix).result()

    def decide_each(self, requests):
        return self._pool.submit(_decide_each, _plain(requests)).result()

    def feedback(self, request):
        from nextbest.serving.schemas import FeedbackRequest

        return self._pool.submit(_call, "feedback", FeedbackRequest.model_validate(request.model_dump())).result()

    def stop(self) -> None:
        for p in list(getattr(self._pool, "_processes", {}).values()):
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
