"""The HTTP protocol of `digitrec serve`: uvicorn's httptools protocol, with what one
connection may cost bounded.

It owns, per connection: TCP_NODELAY; the request target, header size and header count,
refused while they stream in (414, 431) so no more bytes pile up; a deadline for the
request line and headers and one for the body (408); a cap on open connections per
worker (idle ones are closed to make room, else 503); and a graceful stop that gives
idle connections a second for a request on its way (then closes them) and answers a
client still sending with 503. Every refusal is
JSON with the security headers and ends the connection; refusals are logged as a count
at most every few seconds. The limits come in as ``HttpLimits``, built once by ``serve``.

TCP_NODELAY: with several workers uvicorn binds its listening socket without
``IPPROTO_TCP``, so asyncio never turns Nagle's algorithm off and every keep-alive
response waits ~40 ms for a delayed ACK (Kludex/uvicorn#3149; measured here: /healthz p50
44 ms instead of 0.75 ms). Setting the option on each accepted connection fixes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import socket
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NoReturn

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from digitrec import traffic
from digitrec.api import metrics
from digitrec.api.security import SECURITY_HEADERS
from digitrec.config import Settings
from digitrec.errors import (
    DigitrecError,
    HeadersTooLarge,
    InvalidRequest,
    RequestTimeout,
    ServiceBusy,
    UriTooLong,
)

log = logging.getLogger(__name__)

HTTPTOOLS_MAX_URL = (1 << 16) - 1  # httptools.parse_url refuses longer request targets
STOP_WINDOW_S = 1.0  # at a graceful stop, a request still arriving has this long to finish
GRACE_MARGIN_S = 0.5  # answer 503 this long before uvicorn cancels what is still running
HELD_SLACK = 256  # framing the header count leaves out: " HTTP/1.1", ": ", CRLFs, spaces
REPORT_EVERY_S = 5.0  # refusals are logged as one line with counts, at most this often
# Chunks in one chunked body: each costs a parser callback and a hand-over to the app on
# the event loop (1.6 MB in 1-byte chunks took 0.4 s of it); 10 MiB in 1 KiB chunks fits.
MAX_BODY_CHUNKS = 16384


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may cost, bound into the protocol of every worker."""

    max_url_bytes: int  # request target (path + query); beyond: 414
    max_header_bytes: int  # all header lines together; beyond: 431
    max_headers: int  # number of header lines; beyond: 431
    header_timeout_s: float  # request line + headers, from connect or the previous answer; 408
    body_timeout_s: float  # the body, from the end of the headers; 408
    max_connections: int  # open connections per worker; beyond: an idle one closes, else 503

    @classmethod
    def from_settings(cls, settings: Settings, *, max_connections: int | None = None) -> HttpLimits:
        """The limits ``settings`` ask for; ``max_connections`` overrides (descriptor fit)."""
        return cls(
            max_url_bytes=min(settings.max_url_bytes, HTTPTOOLS_MAX_URL),
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_connections=max_connections or settings.max_connections,
        )


