"""Preprocessing: decoding, ink extraction, MNIST layout, stroke width, and how bad images
are refused."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from digitrec.errors import (
    BlankImage,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from digitrec.preprocess import (
    MARK_LEVEL,
    Limits,
    PreprocessSpec,
    _dilate3,
    _erode3,
    _ink_bbox,
    _median,
    _morph_step,
    _robust_max,
    _window,
    decode,
    ink_map,
    mnist_layout,
    normalize,
    preprocess_bytes,
    stroke_band_from,
    stroke_width,
)
from tests.conftest import encode, stroke_image
from tests.handwriting import DIGITS, traced

SPEC = PreprocessSpec()


def bar(**kwargs: object) -> bytes:
    return encode(Image.fromarray(stroke_image(**kwargs)))  # type: ignore[arg-type]


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    a = image.astype(np.float64)
    rows, cols = np.indices(a.shape)
    return float((rows * a).sum() / a.sum()), float((cols * a).sum() / a.sum())


def test_output_shape_range_and_normalisation() -> None:
    out = preprocess_bytes(bar())
    assert out.tensor.shape == (1, 28, 28) and out.tensor.dtype == np.float32
    assert out.image.shape == (28, 28) and out.image.dtype == np.uint8
    assert np.allclose(out.tensor[0], normalize(out.image / 255.0, SPEC), atol=1e-6)
    assert out.tensor.min() == pytest.approx(-SPEC.mean / SPEC.std, abs=1e-5)  # paper


def test_fits_20_pixel_box_and_centres_mass() -> None:
    image = preprocess_bytes(bar(box=(20, 10, 60, 250))).image  # tall bar near the left edge
    rows = np.flatnonzero(image.max(1) > 0)
    assert rows[-1] - rows[0] + 1 == 20  # the longer side fills the 20-pixel box
    cy, cx = centre_of_mass(image)
    assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75


def test_aspect_ratio_is_kept() -> None:
    image = preprocess_bytes(bar(box=(40, 100, 240, 150))).image  # 200 x 50 bar
    rows = np.flatnonzero(image.max(1) > 64)
    cols = np.flatnonzero(image.max(0) > 64)
    assert cols[-1] - cols[0] + 1 == 20
    assert 4 <= rows[-1] - rows[0] + 1 <= 6


@pytest.mark.parametrize("ink, paper", [(0, 255), (255, 0), (40, 200), (230, 90)])
def test_polarity_ink_always_becomes_white(ink: int, paper: int) -> None:
    image = preprocess_bytes(bar(ink=ink, paper=paper)).image
    assert image.max() == 255 and image[0, 0] == 0 and image[14, 14] > 200


def test_same_digit_in_any_polarity_gives_the_same_input() -> None:
    dark_on_light = preprocess_bytes(bar(ink=0, paper=255)).image
    light_on_dark = preprocess_bytes(bar(ink=255, paper=0)).image
    assert np.array_equal(dark_on_light, light_on_dark)


def test_transparent_canvas_export_uses_alpha() -> None:
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)  # transparent black background
    rgba[60:220, 100:130] = (0, 0, 0, 255)  # black stroke: invisible without alpha
    from_alpha = preprocess_bytes(encode(Image.fromarray(rgba))).image
    assert np.array_equal(from_alpha, preprocess_bytes(bar()).image)


def test_white_stroke_on_transparent_background() -> None:
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[20:80, 45:55] = (255, 255, 255, 255)
    image = preprocess_bytes(encode(Image.fromarray(rgba))).image
    assert image.max() == 255 and image[0, 0] == 0


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "CMYK", "I;16", "1", "I", "F"])
def test_every_colour_mode_is_read(mode: str) -> None:
    img = Image.fromarray(stroke_image()).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    image = preprocess_bytes(encode(img, fmt)).image
    assert image[14, 14] > 200 and image[0, 0] == 0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_supported_format(fmt: str) -> None:
    img = Image.fromarray(stroke_image()).convert("RGB" if fmt == "JPEG" else "L")
    assert preprocess_bytes(encode(img, fmt)).image[14, 14] > 200


def test_exif_orientation_is_applied() -> None:
    base = stroke_image(box=(40, 120, 240, 150))  # horizontal bar
    img = Image.fromarray(base).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the displayed bar is vertical
    rotated = preprocess_bytes(encode(img, "JPEG", exif=exif.tobytes())).image
    plain = preprocess_bytes(encode(img, "JPEG")).image
    assert np.count_nonzero(rotated.max(0) > 128) < np.count_nonzero(plain.max(0) > 128)


def test_animated_gif_uses_the_first_frame() -> None:
    first = Image.fromarray(stroke_image())
    second = Image.fromarray(stroke_image(box=(20, 120, 260, 150)))
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert np.array_equal(
        preprocess_bytes(buffer.getvalue()).image, preprocess_bytes(encode(first, "GIF")).image
    )


PHOTO = (480, 640)  # height, width of the lighting tests' photos


def lighting(kind: str) -> np.ndarray:
    """How brightly each pixel of the paper is lit (0..1): evenly, or under a soft shadow."""
    y, x = np.indices(PHOTO, dtype=np.float64)
    return {
        "even": np.full(PHOTO, 0.92),
        "shadow from the left": 0.92 - 0.5 / (1 + np.exp((x - 200) / 40)),
        "shadow in a corner": 0.92 - 0.5 / (1 + np.exp((np.hypot(x, y) - 300) / 40)),
    }[kind]


def photo_of_seven(light: np.ndarray) -> bytes:
    """A handwritten 7 in dark ink on paper lit as ``light``, with sensor noise, as a JPEG."""
    h, w = light.shape
    mask = Image.new("L", (w, h), 0)
    pen = ImageDraw.Draw(mask)
    for stroke in traced(DIGITS["7"]):
        pen.line([(w * (0.25 + 0.5 * x), h * y) for x, y in stroke], 255, h // 22, "curve")
    ink = np.asarray(mask, dtype=np.float64) / 255
    noise = np.random.default_rng(0).normal(0, 0.02, light.shape)
    grey = np.clip((light * (1 - ink) + 0.12 * ink + noise) * 255, 0, 255)
    return encode(Image.fromarray(grey.astype(np.uint8)).convert("RGB"), "JPEG", quality=85)


@pytest.mark.parametrize("kind", ["shadow from the left", "shadow in a corner"])
def test_uneven_lighting_and_noise_are_removed(kind: str) -> None:
    # A gradient alone is no test: subtracting the edges' level and the noise floor
    # remove it even without the lighting branch. A shadow over part of the page is not.
    even = preprocess_bytes(photo_of_seven(lighting("even"))).image.astype(np.float64)
    lit = preprocess_bytes(photo_of_seven(lighting(kind))).image.astype(np.float64)
    assert np.abs(lit - even).mean() < 5  # the same input as under even light (1 measured)
    assert ((lit > 100) & (even < 30)).sum() <= 2  # the shadow is not read as ink
    assert ((lit < 30) & (even > 100)).sum() <= 2  # nor does it hide the ink


@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_images_are_refused(value: int) -> None:
    with pytest.raises(BlankImage):
        preprocess_bytes(encode(Image.new("L", (280, 280), value)))


def test_faint_noise_only_is_blank() -> None:
    rng = np.random.default_rng(1)
    noise = np.clip(240 + rng.normal(0, 2, (200, 200)), 0, 255).astype(np.uint8)
    with pytest.raises(BlankImage):
        preprocess_bytes(encode(Image.fromarray(noise)))


def test_one_pixel_image_is_blank_not_a_guess() -> None:
    with pytest.raises(BlankImage):
        preprocess_bytes(encode(Image.new("L", (1, 1), 0)))


def test_empty_bytes() -> None:
    with pytest.raises(InvalidRequest) as info:
        decode(b"")
    assert info.value.code == "empty_image"


@pytest.mark.parametrize(
    "raw",
    [
        b"hello, this is text",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
        b"%PDF-1.4\n",
    ],
)
def test_non_images_are_unsupported(raw: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        decode(raw)


def test_truncated_png_is_invalid() -> None:
    raw = bar()
    with pytest.raises(InvalidImage):
        preprocess_bytes(raw[: len(raw) // 2])


def test_png_with_bad_crc_is_invalid() -> None:
    raw = bytearray(bar())
    idat = raw.index(b"IDAT")
    raw[idat + 10] ^= 0xFF  # corrupt compressed data; the chunk CRC no longer matches
    with pytest.raises(InvalidImage):
        preprocess_bytes(bytes(raw))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge size (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge):
        decode(png_header_only(60000, 60000))


def test_pixel_and_byte_limits_come_from_settings() -> None:
    with pytest.raises(ImageTooLarge):
        decode(bar(), Limits(max_bytes=10**6, max_pixels=1000, max_side=10**4))
    with pytest.raises(PayloadTooLarge):
        decode(bar(), Limits(max_bytes=100))


def test_mnist_digit_is_left_as_mnist_made_it(mnist) -> None:  # type: ignore[no-untyped-def]
    """An MNIST digit already is in MNIST layout: preprocessing must barely change it."""
    diffs = []
    for i in range(200):
        digit = mnist.test_images[i]
        out = mnist_layout(ink_map(Image.fromarray(digit)), SPEC)
        diffs.append(np.abs(out - digit / 255.0).mean())
    assert float(np.median(diffs)) < 0.03


# --- the fast helpers give what their plain definitions give ------------------------------


def _robust_max_by_definition(a: np.ndarray) -> float:
    """Each pixel counts up to its brightest 4-neighbour, the edge repeated outwards."""
    p = np.pad(a, 1, mode="edge")
    neighbour = np.maximum(
        np.maximum(p[:-2, 1:-1], p[2:, 1:-1]), np.maximum(p[1:-1, :-2], p[1:-1, 2:])
    )
    return float(np.minimum(a, neighbour).max())


def _opened_bbox_by_definition(ink: np.ndarray) -> tuple[int, int, int, int]:
    mask = ink > MARK_LEVEL
    opened = _dilate3(_erode3(mask))  # on the whole image, not around the marked pixels
    if np.count_nonzero(opened) >= 4:
        mask = opened
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@pytest.mark.parametrize("seed", range(20))
def test_robust_max_matches_its_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 40, size=2)
    a = rng.random((h, w)).astype(np.float32)
    y, x = rng.integers(h), rng.integers(w)
    if seed % 2:  # a lone bright speck somewhere, the case the neighbour rule is for
        a[y, x] = 2.0
    elif w > 1:  # a bright pair: the brightest pixel has an equally bright neighbour
        a[y, max(0, x - 1) : max(0, x - 1) + 2] = 3.0
    assert _robust_max(a) == _robust_max_by_definition(a)


def _window_by_definition(a: np.ndarray, size: int, reduce: Any) -> np.ndarray:
    """Min or max over each size x size window, the edge repeated outwards."""
    views = np.lib.stride_tricks.sliding_window_view(
        np.pad(a, size // 2, mode="edge"), (size, size)
    )
    return np.asarray(reduce(views, axis=(-2, -1)))


def _step_by_definition(a: np.ndarray, op: np.ufunc, square: bool) -> np.ndarray:
    """One 3x3 square or cross step of ``op``, paper (0) outside the image."""
    p = np.pad(a, 1)
    cross = op.reduce([p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
    corners = op.reduce([p[:-2, :-2], p[:-2, 2:], p[2:, :-2], p[2:, 2:]])
    return np.asarray(op(cross, corners)) if square else np.asarray(cross)


@pytest.mark.parametrize("seed", range(10))
def test_morphology_matches_its_definition(seed: int) -> None:
    """The OpenCV calls give exactly what the plain numpy definitions give."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 40, size=2)
    grey = rng.random((h, w)).astype(np.float32)
    mask = grey > 0.6
    edged = np.pad(mask, 1, mode="edge")  # erosion: outside counts as set; dilation: unset
    erode = _step_by_definition(edged.astype(np.uint8), np.minimum, True)[1:-1, 1:-1]
    assert (_erode3(mask) == erode.astype(bool)).all()
    assert (_dilate3(mask) == _step_by_definition(mask, np.maximum, True)).all()
    levels = (grey * 255).astype(np.uint8)
    assert (_window(levels, 15, cv2.erode) == _window_by_definition(levels, 15, np.min)).all()
    assert (_window(levels, 15, cv2.dilate) == _window_by_definition(levels, 15, np.max)).all()
    for op, ufunc in ((cv2.erode, np.minimum), (cv2.dilate, np.maximum)):
        for square in (True, False):
            expected = _step_by_definition(grey, ufunc, square)
            assert (_morph_step(grey, op, square) == expected).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 3921])
