"""Request batching for `captioner serve`, in TensorFlow Serving's shape.

Requests put their photos in a queue per decoding setting. One loop, on the event loop, takes
batches from the queue whose first photo has waited longest: as soon as it holds `max_batch`
photos, or once that first photo has waited `wait_seconds`. Each batch is one model call, run
on the batcher's single model thread, so TensorFlow never blocks the event loop and the model
is only ever called from that one thread. Photos that arrive while the model is busy wait for
the next batch; a batch never mixes decoding settings. With max_batch 1 each photo is its own
model call, one after the other: batching off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future
    arrived: float  # the event loop's clock


class Batcher:
    """Gathers items submitted together into batches for `run_batch(key, items) -> results`
    (one result per item, in order), called on one worker thread.

    start() and stop() run on the event loop that will call submit() (an ASGI lifespan).
    """

    def __init__(
        self, run_batch: Callable[[Hashable, list], list], max_batch: int, wait_seconds: float
    ):
        self.run_batch = run_batch
        self.max_batch, self.wait_seconds = max_batch, wait_seconds
        self.batches = self.items = 0  # how many model calls, and the items they held
        self._queues: dict[Hashable, deque[_Waiting]] = {}
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="captioner-model")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Cancels the loop and what still waits; a batch already on the model thread ends."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for queue in self._queues.values():
            for waiting in queue:
                waiting.future.cancel()
        self._queues.clear()
        self._thread.shutdown(wait=False)

    async def submit(self, key: Hashable, items: list) -> list:
        """The results for `items`, batched with other requests' items of the same `key`."""
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(key, deque())
        futures = [loop.create_future() for _ in items]
        queue.extend(_Waiting(item, f, loop.time()) for item, f in zip(items, futures))
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key, batch = await self._next_batch(loop)
            items = [waiting.item for waiting in batch]
            self.batches, self.items = self.batches + 1, self.items + len(items)
            try:
                results = await loop.run_in_executor(self._thread, self.run_batch, key, items)
            except Exception as error:  # a bug, not bad input: every request of the batch fails
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(error)
                continue
            for waiting, result in zip(batch, results):
                if not waiting.future.done():  # its request may have gone (client away)
                    waiting.future.set_result(result)

    async def _next_batch(self, loop) -> tuple[Hashable, list[_Waiting]]:
        """Waits until the queue whose first item came first is full or has waited enough."""
        while True:
            self._drop_abandoned()
            if not self._queues:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key = min(self._queues, key=lambda k: self._queues[k][0].arrived)
            queue = self._queues[key]
            left = queue[0].arrived + self.wait_seconds - loop.time()
            if len(queue) >= self.max_batch or left <= 0:
                batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
                if not queue:
                    del self._queues[key]
                return key, batch
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), left)

    def _drop_abandoned(self) -> None:
        """Forgets items whose request was cancelled (its client went away)."""
        for key in list(self._queues):
            queue = deque(w for w in self._queues[key] if not w.future.done())
            if queue:
                self._queues[key] = queue
            else:
                del self._queues[key]
