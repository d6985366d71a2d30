"""The preprocessing as it is against the one recorded before it was made cheaper (#17).

``scripts/preprocess_fixture.py`` recorded, with the old code, the 28x28 pictures of a
fixed corpus: 40 MNIST test digits redrawn in each of the 15 realistic variants (canvas,
photos, JPEG, light on dark, fat and thin pens). Here the same files are rebuilt and
prepared by the serving path now. The pictures may differ by rounding (resampling in
another library), never in what the model reads: each picture within ``MAX_MAD`` grey
levels on average and ``MAX_MAD_MEAN`` over the corpus, up to a shift of one pixel (the
centre of mass is placed on a whole pixel: a rounding may move the digit by one), no file
refused that was read or read that was refused, and the model's answer the same on at
least ``SAME_ANSWER`` of them, its accuracy no lower.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from digitrec.errors import BlankImage
from digitrec.evaluate import model_outputs
from digitrec.predict import Predictor
from digitrec.realistic import LIGHT_ON_DARK, VARIANTS, realistic_set

FIXTURE = Path(__file__).parent / "golden" / "preprocess_fixture.npz"
MAX_MAD = 16.0  # grey levels (of 255): mean absolute difference of any one picture
MAX_MAD_MEAN = 0.8  # ... and over the whole corpus (0.71 now; nearest-neighbour reduction: 0.96)
SAME_ANSWER = 0.995  # share of files the model answers the same for


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved by (dy, dx) pixels, paper coming in at the edges."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = image[
        max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def mad_up_to_a_pixel(old: np.ndarray, new: np.ndarray) -> float:
    """Mean absolute difference in grey levels, the smallest over shifts of one pixel."""
    return min(
        float(np.abs(shifted(old, dy, dx).astype(np.int16) - new).mean())
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def prepared_now(predictor: Predictor, corpus: list[tuple[str, int, bytes]]) -> np.ndarray:
    size = predictor.spec.size
    out = np.zeros((len(corpus), size, size), np.uint8)
    for i, (_, _, raw) in enumerate(corpus):
        with contextlib.suppress(BlankImage):  # black, as the fixture records a refusal
            out[i] = predictor.prepare(predictor.open(raw)).image
    return out


@pytest.mark.mnist
def test_preprocessing_matches_the_recorded_one(
    mnist, predictor: Predictor, recorded: dict[str, np.ndarray]
) -> None:  # type: ignore[no-untyped-def]
    n, stride, seed = int(recorded["n"]), int(recorded["stride"]), int(recorded["seed"])
    images, labels = mnist.test_images[::stride][:n], mnist.test_labels[::stride][:n]
    corpus = realistic_set(images, labels, n, seed, {**VARIANTS, **LIGHT_ON_DARK})
    assert [v for v, _, _ in corpus] == list(recorded["variants"])
    old, new = recorded["images"], prepared_now(predictor, corpus)

    refused_old, refused_new = old.max((1, 2)) == 0, new.max((1, 2)) == 0
    assert (refused_old == refused_new).all()
    mad = np.array([mad_up_to_a_pixel(a, b) for a, b in zip(old, new, strict=True)])
    worst = int(mad.argmax())
    report = f"worst: file {worst} ({corpus[worst][0]}) MAD {mad[worst]:.2f}, mean {mad.mean():.3f}"
    assert mad.max() <= MAX_MAD and mad.mean() <= MAX_MAD_MEAN, report

    answers_old = model_outputs(predictor, old).argmax(1)
    answers_new = model_outputs(predictor, new).argmax(1)
    assert (answers_old == answers_new).mean() >= SAME_ANSWER, report
    truth = np.asarray(recorded["labels"])
    assert (answers_new == truth).mean() >= (answers_old == truth).mean() - 1 / len(truth)


def test_mad_forgives_a_shift_of_one_pixel_only() -> None:
    image = np.zeros((28, 28), np.uint8)
    image[8:20, 12:16] = 255
    assert mad_up_to_a_pixel(image, shifted(image, 1, -1)) == 0
    assert mad_up_to_a_pixel(image, shifted(image, 2, 0)) > 2  # two rows of the bar differ
