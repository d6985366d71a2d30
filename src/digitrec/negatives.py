"""What is not one digit, generated: the negatives that teach and test rejection.

Each generator draws an ink map (float, ink high) and sends it through the serving
path's layout step (``preprocess.mnist_layout``: crop, stroke width, fit, centre), so
a negative reaches the model exactly as a user's drawing of it would:

- ``glyphs``: letters, punctuation, symbols and characters of other scripts (CJK,
  Greek, Cyrillic, Hebrew, Devanagari) rendered from installed fonts, never a character
  that is or resembles a digit (Unicode numerics, O, l, S, Z, B, ...);
- ``scribbles``: random pen strokes that turn often, and shapes (dots, dashes, stars,
  crosses, smileys, boxes, triangles, hashes, ticks, filled lumpy outlines of uneven ink);
- ``several``: two or three MNIST digits side by side.

Fonts come in two disjoint groups: ``TRAIN_FONTS`` (training and threshold selection)
and ``HELD_OUT_FONTS`` (evaluation only), so that evaluation measures glyph styles the
model never saw. Seeds keep every set reproducible; ``SEEDS`` names who may use which.
"""

from __future__ import annotations

import functools
import logging
import math
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digitrec.errors import BlankImage, DataUnavailable
from digitrec.preprocess import PreprocessSpec, mnist_layout

log = logging.getLogger(__name__)

FONT_ROOTS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
# Debian packages, by the folder their fonts land in (see .ci/run for the package names).
TRAIN_FONTS = (
    "truetype/dejavu",  # fonts-dejavu-core, fonts-dejavu-extra
    "truetype/liberation2",  # fonts-liberation2
    "truetype/freefont",  # fonts-freefont-ttf (also Devanagari, Hebrew)
    "truetype/wqy",  # fonts-wqy-microhei (CJK)
    "truetype/ancient-scripts",  # fonts-symbola (symbols)
    "opentype/comic-neue",  # fonts-comic-neue (handwriting-like)
)
HELD_OUT_FONTS = (
    "opentype/urw-base35",  # fonts-urw-base35
    "truetype/lato",  # fonts-lato
    "truetype/open-sans",  # fonts-open-sans
    "opentype/linux-libertine",  # fonts-linuxlibertine
    "opentype/ipafont-gothic",  # fonts-ipafont-gothic (CJK)
    "opentype/cantarell",  # fonts-cantarell
    "truetype/crosextra",  # fonts-crosextra-carlito
)
SEEDS = {"train": 1, "validation": 2, "evaluation": 3}  # evaluation seeds: never trained on

# Letters and symbols that cannot pass for a digit: no O o Q D l I J i j S s Z z B b G g q
# d, no brackets, braces or slashes, no Γ ε ξ § $ З Б Ч Э ד ו ר ט प ट ठ ड द: any of them
# can read as a digit.
LATIN = "ACEFHKMNPRTUVWXYacefhkmnprtuvwxy"
SYMBOLS = "#%&*+=?@<>~^€£¥¶π∞≠≈√∑Ω✓✗★☺♥♠♣♦♪☂☎✈⚑⌘"
GREEK = "ΔΛΞΠΣΦΨΩαγθλμπτφψω"
CYRILLIC = "ДЖИЛПФЦШЩЪЫЮЯджилпфцшщъыюя"
HEBREW = "אבגהחכלמנסעפצקשת"
DEVANAGARI = "अआइकखगघचछजझणतथधनफबभमयरलवशषसह"
CJK_RANGE = (0x4E00, 0x9FFF)
CANVAS = 96  # side of the ink maps negatives are drawn on


def _not_a_number(ch: str) -> bool:
    return unicodedata.numeric(ch, None) is None


CHARACTERS = "".join(
    ch for ch in LATIN + SYMBOLS + GREEK + CYRILLIC + HEBREW + DEVANAGARI if _not_a_number(ch)
)


# --- fonts --------------------------------------------------------------------------------


