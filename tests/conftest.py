"""Shared fixtures: settings in a temporary home, real MNIST (cached), the shipped model,
the app over a test client, and images made on the fly."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitrec.api import create_app
from digitrec.config import Settings
from digitrec.data import Mnist, load_mnist
from digitrec.db import Database
from digitrec.feedback import PredictionLog, PredictionRecord, new_prediction_id
from digitrec.predict import Predictor
from digitrec.registry import BUNDLED_ROOT, ModelEntry, Registry
from tests.handwriting import Point, traced

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
MNIST_CACHE = Settings().data_dir  # the user's MNIST cache: fetched once, reused


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings rooted in a temporary folder; MNIST from the shared cache."""
    return Settings(
        home=tmp_path / "home",
        data_dir=MNIST_CACHE,
        rate_limit_per_minute=0,
        web_rate_limit_per_minute=0,
    )


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    """The real MNIST, fetched and verified on first use, then read from the cache."""
    return load_mnist(Settings(data_dir=MNIST_CACHE), progress=False)


@pytest.fixture(scope="session")
def bundled_entry() -> ModelEntry:
    """The default model that ships with digitrec (trained by the default recipe)."""
    return Registry(BUNDLED_ROOT, extra_roots=()).resolve()


@pytest.fixture(scope="session")
def predictor(bundled_entry: ModelEntry) -> Predictor:
    return Predictor(bundled_entry, backend="onnx", threads=1)


