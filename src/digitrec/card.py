"""Model card: a page for people, written from the manifest (never retyped figures)."""

from __future__ import annotations

from typing import Any

from digitrec.config import MNIST
from digitrec.registry import ModelEntry
from digitrec.storage import atomic_write_text

CARD = "MODEL_CARD.md"


def summary(entry: ModelEntry) -> dict[str, Any]:
    """The served model's card as the API and web page show it."""
    m = entry.manifest
    metrics = m.get("metrics", {})
    return {
        "name": entry.name,
        "version": entry.version,
        "architecture": m["architecture"]["name"],
        "parameters": m["architecture"].get("parameters"),
        "test_accuracy": metrics.get("test_accuracy"),
        "test_size": metrics.get("test_size"),
        "val_accuracy": metrics.get("val_accuracy"),
        "trained_at": m.get("created_at"),
        "epochs": metrics.get("epochs"),
        "train_seconds": m.get("timings", {}).get("train_seconds"),
        "device": m.get("device"),
        "dry_run": bool(m.get("dry_run", False)),
        "preprocessing": m.get("preprocessing", {}),
        "feedback": m.get("feedback"),
        "rejection": _rejection_summary(m),
        "calibration": _calibration_summary(m),
    }


def _rejection_summary(m: dict[str, Any]) -> dict[str, Any] | None:
    section = m.get("rejection")
    if not section:
        return None
    chosen = section["validation"][section["method"]]
    return {
        "method": section["method"],
        "accept": section["accept"],
        "reject": section["reject"],
        "validation_auroc": chosen["auroc"],
        "validation_flagged": chosen["flagged"],
    }


def _calibration_summary(m: dict[str, Any]) -> dict[str, Any] | None:
    section = m.get("calibration")
    if not section:
        return None
    keys = ("temperature", "test_ece_before", "test_ece_after")
    return {k: section[k] for k in keys}


