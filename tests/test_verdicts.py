"""The shipped model says when a drawing is not one digit (issue #10's examples), and
every surface carries the verdict: the Predictor, the API and its OpenAPI schema."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from digitrec.predict import Predictor
from digitrec.rejection import VERDICTS
from tests.conftest import encode
from tests.handwriting import DIGITS, Point, traced

SIDE = 280  # the page's export side
PEN = 0.15  # pen width over the drawing's size, as the page exports drawings


def drawing(strokes: list[list[Point]], pen: float | None = None) -> bytes:
    """Strokes (shares of the pad) as the page exports them: black on transparent."""
    xs = [x for s in strokes for x, _ in s]
    ys = [y for s in strokes for _, y in s]
    size = max(max(xs) - min(xs), max(ys) - min(ys), 0.05)
    width = max(3, round((pen or PEN * size) * SIDE))
    img = Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for stroke in strokes:
        points = [(x * SIDE, y * SIDE) for x, y in stroke]
        if len(points) > 1:
            draw.line(points, fill=(0, 0, 0, 255), width=width, joint="curve")
        for x, y in (points[0], points[-1]):
            r = width / 2
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(0, 0, 0, 255))
    return encode(img)


def shifted(strokes: list[list[Point]], dx: float, scale: float = 0.5) -> list[list[Point]]:
    return [
        [(0.25 + (x - 0.5) * scale + dx, 0.5 + (y - 0.5) * scale) for x, y in s] for s in strokes
    ]


CIRCLE = [
    (0.5 + 0.3 * math.cos(t / 20 * 2 * math.pi), 0.5 + 0.3 * math.sin(t / 20 * 2 * math.pi))
    for t in range(21)
]
NOT_DIGITS = {
    "capital A": [[(0.3, 0.8), (0.5, 0.2), (0.7, 0.8)], [(0.38, 0.58), (0.62, 0.58)]],
    "smiley": [
        CIRCLE,
        [(0.4, 0.4), (0.41, 0.41)],
        [(0.6, 0.4), (0.61, 0.41)],
        [(0.35, 0.6), (0.5, 0.7), (0.65, 0.6)],
    ],
    "dot": [[(0.5, 0.5), (0.505, 0.505)]],
    "horizontal line": [[(0.2, 0.5), (0.5, 0.5), (0.8, 0.51)]],
    "star": [[(0.5, 0.15), (0.62, 0.8), (0.2, 0.4), (0.8, 0.4), (0.38, 0.8), (0.5, 0.15)]],
}


@pytest.fixture(scope="module")
def rejecting(bundled_entry) -> Predictor:  # type: ignore[no-untyped-def]
    predictor = Predictor(bundled_entry, backend="onnx", threads=1)
    if predictor.rejection.method is None:
        pytest.fail("the shipped model has no rejection thresholds")
    return predictor


@pytest.mark.parametrize("name", sorted(NOT_DIGITS))
def test_drawings_that_are_not_digits_are_flagged(rejecting: Predictor, name: str) -> None:
    answer = rejecting.predict_bytes(drawing(traced(NOT_DIGITS[name])))
    assert answer.verdict in {"not_a_digit", "unsure"}, (name, answer.verdict, answer.top)
    assert not answer.is_digit


def test_two_digits_side_by_side_are_several(rejecting: Predictor) -> None:
    strokes = shifted(traced(DIGITS["1"]), 0.0) + shifted(traced(DIGITS["2"]), 0.45)
    answer = rejecting.predict_bytes(drawing(strokes))
    assert answer.verdict == "several_digits", (answer.verdict, answer.top)


@pytest.mark.parametrize("digit", sorted(DIGITS))
def test_drawn_digits_are_digits(rejecting: Predictor, digit: str) -> None:
    answer = rejecting.predict_bytes(drawing(traced(DIGITS[digit])))
    assert answer.verdict == "digit" and answer.digit == int(digit), (answer.verdict, answer.top)


def test_the_api_answer_and_schema_carry_the_verdict(client: TestClient) -> None:
    response = client.post(
        "/api/v1/predict",
        content=drawing(traced(NOT_DIGITS["capital A"])),
        headers={"content-type": "image/png"},
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["verdict"] != "digit" and body["is_digit"] is False
    assert 0 <= body["digit"] <= 9 and len(body["top"]) == 3  # the best guess is still there
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictionOut"]
    verdict = schema["properties"]["verdict"]
    assert set(verdict["enum"]) == set(VERDICTS)
    for name, meaning in VERDICTS.items():
        assert name in verdict["description"] and meaning in verdict["description"]
    assert {"is_digit", "verdict", "digit_score"} <= set(schema["required"])
