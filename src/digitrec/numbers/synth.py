"""Images of whole numbers made from MNIST digits, with their ground truth.

Each number is 1-6 MNIST digits written left to right the way people write: different
sizes, a jittered and sloping baseline, gaps from clear to touching (the ink of
neighbours meets, or overlaps a little), some digits broken by a thin erased band (a
faint gap in a photo, a stroke lifted), sometimes on a pad much wider than the number.
The page is then sent as a canvas export (dark ink on transparent) or photographed on
paper, with ``realistic.py``'s renderers. Everything is drawn from a seeded generator:
the same seed gives the same bytes. ``split="test"`` draws MNIST test digits only (for
evaluation), ``split="train"`` training digits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from digitrec.data import Mnist
from digitrec.preprocess import MARK_LEVEL
from digitrec.realistic import canvas_export, paper_photo

Spacing = Literal["clear", "touching"]
Split = Literal["train", "test"]
Box = tuple[int, int, int, int]  # x, y, width, height in the image's pixels

# Renderers of the page: an ink map (float, ink 1) -> image file bytes.
RENDERERS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "canvas": canvas_export,
    "photo": paper_photo,
}
HEIGHTS = {"canvas": (40, 100), "photo": (60, 120)}  # digit height range, pixels
CLEAR_GAP = (0.1, 0.45)  # gap between neighbours' ink boxes, in digit heights
TOUCH_OVERLAP = (0.0, 0.06)  # touching: ink overlap beyond first contact, digit heights
SIZE_JITTER = 0.15  # each digit's height varies by up to this share
LIFT_JITTER = 0.06  # ... and its vertical position by up to this share of the height
MAX_SLOPE_DEG = 6.0  # baseline slope, either way
BREAK_CHANCE = 0.2  # share of digits broken by an erased band
BREAK_BAND = 0.07  # the band's thickness, share of the digit's height (at least 2 px)
WIDE_PAD_CHANCE = 0.3  # share of numbers written on a pad 1.5-3x wider than the number
MARGIN = 0.4  # space around the number, digit heights


@dataclass(frozen=True)
class SynthNumber:
    """One generated number and what is known about it."""

    text: str  # the digits, left to right
    boxes: tuple[Box, ...]  # each digit's ink box, in the image's pixels
    broken: tuple[bool, ...]  # which digits had a band erased
    spacing: Spacing
    variant: str  # a key of RENDERERS
    ink: np.ndarray  # the page as drawn (float, ink 1), before rendering
    data: bytes  # the image file


def digit_ink(digit: np.ndarray, height: int) -> np.ndarray:
    """A 28x28 uint8 MNIST digit cropped to its ink and scaled to ``height`` pixels tall,
    keeping its aspect (float, ink 1)."""
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    width = max(1, round(crop.shape[1] * height / crop.shape[0]))
    scaled = Image.fromarray(crop).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(scaled, dtype=np.float32) / 255.0


def break_digit(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Erase a thin horizontal band across the middle of a digit: a faint gap or a
    lifted pen splits it into pieces one above the other."""
    h = ink.shape[0]
    band = max(2, round(BREAK_BAND * h))
    top = int(rng.integers(int(0.3 * h), max(int(0.3 * h) + 1, int(0.7 * h) - band)))
    out = ink.copy()
    out[top : top + band] = 0
    return out


def _contact_x(prev: tuple[int, int, np.ndarray], y: int, ink: np.ndarray) -> int | None:
    """Where ``ink`` placed at row ``y`` first touches ``prev`` (x, y, ink) moving from
    the right: the x at which its leftmost ink meets the other's rightmost, row by row.
    None when no row holds ink in both."""
    px, py, pink = prev
    lo, hi = max(py, y), min(py + pink.shape[0], y + ink.shape[0])
    if lo >= hi:
        return None
    a = pink[lo - py : hi - py] > MARK_LEVEL
    b = ink[lo - y : hi - y] > MARK_LEVEL
    both = a.any(1) & b.any(1)
    if not both.any():
        return None
    right = px + a.shape[1] - 1 - np.argmax(a[:, ::-1], axis=1)  # last ink column
    left = np.argmax(b, axis=1)  # first ink column
    return int(np.max((right - left)[both]))  # further left and the inks overlap


