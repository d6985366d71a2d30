"""`digitrec serve`: check the model, then run the app under uvicorn.

The model is resolved and verified before the server starts, so a missing or tampered
model is a clear start-up error. Settings reach worker processes through ``DIGITREC_*``
variables; a random secret for web-page tokens is generated when none is configured,
so that every worker accepts every other worker's tokens. SIGTERM stops accepting new
connections and lets in-flight requests finish before the process exits.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
from types import FrameType

from digitrec.config import Settings
from digitrec.registry import Registry

log = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_S = 15


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
    import uvicorn

    entry = Registry.from_settings(settings).resolve(settings.model)
    entry.verify()  # fail now, with the reason, rather than serve a broken model
    log.info("serving %s on http://%s:%d", entry.ref, settings.host, settings.port)
    export_settings(settings)
    os.environ["DIGITREC_MODEL"] = entry.ref
    # uvicorn re-raises the signal that stopped it once the graceful shutdown is over; with
    # the default action the process would then die "killed by SIGTERM" (exit 143) after
    # answering every request. Handling SIGTERM here makes that a clean exit 0.
    signal.signal(signal.SIGTERM, _stopped)
    from digitrec.api.protocol import NoDelayProtocol

    uvicorn.run(
        "digitrec.api.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
        date_header=True,
        proxy_headers=settings.trust_proxy_headers,
        access_log=False,
        http=NoDelayProtocol,
        log_level="info",
    )


def _stopped(signum: int, frame: FrameType | None) -> None:
    log.info("stopped by SIGTERM after a graceful shutdown")
