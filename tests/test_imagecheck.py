"""The structure walk refuses crafted files before any decoder sees them, and lets every
ordinary file through with its format and declared size."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from benchmarks import hostile
from PIL import Image

from digitrec.errors import ImageTooCostly
from digitrec.imagecheck import (
    MAX_GIF_BLOCKS,
    MAX_JPEG_MARKERS,
    MAX_JPEG_SCANS,
    MAX_PNG_ANCILLARY,
    Structure,
    inspect,
)
from digitrec.preprocess import decode
from tests.conftest import encode, stroke_image

GOLDEN = Path(__file__).parent / "golden"


def photo(side: int = 640) -> Image.Image:
    rng = np.random.default_rng(0)
    a = np.clip(stroke_image(side) * 0.8 + rng.normal(0, 12, (side, side)) + 20, 0, 255)
    return Image.fromarray(a.astype(np.uint8)).convert("RGB")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: encode(photo(), "PNG"), Structure("PNG", 640, 640)),
        (lambda: encode(photo(), "JPEG", quality=90), Structure("JPEG", 640, 640)),
        (lambda: encode(photo(), "JPEG", progressive=True), Structure("JPEG", 640, 640, 10)),
        (lambda: encode(photo().convert("L"), "GIF", comment=b"hi"), Structure("GIF", 640, 640)),
        (lambda: encode(photo(), "BMP"), Structure("BMP", 640, 640)),
        (lambda: encode(photo(), "WEBP"), Structure("WEBP", 640, 640)),
        (lambda: encode(photo(), "TIFF"), Structure("TIFF")),
        (lambda: hostile.mpo_photo(800, 600), Structure("JPEG", 800, 600)),
    ],
)
def test_ordinary_files_pass_with_their_size(make, expected: Structure) -> None:  # type: ignore[no-untyped-def]
    assert inspect(make()) == expected


def test_golden_files_and_big_pngs_pass() -> None:
    for path in GOLDEN.glob("*.*"):
        if path.suffix in (".png", ".jpg", ".jpeg"):
            assert inspect(path.read_bytes()).format in ("PNG", "JPEG"), path
    # A big noisy PNG: Pillow writes it in many IDAT chunks, all of which are fine.
    noise = np.random.default_rng(1).integers(0, 255, (1500, 1500), dtype=np.uint8)
    raw = encode(Image.fromarray(noise), "PNG")
    assert raw.count(b"IDAT") > 20 and inspect(raw) == Structure("PNG", 1500, 1500)


def test_jpeg_with_exif_thumbnail_and_icc_profile_passes() -> None:
    img = photo(400)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    thumb = encode(img.resize((80, 80)), "JPEG")
    raw = encode(img, "JPEG", exif=exif.tobytes(), icc_profile=b"\xff\xd9\xff\xda" * 2000)
    raw = raw[:2] + b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb + raw[2:]
    assert inspect(raw) == Structure("JPEG", 400, 400)
    assert decode(raw).size == (400, 400)


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: hostile.png_many_chunks(MAX_PNG_ANCILLARY + 1), "chunks"),
        (lambda: hostile.jpeg_many_markers(MAX_JPEG_MARKERS + 1), "markers"),
        (lambda: hostile.jpeg_many_markers(MAX_JPEG_MARKERS + 1, marker=0xFE), "markers"),
        (lambda: hostile.gif_many_comments(MAX_GIF_BLOCKS + 1), "blocks"),
        (lambda: hostile.progressive_jpeg_scans(64, 64, MAX_JPEG_SCANS), "scans"),
    ],
)
def test_crafted_structures_are_refused(make, what: str) -> None:  # type: ignore[no-untyped-def]
    raw = make()
    with pytest.raises(ImageTooCostly, match=what) as info:
        inspect(raw)
    assert info.value.status == 413 and info.value.code == "image_too_costly"
    with pytest.raises(ImageTooCostly):
        decode(raw)  # the one decoding path checks it too (CLI, evaluation)


def test_the_issues_full_size_attacks_are_refused_by_the_walk() -> None:
    for raw in (
        hostile.png_many_chunks(),
        hostile.jpeg_many_markers(),
        hostile.jpeg_many_markers(marker=0xFE),
        hostile.gif_many_comments(),
        hostile.progressive_jpeg_scans(),
    ):
        with pytest.raises(ImageTooCostly):
            inspect(raw)


def test_truncated_and_odd_headers_never_crash() -> None:
    good = encode(photo(64), "PNG")
    jpeg = encode(photo(64), "JPEG")
    for raw in (good[:20], jpeg[:7], jpeg[:3], b"GIF89a", b"BM" + b"\0" * 30, b"\x89PNG\r\n\x1a\n"):
        inspect(raw)  # whatever it is, the decoder reports it; the walk just ends
    assert inspect(b"%PDF-1.4").format == "other"


def test_16_bit_images_of_any_size_are_read() -> None:
    """16-bit grey PNG and TIFF of 1536 px or more used to give a 500 (reduce on I;16)."""
    from digitrec.preprocess import prepare

    for raw in (hostile.png_16bit(1536), hostile.tiff_16bit(2048), hostile.png_16bit(1535)):
        img = decode(raw)
        assert img.mode.startswith("I;16")
        assert prepare(img).image.max() == 255


def test_mpo_is_decoded_at_a_reduced_scale_like_jpeg() -> None:
    img = Image.open(io.BytesIO(hostile.mpo_photo(2000, 1500)))
    assert img.format == "MPO"
    decoded = decode(hostile.mpo_photo(2000, 1500))
    assert max(decoded.size) <= 1000  # draft mode: 1/2 scale or less, as for JPEG
    assert decode(hostile.jpeg_photo(2000, 1500)).size == decoded.size


def test_costly_decodes_are_refused_from_the_header(tmp_path: Path) -> None:
    from digitrec.preprocess import Limits

    raw = hostile.png_huge_rgba(6000, 6000)  # 144 MB of pixels, ~50 KB of file
    with pytest.raises(ImageTooCostly, match="MB"):
        decode(raw, Limits(max_decode_mb=128))
    assert decode(hostile.png_huge_rgba(800, 800), Limits(max_decode_mb=128)).size == (800, 800)


def test_a_webp_too_big_for_the_memory_budget_is_413_not_damaged() -> None:
    with pytest.raises(ImageTooCostly, match="MB"):
        decode(hostile.webp_huge(7000))


@pytest.mark.parametrize("lossless", [True, False])
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_webp_size_is_read_from_its_header(lossless: bool, mode: str) -> None:
    raw = encode(Image.new(mode, (321, 123), "white"), "WEBP", lossless=lossless)
    assert inspect(raw) == Structure("WEBP", 321, 123)


def test_jpeg_fill_bytes_before_markers_are_skipped() -> None:
    raw = encode(photo(200), "JPEG", progressive=True)
    sos = raw.find(b"\xff\xda")
    padded = raw[:sos] + b"\xff\xff\xff" + raw[sos:]  # fill bytes are legal before a marker
    assert inspect(padded) == inspect(raw) == Structure("JPEG", 200, 200, 10)


def test_rle_bmps_are_never_decoded_in_process() -> None:
    """Pillow decodes RLE BMPs in Python (0.1 s of CPU for a megapixel): a few of them
    would hold the threads ordinary drawings are decoded in, so they go to the sandbox."""
    rle = inspect(hostile.bmp_rle8_rows(1000, 1000))
    assert (rle.format, rle.pixels, rle.python_codec) == ("BMP", 1_000_000, True)
    assert not rle.is_light(2_000_000)
    plain = inspect(encode(photo(300), "BMP"))
    assert plain.is_light(2_000_000) and not plain.python_codec


@pytest.mark.parametrize(
    ("mode", "bytes_per_pixel"),
    [("L", 1), ("RGB", 3), ("RGBA", 4), ("CMYK", 4), ("I;16", 2), ("I", 4), ("F", 4)],
)
def test_decoded_size_is_bytes_per_pixel_times_pixels(mode: str, bytes_per_pixel: int) -> None:
    from digitrec.preprocess import decoded_bytes

    assert decoded_bytes(Image.new(mode, (100, 50))) == 5000 * bytes_per_pixel
