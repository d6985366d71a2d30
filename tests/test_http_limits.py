"""What one connection may cost at the HTTP layer of `digitrec serve`, against the real
server on loopback: request target, header size and count (414, 431, memory bounded),
header and body deadlines (408), open connections per worker (503, idle ones closed to
make room), a low descriptor limit, and graceful stops on SIGHUP and SIGTERM. Hostile
clients are raw sockets, few and short-lived."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import pickle
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from digitrec.api import server as server_module
from digitrec.api.protocol import HttpLimits, LimitedProtocol, json_error_response
from digitrec.api.security import SECURITY_HEADERS
from digitrec.config import Settings
from digitrec.errors import UriTooLong
from tests.conftest import LiveServer, big_photo

pytestmark = [pytest.mark.server]
GOLDEN = Path(__file__).parent / "golden"
PREDICT = "/api/v1/predict"
FAST = {  # short deadlines, so the tests that wait for them stay short
    "DIGITREC_HEADER_TIMEOUT_S": "1",
    "DIGITREC_BODY_TIMEOUT_S": "2",
    "DIGITREC_RATE_LIMIT_PER_MINUTE": "0",
    "DIGITREC_WEB_RATE_LIMIT_PER_MINUTE": "0",
}


@contextlib.contextmanager
def running(home: Path, env: dict[str, str] | None = None, **kwargs: Any) -> Iterator[LiveServer]:
    server = LiveServer(home, env={**FAST, **(env or {})}, **kwargs)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running(tmp_path_factory.mktemp("limits")) as server:
        yield server


def connect(server: LiveServer, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (b"" if it closed without a word)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def answer(data: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of one raw HTTP response."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = (line.split(": ", 1) for line in lines[1:])
    headers = {name.lower(): value for name, value in fields}
    return int(lines[0].split()[1]), headers, json.loads(body)


def assert_json_error(data: bytes, status: int, code: str) -> None:
    got, headers, body = answer(data)
    assert (got, body["error"]["code"]) == (status, code), data[:300]
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert "content-security-policy" in headers and "x-content-type-options" in headers


def send_until_refused(sock: socket.socket, first: bytes, filler: bytes, total: int) -> float:
    """Send ``first`` then ``filler`` up to ``total`` bytes; return the seconds until the
    server stopped taking them (it answered and closed) or everything was sent."""
    start = time.monotonic()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(first)
        for _ in range(total // len(filler)):
            sock.sendall(filler)
    return time.monotonic() - start


def rss(server: LiveServer) -> int:
    return int(psutil.Process(server.process.pid).memory_info().rss)


def healthz_seconds(server: LiveServer) -> float:
    start = time.monotonic()
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    return time.monotonic() - start


def predict_seven(server: LiveServer) -> None:
    raw = (GOLDEN / "canvas_transparent_7.png").read_bytes()
    response = httpx.post(
        f"{server.url}{PREDICT}", content=raw, headers={"content-type": "image/png"}, timeout=10
    )
    assert response.status_code == 200 and response.json()["digit"] == 7, response.text


# --- fast checks of the pieces --------------------------------------------------------------


def test_limits_come_from_settings_once() -> None:
    settings = Settings(max_url_bytes=1 << 20, max_headers=20, header_timeout_s=3)
    limits = HttpLimits.from_settings(settings, max_connections=100)
    assert limits.max_url_bytes == 65535  # httptools cannot parse a longer target
    assert (limits.max_headers, limits.header_timeout_s, limits.max_connections) == (20, 3, 100)
    assert HttpLimits.from_settings(Settings()).max_connections == Settings().max_connections
    # What uvicorn pickles into every worker: the protocol class with its limits bound.
    bound = pickle.loads(pickle.dumps(functools.partial(LimitedProtocol, limits=limits)))
    assert bound.func is LimitedProtocol and bound.keywords == {"limits": limits}


def test_json_error_response_is_complete() -> None:
    raw = json_error_response(UriTooLong("too long"), [(b"date", b"today")])
    status, headers, body = answer(raw)
    assert (status, body) == (414, {"error": {"code": "uri_too_long", "message": "too long"}})
    assert int(headers["content-length"]) == len(raw.partition(b"\r\n\r\n")[2])
    assert headers["date"] == "today" and headers["connection"] == "close"
    assert all(headers[name.decode()] == value.decode() for name, value in SECURITY_HEADERS)


def test_connections_fit_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    limits: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 1024))
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: limits.append(value))
    assert server_module.connections_that_fit(512) == 512
    assert limits == [(1024, 1024)]  # the soft limit was raised to the hard one
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 256))
    assert server_module.connections_that_fit(512) == 256 - server_module.DESCRIPTOR_RESERVE


# --- one finding each, against the real server -----------------------------------------------


def test_long_url_is_refused_at_once_and_healthz_stays_fast(live: LiveServer) -> None:
    with connect(live) as sock, concurrent.futures.ThreadPoolExecutor(1) as pool:
        latency = pool.submit(lambda: max(healthz_seconds(live) for _ in range(5)))
        sent_for = send_until_refused(sock, b"GET /", b"a" * 65536, 16 << 20)
        assert_json_error(read_all(sock), 414, "uri_too_long")
        assert latency.result() < 1.0
    assert sent_for < 2.0  # refused at the limit, not after 16 MB


@pytest.mark.parametrize(
    ("first", "filler", "total"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", b"b" * 65536, 8 << 20),  # one huge header
        (b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-Many: y\r\n" * 5000, 550_000),  # 50,000 ones
    ],
    ids=["huge-header", "many-headers"],
)
def test_big_headers_are_refused_with_memory_bounded(
    live: LiveServer, first: bytes, filler: bytes, total: int
) -> None:
    def attack(_: int) -> bytes:
        with connect(live) as sock:
            send_until_refused(sock, first, filler, total)
            return read_all(sock)

    before = peak = rss(live)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(attack, i) for i in range(6)]  # six at once, as in the finding
        while not all(future.done() for future in futures):
            peak = max(peak, rss(live))
            time.sleep(0.01)
        for future in futures:
            assert_json_error(future.result(), 431, "headers_too_large")
    assert peak - before < 8 << 20, f"RSS grew by {(peak - before) >> 20} MB"
    assert healthz_seconds(live) < 1.0


def test_idle_connection_is_closed_silently_after_the_header_timeout(live: LiveServer) -> None:
    with connect(live) as sock:
        start = time.monotonic()
        assert read_all(sock) == b""  # closed without a word: it asked nothing
        assert 0.8 < time.monotonic() - start < 3


def drip(sock: socket.socket, first: bytes, piece: bytes, every: float, until: float) -> bytes:
    """Send ``first``, then ``piece`` every ``every`` seconds until the server answers."""
    sock.sendall(first)
    sock.settimeout(every)
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(piece)
            continue
        sock.settimeout(5)
        return data + read_all(sock)
    raise AssertionError(f"no answer within {until} s")


def test_slow_drip_headers_get_408(live: LiveServer) -> None:
    with connect(live) as sock:
        start = time.monotonic()
        data = drip(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n", 0.2, 5)
        assert_json_error(data, 408, "request_timeout")
        assert time.monotonic() - start < 2.5  # the 1 s header deadline, not the drip's pace


def test_slow_drip_body_gets_408(live: LiveServer) -> None:
    head = (
        b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
        b"content-length: 100000\r\n\r\n"
    )
    with connect(live) as sock:
        start = time.monotonic()
        assert_json_error(drip(sock, head, b"\x89PNG" * 4, 0.2, 6), 408, "request_timeout")
        assert time.monotonic() - start < 4  # the 2 s body deadline
    assert healthz_seconds(live) < 1.0


def test_connection_limit_answers_503_and_makes_room(tmp_path: Path) -> None:
    env = {"DIGITREC_MAX_CONNECTIONS": "8", "DIGITREC_HEADER_TIMEOUT_S": "3"}
    with running(tmp_path, env) as live:
        busy = [connect(live) for _ in range(8)]  # each is sending a request: none is idle
        for sock in busy:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.2)
        with connect(live) as extra:
            start = time.monotonic()
            assert_json_error(read_all(extra), 503, "busy")
            assert time.monotonic() - start < 1  # at once: it holds no descriptor
        for sock in busy:
            sock.close()
        idle = [connect(live) for _ in range(8)]  # idle ones are closed to make room
        time.sleep(0.2)
        predict_seven(live)
        for sock in idle:
            sock.close()
    log = live.log.read_text()
    assert "1 busy" in log and "idle_closed_for_room" in log, log[-2000:]


def limit_descriptors(soft_and_hard: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft_and_hard, soft_and_hard))

    return limit


def test_low_descriptor_limit_still_answers_with_300_idle_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `prlimit --nofile=256:256 digitrec serve`: the server fits its connections to
    the limit, so it never runs out of descriptors, and a real request gets through."""
    env = {"DIGITREC_HEADER_TIMEOUT_S": "10"}
    with running(tmp_path, env, preexec_fn=limit_descriptors(256)) as live:
        idle = []
        for _ in range(300):
            with contextlib.suppress(OSError):
                idle.append(connect(live))
        time.sleep(0.3)
        start = time.monotonic()
        predict_seven(live)
        assert healthz_seconds(live) < 1.0
        assert time.monotonic() - start < 3  # well before the idle ones time out
        for sock in idle:
            sock.close()
    log = live.log.read_text()
    assert "max_connections lowered from 512 to 192" in log, log[-2000:]
    assert "refused or closed" in log, log[-2000:]


