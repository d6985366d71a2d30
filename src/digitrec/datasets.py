"""Datasets of digits besides MNIST: import them, store them verified, load them to train.

No handwritten dataset of other scripts can be downloaded here, and the good ones are
published under their own terms, so a user imports what they have:

- ``idx``: train/test image and label IDX files, plain or gzipped (MNIST's layout, and
  MADBase's), found by their names in a folder or named one by one;
- ``csv``: a header row, a label column and one column per pixel of a square image
  (Kannada-MNIST's ``train.csv``): a folder with ``train.csv`` and ``test.csv``, or one
  file (with ``--test-file``, or split by ``--test-share``); read in chunks, never whole;
- ``imagefolder``: ``PATH/<digit>/*.png|jpg|...``, or ``PATH/train/<digit>/`` and
  ``PATH/test/<digit>/``: each file decoded and prepared exactly as a served upload is
  (``preprocess.decode`` with the upload limits, then ``prepare``), so training sees what
  serving will.

**What the model sees.** Arrays from IDX and CSV that are already in MNIST's layout --
28x28 with a dark border (white ink on black), as MNIST, Kannada-MNIST and MADBase are --
are kept byte for byte: the layout step would only soften them. Any other array (another
size, or dark ink on light paper as in scans) goes through the serving layout
(``preprocess.prepare``: ink map with polarity detection, digit fitted into 20x20 and
centred by mass in 28x28), as would an image folder's files; ``--relayout`` sends 28x28
arrays that way too (digits that fill their frame, say). An image found blank there is
left out and counted in the manifest (``layout.skipped_blank``).

**The store.** ``<datasets_dir>/NAME/`` holds the four arrays as uncompressed IDX files
under MNIST's names (so a stored dataset is itself importable) and ``dataset.json``: name,
script, source format and path, counts per split and per digit, the SHA-256 of each file,
creation time and digitrec version. A dataset is written into a temporary folder that is
renamed into place (``storage.atomic_directory``): a failed import leaves nothing, and
``--force`` replaces an old one only once the new one is whole. Every load checks the
hashes. Any producer of arrays stores through ``save_dataset`` the same way, saying in
``source`` (free-form, but for its ``format`` and ``path``) what it drew from: the font
renderer (``script_digits``, format ``generated``) records its seed, counts and the font
families it trained on and held out there.

``load_dataset`` is what training reads: MNIST for the name ``mnist``, else the stored
dataset, both as a ``Dataset`` (an ``Mnist`` with its provenance for the model manifest).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from digitrec import __version__
from digitrec.config import DATASET_NAME_PATTERN, MNIST, Settings
from digitrec.data import (
    MNIST_FILES,
    Mnist,
    cached_status,
    encode_idx,
    load_mnist,
    maybe_gunzip,
    parse_idx,
)
from digitrec.errors import BlankImage, DataUnavailable, DigitrecError, InvalidRequest
from digitrec.preprocess import Limits, decode, prepare
from digitrec.scripts import SCRIPTS, check_script
from digitrec.storage import (
    atomic_directory,
    atomic_write_json,
    remove_stale_temporaries,
    sha256_file,
    storage_errors,
)

log = logging.getLogger(__name__)

MANIFEST = "dataset.json"
FORMATS = ("idx", "csv", "imagefolder")
SIDE = 28  # side of a stored image: the model input's (preprocess.PreprocessSpec.size)
DIGITS = 10
SPLITS = ("train", "test")
# Stored files, under MNIST's names: (split, what) -> file name.
FILES: dict[tuple[str, str], str] = dict(
    zip([(s, w) for s in SPLITS for w in ("images", "labels")], MNIST_FILES, strict=True)
)
CSV_CHUNK_ROWS = 2048  # CSV rows parsed at a time: memory stays that of the arrays
TEST_SHARE_SEED = 20240229  # the fixed seed of a --test-share split
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

Split = tuple[np.ndarray, np.ndarray]  # images uint8 (N, h, w), labels uint8 (N,)


class InvalidDataset(InvalidRequest):
    """An import source that cannot become a dataset: missing or malformed files,
    labels outside 0-9, ragged rows, empty classes."""

    code = "invalid_dataset"


@dataclass(frozen=True)
class Dataset(Mnist):
    """A dataset's splits as ``Mnist`` holds MNIST's, with what the model manifest says of it."""

    name: str = MNIST
    script: str = "latin"
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportOptions:
    """How to read a source; each field is a `digitrec data import` flag."""

    label_column: str = "label"  # csv: the column holding the digit
    test_file: Path | None = None  # csv: the test split's file when PATH is one file
    idx_files: dict[str, Path] = field(default_factory=dict)  # idx: FILES name -> path
    test_share: float | None = None  # share of a source without a test split held out
    relayout: bool = False  # 28x28 arrays in MNIST layout go through the layout step too


@dataclass
class Source:
    """What an importer read: the splits (test None when the source has none), raw."""

    train: Split
    test: Split | None
    files: list[str]
    prepared: bool = False  # images already prepared by the serving path (imagefolder)
    skipped_blank: int = 0


# --- names and paths -----------------------------------------------------------------------


def check_name(name: str) -> str:
    if name == MNIST:
        raise InvalidRequest("'mnist' is MNIST itself (digitrec data fetch); choose another name")
    if not re.match(DATASET_NAME_PATTERN, name):
        raise InvalidRequest(
            f"bad dataset name {name!r}: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    return name


def dataset_dir(settings: Settings, name: str) -> Path:
    return settings.datasets_path / check_name(name)


# --- reading sources -------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return maybe_gunzip(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise InvalidDataset(f"cannot read {path}: {exc}") from None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        array = parse_idx(_read_bytes(path))
    except ValueError as exc:
        raise InvalidDataset(f"{path}: {exc}") from None
    if array.ndim != ndim:
        what = "images (N x height x width)" if ndim == 3 else "labels (N)"
        raise InvalidDataset(f"{path}: {array.ndim} dimensions, expected {what}")
    return array


def _find_idx(folder: Path, split: str, what: str) -> Path:
    """The one file in ``folder`` whose name says split (train; test or t10k) and kind
    (images or idx3; labels or idx1), whatever the separators and a .gz suffix."""
    words = ("test", "t10k") if split == "test" else ("train",)
    kinds = ("image", "idx3") if what == "images" else ("label", "idx1")
    found = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and any(w in p.name.lower() for w in words)
        and any(k in p.name.lower() for k in kinds)
    )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InvalidDataset(
            f"several {split} {what} files in {folder} ({names}); name one with --{split}-{what}"
        )
    if not found:
        raise InvalidDataset(
            f"no {split} {what} file in {folder} (e.g. {FILES[split, what]}[.gz]); "
            f"name it with --{split}-{what}"
        )
    return found[0]


def read_idx(path: Path, options: ImportOptions, settings: Settings) -> Source:
    """A folder of IDX files, or the files named in ``options.idx_files``."""
    if not path.is_dir():
        raise InvalidDataset(f"{path} is not a folder of IDX files")
    files: list[str] = []
    train = _read_idx_split(path, "train", options, files)
    named_test = any(options.idx_files.get(FILES["test", w]) for w in ("images", "labels"))
    if not named_test and options.test_share is not None:
        return Source(train, None, files)  # the test split is held out from train
    return Source(train, _read_idx_split(path, "test", options, files), files)


def _read_idx_split(path: Path, split: str, options: ImportOptions, files: list[str]) -> Split:
    paths = {
        w: options.idx_files.get(FILES[split, w]) or _find_idx(path, split, w)
        for w in ("images", "labels")
    }
    images, labels = _read_idx(paths["images"], 3), _read_idx(paths["labels"], 1)
    if len(images) != len(labels):
        raise InvalidDataset(
            f"{paths['images'].name} holds {len(images)} images but "
            f"{paths['labels'].name} {len(labels)} labels"
        )
    _check_labels(labels, paths["labels"])
    files += [str(p) for p in paths.values()]
    return images, labels


def _open_text(path: Path) -> IO[str]:
    try:
        with path.open("rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        if gz:
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise InvalidDataset(f"cannot read {path}: {exc.strerror or exc}") from None


def _chunks(lines: IO[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """(line number of the first, lines) for runs of ``size`` non-empty lines."""
    chunk: list[str] = []
    start = 2  # the header is line 1
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        if not chunk:
            start = number
        chunk.append(line)
        if len(chunk) == size:
            yield start, chunk
            chunk = []
    if chunk:
        yield start, chunk


def read_csv_file(path: Path, label_column: str) -> Split:
    """One CSV of a label column and square-many pixel columns, parsed ``CSV_CHUNK_ROWS``
    rows at a time by numpy (never a list of strings per cell)."""
    with _open_text(path) as fh:
        try:
            header = next(csv.reader([fh.readline()]))
        except (StopIteration, UnicodeDecodeError, csv.Error):
            header = []
        columns = [c.strip() for c in header]
        if label_column not in columns:
            shown = ", ".join(columns[:4]) + (", ..." if len(columns) > 4 else "")
            raise InvalidDataset(
                f"{path} has no column {label_column!r} (columns: {shown or 'none'}); "
                "name the label column with --label-column"
            )
        label_at, n_columns = columns.index(label_column), len(columns)
        side = math.isqrt(n_columns - 1)
        if side < 2 or side * side != n_columns - 1:
            raise InvalidDataset(
                f"{path} has {n_columns - 1} pixel columns, not a square number (784 = 28x28)"
            )
        pixels = [i for i in range(n_columns) if i != label_at]
        images, labels = [], []
        try:
            for first, lines in _chunks(fh, CSV_CHUNK_ROWS):
                values = _parse_rows(path, first, lines, n_columns)
                labels.append(values[:, label_at])
                images.append(values[:, pixels].astype(np.uint8).reshape(-1, side, side))
        except UnicodeDecodeError:
            raise InvalidDataset(f"{path} is not a UTF-8 text file") from None
    if not labels:
        raise InvalidDataset(f"{path} has a header but no rows")
    all_labels = np.concatenate(labels)
    _check_labels(all_labels, path)
    return np.concatenate(images), all_labels.astype(np.uint8)


def _parse_rows(path: Path, first: int, lines: list[str], n_columns: int) -> np.ndarray:
    for offset, line in enumerate(lines):
        if line.count(",") != n_columns - 1:
            found = line.count(",") + 1
            raise InvalidDataset(
                f"{path} line {first + offset} has {found} values; the header has {n_columns}"
            )
    try:
        values = np.loadtxt(lines, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError:
        for offset, line in enumerate(lines):  # find the line to name
            try:
                np.loadtxt([line], delimiter=",", dtype=np.int64)
            except ValueError:
                raise InvalidDataset(
                    f"{path} line {first + offset}: a value is not a whole number"
                ) from None
        raise  # pragma: no cover - the chunk failed, so one of its lines does
    if values.min() < 0 or values.max() > 255:
        bad = first + int(np.flatnonzero(((values < 0) | (values > 255)).any(1))[0])
        # Labels are checked apart (0-9); a pixel or label out of a byte is refused here.
        raise InvalidDataset(f"{path} line {bad}: a value outside 0-255")
    return values


def read_csv(path: Path, options: ImportOptions, settings: Settings) -> Source:
    """``train.csv`` and ``test.csv`` in a folder, or one file (and ``--test-file``)."""
    if path.is_dir():
        train_path, test_path = _csv_in(path, "train"), _csv_in(path, "test")
        if test_path is None and options.test_share is None:
            raise InvalidDataset(f"no test.csv in {path}; give --test-share to hold one out")
    else:
        train_path, test_path = path, options.test_file
    if train_path is None or not train_path.is_file():
        raise InvalidDataset(f"no such CSV file: {train_path or path / 'train.csv'}")
    train = read_csv_file(train_path, options.label_column)
    test = read_csv_file(test_path, options.label_column) if test_path else None
    return Source(train, test, [str(p) for p in (train_path, test_path) if p])


def _csv_in(folder: Path, split: str) -> Path | None:
    for name in (f"{split}.csv", f"{split}.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_imagefolder(path: Path, options: ImportOptions, settings: Settings) -> Source:
    """``PATH/<digit>/`` image files, or ``PATH/train/<digit>/`` and ``PATH/test/<digit>/``,
    each prepared as the server prepares an upload."""
    if not path.is_dir():
        raise InvalidDataset(f"{path} is not a folder of digit folders (0-9)")
    has_splits = (path / "train").is_dir() and (path / "test").is_dir()
    limits = Limits.from_settings(settings)
    source = Source(train=_empty(), test=None, files=[str(path)], prepared=True)
    for split in SPLITS if has_splits else ("train",):
        images, labels, blank = _read_digit_folders(path / split if has_splits else path, limits)
        setattr(source, split, (images, labels))
        source.skipped_blank += blank
    return source


def _read_digit_folders(folder: Path, limits: Limits) -> tuple[np.ndarray, np.ndarray, int]:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    stray = [p.name for p in entries if p.is_dir() and p.name not in map(str, range(DIGITS))]
    if stray:
        raise InvalidDataset(
            f"unexpected folder {stray[0]!r} in {folder}: label folders are named 0 to 9"
        )
    images, labels, blank = [], [], 0
    for digit in range(DIGITS):
        files = sorted(
            p
            for p in (folder / str(digit)).glob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise InvalidDataset(f"no images of {digit} in {folder / str(digit)}")
        for file in files:
            try:
                if file.stat().st_size > limits.max_bytes:
                    raise InvalidRequest(f"over the upload limit of {limits.max_bytes} bytes")
                images.append(prepare(decode(file.read_bytes(), limits)).image)
                labels.append(digit)
            except BlankImage:
                blank += 1
            except DigitrecError as exc:
                raise InvalidDataset(f"{file}: {exc.message}") from None
            except OSError as exc:
                raise InvalidDataset(f"cannot read {file}: {exc.strerror or exc}") from None
    return np.stack(images), np.asarray(labels, np.uint8), blank


def _empty() -> Split:
    return np.zeros((0, SIDE, SIDE), np.uint8), np.zeros(0, np.uint8)


IMPORTERS = {"idx": read_idx, "csv": read_csv, "imagefolder": read_imagefolder}


# --- turning a source into a dataset ------------------------------------------------------


def _check_labels(labels: np.ndarray, where: Path) -> None:
    bad = np.unique(labels[(labels < 0) | (labels >= DIGITS)])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5])
        raise InvalidDataset(f"{where}: labels outside 0-9 ({shown})")


def in_mnist_layout(images: np.ndarray) -> np.ndarray:
    """Per image: 28x28 with a dark border (the median of its edge pixels below half)."""
    if images.shape[1:] != (SIDE, SIDE):
        return np.zeros(len(images), bool)
    edges = np.concatenate(
        [images[:, 0, :], images[:, -1, :], images[:, :, 0], images[:, :, -1]], axis=1
    )
    return np.asarray(np.median(edges, axis=1) < 128)


def to_layout(split: Split, relayout: bool) -> tuple[Split, dict[str, int]]:
    """Images in MNIST layout kept, the others prepared by the serving path; blanks dropped."""
    images, labels = split
    keep = in_mnist_layout(images) & (not relayout)
    out = np.empty((len(images), SIDE, SIDE), np.uint8)
    if keep.any():  # (only 28x28 images can be kept)
        out[keep] = images[keep]
    ok = keep.copy()
    for i in np.flatnonzero(~keep):
        try:
            out[i] = prepare(Image.fromarray(images[i])).image
            ok[i] = True
        except BlankImage:
            continue
    counts = {"kept": int(keep.sum()), "prepared": int(ok.sum() - keep.sum())}
    counts["skipped_blank"] = len(images) - int(ok.sum())
    return (out[ok], labels[ok].astype(np.uint8)), counts


def hold_out(split: Split, share: float) -> tuple[Split, Split]:
    """A deterministic test split: ``share`` of each digit's images (at least one, when it
    has two or more), chosen with a fixed seed; order otherwise kept."""
    images, labels = split
    rng = np.random.default_rng(TEST_SHARE_SEED)
    test = np.zeros(len(labels), bool)
    for digit in range(DIGITS):
        idx = np.flatnonzero(labels == digit)
        n = min(max(round(len(idx) * share), 1), len(idx) - 1) if len(idx) > 1 else 0
        test[rng.permutation(idx)[:n]] = True
    return (images[~test], labels[~test]), (images[test], labels[test])


def _check_classes(splits: dict[str, Split]) -> None:
    for name, (_, labels) in splits.items():
        missing = [d for d in range(DIGITS) if not (labels == d).any()]
        if missing:
            digits = ", ".join(map(str, missing))
            raise InvalidDataset(f"the {name} split has no images of {digits}")


def import_dataset(
    settings: Settings,
    fmt: str,
    path: Path,
    name: str,
    script: str,
    options: ImportOptions = ImportOptions(),
    force: bool = False,
) -> dict[str, Any]:
    """`digitrec data import`: read ``path`` as ``fmt``, lay it out, store it; the manifest."""
    check_name(name)
    check_script(script)
    if fmt not in IMPORTERS:
        raise InvalidRequest(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    refuse_existing(settings, name, force)
    remove_stale_temporaries(settings.datasets_path, name)  # of an import killed mid-way
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise InvalidDataset(f"no such file or folder: {path}")
    source = IMPORTERS[fmt](path, options, settings)
    if source.test is None:
        if options.test_share is None:
            raise InvalidDataset(f"{path} has no test split; give --test-share to hold one out")
        source.train, source.test = hold_out(source.train, options.test_share)
    layout = {"kept": 0, "prepared": 0, "skipped_blank": source.skipped_blank}
    splits: dict[str, Split] = {}
    for split, raw in (("train", source.train), ("test", source.test)):
        if source.prepared:
            splits[split] = raw
            layout["prepared"] += len(raw[1])
            continue
        splits[split], counts = to_layout(raw, options.relayout)
        layout = {k: layout[k] + counts[k] for k in layout}
    _check_classes(splits)
    described = {
        "format": fmt,
        "path": str(path),
        "files": source.files,
        "options": {
            "label_column": options.label_column if fmt == "csv" else None,
            "test_share": options.test_share,
            "relayout": options.relayout,
        },
    }
    return save_dataset(settings, name, script, splits, described, layout, force=force)


# --- the store ------------------------------------------------------------------------------


def refuse_existing(settings: Settings, name: str, force: bool) -> None:
    """Refuse to overwrite dataset ``name`` unless ``force``: checked before the work of
    making a new one, and again when it is stored."""
    target = dataset_dir(settings, name)
    if target.exists() and not force:
        raise InvalidRequest(
            f"dataset {name!r} already exists ({target}); --force replaces it", code="exists"
        )


def save_dataset(
    settings: Settings,
    name: str,
    script: str,
    splits: dict[str, Split],
    source: dict[str, Any],
    layout: dict[str, int] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Store 28x28 uint8 splits under ``name`` with their manifest, all or nothing."""
    target = dataset_dir(settings, name)
    check_script(script)
    aside: Path | None = None
    try:
        with atomic_directory(target) as tmp:
            manifest = _write(tmp, name, script, splits, source, layout or {})
            if target.exists():
                refuse_existing(settings, name, force)  # made meanwhile by another process
                aside = target.with_name(f".{name}.replaced.tmp")
                with storage_errors(str(target)):
                    target.rename(aside)
    except BaseException:
        if aside is not None and not target.exists():
            aside.rename(target)  # the new one did not take its place: the old one stays
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    log.info("dataset %s stored in %s", name, target)
    return manifest


