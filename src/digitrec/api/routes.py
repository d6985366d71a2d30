"""The REST API: /api/v1/predict, /api/v1/feedback, /api/v1/model, /healthz, /readyz,
and /metrics for Prometheus."""

from __future__ import annotations

import base64
import binascii
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from digitrec.api import metrics
from digitrec.api.access import Caller, client_id, guard
from digitrec.api.deps import CallerDep, ServiceDep
from digitrec.api.inputs import read_image
from digitrec.api.schemas import (
    FeedbackIn,
    FeedbackOut,
    Health,
    ModelCard,
    ModelRef,
    NumberOut,
    OfflineFeedbackIn,
    OfflineFeedbackOut,
    PredictionOut,
    Ready,
    error_responses,
)
from digitrec.api.service import Service
from digitrec.card import summary
from digitrec.config import TOP_K_MAX
from digitrec.errors import ModelNotReady, ValidationFailed
from digitrec.feedback import OfflineAnswer
from digitrec.multiscript import LATIN, describe
from digitrec.preprocess import png_data_url

api = APIRouter(
    prefix="/api/v1",
    tags=["recognition"],
    dependencies=[Depends(guard)],
    responses=error_responses(401, 403, 429),
)

SCRIPT_HELP = (
    "the writing system of the digits: `latin` (the default), one of the scripts "
    "`GET /api/v1/model` lists (only its ten digits are candidates), or `auto` (Latin, "
    "read by the digit model, against the other scripts together; a value they share "
    "keeps its whole probability)"
)

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image: a multipart upload in field 'image', the raw file with an "
        "image/* content type, or JSON with base64 or a data URL.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictJSON"}},
        },
    }
}


async def _upload(
    request: Request, service: Service, caller: Caller, top_k: int | None
) -> tuple[bytes, int, str | None]:
    """What the reading routes share: the caller's A/B client id, a 503 before reading a
    body that no model would answer, the upload's bytes and the answers wanted."""
    client = client_id(request, caller)
    service.routing()
    raw, body_top_k = await read_image(request, service.settings.max_upload_bytes)
    return raw, top_k or body_top_k or service.settings.top_k, client


@api.post(
    "/predict",
    response_model=PredictionOut,
    response_model_exclude_none=True,
    summary="Read the digit in an image",
    openapi_extra=_IMAGE_BODY,
    responses=error_responses(400, 413, 415, 422, 503),
)
async def predict(
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    top_k: Annotated[
        int | None, Query(ge=1, le=TOP_K_MAX, description="answers (default 3)")
    ] = None,
    include_input: Annotated[
        bool, Query(description="also return the 28x28 image the model saw, as a PNG data URL")
    ] = False,
    script: Annotated[str, Query(max_length=32, description=SCRIPT_HELP)] = LATIN,
) -> dict[str, Any]:
    raw, k, client = await _upload(request, service, caller, top_k)
    prediction = await service.predict(raw, k, client, script)
    metrics.answered_by(request, prediction.model_version)
    out = prediction.to_dict()
    if include_input:
        out["input_image"] = png_data_url(prediction.image)
    return out


@api.post(
    "/number",
    response_model=NumberOut,
    summary="Read a whole number: several digits in one image",
    openapi_extra=_IMAGE_BODY,
    responses=error_responses(400, 413, 415, 422, 503),
)
async def number(
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    top_k: Annotated[
        int | None, Query(ge=1, le=TOP_K_MAX, description="answers per digit (default 3)")
    ] = None,
    script: Annotated[str, Query(max_length=32, description=SCRIPT_HELP)] = LATIN,
) -> dict[str, Any]:
    """The same inputs as `/api/v1/predict`. Each mark the image holds is found (strokes of
    one digit joined, touching digits cut apart) and read by the digit model; the answer
    lists them left to right with their boxes in the uploaded image's pixels. A mark that
    is not a digit keeps its verdict in its place, `number` then holds only the digits
    read and `complete` is false. Each digit carries the `prediction_id` of its own
    answer, to correct it with `POST /api/v1/feedback`. 422 `blank_image` without ink, 422
    `too_many_components` for more marks than a number has. Files over a megapixel are
    decoded in the sandbox, under the same budget as /api/v1/predict's, and read at
    most 1024 pixels on the longer side."""
    raw, k, client = await _upload(request, service, caller, top_k)
    reading, ids = await service.read_number(raw, k, client, script)
    metrics.answered_by(request, reading.model_version)
    out = reading.to_dict()
    given: list[str | None] = list(ids) if ids else [None] * len(out["digits"])
    for digit, prediction_id in zip(out["digits"], given, strict=True):
        digit["prediction_id"] = prediction_id  # correct one with POST /api/v1/feedback
    return out