def test_sighup_stops_one_worker_gracefully(tmp_path: Path) -> None:
    raw = big_photo()
    with running(tmp_path) as live:
        clients = [httpx.Client(base_url=live.url, timeout=30) for _ in range(4)]
        for client in clients:
            client.get("/healthz")  # the connection is accepted and kept alive

        def post(client: httpx.Client) -> int:
            response = client.post(PREDICT, content=raw, headers={"content-type": "image/jpeg"})
            return response.status_code if response.json().get("digit") == 3 else -1

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, client) for client in clients]
            time.sleep(0.15)  # every request is in; most are still being decoded
            live.process.send_signal(signal.SIGHUP)
            statuses = [future.result() for future in futures]
        code = live.process.wait(timeout=20)
        for client in clients:
            client.close()
    assert statuses == [200] * 4
    assert code == 0
    assert "stopped by SIGHUP after a graceful shutdown" in live.log.read_text()


def assert_refuses_long_urls(server: LiveServer) -> None:
    for _ in range(8):  # over a few connections, so both workers answer some
        with connect(server) as sock:
            sock.sendall(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert_json_error(read_all(sock), 414, "uri_too_long")


def workers(server: LiveServer) -> set[int]:
    """The live worker processes (not the resource tracker, not one already gone)."""
    alive = set()
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.Error):  # a worker that just exited is a zombie
            if "spawn_main" in " ".join(child.cmdline()):
                alive.add(child.pid)
    return alive


