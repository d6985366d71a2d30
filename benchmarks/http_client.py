"""A lean HTTP/1.1 load client: one pre-built request, sent over and over on raw sockets.

The benchmark client shares the machine's two cores with the server it measures, so
its own CPU time per request is taken from the server. httpx's AsyncClient spends
about 1.1 ms of CPU per request here, as much as a third of what the server spends;
this client spends under 0.1 ms, like ``wrk`` or ``hey`` would. It only does what a
benchmark needs: send the same request, read the status line, the headers and a body
of ``Content-Length`` bytes (or up to the end of the connection), and reconnect when
the server closes the connection (HTTP/1.0 servers such as Flask's development server
when it is not threaded).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

HEAD_END = b"\r\n\r\n"


class HttpError(Exception):
    """The server's answer was not HTTP/1.x as this client understands it."""


def build_request(url: str, method: str, path: str, body: bytes, content_type: str) -> bytes:
    """The bytes of one request; sent as they are for every request of a run."""
    host = urlsplit(url).netloc
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: digitrec-bench\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("ascii") + body


class Connection:
    """One keep-alive connection, opened on first use and again after the server closes it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"need a URL with a host and a port, not {url!r}")
        self.host, self.port = parts.hostname, parts.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects = 0

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``; return the status code and the body."""
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.connects += 1
        try:
            self.writer.write(request)
            head = await self.reader.readuntil(HEAD_END)
            status, length, keep_alive = parse_head(head)
            if length is None:
                body = await self.reader.read()  # no length: the body ends with the connection
                keep_alive = False
            else:
                body = await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            raise
        if not keep_alive:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def parse_head(head: bytes) -> tuple[int, int | None, bool]:
    """Status code, Content-Length (None when absent) and whether the connection stays open."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    keep_alive = version == b"HTTP/1.1"  # the default of each version
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            token = value.strip().lower()
            if token in (b"close", b"keep-alive"):
                keep_alive = token == b"keep-alive"
    return int(rest[:3]), length, keep_alive
