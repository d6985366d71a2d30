"""Leaving a load balancer's pool before the socket closes.

On SIGTERM (and SIGHUP where it stops the server: one worker), a worker first answers
``/readyz`` 503 "shutting down" for ``shutdown_delay_s`` while it still accepts
connections and serves requests, so a balancer that checks every second or so takes the
replica out; only then does uvicorn stop accepting and drain the requests in flight.

uvicorn's server installs its handler (``Server.handle_exit``) for these signals in the
main thread before it starts the app, in the one server process and in each worker of
``--workers N`` (the supervisor passes SIGTERM on to every worker). The app's lifespan
puts ``DelayedExit`` in front of that handler: the first signal marks the service as
shutting down and calls uvicorn's handler after the delay; a second one calls it at once.
Where the app is not run by uvicorn's server in the main thread (tests' clients), nothing
is installed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from digitrec.api.service import Service

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _uvicorn_handler(handler: Any) -> bool:
    import uvicorn

    return isinstance(getattr(handler, "__self__", None), uvicorn.Server)


class DelayedExit:
    """Holds uvicorn's exit handler back for ``delay`` seconds after a stop signal."""

    def __init__(self, service: Service, delay: float) -> None:
        self.service = service
        self.delay = delay
        self.held: dict[int, Any] = {}  # signal -> uvicorn's handler, while installed
        self.loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        if self.delay <= 0 or threading.current_thread() is not threading.main_thread():
            return
        self.loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            handler = signal.getsignal(sig)
            if _uvicorn_handler(handler):
                self.held[sig] = handler
                signal.signal(sig, self._signalled)

    def uninstall(self) -> None:
        for sig, handler in self.held.items():
            signal.signal(sig, handler)
        self.held.clear()

    def _signalled(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler: runs in the main thread between two bytecodes, so it only
        flips a flag and hands the rest to the event loop."""
        if self.service.shutting_down or self.loop is None:
            self.held[sig](sig, frame)  # a second signal: stop now
            return
        self.service.shutting_down = True
        self.loop.call_soon_threadsafe(self._hold, sig)

    def _hold(self, sig: int) -> None:
        name = signal.Signals(sig).name
        log.info(
            "%s: /readyz answers 503 'shutting down'; requests are served %g s more, then drained",
            *(name, self.delay),
        )
        assert self.loop is not None
        self.loop.call_later(self.delay, self._drain, sig)

    def _drain(self, sig: int) -> None:
        handler = self.held.get(sig)
        if handler is None:
            return  # uninstalled meanwhile: the server is stopping already
        log.info("draining: no new connections; finishing the requests in flight")
        handler(sig, None)
