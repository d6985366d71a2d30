"""How well a number was read, against a generated number's truth; one place for
`digitrec evaluate --suite numbers` and ``benchmarks/bench_numbers.py``.

Whole-number accuracy: the number read, complete, equals the truth. Per-digit accuracy:
each true digit's box is matched to the read piece overlapping it most (intersection
over union at least ``MATCH_IOU``); it is right when that piece reads the digit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from digitrec.numbers.reader import READ, NumberReading, read_number
from digitrec.numbers.synth import Box, SynthNumber
from digitrec.predict import Predictor

MATCH_IOU = 0.5  # a read piece stands for a true digit when their boxes overlap this much
LENGTHS = (2, 3, 4, 5, 6)
SPACINGS = ("clear", "touching")
VARIANTS = ("canvas", "photo")
TARGETS = {  # whole-number accuracy issue #13 asks for, per spacing and variant
    ("clear", "canvas"): 0.98,
    ("touching", "canvas"): 0.92,
    ("clear", "photo"): 0.96,
}


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    inter = max(0, w) * max(0, h)
    return inter / (aw * ah + bw * bh - inter) if inter else 0.0


def digits_right(truth: SynthNumber, reading: NumberReading) -> int:
    right = 0
    for box, label in zip(truth.boxes, truth.text, strict=True):
        overlaps = [(iou(box, d.box), d) for d in reading.digits]
        best = max(overlaps, key=lambda o: o[0], default=(0.0, None))
        piece = best[1]
        if best[0] >= MATCH_IOU and piece is not None:
            right += piece.verdict in READ and str(piece.digit) == label
    return right


def accuracy(
    predictor: Predictor,
    numbers: list[SynthNumber],
    read: Callable[..., NumberReading] = read_number,
) -> dict[str, Any]:
    """Whole-number and per-digit accuracy of ``read`` on ``numbers``, and its time."""
    whole = digits = total = 0
    started = time.perf_counter()
    for n in numbers:
        reading = read(n.data, predictor)
        whole += reading.complete and reading.number == n.text
        digits += digits_right(n, reading)
        total += len(n.text)
    return {
        "numbers": len(numbers),
        "whole": round(whole / len(numbers), 4),
        "per_digit": round(digits / total, 4),
        "ms_per_number": round((time.perf_counter() - started) / len(numbers) * 1000, 2),
    }
