"""Waiting for a condition with a deadline (the serving tests' one polling loop)."""

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
