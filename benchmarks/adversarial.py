"""Replay the hardening issue's attacks (and the next ones an attacker would try) against
a real ``digitrec serve`` on 127.0.0.1, and print what each one costs the server.

For each case, one attacker (or several connections at once) sends its payload
(``hostile.py``) over raw sockets, while a probe sends the web page's canvas PNG to
POST /api/v1/predict and GET /healthz every ~100 ms on a connection of its own. Per case:
what the attacker got (statuses with their error codes, or closed / reset / timeout /
still open), when, the probe's latency (p50, max, failures), the server's resident memory
(before, peak, after; all its processes) and the CPU seconds the case cost the server,
counted until it is idle again. A server that stays busy ``--settle`` seconds after a
case is killed and restarted, and the row says so. Rate limits are off.

Every request is bounded in time (each socket has a timeout, each case a deadline) and
in bytes; the servers are stopped on Ctrl-C and on failure. The whole run (both worker
counts) takes about 5 minutes, most of it in the slow-drip and idle-socket cases.

    python benchmarks/adversarial.py                            # --workers 1 and 2
    python benchmarks/adversarial.py --workers 1 --cases jpeg   # only cases named *jpeg*
    git worktree add /tmp/before HEAD                           # the committed server:
    python benchmarks/adversarial.py --src /tmp/before/src \\
        --output benchmarks/results/attack_before.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

import hostile
from common import (
    PREDICT,
    RESULTS,
    ServerProcess,
    digitrec_serve_command,
    machine_info,
    save_results,
    server_env,
    summarize,
    table,
)

LIMIT_S = 30.0  # longest an attacker waits for an answer
CONNECT_S = 5.0  # connect timeout of every socket
PROBE_EVERY_S = 0.1  # the probe's pace
PROBE_TIMEOUT_S = 10.0  # the probe's read timeout
SETTLE_S = 20.0  # how long a busy server may take to become idle after a case
IDLE_CPU = 0.05  # cores: below this the server counts as idle
CHUNK = 1 << 16  # bytes per send
MB = 1 << 20


# --- one exchange on a raw socket ----------------------------------------------------------


@dataclass
class Outcome:
    result: str  # "413", "closed", "reset", "timeout", "refused", "still open"
    seconds: float  # from connect to the answer (or to giving up)
    sent: int = 0  # bytes sent before the answer, to the nearest chunk
    detail: str = ""  # the error code of a JSON error, or the digit of a 200

    @property
    def label(self) -> str:
        return f"{self.result} {self.detail}".strip()


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether the server sent something (or closed) within ``timeout``; any fd number."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def exchange(
    port: int,
    parts: Iterable[bytes],
    limit_s: float = LIMIT_S,
    pace_s: float = 0.0,
    unanswered: str = "timeout",
) -> Outcome:
    """Send ``parts`` one by one (``pace_s`` apart), stop as soon as the server answers or
    closes, and read the status. ``unanswered`` names a connection still waiting at the
    deadline."""
    started = time.perf_counter()
    deadline = started + limit_s
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_S)
    except ConnectionRefusedError:
        return Outcome("refused", time.perf_counter() - started)
    except OSError as exc:
        return Outcome(
            "timeout" if isinstance(exc, TimeoutError) else "error", limit_s, 0, str(exc)
        )
    sent = 0
    with sock:
        try:
            for i, part in enumerate(parts):
                if time.perf_counter() >= deadline or _readable(sock, pace_s if i else 0):
                    break  # the server answered or closed: stop sending
                sock.settimeout(max(0.01, deadline - time.perf_counter()))
                sock.sendall(part)
                sent += len(part)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass  # what the server said, if anything, is read below
        return _answer(sock, started, deadline, sent, unanswered)


def _answer(
    sock: socket.socket, started: float, deadline: float, sent: int, unanswered: str
) -> Outcome:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return Outcome(unanswered, time.perf_counter() - started, sent)
            sock.settimeout(remaining)
            chunk = sock.recv(CHUNK)
            if not chunk:
                return Outcome("closed", time.perf_counter() - started, sent, _first_line(data))
            data += chunk
    except TimeoutError:
        return Outcome(unanswered, time.perf_counter() - started, sent)
    except ConnectionResetError:
        return Outcome("reset", time.perf_counter() - started, sent)
    seconds = time.perf_counter() - started
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode(errors="replace") if b" " in head else "?"
    length = _content_length(head)
    with contextlib.suppress(OSError):
        sock.settimeout(2.0)
        while length is not None and len(body) < min(length, CHUNK):
            chunk = sock.recv(CHUNK)
            if not chunk:
                break
            body += chunk
    return Outcome(status, seconds, sent, _detail(body))


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0][:40].decode(errors="replace")


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def _detail(body: bytes) -> str:
    """The error code of a JSON error body, "digit N" for a prediction, or the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:32].decode(errors="replace").strip()  # a plain-text error
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("code", ""))
    if isinstance(data, dict) and "digit" in data:
        return f"digit {data['digit']}"
    return ""


