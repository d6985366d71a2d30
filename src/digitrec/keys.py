"""API keys: created once, stored only as SHA-256 hashes in the lifecycle database,
checked in constant time.

A key is a random 256-bit token shown once at creation (``dr_...``). The ``api_keys``
table holds its id, name, hash and dates, never the secret; revoking keeps the row so a
revoked key gets 403 rather than 401. The CLI and every server replica share the table,
so a key created or revoked anywhere reaches every server.

``KeyStore`` is the table (each call a query: the CLI, tests). A server never queries
per request: ``LiveKeys`` keeps the records in memory and reloads them every
``keys_refresh_s`` in a thread, off the event loop, so a change takes effect within that
delay. When the database cannot be read it keeps the last records (and says so once per
outage); until it has read them once, a request that presents a key gets 503.

Keys used to live in a JSON file (``keys_file``, default ``<home>/keys.json``). Opening
the store imports it once: ids not yet in the table are inserted (``ON CONFLICT DO
NOTHING``, so processes importing at the same time lose nothing and overwrite nothing),
revocations in the file are applied, a revocation in the table is never undone; then
the file is renamed ``keys.json.imported``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Insert, select, update

from digitrec.db import Database
from digitrec.db.tables import KEY_ID_LENGTH, KEY_NAME_LENGTH, ApiKeyRow, utcnow
from digitrec.errors import (
    DigitrecError,
    Forbidden,
    NotFound,
    ServiceBusy,
    StorageError,
    Unauthorized,
    ValidationFailed,
)
from digitrec.tasks import cancel

if TYPE_CHECKING:
    from digitrec.config import Settings

log = logging.getLogger(__name__)

PREFIX = "dr_"
IMPORTED_SUFFIX = ".imported"  # keys.json becomes keys.json.imported once imported


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    sha256: str
    created_at: datetime
    revoked_at: datetime | None


def check(records: Iterable[KeyRecord], secret: str | None) -> ApiKey:
    """The key for ``secret`` among ``records``; 401 if unknown or missing, 403 if revoked.
    The hash is compared with every record, with no early exit."""
    if not secret:
        raise Unauthorized(
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            code="api_key_required",
        )
    presented = hash_key(secret)
    match = None
    for record in records:
        if hmac.compare_digest(presented, record.sha256):
            match = record
    if match is None:
        raise Unauthorized("the API key is not valid", code="api_key_invalid")
    if match.revoked_at is not None:
        raise Forbidden("the API key was revoked", code="api_key_revoked")
    return ApiKey(match.id, match.name)


class KeyStore:
    """The ``api_keys`` table. The first call migrates the database and imports the old
    key file (``legacy_file``) if there is one."""

    def __init__(self, db: Database, legacy_file: Path | None = None) -> None:
        self.db = db
        self.legacy_file = legacy_file
        self._lock = threading.Lock()
        self._opened = False

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        return cls(Database.from_settings(settings), settings.keys_path)

    def open(self) -> None:
        """Blocking: bring the schema up to date and import the key file, once."""
        with self._lock:
            if not self._opened:
                self.db.migrate()
                if self.legacy_file is not None:
                    import_key_file(self.db, self.legacy_file)
                self._opened = True

    def close(self) -> None:
        self.db.dispose()

    def records(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        self.open()
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        with self.db.session() as session:
            return [
                KeyRecord(r.id, r.name, r.sha256, r.created_at, r.revoked_at)
                for r in session.scalars(query)
            ]

    def create(self, name: str) -> tuple[str, str]:
        """Create a key; return ``(id, secret)``. The secret is not stored anywhere."""
        if len(name) > KEY_NAME_LENGTH:
            raise ValidationFailed(f"a key's name is at most {KEY_NAME_LENGTH} characters")
        self.open()
        secret = PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(4)
        row = ApiKeyRow(id=key_id, name=name, sha256=hash_key(secret), created_at=utcnow())
        with self.db.session() as session:
            session.add(row)
        return key_id, secret

    def list(self) -> list[dict[str, Any]]:
        """Every key without its hash; dates as ISO 8601 text."""
        return [
            {
                "id": r.id,
                "name": r.name,
                "created_at": _text(r.created_at),
                "revoked_at": _text(r.revoked_at) if r.revoked_at else None,
            }
            for r in self.records()
        ]

    def revoke(self, key_id: str) -> None:
        """Revoke a key (again: nothing changes, the first revocation's time stays)."""
        self.open()
        with self.db.session() as session:
            if session.get(ApiKeyRow, key_id) is None:
                raise NotFound(f"no API key with id {key_id!r}", code="key_not_found")
            session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )

    def authenticate(self, secret: str | None) -> ApiKey:
        """The key for ``secret`` (see ``check``), read from the database now."""
        if not secret:
            return check((), secret)
        return check(self.records(), secret)


