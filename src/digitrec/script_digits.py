"""Digits of other writing systems, drawn from installed fonts to look handwritten.

No handwritten dataset of these scripts can be shipped, but Debian packages many fonts
for each of them. ``generate`` turns one script's fonts into a dataset (``fonts-SCRIPT``,
stored by ``datasets.save_dataset`` like an imported one):

- **Fonts.** Every installed font (``negatives.font_files``) whose character map holds
  the script's ten digits (``negatives.characters_in``), and that draws them as ten
  different, non-blank shapes -- and, for the two Arabic digit sets, draws 4, 5 and 6
  differently from the other set (some Persian fonts map U+0664 to the Persian four,
  which would teach the wrong shape under the Arabic label).
- **Held-out fonts.** Fonts are grouped by family (weights and slants of one design are
  one group, as are the few families ``SAME_DESIGN`` names: holding out Garuda-Bold while
  training on Garuda would test nothing new).
  The groups are ordered by a SHA-256 of the family's name and the first quarter (at
  least one) is held out: its fonts make the test split and never the train split. The
  manifest's ``source.fonts`` lists both groups with their files.
- **Handwriting.** Each digit is drawn in a random size and weight (Pillow's
  ``stroke_width``, or thinned by erosion), sometimes redrawn along its centre line with
  a round pen (a monoline stroke, as a pen makes), then turned, sheared and stretched
  (affine) and bent (elastic: a smooth random displacement field), then laid out as the
  serving path lays out any ink (``negatives.layout``: ``preprocess.mnist_layout``).
  A share goes instead through ``realistic``'s canvas export or paper photo and back
  through ``preprocess.decode`` and ``prepare``, exactly as an upload would.

Seeded: the same fonts, counts and seed give the same arrays. The train and test splits
draw from separate streams, so the train split depends on the training fonts only.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from digitrec.config import Settings
from digitrec.datasets import SPLITS, Split, refuse_existing, save_dataset
from digitrec.errors import BlankImage, DataUnavailable, InvalidRequest
from digitrec.negatives import FONT_ROOTS, characters_in, font_files, layout, load_font
from digitrec.preprocess import PreprocessSpec, decode, prepare
from digitrec.realistic import canvas_export, centre_line, paper_photo
from digitrec.scripts import SCRIPTS, check_script, digit_char

log = logging.getLogger(__name__)
# Reading every installed font's character map, fontTools warns of harmless oddities in
# some (Symbola's format-12 table): not the user's concern.
logging.getLogger("fontTools.ttLib.tables._c_m_a_p").setLevel(logging.ERROR)

# Scripts whose digits are generated -> the Debian packages that draw them (bookworm; the
# fonts negatives.py needs -- DejaVu, FreeFont -- count too). .ci/run installs them all.
SCRIPT_PACKAGES: dict[str, tuple[str, ...]] = {
    "arabic_indic": (
        "fonts-hosny-amiri",
        "fonts-sil-scheherazade",
        "fonts-sil-lateef",
        "fonts-sil-harmattan",
        "fonts-kacst",
        "fonts-kacst-one",
        "fonts-hosny-thabit",
    ),
    "persian": (
        "fonts-farsiweb",
        "fonts-freefarsi",
        "fonts-hosny-amiri",
        "fonts-sil-lateef",
        "fonts-hosny-thabit",
    ),
    "devanagari": (
        "fonts-deva-extra",
        "fonts-lohit-deva",
        "fonts-samyak-deva",
        "fonts-gargi",
        "fonts-nakula",
        "fonts-sahadeva",
        "fonts-sarai",
        "fonts-aksharyogini2",
        "fonts-sil-annapurna",
    ),
    "bengali": ("fonts-lohit-beng-bengali", "fonts-beng-extra"),
    "gurmukhi": ("fonts-lohit-guru", "fonts-guru-extra"),
    "gujarati": ("fonts-lohit-gujr", "fonts-samyak-gujr", "fonts-kalapi", "fonts-gujr-extra"),
    "oriya": ("fonts-lohit-orya", "fonts-samyak-orya", "fonts-orya-extra"),
    "tamil": ("fonts-lohit-taml", "fonts-lohit-taml-classical", "fonts-meera-inimai"),
    "telugu": ("fonts-lohit-telu", "fonts-telu-extra"),
    "kannada": ("fonts-lohit-knda", "fonts-gubbi", "fonts-navilu"),
    "malayalam": ("fonts-lohit-mlym", "fonts-smc"),
    "thai": ("fonts-thai-tlwg-ttf",),
    "khmer": ("fonts-khmeros",),
    "myanmar": ("fonts-myanmar", "fonts-sil-padauk"),
}
# Google's Noto draws the digits of nearly every script (Sans and Serif designs, and some
# scripts' fonts carry their neighbours' digits): one package for all of them.
SCRIPT_PACKAGES = {
    script: (*packages, "fonts-noto-core") for script, packages in SCRIPT_PACKAGES.items()
}
# Digit sets that share shapes but for a few digits: a font must draw these differently.
TWINS = {"arabic_indic": ("persian", (4, 5, 6)), "persian": ("arabic_indic", (4, 5, 6))}
HELD_OUT_SHARE = 0.25  # of a script's font families, held out for the test split
MIN_FAMILIES = 2  # one to train on, one to test on
TEST_SHARE = 0.25  # test images per digit, relative to the train split's
DEFAULT_PER_DIGIT = 1000  # train images per digit (`--per-digit`)
DEFAULT_SEED = 14  # (`--seed`)
REALISTIC_SHARE = 0.2  # images sent through a canvas export or a paper photo and back
# Words of a family name that name a weight, width or variant of one design.
STYLE_WORDS = frozenset(
    {
        *("bold", "boldoblique", "bolditalic", "book", "classical", "colored", "condensed"),
        *("extra", "extrabold", "italic", "light", "medium", "mono", "monospace", "normal"),
        *("oblique", "pro", "quran", "regular", "semibold", "slanted", "smooth", "thin"),
    }
)
# Families that are one design under several names (held out or trained on together).
SAME_DESIGN = {
    "mry kacstqurn": "kacstqurn",
    "tlwg typewriter": "tlwg",  # TlwgMono's siblings
    "tlwg typist": "tlwg",
    "tlwg typo": "tlwg",
}
# Families left out: their digits are not shapes a hand writes.
EXCLUDED_FAMILIES = frozenset({"kacsttitlel"})  # outlines: hollow strokes
CANVAS = 128  # side of the ink maps digits are drawn on
# The Arabic zero (٠, ۰) is written as a small dot or a small circle, and fonts draw both
# (most of those installed here a dot): this share of zeros is drawn as the dot's outline.
HOLLOW_ZEROS = {digit_char("arabic_indic", 0): 0.35, digit_char("persian", 0): 0.35}
CHECK_SIZE = 48  # glyph size at which fonts are checked for distinct digits
# The layout of the stored images: MNIST's, strokes as drawn (training measures the
# stroke band of its own data, as it does for any dataset).
SPEC = PreprocessSpec()


@dataclass(frozen=True)
class FontGroup:
    """One font family (its weights and slants) that draws a script's digits."""

    family: str
    files: tuple[Path, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "files": [str(f) for f in self.files]}