def concurrently(n: int, fn: Callable[[], Outcome], limit_s: float) -> list[Outcome]:
    """``fn`` on ``n`` threads at once; a thread still running after the limit is reported
    as a timeout (it ends by its own socket timeouts)."""
    results: list[Outcome | None] = [None] * n

    def run(i: int) -> None:
        results[i] = fn()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit_s + CONNECT_S + 5)
    return [r or Outcome("timeout", limit_s) for r in results]


# --- requests --------------------------------------------------------------------------------


def request_head(method: str, target: str, headers: Iterable[str] = ()) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post_parts(body: bytes, content_type: str, extra: Iterable[str] = ()) -> list[bytes]:
    """A POST to the predict route with ``body``, in send-sized parts."""
    head = request_head(
        "POST", PREDICT, [f"Content-Type: {content_type}", f"Content-Length: {len(body)}", *extra]
    )
    view = memoryview(body)
    return [head, *(bytes(view[i : i + CHUNK]) for i in range(0, len(body), CHUNK))]


Attack = Callable[[int], tuple[list[Outcome], list[str]]]  # port -> outcomes, notes


def send_post(body: bytes, content_type: str, n: int = 1, limit_s: float = LIMIT_S) -> Attack:
    parts = post_parts(body, content_type)

    def attack(port: int) -> tuple[list[Outcome], list[str]]:
        return concurrently(n, lambda: exchange(port, parts, limit_s), limit_s), []

    return attack


def send_raw(parts: Callable[[], Iterable[bytes]], n: int = 1, **kwargs: Any) -> Attack:
    """``n`` connections, each sending a fresh iterable from ``parts``."""
    limit_s = kwargs.get("limit_s", LIMIT_S)

    def attack(port: int) -> tuple[list[Outcome], list[str]]:
        return concurrently(n, lambda: exchange(port, parts(), **kwargs), limit_s), []

    return attack


