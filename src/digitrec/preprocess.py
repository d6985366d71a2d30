"""The one path from image bytes to the 1x28x28 input the model expects.

Training, evaluation, the API, the web app and the CLI all go through this module, so a
drawing or photo is prepared exactly the way MNIST digits were:

1. ``decode``: read PNG, JPEG, WebP, BMP, GIF (first frame) or TIFF with size limits
   checked before any pixel is decoded (``open_image``: the file's structure walked by
   ``imagecheck``, then the header; what decoding would cost is estimated and refused
   over the budget); then ``load`` the pixels, apply the EXIF orientation, and decode
   big JPEGs at a reduced scale.
2. ``ink_map``: any colour mode to one float channel where ink = 1 and paper = 0:
   transparency, polarity (dark on light or light on dark), uneven lighting and faint
   noise are dealt with here.
3. ``mnist_layout``: crop to the ink, fit a 20x20 box keeping the aspect ratio
   (anti-aliased), thin or thicken the strokes into the training digits' band of stroke
   widths (when the spec has one), paste into 28x28 with the centre of mass at the
   centre.
4. ``normalize``: ``(x - mean) / std`` with the constants of the model's manifest.

Pillow decodes (measured: OpenCV's decoders are no faster on these files, and Pillow
knows every mode, EXIF and the headers the limits are checked on) and resamples where the
offline web page mirrors it (``_fit``, the lighting estimate). OpenCV does the rest of
the pixel work in single C passes: the morphology (exactly what the numpy passes it
replaced gave) and the last step of the reduction to the working size. numpy, Pillow and
OpenCV are all it needs: the ONNX serving path runs without PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import cv2
import numpy as np
from PIL import Image, ImageFilter, ImageOps, PngImagePlugin, UnidentifiedImageError

from digitrec import imagecheck
from digitrec.config import Settings
from digitrec.errors import (
    BlankImage,
    ImageTooCostly,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)

# Pillow format names we decode; anything else (SVG, PDF, ICO, PSD, ...) is refused.
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "GIF", "TIFF")  # JPEG covers MPO
FORMAT_LIST = "PNG, JPEG, WebP, BMP, GIF or TIFF"
WORK_SIDE = 384  # images are reduced to at most this side before the ink analysis
MIN_CONTRAST = 0.08  # below this ink-to-paper contrast an image counts as blank
MIN_INK_PIXELS = 4  # fewer marked pixels than this (at working size) count as blank
MARK_LEVEL = 0.3  # ink level (after stretching) that marks a pixel as part of the digit
# Modes Pillow's fast integer ``reduce`` handles; others (16-bit grey, ...) resize directly.
REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "I", "F"})
# libwebp holds about twice the canvas again while decoding (a 7000x7000 lossless WebP
# failed in a 384 MB budget that its 196 MB of pixels seemed to fit).
WEBP_OVERHEAD = 3.0
# Text chunks are never read: cap what Pillow decompresses for them (default 64 MB).
PngImagePlugin.MAX_TEXT_MEMORY = 1 << 20
# One image is prepared per thread, a thread per core: OpenCV's own pool would only
# compete with the server's threads (and spin between calls).
cv2.setNumThreads(1)
# 3x3 structuring elements: a square, and a cross (``_morph`` alternates them); the ring
# of a pixel's four neighbours, without the pixel itself (``_robust_max``).
_SQUARE = np.ones((3, 3), np.uint8)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_NEIGHBOURS = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.uint8)

ArrayT = TypeVar("ArrayT")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model's inputs were prepared; stored in its manifest and read back from it."""

    size: int = 28  # side of the model input
    box: int = 20  # the digit is scaled to fit a box this big, keeping its aspect ratio
    mean: float = 0.1307  # MNIST training pixel mean (pixels scaled to [0, 1])
    std: float = 0.3081  # MNIST training pixel standard deviation
    centering: str = "mass"  # the centre of mass is moved to the middle, as MNIST did
    # Stroke widths (relative to the ink's longer side, see ``stroke_width``) of the
    # training digits, low and high; wider or thinner strokes are brought to the nearer
    # end. None (models trained before it was measured): strokes are left as drawn.
    stroke_band: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stroke_band"] = list(self.stroke_band) if self.stroke_band else None  # JSON
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if known.get("stroke_band") is not None:
            low, high = known["stroke_band"]
            known["stroke_band"] = (float(low), float(high))
        return cls(**known)