@dataclass(frozen=True)
class FontSplit:
    """A script's font families: those trained on and those held out for testing."""

    train: tuple[FontGroup, ...]
    held_out: tuple[FontGroup, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": [g.to_dict() for g in self.train],
            "held_out": [g.to_dict() for g in self.held_out],
        }


# --- fonts ---------------------------------------------------------------------------------


def family_key(name: str) -> str:
    """A family name without its style words and numbers: the design it belongs to."""
    words = [w for w in re.findall(r"[a-z]+", name.lower()) if w not in STYLE_WORDS]
    return " ".join(words) or name.lower()


@functools.lru_cache(maxsize=4096)
def _glyph(path: str, ch: str) -> bytes:
    img = Image.new("L", (2 * CHECK_SIZE, 2 * CHECK_SIZE), 0)
    ImageDraw.Draw(img).text(
        (CHECK_SIZE, CHECK_SIZE), ch, fill=255, font=load_font(path, CHECK_SIZE), anchor="mm"
    )
    return img.tobytes() if img.getbbox() else b""


@functools.lru_cache(maxsize=8192)
def draws_digits(path: Path, script: str) -> bool:
    """Does the font map the script's ten digits to ten different, non-blank shapes
    (and, for a digit set with a twin, to shapes of its own)?"""
    cmap = characters_in(str(path))
    if not all(ord(digit_char(script, d)) in cmap for d in range(10)):
        return False
    shapes = [_glyph(str(path), digit_char(script, d)) for d in range(10)]
    if not all(shapes) or len(set(shapes)) < 10:
        return False  # blank glyphs, or one shape for several digits
    twin, digits = TWINS.get(script, ("", ()))
    return not any(
        ord(digit_char(twin, d)) in cmap and _glyph(str(path), digit_char(twin, d)) == shapes[d]
        for d in digits
    )


@functools.lru_cache(maxsize=1024)
def _family(path: Path) -> str:
    return load_font(str(path), CHECK_SIZE).getname()[0] or path.stem


def script_fonts(script: str) -> list[FontGroup]:
    """The installed font families that draw ``script``'s digits, sorted by family."""
    groups: dict[str, list[Path]] = {}
    for path in font_files(("truetype", "opentype")):
        if draws_digits(path, script):
            key = family_key(_family(path))
            if key not in EXCLUDED_FAMILIES:
                groups.setdefault(SAME_DESIGN.get(key, key), []).append(path)
    return [FontGroup(k, tuple(v)) for k, v in sorted(groups.items())]