@api.post(
    "/feedback",
    response_model=FeedbackOut,
    summary="Correct an answer (or confirm it)",
    responses=error_responses(400, 404, 422, 503),
)
async def send_feedback(request: Request, body: FeedbackIn, service: ServiceDep) -> dict[str, Any]:
    """Store a correction with the answer it corrects: the 28x28 image the model saw, the
    answer and its probabilities, the model version, the A/B arm, the time and a hash of
    the client id (the original upload only where the operator turned that on). A second
    correction of the same answer replaces the first."""
    label = body.label if body.correct is None else None
    stored = await service.correct(body.prediction_id, label, body.correct)
    name, _, version = stored.model.partition(":")
    metrics.answered_by(request, version)
    return {
        "prediction_id": stored.prediction_id,
        "label": stored.label,
        "right": stored.right,
        "model": {"name": name, "version": version},
        "stored": stored.stored_items(),
    }


@api.post(
    "/feedback/offline",
    response_model=OfflineFeedbackOut,
    summary="Send corrections of answers given offline",
    responses=error_responses(400, 404, 413, 422, 503),
)
async def send_offline_feedback(
    request: Request, body: OfflineFeedbackIn, service: ServiceDep, caller: CallerDep
) -> dict[str, Any]:
    """The page can read drawings without the server (its offline mode). Corrections of
    those answers wait on the device and come here when the network returns, each with
    the answer and the 28x28 image the model saw. Each is checked against its model
    version (registered, probabilities adding up to one, the digit the most probable);
    then all are stored, or none. Sending one again replaces it."""
    items: list[tuple[OfflineAnswer, int | None, bool | None]] = []
    for c in body.corrections:
        label = c.label if c.correct is None else None
        answer = OfflineAnswer(
            id=c.prediction_id,
            answered_at=c.answered_at,
            model=f"{c.model.name}:{c.model.version}",
            digit=c.digit,
            confidence=c.confidence,
            verdict=c.verdict,
            probabilities=c.probabilities,
            input=_base64(c.input),
        )
        items.append((answer, label, c.correct))
    stored = await service.correct_offline(items, client_id(request, caller))
    return {"stored": [s.prediction_id for s in stored]}


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValidationFailed("input is not base64") from exc


@api.get(
    "/model",
    response_model=ModelCard,
    summary="The served model's card",
    responses=error_responses(503),
)
async def model_card(service: ServiceDep) -> dict[str, Any]:
    served = service.routing().production
    predictor = served.predictor
    return {
        **summary(predictor.entry),
        "backend": predictor.backend.name,
        "scripts": describe(served.scripts),
    }


# Not in the OpenAPI document (plain text for Prometheus, not the JSON API); protected and
# rate-limited like the API: give the scraper a key of its own when keys are on.
monitoring = APIRouter(include_in_schema=False, dependencies=[Depends(guard)])


@monitoring.get("/metrics")
async def prometheus_metrics(service: ServiceDep) -> Response:
    """Every worker's metrics in the Prometheus text format (see ``api.metrics``)."""
    with contextlib.suppress(ModelNotReady):
        service.routing()  # publishes the models now served, should they have just changed
    metrics.refresh_memory(force=True)
    body = await run_in_threadpool(metrics.exposition)  # reads every worker's files
    return Response(body, media_type=metrics.CONTENT_TYPE)


health = APIRouter(tags=["health"])


@health.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


@health.get(
    "/readyz",
    response_model=Ready,
    summary="Send requests here: a model is answering, the database too, not shutting down",
    responses={
        503: {
            "model": Ready,
            "description": "not now, with why: the model is loading or failed to load, the "
            "database is unreachable, or the server is shutting down",
        }
    },
)
async def readyz(service: ServiceDep) -> Any:
    reason = service.not_ready()
    if reason is None:
        p = service.predictor
        return Ready(ready=True, model=ModelRef(name=p.name, version=p.version))
    return JSONResponse(Ready(ready=False, reason=reason).model_dump(), status_code=503)
