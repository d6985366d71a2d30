"""The page's files over HTTP: gzip for the pages and /static when the client accepts it,
Cache-Control and validators so a browser revalidates, and API answers left uncompressed."""

from __future__ import annotations

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