def _text(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


class LiveKeys:
    """A server process's copy of the keys: ``authenticate`` reads memory only; an
    asyncio task reloads the records every ``keys_refresh_s``, in a thread. Created in
    ``start`` and released in ``stop``, so an app can be started again."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._records: tuple[KeyRecord, ...] | None = None  # None: never read
        self._store: KeyStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._refreshing = threading.Lock()  # one reload at a time: never an older overwrite
        self._failing = False

    async def start(self) -> None:
        if self._task is None:
            self._store = KeyStore.from_settings(self.settings)
            await asyncio.to_thread(self.refresh)
            self._task = asyncio.create_task(self._run(), name="api-keys-refresh")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        """Blocking: after any reload in flight (its thread outlives the cancelled task)."""
        with self._refreshing:
            if self._store is not None:
                self._store.close()
            self._store, self._records, self._failing = None, None, False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.keys_refresh_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # a bug must not freeze the keys: revocations would stop
                log.exception("API keys not reloaded")

    def refresh(self) -> None:
        """Blocking: reload the records; on failure keep the last ones, logged once per
        outage."""
        with self._refreshing:
            store = self._store
            if store is None:
                return
            try:
                records = tuple(store.records())
            except DigitrecError as exc:
                if not self._failing:
                    self._failing = True
                    kept = (
                        "keeping the last ones read"
                        if self._records is not None
                        else "none read yet: requests with a key get 503"
                    )
                    log.error("API keys cannot be read (%s; retrying): %s", kept, exc.message)
                return
            if self._failing:
                self._failing = False
                log.warning("API keys read again from the database %s", store.db.where)
            self._records = records

    def authenticate(self, secret: str | None) -> ApiKey:
        records = self._records
        if secret and records is None:
            raise ServiceBusy(
                "API keys cannot be checked now: the key database has not been readable "
                "since this server started (its log says why); try again later",
                code="keys_unavailable",
            )
        return check(records or (), secret)


# --- the old key file, imported once -----------------------------------------------------------


def _corrupt(path: Path, why: str) -> StorageError:
    return StorageError(f"the API key file {path} is corrupt: {why}")


def _parse_time(path: Path, value: object) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        raise _corrupt(path, f"not a date: {value!r}") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _is_record(r: object) -> bool:
    return (
        isinstance(r, dict)
        and all(isinstance(r.get(f), str) for f in ("id", "name", "sha256", "created_at"))
        and isinstance(r.get("revoked_at"), str | None)
        and 0 < len(r["id"]) <= KEY_ID_LENGTH
        and len(r["sha256"]) == hashlib.sha256().digest_size * 2
    )


def read_key_file(path: Path) -> list[dict[str, Any]] | None:
    """The rows of an old key file (None if there is none); a StorageError naming the
    file if it cannot be read or is not a key file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(
            f"could not read the API key file {path}: {exc.strerror or exc}"
        ) from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, str(exc)) from exc
    records = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(_is_record(r) for r in records):
        raise _corrupt(path, "not a list of key records")
    return [
        {
            "id": r["id"],
            "name": r["name"][:KEY_NAME_LENGTH],
            "sha256": r["sha256"].lower(),
            "created_at": _parse_time(path, r["created_at"]),
            "revoked_at": _parse_time(path, r["revoked_at"]),
        }
        for r in records
    ]


def _insert_missing(db: Database) -> Insert:
    """INSERT that skips rows whose id or hash is already there (both dialects)."""
    if db.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(ApiKeyRow).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(ApiKeyRow).on_conflict_do_nothing()


def _revoke_as_in_file(rows: Sequence[dict[str, Any]]) -> Iterable[Any]:
    for row in rows:
        if row["revoked_at"] is not None:
            yield (
                update(ApiKeyRow)
                .where(ApiKeyRow.id == row["id"], ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=row["revoked_at"])
            )


def import_key_file(db: Database, path: Path) -> int | None:
    """Blocking: copy an old key file into ``api_keys`` and rename it ``*.imported``;
    how many keys were new (None: no file). Idempotent, and safe when several processes
    import the same file at once."""
    rows = read_key_file(path)
    if rows is None:
        return None
    new = 0
    with db.session() as session:
        if rows:
            result = session.execute(_insert_missing(db).values(rows))
            new = int(getattr(result, "rowcount", 0) or 0)
        for statement in _revoke_as_in_file(rows):
            session.execute(statement)
    target = path.with_name(path.name + IMPORTED_SUFFIX)
    try:
        path.replace(target)
    except FileNotFoundError:
        return new  # another process imported it at the same time and renamed it
    except OSError as exc:
        raise StorageError(
            f"imported the API keys of {path} but could not rename it: {exc.strerror or exc}"
        ) from exc
    with contextlib.suppress(OSError):
        path.with_name(path.name + ".lock").unlink(missing_ok=True)  # the old file lock
    log.warning(
        "imported the API key file %s into the database %s (%d keys, %d new); "
        "keys now live there, and the file is renamed %s",
        path,
        db.where,
        len(rows),
        new,
        target,
    )
    return new
