"""A realistic test set: MNIST test digits redrawn the way real inputs arrive.

Each variant turns one 28x28 MNIST digit into the bytes of an image file: drawn on a
big canvas off-centre, small or large, with thick or thin strokes, exported from a
canvas with a transparent background, dark on light, saved as JPEG, or photographed on
paper with uneven light and noise; and with pens far from MNIST's: a small digit with a
fat pen, a fat marker, a ballpoint in a big photo. Running them through the full
preprocessing path shows how much accuracy real inputs cost compared with clean MNIST.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from digitrec.preprocess import MARK_LEVEL, stroke_width

CANVAS = 280  # side of the simulated drawing canvas, pixels


def _scaled(digit: np.ndarray, side: int) -> Image.Image:
    return Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)


def _on_canvas(ink: Image.Image, size: tuple[int, int], pos: tuple[int, int]) -> np.ndarray:
    canvas = Image.new("L", size, 0)
    canvas.paste(ink, pos)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _encode(img: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _dark_on_light(ink: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(255 * (1 - ink)).astype(np.uint8))


def clean_png(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(Image.fromarray(digit))


def off_centre(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    side = 140
    x, y = rng.integers(0, CANVAS - side, size=2)
    return _encode(
        _dark_on_light(_on_canvas(_scaled(digit, side), (CANVAS, CANVAS), (int(x), int(y))))
    )


def small(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    side = 56
    x, y = rng.integers(20, CANVAS - side - 20, size=2)
    return _encode(
        Image.fromarray(
            np.rint(
                255 * _on_canvas(_scaled(digit, side), (CANVAS, CANVAS), (int(x), int(y)))
            ).astype(np.uint8)
        )
    )


def large(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    side = 380  # the digit's 28x28 frame overflows the canvas; the ink itself fits
    ink = _on_canvas(_scaled(digit, side), (CANVAS, CANVAS), (-50, -50))
    return _encode(_dark_on_light(ink))


def _stroke(digit: np.ndarray, filt: ImageFilter.Filter) -> np.ndarray:
    ink = _scaled(digit, 224).filter(filt)
    return _on_canvas(ink, (CANVAS, CANVAS), (28, 28))


def thick(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(_dark_on_light(_stroke(digit, ImageFilter.MaxFilter(9))))


def thin(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(_dark_on_light(_stroke(digit, ImageFilter.MinFilter(5))))


def canvas_export(ink: np.ndarray, rng: np.random.Generator) -> bytes:
    """An ink map (float, ink 1, any size) as an HTML canvas exports it: a stroke of one
    random colour in alpha, fully transparent background, PNG."""
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    rgba[..., :3] = rng.integers(0, 256, size=3, dtype=np.uint8)  # any ink colour
    rgba[..., 3] = np.rint(255 * ink).astype(np.uint8)
    return _encode(Image.fromarray(rgba))


def transparent(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Like an HTML canvas export: coloured stroke in alpha, fully transparent background."""
    return canvas_export(_on_canvas(_scaled(digit, 200), (CANVAS, CANVAS), (40, 40)), rng)


