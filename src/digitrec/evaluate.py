"""`digitrec evaluate`: measure a stored model, through the same Predictor that serves it.

Four suites, each a function of an ``Evaluator`` (a loaded model and MNIST):

- ``test``: accuracy and the confusion matrix on MNIST's 10,000 test images (already in
  MNIST layout, so only normalised), compared with the manifest; share flagged as not
  one digit; expected calibration error before and after the model's temperature.
- ``realistic``: the same digits redrawn as real inputs arrive (realistic.py), through
  the full preprocessing path: accuracy, share flagged and calibration per variant.
- ``numbers``: whole numbers of 2-6 test digits (clear or touching, canvas or photo)
  read by ``numbers.read_number``: whole-number and per-digit accuracy by length.
- ``rejection``: how well the verdict separates digits from held-apart non-digits that
  chose nothing in training: Fashion-MNIST (as the 28x28 images of the standard
  benchmark, and uploaded as PNG files through the serving path), glyphs of fonts never
  trained on, scribbles and shapes from an unseen seed, several test digits side by
  side. Per set: share flagged, AUROC and FPR at 95 % TPR, for the model's own method
  and the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from digitrec import negatives
from digitrec.calibration import reliability
from digitrec.config import Settings
from digitrec.data import Mnist, load_fashion_mnist_test
from digitrec.datasets import dataset_of, load_dataset
from digitrec.errors import DigitrecError
from digitrec.predict import Predictor
from digitrec.preprocess import (
    Preprocessed,
    PreprocessSpec,
    normalize,
    preprocess_bytes,
    to_png,
)
from digitrec.realistic import realistic_set
from digitrec.rejection import (
    DIGIT_CLASSES,
    SCORES,
    Rejection,
    digit_probabilities,
    flagged_share,
    separation,
)
from digitrec.report import accuracy, confusion_matrix, per_class_metrics

SUITES = ("test", "realistic", "rejection", "numbers")
NEGATIVES_PER_SET = 2000  # held-apart generated negatives of each kind (default)


def model_outputs(predictor: Predictor, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Raw outputs for uint8 MNIST-layout images (N, 28, 28)."""
    out = []
    for start in range(0, len(images), batch):
        x = normalize(
            images[start : start + batch, None].astype(np.float32) / 255.0, predictor.spec
        )
        out.append(predictor.infer(x))
    return np.concatenate(out)


Prepare = Callable[[bytes], Preprocessed]  # image file bytes -> model input


def redrawn_sets(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    spec: PreprocessSpec,
    seed: int = 0,
    prepare: Prepare | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """The first ``n`` digits redrawn in every realistic variant and prepared by the
    serving path (``prepare``: a served model's ``open`` and ``prepare`` stages; by
    default the same functions with ``spec``): per variant, the 28x28 images, their
    labels, and how many were refused."""
    prepare = prepare or (lambda raw: preprocess_bytes(raw, spec))
    out: dict[str, tuple[list[np.ndarray], list[int], int]] = {}
    for variant, label, raw in realistic_set(images, labels, n, seed):
        kept, kept_labels, refused = out.setdefault(variant, ([], [], 0))
        try:
            kept.append(prepare(raw).image)
            kept_labels.append(label)
        except DigitrecError:
            out[variant] = (kept, kept_labels, refused + 1)
    empty = np.zeros((0, spec.size, spec.size), np.uint8)
    return {
        name: (np.stack(kept) if kept else empty, np.asarray(lab, dtype=np.int64), refused)
        for name, (kept, lab, refused) in out.items()
    }


def uploaded(images: np.ndarray, predictor: Predictor) -> np.ndarray:
    """28x28 images as the serving path prepares them when uploaded as PNG files (the
    ones it refuses as blank are left out: they get a 422, not a verdict)."""
    kept = []
    for image in images:
        try:
            kept.append(served_input(predictor, to_png(image)).image)
        except DigitrecError:
            continue
    size = predictor.spec.size
    return np.stack(kept) if kept else np.zeros((0, size, size), np.uint8)


def served_input(predictor: Predictor, raw: bytes) -> Preprocessed:
    """A file as the server prepares it for this model: its ``open`` and ``prepare``."""
    return predictor.prepare(predictor.open(raw))


class Evaluator:
    """A model as it is served, MNIST, and the measurements; sets are built once."""

    def __init__(self, settings: Settings, predictor: Predictor | None = None) -> None:
        self.settings = settings
        self.predictor = predictor or Predictor.from_settings(settings)
        # The test split of the model's own dataset (MNIST unless it was trained on another).
        manifest = self.predictor.entry.manifest
        self.mnist: Mnist = load_dataset(settings, dataset_of(manifest), progress=False)

    @property
    def rule(self) -> Rejection:
        return self.predictor.rejection

    def methods(self) -> list[str]:
        """The scores this model's outputs allow (the extra-class one needs its classes)."""
        classes = len(self.predictor.entry.manifest.get("labels", range(DIGIT_CLASSES)))
        return [m for m in SCORES if classes > DIGIT_CLASSES or m != "extra_class"]

    @functools.cached_property
    def test_outputs(self) -> np.ndarray:
        return model_outputs(self.predictor, self.mnist.test_images)

    def calibration(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {
            "ece_before": reliability(digit_probabilities(logits), labels)["ece"],
            "ece_after": reliability(self.predictor.digit_probabilities(logits), labels)["ece"],
        }

    # -- suites --
    def test(self) -> dict[str, Any]:
        logits, labels = self.test_outputs, self.mnist.test_labels
        cm = confusion_matrix(labels, self.predictor.digit_probabilities(logits).argmax(1))
        stored = self.predictor.entry.metrics
        report: dict[str, Any] = {
            "name": self.predictor.name,
            "version": self.predictor.version,
            "backend": self.predictor.backend.name,
            "test_accuracy": round(accuracy(cm), 6),
            "n": int(cm.sum()),
            "errors": int(cm.sum() - cm.trace()),
            "flagged": round(flagged_share(self.rule.verdicts(logits)), 6),
            "temperature": self.rule.temperature,
            **self.calibration(logits, labels),
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

    def numbers(self, per_cell: int, seed: int = 0) -> dict[str, Any]:
        """Whole numbers of 2-6 MNIST test digits (``numbers.synth``), clear or touching,
        as canvas exports and photos, read by ``read_number``: per cell and per length,
        whole-number and per-digit accuracy against the issue's targets."""
        from digitrec.numbers.scoring import LENGTHS, SPACINGS, TARGETS, VARIANTS, accuracy
        from digitrec.numbers.synth import number_set

        cells = []
        for spacing in SPACINGS:
            for variant in VARIANTS:
                by_length = {}
                for length in LENGTHS:
                    made = number_set(
                        self.mnist, per_cell, lengths=(length,), spacing=spacing,  # type: ignore[arg-type]
                        variant=variant, seed=seed + length,
                    )  # fmt: skip
                    by_length[length] = accuracy(self.predictor, made)
                cells.append(
                    {
                        "spacing": spacing,
                        "variant": variant,
                        "target": TARGETS.get((spacing, variant)),
                        "whole": _weighted(by_length, "whole"),
                        "per_digit": _weighted(by_length, "per_digit"),
                        "by_length": by_length,
                    }
                )
        return {"per_cell": per_cell, "cells": cells}

    @functools.cache  # noqa: B019 - one Evaluator per command; the cache goes with it
    def redrawn(self, limit: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        """Per variant: outputs of the images served, their labels, and how many were
        refused (blank) and so never answered."""
        sets = redrawn_sets(
            self.mnist.test_images,
            self.mnist.test_labels,
            limit,
            self.predictor.spec,
            seed,
            lambda raw: served_input(self.predictor, raw),
        )
        return {
            name: (model_outputs(self.predictor, images), labels, refused)
            for name, (images, labels, refused) in sets.items()
        }

    def realistic(self, limit: int = 1000, seed: int = 0) -> dict[str, Any]:
        variants: dict[str, Any] = {}
        hits, total = 0, 0
        for name, (logits, labels, refused) in self.redrawn(limit, seed).items():
            n = len(labels) + refused
            right = int((self.predictor.digit_probabilities(logits).argmax(1) == labels).sum())
            flagged = sum(v != "digit" for v in self.rule.verdicts(logits)) + refused
            variants[name] = {
                "accuracy": round(right / n, 6),  # a refused digit counts as a miss
                "flagged": round(flagged / n, 6),
                **self.calibration(logits, labels),
            }
            hits, total = hits + right, total + n
        return {
            "model": {"name": self.predictor.name, "version": self.predictor.version},
            "per_variant_n": min(limit, len(self.mnist.test_images)),
            "variants": variants,
            "accuracy": round(hits / max(total, 1), 6),
        }

    def held_apart(self, n: int) -> dict[str, np.ndarray]:
        """Non-digits that chose nothing: never trained on, never used for a threshold."""
        spec, seed = self.predictor.spec, negatives.SEEDS["evaluation"]
        fonts = negatives.require_fonts(negatives.HELD_OUT_FONTS, "held-out")
        fashion = load_fashion_mnist_test(self.settings)
        return {
            "fashion_mnist": fashion,
            "fashion_mnist_uploaded": uploaded(fashion[:n], self.predictor),
            "unseen_fonts": negatives.glyphs(n, fonts, seed, spec),
            "unseen_scribbles": negatives.scribbles(n, seed, spec),
            "several_digits": negatives.several(n, self.mnist.test_images, seed, spec),
        }

    def rejection(self, limit: int = 1000, n: int = NEGATIVES_PER_SET) -> dict[str, Any]:
        negs = {k: model_outputs(self.predictor, v) for k, v in self.held_apart(n).items()}
        positives = {"mnist_test": self.test_outputs} | {
            name: logits for name, (logits, _, _) in self.redrawn(limit).items()
        }
        pooled_neg = np.concatenate(list(negs.values()))
        methods: dict[str, Any] = {}
        for method in self.methods():
            score = SCORES[method]
            digits = score(self.test_outputs)
            methods[method] = {
                "negatives": {k: separation(digits, score(v)) for k, v in negs.items()},
                "all_negatives": separation(digits, score(pooled_neg)),
                "positives": {
                    k: separation(score(v), score(pooled_neg)) for k, v in positives.items()
                },
            }
        own = self.rule.method
        verdicts = {k: self.rule.verdicts(v) for k, v in (negs | positives).items()}

        def row(kind: str, name: str) -> dict[str, Any]:
            found = {"n": len(verdicts[name]), "flagged": round(flagged_share(verdicts[name]), 6)}
            return found | (methods[own][kind][name] if own else {})

        pooled_verdicts = [v for k in negs for v in verdicts[k]]
        return {
            "model": {"name": self.predictor.name, "version": self.predictor.version},
            "method": own,
            "thresholds": {"accept": self.rule.accept, "reject": self.rule.reject} if own else None,
            "negatives": {k: row("negatives", k) for k in negs},
            "positives": {k: row("positives", k) for k in positives},
            "all_negatives": methods[own]["all_negatives"]
            | {"flagged": round(flagged_share(pooled_verdicts), 6)}
            if own
            else None,
            "negative_verdicts": {
                k: {v: verdicts[k].count(v) for v in ("not_a_digit", "several_digits", "unsure")}
                for k in negs
            },
            "methods": methods,
        }


def _weighted(by_length: dict[int, dict[str, Any]], key: str) -> float:
    """``key`` over every length together, each weighted by its count of numbers."""
    n = sum(c["numbers"] for c in by_length.values())
    return round(sum(c[key] * c["numbers"] for c in by_length.values()) / n, 4)


def evaluate(
    settings: Settings, suites: tuple[str, ...] = SUITES, limit: int = 1000
) -> dict[str, Any]:
    evaluator = Evaluator(settings)
    report: dict[str, Any] = {}
    if "test" in suites:
        report["test"] = evaluator.test()
    if "realistic" in suites:
        report["realistic"] = evaluator.realistic(limit)
    if "rejection" in suites:
        report["rejection"] = evaluator.rejection(limit)
    if "numbers" in suites:
        report["numbers"] = evaluator.numbers(max(10, limit // 10))
    return report