def test_sighup_restarts_two_workers_without_dropping_requests(tmp_path: Path) -> None:
    """uvicorn's supervisor takes SIGHUP as a rolling restart: each new worker is ready
    before the old one is told to stop, and the old one finishes what it holds. Every
    worker, old and new, has the limits set in the parent."""
    raw = (GOLDEN / "canvas_transparent_7.png").read_bytes()
    env = {"DIGITREC_MAX_URL_BYTES": "1024"}
    with running(tmp_path, env, args=("--workers", "2")) as live:
        before = workers(live)
        assert len(before) == 2
        assert_refuses_long_urls(live)
        results: list[int | str] = []
        stop = threading.Event()

        def keep_predicting() -> None:
            with httpx.Client(base_url=live.url, timeout=10) as http:
                while not stop.is_set():
                    try:
                        response = http.post(
                            PREDICT, content=raw, headers={"content-type": "image/png"}
                        )
                        results.append(response.status_code)
                    except httpx.HTTPError as exc:
                        results.append(type(exc).__name__)

        threads = [threading.Thread(target=keep_predicting, daemon=True) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            live.process.send_signal(signal.SIGHUP)
            # Each new worker loads its model and starts its sandbox before the old one
            # is told to stop: seconds each, far more on a machine busy with other tests.
            deadline = time.monotonic() + 90
            while before & workers(live):
                assert time.monotonic() < deadline, "the old workers were not replaced"
                time.sleep(0.1)
            time.sleep(0.3)
            assert live.process.poll() is None  # still serving
            assert_refuses_long_urls(live)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert results and set(results) == {200}, sorted(map(str, set(results)))


def test_sigterm_answers_slow_clients_503_and_exits_at_once(tmp_path: Path) -> None:
    """A client still sending its headers or body gets 503 and the server exits in about
    a second, not after the 15 s grace period with a text/plain 500."""
    head = (
        b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
        b"content-length: 100000\r\n\r\n"
    )
    env = {"DIGITREC_HEADER_TIMEOUT_S": "30", "DIGITREC_BODY_TIMEOUT_S": "30"}
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(running(tmp_path, env))
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(2))
        body_sock, head_sock, idle = (stack.enter_context(connect(live)) for _ in range(3))
        slow_body = pool.submit(drip, body_sock, head, b"\x89PNG", 0.2, 10)
        slow_head = pool.submit(drip, head_sock, b"GET / HTTP/1.1\r\n", b"X-a: b\r\n", 0.2, 10)
        time.sleep(0.5)
        start = time.monotonic()
        live.process.send_signal(signal.SIGTERM)
        assert read_all(idle) == b""  # idle: closed within the stop window, silently
        code = live.process.wait(timeout=10)
        seconds = time.monotonic() - start
        assert_json_error(slow_body.result(), 503, "busy")
        assert_json_error(slow_head.result(), 503, "busy")
    assert code == 0 and seconds < 4, (code, seconds)


def test_a_body_in_tiny_chunks_is_refused_at_the_chunk_limit(live: LiveServer) -> None:
    """1.6 MB in 1-byte chunks cost 0.4 s of the event loop; a body may come in at most
    MAX_BODY_CHUNKS chunks, so such a request stops costing at the limit."""
    from digitrec.api.protocol import MAX_BODY_CHUNKS

    head = (
        b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    with connect(live) as sock:
        send_until_refused(sock, head, b"1\r\nx\r\n" * 4096, (MAX_BODY_CHUNKS * 4) * 6)
        assert_json_error(read_all(sock), 400, "too_many_chunks")
    raw = (GOLDEN / "canvas_transparent_7.png").read_bytes()
    pieces = iter([raw[i : i + 64] for i in range(0, len(raw), 64)])  # sent chunked
    response = httpx.post(
        f"{live.url}{PREDICT}", content=pieces, headers={"content-type": "image/png"}, timeout=10
    )
    assert response.status_code == 200 and response.json()["digit"] == 7, response.text
