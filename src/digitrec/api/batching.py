"""Micro-batching: concurrent requests share one forward pass.

Requests put their prepared input on a queue; one task takes everything that is waiting
(up to ``max_size``) and runs it as one batch in a dedicated inference thread, so the
event loop never blocks. It waits for more (at most ``max_wait_ms``) only while other
requests are known to be on their way (being decoded), so a lone request is never
delayed, and under load batches fill up by themselves while the previous one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from digitrec.tasks import cancel

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]


class MicroBatcher:
    def __init__(self, predict: PredictFn, max_size: int = 32, max_wait_ms: float = 2.0) -> None:
        self.predict = predict
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000
        self.incoming = 0  # requests being prepared that will submit soon
        self.batches = 0
        self.items = 0
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        await cancel(self._task)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        # Whatever still waits in the queue is answered no more: refuse new work at once.
        self._queue = self._task = self._executor = None

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request as on its way (decoding), so a forming batch waits for it."""
        self.incoming += 1
        try:
            yield
        finally:
            self.incoming -= 1

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """One prepared input (1, 28, 28) -> its probabilities (10,)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _collect(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if self.incoming <= 0 or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(x, f) for x, f in batch if not f.done()]  # skip cancelled requests
            if not live:
                continue
            stacked = np.stack([x for x, _ in live])
            try:
                probs = await loop.run_in_executor(self._executor, self.predict, stacked)
            except Exception as exc:  # hand the failure to every waiting request
                log.exception("inference failed for a batch of %d", len(live))
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(live)
            for (_, future), row in zip(live, probs, strict=True):
                if not future.done():
                    future.set_result(row)
