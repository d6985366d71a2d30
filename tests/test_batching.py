"""Micro-batching: concurrent requests share one forward pass, a lone request is never
delayed, a batch waits only for requests on their way, and one failure or cancellation
never stalls the others."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import numpy as np
import pytest

from digitrec.api.batching import MicroBatcher


class FakeModel:
    """Answers item ``i`` (an input filled with ``i``) with a row filled with ``i`` and
    records the items of every forward pass. ``gate``, once set up, holds a pass."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on  # a pass holding this item raises
        self.started = threading.Event()
        self.gate: threading.Event | None = None

    def __call__(self, stacked: np.ndarray) -> np.ndarray:
        ids = [int(x[0, 0, 0]) for x in stacked]
        self.calls.append(ids)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail_on in ids:
            raise ValueError("boom")
        return np.repeat(np.asarray(ids, dtype=np.float32)[:, None], 10, axis=1)


def item(i: int) -> np.ndarray:
    return np.full((1, 28, 28), i, dtype=np.float32)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 5) -> Any:
    """Run one scenario on a fresh event loop; a hang fails the test instead of stalling."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def running(batcher: MicroBatcher) -> AsyncIterator[MicroBatcher]:
    await batcher.start()
    try:
        yield batcher
    finally:
        await batcher.stop()


async def submit_all(batcher: MicroBatcher, ids: range | list[int]) -> list[np.ndarray]:
    return await asyncio.gather(*(batcher.submit(item(i)) for i in ids))


def test_concurrent_requests_share_one_forward_pass() -> None:
    model = FakeModel()

    async def scenario() -> list[np.ndarray]:
        async with running(MicroBatcher(model, max_size=32)) as batcher:
            return await submit_all(batcher, range(8))

    results = run(scenario())
    assert model.calls == [list(range(8))]
    assert [int(row[0]) for row in results] == list(range(8))  # each gets its own row
    assert all(row.shape == (10,) for row in results)


def test_counters_count_batches_and_items() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, max_size=32)

    async def scenario() -> None:
        async with running(batcher):
            await submit_all(batcher, range(5))
            await batcher.submit(item(5))

    run(scenario())
    assert (batcher.batches, batcher.items) == (2, 6)


def test_batches_never_exceed_max_size() -> None:
    model = FakeModel()

    async def scenario() -> list[np.ndarray]:
        async with running(MicroBatcher(model, max_size=3)) as batcher:
            return await submit_all(batcher, range(8))

    results = run(scenario())
    assert model.calls == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [int(row[0]) for row in results] == list(range(8))


def test_a_lone_request_is_not_delayed_by_max_wait() -> None:
    model = FakeModel()

    async def scenario() -> float:
        async with running(MicroBatcher(model, max_wait_ms=10_000)) as batcher:
            started = time.perf_counter()
            await batcher.submit(item(1))
            return time.perf_counter() - started

    assert run(scenario()) < 1  # nothing else is arriving: no 10 s wait
    assert model.calls == [[1]]


def test_a_batch_waits_for_a_request_on_its_way() -> None:
    model = FakeModel()

    async def scenario() -> None:
        async with running(MicroBatcher(model, max_wait_ms=5_000)) as batcher:

            async def decoding_first() -> np.ndarray:
                with batcher.arriving():
                    await asyncio.sleep(0.05)
                return await batcher.submit(item(2))

            await asyncio.gather(decoding_first(), batcher.submit(item(1)))

    run(scenario())
    assert model.calls == [[1, 2]]


def test_a_batch_waits_no_longer_than_max_wait() -> None:
    model = FakeModel()

    async def scenario() -> float:
        async with running(MicroBatcher(model, max_wait_ms=50)) as batcher:

            async def slow_decoding() -> None:
                with batcher.arriving():
                    await asyncio.sleep(0.4)
                await batcher.submit(item(2))

            slow = asyncio.create_task(slow_decoding())
            await asyncio.sleep(0)  # the slow request is now on its way
            started = time.perf_counter()
            await batcher.submit(item(1))
            waited = time.perf_counter() - started
            assert not slow.done()
            await slow
            return waited

    waited = run(scenario())
    assert 0.03 <= waited < 0.35  # waited for company, then gave up after ~50 ms
    assert model.calls == [[1], [2]]


def test_a_failing_pass_fails_its_whole_batch_and_the_next_is_served() -> None:
    model = FakeModel(fail_on=1)

    async def scenario() -> tuple[list[Any], np.ndarray]:
        async with running(MicroBatcher(model)) as batcher:
            failed = await asyncio.gather(
                *(batcher.submit(item(i)) for i in range(3)), return_exceptions=True
            )
            return failed, await batcher.submit(item(7))

    failed, after = run(scenario())
    assert model.calls == [[0, 1, 2], [7]]
    assert all(isinstance(r, ValueError) and str(r) == "boom" for r in failed)
    assert int(after[0]) == 7


def test_cancelled_requests_are_skipped() -> None:
    model = FakeModel()
    model.gate = threading.Event()

    async def scenario() -> np.ndarray:
        async with running(MicroBatcher(model)) as batcher:
            first = asyncio.create_task(batcher.submit(item(0)))
            while not model.started.is_set():  # the first pass is now running (held)
                await asyncio.sleep(0.001)
            gone = asyncio.create_task(batcher.submit(item(1)))
            kept = asyncio.create_task(batcher.submit(item(2)))
            await asyncio.sleep(0)  # both are queued behind the running pass
            gone.cancel()
            await asyncio.sleep(0)
            assert gone.cancelled()
            model.gate.set()
            await first
            return await kept

    kept = run(scenario())
    assert model.calls == [[0], [2]]
    assert int(kept[0]) == 2


def test_submit_before_start_is_refused() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        run(MicroBatcher(FakeModel()).submit(item(0)))


def test_stop_then_start_serves_again_and_leaves_no_thread() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model)
    before = set(threading.enumerate())

    def inference_threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and t.name.startswith("inference")
        ]

    async def scenario() -> list[np.ndarray]:
        answers = []
        for i in range(2):  # a second lifespan on the same batcher
            async with running(batcher):
                answers.append(await batcher.submit(item(i)))
            assert inference_threads() == []
        return answers

    answers = run(scenario())
    assert [int(a[0]) for a in answers] == [0, 1]
    assert model.calls == [[0], [1]]


def test_submit_after_stop_is_refused_not_left_waiting() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(lambda x: np.zeros((len(x), 10), np.float32))
        await batcher.start()
        await batcher.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await asyncio.wait_for(batcher.submit(np.zeros((1, 28, 28), np.float32)), 5)

    asyncio.run(scenario())