def test_median_matches_numpy(dtype: type, n: int) -> None:
    a = (np.random.default_rng(n).random(n) * 255).astype(dtype)
    assert _median(a) == np.median(a)
    assert _median(np.array([200, 201], np.uint8)) == 200.5  # no uint8 overflow


@pytest.mark.parametrize("seed", range(10))
def test_ink_box_opening_near_the_ink_matches_the_whole_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ink = np.zeros((120, 140), np.float32)
    top, left = rng.integers(0, 60, size=2)
    ink[top : top + 50, left : left + 4] = 1.0  # a stroke, maybe touching an edge
    ink[rng.integers(120, size=6), rng.integers(140, size=6)] = 1.0  # specks
    assert _ink_bbox(ink) == _opened_bbox_by_definition(ink)


# --- stroke width ------------------------------------------------------------------------

BAND = (0.08, 0.2)  # about MNIST's (test_realistic measures the real one)
BANDED = PreprocessSpec(stroke_band=BAND)
SUPERSAMPLING = 4  # shapes are drawn this many times bigger, then reduced (anti-aliased)


def supersampled(size: int, draw: Callable[[ImageDraw.ImageDraw, int], None]) -> np.ndarray:
    """An anti-aliased ink map ``size`` pixels square: ``draw(pen, scale)`` draws on a
    canvas ``scale`` times bigger."""
    big = Image.new("L", (size * SUPERSAMPLING, size * SUPERSAMPLING), 0)
    draw(ImageDraw.Draw(big), SUPERSAMPLING)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX), np.float32) / 255


