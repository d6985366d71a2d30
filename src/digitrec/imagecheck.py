"""Cheap structural checks of an image file, before any decoder sees it.

Decoders can be made slow by files that are small and valid: a PNG with 870,000 empty
chunks, a JPEG with millions of empty markers or hundreds of progressive scans, a GIF
with millions of comment blocks. Pillow walks such structures in Python, on every
request. ``inspect`` walks them here instead, with a fixed cap on what it will walk, and
refuses a file that goes past a cap (``ImageTooCostly``) before any pixel is decoded.

It also says what kind of file it is and how big it claims to be, so the server can
decide where to decode it: small PNG, JPEG, GIF and BMP files in-process, everything
else in a sandboxed process (``digitrec.sandbox``).

The walk never allocates in proportion to the file: it reads headers in place and finds
the end of compressed data with a C-level search, so a 10 MB file costs about a
millisecond at most.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from digitrec.errors import ImageTooCostly

MAX_PNG_CHUNKS = 4096  # a 10 MB PNG in libpng's 8 KB IDAT chunks has ~1,300
MAX_PNG_ANCILLARY = 64  # chunks other than IDAT (text, colour profile, ...)
MAX_JPEG_MARKERS = 256  # markers outside entropy-coded data; a photo has 10-30
MAX_JPEG_SCANS = 64  # progressive scans; encoders write 6-20
MAX_GIF_BLOCKS = 1024  # extension blocks and sub-blocks before the first image
# Formats that are decoded in the serving process when small (the rest go to a sandbox).
LIGHT_FORMATS = ("PNG", "JPEG", "GIF", "BMP")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A real marker: 0xFF then not a stuffed zero, a restart marker or another fill byte (of
# a run of fill bytes, the last 0xFF matches). No repetition: the search stays linear
# (``\xff+`` made it 20x slower on photos).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Frame headers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})  # no length field (SOI/EOI: D8/D9)


@dataclass(frozen=True)
class Structure:
    """What a file says about itself: format, declared size and decoding passes."""

    format: str  # PNG, JPEG, GIF, BMP, WEBP, TIFF, or "other" (left to the decoder)
    width: int = 0  # declared size; 0 when the header was not read here
    height: int = 0
    scans: int = 1  # progressive JPEG: each scan is one more pass over every pixel
    python_codec: bool = False  # decoded by Pillow in Python (BMP RLE: ~0.1 s a megapixel)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def is_light(self, max_pixels: int) -> bool:
        """Cheap to decode in-process: a simple format with a decoder in C, a known size of
        at most ``max_pixels``, and a walk that found nothing unusual."""
        return (
            self.format in LIGHT_FORMATS and not self.python_codec and 0 < self.pixels <= max_pixels
        )


def inspect(raw: bytes) -> Structure:
    """Walk the file's structure (bounded) and say what it is; refuse crafted structures."""
    if raw.startswith(_PNG_SIGNATURE):
        return _png(raw)
    if raw.startswith(b"\xff\xd8"):
        return _jpeg(raw)
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(raw)
    if raw.startswith(b"BM") and len(raw) >= 26:
        return _bmp(raw)
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return _webp(raw)
    if raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return Structure("TIFF")
    return Structure("other")


def _too_costly(what: str) -> ImageTooCostly:
    return ImageTooCostly(f"the image is built to be slow to decode ({what}); it was refused")


def _png(raw: bytes) -> Structure:
    pos, chunks, ancillary, width, height = 8, 0, 0, 0, 0
    end = len(raw)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", raw, pos)
        chunks += 1
        if kind == b"IHDR" and length >= 8 and pos + 16 <= end:
            width, height = struct.unpack_from(">II", raw, pos + 8)
        elif kind == b"IEND":
            break
        elif kind != b"IDAT":
            ancillary += 1
        if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY:
            raise _too_costly(f"over {MAX_PNG_CHUNKS} chunks or {MAX_PNG_ANCILLARY} non-image ones")
        pos += 12 + length
    return Structure("PNG", width, height)


def _jpeg(raw: bytes) -> Structure:
    pos, markers, scans, width, height = 2, 0, 0, 0, 0
    end = len(raw)
    while pos < end:
        found = _JPEG_MARKER.search(raw, pos)  # skips entropy-coded data and fill bytes
        if found is None:
            break
        marker = raw[found.end() - 1]
        pos = found.end()
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            raise _too_costly(f"over {MAX_JPEG_MARKERS} markers")
        if marker == 0xD9:  # end of image (an MPO's further frames are not decoded)
            break
        if marker in _JPEG_STANDALONE or marker == 0xD8:
            continue
        if pos + 2 > end:
            break
        (length,) = struct.unpack_from(">H", raw, pos)
        if marker in _JPEG_SOF and pos + 7 <= end and not width:
            height, width = struct.unpack_from(">HH", raw, pos + 3)
        elif marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise _too_costly(f"over {MAX_JPEG_SCANS} progressive scans")
        pos += max(2, length)
    return Structure("JPEG", width, height, max(1, scans))


def _gif(raw: bytes) -> Structure:
    if len(raw) < 13:
        return Structure("GIF")
    width, height, flags = struct.unpack_from("<HHB", raw, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks, end = 0, len(raw)
    while pos < end and raw[pos] == 0x21:  # extensions before the first image
        pos += 2  # introducer and label, then sub-blocks until a zero-length one
        while pos < end:
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise _too_costly(f"over {MAX_GIF_BLOCKS} blocks before the first image")
            size = raw[pos]
            pos += 1 + size
            if size == 0:
                break
    return Structure("GIF", width, height)


def _webp(raw: bytes) -> Structure:
    """WebP's canvas size, from its first chunk (libwebp allocates it when the file is
    opened, before any check of ours could run on the opened image)."""
    kind, data = raw[12:16], raw[20:30]
    if kind == b"VP8X" and len(data) >= 10:  # extended: 24-bit width-1 and height-1
        width = 1 + int.from_bytes(data[4:7], "little")
        height = 1 + int.from_bytes(data[7:10], "little")
    elif kind == b"VP8L" and len(data) >= 5 and data[0] == 0x2F:  # lossless: 14 bits each
        bits = int.from_bytes(data[1:5], "little")
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif kind == b"VP8 " and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":  # lossy
        width = int.from_bytes(data[6:8], "little") & 0x3FFF
        height = int.from_bytes(data[8:10], "little") & 0x3FFF
    else:
        return Structure("WEBP")
    return Structure("WEBP", width, height)


def _bmp(raw: bytes) -> Structure:
    header = struct.unpack_from("<I", raw, 14)[0]
    compression = 0
    if header >= 40 and len(raw) >= 34:
        width, height, _, _, compression = struct.unpack_from("<iiHHI", raw, 18)
    elif header == 12:  # OS/2 1.x
        width, height = struct.unpack_from("<HH", raw, 18)
    else:
        return Structure("other")
    rle = compression in (1, 2)  # RLE8, RLE4: Pillow decodes them in Python
    return Structure("BMP", abs(width), abs(height), python_codec=rle)
