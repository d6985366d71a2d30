"""The one family of errors digitrec raises for people to read.

Each error carries a stable machine-readable ``code``, a message for people, the HTTP
status the API answers with and the exit code the CLI ends with. The API maps them to
``{"error": {"code": ..., "message": ...}}`` in one handler; the CLI prints the message
on one line in one wrapper.
"""

from __future__ import annotations


class DigitrecError(Exception):
    """Base of every error meant for a person: never a traceback."""

    code = "error"
    status = 500
    exit_code = 1

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidRequest(DigitrecError):
    """The request is malformed: bad JSON, bad base64, a missing field, a bad option."""

    code = "invalid_request"
    status = 400
    exit_code = 2


class ValidationFailed(InvalidRequest):
    """A parameter is well-formed but out of range (e.g. ``top_k=50``)."""

    code = "validation_error"
    status = 422


class UnsupportedMediaType(DigitrecError):
    """The content is not an image format we read (text, SVG, PDF, ...)."""

    code = "unsupported_media_type"
    status = 415
    exit_code = 2


class InvalidImage(DigitrecError):
    """The content claims to be an image we read but cannot be decoded (truncated, bad CRC)."""

    code = "invalid_image"
    status = 422
    exit_code = 2


class BlankImage(InvalidImage):
    """The image holds no ink to read: nothing was drawn, or only noise."""

    code = "blank_image"


class TooManyComponents(InvalidImage):
    """The image holds more separate marks than a number has (a page of text, a photo of
    noise): refused before any of them is read, so such an image costs little."""

    code = "too_many_components"


class PayloadTooLarge(DigitrecError):
    """The request body is over the upload limit."""

    code = "payload_too_large"
    status = 413
    exit_code = 2


class ImageTooLarge(PayloadTooLarge):
    """The image declares more pixels than allowed (e.g. a decompression bomb)."""

    code = "image_too_large"


class ImageTooCostly(PayloadTooLarge):
    """Decoding the image would cost more than one request may (CPU time, memory, or a
    structure built to be slow: thousands of chunks, markers or progressive scans)."""

    code = "image_too_costly"


class UriTooLong(DigitrecError):
    """The request target (path and query) is over the limit."""

    code = "uri_too_long"
    status = 414


class HeadersTooLarge(DigitrecError):
    """The request's headers are too many or too large."""

    code = "headers_too_large"
    status = 431


class RequestTimeout(DigitrecError):
    """The client took too long to send its request (headers or body)."""

    code = "request_timeout"
    status = 408


class ServiceBusy(DigitrecError):
    """The server is at a configured capacity (connections, decoding queue) or stopping."""

    code = "busy"
    status = 503


class Unauthorized(DigitrecError):
    code = "unauthorized"
    status = 401


class Forbidden(DigitrecError):
    code = "forbidden"
    status = 403


class RateLimited(DigitrecError):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(DigitrecError):
    code = "not_found"
    status = 404


class ModelNotFound(NotFound):
    code = "model_not_found"
    exit_code = 3


class ModelInvalid(DigitrecError):
    """A model on disk is missing files, truncated or does not match its manifest."""

    code = "model_invalid"
    status = 503
    exit_code = 3


class ModelNotReady(DigitrecError):
    code = "model_not_ready"
    status = 503


class DataUnavailable(DigitrecError):
    """A dataset (MNIST or an imported one) could not be found, fetched or verified."""

    code = "data_unavailable"
    exit_code = 4


class StorageError(DigitrecError):
    """Writing results failed (disk full, read-only folder); nothing earlier was lost."""

    code = "storage_error"
    exit_code = 5


class DependencyMissing(DigitrecError):
    """An optional dependency (PyTorch, ONNX Runtime, ...) is not installed."""

    code = "dependency_missing"
    exit_code = 6


class AddressUnavailable(DigitrecError):
    """The server cannot listen where it was asked to (port taken, no such address)."""

    code = "address_unavailable"
    exit_code = 7


class ServerFailed(DigitrecError):
    """The server stopped during start-up; its log says why."""

    code = "server_failed"
    exit_code = 8
