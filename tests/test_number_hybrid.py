"""Approach D for whole numbers (#13): the shipped sequence reader (``numbers.sequence``)
says how many digits a piece of touching digits holds; A's cutting into that many parts
wins. Its file ships in the package; without it ``read_number`` is approach A."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from digitrec.data import Mnist
from digitrec.errors import InvalidRequest
from digitrec.numbers import reader, sequence
from digitrec.numbers.reader import (
    _best_cutting,
    _reads_as,
    _second_opinion,
    _strip_pieces,
    read_number,
    read_number_components,
)
from digitrec.numbers.segment import label_ink
from digitrec.numbers.sequence import (
    BLANK,
    STRIP_HEIGHT,
    SequenceReader,
    SequenceReading,
    greedy_decode,
    shipped_reader,
    strip_ink,
)
from digitrec.numbers.synth import SynthNumber, number_set
from digitrec.predict import Predictor
from digitrec.preprocess import ink_map, load, open_image


@pytest.fixture
def no_shipped_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``numbers/pretrained`` replaced by an empty folder, and the cached reader dropped."""
    monkeypatch.setattr(sequence, "SHIPPED_ROOT", tmp_path)
    shipped_reader.cache_clear()
    yield tmp_path
    shipped_reader.cache_clear()


def touching(mnist: Mnist, n: int, lengths: tuple[int, ...], seed: int) -> list[SynthNumber]:
    return number_set(mnist, n, lengths=lengths, spacing="touching", seed=seed)


def test_the_sequence_reader_ships_with_its_manifest() -> None:
    folder = sequence.shipped_folder()
    assert folder is not None
    manifest = json.loads((folder / sequence.MANIFEST_FILE).read_text())
    assert manifest["version"] == folder.name
    assert manifest["strip"]["height"] == STRIP_HEIGHT
    assert manifest["training"]["steps"] > 0 and manifest["training"]["seed"] == 0
    assert (folder / sequence.MODEL_FILE).stat().st_size < 4_000_000  # a few MB at most


def test_the_package_data_carries_it() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["digitrec"]
    package = Path(sequence.__file__).parents[1]
    shipped = [p for p in sequence.SHIPPED_ROOT.rglob("*") if p.is_file()]
    assert shipped
    for path in shipped:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), relative


@pytest.mark.mnist
def test_the_shipped_reader_reads_touching_test_digits(mnist: Mnist) -> None:
    reader = shipped_reader()
    assert reader is not None
    numbers = touching(mnist, 40, (2, 3), seed=21)
    readings = reader.read_inks([ink_map(load(open_image(n.data))) for n in numbers])
    right = sum(r.text == n.text for r, n in zip(readings, numbers, strict=True))
    assert right >= 36  # 90 %: MNIST *test* digits, never seen in training
    for r in readings:
        assert len(r.positions) == len(r.text) and list(r.positions) == sorted(r.positions)


def test_greedy_decoding_merges_repeats_and_drops_blanks() -> None:
    path = [BLANK, 3, 3, BLANK, 3, 7, BLANK, BLANK]
    log_probs = np.log(np.full((len(path), BLANK + 1), 0.01, np.float32))
    log_probs[np.arange(len(path)), path] = np.log(0.9)
    reading = greedy_decode(log_probs, width=4 * len(path))
    assert reading.text == "337"
    assert reading.positions == (0.1875, 0.5625, 0.6875)  # steps 1, 4 and 5 of 8
    assert reading.confidence == pytest.approx(0.9**3, rel=1e-4)


def test_a_blank_strip_is_read_as_nothing() -> None:
    assert strip_ink(np.zeros((50, 80), np.float32)).shape == (STRIP_HEIGHT, STRIP_HEIGHT)