def render(entry: ModelEntry) -> str:
    s = summary(entry)
    m = entry.manifest
    metrics = m.get("metrics", {})
    acc = s["test_accuracy"]
    lines = [
        f"# Model card: {entry.ref}",
        "",
        "A convolutional network that reads one handwritten digit (0-9) from a 28x28 "
        "greyscale image prepared like MNIST (see *Preprocessing*).",
        "",
        "| | |",
        "|---|---|",
        f"| Architecture | `{s['architecture']}` {m['architecture'].get('args')} |",
        f"| Parameters | {s['parameters']:,} |",
        f"| Test accuracy | {acc * 100:.2f} % on {s['test_size']:,} "
        f"{_dataset(m['data'])} test images |"
        if acc is not None
        else "| Test accuracy | not measured |",
        f"| Test errors | {metrics.get('test_errors')} |",
        f"| Validation accuracy | {(s['val_accuracy'] or 0) * 100:.2f} % (selected epoch "
        f"{metrics.get('selected_epoch')} of {s['epochs']}) |",
        f"| Trained | {s['trained_at']} on {s['device']} in {s['train_seconds']} s |",
        f"| Commit | {m.get('git_commit') or 'unknown'} |",
        "",
        "## Training data",
        f"{_data_name(m['data'])}: {m['data']['train_size']:,} training images, "
        f"{m['data']['val_size']:,} held out for model selection (split seed "
        f"{m['data']['split_seed']}), {m['data']['test_size']:,} test images used only for "
        "this report.",
        *_feedback_lines(m),
        "",
        "## Preprocessing",
        "Crop to the ink, scale to fit a {box}x{box} box keeping the aspect ratio, centre of "
        "mass moved to the middle of {size}x{size}, then (x - {mean}) / {std}.".format(
            **s["preprocessing"]
        ),
        "",
        "## Per-class results (test)",
        "| digit | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for row in metrics.get("per_class", []):
        lines.append(
            f"| {row['digit']} | {row['precision']:.4f} | {row['recall']:.4f} | "
            f"{row['f1']:.4f} | {row['support']} |"
        )
    lines += ["", *_rejection_lines(m), "", "## Limits", _limits(m), ""]
    return "\n".join(lines)


def _dataset(data: dict[str, Any]) -> str:
    """MNIST (also for models from before imported datasets), or the dataset's name."""
    name = data.get("dataset", MNIST)
    return "MNIST" if name == MNIST else f"`{name}`"


def _data_name(data: dict[str, Any]) -> str:
    """The dataset, its script when not MNIST, and how its files were checked."""
    if data.get("dataset", MNIST) == MNIST:
        return "MNIST, verified by MD5"
    return f"Dataset {_dataset(data)} ({data.get('script')} digits), verified by SHA-256"


def _feedback_lines(m: dict[str, Any]) -> list[str]:
    fb = m.get("feedback")
    if not fb:
        return []
    return [
        "",
        f"Fine-tuned from `{fb['from']}` with {fb['corrections_used']} users' corrections mixed "
        f"into MNIST; {fb['corrections_held_out']} other corrections were held out to judge it:",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| Held-out corrections answered right | {fb['held_out_accuracy_before'] * 100:.1f} % | "
        f"{fb['held_out_accuracy'] * 100:.1f} % |",
        f"| MNIST test accuracy | {fb['mnist_test_accuracy_before'] * 100:.2f} % | "
        f"{fb['mnist_test_accuracy'] * 100:.2f} % |",
    ]


def _rejection_lines(m: dict[str, Any]) -> list[str]:
    lines = ["## Not a digit, and calibration"]
    cal = m.get("calibration")
    if cal:
        lines += [
            f"Confidence is calibrated by temperature scaling (T = {cal['temperature']}, "
            f"fitted on {cal['fitted_on']}): expected calibration error on "
            f"{_dataset(m['data'])} test "
            f"{cal['test_ece_before'] * 100:.2f} % before, {cal['test_ece_after'] * 100:.2f} % "
            "after.",
            "",
        ]
        if "reliability.png" in m.get("files", {}):
            lines += ["![Reliability diagram, MNIST test](reliability.png)", ""]
    rej = m.get("rejection")
    if not rej:
        lines.append("This model has no rejection classes: every answer is a digit.")
        return lines
    lines += [
        f"Verdicts use the `{rej['method']}` score ({rej['chosen_by']}). A score of at "
        f"least {rej['accept']:.6g} is a digit, below {rej['reject']:.6g} is not one digit, "
        "in between is unsure. Thresholds come from validation digits only.",
        "",
        "| method (validation) | AUROC | FPR at 95 % TPR | MNIST flagged | redrawn flagged |",
        "|---|---|---|---|---|",
    ]
    for name, v in rej["validation"].items():
        lines.append(
            f"| {name}{' (chosen)' if name == rej['method'] else ''} | {v['auroc']:.4f} | "
            f"{v['fpr_at_95_tpr'] * 100:.2f} % | {v['flagged']['mnist'] * 100:.2f} % | "
            f"{v['flagged']['redrawn'] * 100:.2f} % |"
        )
    lines += ["", "Held-apart figures: `digitrec evaluate --suite rejection`."]
    return lines


def _limits(m: dict[str, Any]) -> str:
    common = (
        "Trained on isolated, centred handwritten digits; blank images are refused. "
        "Accuracy on real drawings and photos depends on preprocessing and is measured "
        "separately (`digitrec evaluate --suite realistic`)."
    )
    if m.get("rejection"):
        return (
            common + " It says when an image does not look like one digit, but its "
            "negatives are generated (fonts, scribbles, shapes, MNIST digits side by side): "
            "kinds of input unlike any of them may still be read as a digit."
        )
    return (
        common + " It always answers with a digit, so letters, symbols and several digits "
        "at once give meaningless answers."
    )


def write_model_card(entry: ModelEntry) -> None:
    atomic_write_text(entry.path / CARD, render(entry))