def huge_url(size: int) -> Iterator[bytes]:
    """GET /healthz?aaaa... with a ``size``-byte query."""
    yield b"GET /healthz?"
    filler = b"a" * CHUNK
    for _ in range(size // CHUNK):
        yield filler
    yield b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def huge_headers(count: int, size: int) -> Iterator[bytes]:
    """GET /healthz with ``count`` headers of ``size`` bytes each."""
    yield b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    filler = b"a" * CHUNK
    for i in range(count):
        yield f"X-Pad-{i}: ".encode()
        for _ in range(size // CHUNK):
            yield filler
        yield b"\r\n"
    yield b"\r\n"


def many_headers(count: int) -> list[bytes]:
    body = hostile.canvas_png()
    lines = [f"X-H{i}: v" for i in range(count)]
    return post_parts(body, "image/png", lines)


def drip_headers() -> Iterator[bytes]:
    yield b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    while True:
        yield b"a"


def drip_body(length: int = 1000) -> Iterator[bytes]:
    yield request_head("POST", PREDICT, ["Content-Type: image/png", f"Content-Length: {length}"])
    while True:
        yield b"\x00"


def with_header(line: bytes) -> list[bytes]:
    """The canvas upload with one extra raw header line (any bytes)."""
    head, *rest = post_parts(hostile.canvas_png(), "image/png")
    return [head[:-2] + line + b"\r\n\r\n", *rest]


def chunked_post(body: bytes) -> list[bytes]:
    head = request_head("POST", PREDICT, ["Content-Type: image/png", "Transfer-Encoding: chunked"])
    wire = hostile.chunked(body, 1)
    return [head, *(wire[i : i + CHUNK] for i in range(0, len(wire), CHUNK))]


def idle_sockets(count: int, hold_s: float) -> Attack:
    """Open ``count`` connections that send nothing, hold them ``hold_s`` seconds, and see
    which the server closed (or answered) and when; a new client tries /healthz meanwhile."""

    def attack(port: int) -> tuple[list[Outcome], list[str]]:
        started = time.perf_counter()
        outcomes: list[Outcome] = []
        socks: dict[int, socket.socket] = {}
        poller = select.poll()
        try:
            for _ in range(count):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_S)
                except OSError as exc:
                    outcomes.append(Outcome(_refusal(exc), time.perf_counter() - started))
                    continue
                socks[sock.fileno()] = sock
                poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            fresh = exchange(port, [request_head("GET", "/healthz")], 5.0)
            note = f"a new client meanwhile: {fresh.label} in {fresh.seconds * 1000:.0f} ms"
            deadline = started + hold_s
            while socks and time.perf_counter() < deadline:
                for fd, _ in poller.poll(200):
                    sock = socks.pop(fd)
                    poller.unregister(fd)
                    outcomes.append(_idle_end(sock, started))
        finally:
            for sock in socks.values():
                outcomes.append(Outcome("still open", time.perf_counter() - started))
                sock.close()
        return outcomes, [note]

    return attack


def _refusal(exc: OSError) -> str:
    return "refused" if isinstance(exc, ConnectionRefusedError) else "timeout"


def _idle_end(sock: socket.socket, started: float) -> Outcome:
    with sock:
        try:
            sock.settimeout(1.0)
            data = sock.recv(CHUNK)
        except OSError:
            return Outcome("reset", time.perf_counter() - started)
    if not data:
        return Outcome("closed", time.perf_counter() - started)
    status = data.split(b" ", 2)[1].decode(errors="replace") if b" " in data else "?"
    return Outcome(status, time.perf_counter() - started)


# --- the cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    attack: Attack
    issue: bool = True  # listed in the hardening issue (False: a variant we added)


def _kb(data: bytes) -> str:
    return f"{len(data) / 1000:,.0f} KB" if len(data) < 10**6 else f"{len(data) / 1e6:.1f} MB"


def build_cases(drip_s: float, idle_s: float) -> list[Case]:
    """Every case with its payload built (the builders are cached, so this is paid once)."""
    baseline = Case("baseline", "no attack: the probe alone, 2 s", lambda port: (_pause(2.0), []))
    return [baseline, *issue_cases(drip_s, idle_s), *variant_cases(idle_s)]


def issue_cases(drip_s: float, idle_s: float) -> list[Case]:
    """The attacks of the hardening issue, at its sizes."""
    h = hostile
    prog = h.progressive_jpeg_scans()
    rep512 = h.progressive_repeats(512, 512)
    prog512 = h.progressive_jpeg_scans(512, 512, rep512)
    rgba = h.png_huge_rgba()
    mpo, jpeg = h.mpo_photo(), h.jpeg_photo()
    headers_50k = many_headers(50_000)
    return [
        Case(
            "jpeg_scans_x2",
            f"20000x2500 progressive JPEG, 300 extra scans ({_kb(prog)}), 2 at once",
            send_post(prog, "image/jpeg", 2),
        ),
        Case("jpeg_scans_x8", "the same, 8 at once", send_post(prog, "image/jpeg", 8)),
        Case(
            "jpeg_scans_512",
            f"512x512 progressive JPEG, {rep512:,} extra scans ({_kb(prog512)})",
            send_post(prog512, "image/jpeg"),
        ),
        Case(
            "png_chunks",
            f"PNG with 870,000 empty private chunks ({_kb(h.png_many_chunks())})",
            send_post(h.png_many_chunks(), "image/png"),
        ),
        Case(
            "jpeg_app5",
            f"JPEG with 2.6 M empty APP5 markers ({_kb(h.jpeg_many_markers())})",
            send_post(h.jpeg_many_markers(), "image/jpeg"),
        ),
        Case(
            "jpeg_com",
            "JPEG with 2.6 M empty COM markers",
            send_post(h.jpeg_many_markers(marker=0xFE), "image/jpeg"),
        ),
        Case(
            "gif_comments",
            f"GIF with 3.3 M empty comments ({_kb(h.gif_many_comments())})",
            send_post(h.gif_many_comments(), "image/gif"),
        ),
        Case(
            "png_rgba_x8",
            f"blank 20000x2500 RGBA PNG ({_kb(rgba)}), 8 at once",
            send_post(rgba, "image/png", 8),
        ),
        Case(
            "png_16bit",
            "16-bit grey PNG 1536x1536 of a bar (a 1)",
            send_post(h.png_16bit(), "image/png"),
        ),
        Case(
            "tiff_16bit",
            f"16-bit grey TIFF 1536x1536 of a bar ({_kb(h.tiff_16bit())})",
            send_post(h.tiff_16bit(), "image/tiff"),
        ),
        Case(
            "jpeg_photo_x8",
            f"2000x1500 JPEG photo of a 3 ({_kb(jpeg)}), 8 at once",
            send_post(jpeg, "image/jpeg", 8),
        ),
        Case(
            "mpo_photo_x8",
            f"the same photo as a 2-frame MPO ({_kb(mpo)}), 8 at once",
            send_post(mpo, "image/jpeg", 8),
        ),
        Case(
            "data_url",
            "JSON data URL with 10 M semicolons and no comma",
            send_post(h.data_url_semicolons(), "application/json"),
        ),
        Case(
            "deep_json", "JSON nested 100,000 levels", send_post(h.deep_json(), "application/json")
        ),
        Case("url_64mb", "a 64 MB request target", send_raw(lambda: huge_url(64 * MB))),
        Case(
            "headers_1mb",
            "6 connections x 150 headers of 1 MB",
            send_raw(lambda: huge_headers(150, MB), n=6),
        ),
        Case("headers_50k", "50,000 small headers", send_raw(lambda: headers_50k)),
        Case(
            "idle_500",
            f"500 connections that send nothing, held {idle_s:g} s",
            idle_sockets(500, idle_s),
        ),
        Case(
            "slow_headers",
            f"headers at 1 byte/s, up to {drip_s:g} s",
            send_raw(drip_headers, pace_s=1.0, limit_s=drip_s, unanswered="still open"),
        ),
        Case(
            "slow_body",
            f"a 1000-byte body at 1 byte/s, up to {drip_s:g} s",
            send_raw(drip_body, pace_s=1.0, limit_s=drip_s, unanswered="still open"),
        ),
        Case(
            "web_token_latin1",
            "X-Web-Token: 1.2.\\xe9 (not ASCII)",
            send_raw(lambda: with_header(b"X-Web-Token: 1.2.\xe9")),
        ),
    ]


def variant_cases(idle_s: float) -> list[Case]:
    """What an attacker would try next, once the issue's attacks are refused."""
    h = hostile
    many_parts, parts_type = h.multipart_many_parts()
    huge_name, name_type = h.multipart_huge_name()
    chunked = chunked_post(h.canvas_png() + bytes(1_600_000))
    return [
        Case(
            "bearer_latin1",
            "Authorization: Bearer \\xe9\\xff (not ASCII)",
            send_raw(lambda: with_header(b"Authorization: Bearer \xe9\xff")),
            issue=False,
        ),
        Case(
            "webp_49mp_x8",
            f"blank lossless WebP 7000x7000 ({_kb(h.webp_huge())}), 8 at once",
            send_post(h.webp_huge(), "image/webp", 8),
            issue=False,
        ),
        Case(
            "tiff_rgba_x8",
            f"blank deflate RGBA TIFF 20000x2500 ({_kb(h.tiff_huge())}), 8 at once",
            send_post(h.tiff_huge(), "image/tiff", 8),
            issue=False,
        ),
        Case(
            "bmp_rle_x2",
            f"RLE8 BMP 20000x2500, one pixel per row ({_kb(h.bmp_rle8_rows())}), 2 at once",
            send_post(h.bmp_rle8_rows(), "image/bmp", 2),
            issue=False,
        ),
        Case(
            "bmp_absurd",
            "BMP header declaring 100000x100000, no pixels",
            send_post(h.bmp_header_only(), "image/bmp"),
            issue=False,
        ),
        Case(
            "multipart_parts",
            f"190,000 empty form fields, then the image ({_kb(many_parts)})",
            send_post(many_parts, parts_type),
            issue=False,
        ),
        Case(
            "multipart_name",
            f"a 9 MB form-field name ({_kb(huge_name)})",
            send_post(huge_name, name_type),
            issue=False,
        ),
        Case(
            "chunked_1byte",
            "a 1.6 MB body in 1-byte chunks (11 MB on the wire)",
            send_raw(lambda: chunked),
            issue=False,
        ),
        Case(
            "idle_1200",
            f"1,200 connections that send nothing, held {idle_s:g} s",
            idle_sockets(1200, idle_s),
            issue=False,
        ),
    ]


def _pause(seconds: float) -> list[Outcome]:
    time.sleep(seconds)
    return []


# --- the server and what it spends --------------------------------------------------------------


class Target:
    """``digitrec serve`` on loopback: started, measured (CPU, memory of its whole process
    tree), killed and started again when an attack leaves it stuck."""

    def __init__(self, workers: int, src: Path | None, home: Path) -> None:
        self.workers = workers
        self.env = server_env(home, {"PYTHONPATH": str(src)} if src else None)
        self.home = home
        self.starts = 0
        self.server: ServerProcess | None = None

    def start(self) -> None:
        self.starts += 1
        log = self.home / f"server-{self.workers}w-{self.starts}.log"
        command = digitrec_serve_command(["--workers", str(self.workers)])
        self.server = ServerProcess(command, log, env=self.env)
        self.server.wait_ready()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def processes(self) -> list[psutil.Process]:
        if self.server is None:
            return []
        try:
            root = psutil.Process(self.server.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def workers_pids(self) -> set[int]:
        """The uvicorn worker processes (with --workers > 1: the supervisor's children)."""
        procs = self.processes()
        return {p.pid for p in procs[1:] if _parent(p) == procs[0].pid} if procs else set()

    def cpu_seconds(self) -> float:
        """User + system time of every process of the server, and of its reaped children."""
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def rss_mb(self) -> float:
        return (self.server.rss_bytes() if self.server else 0) / MB

    def alive(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def log_text(self) -> str:
        return self.server.log.read_text(errors="replace") if self.server else ""

    def kill(self) -> None:
        """SIGKILL the whole tree at once: for a server that an attack left stuck."""
        procs = self.processes()
        for p in reversed(procs):
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        if self.server is not None:
            self.server.stop(timeout=5)  # reaps it and closes its log

    def stop(self) -> int | None:
        """SIGTERM (graceful), then kill whatever is left."""
        if self.server is None:
            return None
        procs = self.processes()
        code = self.server.stop(timeout=GRACE_S)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()
        return code


GRACE_S = 20.0  # SIGTERM to exit, at the end of a run (the server's own window is 15 s)


def _parent(p: psutil.Process) -> int | None:
    try:
        return p.ppid()
    except psutil.Error:
        return None


class Probe(threading.Thread):
    """The canvas PNG to /api/v1/predict and GET /healthz, alternately, every ~100 ms on one
    keep-alive connection; meanwhile the server's memory, every 100 ms, for its peak."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.stopping = threading.Event()
        self.times: dict[str, list[float]] = {"predict": [], "healthz": []}
        self.failures: Counter[str] = Counter()
        self.rss_peak = target.rss_mb()
        self.canvas = hostile.canvas_png()

    def run(self) -> None:
        timeout = httpx.Timeout(PROBE_TIMEOUT_S, connect=CONNECT_S)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=self.target.url, timeout=timeout, limits=limits) as client:
            sampler = threading.Thread(target=self._sample, daemon=True)
            sampler.start()
            turn = 0
            while not self.stopping.is_set():
                kind = ("predict", "healthz")[turn % 2]
                turn += 1
                started = time.perf_counter()
                failure = self._one(client, kind)
                took = time.perf_counter() - started
                self.times[kind].append(took)
                if failure:
                    self.failures[f"{kind}: {failure}"] += 1
                self.stopping.wait(max(0.0, PROBE_EVERY_S - took))
            sampler.join(1.0)

    def _one(self, client: httpx.Client, kind: str) -> str | None:
        try:
            if kind == "predict":
                files = {"image": ("canvas.png", self.canvas, "image/png")}
                response = client.post(PREDICT, files=files)
            else:
                response = client.get("/healthz")
        except httpx.TransportError as exc:
            return type(exc).__name__
        return None if response.status_code == 200 else str(response.status_code)

    def _sample(self) -> None:
        while not self.stopping.wait(0.1):
            self.rss_peak = max(self.rss_peak, self.target.rss_mb())

    def finish(self) -> dict[str, Any]:
        self.stopping.set()
        self.join(PROBE_TIMEOUT_S + CONNECT_S + 1)
        every = self.times["predict"] + self.times["healthz"]
        return {
            "requests": len(every),
            "failures": sum(self.failures.values()),
            "failure_kinds": dict(self.failures),
            "all_ms": summarize(every),
            "predict_ms": summarize(self.times["predict"]),
            "healthz_ms": summarize(self.times["healthz"]),
        }


def settle(target: Target, limit_s: float) -> float | None:
    """Seconds until the server is idle and answers /healthz; None if it is not by then."""
    started = time.perf_counter()
    before, at = target.cpu_seconds(), started
    while time.perf_counter() - started < limit_s and target.alive():
        time.sleep(0.5)
        now, cpu = time.perf_counter(), target.cpu_seconds()
        busy = (cpu - before) / (now - at)
        before, at = cpu, now
        if (
            busy < IDLE_CPU
            and exchange(target.port, [request_head("GET", "/healthz")], 2.0).result == "200"
        ):
            return now - started
    return None


# --- running a case ---------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    what: str
    from_issue: bool
    connections: int
    result: str
    answered_s: float | None
    probe: dict[str, Any]
    rss_mb: dict[str, float]
    cpu_s: float
    settle_s: float | None
    notes: list[str] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)


def run_case(case: Case, target: Target, settle_s: float) -> Row:
    if not target.alive():
        target.start()
    workers, log_from = target.workers_pids(), len(target.log_text())
    rss_before, cpu_before = target.rss_mb(), target.cpu_seconds()
    probe = Probe(target)
    probe.start()
    time.sleep(0.3)  # a few probe requests before the attack starts
    outcomes, notes = case.attack(target.port)
    time.sleep(0.3)
    probe_stats = probe.finish()
    settled = settle(target, settle_s)
    cpu = target.cpu_seconds() - cpu_before
    rss_after = target.rss_mb()
    notes += _server_notes(target, workers, log_from, settled, settle_s)
    if settled is None or not target.alive():
        target.kill()
        target.start()
    answered = [o.seconds for o in outcomes if o.result not in ("timeout", "still open")]
    return Row(
        case=case.name,
        what=case.what,
        from_issue=case.issue,
        connections=len(outcomes),
        result=_tally(outcomes),
        answered_s=round(max(answered), 3) if answered else None,
        probe=probe_stats,
        rss_mb={
            "before": round(rss_before, 1),
            "peak": round(max(probe.rss_peak, rss_after), 1),
            "after": round(rss_after, 1),
        },
        cpu_s=round(cpu, 2),
        settle_s=round(settled, 2) if settled is not None else None,
        notes=notes,
        outcomes=[asdict(o) | {"seconds": round(o.seconds, 3)} for o in outcomes[:16]],
    )


def _tally(outcomes: list[Outcome]) -> str:
    counts = Counter(o.label for o in outcomes)
    return ", ".join(f"{label} x{n}" if n > 1 else label for label, n in counts.most_common())


def _server_notes(
    target: Target, workers: set[int], log_from: int, settled: float | None, settle_s: float
) -> list[str]:
    notes = []
    if not target.alive():
        code = target.server.process.returncode if target.server else None
        notes.append(f"server exited (code {code}): restarted")
    elif settled is None:
        notes.append(f"still busy {settle_s:g} s after the case: killed and restarted")
    if target.workers > 1 and workers - target.workers_pids():
        notes.append(f"{len(workers - target.workers_pids())} worker(s) replaced")
    new_log = target.log_text()[log_from:]
    if "Traceback" in new_log:
        raised = ", ".join(sorted(_exceptions(new_log)))[:200]
        notes.append(f"{new_log.count('Traceback')} traceback(s) in the log: {raised}")
    for line in new_log.splitlines():
        if "ERROR" in line or "WARNING" in line or "Killed" in line:
            notes.append(f"log: {line.strip()[:120]}")
            break
    return notes


def _exceptions(log: str) -> set[str]:
    """The exception line that ends each traceback in ``log``."""
    found = set()
    for block in log.split("Traceback (most recent call last):")[1:]:
        for line in block.splitlines()[1:]:
            if line and not line.startswith(" "):
                found.add(line.strip()[:100])
                break
    return found


# --- output ------------------------------------------------------------------------------------


def print_rows(workers: int, rows: list[Row]) -> None:
    print(f"\n--workers {workers}")
    print(
        table(
            [
                "case",
                "got",
                "answered s",
                "predict p50/max ms",
                "healthz max ms",
                "probe fail",
                "RSS MB before/peak/after",
                "CPU s",
                "notes",
            ],
            [
                [
                    r.case,
                    r.result[:48],
                    r.answered_s,
                    _p50_max(r.probe["predict_ms"]),
                    r.probe["healthz_ms"].get("max"),
                    f"{r.probe['failures']}/{r.probe['requests']}",
                    f"{r.rss_mb['before']:.0f}/{r.rss_mb['peak']:.0f}/{r.rss_mb['after']:.0f}",
                    r.cpu_s,
                    "; ".join(r.notes)[:90],
                ]
                for r in rows
            ],
        )
    )


def _p50_max(stats: dict[str, float]) -> str:
    return f"{stats['p50']:.1f}/{stats['max']:,.0f}" if stats.get("n") else "-"


def print_progress(row: Row) -> None:
    p = row.probe["all_ms"]
    print(
        f"  {row.case:<18} {row.result[:40]:<40} answered {row.answered_s} s, probe p50 "
        f"{p.get('p50')} max {p.get('max')} ms, fail {row.probe['failures']}, CPU {row.cpu_s} s, "
        f"RSS peak {row.rss_mb['peak']:.0f} MB {'; '.join(row.notes)}",
        flush=True,
    )


def server_source(src: Path | None, env: dict[str, str]) -> dict[str, Any]:
    """Which digitrec the server imports, and the commit it comes from."""
    out = subprocess.run(
        [sys.executable, "-c", "import digitrec; print(digitrec.__file__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    package = Path(out.stdout.strip()).parent if out.returncode == 0 else None
    commit = None
    if package is not None:
        git = subprocess.run(
            [
                "git",
                "-C",
                str(package),
                "describe",
                "--always",
                "--dirty",
                "--abbrev=12",
                "--exclude=*",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        commit = git.stdout.strip() or None
    return {"src": str(src) if src else None, "package": str(package), "commit": commit}


def run_config(
    workers: int, src: Path | None, cases: list[Case], settle_s: float, tmp: Path
) -> dict[str, Any]:
    target = Target(workers, src, tmp / f"home-{workers}")
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        target.start()
        with httpx.Client(base_url=target.url, timeout=30) as client:
            for _ in range(5):  # warm: the first predictions are slower
                client.post(PREDICT, files={"image": ("c.png", hostile.canvas_png(), "image/png")})
        print(f"\n--workers {workers}: {target.url}", flush=True)
        for case in cases:
            row = run_case(case, target, settle_s)
            rows.append(row)
            print_progress(row)
    finally:
        log = target.log_text()
        exit_code = target.stop()
    return {
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 1),
        "server_starts": target.starts,
        "exit_code": exit_code,
        "tracebacks_in_last_log": log.count("Traceback"),
        "log_tail": log[-3000:],
        "cases": [asdict(r) for r in rows],
    }


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: the servers are stopped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="server worker counts to attack"
    )
    parser.add_argument(
        "--cases", nargs="+", help="run only cases whose name contains one of these"
    )
    parser.add_argument("--src", type=Path, help="serve the digitrec found here (a src/ folder)")
    parser.add_argument("--drip-seconds", type=float, default=35.0, help="slow-drip bound")
    parser.add_argument("--idle-seconds", type=float, default=12.0, help="idle-socket hold")
    parser.add_argument("--settle", type=float, default=SETTLE_S, help="idle wait after a case")
    parser.add_argument("--output", type=Path, default=RESULTS / "attack.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)

    machine = machine_info()
    started = time.perf_counter()
    cases = build_cases(args.drip_seconds, args.idle_seconds)
    if args.cases:
        cases = [c for c in cases if c.name == "baseline" or any(s in c.name for s in args.cases)]
    print(f"{len(cases)} cases, payloads built in {time.perf_counter() - started:.1f} s")
    source = server_source(args.src, {"PYTHONPATH": str(args.src)} if args.src else {})
    print(f"server: digitrec from {source['package']} ({source['commit']})")
    configs = []
    with tempfile.TemporaryDirectory(prefix="attack-") as tmp:
        for workers in args.workers:
            configs.append(run_config(workers, args.src, cases, args.settle, Path(tmp)))
    for config in configs:
        print_rows(config["workers"], [Row(**row) for row in config["cases"]])
    results = {
        "server": source,
        "limits": {
            "attacker_s": LIMIT_S,
            "drip_s": args.drip_seconds,
            "idle_hold_s": args.idle_seconds,
            "settle_s": args.settle,
            "probe_every_s": PROBE_EVERY_S,
            "probe_timeout_s": PROBE_TIMEOUT_S,
        },
        "cases": [{"case": c.name, "what": c.what, "from_issue": c.issue} for c in cases],
        "configs": configs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = save_results(args.output.stem, results, machine, args.output)
    print(f"wrote {path} after {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