def test_the_count_chooses_among_the_cuttings() -> None:
    # Bounds 0..3; the whole piece (0, 3) scores best alone, two parts (0, 1) + (1, 3)
    # next, three parts (0, 1) + (1, 2) + (2, 3) last.
    spans = {(0, 3): 0, (0, 1): 1, (1, 3): 2, (1, 2): 3, (2, 3): 4, (0, 2): 5}
    scores = np.array([-0.1, -0.5, -0.5, -1.0, -1.0, -3.0])
    crossings = np.array([0, 1, 1, 0])

    def score(k: int, n: int) -> float:
        return float(scores[k])

    assert _best_cutting(crossings, spans, score) == [0]
    assert _best_cutting(crossings, spans, score, parts=2) == [1, 2]
    assert _best_cutting(crossings, spans, score, parts=3) == [1, 3, 4]
    assert _best_cutting(crossings, spans, score, parts=5) == [0]  # none has 5: A's


def test_the_sequence_readers_digits_choose_where_to_cut() -> None:
    # Two cuttings into two parts: (0, 1) + (1, 3) reads "47" best, (0, 2) + (2, 3)
    # reads "17" best; the sequence reader read "17".
    spans = {(0, 1): 0, (1, 3): 1, (0, 2): 2, (2, 3): 3}
    digit_scores = np.log(np.full((4, 10), 0.01))
    digit_scores[0, 4], digit_scores[0, 1] = np.log(0.9), np.log(0.05)
    digit_scores[1, 7] = np.log(0.9)
    digit_scores[2, 1], digit_scores[3, 7] = np.log(0.6), np.log(0.6)
    best = digit_scores.max(1)
    crossings = np.array([0, 1, 1, 0])
    assert _best_cutting(crossings, spans, lambda k, n: float(best[k]), 2) == [0, 1]
    assert _best_cutting(crossings, spans, _reads_as("17", digit_scores, best), 2) == [2, 3]


def test_the_strip_is_cut_between_the_digits_read(predictor: Predictor) -> None:
    ink = np.zeros((40, 130), np.float32)
    ink[8:32, 10:40] = ink[8:32, 50:80] = ink[8:32, 90:120] = 1.0  # three blobs
    comps = label_ink(ink, 64)
    # Emissions at the blobs' centres, as shares of the strip (the ink padded by 15 %
    # of its 24-pixel height: 4 columns each side, 118 columns in all).
    centres = [(x - 10 + 4 + 0.5) / 118 for x in (25, 65, 105)]
    probs = tuple(np.eye(10)[d] for d in (3, 1, 4))
    reading = SequenceReading("314", tuple(centres), 1.0, probs)
    parts = _strip_pieces(comps, reading, predictor)
    assert [(p.left, p.right, p.top, p.bottom) for p in parts] == [
        (10, 40, 8, 32),
        (50, 80, 8, 32),
        (90, 120, 8, 32),
    ]


def test_the_sequence_reader_is_a_second_opinion_where_the_models_differ() -> None:
    own = np.full(10, 0.01)
    own[0], own[6] = 0.55, 0.37  # the digit model: rather a 0 than a 6
    seen = np.full(10, 0.005)
    seen[6], seen[0] = 0.9, 0.055  # the sequence reader, neighbours in view: a 6
    joint = _second_opinion(own, seen)
    assert joint is not None and int(joint.argmax()) == 6
    assert joint.sum() == pytest.approx(1.0)
    seen[6], seen[0] = 0.055, 0.9  # both read a 0: the digit model's answer stands
    assert _second_opinion(own, seen) is None


