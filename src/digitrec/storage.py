"""Atomic file writes: every file digitrec writes appears whole or not at all.

Data is written to a temporary file in the destination folder, flushed and fsynced,
then renamed over the target. The temporary file has its final mode before any data is
written, so a secret written with ``mode=0o600`` is never readable by others, not even
for a moment. A full disk or a read-only folder becomes a ``StorageError`` and leaves
whatever was there before untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from digitrec.errors import StorageError


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn OS write failures into one clear StorageError."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StorageError(f"could not write {what}: {reason}") from exc


def atomic_write(path: Path, write: Callable[[Path], object], mode: int | None = None) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``.

    ``mode`` is the file's permission bits (e.g. ``0o600`` for secrets), set on the empty
    temporary file before ``write`` runs; by default the usual ``0o666`` less the umask.
    """
    path = Path(path)
    final_mode = 0o666 & ~_UMASK if mode is None else mode
    with storage_errors(str(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            try:
                os.fchmod(fd, final_mode)  # mkstemp makes 0600; set the final mode while empty
            finally:
                os.close(fd)
            write(tmp)
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), mode)


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode)


def atomic_write_json(path: Path, obj: Any, mode: int | None = None) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write_text(path, text, mode)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to ``target``.

    The target must not exist yet. On any failure the temporary folder is removed.
    """
    target = Path(target)
    with storage_errors(str(target)):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        with storage_errors(str(target)):
            if target.exists():
                raise FileExistsError(17, "already exists", str(target))
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(folder: Path, name: str = "*") -> int:
    """Delete ``.NAME.*.tmp`` leftovers of writes killed mid-way (e.g. by SIGKILL).

    Only call it for files this process owns (a run's own folder or names), never for
    names another process may be writing right now.
    """
    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(f".{name}.*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed
