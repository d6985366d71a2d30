"""Is it one digit? From a model's outputs to a verdict, and how well that separates.

A model trained with ``negatives.py`` has 12 outputs: the ten digits, "not a digit" and
"several digits". From them this module computes, for every image:

- the digit probabilities, ``softmax(logits[:10] / T)``: what the answer's ``top`` and
  ``confidence`` say, given that the image is a digit (T from ``calibration.py``);
- a score, higher when the image looks more like one digit, by one of three methods
  (``SCORES``); training picks the one that separates best on validation data;
- a verdict, by comparing the score with two thresholds chosen on validation digits.

Models trained before rejection existed (10 outputs, no ``rejection`` in the manifest)
always get the verdict "digit": nothing was learned to say otherwise.
The metrics (AUROC, FPR at 95 % TPR, share flagged) are used by training to choose the
method and by ``digitrec evaluate`` to report it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DIGIT_CLASSES = 10
NOT_A_DIGIT = 10  # output index of the "not a digit" class
SEVERAL_DIGITS = 11  # output index of the "several digits" class
REJECT_CLASSES = 2
LABELS: list[int | str] = [*range(DIGIT_CLASSES), "not_a_digit", "several_digits"]

VERDICTS = {
    "digit": "one digit: `digit`, `confidence` and `top` are the answer",
    "not_a_digit": "does not look like a digit (a letter, a symbol, a drawing, a scribble)",
    "several_digits": "looks like more than one digit side by side",
    "unsure": "between the two: it may be a digit, but the model is not sure",
}
# Budgets (issue #10): at most 1 % of MNIST digits and 2 % of drawings and photos may be
# flagged. Thresholds use half of each on validation data, leaving a margin for the
# difference between validation and what users send (with three quarters, a model flagged
# 1.5 % of validation drawings and photos but 2.08 % of the test ones).
ACCEPT_QUANTILE = 0.005  # at most this share of validation digits is not accepted...
REALISTIC_ACCEPT_QUANTILE = 0.01  # ...and this share of validation drawings and photos
REJECT_QUANTILE = 0.001  # below the score of all but this share of them: a clear no


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    x = logits.astype(np.float64) / temperature
    x -= x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def digit_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, C) outputs -> (N, 10) probabilities of each digit, given that it is one."""
    return softmax(logits[:, :DIGIT_CLASSES], temperature)


def _extra_class(logits: np.ndarray) -> np.ndarray:
    """The probability of the ten digit classes together against the two others."""
    if logits.shape[1] <= DIGIT_CLASSES:
        raise ValueError("the extra-class score needs a model with rejection classes")
    return softmax(logits)[:, :DIGIT_CLASSES].sum(axis=1)


def _max_softmax(logits: np.ndarray) -> np.ndarray:
    """The baseline: the highest digit probability (Hendrycks & Gimpel, 2017)."""
    return softmax(logits[:, :DIGIT_CLASSES]).max(axis=1)


def _energy(logits: np.ndarray) -> np.ndarray:
    """Negative free energy of the digit logits (Liu et al., 2020)."""
    return _logsumexp(logits[:, :DIGIT_CLASSES].astype(np.float64))


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "extra_class": _extra_class,
    "max_softmax": _max_softmax,
    "energy": _energy,
}


@dataclass(frozen=True)
class Rejection:
    """How a model's outputs become a verdict; stored in its manifest."""

    method: str | None = None  # a key of SCORES; None: the model cannot reject
    accept: float = float("-inf")  # score at or above: "digit"
    reject: float = float("-inf")  # score below: "not_a_digit" or "several_digits"
    temperature: float = 1.0  # divides the digit logits (calibration.py)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Rejection:
        section = manifest.get("rejection") or {}
        temperature = float((manifest.get("calibration") or {}).get("temperature", 1.0))
        if not section.get("method"):
            return cls(temperature=temperature)
        return cls(
            str(section["method"]),
            float(section["accept"]),
            float(section["reject"]),
            temperature,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def score(self, logits: np.ndarray) -> np.ndarray:
        if self.method is None:
            return np.full(len(logits), np.inf)
        return SCORES[self.method](logits)

    def verdicts(self, logits: np.ndarray, scores: np.ndarray | None = None) -> list[str]:
        scores = self.score(logits) if scores is None else scores
        out = []
        for row, s in zip(logits, scores, strict=True):
            if s >= self.accept:
                out.append("digit")
            elif s >= self.reject:
                out.append("unsure")
            elif len(row) > SEVERAL_DIGITS and row[SEVERAL_DIGITS] > row[NOT_A_DIGIT]:
                out.append("several_digits")
            else:
                out.append("not_a_digit")
        return out


def choose_thresholds(
    method: str, mnist: np.ndarray, realistic: np.ndarray | None, temperature: float
) -> Rejection:
    """Thresholds from validation digits' scores only (never from negatives or test data):
    accept all but ``ACCEPT_QUANTILE`` of the MNIST ones and ``REALISTIC_ACCEPT_QUANTILE``
    of the redrawn ones; call a clear no below all but ``REJECT_QUANTILE`` of them."""
    accept = float(np.quantile(mnist, ACCEPT_QUANTILE))
    if realistic is not None and len(realistic):
        accept = min(accept, float(np.quantile(realistic, REALISTIC_ACCEPT_QUANTILE)))
    pooled = mnist if realistic is None else np.concatenate([mnist, realistic])
    reject = min(accept, float(np.quantile(pooled, REJECT_QUANTILE)))
    return Rejection(method, accept, reject, temperature)


# --- how well a score separates digits (positives) from the rest ------------------------


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Probability that a random digit scores higher than a random non-digit (ties: 1/2)."""
    scores = np.concatenate([positives, negatives])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fpr_at_tpr(positives: np.ndarray, negatives: np.ndarray, tpr: float = 0.95) -> float:
    """Share of non-digits accepted at the threshold that accepts ``tpr`` of the digits."""
    threshold = np.quantile(positives, 1 - tpr)
    return float((negatives >= threshold).mean())


def separation(positives: np.ndarray, negatives: np.ndarray) -> dict[str, float]:
    return {
        "auroc": round(auroc(positives, negatives), 6),
        "fpr_at_95_tpr": round(fpr_at_tpr(positives, negatives), 6),
    }


def flagged_share(verdicts: list[str]) -> float:
    """Share of answers that are not "digit"."""
    return float(np.mean([v != "digit" for v in verdicts])) if verdicts else 0.0
