"""Decoding in a sandbox: a separate process with a CPU-time and memory budget per image.

An image that is big, or in a format whose decoder we do not walk ourselves (WebP,
TIFF, ...), is decoded and prepared in a worker process started with
``python -m digitrec.sandbox``. Each job gets ``max_decode_cpu_s`` of CPU (a profiling
timer that raises in Python, and ``RLIMIT_CPU`` one second later for decoders stuck in
C) and ``max_decode_memory_mb`` of address space beyond what the process needed to
start (``RLIMIT_AS``). Past either, the job fails with ``ImageTooCostly`` (413) and the
process is replaced; the server never waits on it longer than a wall-clock deadline.
The worker runs at a lower priority, so the server's own small requests come first.

The protocol on the worker's stdin/stdout is deliberately dumb, so a decoder exploited
by a crafted file can hand the server nothing but bytes: a job is a length-prefixed JSON
header (preprocessing spec and limits) and the file; the answer is a status byte, a byte
that says whether the worker now exits (it does after a refusal for cost, or when it
holds too much memory), and either the 28x28 uint8 image or a JSON error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import IO, Any

from digitrec.errors import DigitrecError, ImageTooCostly, InvalidImage, ServiceBusy

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_OK, _ERROR = b"\x00", b"\x01"
_STAYS, _EXITS = b"\x00", b"\x01"
NICE = 10  # the sandbox yields the CPU to the server's small requests
RECYCLE_RSS_MB = 96  # a worker holding this much more than at start is replaced
STARTUP_TIMEOUT_S = 30.0  # importing numpy and Pillow on a busy machine
WAITING_PER_WORKER = 8  # jobs that may wait for each worker before more are refused


class _OverBudget(Exception):
    pass


# --- the worker process ---------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:  # noqa: PTH123 - Linux only, read once per job
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _vm_bytes() -> int:
    with open("/proc/self/statm") as fh:  # noqa: PTH123
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _job(header: dict[str, Any], raw: bytes) -> bytes:
    """Decode and prepare one image: the 28x28 uint8 picture the model will see; or, for a
    number (``kind`` "number"), the decoded image reduced to ``side`` pixels at most."""
    from digitrec.preprocess import Limits, PreprocessSpec, preprocess_bytes

    limits = Limits(**header["limits"])
    if header.get("kind") == "number":
        return _number_job(raw, limits, int(header["side"]))
    spec = PreprocessSpec.from_dict(header["spec"])
    return preprocess_bytes(raw, spec, limits).image.tobytes()


_DIMS = struct.Struct(">IIHH")  # the file's width and height, then the reduced image's


def _number_job(raw: bytes, limits: Any, side: int) -> bytes:
    """The image in grey with its transparency (``LA``), no larger than ``side`` on its
    longer edge, after the file's own width and height (to scale the boxes back)."""
    from PIL import Image

    from digitrec.preprocess import load, open_image

    opened = open_image(raw, limits)
    width, height = opened.size
    img = load(opened)
    img = (
        img.convert("LA")
        if "A" in img.getbands() or "transparency" in img.info
        else (img.convert("L").convert("LA"))
    )
    img.thumbnail((side, side), Image.Resampling.BOX)
    return _DIMS.pack(width, height, img.width, img.height) + img.tobytes()


def number_image(body: bytes, side: int) -> tuple[tuple[int, int], Any]:
    """The sandbox's answer to a number job: the file's (width, height) and the reduced
    ``LA`` image; ValueError for anything else."""
    from PIL import Image

    if len(body) < _DIMS.size:
        raise ValueError("short")
    width, height, w, h = _DIMS.unpack_from(body)
    if not (0 < w <= side and 0 < h <= side and len(body) == _DIMS.size + 2 * w * h):
        raise ValueError("malformed")
    return (width, height), Image.frombytes("LA", (w, h), body[_DIMS.size :])