def ring(size: int, pen: float) -> np.ndarray:
    """A circle as wide as the image drawn with a ``pen`` pixels wide."""
    return supersampled(
        size, lambda d, k: d.ellipse([0, 0, k * size - 1, k * size - 1], None, 255, round(pen * k))
    )


def line(length: int, pen: float, angle: float) -> np.ndarray:
    """A straight line ``length`` pixels long, ``pen`` pixels wide, at ``angle``."""
    size = length + 2 * round(pen) + 2
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    return supersampled(
        size,
        lambda d, k: d.line(
            [
                (k * (size / 2 - dx), k * (size / 2 - dy)),
                (k * (size / 2 + dx), k * (size / 2 + dy)),
            ],
            255,
            round(pen * k),
        ),
    )


def handwritten(
    digit: str, height: int, pen: int, canvas: int = 280, transparent: bool = False
) -> bytes:
    """A handwritten digit ``height`` pixels tall drawn with a ``pen`` pixels wide in the
    middle of a square canvas: a canvas export (ink in alpha) or dark on white."""
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    scale = height / 0.64  # the key points span 0.18 to 0.82 of the drawing area
    for stroke in traced(DIGITS[digit]):
        points = [
            (canvas / 2 + scale * (x - 0.5), canvas / 2 + scale * (y - 0.5)) for x, y in stroke
        ]
        draw.line(points, 255, pen, "curve")
    if not transparent:
        return encode(ImageOps.invert(mask))
    rgba = np.zeros((canvas, canvas, 4), np.uint8)
    rgba[..., 3] = np.asarray(mask)
    return encode(Image.fromarray(rgba))


