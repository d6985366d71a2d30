"""Where an upload is decoded, so that no image can hold up the others.

Nothing of it runs on the event loop. A decoding thread first checks what needs no
decoder (``preprocess.check_structure``: the bounded ``imagecheck`` walk that refuses
crafted files, and declared sizes over the limits), so a hostile file is refused right
there. A small PNG, JPEG, GIF or BMP (at most ``LIGHT_MAX_PIXELS``, the canvas and
screenshots people send) is then decoded and prepared in that thread: its cost is
bounded by its size. Anything else (big photos, WebP, TIFF, unknown structures) goes to
the sandbox (``digitrec.sandbox``), separate processes with a CPU-time and memory budget
per image, so a hostile file costs at most that budget and never a thread that small
requests are waiting for.

A whole number (``read_number``) takes the same two paths: a light file is read in the
thread; anything else is decoded in the sandbox, reduced to ``NUMBER_SIDE`` pixels on its
longer side, and read in the thread from that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from digitrec.config import Settings
from digitrec.predict import Predictor
from digitrec.preprocess import Preprocessed, check_structure, from_image
from digitrec.sandbox import Sandbox, job_header, number_image, number_job_header

if TYPE_CHECKING:  # reading numbers imports scipy: only when a number is read
    from digitrec.numbers.reader import NumberReading

    # How a decoded image is read: given ``read(cut)``, the reading (multiscript).
    ReadAs = Callable[[Callable[[bool], NumberReading]], NumberReading]

log = logging.getLogger(__name__)
# Decoded in-process up to this many declared pixels: a 1024x1024 RGBA PNG of noise took
# 25 ms here, a progressive JPEG of that size with 56 scans 21 ms (RLE BMPs, decoded in
# Python, never stay in-process: see ``imagecheck.Structure.python_codec``).
LIGHT_MAX_PIXELS = 1024 * 1024
NUMBER_SIDE = 1024  # a number in a bigger image is read at most this size on its longer side


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def preprocess_threads(settings: Settings) -> int:
    """Decoding threads per worker process: the configured number, or the usable cores
    shared among the workers. Dozens of threads fighting over two cores for the GIL cost
    more in switches than they gain (measured: +25-35 % req/s with a pool this small),
    and with one worker per core a single thread each is fastest (+4 %)."""
    if settings.preprocess_threads:
        return settings.preprocess_threads
    return max(1, _usable_cores() // settings.workers)


def sandbox_processes(settings: Settings) -> int:
    """Sandbox processes per worker: as configured, else one per core this worker has
    (at most two: each may use ``max_decode_memory_mb``)."""
    if settings.decode_processes:
        return settings.decode_processes
    return max(1, min(2, _usable_cores() // settings.workers))


class Decoder:
    """The decoding threads and the sandbox of one server process (start, then stop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.threads: ThreadPoolExecutor | None = None
        self.sandbox: Sandbox | None = None
        self._sandbox_io: ThreadPoolExecutor | None = None

    def start(self) -> None:
        processes = sandbox_processes(self.settings)
        self.threads = ThreadPoolExecutor(preprocess_threads(self.settings), "decode")
        self.sandbox = Sandbox(
            processes, self.settings.max_decode_cpu_s, self.settings.max_decode_memory_mb
        )
        # A thread per admitted job, waiting on a sandbox process or in line for one (no CPU
        # of its own): a job is admitted before it is handed over, so none queues unseen.
        self._sandbox_io = ThreadPoolExecutor(self.sandbox.capacity, "sandbox")

    def warm(self) -> None:
        """Start the sandbox processes now rather than on the first big image."""
        if self.sandbox is not None:
            self.sandbox.warm()

    def stop(self) -> None:
        if self.threads is not None:
            self.threads.shutdown(wait=True)
        if self._sandbox_io is not None:
            self._sandbox_io.shutdown(wait=False, cancel_futures=True)
        if self.sandbox is not None:
            self.sandbox.close()
        self.threads = self.sandbox = self._sandbox_io = None

    async def read_number(
        self,
        predictor: Predictor,
        raw: bytes,
        top_k: int,
        max_components: int,
        read_as: ReadAs | None = None,
    ) -> NumberReading:
        """Image bytes -> the number written in it: a light file in a decoding thread;
        anything else decoded in the sandbox (under its budget) and reduced to
        ``NUMBER_SIDE`` pixels, then read in a thread. ``read_as(read)`` says how the
        decoded image is read (``multiscript.read_number_as``: ``read(cut)`` once or
        twice, in the thread); by default ``read(True)``."""
        if self.threads is None or self.sandbox is None:
            raise RuntimeError("the decoder is not started")
        loop = asyncio.get_running_loop()
        args = (top_k, max_components, read_as or _as_latin)
        light = await loop.run_in_executor(
            self.threads, _read_number_if_light, predictor, raw, *args
        )
        if light is not None:
            return light
        header = number_job_header(predictor.limits, NUMBER_SIDE)
        with self.sandbox.admitted():  # 503 at once when the sandbox is full
            body = await loop.run_in_executor(
                self._sandbox_io, self.sandbox.run_admitted, header, raw
            )
        return await loop.run_in_executor(
            self.threads, _read_number_reduced, predictor, body, *args
        )

    async def prepare(self, predictor: Predictor, raw: bytes) -> Preprocessed:
        """Image bytes -> model input, in a thread or in the sandbox (see the module)."""
        if self.threads is None or self.sandbox is None:
            raise RuntimeError("the decoder is not started")
        loop = asyncio.get_running_loop()
        light = await loop.run_in_executor(self.threads, _prepare_if_light, predictor, raw)
        if light is not None:
            return light
        header = job_header(predictor.spec, predictor.limits)
        with self.sandbox.admitted():  # 503 at once when the sandbox is full
            image = await loop.run_in_executor(
                self._sandbox_io, self.sandbox.run_admitted, header, raw
            )
        size = predictor.spec.size
        return from_image(np.frombuffer(image, np.uint8).reshape(size, size).copy(), predictor.spec)


def _as_latin(read: Callable[[bool], NumberReading]) -> NumberReading:
    return read(True)


def _read_number_if_light(
    predictor: Predictor, raw: bytes, top_k: int, max_components: int, read_as: ReadAs
) -> NumberReading | None:
    """A whole number read here if the file is light; None for the sandbox."""
    from digitrec.numbers.reader import read_number

    structure = check_structure(raw, predictor.limits)
    if not structure.is_light(LIGHT_MAX_PIXELS):
        return None
    return read_as(
        lambda cut: read_number(
            raw,
            predictor,
            top_k=top_k,
            max_components=max_components,
            checked=structure,
            cut=cut,
        )
    )


def _read_number_reduced(
    predictor: Predictor, body: bytes, top_k: int, max_components: int, read_as: ReadAs
) -> NumberReading:
    """A number in the image the sandbox decoded and reduced; boxes in the file's pixels."""
    from digitrec.numbers.reader import read_number

    (width, height), img = number_image(body, NUMBER_SIDE)
    sx, sy = width / img.width, height / img.height
    reading = read_as(
        lambda cut: read_number(img, predictor, top_k=top_k, max_components=max_components, cut=cut)
    )
    digits = tuple(
        dataclasses.replace(d, box=_scaled_box(d.box, sx, sy, width, height))
        for d in reading.digits
    )
    return dataclasses.replace(reading, digits=digits)


def _scaled_box(
    box: tuple[int, int, int, int], sx: float, sy: float, width: int, height: int
) -> tuple[int, int, int, int]:
    x, y, w, h = box
    left, top = math.floor(x * sx), math.floor(y * sy)
    right, bottom = min(width, math.ceil((x + w) * sx)), min(height, math.ceil((y + h) * sy))
    return left, top, right - left, bottom - top


def _prepare_if_light(predictor: Predictor, raw: bytes) -> Preprocessed | None:
    """Prepared here if light; None for the sandbox. What needs no decoder to refuse is
    refused here either way, so a hostile file never costs a trip to the sandbox."""
    structure = check_structure(raw, predictor.limits)
    if not structure.is_light(LIGHT_MAX_PIXELS):
        return None
    return predictor.prepare(predictor.open(raw, structure))  # walked once, not twice
