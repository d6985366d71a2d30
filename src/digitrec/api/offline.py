"""What the page's offline mode downloads: the served model's metadata and its ONNX file.

``GET /api/v1/model/offline`` says everything the in-browser engine
(static/offline/engine.js) needs to answer as the server does: the model, its
preprocessing spec and the constants of preprocess.py that the port reads, labels,
calibration temperature, rejection thresholds, where the ONNX file is (with its sha256
and size) and the vendored ONNX Runtime Web files with their sizes, so the page can say
what going offline costs. ``GET /api/v1/model/onnx`` streams the production model's
ONNX bytes, keyed by version (``?v=``) so a browser may keep them for good.
Both read the model the service routes to production, and only stat files: the ONNX
file's hash is the manifest's, checked when the model was loaded.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response

from digitrec import preprocess
from digitrec.api.access import guard
from digitrec.api.deps import ServiceDep
from digitrec.api.schemas import OfflineModel, error_responses
from digitrec.api.web import STATIC_DIR
from digitrec.config import TOP_K_MAX
from digitrec.errors import ModelNotFound
from digitrec.predict import Predictor
from digitrec.registry import ONNX
from digitrec.rejection import Rejection

RUNTIME_DIR = STATIC_DIR / "vendor" / "onnxruntime-web"
RUNTIME_PACKAGE = "onnxruntime-web"
# The single-threaded SIMD WebAssembly build: the ES module, then the binary it loads.
RUNTIME_FILES = ("ort.wasm-core.min.js", "ort-wasm-simd.wasm")
ONNX_PATH = "/api/v1/model/onnx"
OFFLINE_PATH = "/api/v1/model/offline"
IMMUTABLE = "public, max-age=31536000, immutable"  # a version's ONNX file never changes

offline = APIRouter(
    prefix="/api/v1",
    tags=["offline"],
    dependencies=[Depends(guard)],
    responses=error_responses(401, 403, 429),
)


@functools.lru_cache(maxsize=1)
def runtime() -> dict[str, Any]:
    """The vendored ONNX Runtime Web: its version (from the lock folder's package.json)
    and each file's URL and size. Read once: the files ship with the package."""
    package = json.loads((RUNTIME_DIR / "package.json").read_text())
    files = [
        {
            "name": name,
            "url": f"/static/vendor/onnxruntime-web/{name}",
            "bytes": (RUNTIME_DIR / name).stat().st_size,
        }
        for name in RUNTIME_FILES
    ]
    return {
        "package": RUNTIME_PACKAGE,
        "version": package["dependencies"][RUNTIME_PACKAGE],
        "files": files,
    }


def _onnx(predictor: Predictor) -> tuple[Path, dict[str, Any]]:
    entry = predictor.entry
    if not entry.has_file(ONNX):
        raise ModelNotFound(f"model {entry.ref} has no ONNX file: it cannot run in a browser")
    return entry.path / ONNX, entry.manifest["files"][ONNX]


def _rejection(rejection: Rejection) -> dict[str, Any] | None:
    if rejection.method is None:
        return None  # the model cannot reject: every answer is a digit
    return {"method": rejection.method, "accept": rejection.accept, "reject": rejection.reject}


@offline.get(
    "/model/offline",
    response_model=OfflineModel,
    summary="What the page needs to read drawings without the server",
    responses=error_responses(404, 503),
)
async def offline_model(service: ServiceDep) -> dict[str, Any]:
    """The served model's metadata for the in-browser engine, and what it downloads."""
    predictor = service.predictor
    entry = predictor.entry
    _, info = _onnx(predictor)
    rt = runtime()
    return {
        "model": {"name": entry.name, "version": entry.version, "ref": entry.ref},
        "labels": entry.manifest.get("labels"),
        "preprocessing": predictor.spec.to_dict(),
        "pipeline": {
            "work_side": preprocess.WORK_SIDE,
            "min_contrast": preprocess.MIN_CONTRAST,
            "min_ink_pixels": preprocess.MIN_INK_PIXELS,
            "mark_level": preprocess.MARK_LEVEL,
            "restroke_side": preprocess.RESTROKE_SIDE,
        },
        "temperature": predictor.rejection.temperature,
        "rejection": _rejection(predictor.rejection),
        "top_k": {"default": service.settings.top_k, "max": TOP_K_MAX},
        "onnx": {
            "url": f"{ONNX_PATH}?v={entry.version}",
            "sha256": info["sha256"],
            "bytes": info["bytes"],
        },
        "runtime": rt,
        "bundle_bytes": info["bytes"] + sum(f["bytes"] for f in rt["files"]),
    }


@offline.get(
    "/model/onnx",
    response_class=FileResponse,
    summary="The served model as an ONNX file",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the ONNX bytes"},
        304: {"description": "the copy the client holds (If-None-Match) is current"},
        **error_responses(404, 503),
    },
)
async def onnx_file(
    request: Request,
    service: ServiceDep,
    v: Annotated[
        str | None, Query(description="the model version; when current, cache for good")
    ] = None,
) -> Response:
    """The production model's ONNX bytes; the ETag is their sha256."""
    predictor = service.predictor
    path, info = _onnx(predictor)
    etag = f'"{info["sha256"]}"'
    cache = IMMUTABLE if v == predictor.version else "no-cache"
    headers = {"etag": etag, "cache-control": cache}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="application/octet-stream", headers=headers)
