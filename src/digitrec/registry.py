"""Model registry: versioned models on disk, each a folder with weights and a manifest.

Layout: ``<root>/<name>/<version>/`` holding ``model.safetensors`` (and ``model.onnx``
once exported) plus ``manifest.json``: architecture and arguments, preprocessing spec,
file hashes, data hashes, settings, metrics, confusion matrix, git commit, timings.

Two roots are searched: the user's registry (``settings.models_dir``, writable) and the
model that ships inside the package (read-only). A model folder is written under a
temporary name and renamed, so a half-written model is never visible. Names and
versions are validated so no reference can leave a registry folder. This module does
not need PyTorch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitrec.config import Settings
from digitrec.errors import InvalidRequest, ModelInvalid, ModelNotFound
from digitrec.preprocess import PreprocessSpec
from digitrec.storage import atomic_directory, atomic_write_json, sha256_file, storage_errors

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
BUNDLED_ROOT = Path(__file__).parent / "pretrained"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(value: str, what: str = "name") -> str:
    """A model name or version: letters, digits, ``_.-``; no path separators, no ``..``."""
    if not _NAME_RE.fullmatch(value) or ".." in value:
        raise InvalidRequest(
            f"invalid model {what} {value!r}: use letters, digits, '_', '.' and '-' "
            "(at most 64 characters)",
            code="invalid_model_ref",
        )
    return value


@dataclass(frozen=True)
class ModelEntry:
    """One model version on disk."""

    path: Path
    manifest: dict[str, Any]
    bundled: bool = False

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def created_at(self) -> str:
        return str(self.manifest.get("created_at", ""))

    @property
    def dry_run(self) -> bool:
        return bool(self.manifest.get("dry_run", False))

    @property
    def preprocessing(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest.get("preprocessing", {}))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics", {}))

    def file(self, filename: str) -> Path:
        """Path of one of the model's files, checked against the manifest's hash."""
        info = self.manifest.get("files", {}).get(filename)
        if info is None:
            raise ModelInvalid(f"model {self.ref} has no {filename}", code="model_file_missing")
        path = self.path / filename
        if not path.is_file():
            raise ModelInvalid(
                f"model {self.ref}: {filename} is missing from {self.path}",
                code="model_file_missing",
            )
        digest = sha256_file(path)
        if digest != info.get("sha256"):
            raise ModelInvalid(
                f"model {self.ref}: {filename} does not match its manifest (sha256 "
                f"{digest[:12]}..., expected {str(info.get('sha256'))[:12]}...): it was "
                "truncated or changed",
                code="model_hash_mismatch",
            )
        return path

    def has_file(self, filename: str) -> bool:
        return filename in self.manifest.get("files", {})

    def verify(self) -> None:
        for filename in self.manifest.get("files", {}):
            self.file(filename)


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelInvalid(f"unreadable manifest in {folder}: {exc}") from None
    if not isinstance(manifest, dict) or not {"name", "version", "architecture"} <= manifest.keys():
        raise ModelInvalid(f"manifest in {folder} lacks name, version or architecture")
    return manifest


class Registry:
    """Finds, lists, saves and verifies model versions."""

    def __init__(self, root: Path, extra_roots: tuple[Path, ...] = (BUNDLED_ROOT,)) -> None:
        self.root = Path(root)
        self.extra_roots = tuple(r for r in extra_roots if Path(r).resolve() != self.root.resolve())

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        return cls(settings.registry_dir)

    def _roots(self) -> list[tuple[Path, bool]]:
        return [(self.root, False)] + [(r, True) for r in self.extra_roots]

    def list(self, include_invalid: bool = False) -> list[ModelEntry]:
        """Every model version, oldest first (by training time)."""
        entries = []
        seen: set[tuple[str, str]] = set()
        for root, bundled in self._roots():
            if not root.is_dir():
                continue
            for manifest_path in sorted(root.glob(f"*/*/{MANIFEST}")):
                folder = manifest_path.parent
                if folder.name.startswith(".") or folder.parent.name.startswith("."):
                    continue
                try:
                    entry = ModelEntry(folder, _read_manifest(folder), bundled)
                except ModelInvalid:
                    if include_invalid:
                        raise
                    continue
                key = (entry.name, entry.version)
                if key not in seen:
                    seen.add(key)
                    entries.append(entry)
        return sorted(entries, key=lambda e: (e.created_at, e.version))

    def shipped(self) -> ModelEntry:
        """The newest model that ships inside the package: what production is until a
        version is promoted (``digitrec models promote``)."""
        shipped = [
            e
            for root in self.extra_roots
            for e in Registry(root, extra_roots=()).list()
            if not e.dry_run
        ]
        if not shipped:
            raise ModelNotFound(
                "digitrec ships no model here: reinstall it, or promote a trained version "
                "with `digitrec models promote VERSION`"
            )
        newest = max(shipped, key=lambda e: (e.created_at, e.version))
        return self.resolve(newest.ref)  # a copy in the user's registry takes precedence

    def resolve(self, ref: str | None = None) -> ModelEntry:
        """Find a model by ``VERSION``, ``NAME:VERSION`` or ``NAME``; None means newest."""
        if ref is None or ref in ("", "latest", "default"):
            candidates = [e for e in self.list() if not e.dry_run]
            if not candidates:
                raise ModelNotFound(
                    "no trained model found: run `digitrec train` or reinstall digitrec "
                    f"(looked in {', '.join(str(r) for r, _ in self._roots())})"
                )
            return candidates[-1]
        name, _, version = ref.partition(":") if ":" in ref else ("", "", ref)
        if name:
            check_name(name)
        if version:
            check_name(version, "version")
        matches = [
            e
            for e in self.list()
            if (not name or e.name == name) and (not version or e.version == version)
        ]
        if not matches and not name:  # a bare word may be a name rather than a version
            check_name(ref)
            matches = [e for e in self.list() if e.name == ref and not e.dry_run]
        if not matches:
            raise ModelNotFound(f"no model {ref!r} in the registry (see `digitrec models list`)")
        return matches[-1]

    def save(
        self,
        name: str,
        version: str,
        manifest: dict[str, Any],
        writers: dict[str, Callable[[Path], object]],
    ) -> ModelEntry:
        """Write a new model version: each writer fills one file, then the manifest.

        File hashes are added to the manifest. The folder appears only when complete.
        """
        check_name(name)
        check_name(version, "version")
        target = self.root / name / version
        if target.exists():
            raise InvalidRequest(f"model {name}:{version} already exists", code="model_exists")
        manifest = {**manifest, "name": name, "version": version, "files": {}}
        with storage_errors(f"model {name}:{version}"), atomic_directory(target) as tmp:
            for filename, write in writers.items():
                write(tmp / filename)
                manifest["files"][filename] = _file_info(tmp / filename)
            atomic_write_json(tmp / MANIFEST, manifest)
        return ModelEntry(target, manifest)

    def add_file(
        self,
        entry: ModelEntry,
        filename: str,
        write: Callable[[Path], object],
        extra: dict[str, Any] | None = None,
    ) -> ModelEntry:
        """Add (or replace) one file of an existing model and record it in the manifest."""
        if entry.bundled:
            raise InvalidRequest(
                f"model {entry.ref} ships with digitrec and is read-only", code="model_read_only"
            )
        tmp = entry.path / f".{filename}.partial.tmp"
        try:
            with storage_errors(f"{filename} of model {entry.ref}"):
                write(tmp)
                info = _file_info(tmp)
                tmp.replace(entry.path / filename)
        finally:
            tmp.unlink(missing_ok=True)
        manifest = {**entry.manifest, **(extra or {})}
        manifest["files"] = {**manifest.get("files", {}), filename: info}
        atomic_write_json(entry.path / MANIFEST, manifest)
        return ModelEntry(entry.path, manifest, entry.bundled)


def _file_info(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}