def _answer(header: dict[str, Any], raw: bytes, cpu_s: float) -> tuple[bytes, bool]:
    """The reply, and whether this worker should now be replaced (a decode went over its
    budget and may have left state or memory behind)."""
    import resource

    used = time.process_time()
    resource.setrlimit(resource.RLIMIT_CPU, (int(used + cpu_s) + 2, resource.RLIM_INFINITY))
    signal.setitimer(signal.ITIMER_PROF, cpu_s)
    spent = True  # the refusals below, but for a DigitrecError, come from a decode
    try:
        return _OK + _job(header, raw), False
    except _OverBudget:
        error: DigitrecError = ImageTooCostly(
            f"decoding the image took over the {cpu_s:g} s CPU budget; it was refused"
        )
    except MemoryError:
        error = ImageTooCostly("decoding the image needs more memory than allowed; it was refused")
    except DigitrecError as exc:
        error, spent = exc, False
    except Exception as exc:  # a decoder's own failure: the file is damaged
        error = InvalidImage(f"the image is damaged ({type(exc).__name__})")
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    return _ERROR + json.dumps({"code": error.code, "message": error.message}).encode(), spent


def worker_main(cpu_s: float, memory_mb: int) -> None:
    """Serve jobs from stdin until it closes (run by ``python -m digitrec.sandbox``)."""
    import resource

    from PIL import Image

    import digitrec.preprocess  # noqa: F401 - import numpy and Pillow before the limits

    Image.init()  # every decoder plugin too: none is imported later under the limits

    os.nice(NICE)

    def over_budget(signum: int, frame: object) -> None:
        raise _OverBudget

    signal.signal(signal.SIGPROF, over_budget)
    start_rss = _rss_mb()
    limit = _vm_bytes() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_OK)  # ready
    stdout.flush()
    while True:
        try:
            (size,) = _LEN.unpack(_read_exact(stdin, _LEN.size))
            header = json.loads(_read_exact(stdin, size))
            (size,) = _LEN.unpack(_read_exact(stdin, _LEN.size))
            raw = _read_exact(stdin, size)
        except EOFError:
            return
        reply, spent = _answer(header, raw, cpu_s)
        del raw
        # Memory given back, no state left from a costly file: the server starts a fresh one.
        exits = spent or _rss_mb() - start_rss > RECYCLE_RSS_MB
        reply = reply[:1] + (_EXITS if exits else _STAYS) + reply[1:]
        stdout.write(_LEN.pack(len(reply)) + reply)
        stdout.flush()
        if exits:
            return


# --- the server's side ----------------------------------------------------------------------


