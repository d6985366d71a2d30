"""The web page and the dashboard, their static files, the page token, and API docs at /docs."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import mimetypes
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from digitrec.api.access import CLIENT_COOKIE, Access, is_cookie_id, web_token_for
from digitrec.api.schemas import WebToken

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"
CLIENT_COOKIE_MAX_AGE_S = 365 * 24 * 3600
# The pages and their static files are revalidated on every use (see ``CachedStatic``).
CACHE_CONTROL = "no-cache"
PAGES = frozenset({"/", "/dashboard", "/docs"})  # the HTML pages, compressed like /static
GZIP_MIN_BYTES = 1024  # smaller files gain too little to be worth compressing
# Larger files are compressed once per worker (in a thread) and kept, not once per request:
# ONNX Runtime's 10.6 MB WebAssembly takes ~0.3 s of CPU to compress, so compressing it for
# every download would let anyone make the server work hard for one cheap request.
GZIP_ONCE_BYTES = 256 * 1024
GZIP_ONCE_LEVEL = 6
GZIP_ONCE_SUFFIXES = (".wasm", ".js", ".mjs")  # the only large static files
NOT_GZIPPED = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/wasm")  # see GzipOnce

web = APIRouter(include_in_schema=False)


@web.get("/")
async def index(request: Request) -> FileResponse:
    """The page; a first-time visitor gets an anonymous id in a first-party cookie, the
    client id of A/B tests (``access.client_id``): the same browser, the same model."""
    page = FileResponse(
        WEB_DIR / "index.html", media_type="text/html", headers={"cache-control": "no-cache"}
    )
    if not is_cookie_id(request.cookies.get(CLIENT_COOKIE, "")):
        page.set_cookie(
            CLIENT_COOKIE,
            secrets.token_hex(16),
            max_age=CLIENT_COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return page


@web.get("/dashboard")
async def dashboard() -> FileResponse:
    """The dashboard: its figures come from GET /api/v1/stats (see ``api.stats``)."""
    return FileResponse(
        WEB_DIR / "dashboard.html", media_type="text/html", headers={"cache-control": "no-cache"}
    )


@web.get("/web/token", response_model=WebToken, include_in_schema=False)
async def web_token(request: Request) -> dict[str, Any]:
    """A signed token the page sends as X-Web-Token, so visitors need no API key (see
    ``deps``: short-lived, for this client and the routes the page calls only)."""
    access: Access = request.app.state.access
    token = await web_token_for(request)
    return {"token": token, "expires_in": access.web_tokens.ttl}


@web.get("/docs")
async def docs() -> Any:
    if _swagger_dir() is None:
        return HTMLResponse(
            "<!doctype html><title>API docs</title><p>Swagger UI is not "
            "installed; the OpenAPI document is at "
            "<a href='/openapi.json'>/openapi.json</a>.</p>"
        )
    return FileResponse(WEB_DIR / "docs.html", media_type="text/html")


def _swagger_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


class CachedStatic(StaticFiles):
    """Static files with ``Cache-Control: no-cache``: a browser keeps its copy but asks
    each time whether it changed, with the ETag and Last-Modified that StaticFiles sends,
    and gets a bodiless 304 when not. The URLs carry no version (index.html loads
    /static/app.js, which imports ./api.js), so a long max-age would keep serving an old
    script after an upgrade, mixed with a new page; revalidation costs one small round
    trip and updates are seen at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = CACHE_CONTROL
        return response


class GzipOnce:
    """Large static files (the offline bundle's WebAssembly), gzipped once per worker.

    The compressed bytes are computed in a thread on the first request that accepts gzip
    and kept with the file's size and modification time (a changed file is compressed
    again). The answer carries its own ETag and honours If-None-Match, like StaticFiles.
    """

    def __init__(self) -> None:
        self.kept: dict[Path, tuple[tuple[int, int], bytes, str]] = {}
        self.lock = asyncio.Lock()

    async def get(self, path: Path) -> tuple[bytes, str]:
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        async with self.lock:  # one compression at a time, and each file only once
            kept = self.kept.get(path)
            if kept is None or kept[0] != key:
                body = await run_in_threadpool(_gzip_file, path)
                etag = f'"{hashlib.sha256(body).hexdigest()[:32]}-gz"'
                kept = self.kept[path] = (key, body, etag)
        return kept[1], kept[2]


def _gzip_file(path: Path) -> bytes:
    return gzip.compress(path.read_bytes(), GZIP_ONCE_LEVEL, mtime=0)


class CompressPages:
    """Gzip for the pages and /static only, when the client accepts it. The API's JSON
    answers are small and are left alone, so compression never touches the API's
    streaming, body-limit or error paths. Static files over ``GZIP_ONCE_BYTES`` are
    compressed once and kept (``GzipOnce``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(
            app, minimum_size=GZIP_MIN_BYTES, exclude_content_types=NOT_GZIPPED
        )
        self.once = GzipOnce()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/static/") and _accepts_gzip(scope):
            big = _big_static_file(path)
            if big is not None and scope.get("method") in ("GET", "HEAD"):
                await self._send_kept(big, scope, send)
                return
        if path in PAGES or path.startswith("/static/"):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _send_kept(self, file: Path, scope: Scope, send: Send) -> None:
        body, etag = await self.once.get(file)
        headers = {
            "content-type": mimetypes.guess_type(file.name)[0] or "application/octet-stream",
            "content-encoding": "gzip",
            "vary": "Accept-Encoding",
            "cache-control": CACHE_CONTROL,
            "etag": etag,
        }
        asked = dict(scope.get("headers", [])).get(b"if-none-match", b"").decode("latin-1")
        if etag in [tag.strip() for tag in asked.split(",")]:
            response = Response(status_code=304, headers=headers)
        else:
            response = Response(body if scope["method"] == "GET" else b"", headers=headers)
            response.headers["content-length"] = str(len(body))
        await response(scope, _no_receive, send)


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _accepts_gzip(scope: Scope) -> bool:
    accept = dict(scope.get("headers", [])).get(b"accept-encoding", b"")
    return b"gzip" in accept.lower()


def _big_static_file(path: str) -> Path | None:
    """The file under STATIC_DIR that ``path`` names, if it is one worth ``GzipOnce``."""
    relative = path.removeprefix("/static/")
    if not relative.endswith(GZIP_ONCE_SUFFIXES) or ".." in relative.split("/"):
        return None  # most requests end here, before any file system call
    if relative.startswith("/"):
        return None
    file = STATIC_DIR / relative
    try:
        if not file.is_file() or file.stat().st_size < GZIP_ONCE_BYTES:
            return None
    except OSError:
        return None
    kind = mimetypes.guess_type(file.name)[0] or ""
    compressible = kind in ("application/wasm", "text/javascript", "application/javascript")
    return file if compressible and file.resolve().is_relative_to(STATIC_DIR) else None


def mount_static(app: FastAPI) -> None:
    # Browsers compile WebAssembly as it streams only when it comes as application/wasm;
    # some systems' MIME tables lack it.
    mimetypes.add_type("application/wasm", ".wasm")
    app.mount("/static", CachedStatic(directory=STATIC_DIR), name="static")
    swagger = _swagger_dir()
    if swagger is not None:
        app.mount("/docs/assets", StaticFiles(directory=swagger), name="swagger")
