"""Real-looking inputs (canvas, photo, JPEG, ...) made from MNIST test digits keep their
accuracy through the API within 0.5 points of clean MNIST."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from digitrec.evaluate import predict_mnist
from digitrec.predict import Predictor
from digitrec.realistic import VARIANTS, realistic_set

N = 400  # digits per variant: 10 variants x 400 = 4,000 requests through the API
STRIDE = 25  # every 25th test digit: a sample of the whole test set, easy and hard halves


@pytest.mark.mnist
@pytest.mark.slow
def test_realistic_inputs_through_the_api(
    client: TestClient, predictor: Predictor, mnist, artifacts
) -> None:  # type: ignore[no-untyped-def]
    images, labels = mnist.test_images[::STRIDE][:N], mnist.test_labels[::STRIDE][:N]
    clean = float((predict_mnist(predictor, images).argmax(1) == labels).mean())
    hits: dict[str, list[bool]] = {name: [] for name in VARIANTS}
    for variant, label, raw in realistic_set(images, labels, N, seed=0):
        kind = "image/jpeg" if raw[:2] == b"\xff\xd8" else "image/png"
        response = client.post(
            "/api/v1/predict?top_k=1", content=raw, headers={"content-type": kind}
        )
        hits[variant].append(response.status_code == 200 and response.json()["digit"] == label)
    per_variant = {name: float(np.mean(v)) for name, v in hits.items()}
    overall = float(np.mean([x for v in hits.values() for x in v]))
    report = "\n".join(f"{k:12s} {v * 100:6.2f} %" for k, v in per_variant.items())
    (artifacts / "realistic_accuracy.txt").write_text(
        f"clean MNIST (same {N} digits, every {STRIDE}th): {clean * 100:.2f} %\n{report}\n"
        f"all variants: {overall * 100:.2f} %\n"
    )
    assert overall >= clean - 0.005, report
    assert min(per_variant.values()) >= clean - 0.02, report  # no variant collapses
