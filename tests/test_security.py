"""Access control: API keys, the web page's token, rate limits, CORS and safe references."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitrec.api import create_app
from digitrec.api.security import RateLimiter, WebTokens
from digitrec.config import Settings
from digitrec.errors import RateLimited
from digitrec.keys import KeyStore, hash_key
from digitrec.predict import Predictor
from tests.conftest import encode, reload_keys, stroke_image

PREDICT = "/api/v1/predict"
PNG = encode(Image.fromarray(stroke_image()))
BROWSER = {"Sec-Fetch-Site": "same-origin"}  # what Chromium sends for the page's own fetches


def post(client: TestClient, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return client.post(
        PREDICT, content=PNG, headers={"content-type": "image/png", **(headers or {})}
    )


@pytest.fixture
def keyed(tmp_path: Path, predictor: Predictor) -> Iterator[tuple[TestClient, KeyStore]]:
    settings = Settings(
        home=tmp_path, require_api_key=True, rate_limit_per_minute=0, web_rate_limit_per_minute=0
    )
    store = KeyStore.from_settings(settings)
    with TestClient(create_app(settings, predictor)) as client:
        yield client, store
    store.close()


def test_keys_off_by_default(client: TestClient) -> None:
    assert post(client).status_code == 200


def test_key_required_when_on(keyed: tuple[TestClient, KeyStore]) -> None:
    client, _ = keyed
    response = post(client)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_required"
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/v1/model").status_code == 401
    assert client.get("/healthz").status_code == 200  # probes stay open


def test_bearer_and_x_api_key_both_work(keyed: tuple[TestClient, KeyStore]) -> None:
    client, store = keyed
    _, secret = store.create("tester")
    reload_keys(client)  # as a server does every keys_refresh_s
    assert post(client, {"Authorization": f"Bearer {secret}"}).status_code == 200
    assert post(client, {"X-API-Key": secret}).status_code == 200
    bad = post(client, {"X-API-Key": secret + "x"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "api_key_invalid"


def test_revoked_key_is_forbidden_without_restart(keyed: tuple[TestClient, KeyStore]) -> None:
    client, store = keyed
    key_id, secret = store.create("leaver")
    reload_keys(client)
    assert post(client, {"X-API-Key": secret}).status_code == 200
    store.revoke(key_id)  # as `digitrec keys revoke` would, from outside
    reload_keys(client)
    response = post(client, {"X-API-Key": secret})
    assert response.status_code == 403 and response.json()["error"]["code"] == "api_key_revoked"


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    store = KeyStore.from_settings(Settings(home=tmp_path))
    _, secret = store.create("x")
    store.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("digitrec.db*"))  # WAL included
    assert hash_key(secret).encode() in stored
    assert secret.encode() not in stored and secret[3:20].encode() not in stored


def test_web_page_works_for_visitors_when_keys_are_on(keyed: tuple[TestClient, KeyStore]) -> None:
    client, _ = keyed
    assert client.get("/").status_code == 200
    issued = client.get("/web/token", headers=BROWSER).json()
    token = issued["token"]
    assert issued["expires_in"] == 600  # minutes, not the hours it used to be
    assert post(client, {"X-Web-Token": token, **BROWSER}).status_code == 200
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert post(client, {"X-Web-Token": forged, **BROWSER}).status_code == 401


def test_web_token_is_bound_to_the_page_the_route_and_the_client(
    keyed: tuple[TestClient, KeyStore],
) -> None:
    """With keys on, a web token is no substitute for a key: only the routes the page
    calls, only from a same-origin browser request, only from the client it was issued to."""
    from digitrec.api.access import WEB_TOKEN_PATHS

    client, _ = keyed
    token = client.get("/web/token", headers=BROWSER).json()["token"]
    web = {"X-Web-Token": token, **BROWSER}
    assert client.get("/api/v1/model", headers=web).status_code == 200  # the page's card
    pages = {"/api/v1/predict", "/api/v1/model", "/api/v1/feedback", "/api/v1/stats"}
    pages |= {"/api/v1/model/offline", "/api/v1/model/onnx"}  # the offline mode's downloads
    pages |= {"/api/v1/model/scripts/onnx"}  # and its script model (digits of other scripts)
    pages |= {"/api/v1/feedback/offline"}  # corrections of answers given offline
    pages |= {"/api/v1/number"}  # the page's number mode
    assert pages == WEB_TOKEN_PATHS
    assert client.get("/openapi.json", headers=web).status_code == 200  # public anyway
    assert post(client, {"X-Web-Token": token}).status_code == 401  # not from a plain script
    cross = {"X-Web-Token": token, "Sec-Fetch-Site": "cross-site"}
    assert post(client, cross).status_code == 401
    evil = {"X-Web-Token": token, "Origin": "https://evil.example"}
    assert post(client, evil).status_code == 401
    for headers in ({}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        refused = client.get("/web/token", headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["error"]["code"] == "cross_origin"


def test_web_tokens_can_be_turned_off(tmp_path: Path, predictor: Predictor) -> None:
    settings = Settings(home=tmp_path, require_api_key=True, web_tokens=False)
    with TestClient(create_app(settings, predictor)) as client:
        response = client.get("/web/token", headers=BROWSER)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "web_tokens_off"
        token = WebTokens(b"k" * 32).issue("testclient")
        assert post(client, {"X-Web-Token": token, **BROWSER}).status_code == 401


def test_web_tokens_expire_and_name_their_client() -> None:
    tokens = WebTokens(b"k" * 32, ttl=60)
    token = tokens.issue("203.0.113.7", now=1000)
    assert tokens.verify(token, "203.0.113.7", now=1059)
    assert not tokens.verify(token, "203.0.113.7", now=1061)
    assert not tokens.verify(token, "203.0.113.8", now=1000)  # another client
    assert not WebTokens(b"other" * 8).verify(token, "203.0.113.7", now=1000)
    assert not tokens.verify("garbage", "203.0.113.7", now=1000)
    assert not tokens.verify("1.2.\xe9", "203.0.113.7", now=1000)  # not ASCII: invalid, no crash


@pytest.mark.parametrize("header", ["X-Web-Token", "X-API-Key", "Authorization"])
def test_non_ascii_credentials_are_refused_not_a_crash(
    keyed: tuple[TestClient, KeyStore], header: str
) -> None:
    client, _ = keyed
    value = b"Bearer 1.2.\xe9" if header == "Authorization" else b"1.2.\xe9"
    response = client.get("/api/v1/model", headers={header: value})  # type: ignore[dict-item]
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] in ("api_key_required", "api_key_invalid")


def test_rate_limit_per_client_with_retry_after(tmp_path: Path, predictor: Predictor) -> None:
    settings = Settings(home=tmp_path, rate_limit_per_minute=30)  # burst of 5
    with TestClient(create_app(settings, predictor)) as client:
        codes = [post(client).status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and codes[-1] == 429
        limited = post(client)
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 2


def test_each_key_has_its_own_bucket(tmp_path: Path, predictor: Predictor) -> None:
    settings = Settings(home=tmp_path, require_api_key=True, rate_limit_per_minute=30)
    store = KeyStore.from_settings(settings)
    (_, first), (_, second) = store.create("a"), store.create("b")
    with TestClient(create_app(settings, predictor)) as client:
        for _ in range(6):
            post(client, {"X-API-Key": first})
        assert post(client, {"X-API-Key": first}).status_code == 429
        assert post(client, {"X-API-Key": second}).status_code == 200


def test_web_visitors_have_their_own_limit(tmp_path: Path, predictor: Predictor) -> None:
    settings = Settings(
        home=tmp_path, require_api_key=True, web_rate_limit_per_minute=30, rate_limit_per_minute=0
    )
    with TestClient(create_app(settings, predictor)) as client:
        token = client.get("/web/token", headers=BROWSER).json()["token"]
        codes = [post(client, {"X-Web-Token": token, **BROWSER}).status_code for _ in range(8)]
        assert codes.count(429) >= 2


def test_local_use_is_never_throttled_by_default(tmp_path: Path, predictor: Predictor) -> None:
    """A person classifying a folder through their own server: no limit unless keys are
    on or a limit is set (the default used to be 600/minute in bursts of 100)."""
    settings = Settings(home=tmp_path)
    assert (settings.api_rate_limit, settings.web_rate_limit) == (0, 0)
    with TestClient(create_app(settings, predictor)) as client:
        codes = {post(client).status_code for _ in range(150)}
    assert codes == {200}
    keyed = Settings(home=tmp_path, require_api_key=True)
    assert (keyed.api_rate_limit, keyed.web_rate_limit) == (600, 120)
    assert Settings(home=tmp_path, rate_limit_per_minute=60).api_rate_limit == 60


def test_limiter_refills_and_stays_bounded() -> None:
    limiter = RateLimiter(per_minute=60, max_clients=3)
    for _ in range(10):
        limiter.check("a", now=0.0)
    with pytest.raises(RateLimited) as info:
        limiter.check("a", now=0.0)
    assert 0 < info.value.retry_after <= 1
    limiter.check("a", now=1.0)  # one token back after a second
    for client in "bcdef":
        limiter.check(client, now=2.0)
    assert len(limiter.buckets) == 3


def test_cors_is_off_unless_configured(
    client: TestClient, tmp_path: Path, predictor: Predictor
) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    settings = Settings(home=tmp_path, cors_origins=["https://elsewhere.example"])
    with TestClient(create_app(settings, predictor)) as cors:
        headers = cors.get("/healthz", headers=origin).headers
        assert headers["access-control-allow-origin"] == "https://elsewhere.example"


def test_no_stack_traces_in_responses(tmp_path: Path, predictor: Predictor) -> None:
    app = create_app(Settings(home=tmp_path), predictor)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "the server failed to answer; it was logged"}
    }
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]  # even on a 500
    assert response.headers["x-frame-options"] == "DENY"


def test_settings_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "from-env-" + "0123456789abcdefghijklmnopqrstuvwxyz"
    monkeypatch.setenv("DIGITREC_SECRET_KEY", secret)
    settings = Settings()
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == secret
    assert secret not in repr(settings)


@pytest.mark.parametrize("weak", ["x", "short-but-varied-123", "a" * 64, "abababab" * 8])
def test_weak_secrets_are_refused(weak: str) -> None:
    with pytest.raises(ValueError, match="secret key is too"):
        Settings(secret_key=weak)


def test_weak_secret_is_a_one_line_cli_error(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "DIGITREC_HOME": str(tmp_path), "DIGITREC_SECRET_KEY": "x"}
    done = subprocess.run(
        [sys.executable, "-m", "digitrec.cli", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "secret key is too weak" in lines[0], done.stderr


def test_rotating_x_forwarded_for_does_not_escape_the_limit(
    tmp_path: Path, predictor: Predictor
) -> None:
    """Behind a trusted proxy, the client is what the proxy saw, not what the client wrote
    at the left of X-Forwarded-For (rotating that used to give a fresh bucket each time)."""
    settings = Settings(home=tmp_path, rate_limit_per_minute=30, trust_proxy_headers=True)
    app = create_app(settings, predictor)
    with TestClient(app, client=("127.0.0.1", 40000)) as client:  # the proxy, on loopback
        codes = [
            post(client, {"X-Forwarded-For": f"10.9.{i}.1, 203.0.113.5"}).status_code
            for i in range(8)
        ]
        assert codes[:5] == [200] * 5 and codes[-1] == 429
        assert post(client, {"X-Forwarded-For": "203.0.113.6"}).status_code == 200  # another


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "expected"),
    [
        ("127.0.0.1", "6.6.6.6, 203.0.113.5", None, "203.0.113.5"),  # rightmost untrusted
        ("198.51.100.1", "203.0.113.5", None, "198.51.100.1"),  # peer is no proxy: ignored
        ("127.0.0.1", "203.0.113.5, 10.0.0.2", ["127.0.0.1", "10.0.0.0/8"], "203.0.113.5"),
        ("127.0.0.1", "203.0.113.5, not-an-ip", None, "127.0.0.1"),  # forged: peer
        ("127.0.0.1", "", None, "127.0.0.1"),
    ],
)
def test_client_address_behind_proxies(
    tmp_path: Path, peer: str, forwarded: str, proxies: list[str] | None, expected: str
) -> None:
    from starlette.requests import Request

    from digitrec.api.access import client_address

    extra = {"trusted_proxies": proxies} if proxies else {}
    app = create_app(Settings(home=tmp_path, trust_proxy_headers=True, **extra))
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope = {"type": "http", "headers": headers, "client": (peer, 1), "app": app}
    assert client_address(Request(scope)) == expected
    untrusting = create_app(Settings(home=tmp_path))
    assert client_address(Request({**scope, "app": untrusting})) == peer


def test_ipv6_clients_are_counted_per_64() -> None:
    from digitrec.api.access import client_key

    net = "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == net
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:203.0.113.5") == client_key("203.0.113.5") == "203.0.113.5"
    assert client_key("testclient") == "testclient"


def test_web_token_does_not_open_other_api_routes(tmp_path: Path, predictor: Predictor) -> None:
    from fastapi import Depends

    from digitrec.api.access import guard

    app = create_app(Settings(home=tmp_path, require_api_key=True), predictor)
    app.router.add_api_route("/api/v1/admin", lambda: {"ok": True}, dependencies=[Depends(guard)])
    with TestClient(app) as client:
        token = client.get("/web/token", headers=BROWSER).json()["token"]
        web = {"X-Web-Token": token, **BROWSER}
        assert client.get("/api/v1/admin", headers=web).status_code == 401
        assert client.get("/api/v1/model", headers=web).status_code == 200
