"""Handwritten-looking digits as pen paths, for the browser tests and the golden images.

Each digit is a list of strokes; each stroke a few key points in shares of the drawing
area (0..1, y down), traced the way a hand would write them. ``trace`` turns a stroke
into the dense, slightly shaky polyline a pointer would report.
"""

from __future__ import annotations

import random

Point = tuple[float, float]

# Key points of each stroke. A point given twice makes a sharp corner.
# fmt: off
DIGITS: dict[str, list[list[Point]]] = {
    "0": [[(0.50, 0.18), (0.37, 0.23), (0.31, 0.38), (0.30, 0.57), (0.36, 0.74),
           (0.49, 0.82), (0.62, 0.76), (0.69, 0.59), (0.69, 0.39), (0.63, 0.24),
           (0.53, 0.18), (0.45, 0.21)]],
    "1": [[(0.55, 0.20), (0.53, 0.40), (0.50, 0.60), (0.48, 0.80)]],
    "2": [[(0.30, 0.33), (0.37, 0.23), (0.51, 0.18), (0.64, 0.23), (0.68, 0.35),
           (0.60, 0.50), (0.45, 0.64), (0.30, 0.79), (0.30, 0.79), (0.50, 0.78),
           (0.72, 0.78)]],
    "3": [[(0.32, 0.26), (0.45, 0.19), (0.60, 0.21), (0.66, 0.31), (0.59, 0.43),
           (0.46, 0.48), (0.46, 0.48), (0.61, 0.53), (0.68, 0.65), (0.61, 0.78),
           (0.45, 0.82), (0.31, 0.76)]],
    "4": [[(0.47, 0.18), (0.38, 0.38), (0.28, 0.58), (0.28, 0.58), (0.50, 0.58),
           (0.73, 0.57)],
          [(0.63, 0.22), (0.62, 0.50), (0.60, 0.82)]],
    "5": [[(0.37, 0.20), (0.35, 0.34), (0.33, 0.48), (0.33, 0.48), (0.46, 0.44),
           (0.61, 0.47), (0.68, 0.60), (0.64, 0.74), (0.51, 0.82), (0.34, 0.78)],
          [(0.37, 0.20), (0.52, 0.20), (0.68, 0.19)]],
    "6": [[(0.63, 0.18), (0.49, 0.25), (0.38, 0.40), (0.32, 0.58), (0.35, 0.74),
           (0.49, 0.82), (0.63, 0.77), (0.67, 0.64), (0.60, 0.53), (0.47, 0.50),
           (0.37, 0.55), (0.32, 0.63)]],
    "7": [[(0.27, 0.25), (0.50, 0.23), (0.72, 0.22), (0.72, 0.22), (0.62, 0.42),
           (0.53, 0.61), (0.46, 0.81)]],
    "8": [[(0.63, 0.26), (0.52, 0.18), (0.38, 0.21), (0.35, 0.33), (0.50, 0.47),
           (0.65, 0.60), (0.66, 0.74), (0.52, 0.82), (0.37, 0.77), (0.35, 0.64),
           (0.50, 0.48), (0.63, 0.37), (0.63, 0.26)]],
    "9": [[(0.66, 0.27), (0.55, 0.18), (0.40, 0.20), (0.33, 0.32), (0.39, 0.45),
           (0.53, 0.47), (0.65, 0.38), (0.67, 0.28), (0.67, 0.28), (0.65, 0.55),
           (0.61, 0.82)]],
}
# fmt: on

# A "7" written as a "1" first, then its top bar: two strokes, for undo.
SEVEN_IN_TWO = [DIGITS["1"][0], [(0.30, 0.23), (0.45, 0.21), (0.56, 0.20)]]


def placed(
    strokes: list[list[Point]], height: float, corner: Point | None = None
) -> list[list[Point]]:
    """The digit scaled so that its key points span ``height`` of the area, top to bottom,
    with the top left of their box at ``corner`` (centred in the area when ``None``)."""
    xs = [x for stroke in strokes for x, _ in stroke]
    ys = [y for stroke in strokes for _, y in stroke]
    scale = height / (max(ys) - min(ys))
    width = (max(xs) - min(xs)) * scale
    left, top = corner if corner is not None else ((1 - width) / 2, (1 - height) / 2)
    return [
        [(left + (x - min(xs)) * scale, top + (y - min(ys)) * scale) for x, y in stroke]
        for stroke in strokes
    ]


def trace(stroke: list[Point], steps: int = 6, shake: float = 0.003, seed: int = 0) -> list[Point]:
    """A Catmull-Rom curve through the key points, ``steps`` samples per segment."""
    rng = random.Random(seed)
    padded = [stroke[0], *stroke, stroke[-1]]
    out: list[Point] = [stroke[0]]
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        for step in range(1, steps + 1):
            t = step / steps
            x, y = (_catmull(p0[k], p1[k], p2[k], p3[k], t) for k in (0, 1))
            out.append((x + rng.uniform(-shake, shake), y + rng.uniform(-shake, shake)))
    return out


def _catmull(a: float, b: float, c: float, d: float, t: float) -> float:
    return 0.5 * (
        2 * b
        + (c - a) * t
        + (2 * a - 5 * b + 4 * c - d) * t * t
        + (3 * b - a - 3 * c + d) * t * t * t
    )


def traced(strokes: list[list[Point]], seed: int = 0) -> list[list[Point]]:
    return [trace(stroke, seed=seed + i) for i, stroke in enumerate(strokes)]
