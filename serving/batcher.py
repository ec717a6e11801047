"""Micro-batching of single ``/v1/decide`` requests.

Scoring is a handful of model calls per *batch*, whatever its size, so deciding 30 customers
together costs little more than one. Requests that arrive while a batch is being decided (or
within ``wait_ms`` of the first) are decided together in one engine call on a worker thread; each
caller gets its own answer or its own error. Under light load a request waits at most
``wait_ms``; under heavy load batches grow up to ``max_size`` and throughput follows.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


class MicroBatcher:
    def __init__(self, fn, wait_ms: float = 2.0, max_size: int = 256):
        """``fn(items) -> list`` of results, one per item; an exception in the list goes to its own
        caller, an exception raised by ``fn`` to every caller of the batch."""
        self.fn = fn
        self.wait_s = wait_ms / 1000.0
        self.max_size = max_size
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="decide")

    async def submit(self, item):
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_size:
                timeout = deadline - loop.time()
                if timeout <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(self._queue.get_nowait() if timeout <= 0 else
                                 await asyncio.wait_for(self._queue.get(), timeout))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            items = [b[0] for b in batch]
            try:
                results = await loop.run_in_executor(self._pool, self.fn, items)
            except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_exception(res) if isinstance(res, Exception) else fut.set_result(res)

    def close(self):
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False)
