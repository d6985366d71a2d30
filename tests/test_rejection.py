"""Verdicts from a model's outputs, and the measures that choose and report them."""

from __future__ import annotations

import numpy as np
import pytest

from digitrec.rejection import (
    ACCEPT_QUANTILE,
    NOT_A_DIGIT,
    SCORES,
    SEVERAL_DIGITS,
    VERDICTS,
    Rejection,
    auroc,
    choose_thresholds,
    digit_probabilities,
    flagged_share,
    fpr_at_tpr,
)


def brute_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_auroc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 20, 300).astype(float)  # many ties on purpose
    neg = rng.integers(-5, 15, 200).astype(float)
    assert auroc(pos, neg) == pytest.approx(brute_auroc(pos, neg))
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0


def test_fpr_at_95_tpr() -> None:
    pos = np.arange(100, dtype=float)  # the threshold accepting 95 of them is about 5
    neg = np.arange(-50, 50, dtype=float)
    assert fpr_at_tpr(pos, neg) == pytest.approx(0.45, abs=0.011)


def logits_for(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


def test_verdicts_of_a_model_with_rejection_classes() -> None:
    digit = [9.0] + [0.0] * 9 + [0.0, 0.0]
    letter = [0.0] * 10 + [9.0, 1.0]
    number = [2.0] + [0.0] * 9 + [1.0, 9.0]
    between = [2.0] + [0.0] * 9 + [2.5, 0.0]
    rule = Rejection("extra_class", accept=0.6, reject=0.1)
    scores = rule.score(logits_for([digit, letter, number, between]))
    assert scores[0] > 0.99 and scores[1] < 0.01
    assert 0.1 <= scores[3] < 0.6
    assert rule.verdicts(logits_for([digit, letter, number, between])) == [
        "digit",
        "not_a_digit",
        "several_digits",
        "unsure",
    ]
    assert set(VERDICTS) == {"digit", "not_a_digit", "several_digits", "unsure"}
    assert NOT_A_DIGIT == 10 and SEVERAL_DIGITS == 11


def test_a_model_without_rejection_always_answers_digit() -> None:
    rule = Rejection.from_manifest({})
    assert rule.method is None
    flat = logits_for([[0.0] * 10, [5.0] + [0.0] * 9])
    assert rule.verdicts(flat) == ["digit", "digit"]


def test_manifest_round_trip() -> None:
    manifest = {
        "rejection": {"method": "energy", "accept": 3.5, "reject": 1.25},
        "calibration": {"temperature": 1.4},
    }
    rule = Rejection.from_manifest(manifest)
    assert rule == Rejection("energy", 3.5, 1.25, 1.4)


def test_thresholds_flag_the_chosen_share_of_validation_digits() -> None:
    rng = np.random.default_rng(1)
    mnist = rng.normal(5, 1, (20000, 10)).astype(np.float32)
    mnist[:, 0] += 6  # confident digits
    rule = choose_thresholds("max_softmax", SCORES["max_softmax"](mnist), None, 1.0)
    flagged = flagged_share(rule.verdicts(mnist))
    assert flagged == pytest.approx(ACCEPT_QUANTILE, abs=0.002)
    assert rule.reject <= rule.accept


def test_digit_probabilities_ignore_the_rejection_classes_and_use_the_temperature() -> None:
    row = logits_for([[2.0, 1.0] + [0.0] * 8 + [50.0, 50.0]])
    p = digit_probabilities(row)
    assert p.shape == (1, 10) and p.sum() == pytest.approx(1.0)
    assert p[0, 0] > p[0, 1]
    assert digit_probabilities(row, 2.0)[0, 0] < p[0, 0]  # hotter: less sure