@pytest.mark.parametrize(
    "size, pen",
    [
        (size, pen)
        for size in (20, 28, 64, 150, 384)
        for pen in (2, 3, 5, 8, 12, 40)
        if pen <= 0.3 * size  # thicker: a disc, not a ring
    ],
)
def test_stroke_width_of_a_ring(size: int, pen: int) -> None:
    assert stroke_width(ring(size, pen)) == pytest.approx(pen / size, rel=0.15)


@pytest.mark.parametrize("angle", [0.0, 0.4, np.pi / 4, 1.2])
@pytest.mark.parametrize("pen", [2, 3, 5, 12])
def test_stroke_width_of_a_line(angle: float, pen: int) -> None:
    ink = line(200, pen, angle)
    rows, cols = np.nonzero(ink > MARK_LEVEL)
    long_side = max(np.ptp(rows), np.ptp(cols)) + 1  # the line's box, its ends included
    assert stroke_width(ink) == pytest.approx(pen / long_side, rel=0.15)


def test_stroke_band_is_the_training_digits_percentiles() -> None:
    pens = np.linspace(1.5, 6, 40)  # digits 20 pixels big, like MNIST's
    digits = np.stack(
        [np.pad(np.rint(255 * ring(20, pen)).astype(np.uint8), 4) for pen in pens]
        + [np.zeros((28, 28), np.uint8)]  # an empty image has no stroke and does not count
    )
    low, high = stroke_band_from(digits)
    assert low == pytest.approx(np.percentile(pens / 20, 2), rel=0.15)
    assert high == pytest.approx(np.percentile(pens / 20, 98), rel=0.15)