def _write(
    folder: Path,
    name: str,
    script: str,
    splits: dict[str, Split],
    source: dict[str, Any],
    layout: dict[str, int],
) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    counts: dict[str, Any] = {}
    for split in SPLITS:
        images, labels = splits[split]
        if images.dtype != np.uint8 or images.shape[1:] != (SIDE, SIDE):
            raise ValueError(f"{split} images must be uint8 N x {SIDE} x {SIDE}")
        counts[split] = {
            "count": len(labels),
            "per_label": np.bincount(labels, minlength=DIGITS).tolist(),
        }
        for what, array in (("images", images), ("labels", labels)):
            file = FILES[split, what]
            with storage_errors(str(folder / file)):
                (folder / file).write_bytes(encode_idx(np.ascontiguousarray(array, np.uint8)))
            files[file] = {"sha256": sha256_file(folder / file), "shape": list(array.shape)}
    manifest = {
        "format": 1,
        "name": name,
        "script": script,
        "digit_zero": f"U+{SCRIPTS[script]:04X}",
        "source": source,
        "layout": layout,
        "splits": counts,
        "files": files,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "digitrec": __version__,
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(settings: Settings, name: str) -> dict[str, Any]:
    folder = dataset_dir(settings, name)
    try:
        return dict(json.loads((folder / MANIFEST).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise DataUnavailable(
            f"no dataset {name!r} in {settings.datasets_path} (digitrec data list shows them; "
            "digitrec data import adds one)"
        ) from None
    except (OSError, ValueError) as exc:
        raise DataUnavailable(f"dataset {name!r}: unreadable {MANIFEST} ({exc})") from None


def verify(settings: Settings, name: str) -> dict[str, Any]:
    """The manifest, once every file's SHA-256 matches it; else a clear error."""
    manifest = read_manifest(settings, name)
    folder = dataset_dir(settings, name)
    for file, expected in manifest["files"].items():
        path = folder / file
        if not path.is_file():
            raise DataUnavailable(f"dataset {name!r} is missing {file}; import it again")
        if sha256_file(path) != expected["sha256"]:
            raise DataUnavailable(
                f"dataset {name!r}: {file} does not match its manifest (SHA-256 differs); "
                "it was changed or damaged: import it again with --force"
            )
    return manifest


def load_dataset(settings: Settings, name: str | None = None, *, progress: bool = True) -> Dataset:
    """The dataset training uses (``settings.dataset`` unless ``name``): MNIST, fetched if
    need be, or a stored dataset, verified."""
    name = name or settings.dataset
    if name == MNIST:
        mnist = load_mnist(settings, progress=progress)
        return Dataset(**vars(mnist), provenance=mnist_provenance())
    manifest = verify(settings, name)
    folder = dataset_dir(settings, name)
    arrays = {key: parse_idx((folder / file).read_bytes()) for key, file in FILES.items()}
    return Dataset(
        train_images=arrays["train", "images"],
        train_labels=arrays["train", "labels"],
        test_images=arrays["test", "images"],
        test_labels=arrays["test", "labels"],
        name=name,
        script=manifest["script"],
        provenance={
            "source": f"dataset {name} ({manifest['source']['format']})",
            "sha256": {file: f["sha256"] for file, f in manifest["files"].items()},
        },
    )


def mnist_provenance() -> dict[str, Any]:
    return {"source": "MNIST", "md5": dict(MNIST_FILES)}


def data_section(data: Mnist) -> dict[str, Any]:
    """The model manifest's account of its data: name, script, source and hashes."""
    if isinstance(data, Dataset):
        return {"dataset": data.name, "script": data.script, **data.provenance}
    return {"dataset": MNIST, "script": "latin", **mnist_provenance()}  # arrays given directly


def dataset_of(manifest: dict[str, Any]) -> str:
    """The dataset a model was trained on (models from before datasets: MNIST)."""
    return str(manifest.get("data", {}).get("dataset", MNIST))


# --- list, show, remove ------------------------------------------------------------------------


def list_datasets(settings: Settings) -> list[dict[str, Any]]:
    """MNIST's cache state, then one row per stored dataset (unverified: `show` checks)."""
    rows: list[dict[str, Any]] = [
        {
            "name": MNIST,
            "script": "latin",
            "format": "idx",
            "ready": all(cached_status(settings.data_dir).values()),
            "path": str(settings.data_dir),
        }
    ]
    root = settings.datasets_path
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        row: dict[str, Any] = {"name": folder.name, "path": str(folder)}
        try:
            m = read_manifest(settings, folder.name)
            row.update(
                script=m["script"],
                format=m["source"]["format"],
                train=m["splits"]["train"]["count"],
                test=m["splits"]["test"]["count"],
                created_at=m["created_at"],
                ready=True,
            )
        except (DigitrecError, KeyError, TypeError) as exc:
            row.update(ready=False, error=getattr(exc, "message", "manifest incomplete"))
        rows.append(row)
    return rows


def show_dataset(settings: Settings, name: str) -> dict[str, Any]:
    """The manifest of a stored dataset, with its files checked."""
    return {**verify(settings, name), "path": str(dataset_dir(settings, name)), "verified": True}


def remove_dataset(settings: Settings, name: str) -> Path:
    folder = dataset_dir(settings, name)
    if not folder.is_dir():
        raise DataUnavailable(f"no dataset {name!r} in {settings.datasets_path}")
    aside = folder.with_name(f".{name}.removed.tmp")
    with storage_errors(str(folder)):
        folder.rename(aside)  # gone at once for every reader, then deleted
    shutil.rmtree(aside, ignore_errors=True)
    return folder