def font_files(groups: tuple[str, ...]) -> list[Path]:
    """The font files of the given groups that are installed here, sorted."""
    found = set()
    for root in FONT_ROOTS:
        for group in groups:
            folder = root / group
            if folder.is_dir():
                found |= {p for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf")}
                found |= {p for p in folder.rglob("*.ttc")}
    return sorted(found)


def require_fonts(groups: tuple[str, ...], what: str) -> list[Path]:
    files = font_files(groups)
    if not files:
        raise DataUnavailable(
            f"no {what} fonts installed (looked in {', '.join(groups)} under "
            f"{FONT_ROOTS[0]}); install them: apt-get install fonts-dejavu-core "
            "fonts-dejavu-extra fonts-liberation2 fonts-freefont-ttf fonts-wqy-microhei "
            "fonts-symbola fonts-comic-neue (training), fonts-urw-base35 fonts-lato "
            "fonts-open-sans fonts-linuxlibertine fonts-ipafont-gothic fonts-cantarell "
            "fonts-crosextra-carlito (evaluation)"
        )
    return files


@functools.lru_cache(maxsize=256)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=256)
def characters_in(path: str) -> frozenset[int]:
    """The code points a font has glyphs for (its character map)."""
    from fontTools.ttLib import TTFont  # comes with matplotlib, a training dependency

    try:
        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or {})
    except Exception:  # a damaged or unusual font file: skip it, never fail a run on it
        log.warning("cannot read the character map of %s; skipping it", path)
        return frozenset()


def _is_cjk_font(path: Path) -> bool:
    return any(part in str(path) for part in ("wqy", "ipafont"))


def glyph_ink(path: Path, ch: str, rng: np.random.Generator) -> np.ndarray | None:
    """One character in a random size, weight and slant; None if the font lacks it."""
    if ord(ch) not in characters_in(str(path)):
        return None  # it would draw its "missing glyph" box, which looks like a 0
    font = load_font(str(path), int(rng.integers(40, 72)))
    img = Image.new("L", (CANVAS, CANVAS), 0)
    weight = int(rng.integers(0, 4))
    ImageDraw.Draw(img).text(
        (CANVAS / 2, CANVAS / 2), ch, fill=255, font=font, anchor="mm", stroke_width=weight
    )
    if not img.getbbox():
        return None
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _pick_character(path: Path, rng: np.random.Generator) -> str:
    if _is_cjk_font(path) and rng.random() < 0.7:
        ch = chr(int(rng.integers(*CJK_RANGE)))
        if _not_a_number(ch):  # no CJK numerals (七, 九, ...) either
            return ch
    return CHARACTERS[int(rng.integers(len(CHARACTERS)))]


# --- strokes and shapes -------------------------------------------------------------------


def _polyline(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], width: int) -> None:
    draw.line(points, fill=255, width=width, joint="curve")
    r = width / 2
    for x, y in (points[0], points[-1]):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def _scribble(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int) -> None:
    """A pen that wanders and turns often: several sharp or sweeping turns per stroke."""
    for _ in range(int(rng.integers(1, 3))):
        x, y = rng.uniform(25, 70, size=2)
        heading = rng.uniform(0, 2 * math.pi)
        points = [(x, y)]
        for _ in range(int(rng.integers(20, 45))):
            heading += rng.normal(0, 1.1)
            step = rng.uniform(3, 9)
            x = float(np.clip(x + step * math.cos(heading), 6, CANVAS - 6))
            y = float(np.clip(y + step * math.sin(heading), 6, CANVAS - 6))
            points.append((x, y))
        _polyline(draw, points, width)


def _dot(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int) -> None:
    r = rng.uniform(3, 20)
    c = rng.uniform(30, 66, size=2)
    draw.ellipse((c[0] - r, c[1] - r * rng.uniform(0.7, 1.3), c[0] + r, c[1] + r), fill=255)


def _dash(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int) -> None:
    """A mostly horizontal line (a vertical one is a 1)."""
    angle = rng.uniform(-0.45, 0.45)
    length = rng.uniform(20, 80)
    cx, cy = rng.uniform(35, 61, size=2)
    dx, dy = length / 2 * math.cos(angle), length / 2 * math.sin(angle)
    _polyline(draw, [(cx - dx, cy - dy), (cx + dx, cy + dy)], width)


