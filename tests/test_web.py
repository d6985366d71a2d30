"""The page's files over HTTP: gzip for the pages and /static when the client accepts it,
Cache-Control and validators so a browser revalidates, and API answers left uncompressed."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from digitrec.api.web import CACHE_CONTROL, GZIP_MIN_BYTES, STATIC_DIR

GZIP = {"Accept-Encoding": "gzip"}


def test_static_files_are_compressed_and_revalidated(client: TestClient) -> None:
    script = (STATIC_DIR / "app.js").read_bytes()
    assert len(script) > GZIP_MIN_BYTES, "the check needs a file worth compressing"
    response = client.get("/static/app.js", headers=GZIP)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in response.headers["vary"].lower()
    assert int(response.headers["content-length"]) < len(script)
    assert response.content == script  # httpx decodes it: the same file
    assert response.headers["cache-control"] == CACHE_CONTROL
    assert response.headers["etag"] and response.headers["last-modified"]

    again = client.get(
        "/static/app.js", headers={**GZIP, "If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["cache-control"] == CACHE_CONTROL


def test_uncompressed_for_clients_that_do_not_ask(client: TestClient) -> None:
    response = client.get("/static/style.css", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.content == (STATIC_DIR / "style.css").read_bytes()
    assert response.headers["cache-control"] == CACHE_CONTROL


def test_small_files_are_sent_as_they_are(client: TestClient) -> None:
    small = min((p for p in STATIC_DIR.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    assert small.stat().st_size < GZIP_MIN_BYTES
    response = client.get(f"/static/{small.relative_to(STATIC_DIR).as_posix()}", headers=GZIP)
    assert response.status_code == 200
    assert "content-encoding" not in response.headers


def test_pages_are_compressed_and_never_cached_stale(client: TestClient) -> None:
    for path in ("/", "/dashboard"):
        response = client.get(path, headers=GZIP)
        assert response.status_code == 200, path
        assert response.headers["content-encoding"] == "gzip", path
        assert response.headers["cache-control"] == "no-cache", path
        assert "content-security-policy" in response.headers, path


def test_api_answers_are_not_compressed(client: TestClient) -> None:
    for path in ("/api/v1/model", "/openapi.json"):
        response = client.get(path, headers=GZIP)
        assert response.status_code == 200, path
        assert "content-encoding" not in response.headers, path


def test_images_are_not_compressed_again(client: TestClient) -> None:
    example = STATIC_DIR / "examples" / "drawing-2.png"
    assert example.stat().st_size > GZIP_MIN_BYTES
    response = client.get("/static/examples/drawing-2.png", headers=GZIP)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert "content-encoding" not in response.headers
    assert response.headers["cache-control"] == CACHE_CONTROL


def test_big_files_are_compressed_once_per_worker(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offline bundle's 10 MB WebAssembly: compressed on the first request, then the
    same bytes are sent again; never compressed per request."""
    from digitrec.api import web

    url = "/static/vendor/onnxruntime-web/ort-wasm-simd.wasm"
    original = (STATIC_DIR / url.removeprefix("/static/")).read_bytes()
    assert len(original) > web.GZIP_ONCE_BYTES
    calls = []
    real = web._gzip_file
    monkeypatch.setattr(web, "_gzip_file", lambda path: calls.append(path) or real(path))
    first = client.get(url, headers=GZIP)
    assert first.status_code == 200 and first.headers["content-encoding"] == "gzip"
    assert first.headers["content-type"] == "application/wasm"
    assert first.content == original  # httpx decodes it
    assert int(first.headers["content-length"]) < len(original) // 2
    again = client.get(url, headers=GZIP)
    assert again.headers["etag"] == first.headers["etag"] and len(calls) == 1
    unchanged = client.get(url, headers={**GZIP, "If-None-Match": first.headers["etag"]})
    assert unchanged.status_code == 304 and unchanged.content == b""
    plain = client.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == original
    assert len(calls) == 1
    assert client.get("/static/../web.py", headers=GZIP).status_code == 404