def make_number(
    digits: list[np.ndarray],
    labels: list[int],
    rng: np.random.Generator,
    spacing: Spacing = "clear",
    variant: str = "canvas",
) -> SynthNumber:
    """Write ``digits`` (28x28 uint8 MNIST images) as one number and render it."""
    height = int(rng.integers(*HEIGHTS[variant]))
    slope = np.tan(np.radians(rng.uniform(-MAX_SLOPE_DEG, MAX_SLOPE_DEG)))
    placed: list[tuple[int, int, np.ndarray]] = []  # x, y (top left) and ink of each digit
    broken = []
    x = 0
    for digit in digits:
        h = max(8, round(height * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)))
        ink = digit_ink(digit, h)
        is_broken = bool(rng.random() < BREAK_CHANCE)
        if is_broken:
            ink = break_digit(ink, rng)
        centre_y = slope * x + height * rng.uniform(-LIFT_JITTER, LIFT_JITTER)
        y = round(centre_y - h / 2)
        if placed:
            px, _, pink = placed[-1]
            if spacing == "touching":
                contact = _contact_x(placed[-1], y, ink)
                if contact is None:
                    contact = px + pink.shape[1] - 1
                x = contact - round(height * rng.uniform(*TOUCH_OVERLAP))
            else:
                x = px + pink.shape[1] + round(height * rng.uniform(*CLEAR_GAP))
        placed.append((x, y, ink))
        broken.append(is_broken)
    page, offset = _page(placed, height, rng)
    boxes = tuple(_ink_box(ink, x + offset[0], y + offset[1]) for x, y, ink in placed)
    return SynthNumber(
        text="".join(str(label) for label in labels),
        boxes=boxes,
        broken=tuple(broken),
        spacing=spacing,
        variant=variant,
        ink=page,
        data=RENDERERS[variant](page, rng),
    )


def _page(
    placed: list[tuple[int, int, np.ndarray]], height: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int]]:
    """The pad with every digit on it (the darker ink where they overlap), and the
    offset from the writing's coordinates to the pad's."""
    left = min(x for x, _, _ in placed)
    top = min(y for _, y, _ in placed)
    right = max(x + ink.shape[1] for x, _, ink in placed)
    bottom = max(y + ink.shape[0] for _, y, ink in placed)
    margin = round(MARGIN * height)
    width = right - left + 2 * margin
    pad_width = width
    if rng.random() < WIDE_PAD_CHANCE:
        pad_width = round(width * rng.uniform(1.5, 3.0))
    shift = int(rng.integers(0, pad_width - width + 1))
    page = np.zeros((bottom - top + 2 * margin, pad_width), np.float32)
    offset = (margin + shift - left, margin - top)
    for x, y, ink in placed:
        region = page[y + offset[1] :, x + offset[0] :][: ink.shape[0], : ink.shape[1]]
        np.maximum(region, ink, out=region)
    return page, offset


def _ink_box(ink: np.ndarray, x: int, y: int) -> Box:
    mask = ink > 0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (
        x + int(cols[0]),
        y + int(rows[0]),
        int(cols[-1] - cols[0]) + 1,
        int(rows[-1] - rows[0]) + 1,
    )


def number_set(
    mnist: Mnist,
    n: int,
    *,
    split: Split = "test",
    lengths: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
    spacing: Spacing = "clear",
    variant: str = "canvas",
    seed: int = 0,
) -> list[SynthNumber]:
    """``n`` numbers of the given lengths (drawn evenly), from ``split``'s digits only."""
    images, labels = (
        (mnist.test_images, mnist.test_labels)
        if split == "test"
        else (mnist.train_images, mnist.train_labels)
    )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.choice(lengths))
        picks = rng.integers(0, len(images), size=length)
        out.append(
            make_number(
                [images[i] for i in picks],
                [int(labels[i]) for i in picks],
                rng,
                spacing,
                variant,
            )
        )
    return out
