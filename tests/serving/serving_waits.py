"""Waiting for a condition with a deadline (the serving tests' one polling loop), and background
client threads that run until a ``with`` block ends."""

import threading
import time


def poll(condition, timeout: float = 30.0, every: float = 0.05):
    """The first truthy value of ``condition()`` within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    return None


class ClientThreads:
    """``threads`` threads running ``self._run(k)`` from ``with`` until its end; ``_run`` loops
    until ``self._stop`` is set."""

    def __init__(self, threads: int):
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def _run(self, k: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
