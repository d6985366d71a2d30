"""The web page and the dashboard, their static files, the page token, and API docs at /docs."""

from __future__ import annotations

import mimetypes
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware
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
    token = web_token_for(request)
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


class CompressPages:
    """Gzip for the pages and /static only, when the client accepts it. The API's JSON
    answers are small and are left alone, so compression never touches the API's
    streaming, body-limit or error paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=GZIP_MIN_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path in PAGES or path.startswith("/static/"):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def mount_static(app: FastAPI) -> None:
    # Browsers compile WebAssembly as it streams only when it comes as application/wasm;
    # some systems' MIME tables lack it.
    mimetypes.add_type("application/wasm", ".wasm")
    app.mount("/static", CachedStatic(directory=STATIC_DIR), name="static")
    swagger = _swagger_dir()
    if swagger is not None:
        app.mount("/docs/assets", StaticFiles(directory=swagger), name="swagger")
