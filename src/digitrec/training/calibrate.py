"""After the epoch is chosen: fit the temperature, choose how to reject and where.

Everything here uses validation data only: the 5,000 held-out MNIST digits, the same
digits redrawn as drawings and photos (realistic.py, through the full serving path), and
negatives drawn with the training fonts but a validation seed (negatives.py). The test
set and the held-apart negatives (Fashion-MNIST, unseen fonts, evaluation seeds) are
never looked at, so ``digitrec evaluate`` measures the result on data that chose nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitrec import negatives
from digitrec.calibration import fit_temperature, reliability
from digitrec.config import MNIST
from digitrec.evaluate import redrawn_sets
from digitrec.preprocess import PreprocessSpec
from digitrec.rejection import (
    DIGIT_CLASSES,
    SCORES,
    Rejection,
    choose_thresholds,
    digit_probabilities,
    flagged_share,
    separation,
)
from digitrec.report import plot_reliability
from digitrec.training.loop import Trainer, evaluate

log = logging.getLogger(__name__)

NEGATIVES_PER_SET = 1000  # validation negatives of each kind
DRY_RUN_VALIDATION = 200  # validation digits a dry run calibrates on


def outputs(trainer: Trainer, images: np.ndarray) -> np.ndarray:
    """The model's raw outputs for uint8 (N, 28, 28) images, in float32."""
    labels = torch.zeros(len(images), dtype=torch.int64)
    return evaluate(
        trainer.model,
        torch.from_numpy(np.ascontiguousarray(images)),
        labels,
        trainer.spec,
        trainer.device,
        trainer.settings.eval_batch_size,
    ).logits


def redrawn(images: np.ndarray, labels: np.ndarray, n: int, spec: PreprocessSpec) -> np.ndarray:
    """Validation digits as drawings and photos, prepared by the serving path (those
    refused as blank are left out: serving answers them 422, not with a verdict)."""
    sets = redrawn_sets(images, labels, n, spec, seed=negatives.SEEDS["validation"])
    return np.concatenate([kept for kept, _, _ in sets.values()])


def validation_negatives(trainer: Trainer) -> dict[str, np.ndarray]:
    n = trainer.settings.dry_run_batches * 8 if trainer.settings.dry_run else NEGATIVES_PER_SET
    seed, spec = negatives.SEEDS["validation"], trainer.spec
    fonts = negatives.require_fonts(negatives.TRAIN_FONTS, "training")
    return {
        "glyphs": negatives.glyphs(n, fonts, seed, spec),
        "scribbles": negatives.scribbles(n, seed, spec),
        "several_digits": negatives.several(n, trainer.x_val.numpy(), seed, spec),
    }


def _dataset_label(name: str) -> str:
    return "MNIST" if name == MNIST else name


def calibrate(trainer: Trainer, run_dir: Path, test_logits: np.ndarray) -> dict[str, Any]:
    """Temperature, rejection method and thresholds, as manifest sections, plus the
    reliability diagram of the test set (report only) in the run folder."""
    s = trainer.settings
    n_val = DRY_RUN_VALIDATION if s.dry_run else len(trainer.x_val)  # a dry run checks the path
    val_logits = outputs(trainer, trainer.x_val[:n_val].numpy())
    val_labels = trainer.y_val.numpy()[:n_val]
    temperature = fit_temperature(val_logits, val_labels)
    n_redrawn = 2 if s.dry_run else s.calibration_variants
    real = outputs(trainer, redrawn(trainer.x_val.numpy(), val_labels, n_redrawn, trainer.spec))
    test_labels = trainer.y_test.numpy()[: len(test_logits)]
    before = reliability(digit_probabilities(test_logits), test_labels)
    after = reliability(digit_probabilities(test_logits, temperature), test_labels)
    plot_reliability(run_dir / "reliability.png", before, after)
    section: dict[str, Any] = {
        "calibration": {
            "method": "temperature",
            "temperature": temperature,
            "fitted_on": f"{len(val_labels)} {_dataset_label(s.dataset)} validation digits",
            "test_ece_before": before["ece"],
            "test_ece_after": after["ece"],
            "test_reliability": after,
        }
    }
    if trainer.classes <= DIGIT_CLASSES:
        return section
    negs = {
        name: outputs(trainer, images) for name, images in validation_negatives(trainer).items()
    }
    pooled = np.concatenate(list(negs.values()))
    candidates = {}
    for method, score in SCORES.items():
        rule = choose_thresholds(method, score(val_logits), score(real), temperature)
        digits = score(np.concatenate([val_logits, real]))
        candidates[method] = {
            **rule.to_dict(),
            **separation(digits, score(pooled)),
            "flagged": {
                "mnist": flagged_share(rule.verdicts(val_logits)),
                "redrawn": flagged_share(rule.verdicts(real)),
                **{name: flagged_share(rule.verdicts(out)) for name, out in negs.items()},
            },
        }
    chosen = max(
        candidates, key=lambda m: (candidates[m]["auroc"], -candidates[m]["fpr_at_95_tpr"])
    )
    log.info("rejection: %s (validation AUROC %.4f)", chosen, candidates[chosen]["auroc"])
    rule = Rejection(**{k: candidates[chosen][k] for k in Rejection.__dataclass_fields__})
    section["rejection"] = {
        "method": chosen,
        "accept": rule.accept,
        "reject": rule.reject,
        "chosen_by": "highest AUROC of validation digits (MNIST and redrawn) against "
        "validation negatives (training fonts, validation seed)",
        "validation": candidates,
        "validation_sizes": {
            "mnist": len(val_logits),
            "redrawn": len(real),
            **{name: len(out) for name, out in negs.items()},
        },
    }
    return section
