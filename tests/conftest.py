"""Shared fixtures: settings in a temporary home, real MNIST (cached), the shipped model,
the app over a test client, and images made on the fly."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
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
    return Settings(home=tmp_path / "home", data_dir=MNIST_CACHE, rate_limit_per_minute=0,
                    web_rate_limit_per_minute=0)


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


def stroke_image(size: int = 280, *, box: tuple[int, int, int, int] = (100, 60, 130, 220),
                 ink: int = 0, paper: int = 255) -> np.ndarray:
    """A synthetic 'digit': one filled rectangle (a '1'-like bar) on plain paper."""
    a = np.full((size, size), paper, dtype=np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = ink
    return a


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