class SandboxWorker:
    """One worker process, used by one job at a time (callers take turns: ``Sandbox``)."""

    def __init__(self, cpu_s: float, memory_mb: int) -> None:
        self.cpu_s = cpu_s
        self.memory_mb = memory_mb
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "digitrec.sandbox", str(self.cpu_s), str(self.memory_mb)]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True
        )
        assert process.stdout is not None
        try:
            ready = self._read(process, 1, time.monotonic() + STARTUP_TIMEOUT_S) == _OK
        except (EOFError, TimeoutError):
            ready = False
        if not ready:
            self._kill(process)
            log.error("the decoding sandbox did not start (see its error above)")
            raise ServiceBusy(
                "large images cannot be decoded right now; try again shortly",
                code="sandbox_unavailable",
            )
        return process

    def ensure_started(self) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            self.process = self._spawn()
        return self.process

    def run(self, header: dict[str, Any], raw: bytes) -> bytes:
        """Decode one image; its 28x28 uint8 picture, or the DigitrecError it caused."""
        process = self.ensure_started()
        assert process.stdin is not None
        # The CPU budget plus room for a busy machine (the worker runs niced).
        deadline = time.monotonic() + 4 * self.cpu_s + 2.0
        try:
            blob = json.dumps(header).encode()
            process.stdin.write(_LEN.pack(len(blob)) + blob + _LEN.pack(len(raw)))
            process.stdin.write(raw)
            process.stdin.flush()
            (size,) = _LEN.unpack(self._read(process, _LEN.size, deadline))
            reply = self._read(process, size, deadline)
        except (OSError, EOFError, TimeoutError, struct.error) as exc:
            self._kill(process)
            self.process = None
            reason = "took too long" if isinstance(exc, TimeoutError) else "went over its budget"
            raise ImageTooCostly(f"decoding the image {reason}; it was refused") from None
        if reply[1:2] == _EXITS:  # wait for it here, so the next job starts a fresh one
            self._kill(process)
            self.process = None
        if header.get("kind") == "number":
            return self._result(reply, lambda body: number_image(body, int(header["side"])))
        return self._result(reply, lambda body: len(body) == header["spec"]["size"] ** 2)

    def _result(self, reply: bytes, well_formed: Callable[[bytes], object]) -> bytes:
        """The image from a worker's reply, or the error it reports. A reply of any other
        shape (a worker a crafted file took over) kills the worker and refuses the file."""
        status, body = reply[:1], reply[2:]
        try:
            if status == _OK and well_formed(body):
                return body
            if status == _ERROR:
                error = json.loads(body)
                code, message = str(error["code"]), str(error["message"])[:300]
                raise _error_for(code, message)
        except (ValueError, KeyError, TypeError):
            pass
        self.close()
        raise InvalidImage("decoding the image gave a malformed result; it was refused")

    @staticmethod
    def _read(process: subprocess.Popen[bytes], n: int, deadline: float) -> bytes:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, n - got)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    @staticmethod
    def _kill(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        if self.process is not None:
            self._kill(self.process)
            self.process = None


def _error_for(code: str, message: str) -> DigitrecError:
    """The DigitrecError a worker reported, rebuilt from its code (unknown: InvalidImage)."""
    classes: list[type[DigitrecError]] = [DigitrecError]
    while classes:
        cls = classes.pop()
        if cls.code == code:
            return cls(message)
        classes.extend(cls.__subclasses__())
    return InvalidImage(message, code=code)


class Sandbox:
    """A few sandbox workers, and at most ``capacity`` jobs admitted at once (running or
    waiting for a free worker); past that a job is refused with 503 at once."""

    def __init__(self, processes: int, cpu_s: float, memory_mb: int) -> None:
        self.workers = [SandboxWorker(cpu_s, memory_mb) for _ in range(processes)]
        self.capacity = (1 + WAITING_PER_WORKER) * processes
        self._free = list(self.workers)
        self._cond = threading.Condition()
        self._admitted = 0
        self._closed = False

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the ``capacity`` places, or raise ServiceBusy. Take it before handing
        the job to a thread, so no job ever waits where it is not counted."""
        with self._cond:
            if self._closed:
                raise ServiceBusy("the server is stopping; try again shortly")
            if self._admitted >= self.capacity:
                raise ServiceBusy("too many large images are being decoded; try again shortly")
            self._admitted += 1
        try:
            yield
        finally:
            with self._cond:
                self._admitted -= 1

    def run(self, header: dict[str, Any], raw: bytes) -> bytes:
        """Blocking (call from a thread): admit the job, then ``run_admitted``."""
        with self.admitted():
            return self.run_admitted(header, raw)

    def run_admitted(self, header: dict[str, Any], raw: bytes) -> bytes:
        """Blocking: wait for a free worker and decode there (the caller holds a place)."""
        with self._cond:
            while not self._free and not self._closed:
                self._cond.wait()
            if self._closed:
                raise ServiceBusy("the server is stopping; try again shortly")
            worker = self._free.pop()
        try:
            return worker.run(header, raw)
        finally:
            with self._cond:
                self._free.append(worker)
                self._cond.notify()

    def warm(self) -> None:
        for worker in self.workers:
            worker.ensure_started()

    def close(self) -> None:
        """Stop every worker; jobs still waiting for one are refused (503)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self.workers:
            worker.close()


def job_header(spec: Any, limits: Any) -> dict[str, Any]:
    """What a worker needs to know besides the file: the model's preprocessing and limits."""
    return {"spec": spec.to_dict(), "limits": asdict(limits)}


def number_job_header(limits: Any, side: int) -> dict[str, Any]:
    """A number's job: decode and reduce to ``side`` pixels (see ``number_image``)."""
    return {"kind": "number", "limits": asdict(limits), "side": side}


if __name__ == "__main__":
    worker_main(float(sys.argv[1]), int(sys.argv[2]))
