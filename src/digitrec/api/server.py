"""`digitrec serve`: check the model, then run the app under uvicorn.

The model is resolved and verified before the server starts, so a missing or tampered
model is a clear start-up error, and so is an address that cannot be bound (the socket is
bound here, before uvicorn starts; with several workers on Linux each worker binds its
own ``SO_REUSEPORT`` socket). Settings reach worker processes through ``DIGITREC_*``
variables; a random secret for web-page tokens is generated when none is configured,
so that every worker accepts every other worker's tokens. What one connection may cost
(``HttpLimits``) is built here, once, and bound into the protocol class that uvicorn
pickles into every worker. SIGTERM, and SIGHUP with one worker, first make ``/readyz``
answer 503 for ``shutdown_delay_s`` while requests are still served (``api.shutdown``),
then stop accepting new connections and let in-flight requests finish before the
process exits; with several workers uvicorn's supervisor passes SIGTERM on to each, and
takes SIGHUP as a rolling restart (each new worker is ready before the old one gets
SIGTERM).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, cast

import uvicorn

from digitrec.api.metrics import multiprocess_folder
from digitrec.api.models import entry_to_start
from digitrec.api.protocol import HttpLimits, LimitedProtocol, report_refusals
from digitrec.api.ratelimit import redis_module
from digitrec.config import WORKER_LOG_LEVEL, Settings
from digitrec.errors import AddressUnavailable, ServerFailed

log = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_S = 15
DESCRIPTOR_RESERVE = 64  # descriptors kept for the model, logs, pipes and files per worker


def export_settings(settings: Settings) -> None:
    """Put the explicitly set fields into the environment, for uvicorn's workers."""
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        os.environ[f"DIGITREC_{name.upper()}"] = text
    if settings.secret_key is None and "DIGITREC_SECRET_KEY" not in os.environ:
        os.environ["DIGITREC_SECRET_KEY"] = secrets.token_urlsafe(32)


def serve(settings: Settings) -> None:
    from uvicorn.supervisors import Multiprocess

    entry = entry_to_start(settings)
    entry.verify()  # fail now, with the reason, rather than serve a broken model
    if settings.redis_url:
        redis_module()  # a missing package is a start-up error, not one per worker
    balanced = settings.workers > 1 and sys.platform.startswith("linux")
    # Bound before anything starts: a taken port is a one-line error, and port 0 becomes
    # the real port that every worker then uses.
    sock = listening_socket(settings.host, settings.port, reuse_port=balanced)
    port = sock.getsockname()[1]
    what = "pinned" if settings.model else "production, now"
    log.info("serving %s %s on http://%s:%d", what, entry.ref, settings.host, port)
    export_settings(settings)  # a pinned model stays pinned; else workers follow production
    os.environ[WORKER_LOG_LEVEL] = str(logging.getLogger().getEffectiveLevel())
    limits = HttpLimits.from_settings(
        settings, max_connections=connections_that_fit(settings.max_connections)
    )
    # uvicorn re-raises the signal that stopped it once the graceful shutdown is over; with
    # the default action the process would then die "killed by SIGTERM" (exit 143) after
    # answering every request. Handling the signal here makes that a clean exit 0.
    signal.signal(signal.SIGTERM, _stopped)
    signal.signal(signal.SIGHUP, _stopped)
    config = uvicorn.Config(
        "digitrec.api.app:app_from_env",
        factory=True,
        host=settings.host,
        port=port,
        workers=settings.workers,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type] # float s work
        server_header=False,
        date_header=True,
        proxy_headers=False,  # X-Forwarded-For is read by api.access.client_address alone
        access_log=False,
        # A partial of a module-level class pickles, so it reaches every worker as it is.
        http=cast(Any, functools.partial(LimitedProtocol, limits=limits)),
        ws="none",  # no WebSocket routes: an Upgrade request is served as plain HTTP
        log_level="info",
    )
    # With several workers, their metrics go to a private folder made before they start.
    with sock, multiprocess_folder(settings.workers):
        if settings.workers == 1:
            server = _Server(config)
            server.run(sockets=[sock])
            if not server.started:
                raise ServerFailed("the server did not start; see the log above")
        elif balanced:  # the parent's socket only holds the port; workers bind their own
            workers = [cast(socket.socket, PerWorkerSocket(settings.host, port))]
            Multiprocess(config, sockets=workers).run()
        else:
            Multiprocess(config, sockets=[sock]).run()


def connections_that_fit(wanted: int) -> int:
    """Raise the soft descriptor limit to the hard one, and return how many connections
    per worker it then holds beside DESCRIPTOR_RESERVE: ``wanted``, or fewer (logged).

    A worker out of descriptors cannot accept: the event loop drops what waits in the
    listening queue, legitimate requests included, and says nothing.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft != hard:
        raised = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + DESCRIPTOR_RESERVE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:  # e.g. macOS caps it below an infinite hard limit
            log.debug("could not raise the descriptor limit to %d: %s", raised, exc)
    if soft == resource.RLIM_INFINITY or soft - DESCRIPTOR_RESERVE >= wanted:
        return wanted
    fit = max(1, soft - DESCRIPTOR_RESERVE)
    log.warning(
        "the descriptor limit (%d) holds %d connections per worker beside %d for the model, "
        "logs and files: max_connections lowered from %d to %d (raise it with ulimit -n)",
        *(soft, fit, DESCRIPTOR_RESERVE, wanted, fit),
    )
    return fit


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (listening starts when the server takes it)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise AddressUnavailable(f"cannot listen on {host}:{port}: {reason.lower()}") from None
    return sock


class PerWorkerSocket:
    """Stands in for the listening socket in the list uvicorn hands to each worker: a
    worker that unpickles it gets a socket of its own, bound with SO_REUSEPORT, so the
    kernel spreads new connections evenly over the workers.

    With one shared socket, whichever worker wakes first accepts every waiting
    connection: a burst of 32 keep-alive connections could all land on one worker,
    which then served 566 req/s while the other idled (balanced: ~900 req/s).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_worker_socket, (self.host, self.port))


def _worker_socket(host: str, port: int) -> socket.socket:
    return listening_socket(host, port, reuse_port=True)


class _Server(uvicorn.Server):
    """uvicorn's server, stopping gracefully on SIGHUP too (uvicorn leaves SIGHUP to its
    default action, which kills the process and drops every request in flight)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread():
                yield  # signals reach the main thread only (uvicorn skips them too)
                return
            previous = signal.signal(signal.SIGHUP, self.handle_exit)
            try:
                yield
            finally:  # before uvicorn re-raises the signal, so _stopped logs it
                signal.signal(signal.SIGHUP, previous)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        report_refusals()  # what the last few seconds refused, before the process ends


def _stopped(signum: int, frame: FrameType | None) -> None:
    log.info("stopped by %s after a graceful shutdown", signal.Signals(signum).name)
