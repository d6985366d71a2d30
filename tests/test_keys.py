"""API keys in the lifecycle database: the store on SQLite and PostgreSQL, the one-time
import of the old key file, the server's in-memory copy (reloaded in the background,
kept through an outage, 503 before it was ever read), and two real servers sharing one
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from digitrec.api import create_app
from digitrec.cli import main
from digitrec.config import Settings
from digitrec.db import Database
from digitrec.db.tables import ApiKeyRow, Base
from digitrec.errors import Forbidden, NotFound, ServiceBusy, StorageError, Unauthorized
from digitrec.keys import KeyStore, LiveKeys, hash_key
from digitrec.predict import Predictor
from tests.conftest import LiveServer, PostgresServer, free_port, run_cli

MODEL = "/api/v1/model"  # a cheap route behind the key check


def start_cli(home: Path, *args: str) -> subprocess.Popen[str]:
    """`digitrec ARGS` as a real process with DIGITREC_HOME=home."""
    return subprocess.Popen(
        [sys.executable, "-m", "digitrec.cli", *args],
        env={**os.environ, "DIGITREC_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


def secret_of(create_output: str) -> str:
    return create_output.strip().splitlines()[-1]


def until(condition: Callable[[], bool], timeout: float = 15, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# --- the store, on SQLite and PostgreSQL ------------------------------------------------------


def test_round_trip_create_list_revoke_authenticate(db: Database) -> None:
    store = KeyStore(db)
    assert store.list() == []
    key_id, secret = store.create("ci")
    (listed,) = store.list()
    assert listed["id"] == key_id and listed["name"] == "ci" and listed["revoked_at"] is None
    assert "sha256" not in listed
    with db.session() as session:
        stored = [str(v) for v in session.execute(select(ApiKeyRow.__table__)).one()]
    assert hash_key(secret) in stored and not any(secret[3:20] in v for v in stored)
    assert store.authenticate(secret).id == key_id
    for wrong, code in ((None, "api_key_required"), (secret + "x", "api_key_invalid")):
        with pytest.raises(Unauthorized) as info:
            store.authenticate(wrong)
        assert info.value.code == code
    with pytest.raises(NotFound):
        store.revoke("key_nope")
    store.revoke(key_id)
    revoked_at = store.list()[0]["revoked_at"]
    assert revoked_at
    store.revoke(key_id)  # again: the first revocation's time stays
    assert store.list()[0]["revoked_at"] == revoked_at
    with pytest.raises(Forbidden):
        store.authenticate(secret)


def test_parallel_creates_keep_every_key(tmp_path: Path) -> None:
    processes = [start_cli(tmp_path, "keys", "create", "--name", f"k{i}") for i in range(6)]
    secrets = [secret_of(finish(p)) for p in processes]
    store = KeyStore.from_settings(Settings(home=tmp_path))
    assert sorted(k["name"] for k in store.list()) == sorted(f"k{i}" for i in range(6))
    assert len({store.authenticate(s).id for s in secrets}) == 6
    store.close()


def test_revoke_racing_creates_stays_revoked(tmp_path: Path) -> None:
    store = KeyStore.from_settings(Settings(home=tmp_path))
    victim, victim_secret = store.create("victim")
    names = [f"k{i}" for i in range(4)]
    creates = [start_cli(tmp_path, "keys", "create", "--name", n) for n in names[:2]]
    revoke = start_cli(tmp_path, "keys", "revoke", victim)
    creates += [start_cli(tmp_path, "keys", "create", "--name", n) for n in names[2:]]
    finish(revoke)
    secrets = [secret_of(finish(p)) for p in creates]
    with pytest.raises(Forbidden):
        store.authenticate(victim_secret)
    assert sorted(k["name"] for k in store.list()) == [*names, "victim"]
    assert all(store.authenticate(s) for s in secrets)
    store.close()


# --- the old key file, imported once ----------------------------------------------------------

CREATED = "2026-01-02T03:04:05+00:00"
REVOKED = "2026-02-03T04:05:06+00:00"


def write_key_file(path: Path, count: int = 3) -> dict[str, str]:
    """A keys.json as the previous release wrote it: ``count`` keys, the second revoked.
    Returns each key's secret by id."""
    secrets = {f"key_{i:08x}": f"dr_old{i}" for i in range(count)}
    records = [
        {
            "id": key_id,
            "name": f"old {n}",
            "sha256": hash_key(secret),
            "created_at": CREATED,
            "revoked_at": REVOKED if n == 1 else None,
        }
        for n, (key_id, secret) in enumerate(secrets.items())
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"keys": records}))
    return secrets


