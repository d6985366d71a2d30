"""Whole numbers (#13): the generator's ground truth and ``read_number``.

Most numbers here are written with the pen paths of ``tests/handwriting.py``; a few
tests use generated numbers from MNIST test digits.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitrec.data import Mnist
from digitrec.errors import BlankImage, TooManyComponents
from digitrec.numbers.reader import NumberReading, read_number, read_number_projection
from digitrec.numbers.segment import label_ink
from digitrec.numbers.synth import number_set
from digitrec.predict import Predictor
from digitrec.preprocess import MARK_LEVEL, ink_map
from tests.conftest import encode
from tests.handwriting import DIGITS, Point, placed, traced

Strokes = list[list[Point]]
HEIGHT = 90  # digit height, pixels
PEN = 9  # stroke width, pixels


def write(
    digits: list[Strokes], gap: float = 0.35, height: int = HEIGHT, pen: int = PEN
) -> Image.Image:
    """The digits written left to right, ``gap`` digit heights apart (negative: they
    overlap), as a canvas export: dark ink on a transparent background."""
    shapes = [placed(strokes, 1.0, corner=(0.0, 0.0)) for strokes in digits]
    widths = [max(x for s in shape for x, _ in s) for shape in shapes]
    margin = height // 2
    total = sum(widths) * height + gap * height * (len(digits) - 1) + 2 * margin
    mask = Image.new("L", (round(total), height + 2 * margin), 0)
    pen_down = ImageDraw.Draw(mask)
    x = float(margin)
    for shape, width in zip(shapes, widths, strict=True):
        for stroke in traced(shape):
            points = [(x + px * height, margin + py * height) for px, py in stroke]
            pen_down.line(points, fill=255, width=pen, joint="curve")
        x += (width + gap) * height
    rgba = Image.new("RGBA", mask.size, (20, 20, 20, 0))
    rgba.putalpha(mask)
    return rgba


def png(img: Image.Image) -> bytes:
    return encode(img)


def number(text: str, **options: float) -> bytes:
    return png(write([DIGITS[c] for c in text], **options))  # type: ignore[arg-type]


def read(predictor: Predictor, raw: bytes) -> NumberReading:
    return read_number(raw, predictor)


# A 5 whose hat was lifted clear of its body, and a 4 whose two strokes do not meet.
FIVE_LIFTED_HAT = [DIGITS["5"][0], [(x + 0.02, y - 0.07) for x, y in DIGITS["5"][1]]]
FOUR_APART = [
    [(0.47, 0.18), (0.38, 0.38), (0.28, 0.58), (0.28, 0.58), (0.40, 0.58), (0.53, 0.57)],
    DIGITS["4"][1],
]


def components(raw: bytes) -> int:
    return len(label_ink(ink_map(Image.open(io.BytesIO(raw))), 10_000).groups)


@pytest.mark.parametrize("text", ["27", "305", "4619", "1234"])
def test_clear_numbers_read_right(predictor: Predictor, text: str) -> None:
    reading = read(predictor, number(text))
    assert (reading.number, reading.complete) == (text, True)
    assert len(reading.digits) == len(text)
    assert [d.box[0] for d in reading.digits] == sorted(d.box[0] for d in reading.digits)


def test_a_lone_digit_is_a_one_digit_number(predictor: Predictor) -> None:
    reading = read(predictor, number("7"))
    assert (reading.number, reading.complete, len(reading.digits)) == ("7", True, 1)
    assert reading.digits[0].image.shape == (predictor.spec.size, predictor.spec.size)
    assert reading.confidence == pytest.approx(reading.digits[0].confidence, abs=1e-6)


@pytest.mark.parametrize(
    ("strokes", "digit"), [(FIVE_LIFTED_HAT, "5"), (FOUR_APART, "4")], ids=["5-hat", "4-apart"]
)
def test_a_digit_in_separate_strokes_is_one_digit(
    predictor: Predictor, strokes: Strokes, digit: str
) -> None:
    raw = png(write([DIGITS["2"], strokes, DIGITS["8"]]))
    assert components(raw) == 4  # the setup: the digit really is in two pieces
    reading = read(predictor, raw)
    assert (reading.number, reading.complete) == (f"2{digit}8", True)


def test_touching_digits_are_split_in_two(predictor: Predictor) -> None:
    raw = number("23", gap=-0.02)
    assert components(raw) == 1  # the setup: the two digits' ink is one mark
    reading = read(predictor, raw)
    assert (reading.number, reading.complete, len(reading.digits)) == ("23", True, 2)


def test_a_letter_in_the_middle_is_not_a_digit(predictor: Predictor) -> None:
    letter: Strokes = [[(0.3, 0.8), (0.5, 0.2), (0.7, 0.8)], [(0.38, 0.55), (0.62, 0.55)]]  # A
    reading = read(predictor, png(write([DIGITS["3"], letter, DIGITS["6"]])))
    assert not reading.complete
    assert [d.verdict == "digit" for d in reading.digits] == [True, False, True]
    assert reading.digits[1].verdict in ("not_a_digit", "several_digits")
    assert reading.number == "36"


def test_no_ink_is_blank(predictor: Predictor) -> None:
    with pytest.raises(BlankImage) as info:
        read(predictor, png(Image.new("RGBA", (300, 120), (0, 0, 0, 0))))
    assert (info.value.status, info.value.code) == (422, "blank_image")


def counting_infer(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    infer: Callable[[np.ndarray], np.ndarray] = predictor.infer

    def counted(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return infer(batch)

    monkeypatch.setattr(predictor, "infer", counted)
    return calls


def test_many_dots_are_refused_before_any_is_read(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = Image.new("L", (600, 600), 255)
    dots = ImageDraw.Draw(img)
    for k in range(500):
        x, y = 12 + 24 * (k % 25), 12 + 29 * (k // 25)
        dots.ellipse((x - 4, y - 4, x + 4, y + 4), fill=0)
    calls = counting_infer(predictor, monkeypatch)
    with pytest.raises(TooManyComponents) as info:
        read(predictor, png(img))
    assert (info.value.status, info.value.code) == (422, "too_many_components")
    assert "500" in info.value.message
    assert calls == []  # refused before any model work


def test_a_lower_limit_refuses_a_long_number(predictor: Predictor) -> None:
    with pytest.raises(TooManyComponents):
        read_number(number("1234"), predictor, max_components=3)
    assert read_number(number("123"), predictor, max_components=3).number == "123"


def test_boxes_are_in_the_uploaded_images_pixels(predictor: Predictor) -> None:
    img = write([DIGITS[c] for c in "509"])
    small = read(predictor, png(img))
    big = read(predictor, png(img.resize((img.width * 2, img.height * 2))))
    assert small.number == big.number == "509"
    tolerance = 0.02 * img.width * 2
    for a, b in zip(small.digits, big.digits, strict=True):
        assert np.allclose(np.array(a.box) * 2, b.box, atol=tolerance)
    alpha = np.asarray(img.getchannel("A"))
    for d in small.digits:  # each box holds its digit's ink, in the image's own pixels
        x, y, w, h = d.box
        assert alpha[y : y + h, x : x + w].max() == 255


def test_the_answer_is_one_batch_for_clear_numbers(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_infer(predictor, monkeypatch)
    read(predictor, number("4619"))
    assert calls == [4]


# --- generated from MNIST ----------------------------------------------------------------


@pytest.mark.mnist
@pytest.mark.parametrize("variant", ["canvas", "photo"])
def test_generated_boxes_contain_the_ink(mnist: Mnist, variant: str) -> None:
    numbers = number_set(mnist, 12, spacing="touching", variant=variant, seed=3)
    again = number_set(mnist, 12, spacing="touching", variant=variant, seed=3)
    assert [n.data for n in numbers] == [n.data for n in again]  # seeded
    for n in numbers:
        assert len(n.boxes) == len(n.text) == len(n.broken)
        covered = np.zeros(n.ink.shape, bool)
        for x, y, w, h in n.boxes:
            assert n.ink[y : y + h, x : x + w].max() > MARK_LEVEL
            covered[y : y + h, x : x + w] = True
        assert not (n.ink > 0)[~covered].any()
        size = Image.open(io.BytesIO(n.data)).size
        assert size == (n.ink.shape[1], n.ink.shape[0])


@pytest.mark.mnist
def test_generated_numbers_use_the_splits_digits(mnist: Mnist) -> None:
    test = number_set(mnist, 5, split="test", lengths=(1,), seed=0)
    train = number_set(mnist, 5, split="train", lengths=(1,), seed=0)
    assert [n.text for n in test] != [n.text for n in train] or any(
        a.data != b.data for a, b in zip(test, train, strict=True)
    )


@pytest.mark.mnist
@pytest.mark.parametrize("spacing", ["clear", "touching"])
def test_components_read_better_than_projection(
    mnist: Mnist, predictor: Predictor, spacing: str
) -> None:
    numbers = number_set(mnist, 40, lengths=(2, 3, 4), spacing=spacing, seed=11)  # type: ignore[arg-type]

    def right(reader: Callable[..., NumberReading]) -> int:
        return sum(reader(n.data, predictor).number == n.text for n in numbers)

    ours, baseline = right(read_number), right(read_number_projection)
    # Touching digits are one mark that the baseline cannot part: there A must win.
    assert ours > baseline if spacing == "touching" else ours >= baseline


def test_at_most_two_batches_whatever_the_image(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_infer(predictor, monkeypatch)
    read(predictor, number("23", gap=-0.02))  # touching: the cut pass runs
    assert len(calls) == 2
    img = Image.new("L", (600, 600), 255)  # just under the limit: 60 marks
    marks = ImageDraw.Draw(img)
    for k in range(60):
        x, y = 30 + 60 * (k % 10), 40 + 90 * (k // 10)
        marks.line((x, y - 25, x + 20, y + 25), fill=0, width=6)
    calls.clear()
    read(predictor, png(img))
    assert 1 <= len(calls) <= 2
