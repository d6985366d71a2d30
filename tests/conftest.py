"""Shared fixtures: settings in a temporary home, real MNIST (cached), the shipped model,
the app over a test client, and images made on the fly."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitrec.api import create_app
from digitrec.config import Settings
from digitrec.data import Mnist, load_mnist
from digitrec.predict import Predictor
from digitrec.registry import BUNDLED_ROOT, ModelEntry, Registry

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
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "server.log"
        home.mkdir(parents=True, exist_ok=True)
        full_env = {
            **os.environ,
            "DIGITREC_HOME": str(home),
            "DIGITREC_DATA_DIR": str(MNIST_CACHE),
            **(env or {}),
        }
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "digitrec.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *args,
            ],
            env=full_env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

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
