"""POST /api/v1/number: a whole number through the API, as /api/v1/predict takes images
(multipart, raw body, JSON base64); its errors; its OpenAPI entry."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitrec.data import Mnist
from digitrec.numbers.reader import read_number_components
from digitrec.numbers.synth import number_set
from digitrec.predict import Predictor
from digitrec.preprocess import WORK_SIDE
from tests.conftest import encode, run_cli

NUMBER = "/api/v1/number"


def _check(answer: dict[str, Any], text: str, size: tuple[int, int]) -> None:
    assert answer["number"] == text and answer["complete"] is True
    assert [d["digit"] for d in answer["digits"]] == [int(c) for c in text]
    lefts = [d["box"][0] for d in answer["digits"]]
    assert lefts == sorted(lefts)  # left to right
    for d in answer["digits"]:
        x, y, w, h = d["box"]
        assert x >= 0 and y >= 0 and x + w <= size[0] and y + h <= size[1]
        assert d["verdict"] == "digit" and len(d["top"]) == 3
    assert 0 < answer["confidence"] <= 1
    assert answer["model"]["version"] and answer["processing_ms"] > 0


@pytest.mark.mnist
def test_a_number_in_every_input_form(client: TestClient, mnist: Mnist) -> None:
    (made,) = number_set(mnist, 1, lengths=(4,), seed=5)
    size = Image.open(io.BytesIO(made.data)).size
    forms = [
        {"files": {"image": ("n.png", made.data, "image/png")}},
        {"content": made.data, "headers": {"content-type": "image/png"}},
        {"json": {"image": base64.b64encode(made.data).decode()}},
    ]
    for form in forms:
        response = client.post(NUMBER, **form)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        _check(response.json(), made.text, size)
    five = client.post(
        f"{NUMBER}?top_k=5", content=made.data, headers={"content-type": "image/png"}
    )
    assert all(len(d["top"]) == 5 for d in five.json()["digits"])


def test_bad_numbers_get_clear_errors(client: TestClient) -> None:
    png = {"content-type": "image/png"}
    blank = encode(Image.new("RGBA", (300, 100), (0, 0, 0, 0)))
    assert client.post(NUMBER, content=blank, headers=png).json()["error"]["code"] == "blank_image"
    dots = np.full((200, 400), 255, np.uint8)
    for y in range(10, 190, 12):
        for x in range(10, 390, 12):
            dots[y : y + 5, x : x + 5] = 0  # 480 separate marks: no number has that many
    noisy = encode(Image.fromarray(dots))
    response = client.post(NUMBER, content=noisy, headers=png)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_components"
    big_blank = encode(Image.new("L", (1500, 1000), 255))  # read in the sandbox: still blank
    response = client.post(NUMBER, content=big_blank, headers=png)
    assert response.json()["error"]["code"] == "blank_image"
    text = client.post(NUMBER, content=b"hello", headers={"content-type": "text/plain"})
    assert text.status_code == 415


@pytest.mark.mnist
def test_a_big_photo_is_read_in_the_sandbox_with_boxes_in_its_pixels(
    client: TestClient, mnist: Mnist
) -> None:
    """Over a megapixel, the image is decoded in the sandbox (under its CPU and memory
    budget) and reduced; the boxes still come in the uploaded file's pixels."""
    (made,) = number_set(mnist, 1, lengths=(4,), variant="photo", seed=2)
    small = Image.open(io.BytesIO(made.data))
    scale = 5
    big = small.resize((small.width * scale, small.height * scale), Image.Resampling.NEAREST)
    assert big.width * big.height > 1024 * 1024
    png = {"content-type": "image/png"}
    near = client.post(NUMBER, content=made.data, headers=png).json()
    far = client.post(NUMBER, content=encode(big), headers=png)
    assert far.status_code == 200, far.text
    answer = far.json()
    assert answer["number"] == near["number"] == made.text
    # Both are found at the working size (WORK_SIDE pixels): a pixel there is this many
    # in the big file, and the small image's own rounding is multiplied by ``scale``.
    tolerance = 2 * big.width / WORK_SIDE + 2 * scale
    for a, b in zip(answer["digits"], near["digits"], strict=True):
        expected = [v * scale for v in b["box"]]
        assert all(abs(u - v) <= tolerance for u, v in zip(a["box"], expected, strict=True))
        x, y, w, h = a["box"]
        assert x + w <= big.width and y + h <= big.height
    sandbox = client.app.state.service.decoder.sandbox  # type: ignore[attr-defined]
    assert any(w.process is not None for w in sandbox.workers)  # it went there