def split_fonts(groups: list[FontGroup]) -> FontSplit:
    """Whole families held out: the first quarter (at least one) in the order of the
    SHA-256 of their names, so the choice depends on nothing but the names."""
    ranked = sorted(groups, key=lambda g: hashlib.sha256(g.family.encode()).hexdigest())
    n_held = max(1, round(len(ranked) * HELD_OUT_SHARE))
    held = sorted(ranked[:n_held], key=lambda g: g.family)
    train = sorted(ranked[n_held:], key=lambda g: g.family)
    return FontSplit(train=tuple(train), held_out=tuple(held))


def require_fonts(script: str) -> FontSplit:
    """The script's font split, or a one-line error naming the packages to install."""
    check_script(script)
    if script not in SCRIPT_PACKAGES:
        raise InvalidRequest(
            f"no fonts are generated for {script!r} digits; scripts: {', '.join(SCRIPT_PACKAGES)}"
        )
    groups = script_fonts(script)
    if len(groups) < MIN_FAMILIES:
        raise DataUnavailable(
            f"{len(groups)} font famil{'y' if len(groups) == 1 else 'ies'} with {script} "
            f"digits installed under {FONT_ROOTS[0]}, {MIN_FAMILIES} needed (one to hold "
            f"out); install them: apt-get install {' '.join(SCRIPT_PACKAGES[script])}"
        )
    return split_fonts(groups)


def describe_fonts(script: str) -> str:
    """One line: the script, its digits, the families trained on and those held out."""
    fonts = require_fonts(script)
    digits = f"{digit_char(script, 0)}-{digit_char(script, 9)}"
    trained = ", ".join(g.family for g in fonts.train)
    held = ", ".join(g.family for g in fonts.held_out)
    return f"{script} ({digits}): trained on {trained}; held out {held}"


# --- drawing -------------------------------------------------------------------------------


def _pen_line(glyph: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The glyph redrawn along its centre line with a round pen of random width; the
    glyph itself when its strokes are too thin to find a line that spans it."""
    line = centre_line(np.asarray(glyph.filter(ImageFilter.MaxFilter(3))), CANVAS)
    box, line_box = glyph.getbbox(), line.getbbox()
    if not box or not line_box or _area(line_box) < 0.7 * _area(box):
        return glyph
    radius = int(rng.integers(1, 5))
    pen = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return Image.fromarray(cv2.dilate(np.asarray(line), pen)).filter(ImageFilter.GaussianBlur(0.7))


def _hollow(glyph: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A filled glyph as its outline: a ring an eighth to a quarter of its width thick."""
    box = glyph.getbbox()
    if not box:
        return glyph
    ink = np.asarray(glyph)
    width = min(box[2] - box[0], box[3] - box[1])
    thick = max(1, round(width * rng.uniform(1 / 8, 1 / 4)))
    core = cv2.erode(ink, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * thick + 1,) * 2))
    ring = cv2.subtract(ink, core)
    return Image.fromarray(ring) if ring.any() else glyph


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _affine(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turned up to 12 degrees, sheared up to 0.3, stretched 0.8-1.2 per axis, about the
    canvas centre."""
    angle = np.deg2rad(rng.uniform(-12, 12))
    shear = rng.uniform(-0.3, 0.3)
    sx, sy = rng.uniform(0.8, 1.2, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = rot @ np.array([[1, shear], [0, 1]]) @ np.diag([sx, sy])
    c = np.array([CANVAS / 2, CANVAS / 2])
    matrix = np.hstack([m, (c - m @ c)[:, None]]).astype(np.float32)
    return np.asarray(cv2.warpAffine(ink, matrix, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR))


def _elastic(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bent by a smooth random displacement (coarse 5x5 noise, upsampled), up to ~5 % of
    the canvas: strokes wobble and bulge as a hand's do."""
    alpha = rng.uniform(0, 0.05) * CANVAS
    coarse = rng.uniform(-1, 1, size=(2, 5, 5)).astype(np.float32)
    dx, dy = (
        cv2.resize(c, (CANVAS, CANVAS), interpolation=cv2.INTER_CUBIC) * alpha for c in coarse
    )
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    return np.asarray(cv2.remap(ink, xx + dx, yy + dy, cv2.INTER_LINEAR))


def digit_ink(path: Path, ch: str, rng: np.random.Generator) -> np.ndarray:
    """One character drawn as by hand: an ink map (float, ink 1) ``CANVAS`` square."""
    img = Image.new("L", (CANVAS, CANVAS), 0)
    size = int(rng.integers(48, 84))
    font = load_font(str(path), size)
    weight = round(rng.uniform(0, 2) * size / 64)  # a heavier pen, or none
    ImageDraw.Draw(img).text(
        (CANVAS / 2, CANVAS / 2), ch, fill=255, font=font, anchor="mm", stroke_width=weight
    )
    if ch in HOLLOW_ZEROS and rng.random() < HOLLOW_ZEROS[ch]:
        img = _hollow(img, rng)
    style = rng.random()
    if style < 0.3:
        img = _pen_line(img, rng)  # a monoline pen along the glyph's centre line
    elif style < 0.45 and weight == 0:
        thinned = img.filter(ImageFilter.MinFilter(3))
        img = thinned if thinned.getbbox() else img
    ink = np.asarray(img, dtype=np.float32) / 255.0
    return _elastic(_affine(ink, rng), rng)


def _as_upload(ink: np.ndarray, rng: np.random.Generator, spec: PreprocessSpec) -> np.ndarray:
    """The ink placed on a bigger page, exported as a canvas or photographed, and prepared
    from the file's bytes as the server prepares an upload."""
    side = 2 * CANVAS
    page = np.zeros((side, side), np.float32)
    x, y = rng.integers(0, side - CANVAS, size=2)
    page[y : y + CANVAS, x : x + CANVAS] = ink
    raw = canvas_export(page, rng) if rng.random() < 0.5 else paper_photo(page, rng)
    return prepare(decode(raw), spec).image


def render(
    groups: tuple[FontGroup, ...],
    script: str,
    per_digit: int,
    rng: np.random.Generator,
    spec: PreprocessSpec = SPEC,
) -> Split:
    """``per_digit`` images of each digit, fonts chosen evenly by family, then by file."""
    if not groups:
        raise DataUnavailable(f"no fonts to draw {script} digits from")
    images = np.zeros((10 * per_digit, spec.size, spec.size), np.uint8)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_digit)
    for i, digit in enumerate(labels):
        for _ in range(20):  # a glyph bent off the canvas can come out blank: draw again
            group = groups[int(rng.integers(len(groups)))]
            path = group.files[int(rng.integers(len(group.files)))]
            ink = digit_ink(path, digit_char(script, int(digit)), rng)
            try:
                if rng.random() < REALISTIC_SHARE:
                    image: np.ndarray | None = _as_upload(ink, rng, spec)
                else:
                    image = layout(ink, spec)
            except BlankImage:
                image = None
            if image is not None:
                images[i] = image
                break
        else:
            raise DataUnavailable(f"could not draw {script} digit {digit} (fonts: {groups})")
    return images, labels


