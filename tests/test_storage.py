"""Atomic writes: a file appears whole or not at all, with its mode before any data, and
an OS failure is one StorageError that leaves the old file untouched."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from digitrec.errors import StorageError
from digitrec.storage import (
    atomic_directory,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    md5_file,
    remove_stale_temporaries,
    sha256_file,
    storage_errors,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_writers_replace_the_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "f.txt"  # missing folders are made
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    atomic_write_json(target, {"a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert listing(target.parent) == ["f.txt"]


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.json"
    target.write_text("old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["model.json"]


def test_a_full_disk_is_a_storage_error_and_the_old_file_stays(tmp_path: Path) -> None:
    target = tmp_path / "keys.json"
    target.write_text("old")

    def disk_full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError, match=r"could not write .*keys\.json: No space left") as err:
        atomic_write(target, disk_full)
    assert isinstance(err.value.__cause__, OSError)
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["keys.json"]


@pytest.mark.parametrize("wanted", [0o600, 0o640], ids=["0600", "0640"])
def test_the_mode_is_set_before_any_data_is_written(tmp_path: Path, wanted: int) -> None:
    seen: list[tuple[int, int]] = []

    def write(tmp: Path) -> None:
        seen.append((mode(tmp), tmp.stat().st_size))  # as it is when the data goes in
        tmp.write_text("secret")

    target = tmp_path / "secret.json"
    target.write_text("old, world-readable")
    target.chmod(0o644)
    atomic_write(target, write, mode=wanted)
    assert seen == [(wanted, 0)]
    assert mode(target) == wanted and target.read_text() == "secret"


def test_the_default_mode_honours_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "plain.txt"
    script = (
        "import os, sys; os.umask(0o027)\n"
        "from digitrec.storage import atomic_write_text\n"
        "atomic_write_text(sys.argv[1], 'x')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(target)], check=True, timeout=30)
    assert mode(target) == 0o640  # 0o666 less the umask, not mkstemp's 0o600


def test_atomic_directory_appears_whole_on_success(tmp_path: Path) -> None:
    target = tmp_path / "models" / "v1"
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        (tmp / "weights").write_bytes(b"w")
        (tmp / "manifest.json").write_text("{}")
    assert listing(target) == ["manifest.json", "weights"]
    assert listing(target.parent) == ["v1"]


def test_atomic_directory_removes_its_temporary_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    with pytest.raises(RuntimeError, match="export failed"), atomic_directory(target) as tmp:
        (tmp / "weights").write_bytes(b"w")
        raise RuntimeError("export failed")
    assert listing(tmp_path) == []


def test_atomic_directory_refuses_an_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    target.mkdir()
    (target / "weights").write_bytes(b"old")
    with pytest.raises(StorageError, match="already exists"), atomic_directory(target) as tmp:
        (tmp / "weights").write_bytes(b"new")
    assert (target / "weights").read_bytes() == b"old"
    assert listing(tmp_path) == ["v1"]


def test_storage_errors_names_what_and_why() -> None:
    cause = OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(StorageError) as err, storage_errors("the report"):
        raise cause
    assert err.value.message == "could not write the report: Read-only file system"
    assert err.value.__cause__ is cause
    with pytest.raises(StorageError, match="could not write x: bare"), storage_errors("x"):
        raise OSError("bare")  # no strerror: the text itself is the reason


def test_storage_errors_lets_other_errors_through() -> None:
    with pytest.raises(ValueError, match="not an OS error"), storage_errors("x"):
        raise ValueError("not an OS error")


def test_remove_stale_temporaries_removes_only_leftovers(tmp_path: Path) -> None:
    (tmp_path / ".model.json.a1b2.tmp").write_text("half")
    (tmp_path / ".v1.x9.tmp").mkdir()
    (tmp_path / ".v1.x9.tmp" / "weights").write_bytes(b"half")
    keep = ["model.json", "model.json.tmp", ".model.json.a1b2", ".hidden", "notes.tmp"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".v1.x9.tmp.d").mkdir()

    assert remove_stale_temporaries(tmp_path, "model.json") == 1
    assert (tmp_path / ".v1.x9.tmp").is_dir()  # another name: left alone
    assert remove_stale_temporaries(tmp_path) == 1
    assert listing(tmp_path) == sorted([*keep, ".v1.x9.tmp.d"])
    assert remove_stale_temporaries(tmp_path / "missing") == 0


def test_file_hashes_match_hashlib_over_many_chunks(tmp_path: Path) -> None:
    data = os.urandom((5 << 20) // 2)  # 2.5 MiB: three default 1 MiB chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    sha, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
    assert sha256_file(path) == sha and md5_file(path) == md5
    assert sha256_file(path, chunk=4093) == sha and md5_file(path, chunk=4093) == md5
