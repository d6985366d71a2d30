"""Hostile and broken input against a real server on loopback: each gets a specific 4xx
(or a correct answer where it is valid), quickly, and the server stays healthy with its
memory back where it was. Then a schema-driven fuzz run finds no 500 and no schema
violation."""

from __future__ import annotations

import base64
import io
import socket
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image

from tests.conftest import LiveServer, encode, stroke_image
from tests.test_preprocess import png_header_only

pytestmark = [pytest.mark.server]
PREDICT = "/api/v1/predict"
LIMIT = 1024 * 1024  # the server under test accepts bodies up to 1 MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(
        tmp_path_factory.mktemp("hostile"),
        env={"DIGITREC_RATE_LIMIT_PER_MINUTE": "0", "DIGITREC_MAX_UPLOAD_BYTES": str(LIMIT)},
    )
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


def digit_png(**kwargs: object) -> bytes:
    return encode(Image.fromarray(stroke_image(**kwargs)))  # type: ignore[arg-type]


def bad_crc_png() -> bytes:
    raw = bytearray(digit_png())
    idat = raw.index(b"IDAT")
    raw[idat + 12] ^= 0x55
    return bytes(raw)


def exif_rotated_jpeg() -> bytes:
    """A vertical bar stored sideways with EXIF 'rotate 90' (a phone photo): valid."""
    img = Image.fromarray(stroke_image(box=(40, 120, 240, 150))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.fromarray(stroke_image()), Image.new("L", (280, 280), 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    a = stroke_image().astype(np.uint16) * 257
    return encode(Image.fromarray(a))  # uint16 -> mode I;16


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(stroke_image()).convert("CMYK"), "JPEG")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# (name, request kwargs, expected status, expected error code or expected digit)
CASES = [
    ("empty body", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_image"),
    ("0-byte file", {"files": {"image": ("x.png", b"", "image/png")}}, 400, "empty_image"),
    (
        "plain text",
        {"content": b"hello world", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    (
        "text posing as png",
        {"content": b"hello world", "headers": {"content-type": "image/png"}},
        415,
        "unsupported_media_type",
    ),
    (
        "truncated png",
        {"content": digit_png()[:200], "headers": {"content-type": "image/png"}},
        422,
        "invalid_image",
    ),
    (
        "png with bad crc",
        {"content": bad_crc_png(), "headers": {"content-type": "image/png"}},
        422,
        "invalid_image",
    ),
    (
        "decompression bomb",
        {"content": png_header_only(40000, 40000), "headers": {"content-type": "image/png"}},
        413,
        "image_too_large",
    ),
    (
        "1x1 image",
        {"content": encode(Image.new("L", (1, 1), 0)), "headers": {"content-type": "image/png"}},
        422,
        "blank_image",
    ),
    (
        "svg",
        {
            "content": b'<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0L9 9"/></svg>',
            "headers": {"content-type": "image/svg+xml"},
        },
        415,
        "unsupported_media_type",
    ),
    ("animated gif", {"content": animated_gif(), "headers": {"content-type": "image/gif"}}, 200, 1),
    (
        "tiff",
        {
            "content": encode(Image.fromarray(stroke_image()), "TIFF"),
            "headers": {"content-type": "image/tiff"},
        },
        200,
        1,
    ),
    (
        "16-bit png",
        {"content": sixteen_bit_png(), "headers": {"content-type": "image/png"}},
        200,
        1,
    ),
    ("cmyk jpeg", {"content": cmyk_jpeg(), "headers": {"content-type": "image/jpeg"}}, 200, 1),
    (
        "exif-rotated jpeg",
        {"content": exif_rotated_jpeg(), "headers": {"content-type": "image/jpeg"}},
        200,
        1,
    ),
    ("invalid base64", {"json": {"image": "###"}}, 400, "invalid_base64"),
    (
        "data url, not an image",
        {"json": {"image": "data:application/pdf;base64," + b64(b"%PDF")}},
        415,
        "unsupported_media_type",
    ),
    (
        "invalid json",
        {"content": b'{"image": ', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    ("wrong field name (json)", {"json": {"picture": b64(digit_png())}}, 400, "missing_field"),
    (
        "wrong field name (form)",
        {"files": {"file": ("x.png", digit_png(), "image/png")}},
        400,
        "missing_field",
    ),
    (
        "top_k out of range",
        {"content": digit_png(), "params": {"top_k": 99}, "headers": {"content-type": "image/png"}},
        422,
        "validation_error",
    ),
    (
        "top_k in json out of range",
        {"json": {"image": b64(digit_png()), "top_k": -1}},
        422,
        "validation_error",
    ),
]


def rss(server: LiveServer) -> int:
    return int(psutil.Process(server.process.pid).memory_info().rss)


def test_hostile_inputs_get_specific_answers_quickly(server: LiveServer) -> None:
    import httpx

    with httpx.Client(base_url=server.url, timeout=10) as http:
        for _ in range(3):  # warm up every code path before measuring memory
            for _, kwargs, _, _ in CASES:
                http.post(PREDICT, **kwargs)
        before = rss(server)
        for _ in range(5):
            for name, kwargs, status, expected in CASES:
                started = time.perf_counter()
                response = http.post(PREDICT, **kwargs)
                elapsed = time.perf_counter() - started
                assert response.status_code == status, (name, response.text)
                assert elapsed < 2.0, (name, elapsed)
                body = response.json()
                if status == 200:
                    assert body["digit"] == expected, (name, body)
                else:
                    assert body["error"]["code"] == expected, (name, body)
        after = rss(server)
        assert http.get("/readyz").status_code == 200
    assert after - before < 20 * 1024 * 1024, f"memory grew by {(after - before) >> 20} MiB"


def read_response(sock: socket.socket, answer: bytes = b"") -> bytes:
    """Read until the JSON body has started (headers and body may be separate packets)."""
    sock.settimeout(5)
    while b"\r\n\r\n{" not in answer:
        more = sock.recv(4096)
        if not more:
            break
        answer += more
    return answer


def test_oversized_body_is_refused_while_streaming(server: LiveServer) -> None:
    """A chunked body far over the limit gets 413 long before it is all sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"\0" * 65536
        sent = 0
        answer = b""
        sock.settimeout(0.05)
        while sent < 200 * LIMIT and not answer:  # would be 200 MiB if it were all read
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                answer = sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = read_response(sock, answer)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer
    assert sent < 8 * LIMIT, f"the server read {sent >> 20} MiB before refusing"


def test_declared_oversized_body_is_refused_before_reading(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 999999999\r\n\r\n"
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"payload_too_large" in answer


def test_fuzz_finds_no_server_error_or_schema_violation(server: LiveServer) -> None:
    """Schemathesis against our own OpenAPI, over HTTP: no 5xx, every response matches the
    schema it documents. Each operation gets generated (and deliberately broken) cases."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.specs.openapi import checks as openapi_checks

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {PREDICT, "/api/v1/model", "/readyz"}
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    calls: list[tuple[str, str]] = []

    def fuzz(operation, mode):  # type: ignore[no-untyped-def]
        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=100,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:  # type: ignore[no-untyped-def]
            # A schema-valid image may still be blank or damaged (422): semantics, not
            # schema, so "positive data acceptance" does not apply; every other check does.
            calls.append((operation.path, mode.value))
            case.call_and_validate(
                base_url=server.url, excluded_checks=[openapi_checks.positive_data_acceptance]
            )

        return check

    for operation in operations:
        for mode in modes:
            try:
                fuzz(operation, mode)()
            except Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to break: no input
    assert calls.count((PREDICT, "negative")) >= 50 and calls.count((PREDICT, "positive")) >= 50
    assert rss(server) < 1024**3