@pytest.mark.mnist
def test_touching_numbers_are_read_with_the_sequence_reader(
    client: TestClient, mnist: Mnist, predictor: Predictor
) -> None:
    numbers = number_set(mnist, 12, lengths=(2, 3), spacing="touching", seed=41)
    png = {"content-type": "image/png"}
    answers = [client.post(NUMBER, content=n.data, headers=png).json() for n in numbers]
    served = [
        a["complete"] and a["number"] == n.text for a, n in zip(answers, numbers, strict=True)
    ]
    alone = [read_number_components(n.data, predictor) for n in numbers]
    a_right = [r.complete and r.number == n.text for r, n in zip(alone, numbers, strict=True)]
    assert sum(served) >= 11 and sum(served) >= sum(a_right) + 4
    for answer, n in zip(answers, numbers, strict=True):
        if answer["number"] == n.text:  # each digit its own box, left to right, top 3
            assert len(answer["digits"]) == len(n.text)
            lefts = [d["box"][0] for d in answer["digits"]]
            assert lefts == sorted(lefts) and all(len(d["top"]) == 3 for d in answer["digits"])


def test_documented_in_openapi(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    answer = paths[NUMBER]["post"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"]["$ref"].endswith("/NumberOut")
    assert "multipart/form-data" in paths[NUMBER]["post"]["requestBody"]["content"]


@pytest.mark.mnist
def test_the_cli_reads_numbers_as_the_api_does(
    client: TestClient, mnist: Mnist, tmp_path: Path
) -> None:
    (made,) = number_set(mnist, 1, lengths=(3,), seed=8)
    image = tmp_path / "number.png"
    image.write_bytes(made.data)
    blank = tmp_path / "blank.png"
    blank.write_bytes(encode(Image.new("RGBA", (200, 80), (0, 0, 0, 0))))
    done = run_cli("predict", "--number", str(image), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{image}: {made.text}   confidence")
    assert done.stdout.count("  at x=") == len(made.text)
    as_json = run_cli("predict", "--number", "--json", str(image), home=tmp_path / "home")
    answer = json.loads(as_json.stdout)
    api = client.post(NUMBER, content=made.data, headers={"content-type": "image/png"}).json()
    for key in ("number", "complete", "model"):
        assert answer[key] == api[key], key
    ignore = {"prediction_id"}  # the server logs each digit; the command line does not
    assert [{k: v for k, v in d.items() if k not in ignore} for d in answer["digits"]] == [
        {k: v for k, v in d.items() if k not in ignore} for d in api["digits"]
    ]
    failed = run_cli("predict", "--number", str(blank), str(image), home=tmp_path / "home")
    assert failed.returncode == 1 and failed.stdout.startswith(f"{image}: {made.text}")
    assert failed.stderr.strip().splitlines() == [f"{blank}: error: {_blank_message(client)}"]


def _blank_message(client: TestClient) -> str:
    blank = encode(Image.new("RGBA", (200, 80), (0, 0, 0, 0)))
    response = client.post(NUMBER, content=blank, headers={"content-type": "image/png"})
    return str(response.json()["error"]["message"])


def test_a_sandbox_reply_of_the_wrong_shape_is_refused() -> None:
    """What a number job hands back is checked before anything reads it: a worker a
    crafted file took over can give nothing but bytes of the announced shape."""
    from digitrec.preprocess import Limits
    from digitrec.sandbox import _number_job, number_image

    img = Image.new("RGBA", (3000, 600), (0, 0, 0, 0))
    body = _number_job(encode(img), Limits(), 1024)
    (width, height), reduced = number_image(body, 1024)
    assert (width, height) == (3000, 600) and reduced.size == (1024, 205)
    assert reduced.mode == "LA"
    for bad in (body[:5], body[:-1], body + b"\0", body[:4] + b"\xff" * 12 + body[16:]):
        with pytest.raises(ValueError):
            number_image(bad, 1024)
    with pytest.raises(ValueError):
        number_image(body, 512)  # bigger than the side asked for


@pytest.mark.mnist
@pytest.mark.slow
def test_evaluate_reports_numbers_by_length_spacing_and_source(tmp_path: Path) -> None:
    done = run_cli("evaluate", "--suite", "numbers", "--limit", "100", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["numbers"]
    assert report["per_cell"] == 10
    cells = {(c["spacing"], c["variant"]): c for c in report["cells"]}
    assert set(cells) == {(s, v) for s in ("clear", "touching") for v in ("canvas", "photo")}
    for cell in cells.values():
        assert sorted(cell["by_length"]) == ["2", "3", "4", "5", "6"]  # JSON keys
        assert all(v["numbers"] == 10 for v in cell["by_length"].values())
        assert 0 <= cell["whole"] <= 1 and 0 <= cell["per_digit"] <= 1
    assert cells[("clear", "canvas")]["whole"] >= 0.5  # far from chance: the suite reads
    assert cells[("clear", "canvas")]["target"] == 0.98
    text = run_cli("evaluate", "--suite", "numbers", "--limit", "100", home=tmp_path)
    assert text.stdout.splitlines()[0].startswith("whole numbers, 10 per length and cell")
    assert len(text.stdout.splitlines()) == 5
