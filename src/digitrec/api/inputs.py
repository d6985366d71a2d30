"""Getting the image out of a request: multipart upload, raw body, or JSON with base64.

Each malformed request maps to one specific error code, so clients can tell a missing
field from bad base64 from a non-image data URL. The event loop only receives bytes:
parsing JSON and decoding base64 (tens of milliseconds for a 13 MB body) run in a
thread, and every step is linear in the body, which the body limit bounds.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from digitrec.api.schemas import PredictJSON
from digitrec.errors import (
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)

FIELD = "image"
ACCEPTED = (
    "multipart/form-data (field 'image'), an image/* body, "
    'or application/json {"image": "<base64 or data URL>"}'
)
_URLSAFE = re.compile(r"[A-Za-z0-9_-]*=*")
_SPACE = re.compile(r"\s+")
MAX_DATA_URL_HEADER = 256  # "data:image/png;base64," and parameters; longer is refused


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_image(request: Request, max_bytes: int) -> tuple[bytes, int | None]:
    """Return ``(image bytes, top_k from a JSON body or None)``."""
    kind = content_type(request)
    if kind == "multipart/form-data":
        raw, top_k = await _from_multipart(request), None
    elif kind in ("application/json", "text/json") or kind.endswith("+json"):
        raw, top_k = await _from_json(request, max_bytes)
    elif kind.startswith("image/") or kind == "application/octet-stream":
        raw, top_k = await request.body(), None
    else:
        body = await request.body()
        if not body:
            raise InvalidRequest(f"the request has no image: send {ACCEPTED}", code="empty_body")
        shown = kind or "no Content-Type"
        raise UnsupportedMediaType(f"cannot read a {shown} body: send {ACCEPTED}")
    if not raw:
        raise InvalidRequest("the image is empty (0 bytes)", code="empty_image")
    return raw, top_k


async def _from_multipart(request: Request) -> bytes:
    try:
        form = await request.form(max_files=2, max_fields=10)
    except (HTTPException, MultiPartException, ValueError, UnicodeDecodeError) as exc:
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise InvalidRequest(
            f"malformed multipart body ({str(detail)[:100]})", code="invalid_multipart"
        ) from None
    try:
        upload = form.get(FIELD)
        if upload is None:
            got = ", ".join(sorted(form.keys())) or "none"
            raise InvalidRequest(
                f"no form field {FIELD!r} (fields sent: {got})", code="missing_field"
            )
        if not isinstance(upload, UploadFile):
            raise InvalidRequest(
                f"form field {FIELD!r} must be a file upload", code="invalid_field"
            )
        return await upload.read()
    finally:
        await form.close()


async def _from_json(request: Request, max_bytes: int) -> tuple[bytes, int | None]:
    body = await request.body()
    if not body:
        raise InvalidRequest("the JSON body is empty", code="empty_body")
    return await run_in_threadpool(parse_json_image, body, max_bytes)


def parse_json_image(body: bytes, max_bytes: int) -> tuple[bytes, int | None]:
    """``{"image": "<base64 or data URL>", "top_k": N}`` -> (image bytes, top_k)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidRequest("invalid JSON (nested too deeply)", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"invalid JSON ({exc})"[:160], code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            'the JSON body must be an object: {"image": "..."}', code="invalid_json"
        )
    try:
        parsed = PredictJSON.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] in ("missing", "extra_forbidden"):
            raise InvalidRequest(
                f'{where}: {first["msg"]} (expected {{"image": "..."}})',
                code="missing_field" if first["type"] == "missing" else "unknown_field",
            ) from None
        raise ValidationFailed(f"{where}: {first['msg']}") from None
    return decode_image_string(parsed.image, max_bytes), parsed.top_k


def decode_image_string(text: str, max_bytes: int) -> bytes:
    """Base64 or a ``data:image/...;base64,`` URL -> bytes."""
    text = text.strip()
    if text[:5].lower() == "data:":
        text = _data_url_payload(text)
    compact = _SPACE.sub("", text)
    if len(compact) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"the image is over the {max_bytes}-byte limit")
    padded = compact + "=" * (-len(compact) % 4)
    try:
        if _URLSAFE.fullmatch(compact) and ("-" in compact or "_" in compact):
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the image is not valid base64", code="invalid_base64") from None


def _data_url_payload(text: str) -> str:
    """The base64 part of ``data:image/...;base64,...``; its header is short or refused."""
    header, comma, _ = text[:MAX_DATA_URL_HEADER].partition(",")
    if not comma:
        raise InvalidRequest(
            f"the data URL has no ',' within its first {MAX_DATA_URL_HEADER} characters",
            code="invalid_data_url",
        )
    media, *params = header[5:].split(";")
    media = media.strip().lower()
    if not media.startswith("image/"):
        raise UnsupportedMediaType(f"the data URL holds {media or 'no media type'}, not an image")
    if "base64" not in (p.strip().lower() for p in params):
        raise InvalidRequest(
            "the data URL must be base64-encoded (data:image/...;base64,)", code="invalid_base64"
        )
    return text[len(header) + 1 :]