@dataclass(frozen=True)
class Limits:
    """Upload limits; the defaults are the settings' (config.py), never a second copy."""

    max_bytes: int = Settings.model_fields["max_upload_bytes"].default
    max_pixels: int = Settings.model_fields["max_pixels"].default
    max_side: int = Settings.model_fields["max_side"].default
    max_decode_mb: int = Settings.model_fields["max_decode_memory_mb"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_upload_bytes,
            settings.max_pixels,
            settings.max_side,
            settings.max_decode_memory_mb,
        )


@dataclass(frozen=True)
class Preprocessed:
    """The model input (1, size, size) float32, and the same image as uint8 to show people."""

    tensor: np.ndarray
    image: np.ndarray


def normalize(x: ArrayT, spec: PreprocessSpec) -> ArrayT:
    """Scale [0, 1] pixels as training did. Works on numpy arrays and torch tensors alike."""
    return (x - spec.mean) / spec.std  # type: ignore[operator, return-value]


# --- 1. decode -------------------------------------------------------------------------


def decode(
    raw: bytes, limits: Limits = Limits(), checked: imagecheck.Structure | None = None
) -> Image.Image:
    """Decode image bytes safely, or raise a DigitrecError that says what is wrong."""
    return load(open_image(raw, limits, checked))


def check_structure(raw: bytes, limits: Limits = Limits()) -> imagecheck.Structure:
    """What can be refused without any decoder: empty or oversized files, crafted
    structures, declared sizes over the limits, WebP canvases over the memory budget."""
    if not raw:
        raise InvalidRequest("the image is empty (0 bytes)", code="empty_image")
    if len(raw) > limits.max_bytes:
        raise PayloadTooLarge(f"the image is {len(raw)} bytes; the limit is {limits.max_bytes}")
    structure = imagecheck.inspect(raw)  # crafted structures are refused before Pillow walks them
    if structure.pixels:
        _check_dimensions(structure.width, structure.height, limits)
    if structure.format == "WEBP" and structure.pixels:
        # libwebp allocates the whole canvas as the file is opened: check the cost first.
        needed = structure.pixels * 4 * WEBP_OVERHEAD  # RGBA
        _refuse_if_costly(structure.width, structure.height, "WEBP", needed, limits)
    return structure


def open_image(
    raw: bytes, limits: Limits = Limits(), checked: imagecheck.Structure | None = None
) -> Image.Image:
    """Read the header only and check the limits; no pixel is decoded yet (see ``load``).

    ``checked``: what ``check_structure(raw, limits)`` returned, when the caller has
    already walked these bytes (the server does, to choose where to decode them); the
    walk is then not repeated."""
    if checked is None:
        check_structure(raw, limits)
    with _decoding_errors():
        img: Image.Image = Image.open(io.BytesIO(raw), formats=SUPPORTED_FORMATS)
        _check_size(img, limits)
    _check_cost(img, limits)
    return img


def _is_jpeg(img: Image.Image) -> bool:
    return img.format in ("JPEG", "MPO")  # an MPO (phone cameras) is JPEG frames


