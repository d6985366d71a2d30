"""The app factory: ``create_app(settings, predictor)`` builds the FastAPI application.

Nothing is loaded at import. The model is loaded in the lifespan (or passed in by
tests). Every error leaves as ``{"error": {"code", "message"}}`` with a fitting status;
unexpected exceptions become a bare 500 without details (they are logged instead).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from digitrec import __version__
from digitrec.api import metrics
from digitrec.api.access import Access
from digitrec.api.offline import offline
from digitrec.api.pwa import pwa
from digitrec.api.routes import api, health, monitoring
from digitrec.api.schemas import OFFLINE_BATCH_MAX
from digitrec.api.security import (
    INTERNAL_ERROR_MESSAGE,
    BodyLimitMiddleware,
    SecurityHeadersMiddleware,
    UnexpectedErrorMiddleware,
)
from digitrec.api.service import Service
from digitrec.api.shutdown import DelayedExit
from digitrec.api.stats import stats
from digitrec.api.web import CompressPages, mount_static, web
from digitrec.config import LOG_DATEFMT, LOG_FORMAT, WORKER_LOG_LEVEL, Settings
from digitrec.errors import DigitrecError, RateLimited
from digitrec.predict import Predictor

log = logging.getLogger(__name__)

DESCRIPTION = """Reads handwritten digits. Send an image to `POST /api/v1/predict` as a
multipart upload (field `image`), as the raw file with an `image/*` content type, or as
JSON `{"image": "<base64 or data URL>"}`; get the top digits with their probabilities.
Errors are JSON: `{"error": {"code": ..., "message": ...}}`."""


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def _digitrec_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DigitrecError)
    if exc.status >= 500 and exc.status != 503:
        # The server's own failure (e.g. an unreadable key file): its message may name
        # server paths, so it goes to the log and the client gets the code alone.
        log.error("%s on %s %s: %s", exc.code, request.method, request.url.path, exc.message)
        return error_response(exc.status, exc.code, INTERNAL_ERROR_MESSAGE)
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    elif exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.status, exc.code, exc.message, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())) or "request"
    return error_response(422, "validation_error", f"{where}: {first.get('msg', 'invalid')}")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return error_response(exc.status_code, code, message, getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", INTERNAL_ERROR_MESSAGE)


# Routes whose bodies are small JSON: a correction is under 200 bytes; a batch of offline
# corrections carries up to OFFLINE_BATCH_MAX inputs of 784 bytes in base64 (~1.5 KB each).
SMALL_BODIES = {
    "/api/v1/feedback": 4096,
    "/api/v1/feedback/offline": OFFLINE_BATCH_MAX * 2048 + 4096,
}


def create_app(
    settings: Settings | None = None, predictor: Predictor | None = None, *, warm: bool = False
) -> FastAPI:
    """The application; ``warm`` starts the decoding sandbox with the app (the server
    does; tests start it on the first image that needs it)."""
    settings = settings or Settings()
    service = Service(settings, predictor, warm=warm)
    access = Access(settings)
    delayed_exit = DelayedExit(service, settings.shutdown_delay_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        await access.start()
        delayed_exit.install()  # SIGTERM: /readyz says "shutting down" before the drain
        yield
        delayed_exit.uninstall()
        await access.stop()
        await service.stop()
        metrics.process_stopped()

    app = FastAPI(
        title="Neural Digit Recognizer",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        debug=False,
    )
    app.state.service = service
    app.state.access = access
    app.include_router(api)
    app.include_router(offline)
    app.include_router(stats)
    app.include_router(health)
    app.include_router(monitoring)
    app.include_router(web)
    app.include_router(pwa)
    mount_static(app)
    app.add_exception_handler(DigitrecError, _digitrec_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "x-api-key", "x-web-token", "content-type"],
        )
    # Gzip for the pages and static files only (see ``CompressPages``).
    app.add_middleware(CompressPages)
    # Next: an unexpected exception becomes a JSON 500 inside the other middlewares,
    # so it still carries the security headers.
    app.add_middleware(UnexpectedErrorMiddleware)
    # Room for base64 (4/3) and multipart headers; the image itself is checked exactly later.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_upload_bytes * 4 // 3 + 65536,
        paths=SMALL_BODIES,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    # Outermost: counts and times every answer, those the middlewares above give too.
    app.add_middleware(metrics.MetricsMiddleware)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings come from DIGITREC_* variables. A worker
    process of ``--workers N`` logs as ``serve`` does (one worker runs in serve's own)."""
    level = os.environ.get(WORKER_LOG_LEVEL)
    if level and not logging.getLogger().handlers:
        logging.basicConfig(level=int(level), format=LOG_FORMAT, datefmt=LOG_DATEFMT)
    return create_app(Settings(), warm=True)
