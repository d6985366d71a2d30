"""What the page's offline mode downloads: the served model's metadata and its ONNX file.

``GET /api/v1/model/offline`` says everything the in-browser engine
(static/offline/engine.js) needs to answer as the server does: the model, its
preprocessing spec and the constants of preprocess.py that the port reads, labels,
calibration temperature, rejection thresholds, where the ONNX file is (with its sha256
and size) and the vendored ONNX Runtime Web files with their sizes, so the page can say
what going offline costs. ``GET /api/v1/model/onnx`` streams the production model's
ONNX bytes, keyed by version (``?v=``) so a browser may keep them for good.

When a script model is loaded (``multiscript``: digits of other writing systems), the
metadata's ``script_model`` says what the engine needs to read a drawing in a script as
``ScriptModel.read`` does: its scripts with their digit characters, its classes, its
preprocessing and ``auto`` thresholds, the constants of ``multiscript`` that the port
reads, and its ONNX file, which ``GET /api/v1/model/scripts/onnx`` streams (keyed by
version in the same way); ``bundle_bytes`` counts it. Without one, ``script_model`` is
null and the engine reads Latin only.
All read the models the service routes to production, and only stat files: the ONNX
files' hashes are the manifests', checked when the models were loaded.
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
from digitrec.multiscript import CLOSE, REJECTED, RIGHT_TO_LEFT, SURE, ScriptModel
from digitrec.predict import Predictor
from digitrec.registry import ONNX
from digitrec.rejection import Rejection
from digitrec.scripts import digit_char

RUNTIME_DIR = STATIC_DIR / "vendor" / "onnxruntime-web"
RUNTIME_PACKAGE = "onnxruntime-web"
# The single-threaded SIMD WebAssembly build: the ES module, then the binary it loads.
RUNTIME_FILES = ("ort.wasm-core.min.js", "ort-wasm-simd.wasm")
ONNX_PATH = "/api/v1/model/onnx"
SCRIPTS_ONNX_PATH = "/api/v1/model/scripts/onnx"
OFFLINE_PATH = "/api/v1/model/offline"
IMMUTABLE = "public, max-age=31536000, immutable"  # a version's ONNX file never changes
ONNX_RESPONSES: dict[int | str, dict[str, Any]] = {  # what both ONNX routes answer
    200: {"content": {"application/octet-stream": {}}, "description": "the ONNX bytes"},
    304: {"description": "the copy the client holds (If-None-Match) is current"},
    **error_responses(404, 503),
}

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


def _script_model(model: ScriptModel | None) -> dict[str, Any] | None:
    """What the engine needs to port ``ScriptModel.read``; None without a script model."""
    if model is None:
        return None
    return {
        "version": model.version,
        "scripts": [
            {
                "name": name,
                "digits": [digit_char(name, d) for d in range(10)],
                "right_to_left": name in RIGHT_TO_LEFT,
            }
            for name in model.scripts
        ],
        "classes": model.classes,
        "not_a_digit": model.not_a_digit,
        "preprocessing": {"mean": model.mean, "std": model.std},
        "auto": {"latin_keep": model.latin_keep, "foreign_sure": model.foreign_sure},
        "close": CLOSE,
        "sure": SURE,
        "rejected": list(REJECTED),
        "onnx": {
            "url": f"{SCRIPTS_ONNX_PATH}?v={model.version}",
            "sha256": model.manifest["sha256"],
            "bytes": model.path.stat().st_size,
        },
    }


def _send(request: Request, path: Path, sha256: str, current: bool) -> Response:
    """An ONNX file, its ETag its sha256; kept for good when asked for by its version."""
    etag = f'"{sha256}"'
    headers = {"etag": etag, "cache-control": IMMUTABLE if current else "no-cache"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="application/octet-stream", headers=headers)


@offline.get(
    "/model/offline",
    response_model=OfflineModel,
    summary="What the page needs to read drawings without the server",
    responses=error_responses(404, 503),
)
async def offline_model(service: ServiceDep) -> dict[str, Any]:
    """The served model's metadata for the in-browser engine, and what it downloads."""
    production = service.routing().production
    predictor = production.predictor
    entry = predictor.entry
    _, info = _onnx(predictor)
    rt = runtime()
    scripts = _script_model(production.scripts)
    extra = scripts["onnx"]["bytes"] if scripts is not None else 0
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
        "script_model": scripts,
        "bundle_bytes": info["bytes"] + extra + sum(f["bytes"] for f in rt["files"]),
    }


@offline.get(
    "/model/onnx",
    response_class=FileResponse,
    summary="The served model as an ONNX file",
    responses=ONNX_RESPONSES,
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
    return _send(request, path, info["sha256"], v == predictor.version)


@offline.get(
    "/model/scripts/onnx",
    response_class=FileResponse,
    summary="The script model (digits of other writing systems) as an ONNX file",
    responses=ONNX_RESPONSES,
)
async def script_onnx_file(
    request: Request,
    service: ServiceDep,
    v: Annotated[
        str | None, Query(description="the script model's version; when current, cache for good")
    ] = None,
) -> Response:
    """The script model's ONNX bytes (served beside the production model); the ETag is
    their sha256. 404 when the server reads Latin digits only."""
    model = service.routing().production.scripts
    if model is None:
        raise ModelNotFound("no script model is loaded: digits of other scripts are not read")
    return _send(request, model.path, model.manifest["sha256"], v == model.version)