def decoded_bytes(img: Image.Image) -> int:
    """Memory the decoded pixels will take (big JPEGs decode at a reduced scale)."""
    width, height = img.size
    if _is_jpeg(img) and img.mode in ("L", "RGB"):
        scale = 1
        while scale < 8 and max(width, height) / (2 * scale) >= WORK_SIDE:
            scale *= 2
        return -(-width // scale) * -(-height // scale)  # decoded in grey
    depth = 4 if img.mode in ("I", "F") else 2 if ";16" in img.mode else 1  # bytes a band
    return width * height * len(img.getbands()) * depth


def _check_cost(img: Image.Image, limits: Limits) -> None:
    # The decoded image, plus half again for the reduction to the working size.
    factor = WEBP_OVERHEAD if img.format == "WEBP" else 1.5
    _refuse_if_costly(img.width, img.height, img.format, decoded_bytes(img) * factor, limits)


def _refuse_if_costly(
    width: int, height: int, fmt: str | None, needed: float, limits: Limits
) -> None:
    if needed > limits.max_decode_mb * 2**20:
        raise ImageTooCostly(
            f"decoding this {width}x{height} {fmt} image would take about "
            f"{needed / 2**20:.0f} MB; the limit is {limits.max_decode_mb} MB"
        )


def load(img: Image.Image) -> Image.Image:
    """Decode the pixels of an opened image: first frame, EXIF orientation applied, big
    JPEGs at a reduced scale (draft mode)."""
    with _decoding_errors():
        if _is_jpeg(img) and img.mode in ("L", "RGB"):
            # Decode at 1/2..1/8 scale, in grey, no smaller than the working size.
            shrink = min(1.0, WORK_SIDE / max(img.size))
            img.draft("L", (max(1, int(img.width * shrink)), max(1, int(img.height * shrink))))
        img.seek(0)  # first frame of an animation
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy when there is no tag
    return img


@contextlib.contextmanager
def _decoding_errors() -> Iterator[None]:
    """Pillow's many failure modes -> the DigitrecError that says what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"not an image digitrec can read; send {FORMAT_LIST}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge("the image declares too many pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise InvalidImage(f"the image is damaged or truncated ({_short(exc)})") from None


def _check_size(img: Image.Image, limits: Limits) -> None:
    _check_dimensions(*img.size, limits)


def _check_dimensions(width: int, height: int, limits: Limits) -> None:
    if width < 1 or height < 1:
        raise InvalidImage("the image has no pixels")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} pixels; the limits are {limits.max_side} per side "
            f"and {limits.max_pixels} in all"
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:120]


# --- 2. ink map ------------------------------------------------------------------------


def _to_float_channels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey levels in [0, 1], and alpha in [0, 1] where the image has transparency.

    For a transparent background (a canvas export) only alpha matters: grey is then left
    empty (size 0) rather than computed.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth: the value range varies (16-bit, 32-bit, float); use the image's own.
        grey = _to_work_size(np.asarray(img, dtype=np.float32))
        low, high = float(grey.min()), float(grey.max())
        return (grey - low) / (high - low) if high > low else np.zeros_like(grey), None
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img if img.mode in ("RGBA", "LA") else img.convert("RGBA")
        alpha8 = _to_work_size(np.asarray(rgba.getchannel("A")))
        if alpha8.min() < 250:
            alpha = _unit(alpha8)
            if _median(_border(alpha8)) < 127.5:  # transparent background: alpha is the ink
                return np.empty(0, np.float32), alpha
            return _unit(_to_work_size(np.asarray(rgba.convert("L")))), alpha
        img = rgba
    if img.mode != "L":
        img = (
            img.convert("RGB").convert("L") if img.mode not in ("RGBA", "LA") else img.convert("L")
        )
    return _unit(_to_work_size(np.asarray(img))), None


def _unit(a8: np.ndarray) -> np.ndarray:
    """8-bit levels to float32 in [0, 1], in one pass."""
    return np.multiply(a8, np.float32(1 / 255), dtype=np.float32)


def _border_strips(a: np.ndarray) -> list[np.ndarray]:
    """The four edges of an image, each 5 % of the shorter side wide (at least 1 pixel)."""
    width = max(1, min(a.shape) // 20)
    return [a[:width].ravel(), a[-width:].ravel(), a[:, :width].ravel(), a[:, -width:].ravel()]


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate(_border_strips(a))


def _median(a: np.ndarray) -> float:
    """``np.median`` of a 1-D array, the same value at a third of the cost (no NaN checks:
    pixels are never NaN)."""
    k = a.size // 2
    if a.size % 2:
        return float(np.partition(a, k)[k])
    low, high = np.partition(a, [k - 1, k])[k - 1 : k + 1]
    if a.dtype.kind in "iu":
        return (int(low) + int(high)) / 2  # no uint8 overflow
    return float((low + high) / 2)  # in the array's precision, as np.median does


def _reduce(img: Image.Image) -> Image.Image:
    """Shrink a big image by a whole factor, to under twice the working size (Pillow's
    ``reduce``: a box average, in C, into a new image: no copy of a big image is made);
    ``_to_work_size`` goes the rest of the way on single channels. Rare modes that cannot
    be reduced (16-bit grey, palettes, ...) are resized by Pillow to the working size."""
    side = max(img.size)
    if side <= WORK_SIDE:
        return img
    if img.mode not in REDUCIBLE_MODES:  # no reducing gap: that would call ``reduce``
        # A new image: the caller's stays as it was (a number may be read twice).
        return ImageOps.contain(img, (WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    factor = side // WORK_SIDE
    return img.reduce(factor) if factor >= 2 else img


def _to_work_size(a: np.ndarray) -> np.ndarray:
    """One channel of a reduced image, resized to at most ``WORK_SIDE`` pixels a side.
    Bilinear: the factor left is under 2, so every pixel still counts, at a tenth of the
    cost of an area average (OpenCV's or Pillow's ``BOX``) for factors that are not whole."""
    h, w = a.shape
    if max(h, w) <= WORK_SIDE:
        return a
    ratio = WORK_SIDE / max(h, w)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    return np.asarray(cv2.resize(a, size, interpolation=cv2.INTER_LINEAR))


def _flatten_lighting(ink: np.ndarray) -> np.ndarray:
    """Subtract a smooth estimate of the paper level (shadows, gradients) from the ink map.

    The paper level is the ink map with strokes removed: a grey-scale opening (min filter,
    then max filter) wider than any stroke, computed on a small 8-bit copy and smoothed.
    """
    h, w = ink.shape
    scale = 64 / max(h, w)
    small = Image.fromarray(np.rint(np.clip(ink, 0, 1) * 255).astype(np.uint8)).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX
    )
    size = 15  # in the 64-pixel copy: a quarter of the side, wider than any pen stroke
    opened = _window(_window(np.asarray(small), size, cv2.erode), size, cv2.dilate)
    paper = Image.fromarray(opened).filter(ImageFilter.GaussianBlur(size / 2))
    paper = paper.resize((w, h), Image.Resampling.BILINEAR)
    level = np.asarray(paper, dtype=np.float32)
    level /= 255.0
    ink -= level  # in place: ``ink_map``'s own array
    return ink


def _window(a: np.ndarray, size: int, op: Any) -> np.ndarray:
    """Min (``cv2.erode``) or max (``cv2.dilate``) over a size x size window around each
    pixel, edges repeated."""
    kernel = np.ones((size, size), np.uint8)
    return np.asarray(op(a, kernel, borderType=cv2.BORDER_REPLICATE))


def _erode3(mask: np.ndarray) -> np.ndarray:
    """Binary 3x3 erosion; pixels outside the image count as set (OpenCV's default)."""
    return cv2.erode(mask.view(np.uint8), _SQUARE).view(bool) if mask.size else mask.copy()


def _dilate3(mask: np.ndarray) -> np.ndarray:
    """Binary 3x3 dilation; pixels outside the image count as unset (OpenCV's default)."""
    return cv2.dilate(mask.view(np.uint8), _SQUARE).view(bool) if mask.size else mask.copy()


def _robust_max(a: np.ndarray) -> float:
    """The highest value held by at least two neighbouring pixels: a single noisy pixel does
    not count, while even a small digit on a big canvas does."""
    h, w = a.shape
    peak = float(a.max())
    y, x = divmod(int(a.argmax()), w)
    if y in (0, h - 1) or x in (0, w - 1):
        return peak  # edge pixels count as their own neighbour (the edge is repeated)
    if max(a[y - 1, x], a[y + 1, x], a[y, x - 1], a[y, x + 1]) >= peak:
        return peak  # the usual case: the brightest pixel has an equally bright neighbour
    # Each pixel's brightest neighbour (edges repeated: an edge pixel is its own), capped
    # at the pixel's own value: the highest such value.
    nearby = cv2.dilate(a, _NEIGHBOURS, borderType=cv2.BORDER_REPLICATE)
    return float(np.minimum(nearby, a, out=nearby).max())


def _light_ink(grey: np.ndarray) -> bool:
    """Is the ink lighter than the paper? The extreme farther from the edges' level wins.

    Single noisy pixels do not count, but even a small digit on a big canvas decides.
    """
    paper = _median(_border(grey))
    return _robust_max(grey) - paper > paper + _robust_max(-grey)


def ink_map(img: Image.Image) -> np.ndarray:
    """One float channel in [0, 1] where the digit's ink is high and the paper is 0."""
    grey, alpha = _to_float_channels(_reduce(img))
    if alpha is not None and grey.size == 0:
        # Transparent background (e.g. a canvas export): the strokes are where alpha is.
        ink = alpha
    else:
        if alpha is not None:  # opaque background with holes: composite over the paper
            paper = _median(_border(grey))
            grey = grey * alpha + paper * (1 - alpha)
        ink = grey if _light_ink(grey) else 1.0 - grey
    # Uneven lighting shows as edges of different brightness (ink touching an edge moves
    # that edge's median far less than a shadow does).
    strips = _border_strips(ink)
    side_levels = [_median(strip) for strip in strips]
    if max(side_levels) - min(side_levels) > 0.08:
        ink = _flatten_lighting(ink)  # remove the lighting locally
        border = _border(ink)
        level = _median(border)
    else:
        border = np.concatenate(strips)
        level = _median(border)
        ink -= level  # even background: remove its level (in place: every ``ink`` is new)
    noise = 1.4826 * _median(np.abs(border - level))  # robust std of the paper
    return _stretch(ink, floor=min(0.25, 3 * noise))


def _stretch(ink: np.ndarray, floor: float) -> np.ndarray:
    """Map the paper to 0 and the strongest ink to 1; drop noise below ``floor``; in place.

    What is darker than the paper (below 0) is not clipped first: every step is monotonic,
    so the last clip makes it 0 all the same, and the robust maximum is unchanged."""
    peak = _robust_max(ink)
    if peak < MIN_CONTRAST:
        raise BlankImage("the image looks blank: no ink stands out from the background")
    ink /= peak
    if floor > 0:
        ink -= floor
        ink /= 1 - floor
    return np.clip(ink, 0, 1, out=ink)


# --- 3. MNIST layout ----------------------------------------------------------------------


def _ink_bbox(ink: np.ndarray) -> tuple[int, int, int, int]:
    mask = ink > MARK_LEVEL
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if min(ink.shape) > 96 and rows.size:
        # In big images, ignore specks smaller than ~2% of the side (an opening). It can
        # only remove pixels, so it is computed around the marked ones, one pixel wider.
        top, left = max(0, rows[0] - 1), max(0, cols[0] - 1)
        region = mask[top : rows[-1] + 2, left : cols[-1] + 2]
        opened = _dilate3(_erode3(region))
        # Only specks may go: when the opening takes most of the ink, the strokes
        # themselves are under 3 pixels wide (a ballpoint in a big photo); keep them.
        if np.count_nonzero(opened) >= max(MIN_INK_PIXELS, int(np.count_nonzero(region)) // 2):
            rows = top + np.flatnonzero(opened.any(1))
            cols = left + np.flatnonzero(opened.any(0))
            mask = opened
    if np.count_nonzero(mask) < MIN_INK_PIXELS and ink.size > 4 * MIN_INK_PIXELS:
        raise BlankImage("the image looks blank: too little ink to read a digit")
    if rows.size == 0:
        raise BlankImage("the image looks blank: no ink found")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# A digit drawn small with a fat pen, or big with a ballpoint, differs from MNIST in the
# width of its strokes relative to its size. The width is measured on the digit fitted to
# the box, as the model will see it and as the training digits are, as twice the ink's
# area over the length of its outline (exact for a ring; a stroke's ends and a blob
# count a little thinner). Out of the training digits' band, the strokes are thinned or
# thickened by grey-scale erosion or dilation on a copy of the crop ``RESTROKE_SIDE``
# pixels big (the cost is bounded whatever the image), then fitted to the box again.

STROKE_PERCENTILES = (2, 98)  # the band: MNIST's widths but the 2 % thinnest and thickest
RESTROKE_SIDE = 64  # strokes are thinned or thickened on the crop scaled to this side


def mnist_layout(ink: np.ndarray, spec: PreprocessSpec = PreprocessSpec()) -> np.ndarray:
    """Crop to the ink, fit ``box`` keeping the aspect, bring the strokes into
    ``stroke_band`` (when set), centre the mass in ``size``."""
    top, bottom, left, right = _ink_bbox(ink)
    crop = np.ascontiguousarray(ink[top:bottom, left:right])
    fitted = _fit(crop, spec.box)
    if spec.stroke_band is not None:
        low, high = spec.stroke_band
        width = stroke_width(fitted)
        if not low <= width <= high:
            # Too thick: to the band's edge, the least erosion (more wears strokes away);
            # too thin: to its middle (strokes at the thinnest edge read less well).
            target = (low + high) / 2 if width < low else high
            fitted = _fit(restroke(crop, width, target), spec.box)

    canvas = np.zeros((spec.size, spec.size), dtype=np.float32)
    mass = float(fitted.sum())
    if mass <= 0:
        raise BlankImage("the image looks blank after scaling")
    new_h, new_w = fitted.shape
    cy = float((fitted.sum(1) * np.arange(new_h)).sum()) / mass
    cx = float((fitted.sum(0) * np.arange(new_w)).sum()) / mass
    centre = spec.size // 2
    y0 = int(np.clip(round(centre - cy), 0, spec.size - new_h))
    x0 = int(np.clip(round(centre - cx), 0, spec.size - new_w))
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = fitted
    return canvas


def _fit(crop: np.ndarray, box: int) -> np.ndarray:
    """The crop scaled so its longer side is ``box``, keeping the aspect (anti-aliased)."""
    h, w = crop.shape
    ratio = box / max(h, w)
    new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
    method = Image.Resampling.LANCZOS if ratio < 1 else Image.Resampling.BILINEAR
    fitted = np.asarray(Image.fromarray(crop).resize((new_w, new_h), method))
    return np.clip(fitted, 0, 1)


def stroke_width(ink: np.ndarray) -> float:
    """Stroke width of the ink (float, ink high) relative to the longer side of its box:
    2 * area / perimeter, the perimeter being the summed gradient magnitude (2x2
    differences: a one-pixel line still has two edges). Within ~15 % of the pen's width
    for strokes at least 2 pixels wide, whatever the image's size."""
    mask = ink > MARK_LEVEL
    if mask.any():  # the digit's box, as ``mnist_layout`` crops it (faint pixels around)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    p = _pad(ink, 1)
    dx = np.diff(p, axis=1)
    dy = np.diff(p, axis=0)
    perimeter = float(np.hypot(dx[1:] + dx[:-1], dy[:, 1:] + dy[:, :-1]).sum()) / 2
    if perimeter == 0:
        return 0.0  # no ink at all
    # A line too thin for the pixels shows as a fainter one: as thin as its ink is faint.
    return 2 * float(ink.sum()) * float(ink.max()) / perimeter / max(ink.shape)


def stroke_band_from(images: np.ndarray) -> tuple[float, float]:
    """The band of relative stroke widths of uint8 MNIST-layout digits (N, size, size),
    for ``PreprocessSpec.stroke_band``. The digits are measured as ``mnist_layout``
    measures its fitted ones; they are their own ink map (paper 0, ink 255). About 2 s
    for MNIST's 60,000 training digits."""
    widths = [stroke_width(_unit(image)) for image in images if image.any()]
    low, high = np.percentile(widths, STROKE_PERCENTILES)
    return round(float(low), 4), round(float(high), 4)


def restroke(crop: np.ndarray, width: float, target: float) -> np.ndarray:
    """The ink crop, with strokes ``width`` wide (relative to its longer side), eroded or
    dilated to ``target`` on a copy scaled to ``RESTROKE_SIDE``, and cropped to its ink.

    Once: a loop that a fat pen filled stays filled, and such a blob measures thick
    however much it is eroded; eroding it more only wears away the thinner strokes.
    """
    h, w = crop.shape
    factor = -(-max(h, w) // RESTROKE_SIDE)
    if width < target and factor > 1:
        # Strokes to thicken may be thinner than the smaller copy's pixels: keep each
        # block's strongest ink (a max, not an average, which would only make them faint).
        work = _block_max(crop, factor)
    else:
        scale = RESTROKE_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        work = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
    # Each side moves by ``shift`` pixels; the longer side too, hence the 1 - target.
    shift = (width - target) * max(work.shape) / (2 * (1 - target))
    work = _pad(work, int(np.ceil(max(0.0, -shift))) + 1)  # room to grow
    work = _morph(work, abs(shift), cv2.erode if shift > 0 else cv2.dilate)
    mask = work > MARK_LEVEL
    if np.count_nonzero(mask) < MIN_INK_PIXELS:
        return crop  # nothing would be left: keep the strokes as drawn
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.ascontiguousarray(work[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def _block_max(a: np.ndarray, factor: int) -> np.ndarray:
    """The maximum of each ``factor`` x ``factor`` block (the last ones may be smaller:
    ink is never negative, so that is the max of the block padded with paper), as
    ``factor`` strided maxima per axis: 20x faster than one reduction over a 4-D view."""
    rows = a[0::factor].copy()
    for i in range(1, factor):
        part = a[i::factor]
        np.maximum(rows[: len(part)], part, out=rows[: len(part)])
    out = rows[:, 0::factor].copy()
    for i in range(1, factor):
        part = rows[:, i::factor]
        np.maximum(out[:, : part.shape[1]], part, out=out[:, : part.shape[1]])
    return out


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with ``n`` pixels of paper (0) around it (``np.pad`` costs 10x more here)."""
    out = np.zeros((a.shape[0] + 2 * n, a.shape[1] + 2 * n), dtype=a.dtype)
    out[n : n + a.shape[0], n : n + a.shape[1]] = a
    return out


def _morph(a: np.ndarray, radius: float, op: Any) -> np.ndarray:
    """Grey-scale erosion (``cv2.erode``) or dilation (``cv2.dilate``) by a disc of
    ``radius`` pixels: 3x3 squares and crosses in turn (an octagon), the fractional
    part interpolated between the last two steps."""
    steps = int(radius)
    for step in range(steps):
        a = _morph_step(a, op, square=step % 2 == 0)
    frac = radius - steps
    if frac > 0:
        a = a + frac * (_morph_step(a, op, square=steps % 2 == 0) - a)
    return a


def _morph_step(a: np.ndarray, op: Any, square: bool) -> np.ndarray:
    """One 3x3 step, square or cross; pixels outside the image are paper (0)."""
    kernel = _SQUARE if square else _CROSS
    return np.asarray(op(a, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0))


# --- the whole path ----------------------------------------------------------------------


def prepare(img: Image.Image, spec: PreprocessSpec = PreprocessSpec()) -> Preprocessed:
    """Decoded image -> model input and the 28x28 picture the model sees."""
    layout = mnist_layout(ink_map(img), spec)
    # Quantise like MNIST's uint8 pixels so serving sees exactly what training saw.
    return from_image(np.rint(layout * 255).astype(np.uint8), spec)


def from_image(image: np.ndarray, spec: PreprocessSpec = PreprocessSpec()) -> Preprocessed:
    """The model input for a prepared ``size x size`` uint8 picture."""
    tensor = normalize(image.astype(np.float32) / 255.0, spec)[None, :, :]
    return Preprocessed(tensor=tensor.astype(np.float32), image=image)


def preprocess_bytes(
    raw: bytes, spec: PreprocessSpec = PreprocessSpec(), limits: Limits = Limits()
) -> Preprocessed:
    """Image file bytes -> model input: ``prepare(decode(raw))``, the path every caller
    takes (the CLI, evaluation, the server's decoding threads and its sandbox)."""
    return prepare(decode(raw, limits), spec)


def to_png(image: np.ndarray) -> bytes:
    """Encode a uint8 grey image as PNG (e.g. the 28x28 input, to show it)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


PNG_DATA_URL = "data:image/png;base64,"


def png_data_url(image: np.ndarray) -> str:
    """A uint8 grey image as a PNG data URL, for a page to show."""
    import base64

    return PNG_DATA_URL + base64.b64encode(to_png(image)).decode("ascii")