def in_band(width: float, band: tuple[float, float]) -> bool:
    """Inside the band, give or take the 5 % that the measure moves by when a digit
    brought to the band's edge is fitted to the box again."""
    return band[0] * 0.95 <= width <= band[1] * 1.05


@pytest.mark.parametrize("digit", ["1", "2", "3", "7"])
@pytest.mark.parametrize(
    "drawing",
    [
        pytest.param({"height": 60, "pen": 20, "transparent": True}, id="small digit, fat pen"),
        pytest.param({"height": 800, "pen": 2, "canvas": 1000}, id="big photo, ballpoint"),
    ],
)
def test_strokes_are_brought_into_the_band(digit: str, drawing: dict[str, Any]) -> None:
    raw = handwritten(digit, **drawing)
    as_drawn = stroke_width(preprocess_bytes(raw).image / 255)
    assert not in_band(as_drawn, BAND), as_drawn  # without a band: a blob, or a hairline
    width = stroke_width(preprocess_bytes(raw, BANDED).image / 255)
    assert in_band(width, BAND), (as_drawn, width)


@pytest.mark.parametrize("digit", ["1", "2", "3", "7"])
def test_strokes_inside_the_band_are_left_exactly_as_they_were(digit: str) -> None:
    raw = handwritten(digit, height=200, pen=24, transparent=True)  # a canvas, 1/11 pen
    plain = preprocess_bytes(raw)
    assert BAND[0] < stroke_width(plain.image / 255) < BAND[1]
    assert np.array_equal(preprocess_bytes(raw, BANDED).image, plain.image)


def test_no_band_leaves_strokes_as_drawn() -> None:
    ink = ink_map(decode(handwritten("3", height=60, pen=20, transparent=True)))
    plain = mnist_layout(ink, PreprocessSpec(stroke_band=None))
    assert np.array_equal(plain, mnist_layout(ink, PreprocessSpec(stroke_band=(0.0, 1.0))))
    assert not np.array_equal(plain, mnist_layout(ink, BANDED))


def test_spec_round_trips_through_json_with_a_band() -> None:
    spec = PreprocessSpec(stroke_band=(0.0826, 0.2085))
    stored = json.loads(json.dumps(spec.to_dict()))  # as the manifest stores it
    assert stored["stroke_band"] == [0.0826, 0.2085]
    assert PreprocessSpec.from_dict(stored) == spec


def test_spec_of_a_model_trained_before_the_band_still_loads() -> None:
    old = {"size": 28, "box": 20, "mean": 0.1307, "std": 0.3081, "centering": "mass"}
    assert PreprocessSpec.from_dict(old).stroke_band is None
    assert PreprocessSpec.from_dict({**old, "stroke_band": None, "unknown": 1}) == SPEC


def test_a_thin_pen_digit_is_kept_whole() -> None:
    """Strokes about 2 pixels wide survive the speck filter: the crop is the whole digit,
    not the corner where the anti-aliased strokes meet (which once came out 4x3 pixels)."""
    from PIL import ImageDraw

    big = Image.new("L", (1120, 1120), 255)  # drawn 4x bigger, then reduced: anti-aliased
    ImageDraw.Draw(big).line([(160, 120), (960, 120), (560, 1040)], fill=0, width=8, joint="curve")
    top, bottom, left, right = _ink_bbox(ink_map(big.resize((280, 280), Image.Resampling.LANCZOS)))
    assert bottom - top > 200 and right - left > 180


@pytest.mark.parametrize("mode", ["I;16", "P"])
def test_the_ink_map_leaves_a_big_image_of_a_rare_mode_as_it_was(mode: str) -> None:
    # Such modes are resized, not reduced; a number in another script is read twice
    # from the same image (multiscript.read_number_as), so it must not shrink meanwhile.
    img = Image.new("L", (3000, 400), 255)
    ImageDraw.Draw(img).line([(1400, 50), (1500, 350)], fill=0, width=30)
    img = img.convert(mode)
    first = ink_map(img)
    assert img.size == (3000, 400)
    assert np.array_equal(ink_map(img), first)