@pytest.fixture
def client(settings: Settings, predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(create_app(settings, predictor)) as test_client:
        yield test_client


def reload_keys(client: TestClient) -> None:
    """Make the app read the API keys now (a server does every ``keys_refresh_s``)."""
    client.app.state.access.keys.refresh()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def encode(img: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def mnist_png(mnist: Mnist, index: int, scale: int = 1, invert: bool = False) -> bytes:
    digit = mnist.test_images[index]
    img = Image.fromarray(255 - digit if invert else digit)
    if scale != 1:
        img = img.resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    return encode(img)


def stroke_image(
    size: int = 280,
    *,
    box: tuple[int, int, int, int] = (100, 60, 130, 220),
    ink: int = 0,
    paper: int = 255,
) -> np.ndarray:
    """A synthetic 'digit': one filled rectangle (a '1'-like bar) on plain paper."""
    a = np.full((size, size), paper, dtype=np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = ink
    return a


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


# --- the command line, as a user runs it ------------------------------------------------------


def run_cli(
    *args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`digitrec ARGS...` in a subprocess with its home in ``home`` and MNIST from the
    shared cache; ``env`` adds or overrides DIGITREC_* variables."""
    import subprocess
    import sys

    full_env = {
        **os.environ,
        "DIGITREC_HOME": str(home),
        "DIGITREC_DATA_DIR": str(MNIST_CACHE),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "digitrec.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- a real server process on loopback ------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """`digitrec serve` in a subprocess on 127.0.0.1, stopped with SIGTERM."""

    def __init__(
        self,
        home: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        preexec_fn: Callable[[], None] | None = None,  # e.g. resource limits for the server
    ) -> None:
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "server.log"
        home.mkdir(parents=True, exist_ok=True)
        full_env = {
            **os.environ,
            "DIGITREC_HOME": str(home),
            "DIGITREC_DATA_DIR": str(MNIST_CACHE),
            "DIGITREC_SHUTDOWN_DELAY_S": "0",  # stop at once unless a test is about the delay
            **(env or {}),
        }
        self._command = [
            sys.executable,
            "-m",
            "digitrec.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
        ]
        self._env = full_env
        self._preexec_fn = preexec_fn
        self._log_file = self.log.open("wb")
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        import subprocess

        return subprocess.Popen(
            self._command,
            env=self._env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=self._preexec_fn,
        )

    def start_again(self) -> None:
        """After ``stop()``: the same server again, on the same port (an outage ends)."""
        self._log_file = self.log.open("ab")
        self.process = self._spawn()

    def wait_ready(self, timeout: float = 60) -> None:
        import time
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self, timeout: float = 30) -> int:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return int(self.process.returncode)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `digitrec serve` on loopback with the shipped model (shared by a module)."""
    server = LiveServer(
        tmp_path_factory.mktemp("live"),
        env={"DIGITREC_RATE_LIMIT_PER_MINUTE": "0", "DIGITREC_WEB_RATE_LIMIT_PER_MINUTE": "0"},
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def big_photo() -> bytes:
    """A 12-megapixel JPEG of a digit: slow enough to decode (~30 ms) to still be in flight."""
    golden = Path(__file__).parent / "golden" / "photo_paper_3.jpg"
    buffer = io.BytesIO()
    Image.open(golden).resize((4000, 3000), Image.Resampling.BILINEAR).save(
        buffer, "JPEG", quality=85
    )
    return buffer.getvalue()


# --- the lifecycle database: the same tests on SQLite and on a real PostgreSQL 15 -----------------

PG_BIN = Path(os.environ.get("DIGITREC_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresServer:
    """A throw-away PostgreSQL on 127.0.0.1: trust auth on loopback only, fsync off.

    The server refuses to run as root, so as root (here and in CI) ``initdb`` and
    ``pg_ctl`` run as the ``postgres`` system user through ``runuser``; its data folder is
    a fresh temporary folder owned by that user. ``database()`` gives each test its own
    database, dropped afterwards.
    """

    def __init__(self, bindir: Path) -> None:
        import tempfile

        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="digitrec-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.as_user: list[str] = []
        self.port = 0

    def _run(self, program: str, *args: str) -> None:
        import subprocess

        command = [*self.as_user, str(self.bindir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        for attempt in range(3):  # a free port may be taken by the time the server binds it
            self.port = free_port()
            try:
                self.resume()
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def resume(self) -> None:
        """Start the server (again, after ``halt``: same port, same data)."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")  # fmt: skip

    def halt(self) -> None:
        """Stop the server, keeping its data: an outage that ``resume`` ends."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        import shutil

        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database for one test; dropped (connections and all) afterwards."""
        import uuid

        name = f"test_{uuid.uuid4().hex[:12]}"
        self._admin(f"CREATE DATABASE {name}")
        try:
            yield self.url(name)
        finally:
            self._admin(f"DROP DATABASE {name} WITH (FORCE)")


def _postgres_missing() -> str | None:
    """Why no throw-away PostgreSQL can start here, or None."""
    import pwd
    import shutil

    if not (PG_BIN / "postgres").is_file():
        return f"no PostgreSQL server in {PG_BIN} (Debian: apt-get install postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    return None


def _require_postgres() -> None:
    reason = _postgres_missing()
    if reason:
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)


def _running_postgres() -> Iterator[PostgresServer]:
    _require_postgres()
    server = PostgresServer(PG_BIN)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """PostgreSQL 15 from the machine image, started once for the session."""
    yield from _running_postgres()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of one test's own, for tests that stop and start it."""
    yield from _running_postgres()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty lifecycle database: a SQLite file, then a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lifecycle.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.database() as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated lifecycle database (SQLite and PostgreSQL)."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


def prediction_record(**fields: Any) -> PredictionRecord:
    """An answer as the service logs it: a '7' with its input, unless told otherwise."""
    values: dict[str, Any] = {
        "id": new_prediction_id(),
        "created_at": datetime.now(UTC),
        "model": "digitnet:20261130-091026",
        "arm": None,
        "experiment_id": None,
        "client_hash": None,
        "digit": 7,
        "confidence": 0.9,
        "verdict": "digit",
        "probabilities": [0.01] * 7 + [0.9] + [0.01] * 2,
        "input": np.arange(784, dtype=np.uint16).reshape(28, 28).astype(np.uint8),
        "latency_ms": 5.0,
        "upload": None,
    }
    return PredictionRecord(**{**values, **fields})


def store_answers(db: Database, records: list[PredictionRecord]) -> None:
    """Write answers through a PredictionLog, as the service does."""
    log = PredictionLog(db, batch_size=1000)
    for record in records:
        log.add(record)
    log.stop()  # never started: writes the queue here


# --- Redis: the rate limits that workers and replicas share ---------------------------------------


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1: no persistence, its own folder (removed
    by ``stop``). ``stop`` and ``start`` again give an outage that ends, on the same port
    (with empty data)."""

    def __init__(self, base: Path | None = None) -> None:
        import tempfile

        self.base = base or Path(tempfile.mkdtemp(prefix="digitrec-redis-"))
        self.log = self.base / "redis.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        import socket

        self.base.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.base),
            "--logfile", str(self.log),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise RuntimeError(f"redis-server did not start: {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        import shutil

        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh Redis for one test (it starts in milliseconds); skipped where
    redis-server is not installed, except in CI."""
    import shutil

    if shutil.which("redis-server") is None:
        reason = "redis-server is not installed (Debian: apt-get install redis-server)"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- Prometheus scrapes ---------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus scrape, read with the client's own parser, keyed by
    (sample name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def total(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sum over the series of ``metric`` that carry ``labels`` (and any others)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and wanted <= ls)


# --- the web page in a real browser (Debian's Chromium driven by Playwright) ----------------------
# Skipped when /usr/bin/chromium is missing, unless DIGITREC_REQUIRE_BROWSER=1 (CI).

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {
    "viewport": {"width": 375, "height": 667},
    "device_scale_factor": 2,
    "has_touch": True,
    "is_mobile": True,
}
TIMEOUT_MS = 10_000  # for any one wait: a page answers in well under a second
BLANK = "Draw a digit from 0 to 9 in the box."
# Reports every CSP violation as a console error, which the session then collects.
REPORT_CSP = """document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));"""


def require_chromium() -> None:
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "Python Playwright is not installed"
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests"
    if reason is not None:
        if os.environ.get("DIGITREC_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DIGITREC_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
            expect.set_options(timeout=None)  # back to Playwright's default


class Tab:
    """One page of the app, with what went wrong in its console and its API calls."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        self.predictions: list[str] = []  # URLs of POST /api/v1/predict, in order
        self.allowed: list[re.Pattern[str]] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not any(p.search(message.text) for p in self.allowed):
            self.problems.append(f"console: {message.text}")

    def _request(self, request: Any) -> None:
        if request.method == "POST" and "/api/v1/predict" in request.url:
            self.predictions.append(request.url)

    def allow(self, pattern: str) -> None:
        """Console errors matching ``pattern`` are expected (the test provokes them)."""
        self.allowed.append(re.compile(pattern))

    def box(self) -> dict[str, float]:
        box = self.page.locator("#canvas").bounding_box()
        assert box is not None, "the canvas is not displayed"
        return box

    def to_page(self, stroke: list[Point]) -> list[Point]:
        box = self.box()
        return [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]

    def draw(self, strokes: list[list[Point]], seed: int = 0) -> int:
        """Write with the mouse, stroke by stroke. Returns how many predictions the page
        had asked for before the pen was lifted for the last time."""
        mouse = self.page.mouse
        asked = len(self.predictions)
        for stroke in traced(strokes, seed=seed):
            points = self.to_page(stroke)
            mouse.move(*points[0])
            mouse.down()
            for x, y in points[1:]:
                mouse.move(x, y)
            asked = len(self.predictions)
            mouse.up()
        return asked

    def read(self, strokes: list[list[Point]], seed: int = 0) -> str:
        """Draw on a clear pad and wait for the answer to the whole drawing. Returns the
        digit the page reads, or the verdict (or error) it shows instead."""
        from playwright.sync_api import expect

        self.page.keyboard.press("Escape")
        self.expect_blank()
        asked = self.draw(strokes, seed=seed)
        self.wait_until(lambda: len(self.predictions) > asked)  # the last lift's request
        answer = self.page.locator("#answer")
        expect(answer).to_have_attribute("aria-busy", "false")
        verdict = answer.get_attribute("data-verdict")
        if verdict == "digit":
            return self.page.locator("#digit").inner_text()
        return verdict or f"error: {self.page.locator('#message').inner_text()}"

    def touch(self, strokes: list[list[Point]], seed: int = 0) -> None:
        """Write with a finger: real touch input through the browser's input pipeline."""
        cdp = self.page.context.new_cdp_session(self.page)
        for stroke in traced(strokes, seed=seed):
            points = self.to_page(stroke)
            for i, (x, y) in enumerate(points):
                kind = "touchStart" if i == 0 else "touchMove"
                cdp.send(
                    "Input.dispatchTouchEvent",
                    {
                        "type": kind,
                        "touchPoints": [
                            {"x": x, "y": y, "id": 1, "radiusX": 6, "radiusY": 6, "force": 1}
                        ],
                    },
                )
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        cdp.detach()

    def expect_digit(self, digit: str) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#digit")).to_have_text(digit)
        expect(self.page.locator("#top .bar")).to_have_count(3)

    def expect_blank(self) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#message")).to_have_text(BLANK)
        expect(self.page.locator("#digit")).to_have_text("?")
        expect(self.page.locator("#top .bar")).to_have_count(0)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5) -> None:
        """Wait, letting Playwright deliver events, until ``condition()`` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            self.page.wait_for_timeout(20)


@pytest.fixture
def open_tab(browser: Any, live_server: LiveServer) -> Iterator[Callable[..., Tab]]:
    """Opens the app in a fresh browser context; on teardown, no console errors allowed."""
    tabs: list[Tab] = []

    def open_(url: str = live_server.url, **context: Any) -> Tab:
        page = browser.new_context(**{**DESKTOP, **context}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.add_init_script(REPORT_CSP)
        tab = Tab(page)
        tabs.append(tab)
        page.goto(url)
        page.locator("#model-accuracy").filter(has_text=re.compile(r"\d")).wait_for()
        return tab

    yield open_
    problems = [p for tab in tabs for p in tab.problems]
    for tab in tabs:
        tab.page.context.close()
    assert not problems, problems
