"""Model registry: round trip, resolution, integrity checks, atomic writes, safe names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from digitrec.errors import InvalidRequest, ModelInvalid, ModelNotFound, StorageError
from digitrec.registry import MANIFEST, Registry, check_name


def write_file(content: bytes):  # type: ignore[no-untyped-def]
    return lambda path: path.write_bytes(content)


def save(registry: Registry, name: str, version: str, created: str, **extra: object):  # type: ignore[no-untyped-def]
    manifest = {"architecture": {"name": "digitnet", "args": {}}, "created_at": created, **extra}
    return registry.save(
        name, version, manifest, {"model.safetensors": write_file(b"w" + version.encode())}
    )


def test_round_trip_and_listing(tmp_path: Path) -> None:
    registry = Registry(tmp_path, extra_roots=())
    first = save(registry, "digitnet", "v1", "2026-01-01T00:00:00")
    save(registry, "digitnet", "v2", "2026-02-01T00:00:00")
    assert [e.version for e in registry.list()] == ["v1", "v2"]
    loaded = registry.resolve("digitnet:v1")
    assert loaded.manifest == first.manifest
    assert loaded.manifest["files"]["model.safetensors"]["bytes"] == 3
    loaded.verify()


def test_resolution_rules(tmp_path: Path) -> None:
    registry = Registry(tmp_path, extra_roots=())
    save(registry, "a", "v1", "2026-01-01")
    save(registry, "b", "v2", "2026-02-01")
    save(registry, "a", "v3", "2026-03-01", dry_run=True)
    assert registry.resolve().ref == "b:v2"  # newest that is not a dry run
    assert registry.resolve("a").ref == "a:v1"
    assert registry.resolve("v3").ref == "a:v3"  # asked for by version: allowed
    with pytest.raises(ModelNotFound):
        registry.resolve("c:v1")


def test_bundled_root_is_searched_and_read_only(tmp_path: Path) -> None:
    bundled = Registry(tmp_path / "bundled", extra_roots=())
    entry = save(bundled, "digitnet", "shipped", "2025-01-01")
    user = Registry(tmp_path / "user", extra_roots=(tmp_path / "bundled",))
    found = user.resolve()
    assert found.ref == entry.ref and found.bundled
    with pytest.raises(InvalidRequest, match="read-only"):
        user.add_file(found, "model.onnx", write_file(b"x"))


@pytest.mark.parametrize("change", ["truncate", "tamper", "delete"])
def test_damaged_files_are_detected(tmp_path: Path, change: str) -> None:
    entry = save(Registry(tmp_path, extra_roots=()), "m", "v1", "2026")
    weights = entry.path / "model.safetensors"
    if change == "truncate":
        weights.write_bytes(weights.read_bytes()[:1])
    elif change == "tamper":
        weights.write_bytes(b"evil")
    else:
        weights.unlink()
    with pytest.raises(ModelInvalid):
        entry.file("model.safetensors")


def test_unreadable_manifest_is_skipped_in_listing(tmp_path: Path) -> None:
    registry = Registry(tmp_path, extra_roots=())
    entry = save(registry, "m", "v1", "2026")
    (entry.path / MANIFEST).write_text("{broken")
    assert registry.list() == []
    with pytest.raises(ModelInvalid):
        registry.list(include_invalid=True)


@pytest.mark.parametrize(
    "ref", ["../etc", "a/b", "..", "m:../../x", ".hidden", "a b", "x" * 65, "m:v1/../../", "/abs"]
)
def test_references_cannot_leave_the_registry(tmp_path: Path, ref: str) -> None:
    registry = Registry(tmp_path, extra_roots=())
    save(registry, "m", "v1", "2026")
    with pytest.raises((InvalidRequest, ModelNotFound)):
        registry.resolve(ref)


def test_names_are_validated_on_save(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        check_name("../x")
    with pytest.raises(InvalidRequest):
        save(Registry(tmp_path, extra_roots=()), "ok", "../escape", "2026")
    assert not (tmp_path.parent / "escape").exists()


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    registry = Registry(tmp_path, extra_roots=())

    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(StorageError, match="No space left"):
        registry.save("m", "v1", {"architecture": {"name": "x"}}, {"model.safetensors": broken})
    assert registry.list() == []
    assert not any(p.name == "v1" for p in tmp_path.rglob("*"))
    assert not list(tmp_path.rglob("*.tmp"))


def test_unwritable_registry_is_a_clear_error(tmp_path: Path) -> None:
    # A regular file where a folder must go: no permission bits involved, so it fails for
    # root too (CI runs as root, which ignores a read-only folder's mode).
    registry = Registry(tmp_path, extra_roots=())
    save(registry, "m", "v1", "2026")
    (tmp_path / "blocked").write_bytes(b"")  # where model "blocked" needs its folder
    with pytest.raises(StorageError, match=r"could not write .*blocked"):
        save(registry, "blocked", "v1", "2026")
    under_a_file = Registry(tmp_path / "blocked" / "models", extra_roots=())
    with pytest.raises(StorageError, match="Not a directory"):
        save(under_a_file, "m", "v2", "2026")
    assert registry.resolve("m:v1").version == "v1"  # what was there is untouched
    assert [e.ref for e in registry.list()] == ["m:v1"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_manifest_is_json_with_file_hashes(tmp_path: Path) -> None:
    entry = save(Registry(tmp_path, extra_roots=()), "m", "v1", "2026")
    manifest = json.loads((entry.path / MANIFEST).read_text())
    assert len(manifest["files"]["model.safetensors"]["sha256"]) == 64
