"""Prometheus metrics: declared once here, counted on the request path, read at ``/metrics``.

The exporter is the official client; nothing here writes the text format by hand. Label
values are bounded: a route is the app's route template (``/api/v1/predict``; a path no
route matches is ``other``), statuses and error codes come from the app's own answers,
model versions from the registry.

With several workers (``digitrec serve --workers N``) each worker keeps its values in
files, the client's multiprocess mode: ``serve`` gives them a fresh private folder
(``multiprocess_folder``) in ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts and
removes it when the server ends, so whichever worker answers a scrape reports every
worker's counts added up. In one process (one worker, tests) values live in memory and
the default registry is exported, the client's own process metrics included.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitrec import traffic
from digitrec.predict import Prediction

CONTENT_TYPE = CONTENT_TYPE_LATEST  # what /metrics answers with
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FOLDER_PREFIX = "digitrec-metrics-"  # then the server's pid: what a later start may clean up
OTHER_ROUTE = "other"  # every path that no route matches: attackers cannot add label values
NO_MODEL = "none"  # the model_version of requests that no model answered
MEMORY_EVERY_S = 5.0  # how often a worker refreshes its memory figure between scrapes
ERROR_BODY_MAX = 4096  # bytes of an error answer read for its code
_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")
_MODEL_STATE = "digitrec_model_version"  # request.state key a route sets (answered_by)

REQUESTS = Counter(
    "digitrec_requests",
    "HTTP requests answered, by route template, status and the model version that "
    "answered (none: no model did)",
    ["route", "status", "model_version"],
)
REQUEST_SECONDS = Histogram(
    "digitrec_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MODEL_SECONDS = Histogram(
    "digitrec_model_duration_seconds",
    "Model time per answer, by stage: prepare (decode and preprocess the image), infer "
    "(wait for a batch and run the forward pass)",
    ["model_version", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
PREDICTIONS = Counter(
    "digitrec_predictions",
    "Answers given, by model version, top digit and verdict",
    ["model_version", "digit", "verdict"],
)
CONFIDENCE = Histogram(
    "digitrec_prediction_confidence",
    "Probability of the top digit of each answer, by model version",
    ["model_version"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
ERRORS = Counter(
    "digitrec_errors",
    "Requests answered with an error (4xx: the input or caller was refused; 5xx: the "
    "server could not answer), by route template and the error's code",
    ["route", "code"],
)
CORRECTIONS = Counter(
    "digitrec_corrections",
    "Corrections received, by the model version that answered and whether it was right",
    ["model_version", "right"],
)
REFUSED = Counter(
    "digitrec_refused",
    "Requests refused by the HTTP layer before the app saw them, by reason: a deadline "
    "passed (request_timeout), a request target or headers too large (uri_too_long, "
    "headers_too_large), not HTTP (invalid_request), too many connections (busy), and "
    "idle connections closed to make room (idle_closed_for_room)",
    ["reason"],
)
RATE_LIMIT_FALLBACKS = Counter(
    "digitrec_rate_limit_fallbacks",
    "Rate-limit checks counted in this process because Redis (DIGITREC_REDIS_URL) could "
    "not be reached or failed: while it lasts, limits count per worker",
)
MODELS = Gauge(
    "digitrec_model_info",
    "The models being served: 1 for the current production model and A/B candidate, "
    "0 for a model that no longer holds that role",
    ["role", "name", "version"],
    multiprocess_mode="livemostrecent",  # the latest change any worker saw wins
)
MEMORY = Gauge(
    "digitrec_process_resident_memory_bytes",
    "Resident memory of each server process (with several workers, one series per pid)",
    multiprocess_mode="liveall",
)

_published: set[tuple[str, str, str]] = set()  # (role, name, version) set to 1 here
_memory_at = 0.0  # time.monotonic() of the last memory refresh


# -- what the app records --------------------------------------------------------------


def answered_by(request: Request, model_version: str) -> None:
    """Label this request with the model version that answered it (routes call it)."""
    setattr(request.state, _MODEL_STATE, model_version)


def record_prediction(answer: Prediction, prepare_s: float, infer_s: float) -> None:
    version = answer.model_version
    PREDICTIONS.labels(version, str(answer.digit), answer.verdict).inc()
    CONFIDENCE.labels(version).observe(answer.confidence)
    MODEL_SECONDS.labels(version, "prepare").observe(prepare_s)
    MODEL_SECONDS.labels(version, "infer").observe(infer_s)


def record_correction(model_version: str, right: bool) -> None:
    CORRECTIONS.labels(model_version, "true" if right else "false").inc()


def record_refusal(reason: str) -> None:
    """The HTTP layer refused a request or closed a connection (reason: an error code)."""
    REFUSED.labels(reason if _CODE.fullmatch(reason) else "other").inc()


def record_rate_limit_fallback() -> None:
    RATE_LIMIT_FALLBACKS.inc()


def serving(production: tuple[str, str], candidate: tuple[str, str] | None) -> None:
    """Publish the models this process serves, as (name, version) per role."""
    now = {("production", *production)}
    if candidate is not None:
        now.add(("candidate", *candidate))
    for labels in _published - now:
        MODELS.labels(*labels).set(0)
    for labels in now:
        MODELS.labels(*labels).set(1)
    _published.clear()
    _published.update(now)


def refresh_memory(force: bool = False) -> None:
    global _memory_at
    now = time.monotonic()
    if force or now - _memory_at >= MEMORY_EVERY_S:
        _memory_at = now
        rss = _resident_bytes()
        if rss is not None:
            MEMORY.set(rss)


def _resident_bytes() -> int | None:
    try:  # Linux: the current resident set, in pages
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:  # elsewhere: the peak (bytes on macOS)
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (ImportError, OSError):  # pragma: no cover - not on Windows
        return None


class MetricsMiddleware:
    """Count and time every HTTP request, and the code of every error answer.

    Outermost, so it sees what the other middlewares answer themselves (a 413 for an
    oversized body). Per request: a few label look-ups and increments; an error answer's
    body (a few hundred bytes of JSON) is read for its code.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts: the server failed
        error_body = bytearray()

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status >= 400 and len(error_body) < ERROR_BODY_MAX:
                error_body.extend(message.get("body", b"")[:ERROR_BODY_MAX])
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            route = route_label(scope, status)
            version = scope.get("state", {}).get(_MODEL_STATE) or NO_MODEL
            REQUESTS.labels(route, str(status), version).inc()
            if traffic.counted(route):
                traffic.COUNTS.note(status)
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
            if status >= 400:
                ERRORS.labels(route, error_code(bytes(error_body))).inc()
            refresh_memory()