def inverted(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(Image.fromarray(255 - digit))


def jpeg(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    ink = _on_canvas(_scaled(digit, 200), (CANVAS, CANVAS), (40, 40))
    return _encode(_dark_on_light(ink), "JPEG", quality=55)


def photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo of pen on paper: off-white paper, shadow gradient, noise, blur, JPEG."""
    h, w = 480, 640
    side = int(rng.integers(160, 260))
    x, y = int(rng.integers(60, w - side - 60)), int(rng.integers(20, h - side - 20))
    return paper_photo(_on_canvas(_scaled(digit, side), (w, h), (x, y)), rng)


def paper_photo(ink: np.ndarray, rng: np.random.Generator) -> bytes:
    """An ink map (float, ink 1, any size) as a phone photo of pen on paper: off-white
    paper, shadow gradient, noise, blur, JPEG; the same size as ``ink``."""
    h, w = ink.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    paper = 0.88 - 0.25 * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)  # light falls off
    pen = 0.15
    grey = paper * (1 - ink) + pen * ink + rng.normal(0, 0.025, size=(h, w))
    tint = np.array([1.0, 0.97, 0.9], dtype=np.float32)  # warm indoor light
    rgb = np.clip(grey[..., None] * tint * 255, 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(1.2))
    return _encode(img, "JPEG", quality=85)


def _pen(digit: np.ndarray, side: int, width: float) -> Image.Image:
    """The digit upscaled to ``side`` and redrawn with a square pen whose stroke is about
    ``width`` of the ink's longer side (a min or max filter, as thick as needed)."""
    img = _scaled(digit, side)
    ink = np.asarray(img, dtype=np.float32) / 255.0
    rows, cols = np.nonzero(ink > MARK_LEVEL)
    long_side = max(np.ptp(rows), np.ptp(cols)) + 1
    # Each side moves by ``shift`` pixels, the longer side with it (hence 1 - width).
    shift = round((width - stroke_width(ink)) * long_side / (2 * (1 - width)))
    filt = ImageFilter.MaxFilter(3) if shift > 0 else ImageFilter.MinFilter(3)
    for _ in range(abs(shift)):
        img = img.filter(filt)
    return img


def centre_line(digit: np.ndarray, side: int) -> Image.Image:
    """The digit upscaled to ``side`` and thinned to the centre line of its strokes (1-2
    pixels): the pixels that survive at least as many 3x3 min filters as their
    neighbours (the ridge of the distance to the paper)."""
    mask = _scaled(digit, side).point(lambda v: 255 if v > 127 else 0)
    depth = np.zeros((side, side), np.uint8)
    while mask.getbbox():
        depth += np.asarray(mask) // 255
        mask = mask.filter(ImageFilter.MinFilter(3))
    highest = np.asarray(Image.fromarray(depth).filter(ImageFilter.MaxFilter(3)))
    line = (depth > 2) & (depth >= highest)  # no spurs from the outline's small bumps
    line[1:, 1:] |= line[:-1, :-1]  # two pixels wide
    return Image.fromarray(np.where(line, 255, 0).astype(np.uint8))


def small_thick(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A digit ~60 px tall on the canvas, drawn with a pen a quarter of its height wide,
    exported with a transparent background."""
    pen = _pen(digit, 70, float(rng.uniform(0.25, 0.3)))  # its ink ~60 px once thickened
    x, y = rng.integers(10, CANVAS - 80, size=2)
    alpha = np.rint(255 * _on_canvas(pen, (CANVAS, CANVAS), (int(x), int(y))))
    rgba = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    rgba[..., :3] = rng.integers(0, 256, size=3, dtype=np.uint8)
    rgba[..., 3] = alpha.astype(np.uint8)
    return _encode(Image.fromarray(rgba))


def marker(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A fat marker (stroke a quarter of the digit's height), dark on white."""
    pen = _pen(digit, 84, float(rng.uniform(0.23, 0.27))).resize(
        (252, 252), Image.Resampling.BICUBIC
    )
    return _encode(_dark_on_light(_on_canvas(pen, (CANVAS, CANVAS), (14, 14))))


def ballpoint_photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A ballpoint digit (~2 px stroke, ~150 px tall) in a 1600x1200 phone photo: paper
    lit unevenly by cool daylight, sensor noise, JPEG."""
    h, w = 1200, 1600
    pen = centre_line(digit, 210).filter(ImageFilter.GaussianBlur(0.6))
    x, y = int(rng.integers(100, w - 310)), int(rng.integers(100, h - 310))
    # The lighting is a plane: made at 4x3 pixels and stretched (cheap at this size).
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (
        np.cos(angle) * np.linspace(0, 1, 4)[None, :]
        + np.sin(angle) * np.linspace(0, 1, 3)[:, None]
    )
    paper = 255 * (0.88 - 0.25 * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6))
    lit = Image.fromarray(paper.astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    grey = np.asarray(lit) - np.uint8(11) + rng.integers(0, 23, size=(h, w), dtype=np.uint8)
    ink = np.asarray(pen, dtype=np.float32) / 255.0
    region = grey[y : y + pen.height, x : x + pen.width]
    region[...] = np.rint(region * (1 - ink) + 40 * ink)
    img = Image.fromarray(grey)
    blue = Image.merge("RGB", (img.point(lambda v: v * 0.9), img.point(lambda v: v * 0.95), img))
    return _encode(blue, "JPEG", quality=85)


def dark_canvas(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A dark-mode canvas export: a light stroke on an opaque near-black fill, drawn at a
    device pixel ratio of 2 (560x560), PNG with an alpha channel that is opaque throughout."""
    ink = _on_canvas(_scaled(digit, 400), (2 * CANVAS, 2 * CANVAS), (80, 80))[..., None]
    ground = rng.integers(10, 40, size=3)  # #121212 and its kin
    pen = rng.integers(200, 256, size=3)  # white or a light colour
    rgba = np.full((*ink.shape[:2], 4), 255, dtype=np.uint8)
    rgba[..., :3] = np.rint(ground * (1 - ink) + pen * ink).astype(np.uint8)
    return _encode(Image.fromarray(rgba))


def chalk(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo of chalk on a blackboard: grainy light strokes on a dark green-grey
    board lit from one side, sensor noise, blur, JPEG (800x600)."""
    h, w = 600, 800
    side = int(rng.integers(220, 320))
    x, y = int(rng.integers(60, w - side - 60)), int(rng.integers(20, h - side - 20))
    ink = _on_canvas(_scaled(digit, side), (w, h), (x, y))
    ink *= rng.uniform(0.55, 1.0, size=(h, w))  # chalk leaves grain, not a solid line
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    board = 0.14 + 0.12 * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)  # lit from one side
    grey = board * (1 - ink) + 0.85 * ink + rng.normal(0, 0.02, size=(h, w))
    tint = np.array([0.8, 1.0, 0.85], dtype=np.float32)  # a green board
    rgb = np.clip(grey[..., None] * tint * 255, 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(0.8))
    return _encode(img, "JPEG", quality=85)


VARIANTS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "clean_png": clean_png,
    "off_centre": off_centre,
    "small": small,
    "large": large,
    "thick": thick,
    "thin": thin,
    "transparent": transparent,
    "inverted": inverted,
    "jpeg": jpeg,
    "photo": photo,
    "small_thick": small_thick,
    "ballpoint_photo": ballpoint_photo,
    "marker": marker,
}


LIGHT_ON_DARK: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "dark_canvas": dark_canvas,
    "chalk": chalk,
}


Variants = dict[str, Callable[[np.ndarray, np.random.Generator], bytes]]


def realistic_set(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    seed: int = 0,
    variants: Variants = VARIANTS,
) -> list[tuple[str, int, bytes]]:
    """``(variant, label, file bytes)`` for the first ``n`` digits in every variant."""
    rng = np.random.default_rng(seed)
    return [
        (name, int(labels[i]), make(images[i], rng))
        for name, make in variants.items()
        for i in range(min(n, len(images)))
    ]
