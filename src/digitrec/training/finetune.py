"""Fine-tuning on users' corrections: `digitrec train --with-feedback [--from VERSION]`.

``FeedbackRun.prepare`` decides what the run starts from and learns from: the model named
by ``--from``, else production (``lifecycle.production_entry``: the promoted version, or
the shipped one); the corrections stored in the database, split once and for all into a
training part and a held-out part by a hash of each prediction id against
``feedback_holdout`` (a correction stays on its side in every run, so a later run is
never judged on corrections an earlier one trained on). The run folder keeps the ids
of both parts, so ``--resume`` continues on the same corrections.

``FeedbackRun.section`` is the manifest's ``feedback`` section: how many corrections were
used and held out, and accuracy on MNIST test and on the held-out corrections, of the
new model and of the one it started from. Held-out accuracy is the served answer's, as
a correction's ``right`` counts it online: the verdict "digit" with the corrected digit,
or, for a "not a digit" correction, any other verdict.

The new version is registered like any trained model and never promoted: that is
`digitrec models promote`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digitrec.config import Settings
from digitrec.errors import InvalidRequest
from digitrec.predict import load_torch_model
from digitrec.registry import ModelEntry
from digitrec.rejection import DIGIT_CLASSES, NOT_A_DIGIT, Rejection
from digitrec.storage import atomic_write_json
from digitrec.training.loop import Evaluation, FineTune, Trainer, evaluate

log = logging.getLogger(__name__)

FEEDBACK_FILE = "feedback.json"  # in the run folder: the ids trained on and held out
MIN_TRAIN = 10  # corrections to train on, at least
MIN_HELD_OUT = 5  # corrections held out to judge the result, at least


class TooFewCorrections(InvalidRequest):
    code = "too_few_corrections"


def held_out(ids: Sequence[str], share: float) -> np.ndarray:
    """True for the ids kept apart for evaluation: sha256 of the id, read as a number in
    [0, 1), below ``share``. Pure: the same id is on the same side in every run."""
    return np.array(
        [
            int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") / 2**64 < share
            for i in ids
        ],
        dtype=bool,
    )


def start_entry(settings: Settings) -> ModelEntry:
    """The model to fine-tune: ``from_version``, else the production one."""
    from digitrec.lifecycle import served_entry

    return served_entry(settings.model_copy(update={"model": settings.from_version}))


def stored_corrections(settings: Settings) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every stored correction: images (N, 28, 28) uint8, labels (10: not a digit), ids."""
    from digitrec.db import Database
    from digitrec.feedback import feedback_dataset
    from digitrec.lifecycle import database_exists

    if not database_exists(settings):
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), []
    db = Database.from_settings(settings)
    try:
        db.migrate()
        data = feedback_dataset(db)
    finally:
        db.dispose()
    return np.asarray(data.images, np.uint8), np.asarray(data.labels, np.int64), list(data.ids)


def output_classes(entry: ModelEntry) -> int:
    """10 digits, or 12 for a model that can say "not a digit" and "several digits"."""
    return int(entry.manifest["architecture"].get("args", {}).get("classes", DIGIT_CLASSES))


def run_settings(settings: Settings, entry: ModelEntry) -> Settings:
    """The settings that describe the run: the starting model's architecture, name and data
    split (unless set explicitly: its validation images must not be ones it trained on),
    its exact reference, and no negatives for a model that cannot reject."""
    manifest = entry.manifest
    update: dict[str, Any] = {
        "arch": manifest["architecture"]["name"],
        "name": settings.name or entry.name,
        "from_version": entry.ref,
    }
    data = manifest.get("data", {})
    for key in ("dataset", "val_size", "split_seed"):
        if key not in settings.model_fields_set and key in data:
            update[key] = data[key]
    if output_classes(entry) <= DIGIT_CLASSES:
        update["negatives"] = 0.0
    elif settings.negatives <= 0:
        raise InvalidRequest(
            f"model {entry.ref} tells digits from non-digits; fine-tuning it without "
            "negatives would unlearn that: leave --negatives above 0"
        )
    return settings.model_copy(update=update)