def _regular(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int) -> None:
    """A star, triangle, box, cross, hash or tick."""
    kind = int(rng.integers(6))
    c, r = rng.uniform(40, 56, size=2), rng.uniform(18, 40)
    turn = rng.uniform(0, 2 * math.pi)

    def at(angle: float, radius: float) -> tuple[float, float]:
        return (c[0] + radius * math.cos(angle + turn), c[1] + radius * math.sin(angle + turn))

    if kind == 0:  # star
        pts = [at(math.pi * k / 5, r if k % 2 == 0 else r * 0.4) for k in range(11)]
        draw.polygon(pts[:-1], fill=255 if rng.random() < 0.5 else None, outline=255, width=width)
    elif kind == 1:  # triangle
        _polyline(draw, [at(2 * math.pi * k / 3, r) for k in range(4)], width)
    elif kind == 2:  # box
        _polyline(draw, [at(math.pi / 4 + math.pi * k / 2, r) for k in range(5)], width)
    elif kind == 3:  # cross
        _polyline(draw, [at(0, r), at(math.pi, r)], width)
        _polyline(draw, [at(math.pi / 2, r), at(3 * math.pi / 2, r)], width)
    elif kind == 4:  # hash
        for k in (-1, 1):
            _polyline(draw, [(c[0] + k * r / 3, c[1] - r), (c[0] + k * r / 3, c[1] + r)], width)
            _polyline(draw, [(c[0] - r, c[1] + k * r / 3), (c[0] + r, c[1] + k * r / 3)], width)
    else:  # tick, upright (turned, it reads as a 7 or an L)
        turn = rng.uniform(-0.3, 0.3)
        _polyline(
            draw, [at(math.pi, r * 0.5), at(math.pi / 2, r * 0.3), at(-math.pi / 3, r)], width
        )


def _smiley(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int) -> None:
    c, r = rng.uniform(44, 52, size=2), rng.uniform(25, 40)
    draw.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), outline=255, width=width)
    e = max(2.0, r * 0.12)
    for side in (-1, 1):
        x, y = c[0] + side * r * 0.38, c[1] - r * 0.3
        draw.ellipse((x - e, y - e, x + e, y + e), fill=255)
    mouth = (c[0] - r * 0.55, c[1] - r * 0.3, c[0] + r * 0.55, c[1] + r * 0.6)
    draw.arc(mouth, 20, 160, fill=255, width=width)


def _blob(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int) -> None:
    """A filled outline, as an object or a piece of clothing in a photo: a lumpy polygon,
    sometimes with seams or holes drawn across it."""
    c, r = rng.uniform(42, 54, size=2), rng.uniform(22, 44)
    count = int(rng.integers(5, 11))
    angles = np.sort(rng.uniform(0, 2 * math.pi, count))
    radii = r * rng.uniform(0.55, 1.0, count)
    draw.polygon(
        [
            (c[0] + q * math.cos(a), c[1] + q * math.sin(a))
            for a, q in zip(angles, radii, strict=True)
        ],
        fill=255,
    )
    for _ in range(int(rng.integers(0, 4))):
        a, b = rng.uniform(c - r / 2, c + r / 2, size=(2, 2))
        draw.line([tuple(a), tuple(b)], fill=int(rng.integers(0, 120)), width=width)


SHAPES: list[Callable[[ImageDraw.ImageDraw, np.random.Generator, int], None]] = [
    _scribble,
    _scribble,
    _scribble,
    _dot,
    _dash,
    _regular,
    _regular,
    _smiley,
    _blob,
    _blob,
]