def make_splits(script: str, fonts: FontSplit, per_digit: int, seed: int) -> dict[str, Split]:
    """The train split from the training fonts, the test split from the held-out ones,
    each from its own random stream (the train split never depends on held-out fonts)."""
    n_test = max(1, round(per_digit * TEST_SHARE))
    index = list(SCRIPTS).index(script)
    return {
        split: render(groups, script, n, np.random.default_rng([seed, index, k]))
        for k, (split, groups, n) in enumerate(
            zip(SPLITS, (fonts.train, fonts.held_out), (per_digit, n_test), strict=True)
        )
    }


# --- datasets ------------------------------------------------------------------------------


def dataset_name(script: str) -> str:
    return f"fonts-{script}"


def generate(
    settings: Settings,
    script: str,
    per_digit: int = DEFAULT_PER_DIGIT,
    seed: int = DEFAULT_SEED,
    force: bool = False,
) -> dict[str, Any]:
    """`digitrec data generate`: store ``fonts-SCRIPT``; its manifest."""
    if per_digit < 1:
        raise InvalidRequest(f"--per-digit must be at least 1, not {per_digit}")
    fonts = require_fonts(script)
    name = dataset_name(script)
    refuse_existing(settings, name, force)
    log.info(
        "drawing %s digits: %d font families to train on, %d held out",
        script,
        len(fonts.train),
        len(fonts.held_out),
    )
    source = {
        "format": "generated",
        "path": ", ".join(str(r) for r in FONT_ROOTS),
        "generator": "script_digits",
        "per_digit": per_digit,
        "seed": seed,
        "packages": list(SCRIPT_PACKAGES[script]),
        "fonts": fonts.to_dict(),
    }
    splits = make_splits(script, fonts, per_digit, seed)
    layout_counts = {"kept": 0, "prepared": sum(len(s[1]) for s in splits.values())}
    return save_dataset(settings, name, script, splits, source, layout_counts, force=force)


def installed_scripts() -> list[str]:
    """The generated scripts that have enough fonts installed here."""
    return [s for s in SCRIPT_PACKAGES if len(script_fonts(s)) >= MIN_FAMILIES]
