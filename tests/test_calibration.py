"""Temperature scaling finds the temperature that produced the labels; ECE measures it."""

from __future__ import annotations

import numpy as np
import pytest

from digitrec.calibration import expected_calibration_error, fit_temperature, reliability
from digitrec.rejection import digit_probabilities


def sampled(temperature: float, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / temperature): calibrated at T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, 10)).astype(np.float32)
    probs = digit_probabilities(logits, temperature)
    labels = np.array([rng.choice(10, p=p) for p in probs])
    return logits, labels


def test_fit_recovers_the_temperature() -> None:
    logits, labels = sampled(2.0)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.08)


def test_ece_is_small_when_calibrated_and_large_when_not() -> None:
    logits, labels = sampled(2.0)
    calibrated = expected_calibration_error(digit_probabilities(logits, 2.0), labels)
    overconfident = expected_calibration_error(digit_probabilities(logits, 1.0), labels)
    assert calibrated < 0.02
    assert overconfident > 3 * calibrated


def test_reliability_bins_account_for_every_answer() -> None:
    logits, labels = sampled(1.0, n=500)
    r = reliability(digit_probabilities(logits), labels)
    assert sum(r["counts"]) == 500
    assert len(r["edges"]) == len(r["counts"]) + 1
    assert 0 <= r["ece"] <= 1
