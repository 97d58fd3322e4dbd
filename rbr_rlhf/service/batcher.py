"""Dynamic batching: items of concurrent requests are merged into grader batches.

Requests enqueue their items and await a future each. One loop takes the first waiting item, then
keeps collecting until ``max_batch_size`` items or ``max_wait_ms`` have passed, and grades the batch in a
worker thread (the grader is blocking torch code; the event loop keeps accepting requests meanwhile).
One batch runs at a time: the grader, not the HTTP layer, is the bottleneck, and bigger batches are
what make it fast. A grader failure fails every item of that batch; nothing is ever scored as zero.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass
class _Pending:
    item: object
    future: asyncio.Future


class DynamicBatcher:
    def __init__(self, score_batch: Callable[[Sequence[object]], list], max_batch_size: int = 64,
                 max_wait_ms: float = 10.0, on_batch: Callable[[int, float], None] | None = None):
        self.score_batch = score_batch
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, items: Sequence[object]) -> list:
        loop = asyncio.get_running_loop()
        pending = [_Pending(it, loop.create_future()) for it in items]
        for p in pending:
            self.queue.put_nowait(p)
        return await asyncio.gather(*(p.future for p in pending))

    async def _loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            start = time.monotonic()
            try:
                results = await asyncio.to_thread(self.score_batch, [p.item for p in batch])
                for p, r in zip(batch, results):
                    if not p.future.done():
                        p.future.set_result(r)
            except Exception as e:  # noqa: BLE001 - every waiting request learns of the failure
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
            if self.on_batch:
                self.on_batch(len(batch), time.monotonic() - start)