def json_error_response(error: DigitrecError, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A whole HTTP/1.1 response carrying ``error`` as our JSON error body, with the
    security headers and ``connection: close`` (plus ``headers``, e.g. uvicorn's date)."""
    body = json.dumps(error.to_dict()).encode()
    fields = [
        *headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *SECURITY_HEADERS,
    ]
    status = f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}".encode()
    return b"\r\n".join([status, *(name + b": " + value for name, value in fields)]) + (
        b"\r\n\r\n" + body
    )


class Phase(enum.Enum):
    """Where the request now arriving on a connection stands."""

    IDLE = "idle"  # nothing of a new request yet
    HEAD = "head"  # request line and headers arriving
    BODY = "body"  # headers done, body arriving


class _Shared:
    """What the connections of one server share: the idle ones (oldest first, to close
    when room is needed), when the graceful stop began, and the refusal counts."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.idle: OrderedDict[LimitedProtocol, None] = OrderedDict()
        self.stop_time: float | None = None  # loop time of the graceful stop
        self.counts: Counter[str] = Counter()
        self.since = time.monotonic()
        self.last_report = -REPORT_EVERY_S
        self.report: asyncio.TimerHandle | None = None

    def note(self, what: str, loop: asyncio.AbstractEventLoop) -> None:
        """Count a refusal; the count is logged within REPORT_EVERY_S, in one line."""
        if not self.counts:
            self.since = time.monotonic()
        self.counts[what] += 1
        if self.report is None:
            delay = max(0.0, self.last_report + REPORT_EVERY_S - time.monotonic())
            self.report = loop.call_later(delay, self.flush)

    def flush(self) -> None:
        """Log the counts not yet reported, in one line."""
        if self.report is not None:
            self.report.cancel()
        self.last_report, self.report = time.monotonic(), None
        if not self.counts:
            return
        total, seconds = sum(self.counts.values()), time.monotonic() - self.since
        what = ", ".join(f"{count} {name}" for name, count in self.counts.most_common())
        log.warning(
            "refused or closed %d connection(s) in %.1f s: %s (limit %d connections per worker)",
            *(total, seconds, what, self.limits.max_connections),
        )
        self.counts.clear()


_SHARED: weakref.WeakKeyDictionary[ServerState, _Shared] = weakref.WeakKeyDictionary()


def report_refusals() -> None:
    """Log the refusals not yet reported, e.g. as the server stops."""
    for shared in list(_SHARED.values()):
        shared.flush()


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of ``HttpLimits``; every callback does
    O(1) work, so a connection costs what its limits allow and no more."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        shared = _SHARED.get(self.server_state)
        if shared is None:
            shared = _SHARED[self.server_state] = _Shared(limits)
        self.shared = shared
        self.phase = Phase.IDLE
        self.target = bytearray()  # the request target so far
        self.header_count = self.header_bytes = self.chunks = 0
        self.held = 0  # bytes httptools may hold that no callback has handed over yet
        self.handed = False  # a callback handed something over during this read
        self.deadline: asyncio.TimerHandle | None = None
        self.refusal: DigitrecError | None = None  # raised by a callback to stop the parser

    # --- the connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._make_room():
            self.transport = transport  # what connection_lost closes
            self._note("busy")
            traffic.COUNTS.note(ServiceBusy.status)
            transport.write(self._response(ServiceBusy("too many open connections; try again")))
            transport.close()  # at once: a refused connection holds no descriptor
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.shared.idle.pop(self, None)
        super().connection_lost(exc)
        if self.shared.stop_time is not None and not self.connections:
            self.shared.flush()  # the last one at a stop: the worker exits next

    def _make_room(self) -> bool:
        """Close the connection idle the longest, if any, to let a new one in."""
        if not self.shared.idle:
            return False
        oldest, _ = self.shared.idle.popitem(last=False)
        oldest.transport.close()
        self._note("idle_closed_for_room")
        return True

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self.handed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no WebSocket here (ws="none"): the request was served as plain HTTP
        except httptools.HttpParserError:
            error = self.refusal or InvalidRequest("the request is not valid HTTP/1.1")
            self._refuse(error, about_cycle=self.phase is Phase.BODY)
            return
        # httptools keeps a header or trailer to itself until it is complete: bound it here.
        self.held = 0 if self.handed else self.held + len(data)
        if self.held > self.limits.max_header_bytes + HELD_SLACK:
            limit = self.limits.max_header_bytes
            error = HeadersTooLarge(f"a request header is over {limit} bytes")
            self._refuse(error, about_cycle=self.phase is Phase.BODY)
        elif self.phase is Phase.BODY and self.deadline is None:
            self._arm(self.limits.body_timeout_s)  # here, not per request: most bodies are in

    # --- parser callbacks: count, and stop the parser at the first byte over a limit --------

    def on_message_begin(self) -> None:
        self.handed = True
        super().on_message_begin()
        self.phase = Phase.HEAD
        self.target.clear()
        self.header_count = self.header_bytes = self.chunks = 0
        self.shared.idle.pop(self, None)

    def on_url(self, url: bytes) -> None:
        self.handed = True
        if len(self.target) + len(url) > self.limits.max_url_bytes:
            self._stop(UriTooLong(f"the request target is over {self.limits.max_url_bytes} bytes"))
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.handed = True
        self.header_count += 1
        self.header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self.header_count > self.limits.max_headers:
            self._stop(HeadersTooLarge(f"the request has over {self.limits.max_headers} headers"))
        if self.header_bytes > self.limits.max_header_bytes:
            limit = self.limits.max_header_bytes
            self._stop(HeadersTooLarge(f"the request headers are over {limit} bytes"))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.handed = True
        self.url = bytes(self.target)
        super().on_headers_complete()
        self.phase = Phase.BODY
        self._cancel_deadline()  # the body's, if it is not in yet, is armed after this read
        if self.shared.stop_time is not None:
            self.cycle.keep_alive = False

    def on_chunk_header(self) -> None:
        self.handed = True
        self.chunks += 1
        if self.chunks > MAX_BODY_CHUNKS:
            self._stop(
                InvalidRequest(
                    f"the body comes in over {MAX_BODY_CHUNKS} chunks: send bigger ones",
                    code="too_many_chunks",
                )
            )

    def on_body(self, body: bytes) -> None:
        self.handed = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.handed = True
        self.phase = Phase.IDLE
        self._cancel_deadline()
        super().on_message_complete()
        if self.shared.stop_time is not None:
            self._guard_processing()
        self._await_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_request()

    def _stop(self, error: DigitrecError) -> NoReturn:
        self.refusal = error
        raise error  # httptools stops parsing; data_received answers self.refusal

    # --- deadlines -------------------------------------------------------------------------

    def _await_request(self) -> None:
        """Once nothing is in flight, the next request line and headers are due in time."""
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if self.phase is Phase.BODY or in_flight or self.transport.is_closing():
            return
        self._arm(self.limits.header_timeout_s)
        if self.phase is Phase.IDLE:
            self.shared.idle[self] = None

    def _arm(self, seconds: float, *, stop_cap: bool = True) -> None:
        """Set the connection's one deadline; while stopping, no later than the stop window."""
        when = self.loop.time() + seconds
        if stop_cap and self.shared.stop_time is not None:
            when = min(when, self.shared.stop_time + STOP_WINDOW_S)
        self._cancel_deadline()
        self.deadline = self.loop.call_at(when, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _deadline_passed(self) -> None:
        self.deadline = None
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if self.transport.is_closing():
            return
        if self.phase is Phase.IDLE and not in_flight:
            self.transport.close()  # it never sent a request: nothing to answer
            return
        error: DigitrecError
        if self.shared.stop_time is not None:
            error = ServiceBusy("the server is stopping; try again")
        elif self.phase is Phase.HEAD:
            seconds = self.limits.header_timeout_s
            error = RequestTimeout(f"the request line and headers took over {seconds:g} s")
        else:
            error = RequestTimeout(f"the request body took over {self.limits.body_timeout_s:g} s")
        self._refuse(error, about_cycle=self.phase is not Phase.HEAD)

    # --- refusing, and stopping --------------------------------------------------------------

    def _refuse(self, error: DigitrecError, *, about_cycle: bool) -> None:
        """Answer ``error`` and close. ``about_cycle``: it concerns the request whose headers
        are in (``self.cycle``), else the next one. An answer already under way is finished
        first instead, reading nothing more; one already complete is not followed by another."""
        self._cancel_deadline()
        if self.transport.is_closing():
            return
        self._note(error.code)
        cycle = self.cycle
        if cycle is None or (cycle.response_complete and not about_cycle):
            self._answer(error)
        elif about_cycle and not cycle.response_started and not self.pipeline:
            cycle.disconnected = True  # its app now reads a disconnect and answers nothing
            cycle.message_event.set()
            self._answer(error)
        elif cycle.response_complete or self.pipeline:
            self.transport.close()
        else:
            self.flow.pause_reading()
            cycle.keep_alive = False  # the connection closes after that answer

    def _answer(self, error: DigitrecError) -> None:
        traffic.COUNTS.note(error.status)  # a request answered here, never by the app
        self.transport.write(self._response(error))
        self.transport.close()

    def _response(self, error: DigitrecError) -> bytes:
        return json_error_response(error, self.server_state.default_headers)

    def _note(self, what: str) -> None:
        self.shared.note(what, self.loop)
        metrics.record_refusal(what)

    def shutdown(self) -> None:
        """Graceful stop: an idle connection gets STOP_WINDOW_S for a request already on
        its way (answered with ``connection: close``, so a keep-alive client moves to
        another worker instead of meeting a reset), then closes; a request still arriving
        has as long to finish, then gets 503; one being processed is finished."""
        if self.shared.stop_time is None:
            self.shared.stop_time = self.loop.time()
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if self.phase is Phase.IDLE:
                self._arm(STOP_WINDOW_S)  # _deadline_passed closes it, silently
                return
        else:
            cycle.keep_alive = False
        arriving = self.phase is Phase.BODY and not self.cycle.response_started
        if self.phase is Phase.HEAD or arriving:
            self._arm(STOP_WINDOW_S)
        else:
            self._guard_processing()

    def _guard_processing(self) -> None:
        """Answer 503 just before uvicorn cancels a request still running at the end of the
        grace period: its own answer then would be a text/plain 500."""
        grace = self.config.timeout_graceful_shutdown
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if grace is None or self.shared.stop_time is None or not in_flight:
            return
        when = self.shared.stop_time + max(0.0, grace - GRACE_MARGIN_S)
        self._arm(when - self.loop.time(), stop_cap=False)
