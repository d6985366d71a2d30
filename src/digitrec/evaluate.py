"""`digitrec evaluate`: measure a stored model, through the same Predictor that serves it.

``evaluate_test`` recomputes test accuracy and the confusion matrix on MNIST's 10,000
test images (already in MNIST layout, so only normalised) and compares them with the
manifest. ``evaluate_realistic`` sends redrawn test digits (see realistic.py) through
the full preprocessing path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from digitrec.config import Settings
from digitrec.data import load_mnist
from digitrec.errors import DigitrecError
from digitrec.predict import Predictor
from digitrec.preprocess import normalize
from digitrec.realistic import realistic_set
from digitrec.report import accuracy, confusion_matrix, per_class_metrics


def predict_mnist(predictor: Predictor, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Probabilities for uint8 MNIST-layout images (N, 28, 28)."""
    out = []
    for start in range(0, len(images), batch):
        x = normalize(
            images[start : start + batch, None].astype(np.float32) / 255.0, predictor.spec
        )
        out.append(predictor.predict_batch(x))
    return np.concatenate(out)


def evaluate_test(settings: Settings) -> dict[str, Any]:
    predictor = Predictor.from_settings(settings)
    mnist = load_mnist(settings, progress=False)
    probs = predict_mnist(predictor, mnist.test_images)
    cm = confusion_matrix(mnist.test_labels, probs.argmax(1))
    acc = accuracy(cm)
    stored = predictor.entry.metrics
    report: dict[str, Any] = {
        "name": predictor.name,
        "version": predictor.version,
        "backend": predictor.backend.name,
        "test_accuracy": round(acc, 6),
        "n": int(cm.sum()),
        "errors": int(cm.sum() - cm.trace()),
        "per_class": per_class_metrics(cm),
        "confusion_matrix": cm.tolist(),
        "manifest_test_accuracy": stored.get("test_accuracy"),
    }
    if stored.get("confusion_matrix") is not None:
        # Float32 on another engine may flip a near-tie; allow one image either way.
        diff = np.abs(np.asarray(stored["confusion_matrix"]) - cm).sum() // 2
        report["images_differing_from_manifest"] = int(diff)
        report["agrees_with_manifest"] = bool(diff <= 1)
    return report


def evaluate_realistic(settings: Settings, limit: int = 1000, seed: int = 0) -> dict[str, Any]:
    predictor = Predictor.from_settings(settings)
    mnist = load_mnist(settings, progress=False)
    samples = realistic_set(mnist.test_images, mnist.test_labels, limit, seed)
    correct: dict[str, list[bool]] = {}
    for variant, label, raw in samples:
        try:
            ok = predictor.predict_bytes(raw, 1).digit == label
        except DigitrecError:
            ok = False  # refusing a real digit counts as a miss
        correct.setdefault(variant, []).append(ok)
    variants = {name: round(float(np.mean(v)), 6) for name, v in correct.items()}
    return {
        "model": {"name": predictor.name, "version": predictor.version},
        "per_variant_n": min(limit, len(mnist.test_images)),
        "variants": variants,
        "accuracy": round(float(np.mean([x for v in correct.values() for x in v])), 6),
    }
