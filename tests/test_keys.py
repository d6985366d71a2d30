"""API keys: changes serialised across processes, the key file never wider than 0600, the
server's cache sees every change, and a damaged key file is a clear error."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import digitrec.keys
import digitrec.storage
from digitrec.cli import main
from digitrec.errors import Forbidden, NotFound, StorageError, Unauthorized
from digitrec.keys import KeyStore
from digitrec.predict import Predictor


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


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_parallel_creates_keep_every_key(tmp_path: Path) -> None:
    processes = [start_cli(tmp_path, "keys", "create", "--name", f"k{i}") for i in range(10)]
    secrets = [secret_of(finish(p)) for p in processes]
    store = KeyStore(tmp_path / "keys.json")
    assert sorted(k["name"] for k in store.list()) == sorted(f"k{i}" for i in range(10))
    assert len({store.authenticate(s).id for s in secrets}) == 10


def test_revoke_racing_creates_stays_revoked(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    victim, victim_secret = store.create("victim")
    names = [f"k{i}" for i in range(8)]
    creates = [start_cli(tmp_path, "keys", "create", "--name", n) for n in names[:4]]
    revoke = start_cli(tmp_path, "keys", "revoke", victim)
    creates += [start_cli(tmp_path, "keys", "create", "--name", n) for n in names[4:]]
    finish(revoke)
    secrets = [secret_of(finish(p)) for p in creates]
    with pytest.raises(Forbidden):
        store.authenticate(victim_secret)
    assert sorted(k["name"] for k in store.list()) == [*names, "victim"]
    assert all(store.authenticate(s) for s in secrets)


def slow_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every key file write waits first, widening any read-modify-write race."""
    write = digitrec.keys.atomic_write_json

    def slow(*args: Any, **kwargs: Any) -> Path:
        time.sleep(seconds)
        return write(*args, **kwargs)

    monkeypatch.setattr(digitrec.keys, "atomic_write_json", slow)


def test_changes_from_threads_are_serialised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.json"
    victim, victim_secret = KeyStore(path).create("victim")
    slow_writes(monkeypatch, 0.05)
    threads = [threading.Thread(target=KeyStore(path).create, args=(f"k{i}",)) for i in range(4)]
    threads.insert(2, threading.Thread(target=KeyStore(path).revoke, args=(victim,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store = KeyStore(path)
    assert sorted(k["name"] for k in store.list()) == ["k0", "k1", "k2", "k3", "victim"]
    with pytest.raises(Forbidden):
        store.authenticate(victim_secret)


def watch_modes(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[tuple[str, int]]:
    """Record the mode of every file in ``folder`` just before data is written to it and
    just before it is renamed into place."""
    seen: list[tuple[str, int]] = []

    def note(name: str, target: object) -> None:
        path = Path(str(target))
        if path.parent == folder and path.exists():
            seen.append((name, mode(path)))

    def hook(owner: object, name: str) -> None:
        original = getattr(owner, name)

        def wrapped(first: Any, *args: Any, **kwargs: Any) -> Any:
            note(name, first)
            return original(first, *args, **kwargs)

        monkeypatch.setattr(owner, name, wrapped)

    for name in ("write_text", "write_bytes", "replace", "rename"):
        hook(Path, name)
    for name in ("replace", "rename"):
        hook(os, name)
    return seen


def test_key_file_is_never_wider_than_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digitrec.storage, "_UMASK", 0o022)  # a usual umask, whatever CI has
    seen = watch_modes(monkeypatch, tmp_path)
    store = KeyStore(tmp_path / "keys.json")
    key_id, _ = store.create("a")
    store.create("b")
    store.revoke(key_id)
    assert {name for name, _ in seen} >= {"write_text", "replace"}  # the hooks saw the writes
    assert all(m == 0o600 for _, m in seen), seen
    assert mode(store.path) == 0o600
    assert mode(store.lock_path) == 0o600


def test_server_cache_sees_a_change_within_the_same_second(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key_id, secret = KeyStore(path).create("leaver")
    server = KeyStore(path)  # long-lived, as in the API service
    assert server.authenticate(secret).id == key_id
    before = path.stat()
    _, newcomer = KeyStore(path).create("newcomer")
    KeyStore(path).revoke(key_id)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # a coarse clock: same mtime
    with pytest.raises(Forbidden):
        server.authenticate(secret)
    assert server.authenticate(newcomer).name == "newcomer"


def test_round_trip_create_list_revoke_authenticate(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "home" / "keys.json")
    assert store.list() == []
    key_id, secret = store.create("ci")
    (listed,) = store.list()
    assert listed["id"] == key_id and listed["name"] == "ci" and listed["revoked_at"] is None
    assert "sha256" not in listed and secret not in store.path.read_text()
    assert store.authenticate(secret).id == key_id
    for wrong, code in ((None, "api_key_required"), (secret + "x", "api_key_invalid")):
        with pytest.raises(Unauthorized) as info:
            store.authenticate(wrong)
        assert info.value.code == code
    with pytest.raises(NotFound):
        store.revoke("key_nope")
    store.revoke(key_id)
    assert store.list()[0]["revoked_at"]
    with pytest.raises(Forbidden):
        store.authenticate(secret)


CORRUPT = {
    "not json": b'{"keys": [',
    "not utf-8": b"\xff\xfe\x00",
    "not an object": b"[]",
    "keys not a list": b'{"keys": {}}',
    "record without hash": b'{"keys": [{"id": "key_1", "name": "x"}]}',
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_key_file_is_a_clear_error(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.path.write_bytes(content)
    for action in (store.list, lambda: store.authenticate("dr_x"), lambda: store.create("x")):
        with pytest.raises(StorageError, match="corrupt"):
            action()
    assert store.path.read_bytes() == content  # a failed change never overwrites it
    assert main(["keys", "list", "--home", str(tmp_path)]) == StorageError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("digitrec: error: ") and "corrupt" in err and "Traceback" not in err


def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.path.mkdir()  # a folder where the file should be: unreadable even as root
    with pytest.raises(StorageError, match="could not read"):
        store.authenticate("dr_x")
    with pytest.raises(StorageError):
        store.create("x")


def test_a_corrupt_key_file_is_a_500_without_server_paths(
    tmp_path: Path, predictor: Predictor
) -> None:
    from fastapi.testclient import TestClient

    from digitrec.api import create_app
    from digitrec.config import Settings

    settings = Settings(home=tmp_path, require_api_key=True)
    settings.keys_path.write_text("{not json")
    with TestClient(create_app(settings, predictor)) as client:
        response = client.get("/api/v1/model", headers={"X-API-Key": "dr_x"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "storage_error"
    assert str(tmp_path) not in response.text
