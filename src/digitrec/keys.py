"""API keys: created once, stored only as SHA-256 hashes, checked in constant time.

A key is a random 256-bit token shown once at creation (``dr_...``). The key file holds
its id, name, hash and dates; revoking keeps the record so a revoked key gets 403
rather than 401. The server re-reads the file when it changes, so `digitrec keys
revoke` takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from digitrec.errors import Forbidden, NotFound, Unauthorized
from digitrec.storage import atomic_write_json

PREFIX = "dr_"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: tuple[float, list[dict[str, Any]]] | None = None

    def _load(self) -> list[dict[str, Any]]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return []
        with self._lock:
            if self._cache is None or self._cache[0] != mtime:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._cache = (mtime, list(data.get("keys", [])))
            return self._cache[1]

    def _save(self, keys: list[dict[str, Any]]) -> None:
        atomic_write_json(self.path, {"keys": keys})
        self.path.chmod(0o600)

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
        self._save([*self._load(), record])
        return key_id, secret

    def list(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "sha256"} for r in self._load()]

    def revoke(self, key_id: str) -> None:
        keys = self._load()
        if not any(k["id"] == key_id for k in keys):
            raise NotFound(f"no API key with id {key_id!r}", code="key_not_found")
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self._save(
            [{**k, "revoked_at": k["revoked_at"] or now} if k["id"] == key_id else k for k in keys]
        )

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
