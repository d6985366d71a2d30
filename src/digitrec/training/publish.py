"""What a finished run leaves behind: the test report (confusion matrix, per-class metrics,
plots) in the run folder, and the selected model as a version in the registry, with its
manifest (architecture, preprocessing, data hashes, settings, commit, timings, metrics)
and model card."""

from __future__ import annotations

import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitrec import __version__
from digitrec.datasets import data_section
from digitrec.model import count_parameters, model_args
from digitrec.registry import MANIFEST, ONNX, WEIGHTS, ModelEntry, Registry
from digitrec.rejection import LABELS
from digitrec.report import (
    accuracy,
    confusion_matrix,
    mistake_items,
    per_class_metrics,
    plot_confusion,
    plot_curves,
    plot_mistakes,
    write_confusion_csv,
    write_per_class_csv,
)
from digitrec.training.checkpoint import weights_bytes
from digitrec.training.device import describe_device
from digitrec.training.loop import Evaluation, Trainer

RELIABILITY = "reliability.png"  # reliability diagram, in the run folder and the model's


def write_report(
    run_dir: Path, test: Evaluation, images: np.ndarray, history: list[dict[str, Any]]
) -> dict[str, Any]:
    """Confusion matrix, per-class metrics and plots of the final test evaluation."""
    cm = confusion_matrix(test.labels, test.probs.argmax(1))
    classes = per_class_metrics(cm)
    write_confusion_csv(run_dir / "confusion_matrix.csv", cm)
    write_per_class_csv(run_dir / "per_class.csv", classes)
    plot_confusion(run_dir / "confusion_matrix.png", cm)
    plot_curves(run_dir / "training_curves.png", history)
    plot_mistakes(
        run_dir / "worst_mistakes.png", images[: len(test.labels)], test.labels, test.probs
    )
    return {
        "test_accuracy": round(accuracy(cm), 6),
        "test_loss": round(test.loss, 6),
        "test_errors": int(cm.sum() - np.trace(cm)),
        "test_size": int(cm.sum()),
        "per_class": classes,
        "confusion_matrix": cm.tolist(),
        "worst_mistakes": mistake_items(images[: len(test.labels)], test.labels, test.probs),
    }


HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


def history_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The learning curves kept in the manifest (the run folder may be gone later)."""
    return [{c: h.get(c) for c in HISTORY_COLUMNS} for h in history]


def build_manifest(trainer: Trainer, run_id: str, metrics: dict[str, Any]) -> dict[str, Any]:
    s, history = trainer.settings, trainer.state["history"]
    return {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dry_run": s.dry_run,
        "architecture": {
            "name": s.arch,
            "args": model_args(trainer.model),
            "parameters": count_parameters(trainer.model),
        },
        "preprocessing": trainer.spec.to_dict(),
        "labels": LABELS[: trainer.classes],
        **trainer.sections,
        "input": {"shape": [1, 1, 28, 28], "dtype": "float32", "layout": "NCHW"},
        "data": {
            **data_section(trainer.data),  # dataset name, script, source and file hashes
            "train_size": len(trainer.x_train),
            "val_size": len(trainer.x_val),
            "test_size": len(trainer.x_test),
            "split_seed": s.split_seed,
        },
        "settings": s.training_dict(),
        "run": run_id,
        "git_commit": trainer.commit,
        "software": {
            "digitrec": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "device": describe_device(trainer.device, trainer.dtype),
        # How many processes trained it (not a setting: a run may resume on another
        # number, and N processes at the same global batch train the same recipe).
        "processes": trainer.world.describe(),
        "history": history_rows(history),
        "timings": {
            "train_seconds": round(trainer.state["seconds"], 2),
            "seconds_per_epoch": [h["seconds"] for h in history],
        },
        "metrics": metrics,
    }


def register(
    trainer: Trainer, run_id: str, metrics: dict[str, Any], export_onnx: bool = True
) -> ModelEntry:
    """Save the selected model as version ``run_id`` with its manifest and model card."""
    from digitrec.card import write_model_card

    registry = Registry.from_settings(trainer.settings)
    name = trainer.settings.model_name
    if (registry.root / name / run_id / MANIFEST).is_file():
        entry = registry.resolve(f"{name}:{run_id}")  # saved just before a kill: keep it
        entry.verify()
    else:
        reliability = trainer.run_dir / RELIABILITY
        writers: dict[str, Callable[[Path], object]] = {
            WEIGHTS: lambda p: p.write_bytes(weights_bytes(trainer.model)),
        }
        if reliability.is_file():
            writers[RELIABILITY] = lambda p: p.write_bytes(reliability.read_bytes())
        if export_onnx:
            from digitrec.export import onnx_writer

            writers[ONNX] = onnx_writer(trainer.model)
        entry = registry.save(name, run_id, build_manifest(trainer, run_id, metrics), writers)
    write_model_card(entry)
    return entry
