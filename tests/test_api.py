"""The REST API through the app factory with the real shipped model: every input route,
every documented error, golden images."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitrec.api import create_app
from digitrec.api.decoding import preprocess_threads
from digitrec.config import Settings
from digitrec.predict import Predictor
from tests.conftest import encode, mnist_png, stroke_image
from tests.test_preprocess import png_header_only

GOLDEN = Path(__file__).parent / "golden"
PREDICT = "/api/v1/predict"


def assert_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]


def check_prediction(body: dict, top_k: int = 3) -> None:
    assert 0 <= body["digit"] <= 9
    assert body["top"][0]["digit"] == body["digit"]
    assert len(body["top"]) == top_k
    probs = [t["probability"] for t in body["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    assert body["confidence"] == probs[0]
    assert set(body["model"]) == {"name", "version"}
    assert body["processing_ms"] >= 0


# --- input routes -------------------------------------------------------------------------------


@pytest.mark.mnist
def test_multipart_upload(client: TestClient, mnist) -> None:  # type: ignore[no-untyped-def]
    response = client.post(PREDICT, files={"image": ("d.png", mnist_png(mnist, 0), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    check_prediction(body)
    assert body["digit"] == mnist.test_labels[0]
    assert "input_image" not in body


@pytest.mark.mnist
def test_raw_body(client: TestClient, mnist) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        PREDICT, content=mnist_png(mnist, 1, scale=10), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    assert response.json()["digit"] == mnist.test_labels[1]


@pytest.mark.mnist
@pytest.mark.parametrize("as_data_url", [False, True])
def test_json_base64_and_data_url(client: TestClient, mnist, as_data_url: bool) -> None:  # type: ignore[no-untyped-def]
    b64 = base64.b64encode(mnist_png(mnist, 2, invert=True)).decode()
    image = f"data:image/png;base64,{b64}" if as_data_url else b64
    response = client.post(PREDICT, json={"image": image, "top_k": 5})
    assert response.status_code == 200
    body = response.json()
    check_prediction(body, top_k=5)
    assert body["digit"] == mnist.test_labels[2]


@pytest.mark.mnist
def test_include_input_returns_the_28x28_png(client: TestClient, mnist) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        f"{PREDICT}?include_input=true&top_k=1",
        content=mnist_png(mnist, 3),
        headers={"content-type": "image/png"},
    )
    body = response.json()
    check_prediction(body, top_k=1)
    prefix = "data:image/png;base64,"
    assert body["input_image"].startswith(prefix)
    seen = Image.open(io.BytesIO(base64.b64decode(body["input_image"][len(prefix) :])))
    assert seen.size == (28, 28) and seen.mode == "L"


def test_query_top_k_wins_over_json(client: TestClient) -> None:
    b64 = base64.b64encode(encode(Image.fromarray(stroke_image()))).decode()
    response = client.post(f"{PREDICT}?top_k=2", json={"image": b64, "top_k": 7})
    assert len(response.json()["top"]) == 2


# --- golden images ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, digit",
    [
        ("canvas_transparent_7.png", 7),
        ("photo_paper_3.jpg", 3),
        ("canvas_dark_2.png", 2),
    ],
)
def test_golden_images(client: TestClient, name: str, digit: int) -> None:
    raw = (GOLDEN / name).read_bytes()
    kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
    response = client.post(PREDICT, content=raw, headers={"content-type": kind})
    assert response.status_code == 200, response.text
    assert response.json()["digit"] == digit


# --- documented errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_image"),
        ({"content": b""}, 400, "empty_body"),
        (
            {"content": b"just text", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            {"content": b"just text", "headers": {"content-type": "image/png"}},
            415,
            "unsupported_media_type",
        ),
        (
            {
                "content": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                "headers": {"content-type": "image/svg+xml"},
            },
            415,
            "unsupported_media_type",
        ),
        ({"files": {"picture": ("d.png", b"x", "image/png")}}, 400, "missing_field"),
        ({"files": {"image": ("d.png", b"", "image/png")}}, 400, "empty_image"),
        ({"data": {"image": "not a file"}, "files": {"other": ("a", b"b")}}, 400, "invalid_field"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "invalid_json",
        ),
        ({"json": ["image"]}, 400, "invalid_json"),
        ({"json": {"img": "abc"}}, 400, "missing_field"),
        ({"json": {"image": "abc", "extra": 1}}, 400, "unknown_field"),
        ({"json": {"image": "!!!not base64!!!"}}, 400, "invalid_base64"),
        ({"json": {"image": "data:text/plain;base64,aGVsbG8="}}, 415, "unsupported_media_type"),
        ({"json": {"image": "data:image/png,rawtext"}}, 400, "invalid_base64"),
        ({"json": {"image": "aGVsbG8=", "top_k": 0}}, 422, "validation_error"),
    ],
)
def test_bad_requests(client: TestClient, kwargs: dict, status: int, code: str) -> None:
    assert_error(client.post(PREDICT, **kwargs), status, code)


@pytest.mark.parametrize("query", ["top_k=0", "top_k=11", "top_k=three", "include_input=maybe"])
def test_bad_query_parameters(client: TestClient, query: str) -> None:
    png = encode(Image.fromarray(stroke_image()))
    response = client.post(f"{PREDICT}?{query}", content=png, headers={"content-type": "image/png"})
    assert_error(response, 422, "validation_error")


def test_damaged_images(client: TestClient) -> None:
    png = encode(Image.fromarray(stroke_image()))
    for raw in (png[: len(png) // 2], png[:60]):
        response = client.post(PREDICT, content=raw, headers={"content-type": "image/png"})
        assert_error(response, 422, "invalid_image")


def test_blank_image(client: TestClient) -> None:
    response = client.post(
        PREDICT,
        content=encode(Image.new("L", (280, 280), 255)),
        headers={"content-type": "image/png"},
    )
    assert_error(response, 422, "blank_image")


def test_decompression_bomb(client: TestClient) -> None:
    response = client.post(
        PREDICT, content=png_header_only(50000, 50000), headers={"content-type": "image/png"}
    )
    assert_error(response, 413, "image_too_large")


def test_body_over_the_limit(tmp_path: Path, predictor: Predictor) -> None:
    settings = Settings(home=tmp_path, max_upload_bytes=4096)
    with TestClient(create_app(settings, predictor)) as small:
        response = small.post(
            PREDICT, content=b"\0" * 100_000, headers={"content-type": "image/png"}
        )
    assert_error(response, 413, "payload_too_large")


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    assert_error(client.get("/api/v1/nothing"), 404, "not_found")
    assert_error(client.get(PREDICT), 405, "method_not_allowed")


# --- model card, health ---------------------------------------------------------------------------


def test_model_card_comes_from_the_manifest(client: TestClient, predictor: Predictor) -> None:
    body = client.get("/api/v1/model").json()
    manifest = predictor.entry.manifest
    assert body["name"] == manifest["name"] and body["version"] == manifest["version"]
    assert body["test_accuracy"] == manifest["metrics"]["test_accuracy"]
    assert body["parameters"] == manifest["architecture"]["parameters"]
    assert body["trained_at"] == manifest["created_at"]
    assert body["backend"] == "onnx"


def test_health_and_readiness(client: TestClient, predictor: Predictor) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model"]["version"] == predictor.version


def test_not_ready_without_a_model(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, models_dir=tmp_path / "empty", model="nothing:here")
    with TestClient(create_app(settings)) as bare:
        ready = bare.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "no model 'nothing:here'" in ready.json()["reason"]
        response = bare.post(PREDICT, content=b"x", headers={"content-type": "image/png"})
        assert_error(response, 503, "model_not_ready")


def test_openapi_documents_every_route_and_error(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    predict = spec["paths"][PREDICT]["post"]
    assert set(predict["requestBody"]["content"]) >= {
        "multipart/form-data",
        "image/png",
        "application/json",
    }
    assert {"200", "400", "413", "415", "422", "429"} <= set(predict["responses"])
    assert {"/api/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])


def test_docs_page_works_offline(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "<script>" not in page.text  # no inline script: the CSP forbids it
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_responses_carry_security_headers(client: TestClient) -> None:
    for path in ("/", "/healthz", "/api/v1/nothing"):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


def test_concurrent_requests_share_batches(client: TestClient) -> None:
    import concurrent.futures

    png = encode(Image.fromarray(stroke_image()))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: client.post(PREDICT, content=png, headers={"content-type": "image/png"}),
                range(32),
            )
        )
    assert all(r.status_code == 200 for r in results)
    assert len({json.dumps(r.json()["top"]) for r in results}) == 1  # same answer each time
    batcher = client.app.state.service.routing().production.batcher  # type: ignore[attr-defined]
    assert batcher.items >= 32


def test_prediction_is_deterministic_across_backends(bundled_entry) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    torch_p = Predictor(bundled_entry, backend="torch", threads=1)
    onnx_p = Predictor(bundled_entry, backend="onnx", threads=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1, 28, 28)).astype(np.float32)
    expected = torch_p.infer(x)
    # relative to the largest logit: random inputs give logits of 100 and more, where
    # float32 itself resolves only about 1e-5
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(expected - onnx_p.infer(x)).max() / scale < 1e-5


def test_decoding_threads_share_the_cores_among_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert preprocess_threads(Settings(workers=1)) == 4
    assert preprocess_threads(Settings(workers=2)) == 2
    assert preprocess_threads(Settings(workers=8)) == 1  # never none
    assert preprocess_threads(Settings(workers=2, preprocess_threads=3)) == 3  # as configured
