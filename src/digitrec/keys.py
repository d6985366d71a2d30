"""API keys: created once, stored only as SHA-256 hashes, checked in constant time.

A key is a random 256-bit token shown once at creation (``dr_...``). The key file holds
its id, name, hash and dates; revoking keeps the record so a revoked key gets 403
rather than 401. The server re-reads the file when it changes, so `digitrec keys
revoke` takes effect without a restart.

This module owns the key file (``keys.json``, mode 0600 at every moment) and its
lock file (``keys.json.lock``). Every change is a read-modify-write under an exclusive
``flock`` on the lock file, re-reading the key file under the lock, so concurrent
`digitrec keys` commands never lose a key or undo a revocation. Readers take no lock:
each write renames a whole new file into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from digitrec.errors import Forbidden, NotFound, StorageError, Unauthorized
from digitrec.storage import atomic_write_json, storage_errors

PREFIX = "dr_"
FILE_MODE = 0o600  # the key file and its lock file: owner only
Records = list[dict[str, Any]]
Signature = tuple[int, int, int]  # (st_ino, st_size, st_mtime_ns): changes on every write


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str


def _signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _is_record(r: object) -> bool:
    return (
        isinstance(r, dict)
        and all(isinstance(r.get(f), str) for f in ("id", "name", "sha256", "created_at"))
        and isinstance(r.get("revoked_at"), str | None)
    )


def _parse(path: Path, raw: bytes) -> Records:
    """The records in ``raw``; a StorageError naming the file if it is not a key file."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageError(f"the API key file {path} is corrupt: {exc}") from exc
    records = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(_is_record(r) for r in records):
        raise StorageError(f"the API key file {path} is corrupt: not a list of key records")
    return records


def _unreadable(path: Path, exc: OSError) -> StorageError:
    return StorageError(f"could not read the API key file {path}: {exc.strerror or exc}")


def _read(path: Path) -> tuple[Signature, Records] | None:
    """The key file's signature and records, read together from one open file."""
    try:
        with path.open("rb") as fh:
            signature = _signature(os.fstat(fh.fileno()))
            raw = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    return signature, _parse(path, raw)


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = threading.Lock()
        self._cache: tuple[Signature, Records] | None = None

    def _load(self) -> Records:
        """The current records, re-read whenever the file's signature changes."""
        try:
            signature = _signature(self.path.stat())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _unreadable(self.path, exc) from exc
        with self._lock:
            if self._cache is None or self._cache[0] != signature:
                self._cache = _read(self.path)
            return self._cache[1] if self._cache is not None else []

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the exclusive lock that serialises changes across threads and processes."""
        where = f"the API key lock {self.lock_path}"
        with storage_errors(where):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            with storage_errors(where):
                fcntl.flock(fd, fcntl.LOCK_EX)  # per open file: threads serialise too
            yield
        finally:
            os.close(fd)  # releases the lock

    def _update(self, change: Callable[[Records], Records]) -> None:
        """Apply ``change`` to the records on disk, atomically and one writer at a time."""
        with self._exclusive():
            current = _read(self.path)  # under the lock, never from the cache
            records = change(current[1] if current is not None else [])
            atomic_write_json(self.path, {"keys": records}, mode=FILE_MODE)

    def create(self, name: str) -> tuple[str, str]:
        """Create a key; return ``(id, secret)``. The secret is not stored anywhere."""
        secret = PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(4)
        record = {
            "id": key_id,
            "name": name,
            "sha256": hash_key(secret),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "revoked_at": None,
        }
        self._update(lambda keys: [*keys, record])
        return key_id, secret

    def list(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "sha256"} for r in self._load()]

    def revoke(self, key_id: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")

        def revoked(keys: Records) -> Records:
            if not any(k["id"] == key_id for k in keys):
                raise NotFound(f"no API key with id {key_id!r}", code="key_not_found")
            return [
                {**k, "revoked_at": k["revoked_at"] or now} if k["id"] == key_id else k
                for k in keys
            ]

        self._update(revoked)

    def authenticate(self, secret: str | None) -> ApiKey:
        """The key record for ``secret``; 401 if unknown or missing, 403 if revoked."""
        if not secret:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                code="api_key_required",
            )
        presented = hash_key(secret)
        match = None
        for record in self._load():  # compare with every record: no early exit
            if hmac.compare_digest(presented, record["sha256"]):
                match = record
        if match is None:
            raise Unauthorized("the API key is not valid", code="api_key_invalid")
        if match["revoked_at"]:
            raise Forbidden("the API key was revoked", code="api_key_revoked")
        return ApiKey(match["id"], match["name"])