def _uneven(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ink of uneven strength (a smooth random field between 0.35 and 1), as filled
    things in photos have: folds, prints, shadows."""
    small = rng.uniform(0.35, 1.0, size=(6, 6)).astype(np.float32)
    field = np.asarray(Image.fromarray(small).resize(ink.shape[::-1], Image.Resampling.BICUBIC))
    return np.clip(ink * field, 0, 1)


def shape_ink(rng: np.random.Generator) -> np.ndarray:
    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    shape(draw, rng, int(rng.integers(2, 12)))
    ink = np.asarray(img, dtype=np.float32) / 255.0
    return _uneven(ink, rng) if shape is _blob else ink


# --- several digits -----------------------------------------------------------------------


def several_ink(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two or three of the given 28x28 digits side by side, as a number is written."""
    count = 2 if rng.random() < 0.7 else 3
    picks = digits[rng.integers(len(digits), size=count)]
    crops = []
    for d in picks:
        rows, cols = np.flatnonzero(d.max(1) > 40), np.flatnonzero(d.max(0) > 40)
        if not rows.size:
            continue
        crop = Image.fromarray(d[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        scale = rng.uniform(0.85, 1.15)
        crops.append(crop.resize((max(1, round(crop.width * scale)), round(crop.height * scale))))
    height = max(c.height for c in crops) + 8
    width = sum(c.width for c in crops) + 12 * len(crops) + 8
    canvas = Image.new("L", (width, height), 0)
    x = 4
    for crop in crops:
        y = int((height - crop.height) / 2 + rng.integers(-2, 3))
        canvas.paste(crop, (x, max(0, y)), crop)  # the ink is its own mask: overlaps add
        x += crop.width + int(rng.integers(0, 8))  # touching at most: overlapping digits
        # can make one digit-like shape, which must not be taught as "several"
    return np.asarray(canvas, dtype=np.float32) / 255.0


# --- sets ---------------------------------------------------------------------------------


def layout(ink: np.ndarray, spec: PreprocessSpec) -> np.ndarray | None:
    """An ink map as the model sees it (uint8 28x28), or None if it came out blank."""
    try:
        return np.rint(mnist_layout(ink, spec) * 255).astype(np.uint8)
    except BlankImage:
        return None


def _fill(n: int, draw: Callable[[], np.ndarray | None], spec: PreprocessSpec) -> np.ndarray:
    out = np.zeros((n, spec.size, spec.size), np.uint8)
    filled, attempts = 0, 0
    while filled < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise DataUnavailable("could not draw enough negatives (fonts without glyphs?)")
        ink = draw()
        image = None if ink is None else layout(ink, spec)
        if image is not None:
            out[filled] = image
            filled += 1
    return out


def glyphs(n: int, fonts: list[Path], seed: int, spec: PreprocessSpec) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])

    def draw() -> np.ndarray | None:
        path = fonts[int(rng.integers(len(fonts)))]
        return glyph_ink(path, _pick_character(path, rng), rng)

    return _fill(n, draw, spec)


def scribbles(n: int, seed: int, spec: PreprocessSpec) -> np.ndarray:
    rng = np.random.default_rng([seed, 2])
    return _fill(n, lambda: shape_ink(rng), spec)


def several(n: int, digits: np.ndarray, seed: int, spec: PreprocessSpec) -> np.ndarray:
    rng = np.random.default_rng([seed, 3])
    return _fill(n, lambda: several_ink(digits, rng), spec)


def training_pool(
    n: int, digits: np.ndarray, seed: int, spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` negatives from the training fonts and seeds, and their labels (10 or 11):
    45 % glyphs, 30 % scribbles and shapes, 25 % several digits (from ``digits``)."""
    from digitrec.rejection import NOT_A_DIGIT, SEVERAL_DIGITS

    fonts = require_fonts(TRAIN_FONTS, "training")
    n_glyphs, n_shapes = int(n * 0.45), int(n * 0.30)
    n_several = n - n_glyphs - n_shapes
    images = np.concatenate(
        [
            glyphs(n_glyphs, fonts, seed, spec),
            scribbles(n_shapes, seed, spec),
            several(n_several, digits, seed, spec),
        ]
    )
    labels = np.array([NOT_A_DIGIT] * (n_glyphs + n_shapes) + [SEVERAL_DIGITS] * n_several)
    return images, labels.astype(np.int64)
