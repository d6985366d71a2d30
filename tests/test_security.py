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
from digitrec.keys import KeyStore
from digitrec.predict import Predictor
from tests.conftest import encode, stroke_image

PREDICT = "/api/v1/predict"
PNG = encode(Image.fromarray(stroke_image()))


def post(client: TestClient, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return client.post(
        PREDICT, content=PNG, headers={"content-type": "image/png", **(headers or {})}
    )


@pytest.fixture
def keyed(tmp_path: Path, predictor: Predictor) -> Iterator[tuple[TestClient, KeyStore]]:
    settings = Settings(
        home=tmp_path, require_api_key=True, rate_limit_per_minute=0, web_rate_limit_per_minute=0
    )
    store = KeyStore(settings.keys_path)
    with TestClient(create_app(settings, predictor)) as client:
        yield client, store


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
    assert post(client, {"Authorization": f"Bearer {secret}"}).status_code == 200
    assert post(client, {"X-API-Key": secret}).status_code == 200
    bad = post(client, {"X-API-Key": secret + "x"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "api_key_invalid"


def test_revoked_key_is_forbidden_without_restart(keyed: tuple[TestClient, KeyStore]) -> None:
    client, store = keyed
    key_id, secret = store.create("leaver")
    assert post(client, {"X-API-Key": secret}).status_code == 200
    KeyStore(store.path).revoke(key_id)  # as `digitrec keys revoke` would, from outside
    response = post(client, {"X-API-Key": secret})
    assert response.status_code == 403 and response.json()["error"]["code"] == "api_key_revoked"


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    _, secret = store.create("x")
    text = (tmp_path / "keys.json").read_text()
    assert secret not in text and secret[3:20] not in text
    assert oct((tmp_path / "keys.json").stat().st_mode)[-3:] == "600"


def test_web_page_works_for_visitors_when_keys_are_on(keyed: tuple[TestClient, KeyStore]) -> None:
    client, _ = keyed
    assert client.get("/").status_code == 200
    token = client.get("/web/token").json()["token"]
    assert post(client, {"X-Web-Token": token}).status_code == 200
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert post(client, {"X-Web-Token": forged}).status_code == 401


def test_web_tokens_expire() -> None:
    tokens = WebTokens(b"k" * 32, ttl=60)
    token = tokens.issue(now=1000)
    assert tokens.verify(token, now=1059)
    assert not tokens.verify(token, now=1061)
    assert not WebTokens(b"other" * 8).verify(token, now=1000)
    assert not tokens.verify("garbage", now=1000)


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
    store = KeyStore(settings.keys_path)
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
        token = client.get("/web/token").json()["token"]
        codes = [post(client, {"X-Web-Token": token}).status_code for _ in range(8)]
        assert codes.count(429) >= 2


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


def test_settings_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITREC_SECRET_KEY", "from-env")
    settings = Settings()
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)