def route_label(scope: Scope, status: int) -> str:
    """The template of the route that served the request; ``other`` when none did."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path:
        return path
    app = scope.get("app")
    if status != 404 and app is not None and hasattr(app, "openapi"):
        # Answered before routing (a 413 from the body limit, a CORS preflight): its
        # path, if the API documents it (the document is built once, then cached).
        path = scope.get("path")
        if path in app.openapi().get("paths", {}):
            return str(path)
    return OTHER_ROUTE


def error_code(body: bytes) -> str:
    """The ``code`` of a ``{"error": {"code": ...}}`` answer; ``other`` for anything else."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "other"
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "other"


# -- reading them -----------------------------------------------------------------------


def in_files() -> bool:
    """Does this process keep its values in files (multiprocess mode)? The client decided
    when it was imported, from PROMETHEUS_MULTIPROC_DIR; workers import it after serve
    set the variable."""
    return values.ValueClass is not values.MutexValue


def exposition() -> bytes:
    """The metrics in the Prometheus text format: this process's, or every worker's."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not in_files() or not folder:
        return generate_latest(REGISTRY)
    _forget_dead_workers(Path(folder))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)
    return generate_latest(registry)


def process_stopped() -> None:
    """At a worker's graceful end: its live gauges (memory, models) stop counting."""
    folder = os.environ.get(MULTIPROC_ENV)
    if in_files() and folder:
        multiprocess.mark_process_dead(os.getpid(), folder)


def _forget_dead_workers(folder: Path) -> None:
    """A worker that crashed never said so: drop its live gauges (counters stay)."""
    for file in folder.glob("gauge_live*_*.db"):
        pid = file.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(folder))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the folder of a multi-worker server ------------------------------------------------


@contextlib.contextmanager
def multiprocess_folder(workers: int) -> Iterator[Path | None]:
    """For ``serve``, in the parent before any worker starts: with several workers, a
    fresh private folder (mode 0700) named in PROMETHEUS_MULTIPROC_DIR, which the workers
    inherit; folders left by servers that died without cleaning up are removed first, and
    this one when the server ends. With one worker: none, values stay in memory."""
    if workers <= 1:
        yield None
        return
    remove_stale_folders()
    previous = os.environ.get(MULTIPROC_ENV)
    folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous


def remove_stale_folders(root: Path | None = None) -> list[Path]:
    """Remove this user's metrics folders whose server process is gone."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for folder in root.glob(f"{FOLDER_PREFIX}*"):
        pid = folder.name.removeprefix(FOLDER_PREFIX).partition("-")[0]
        stale = pid.isdigit() and not _alive(int(pid))
        if stale and folder.is_dir() and _owned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _owned(path: Path) -> bool:
    getuid: Any = getattr(os, "getuid", None)
    return getuid is None or path.stat().st_uid == getuid()