def test_import_keeps_ids_names_dates_and_revocations(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    secrets = write_key_file(path)
    caplog.set_level(logging.INFO, logger="digitrec.keys")
    store = KeyStore(db, path)
    listed = store.list()
    expected = [(key_id, f"old {n}") for n, key_id in enumerate(secrets)]
    assert [(k["id"], k["name"]) for k in listed] == expected
    assert {k["created_at"] for k in listed} == {CREATED}
    assert [k["revoked_at"] for k in listed] == [None, REVOKED, None]
    first, revoked, _ = secrets
    assert store.authenticate(secrets[first]).id == first
    with pytest.raises(Forbidden):
        store.authenticate(secrets[revoked])
    assert not path.exists() and (tmp_path / "keys.json.imported").exists()
    assert any("imported the API key file" in r.getMessage() for r in caplog.records)


def test_import_is_idempotent_and_never_undoes_a_revocation(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    secrets = write_key_file(path)
    KeyStore(db, path).open()
    first, _, third = secrets
    KeyStore(db).revoke(first)  # revoked in the database since the import
    before = {k["id"]: k for k in KeyStore(db).list()}
    data = json.loads((tmp_path / "keys.json.imported").read_text())
    data["keys"][0]["revoked_at"] = REVOKED  # revoked later in the database than here
    data["keys"][2]["revoked_at"] = REVOKED  # revoked in a stale copy of the file
    path.write_text(json.dumps(data))
    store = KeyStore(db, path)
    after = {k["id"]: k for k in store.list()}
    assert after.keys() == before.keys()  # nothing twice
    assert after[first]["revoked_at"] == before[first]["revoked_at"]  # not undone
    assert after[third]["revoked_at"] == REVOKED  # the file's revocation applies
    with pytest.raises(Forbidden):
        store.authenticate(secrets[third])


# Each process opens the database, then waits for the "go" file: all read the key file
# at about the same time, so their inserts overlap.
IMPORT = """
import sys, time
from pathlib import Path
from digitrec.db import Database
from digitrec.keys import KeyStore
store = KeyStore(Database(sys.argv[1]), Path(sys.argv[2]))
store.db.migrate()
Path(sys.argv[3] + ".ready" + sys.argv[4]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.001)
store.open()
"""


def test_processes_importing_at_once_lose_nothing(database_url: str, tmp_path: Path) -> None:
    path, go = tmp_path / "keys.json", tmp_path / "go"
    secrets = write_key_file(path, count=40)
    migrated = Database(database_url)
    migrated.migrate()
    migrated.dispose()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", IMPORT, database_url, str(path), str(go), str(i)],
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    until(lambda: len(list(tmp_path.glob("go.ready*"))) == 3, timeout=60, what="the processes")
    go.touch()
    errors = [p.communicate(timeout=120)[1].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], errors
    assert sum("imported the API key file" in e for e in errors) == 1  # one of them renamed it
    db = Database(database_url)
    store = KeyStore(db)
    assert [k["id"] for k in store.list()] == list(secrets)
    revoked = [k["id"] for k in store.list() if k["revoked_at"]]
    assert revoked == [list(secrets)[1]]
    db.dispose()


CORRUPT = {
    "not json": b'{"keys": [',
    "not utf-8": b"\xff\xfe\x00",
    "not an object": b"[]",
    "keys not a list": b'{"keys": {}}',
    "record without hash": b'{"keys": [{"id": "key_1", "name": "x"}]}',
    "bad date": json.dumps(
        {"keys": [{"id": "k", "name": "x", "sha256": "0" * 64, "created_at": "soon"}]}
    ).encode(),
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_key_file_is_a_clear_error(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(home=tmp_path)
    settings.keys_path.write_bytes(content)
    store = KeyStore.from_settings(settings)
    for action in (store.list, lambda: store.authenticate("dr_x"), lambda: store.create("x")):
        with pytest.raises(StorageError, match="corrupt"):
            action()
    store.close()
    assert settings.keys_path.read_bytes() == content  # left as it was, not renamed
    assert main(["keys", "list", "--home", str(tmp_path)]) == StorageError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("digitrec: error: ") and "corrupt" in err and "Traceback" not in err


def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    settings.keys_path.mkdir(parents=True)  # a folder where the file should be
    store = KeyStore.from_settings(settings)
    with pytest.raises(StorageError, match="could not read"):
        store.authenticate("dr_x")
    store.close()


# --- the server's copy ------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path, predictor: Predictor) -> Iterator[tuple[TestClient, KeyStore]]:
    settings = Settings(
        home=tmp_path, require_api_key=True, rate_limit_per_minute=0, keys_refresh_s=0.1
    )
    store = KeyStore.from_settings(settings)
    with TestClient(create_app(settings, predictor)) as client:
        yield client, store
    store.close()


def status(client: TestClient, secret: str) -> int:
    return client.get(MODEL, headers={"X-API-Key": secret}).status_code


def test_server_sees_creations_and_revocations_in_the_background(
    keyed: tuple[TestClient, KeyStore],
) -> None:
    client, store = keyed
    key_id, secret = store.create("newcomer")
    until(lambda: status(client, secret) == 200, what="the new key to work")
    store.revoke(key_id)
    until(lambda: status(client, secret) == 403, what="the revoked key to be refused")
    assert client.get(MODEL, headers={"X-API-Key": secret}).json()["error"]["code"] == (
        "api_key_revoked"
    )


def test_a_key_file_is_imported_when_the_server_starts(
    tmp_path: Path, predictor: Predictor
) -> None:
    settings = Settings(home=tmp_path, require_api_key=True, rate_limit_per_minute=0)
    secrets = write_key_file(settings.keys_path)
    first, revoked, _ = secrets
    with TestClient(create_app(settings, predictor)) as client:
        assert status(client, secrets[first]) == 200
        assert status(client, secrets[revoked]) == 403
    assert (tmp_path / "keys.json.imported").exists()


def test_an_app_started_twice_reads_the_keys_each_time(
    tmp_path: Path, predictor: Predictor
) -> None:
    settings = Settings(home=tmp_path, require_api_key=True, rate_limit_per_minute=0)
    store = KeyStore.from_settings(settings)
    key_id, secret = store.create("twice")
    app = create_app(settings, predictor)
    with TestClient(app) as client:
        assert status(client, secret) == 200
    store.revoke(key_id)  # between the two lifespans
    with TestClient(app) as client:
        assert status(client, secret) == 403
    store.close()


def test_keys_are_kept_through_an_outage_and_logged_once(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path, database_url=database_url, keys_refresh_s=300)
    store = KeyStore.from_settings(settings)
    key_id, secret = store.create("survivor")
    keys = LiveKeys(settings)
    caplog.set_level(logging.WARNING, logger="digitrec.keys")

    async def scenario() -> None:
        await keys.start()
        assert keys.authenticate(secret).id == key_id
        with store.db.engine.begin() as connection:
            connection.execute(text("DROP TABLE api_keys"))  # the keys cannot be read
        for _ in range(3):
            await asyncio.to_thread(keys.refresh)
        assert keys.authenticate(secret).id == key_id  # the last records are kept
        assert sum("cannot be read" in r.getMessage() for r in caplog.records) == 1
        Base.metadata.tables["api_keys"].create(store.db.engine)  # the outage ends
        _, newcomer = store.create("newcomer")
        await asyncio.to_thread(keys.refresh)
        assert keys.authenticate(newcomer).name == "newcomer"
        with pytest.raises(Unauthorized):
            keys.authenticate(secret)  # gone with the dropped table
        assert any("read again" in r.getMessage() for r in caplog.records)
        await keys.stop()

    asyncio.run(scenario())
    store.close()


def unreachable_postgres() -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/digitrec"


@pytest.mark.parametrize("required", [True, False], ids=["keys required", "keys optional"])
def test_a_database_never_reached_is_a_clear_503(
    tmp_path: Path, predictor: Predictor, required: bool
) -> None:
    settings = Settings(
        home=tmp_path,
        database_url=unreachable_postgres(),
        require_api_key=required,
        rate_limit_per_minute=0,
    )
    with TestClient(create_app(settings, predictor)) as client:
        response = client.get(MODEL, headers={"Authorization": "Bearer dr_anything"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "keys_unavailable"
        assert "127.0.0.1" not in response.text  # the log says where; clients are not told
        assert client.get(MODEL).status_code == (401 if required else 200)
    with pytest.raises(ServiceBusy):
        LiveKeys(settings).authenticate("dr_anything")


def test_a_corrupt_key_file_is_a_503_without_server_paths(
    tmp_path: Path, predictor: Predictor
) -> None:
    settings = Settings(home=tmp_path, require_api_key=True)
    settings.keys_path.write_text("{not json")
    with TestClient(create_app(settings, predictor)) as client:
        response = client.get(MODEL, headers={"X-API-Key": "dr_x"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "keys_unavailable"
    assert str(tmp_path) not in response.text


# --- two real servers sharing one PostgreSQL --------------------------------------------------


def get_status(server: LiveServer, secret: str) -> int:
    request = urllib.request.Request(server.url + MODEL, headers={"X-API-Key": secret})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_two_servers_on_one_postgres_share_keys(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with postgres_server.database() as url:
        env = {
            "DIGITREC_DATABASE_URL": url,
            "DIGITREC_REQUIRE_API_KEY": "true",
            "DIGITREC_RATE_LIMIT_PER_MINUTE": "0",
        }
        servers = [LiveServer(tmp_path / f"replica{i}", env=env) for i in range(2)]
        try:
            for server in servers:
                server.wait_ready()
            created = run_cli("keys", "create", "--name", "shared", home=tmp_path / "cli", env=env)
            assert created.returncode == 0, created.stderr
            key_id, secret = created.stdout.split()[2], secret_of(created.stdout)
            until(lambda: all(get_status(s, secret) == 200 for s in servers), what="the key")
            revoked = run_cli("keys", "revoke", key_id, home=tmp_path / "cli", env=env)
            assert revoked.returncode == 0, revoked.stderr
            until(lambda: all(get_status(s, secret) == 403 for s in servers), what="403")
        finally:
            for server in servers:
                server.stop()
        assert not any("Traceback" in s.log.read_text() for s in servers)
