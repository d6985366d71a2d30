"""Generated non-digits: no digit-like characters, no missing-glyph boxes, fonts kept apart,
reproducible, and laid out by the serving path."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from digitrec import negatives
from digitrec.preprocess import PreprocessSpec

SPEC = PreprocessSpec()


def test_no_character_is_a_number_or_a_digit_lookalike() -> None:
    assert all(unicodedata.numeric(ch, None) is None for ch in negatives.CHARACTERS)
    assert not set("0123456789OoIlZzSsBbGgq|/()[]{}") & set(negatives.CHARACTERS)


def test_training_and_held_out_fonts_never_overlap() -> None:
    train = set(negatives.font_files(negatives.TRAIN_FONTS))
    held = set(negatives.font_files(negatives.HELD_OUT_FONTS))
    assert train, "training fonts are not installed (see .ci/run)"
    assert held, "held-out fonts are not installed (see .ci/run)"
    assert not train & held


def test_a_character_the_font_lacks_is_skipped_not_drawn_as_a_box() -> None:
    font = next(
        p for p in negatives.font_files(negatives.TRAIN_FONTS) if "DejaVuSans.ttf" in str(p)
    )
    rng = np.random.default_rng(0)
    assert negatives.glyph_ink(font, "A", rng) is not None
    assert negatives.glyph_ink(font, "\u9fa5", rng) is None  # a CJK character DejaVu lacks


def test_sets_are_reproducible_and_seeds_differ() -> None:
    fonts = negatives.font_files(negatives.TRAIN_FONTS)
    a = negatives.glyphs(20, fonts, seed=1, spec=SPEC)
    assert np.array_equal(a, negatives.glyphs(20, fonts, seed=1, spec=SPEC))
    assert not np.array_equal(a, negatives.glyphs(20, fonts, seed=2, spec=SPEC))


def test_negatives_are_laid_out_like_served_images() -> None:
    images = negatives.scribbles(50, seed=5, spec=SPEC)
    assert images.shape == (50, 28, 28) and images.dtype == np.uint8
    for image in images:
        rows = np.flatnonzero(image.max(1) > 0)
        cols = np.flatnonzero(image.max(0) > 0)
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= SPEC.box + 1  # fits the box
        mass = image.astype(float)
        cy = (mass.sum(1) * np.arange(28)).sum() / mass.sum()
        assert abs(cy - 14) < 2.5  # centre of mass in the middle, as for digits


def test_several_digits_are_wider_than_tall() -> None:
    rng = np.random.default_rng(0)
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # a "1"
    ink = negatives.several_ink(np.stack([digit] * 3), rng)
    assert ink.shape[1] > 1.5 * ink.shape[0]


def test_pool_labels_and_shares() -> None:
    digits = np.zeros((5, 28, 28), np.uint8)
    digits[:, 4:24, 10:18] = 255
    images, labels = negatives.training_pool(100, digits, seed=0, spec=SPEC)
    assert images.shape == (100, 28, 28)
    assert set(labels.tolist()) == {10, 11}
    assert (labels == 11).sum() == pytest.approx(25, abs=1)


def test_missing_fonts_and_fashion_mnist_say_what_to_install(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from digitrec.config import Settings
    from digitrec.data import load_fashion_mnist_test
    from digitrec.errors import DataUnavailable

    with pytest.raises(DataUnavailable, match="apt-get install fonts-dejavu-core"):
        negatives.require_fonts(("no/such/folder",), "training")
    with pytest.raises(DataUnavailable, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist_test(Settings(home=tmp_path, fashion_mnist_dir=tmp_path))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip, not idx")
    with pytest.raises(DataUnavailable, match="cannot read"):
        load_fashion_mnist_test(Settings(home=tmp_path, fashion_mnist_dir=tmp_path))
