"""Model card: a page for people, written from the manifest (never retyped figures)."""

from __future__ import annotations

from typing import Any

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
    }


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
        f"| Test accuracy | {acc * 100:.2f} % on {s['test_size']:,} MNIST test images |"
        if acc is not None
        else "| Test accuracy | not measured |",
        f"| Test errors | {metrics.get('test_errors')} |",
        f"| Validation accuracy | {(s['val_accuracy'] or 0) * 100:.2f} % (selected epoch "
        f"{metrics.get('selected_epoch')} of {s['epochs']}) |",
        f"| Trained | {s['trained_at']} on {s['device']} in {s['train_seconds']} s |",
        f"| Commit | {m.get('git_commit') or 'unknown'} |",
        "",
        "## Training data",
        f"MNIST, verified by MD5: {m['data']['train_size']:,} training images, "
        f"{m['data']['val_size']:,} held out for model selection (split seed "
        f"{m['data']['split_seed']}), {m['data']['test_size']:,} test images used only for "
        "this report.",
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
    lines += [
        "",
        "## Limits",
        "Trained on isolated, centred handwritten digits. It always answers with a digit, so "
        "letters, symbols and several digits at once give meaningless answers; blank images "
        "are refused. Accuracy on real drawings and photos depends on preprocessing and is "
        "measured separately (`digitrec evaluate --suite realistic`).",
        "",
    ]
    return "\n".join(lines)


def write_model_card(entry: ModelEntry) -> None:
    atomic_write_text(entry.path / CARD, render(entry))
