"""Dynamic batching: items of concurrent requests are merged into grader batches.

Requests put their items on one queue and await a future per item. One loop takes the oldest waiting
item and keeps collecting until the batch holds ``max_batch_size`` items or the oldest item has waited
``max_wait_ms``; then it grades the batch in a dedicated worker thread (the grader is blocking torch
code; the event loop keeps accepting and validating requests meanwhile) and resolves the futures.

* One batch runs at a time: the grader, not the HTTP layer, is the bottleneck, and bigger batches are
  what make it fast. While a batch runs, the next one fills up on the queue, so under load batches are
  full without waiting at all.
* The wait counts from when the oldest item arrived, not from when the loop got to it: an item that
  queued behind a slow batch has already waited long enough.
* A failure fails every item of the batch (every request with an item in it); nothing is ever scored as
  zero. A grader that returns the wrong number of results is a failure too.
* Items whose request went away (its task was cancelled) are dropped before grading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The service is shutting down; the item was not scored."""


@dataclass
class _Pending:
    item: object
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    def __init__(self, score_batch: Callable[[Sequence[object]], list], max_batch_size: int = 64,
                 max_wait_ms: float = 10.0, on_batch: Callable[[int, float], None] | None = None):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self.score_batch = score_batch
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        # One thread, always the same one: at most one batch in the grader, and torch's per-thread state
        # (inference mode, grad mode) is set up once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rbr-grader")
        self._closed = False
        self._task = asyncio.create_task(self._loop(), name="rbr-grader-batcher")

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        # Whatever is still queued was never scored: tell its requests so (they answer 503).
        while self.queue is not None and not self.queue.empty():
            p = self.queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(BatcherClosed("the grader service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, items: Sequence[object]) -> list:
        """Results for ``items``, in order. Raises whatever the grader raised for their batch."""
        if self.queue is None or self._closed:
            raise BatcherClosed("the grader service is not running")
        loop = asyncio.get_running_loop()
        pending = [_Pending(it, loop.create_future()) for it in items]
        for p in pending:
            self.queue.put_nowait(p)
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        except BaseException:
            # One item failed (or the request was cancelled): the others must not be graded for nobody,
            # and their exceptions must not be reported as "never retrieved".
            for p in pending:
                if not p.future.done():
                    p.future.cancel()
                elif not p.future.cancelled():
                    p.future.exception()
            raise

    async def _collect(self) -> list[_Pending]:
        batch = [await self.queue.get()]
        deadline = batch[0].enqueued + self.max_wait
        while len(batch) < self.max_batch_size:
            if not self.queue.empty():  # take what is already there without yielding
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [p for p in batch if not p.future.done()]  # drop items of requests that went away

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            start = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.score_batch, [p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the grader returned {len(results)} results for a batch of {len(batch)} items")
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(BatcherClosed("the grader service is shutting down"))
                raise
            except Exception as e:  # noqa: BLE001 - every waiting request learns of the failure
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
            else:
                for p, r in zip(batch, results):
                    if not p.future.done():
                        p.future.set_result(r)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), time.monotonic() - start)
                except Exception:  # noqa: BLE001 - a metrics hiccup must not stop the batcher
                    log.exception("on_batch callback failed")