@pytest.mark.mnist
def test_a_digit_misread_alone_is_read_with_its_neighbours(
    mnist: Mnist, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by running both ways on generated numbers: a 9 the digit model reads as a
    # 7 in "4490", which the sequence reader reads right.
    made = number_set(mnist, 110, lengths=(2, 3, 4), seed=61)[109]
    assert made.text == "4490"
    assert read_number(made.data, predictor).number == "4490"
    monkeypatch.setattr(reader, "_second_opinion", lambda own, seen: None)
    assert read_number(made.data, predictor).number != "4490"


@pytest.mark.mnist
def test_a_digit_in_two_pieces_is_joined_to_the_count_read(
    mnist: Mnist, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 4 whose parts the segmentation left apart: the sequence reader reads three
    # digits in "442", so the two pieces that read best as its 4 are joined.
    made = number_set(mnist, 114, lengths=(2, 3), seed=62)[113]
    assert made.text == "442"
    joined = read_number(made.data, predictor)
    assert (joined.number, joined.complete, len(joined.digits)) == ("442", True, 3)
    box = joined.digits[0].box  # the joined piece covers the first 4's ink
    assert box[0] <= made.boxes[0][0] + 2 and box[0] + box[2] >= sum(made.boxes[0][::2]) - 2
    monkeypatch.setattr(reader, "MERGE_RUN", 1)  # joining off: four pieces
    apart = read_number(made.data, predictor)
    assert len(apart.digits) == 4 and not apart.complete


def test_a_bad_top_k_is_refused_before_any_work(predictor: Predictor) -> None:
    with pytest.raises(InvalidRequest):
        read_number(b"not even an image", predictor, top_k=11)


@pytest.mark.mnist
def test_the_hybrid_reads_touching_numbers_a_alone_misreads(
    mnist: Mnist, predictor: Predictor
) -> None:
    numbers = touching(mnist, 30, (2, 3, 4), seed=31)
    hybrid = [read_number(n.data, predictor) for n in numbers]
    alone = [read_number_components(n.data, predictor) for n in numbers]
    right_d = sum(r.complete and r.number == n.text for r, n in zip(hybrid, numbers, strict=True))
    right_a = sum(r.complete and r.number == n.text for r, n in zip(alone, numbers, strict=True))
    assert right_d >= 24 and right_d >= right_a + 10  # 80 % against A's ~40 %
    for r in hybrid:  # every piece still has a box and the digit model's answer
        assert all(len(d.top) == 3 and d.box[2] > 0 for d in r.digits)


@pytest.mark.mnist
def test_without_the_file_the_reader_is_approach_a(
    mnist: Mnist, predictor: Predictor, no_shipped_reader: Path
) -> None:
    assert shipped_reader() is None
    for n in touching(mnist, 6, (2, 3), seed=31):
        d, a = read_number(n.data, predictor), read_number_components(n.data, predictor)
        assert (d.number, [x.box for x in d.digits]) == (a.number, [x.box for x in a.digits])


def test_a_broken_file_is_approach_a_too(predictor: Predictor, no_shipped_reader: Path) -> None:
    folder = no_shipped_reader / "20990101-000000"
    folder.mkdir()
    (folder / sequence.MODEL_FILE).write_bytes(b"not an onnx file")
    (folder / sequence.MANIFEST_FILE).write_text("{}")
    assert sequence.shipped_folder() == folder
    assert shipped_reader() is None


def test_an_exported_model_is_served_by_onnx_runtime(mnist: Mnist, tmp_path: Path) -> None:
    from digitrec.numbers import ctc

    stream = ctc.NumberStream(mnist, seed=0, pool=16)
    strips, texts = stream.batch()
    assert all(t.isdigit() and 1 <= len(t) <= 6 for t in texts)
    assert all(s.shape[0] == STRIP_HEIGHT and s.max() <= 1 for s in strips)
    model, info = ctc.train(stream, seconds=1.0)
    assert info["steps"] >= 1 and stream.drawn > 16
    ctc.export_onnx(model, tmp_path / sequence.MODEL_FILE)
    served = SequenceReader(tmp_path).read_strips(strips[:4])
    assert [r.text for r in served] == ctc.read(model, strips[:4])


SERVE_SCRIPT = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from digitrec.numbers.sequence import shipped_reader
from digitrec.numbers.reader import read_number
from digitrec.predict import Predictor
from digitrec.registry import BUNDLED_ROOT, Registry

assert shipped_reader() is not None
predictor = Predictor(Registry(BUNDLED_ROOT, extra_roots=()).resolve(), "onnx", 1)
print(read_number(open(sys.argv[1], "rb").read(), predictor).number)
"""


@pytest.mark.mnist
def test_the_hybrid_needs_no_pytorch(mnist: Mnist, tmp_path: Path) -> None:
    (made,) = touching(mnist, 1, (3,), seed=4)
    path = tmp_path / "n.png"
    path.write_bytes(made.data)
    done = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()
