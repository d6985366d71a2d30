"""``read_number``: a whole number in one image, read digit by digit by the served model.

The image is decoded with the upload limits (``Predictor.open``), turned into an ink map
once (``preprocess.ink_map``) and cut into pieces (``segment``). Every piece is laid out
as a single digit is (``preprocess.mnist_layout``, the model's spec) and all of them go
through the model in one batch (``Predictor.infer``). A piece the model does not read as
one digit and any piece too wide for one is then tried cut at its candidate columns:
every candidate part of every such piece goes through the model in a second batch, and
per piece the cutting whose parts read best as digits wins (dynamic programming over
the cuts; the whole piece competes too): approach A.

Approach D, the hybrid, is what is served when the sequence reader ships
(``sequence.shipped_reader``: a CRNN + CTC, ONNX Runtime). Pieces sharing columns are
first joined into chains (``segment.chain_groups``: a broken digit's parts held by two
touching neighbours). The pieces A would try cutting, and any piece at least
``ASK_WIDTH`` wide, are read by the sequence reader (one short forward pass each); a
wide piece it reads as one digit is left to the digit model. In the others, straight
cuts halfway between the places it read two digits join A's candidates, and the cutting
into as many parts as it read digits wins, each part scored by how well the digit model
reads it as the sequence reader's digit there (A's best cutting when there is no such
cutting). Then the sequence reader reads the whole strip (``_in_context``): when it
reads one digit per final piece, the parts it read take its digit and top-k from that
reading, and every other piece keeps the digit model's answer and verdict where the two
agree; when it reads another count, the strip is cut straight down halfway between its
digits and every part takes its digit (its reading of each piece stands when it reads no
digit at all). Once there are two pieces, the whole strip is read even when no piece
was: with one digit per piece, a piece the two models read differently takes the digit
their product of probabilities favours (``_second_opinion``); with fewer digits than
pieces, close neighbours are joined into as many pieces as it read where the digit model
reads them as those digits (``_merged``: a loose stroke, a lifted pen). Without a
shipped sequence reader, approach A alone. Each piece has its box and its 28x28 input.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from digitrec.config import Settings
from digitrec.errors import BlankImage, InvalidRequest
from digitrec.imagecheck import Structure
from digitrec.numbers.segment import (
    MAX_CUTS,
    MAX_DIGIT_WIDTH,
    MIN_DIGIT_WIDTH,
    Components,
    Group,
    chain_groups,
    cut_candidates,
    digit_groups,
    group_ink,
    label_ink,
    projection_groups,
)
from digitrec.numbers.sequence import (
    SequenceReader,
    SequenceReading,
    ink_columns,
    shipped_reader,
)
from digitrec.predict import Prediction, Predictor
from digitrec.preprocess import (
    MARK_LEVEL,
    Preprocessed,
    from_image,
    ink_map,
    load,
    mnist_layout,
    open_image,
)
from digitrec.rejection import DIGIT_CLASSES, digit_probabilities, softmax
from digitrec.scripts import digit_char

Box = tuple[int, int, int, int]  # x, y, width, height in the uploaded image's pixels
MAX_COMPONENTS = Settings.model_fields["number_max_components"].default
WIDE = 1.25  # pieces wider than this (digit heights) are always tried cut...
SPLIT_MIN_WIDTH = 0.35  # ...never when narrower than this...
CUT_ASPECT = 0.8  # ...else when read as several digits, or not as a digit and this squat
PIECE_COST = math.log(0.7)  # each extra piece must earn it: fewer digits win near-ties
CROSS_COST = 1.0  # log score lost per extra stroke a cut goes through (a 3 cut: 2)
SQUAT = 1.0  # a piece wider than this share of its height is less likely one digit...
SQUAT_COST = 2.0  # ...by this much (log score) per unit of width/height beyond it
ASK_WIDTH = 0.75  # pieces this wide (digit heights) are read by the sequence reader too
MERGE_GAP = 0.2  # neighbours this close (digit heights) may be joined into one digit...
MERGE_RUN = 3  # ...this many at most, when the sequence reader reads fewer digits
SURE = 0.5  # a digit the sequence reader gives at least this probability is a "digit"
# Verdicts that count as a digit read: "unsure" may be one, and its top answer is shown.
READ = ("digit", "unsure")  # each extra piece must earn it: fewer digits win near-ties


@dataclass(frozen=True)
class NumberDigit:
    """One piece of the number, as read."""

    box: Box  # where it is in the uploaded image
    digit: int  # the most likely digit (meaningful when verdict is "digit")
    confidence: float  # its probability
    verdict: str  # digit | not_a_digit | several_digits | unsure (rejection.VERDICTS)
    top: list[tuple[int, float]]  # (digit, probability), most likely first
    image: np.ndarray  # the 28x28 uint8 input the model saw
    script: str = "latin"  # the writing system it was read in (multiscript.read_number)

    def to_dict(self) -> dict[str, Any]:
        """As the API answers it (``NumberDigitOut``): box as [x, y, width, height]."""
        return {
            "box": list(self.box),
            "digit": self.digit,
            "character": digit_char(self.script, self.digit),
            "confidence": self.confidence,
            "verdict": self.verdict,
            "top": [
                {"digit": d, "probability": p, "character": digit_char(self.script, d)}
                for d, p in self.top
            ],
            "prediction_id": None,  # the service's id of this digit's answer, if it logs it
        }


@dataclass(frozen=True)
class NumberReading:
    """What ``read_number`` read: the pieces left to right and the number they make."""

    digits: tuple[NumberDigit, ...]  # every piece, left to right, digits or not
    number: str  # the pieces whose verdict is "digit", in order
    complete: bool  # every piece is a digit: ``number`` is the whole number
    confidence: float  # product of the pieces' confidences
    model_name: str
    model_version: str
    processing_ms: float
    script: str = "latin"  # one script for the whole number (multiscript.read_number)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "script": self.script,
            "characters": "".join(digit_char(self.script, int(v)) for v in self.number),
            "complete": self.complete,
            "confidence": self.confidence,
            "digits": [d.to_dict() for d in self.digits],
            "model": {"name": self.model_name, "version": self.model_version},
            "prediction_id": None,  # each digit has its own, where the service logs them
            "processing_ms": self.processing_ms,
        }


Segmenter = Callable[[Components], list[Group]]


def read_number(
    image: bytes | Image.Image,
    predictor: Predictor,
    *,
    top_k: int = 3,
    max_components: int = MAX_COMPONENTS,
    checked: Structure | None = None,
    cut: bool = True,
) -> NumberReading:
    """Read the whole number written in ``image``, left to right.

    ``image``: the uploaded file's bytes (decoded here under ``predictor.limits``), or
    an image already opened with ``Predictor.open`` (boxes are then in its pixels,
    which a big JPEG's reduced decoding may have made smaller than the file's).
    ``top_k``: answers per piece (1-10). ``max_components``: marks allowed before the
    image is refused (``Settings.number_max_components``). ``checked``: the bytes'
    structure walk (``preprocess.check_structure``), when the caller has done it.
    ``cut``: False for the digits of another script than Latin, which the digit model
    and the sequence reader do not know: broken pieces are joined, but no piece is cut
    (their cuts would split a Tamil or Thai digit into Latin-looking parts).

    Returns a ``NumberReading``: ``digits``, one ``NumberDigit`` per piece, left to
    right (box ``(x, y, width, height)`` in the uploaded image's pixels, digit,
    confidence, verdict, top-k, the 28x28 input); ``number``, the digits read (verdict
    "digit" or "unsure"); ``complete``, False when a piece is not read as a digit (its
    verdict, not_a_digit or several_digits, stands in its place in ``digits``);
    ``confidence``, the product of the pieces'. At most three batched forward passes
    of the digit model (the pieces, their candidate parts, joined neighbours) and, of
    the shipped sequence reader (``sequence.shipped_reader``, loaded on first use;
    without it, approach A alone: ``read_number_components``), one per piece that may
    hold touching digits and one for the whole strip.

    Raises the upload errors of ``Predictor.open`` (``DigitrecError`` subclasses),
    ``BlankImage`` (422 blank_image) when there is no ink, ``TooManyComponents`` (422
    too_many_components) over ``max_components`` marks, counted before any piece is
    prepared or read, and ``InvalidRequest`` for a bad ``top_k``.
    """
    if not cut:
        return _read(image, predictor, digit_groups, False, top_k, max_components, checked)
    sequence = shipped_reader()
    segmenter = digit_groups if sequence is None else chain_groups
    return _read(image, predictor, segmenter, True, top_k, max_components, checked, sequence)


def read_number_components(
    image: bytes | Image.Image,
    predictor: Predictor,
    *,
    top_k: int = 3,
    max_components: int = MAX_COMPONENTS,
) -> NumberReading:
    """Approach A alone (benchmark, and what ``read_number`` does when no sequence
    reader ships): touching digits cut where the digit model reads the parts best."""
    return _read(image, predictor, digit_groups, True, top_k, max_components)


def read_number_projection(
    image: bytes | Image.Image,
    predictor: Predictor,
    *,
    top_k: int = 3,
    max_components: int = MAX_COMPONENTS,
) -> NumberReading:
    """The naive baseline (benchmark only): one piece per run of inked columns, no
    joining of broken digits, no cutting of touching ones. Same answer type."""
    return _read(image, predictor, projection_groups, False, top_k, max_components)


@dataclass(frozen=True)
class _Piece:
    group: Group  # the component group it comes from
    left: int  # its columns within the group's box
    right: int
    top: int  # its rows in the ink map
    bottom: int
    pre: Preprocessed


def _read(
    image: bytes | Image.Image,
    predictor: Predictor,
    segmenter: Segmenter,
    cut: bool,
    top_k: int,
    max_components: int,
    checked: Structure | None = None,
    sequence: SequenceReader | None = None,
) -> NumberReading:
    started = time.perf_counter()
    if not 1 <= top_k <= DIGIT_CLASSES:  # as Predictor.answer, before any work
        raise InvalidRequest(
            f"top_k must be between 1 and {DIGIT_CLASSES}", code="validation_error"
        )
    if isinstance(image, bytes):
        img, (width, height) = _open(image, predictor, checked)
    else:
        img, (width, height) = image, image.size
    comps = label_ink(ink_map(img), max_components)
    pieces = [p for g in segmenter(comps) if (p := _piece(g, group_ink(comps, g), predictor))]
    if not pieces:
        raise BlankImage("the image looks blank: no mark is big enough to read")
    logits = predictor.infer(np.stack([p.pre.tensor for p in pieces]))
    read: list[np.ndarray | None] = [None] * len(pieces)
    if cut:
        pieces, logits, read = _cut_touching(comps, pieces, logits, predictor, sequence)
        pieces, logits, read = _in_context(sequence, comps, pieces, logits, read, predictor)
    scale = (width / comps.ink.shape[1], height / comps.ink.shape[0])
    digits = tuple(
        _number_digit(_box(p, scale), p, predictor.answer(p.pre, row, top_k, started))
        if probs is None
        else _sequence_digit(_box(p, scale), p, probs, top_k)
        for p, row, probs in zip(pieces, logits, read, strict=True)
    )
    return NumberReading(
        digits=digits,
        number="".join(str(d.digit) for d in digits if d.verdict in READ),
        complete=all(d.verdict in READ for d in digits),
        confidence=round(math.prod(d.confidence for d in digits), 6),
        model_name=predictor.name,
        model_version=predictor.version,
        processing_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def _in_context(
    sequence: SequenceReader | None,
    comps: Components,
    pieces: list[_Piece],
    logits: np.ndarray,
    read: list[np.ndarray | None],
    predictor: Predictor,
) -> tuple[list[_Piece], np.ndarray, list[np.ndarray | None]]:
    """The sequence reader reads the whole strip once there are two pieces or it read
    one. When that gives one digit per final piece, its digits (read with their
    neighbours in view) replace its readings of pieces it read, and the pieces only the
    digit model read, as a digit or unsure, take the digit the two models agree on most
    (``_second_opinion``). When it gives another count and it had read pieces, the
    strip is cut straight down halfway between its digits and each part takes its digit
    (``_strip_pieces``; the digit model's logits of those parts are never read, zeros
    stand in for them)."""
    asked = any(r is not None for r in read)
    if sequence is None or not (asked or len(pieces) >= 2):
        return pieces, logits, read
    (whole,) = sequence.read_inks([comps.ink])
    if not asked and 0 < len(whole.text) < len(pieces):
        pieces, logits, read = _merged(comps, pieces, logits, read, whole.text, predictor)
    if len(whole.text) == len(read):
        verdicts = predictor.rejection.verdicts(logits)
        shares = digit_probabilities(logits, predictor.rejection.temperature)
        mixed = [
            w if r is not None else _second_opinion(own, w) if v in READ else None
            for w, r, own, v in zip(whole.digit_probs, read, shares, verdicts, strict=True)
        ]
        return pieces, logits, mixed
    if not asked:
        return pieces, logits, read
    parts = _strip_pieces(comps, whole, predictor)
    if not whole.text or len(parts) != len(whole.text):
        return pieces, logits, read
    return parts, np.zeros((len(parts), logits.shape[1]), logits.dtype), list(whole.digit_probs)


def _merged(
    comps: Components,
    pieces: list[_Piece],
    logits: np.ndarray,
    read: list[np.ndarray | None],
    text: str,
    predictor: Predictor,
) -> tuple[list[_Piece], np.ndarray, list[np.ndarray | None]]:
    """Fewer pieces, as many as the sequence reader read digits (``text``) when that
    can be done: neighbouring whole pieces at most ``MERGE_GAP`` apart (a stroke lifted
    off a 9's loop, a tail that came loose) are joined, up to ``MERGE_RUN`` of them and
    no wider than a digit, and a joined piece competes only when the digit model reads
    it as a digit (two digits joined do not). The digit model reads the joined pieces in
    one more batch; the pieces as they are when no cutting into that many reads better
    (``_best_cutting``, each part scored by how well it reads as ``text``'s digit
    there)."""
    n = len(pieces)
    unchanged = pieces, logits, read
    if len({p.group for p in pieces}) < n:  # a group was cut: the pieces are not whole
        return unchanged
    height = comps.digit_height
    extra: list[_Piece] = []
    starts: list[tuple[int, int]] = []
    for a in range(n):
        group = pieces[a].group
        for b in range(a + 1, min(n, a + MERGE_RUN)):
            following = pieces[b].group
            if following.left - group.right > MERGE_GAP * height:
                break
            group = group.join(following)
            if group.width > MAX_DIGIT_WIDTH * height:
                break
            part = _piece(group, group_ink(comps, group), predictor)
            if part is not None:
                starts.append((a, b + 1))
                extra.append(part)
    if not extra:
        return unchanged
    joined = predictor.infer(np.stack([p.pre.tensor for p in extra]))
    verdicts = predictor.rejection.verdicts(joined)
    spans = {(i, i + 1): i for i in range(n)}
    spans.update({span: n + k for k, span in enumerate(starts) if verdicts[k] == "digit"})
    if len(spans) == n:
        return unchanged
    every, scored = pieces + extra, np.concatenate([logits, joined])
    digit_scores = _digit_log_scores(scored)
    score = _reads_as(text, digit_scores, digit_scores.max(axis=1))
    parts = _best_cutting(np.zeros(n + 1, np.int64), spans, score, len(text))
    if len(parts) != len(text):
        return unchanged
    return [every[k] for k in parts], scored[parts], [None] * len(parts)


def _second_opinion(own: np.ndarray, seen: np.ndarray) -> np.ndarray | None:
    """A piece's digit from both models: the digit model's ten digit shares (``own``)
    times the sequence reader's (``seen``, read with the neighbours in view),
    normalised. None (the digit model's answer stands, with its verdict) when that
    agrees with the digit model's top digit; else the joint shares."""
    joint = own * seen
    if joint.sum() <= 0 or int(joint.argmax()) == int(own.argmax()):
        return None
    return np.asarray(joint / joint.sum())


def _strip_pieces(comps: Components, whole: SequenceReading, predictor: Predictor) -> list[_Piece]:
    """The ink cut straight down halfway between the places the sequence reader read
    two digits: one piece per digit (fewer when a part holds no ink)."""
    ink = comps.ink
    rows, width = ink.shape
    page = Group(frozenset(), 0, rows, 0, width)
    at = ink_columns(ink, whole.positions)
    cuts = [0, *np.rint((at[1:] + at[:-1]) / 2).astype(int).clip(0, width).tolist(), width]
    columns = np.arange(width)[None, :]
    parts = []
    for a, b in itertools.pairwise(cuts):
        part = _piece(page, np.where((columns >= a) & (columns < b), ink, 0), predictor)
        if part is not None:
            parts.append(part)
    return parts


def _number_digit(box: Box, piece: _Piece, answer: Prediction) -> NumberDigit:
    """A piece as the digit model read it."""
    return NumberDigit(
        box, answer.digit, answer.confidence, answer.verdict, answer.top, piece.pre.image
    )


def _sequence_digit(box: Box, piece: _Piece, probs: np.ndarray, top_k: int) -> NumberDigit:
    """A piece as the sequence reader read it: its digit and top-k there ("unsure"
    under ``SURE``); the 28x28 input the digit model would see."""
    order = np.argsort(-probs, kind="stable")[:top_k]
    top = [(int(d), round(float(probs[d]), 6)) for d in order]
    verdict = "digit" if top[0][1] >= SURE else "unsure"
    return NumberDigit(box, top[0][0], top[0][1], verdict, top, piece.pre.image)


def _open(
    raw: bytes, predictor: Predictor, checked: Structure | None
) -> tuple[Image.Image, tuple[int, int]]:
    """``Predictor.open``'s two steps, keeping the size the file declares: big JPEGs are
    decoded at a reduced scale, and boxes are given in the uploaded image's pixels."""
    img = open_image(raw, predictor.limits, checked)
    width, height = img.size
    load(img)
    if (img.width > img.height) != (width > height):  # turned by its EXIF orientation
        width, height = height, width
    return img, (width, height)


def _piece(group: Group, ink: np.ndarray, predictor: Predictor) -> _Piece | None:
    """Ink in a group's box (``group_ink``, or part of it) laid out as the model's
    input; None when it holds too little."""
    marked = ink > MARK_LEVEL
    rows, cols = np.flatnonzero(marked.any(1)), np.flatnonzero(marked.any(0))
    if rows.size == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    try:
        layout = mnist_layout(ink[top:bottom, left:right], predictor.spec)
    except BlankImage:
        return None
    # Quantised like MNIST's uint8 pixels, as ``preprocess.prepare`` does for one digit.
    pre = from_image(np.rint(layout * 255).astype(np.uint8), predictor.spec)
    return _Piece(group, left, right, group.top + top, group.top + bottom, pre)


def _box(piece: _Piece, scale: tuple[float, float]) -> Box:
    """The piece's box in the uploaded image's pixels."""
    sx, sy = scale
    x0 = piece.group.left + piece.left
    x1 = piece.group.left + piece.right
    x, y = math.floor(x0 * sx), math.floor(piece.top * sy)
    return x, y, math.ceil(x1 * sx) - x, math.ceil(piece.bottom * sy) - y


def _digit_log_scores(logits: np.ndarray) -> np.ndarray:
    """How well each input reads as each digit: log of that digit's share of all outputs
    (with the model's not_a_digit and several_digits, when it has them). The row's
    maximum is how well it reads as one digit at all."""
    return np.log(softmax(logits)[:, :DIGIT_CLASSES] + 1e-12)


Plan = tuple[np.ndarray, dict[tuple[int, int], int]]  # cut crossings, span -> part index


def _cut_touching(
    comps: Components,
    pieces: list[_Piece],
    logits: np.ndarray,
    predictor: Predictor,
    sequence: SequenceReader | None,
) -> tuple[list[_Piece], np.ndarray, list[np.ndarray | None]]:
    """Try cutting the pieces that may hold touching digits; one more batch at most, and
    ``sequence`` reading each of them. Returns the final pieces, their logits and, for
    each piece the sequence reader read, its digit probabilities there (None: the digit
    model's)."""
    height = comps.digit_height
    verdicts = predictor.rejection.verdicts(logits)
    worth = [_worth_cutting(p, verdicts[i], height) for i, p in enumerate(pieces)]
    ask = [sequence is not None and _worth_asking(p, height) for p in pieces]
    inks = {i: group_ink(comps, p.group) for i, p in enumerate(pieces) if worth[i] or ask[i]}
    readings = _sequence_readings(sequence, inks)
    plans: dict[int, Plan] = {}
    extra: list[_Piece] = []
    for i, ink in inks.items():
        reading = readings.get(i)
        if not worth[i] and (reading is None or len(reading.text) < 2):
            continue  # one digit, as the digit model read it
        between = _between_digits(ink, reading)
        plan = _candidate_parts(comps, pieces[i], ink, predictor, len(pieces), extra, between)
        if plan[1]:
            plans[i] = plan
    if not extra:
        return pieces, logits, [None] * len(pieces)
    every = pieces + extra
    logits = np.concatenate([logits, predictor.infer(np.stack([p.pre.tensor for p in extra]))])
    squat = SQUAT_COST * np.maximum(
        0.0, np.array([(p.right - p.left) / (p.bottom - p.top) for p in every]) - SQUAT
    )
    digit_scores = _digit_log_scores(logits) - squat[:, None]
    scores = digit_scores.max(axis=1)
    chosen: list[int] = []
    read: list[np.ndarray | None] = []
    for i in range(len(pieces)):
        if i not in plans:
            chosen.append(i)
            read.append(None)
            continue
        crossings, spans = plans[i]
        spans[(0, len(crossings) - 1)] = i  # the whole piece competes
        reading = readings.get(i)
        if reading is None:
            parts = _best_cutting(crossings, spans, lambda k, n: float(scores[k]))
            read.extend([None] * len(parts))
        else:
            score = _reads_as(reading.text, digit_scores, scores)
            parts = _best_cutting(crossings, spans, score, len(reading.text))
            same = len(parts) == len(reading.text)
            read.extend(reading.digit_probs if same else [None] * len(parts))
        chosen.extend(parts)
    return [every[k] for k in chosen], logits[chosen], read


def _candidate_parts(
    comps: Components,
    piece: _Piece,
    ink: np.ndarray,
    predictor: Predictor,
    offset: int,
    extra: list[_Piece],
    between: list[int],
) -> Plan:
    """The piece's candidate cuts (``cut_candidates``, and straight down at each column
    of ``between``) with how many strokes each crosses, and every part between two of
    them narrow enough for a digit, appended to ``extra``; a part's index is its place in
    ``extra`` plus ``offset``."""
    height = comps.digit_height
    rows, width = ink.shape
    straight = [np.full(rows, x, np.int64) for x in between]
    paths = sorted([*cut_candidates(ink, height), *straight], key=lambda p: float(p.mean()))
    bounds = [np.zeros(rows, np.int64), *paths, np.full(rows, width, np.int64)]
    columns = np.arange(width)[None, :]
    spans: dict[tuple[int, int], int] = {}
    for a in range(len(bounds)):
        for b in range(a + 1, len(bounds)):
            span = float((bounds[b] - bounds[a]).mean())
            whole = (a, b) == (0, len(bounds) - 1)
            if whole or not MIN_DIGIT_WIDTH * height <= span <= MAX_DIGIT_WIDTH * height:
                continue
            inside = (columns >= bounds[a][:, None]) & (columns < bounds[b][:, None])
            part = _piece(piece.group, np.where(inside, ink, 0), predictor)
            if part is not None:
                spans[(a, b)] = offset + len(extra)
                extra.append(part)
    return _crossings(ink, bounds), spans


def _worth_cutting(piece: _Piece, verdict: str, height: float) -> bool:
    """May the piece hold touching digits? Too wide for one, or read as several, or
    not read as a digit while squat enough for two (a tall, narrow mark that is not a
    digit is a letter or a symbol: its slivers would only read as 1s)."""
    w = piece.right - piece.left
    if w < SPLIT_MIN_WIDTH * height:
        return False
    if w > WIDE * height or verdict == "several_digits":
        return True
    return verdict != "digit" and w >= CUT_ASPECT * (piece.bottom - piece.top)


def _crossings(ink: np.ndarray, bounds: list[np.ndarray]) -> np.ndarray:
    """How many strokes each cut path goes through (runs of ink along it); 0 at the
    piece's ends."""
    out = np.zeros(len(bounds), np.int64)
    rows = np.arange(ink.shape[0])
    for k, path in enumerate(bounds[1:-1], start=1):
        along = (ink[rows, path] > MARK_LEVEL).astype(np.int8)
        out[k] = np.count_nonzero(np.diff(np.concatenate(([0], along, [0]))) == 1)
    return out


def _worth_asking(piece: _Piece, height: float) -> bool:
    """Wide enough that it may be two touching digits the digit model read as one."""
    return piece.right - piece.left >= ASK_WIDTH * height


def _between_digits(ink: np.ndarray, reading: SequenceReading | None) -> list[int]:
    """Columns halfway between the places the sequence reader read two digits, inside
    the piece (none without a reading of several digits; none past ``MAX_CUTS`` digits,
    which bounds the parts the digit model reads as A's own cuts do)."""
    if reading is None or not 2 <= len(reading.text) <= MAX_CUTS + 1:
        return []
    at = ink_columns(ink, reading.positions)
    middles = np.rint((at[1:] + at[:-1]) / 2).astype(int)
    return [int(x) for x in middles if 0 < x < ink.shape[1]]


def _sequence_readings(
    sequence: SequenceReader | None, inks: dict[int, np.ndarray]
) -> dict[int, SequenceReading]:
    """What the sequence reader reads in each piece's ink (none where it reads no digit,
    or without a sequence reader)."""
    if sequence is None or not inks:
        return {}
    readings = sequence.read_inks(list(inks.values()))
    return {i: r for i, r in zip(inks, readings, strict=True) if r.text}


Score = Callable[[int, int], float]  # (candidate part, its place in the cutting) -> score


def _reads_as(text: str, digit_scores: np.ndarray, scores: np.ndarray) -> Score:
    """The n-th part scored by how well the digit model reads it as ``text[n]``, the
    sequence reader's n-th digit."""

    def score(k: int, n: int) -> float:
        return float(digit_scores[k, int(text[n])]) if n < len(text) else float(scores[k])

    return score


def _best_cutting(
    crossings: np.ndarray,
    spans: dict[tuple[int, int], int],
    score: Score,
    parts: int | None = None,
) -> list[int]:
    """The spans from the first bound to the last whose summed scores (``score(k, n)``
    of span ``k`` as the n-th part, plus ``PIECE_COST`` per piece, ``CROSS_COST`` per
    stroke cut beyond the one where neighbours touch) are highest: indices of spans,
    left to right. With ``parts``, the best of the cuttings into that many spans, when
    there is one."""
    n_bounds = len(crossings)
    # best[b][n]: the best (total, spans) from bound 0 to bound b in n spans
    best: list[dict[int, tuple[float, list[int]]]] = [{} for _ in range(n_bounds)]
    best[0][0] = (0.0, [])
    for b in range(1, n_bounds):
        for a in range(b):
            k = spans.get((a, b))
            if k is None:
                continue
            cut = CROSS_COST * max(0, int(crossings[a]) - 1) if a else 0.0
            for n, (total, path) in best[a].items():
                gain = score(k, n) + PIECE_COST - cut
                if n + 1 not in best[b] or total + gain > best[b][n + 1][0]:
                    best[b][n + 1] = (total + gain, [*path, k])
    ends = best[-1]
    if parts in ends:
        return ends[parts][1]
    if ends:
        return max(ends.values(), key=lambda e: e[0])[1]
    return [spans[(0, n_bounds - 1)]]
