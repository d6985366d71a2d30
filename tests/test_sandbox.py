"""The decoding sandbox: same answers as in-process, and a hard CPU, memory and time
budget per image that a hostile file cannot get past."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from benchmarks import hostile

from digitrec.errors import (
    BlankImage,
    ImageTooCostly,
    InvalidImage,
    ServiceBusy,
    UnsupportedMediaType,
)
from digitrec.preprocess import Limits, PreprocessSpec, preprocess_bytes
from digitrec.sandbox import Sandbox, job_header

HEADER = job_header(PreprocessSpec(), Limits())


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(1, cpu_s=1.0, memory_mb=384)
    try:
        yield box
    finally:
        box.close()


def test_answers_match_the_in_process_path(sandbox: Sandbox) -> None:
    for raw in (hostile.canvas_png(), hostile.jpeg_photo(1600, 1200), hostile.tiff_16bit(600)):
        assert sandbox.run(HEADER, raw) == preprocess_bytes(raw).image.tobytes()


def test_errors_come_back_as_the_same_error(sandbox: Sandbox) -> None:
    with pytest.raises(BlankImage):
        sandbox.run(HEADER, hostile.png_huge_rgba(600, 600))
    with pytest.raises(UnsupportedMediaType):
        sandbox.run(HEADER, b"%PDF-1.4 not an image")


def test_cpu_budget_stops_a_slow_decode() -> None:
    """36 progressive scans of 50 megapixels: ~0.6 s of CPU here, within every structural
    cap; a budget of 0.2 s refuses it, and the worker serves the next image."""
    raw = hostile.progressive_jpeg_scans(20000, 2500, 30)
    box = Sandbox(1, cpu_s=0.2, memory_mb=384)
    try:
        box.warm()
        started = time.monotonic()
        with pytest.raises(ImageTooCostly, match="CPU budget") as info:
            box.run(HEADER, raw)
        assert info.value.status == 413
        assert time.monotonic() - started < 0.2 * 4 + 2  # never past the wall deadline
        assert box.run(HEADER, hostile.canvas_png())
    finally:
        box.close()


def test_memory_budget_stops_a_big_decode() -> None:
    box = Sandbox(1, cpu_s=5.0, memory_mb=64)
    try:
        with pytest.raises(ImageTooCostly, match=r"memory|budget"):
            box.run(HEADER, hostile.png_huge_rgba(6000, 3000))  # 72 MB of pixels
        assert box.run(HEADER, hostile.canvas_png())
    finally:
        box.close()


def test_a_stuck_or_dead_worker_is_replaced(sandbox: Sandbox) -> None:
    quick = Sandbox(1, cpu_s=0.2, memory_mb=384)
    try:
        quick.warm()
        process = quick.workers[0].process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)  # a decoder that never returns
        with pytest.raises(ImageTooCostly, match="too long"):
            quick.run(HEADER, hostile.canvas_png())
        assert process.poll() is not None  # killed, not left behind
        assert quick.run(HEADER, hostile.canvas_png())  # a fresh worker
        fresh = quick.workers[0].process
        assert fresh is not None and fresh.pid != process.pid
        os.kill(fresh.pid, signal.SIGKILL)
        fresh.wait()
        assert quick.run(HEADER, hostile.canvas_png())
    finally:
        quick.close()


def test_jobs_beyond_the_capacity_are_refused_at_once() -> None:
    box = Sandbox(1, cpu_s=5.0, memory_mb=384)
    try:
        with contextlib.ExitStack() as places:
            for _ in range(box.capacity):
                places.enter_context(box.admitted())
            with pytest.raises(ServiceBusy, match="too many"):
                box.run(HEADER, hostile.canvas_png())
        assert box.run(HEADER, hostile.canvas_png())  # places given back
    finally:
        box.close()


def test_a_malformed_reply_kills_the_worker_and_refuses_the_file(sandbox: Sandbox) -> None:
    sandbox.warm()
    worker = sandbox.workers[0]
    for reply in (b"\x00\x00" + b"x" * 10, b"\x01\x00not json", b"\x01\x00[1]", b"\x07\x00"):
        with pytest.raises(InvalidImage, match="malformed"):
            worker._result(reply, 784)
        assert worker.process is None
        worker.ensure_started()
    assert sandbox.run(HEADER, hostile.canvas_png())


def test_after_a_costly_refusal_the_next_image_gets_a_fresh_worker() -> None:
    """A refused file leaves nothing behind: the worker that saw it is replaced, and the
    next one, however soon it comes, is served (WebP's decoder once kept its canvas).
    The CPU budget is generous so that the big PNG (1 to 2 s of CPU, depending on the
    machine) is decoded, not refused: this test is about memory, not time."""
    box = Sandbox(1, cpu_s=10.0, memory_mb=384)
    try:
        for _ in range(3):
            with pytest.raises(ImageTooCostly, match="MB"):
                box.run(HEADER, hostile.webp_huge())
            assert box.run(HEADER, hostile.canvas_png())
        big = hostile.png_huge_rgba()  # leaves the worker holding memory: it exits after
        with pytest.raises(BlankImage):
            box.run(HEADER, big)
        assert box.run(HEADER, hostile.canvas_png())
    finally:
        box.close()


def test_a_sandbox_that_cannot_start_is_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys, "executable", "/bin/false")  # the worker dies at once
    box = Sandbox(1, cpu_s=1.0, memory_mb=384)
    try:
        with pytest.raises(ServiceBusy) as info:
            box.run(HEADER, hostile.canvas_png())
        assert info.value.status == 503 and info.value.code == "sandbox_unavailable"
    finally:
        box.close()


def test_jobs_waiting_when_the_sandbox_closes_are_refused_not_left_hanging() -> None:
    box = Sandbox(1, cpu_s=5.0, memory_mb=384)
    slow = hostile.progressive_jpeg_scans(20000, 2500, 30)  # holds the only worker ~0.6 s
    outcomes: list[BaseException | None] = []

    def run(raw: bytes) -> None:
        try:
            box.run(HEADER, raw)
            outcomes.append(None)
        except BaseException as exc:
            outcomes.append(exc)

    box.warm()
    threads = [threading.Thread(target=run, args=(raw,)) for raw in (slow, hostile.canvas_png())]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    box.close()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert any(isinstance(o, ServiceBusy) for o in outcomes), outcomes
    assert all(w.process is None for w in box.workers)  # nothing started after close
