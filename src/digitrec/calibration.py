"""Confidence that means what it says: temperature scaling and expected calibration error.

``fit_temperature`` finds the T that minimises the negative log-likelihood of the
validation digits' labels under ``softmax(logits[:10] / T)`` (Guo et al., 2017); it
never changes which digit is the answer, only how sure the answer says it is.
``expected_calibration_error`` compares confidence with accuracy in equal-width bins;
``reliability`` gives the per-bin figures a reliability diagram draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from digitrec.rejection import digit_probabilities

ECE_BINS = 15
_LOG_T_RANGE = (-3.0, 3.0)  # T between e^-3 and e^3


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probs = digit_probabilities(logits, temperature)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Golden-section search of log T (the NLL is convex in 1/T)."""
    lo, hi = _LOG_T_RANGE
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(logits, labels, np.exp(a)), _nll(logits, labels, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(logits, labels, np.exp(b))
    return round(float(np.exp((lo + hi) / 2)), 6)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Per confidence bin: how many answers, their mean confidence and their accuracy."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        accuracy = np.where(counts > 0, acc_sum / counts, np.nan)
    ece = float(np.nansum(counts * np.abs(mean_conf - accuracy)) / max(len(labels), 1))
    return {
        "edges": edges.round(6).tolist(),
        "counts": counts.tolist(),
        "confidence": [None if np.isnan(v) else round(float(v), 6) for v in mean_conf],
        "accuracy": [None if np.isnan(v) else round(float(v), 6) for v in accuracy],
        "ece": round(ece, 6),
    }


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    return float(reliability(probs, labels, bins)["ece"])