@dataclass
class FeedbackRun:
    """A fine-tuning run's starting model and corrections, and how it compares at the end."""

    entry: ModelEntry
    settings: Settings
    finetune: FineTune
    held_images: np.ndarray
    held_labels: np.ndarray
    train_ids: list[str]
    held_ids: list[str]
    skipped: int  # "not a digit" corrections a 10-output model cannot learn

    @classmethod
    def prepare(cls, settings: Settings, run_dir: Path | None = None) -> FeedbackRun:
        """Resolve the start and split the corrections; with ``run_dir`` (``--resume``),
        take the ids that run recorded."""
        entry = start_entry(settings)
        settings = run_settings(settings, entry)
        model = load_torch_model(entry)
        classes = output_classes(entry)
        images, labels, ids = stored_corrections(settings)
        usable = labels < classes
        skipped = int((~usable).sum())
        if skipped:
            log.info(
                "skipping %d 'not a digit' corrections: %s has no such output", skipped, entry.ref
            )
        images, labels = images[usable], labels[usable]
        ids = [i for i, ok in zip(ids, usable, strict=True) if ok]
        if run_dir is not None and (run_dir / FEEDBACK_FILE).is_file():
            held, keep = _recorded(run_dir / FEEDBACK_FILE, ids)
            images, labels, ids = images[keep], labels[keep], [ids[k] for k in keep]
        else:
            held = held_out(ids, settings.feedback_holdout)
        n_train, n_held = int((~held).sum()), int(held.sum())
        if n_train < MIN_TRAIN or n_held < MIN_HELD_OUT:
            raise TooFewCorrections(
                f"too few corrections to fine-tune {entry.ref}: {n_train} to train on and "
                f"{n_held} held out (at least {MIN_TRAIN} and {MIN_HELD_OUT} needed; "
                f"{len(ids) + skipped} stored)"
            )
        finetune = FineTune(
            arch=entry.manifest["architecture"]["name"],
            args=dict(entry.manifest["architecture"].get("args", {})),
            weights=model.state_dict(),
            spec=entry.preprocessing,
            images=torch.from_numpy(np.ascontiguousarray(images[~held])),
            labels=torch.from_numpy(labels[~held]),
        )
        log.info("fine-tuning %s on %d corrections (%d held out)", entry.ref, n_train, n_held)
        return cls(
            entry,
            settings,
            finetune,
            images[held],
            labels[held],
            [i for i, h in zip(ids, held, strict=True) if not h],
            [i for i, h in zip(ids, held, strict=True) if h],
            skipped,
        )

    def save(self, run_dir: Path, result: dict[str, Any] | None = None) -> None:
        record: dict[str, Any] = {
            "from": self.entry.ref,
            "train_ids": self.train_ids,
            "held_out_ids": self.held_ids,
        }
        if result is not None:
            record["result"] = result
        atomic_write_json(run_dir / FEEDBACK_FILE, record)

    def section(self, trainer: Trainer, test: Evaluation) -> dict[str, Any]:
        """The manifest's ``feedback`` section (after calibration: it uses the thresholds)."""
        before = load_torch_model(self.entry).to(trainer.device)
        images = torch.from_numpy(np.ascontiguousarray(self.held_images))
        after_rule = Rejection.from_manifest(trainer.sections)
        before_rule = Rejection.from_manifest(self.entry.manifest)
        batches = trainer.settings.dry_run_batches if trainer.settings.dry_run else None
        mnist_before = evaluate(
            before,
            trainer.x_test,
            trainer.y_test,
            trainer.spec,
            trainer.device,
            trainer.settings.eval_batch_size,
            batches,
        )
        n = len(self.held_labels)
        return {
            "from": self.entry.ref,
            "corrections_used": len(self.train_ids),
            "corrections_held_out": n,
            "corrections_skipped": self.skipped,
            "held_out_accuracy": round(
                served_accuracy(trainer.model, after_rule, trainer, images, self.held_labels), 6
            ),
            "held_out_accuracy_before": round(
                served_accuracy(before, before_rule, trainer, images, self.held_labels), 6
            ),
            "mnist_test_accuracy": round(test.accuracy, 6),
            "mnist_test_accuracy_before": round(mnist_before.accuracy, 6),
            "holdout_share": trainer.settings.feedback_holdout,
        }


def served_accuracy(
    model: nn.Module, rule: Rejection, trainer: Trainer, images: torch.Tensor, labels: np.ndarray
) -> float:
    """Share of the images whose served answer is right (see the module docstring)."""
    logits = evaluate(
        model,
        images,
        torch.zeros(len(images), dtype=torch.int64),
        trainer.spec,
        trainer.device,
        trainer.settings.eval_batch_size,
    ).logits
    is_digit = np.array(rule.verdicts(logits)) == "digit"
    digits = logits[:, :DIGIT_CLASSES].argmax(1)
    right = np.where(labels == NOT_A_DIGIT, ~is_digit, is_digit & (digits == labels))
    return float(right.mean())


def _recorded(path: Path, ids: list[str]) -> tuple[np.ndarray, list[int]]:
    """The held-out mask and positions, in ``ids``, of the corrections a run recorded."""
    record = json.loads(path.read_text(encoding="utf-8"))
    wanted = {i: False for i in record["train_ids"]} | {i: True for i in record["held_out_ids"]}
    position = {i: k for k, i in enumerate(ids)}
    missing = [i for i in wanted if i not in position]
    if missing:
        raise InvalidRequest(
            f"{len(missing)} corrections this run trained on or held out are no longer "
            "stored (retention or deletion); start a new run instead of resuming",
            code="corrections_gone",
        )
    keep = sorted(position[i] for i in wanted)
    return np.array([wanted[ids[k]] for k in keep], dtype=bool), keep
