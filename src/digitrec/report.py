"""Evaluation reports: confusion matrix, per-class metrics, and the plots of a run.

Metric functions work on plain numpy arrays; plots use matplotlib's Agg backend and
are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitrec.rejection import DIGIT_CLASSES
from digitrec.storage import atomic_write_bytes, atomic_write_text


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int = DIGIT_CLASSES) -> np.ndarray:
    """``cm[t, p]`` counts images of true class t predicted as p."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def per_class_metrics(cm: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [
        {
            "digit": d,
            "precision": round(float(precision[d]), 6),
            "recall": round(float(recall[d]), 6),
            "f1": round(float(f1[d]), 6),
            "support": int(support[d]),
        }
        for d in range(cm.shape[0])
    ]


def accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_confusion_csv(path: Path, cm: np.ndarray) -> None:
    header = ["true\\predicted", *[str(d) for d in range(cm.shape[1])]]
    rows = [[str(t), *cm[t].tolist()] for t in range(cm.shape[0])]
    atomic_write_text(path, csv_text(header, rows))


def write_per_class_csv(path: Path, metrics: list[dict[str, Any]]) -> None:
    header = ["digit", "precision", "recall", "f1", "support"]
    atomic_write_text(path, csv_text(header, [[m[h] for h in header] for m in metrics]))


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: Path, cm: np.ndarray, title: str = "Test confusion matrix") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    # Log-ish colour scale so that the few errors are visible next to the large diagonal.
    shown = np.log1p(cm)
    image = ax.imshow(shown, cmap="Blues")
    for t in range(cm.shape[0]):
        for p in range(cm.shape[1]):
            if cm[t, p]:
                colour = "white" if shown[t, p] > shown.max() * 0.6 else "black"
                ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=7, color=colour)
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    _save_figure(fig, path)


def plot_reliability(
    path: Path, before: dict[str, Any], after: dict[str, Any], title: str = "MNIST test"
) -> None:
    """Reliability diagram, before and after calibration (``calibration.reliability``
    output): per confidence bin, the share of right answers (bar) against the bin's mean
    confidence (dot on the diagonal when calibrated); the number of answers is written
    above each bar, since a bin of a few answers says little."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, data, label in ((axes[0], before, "before"), (axes[1], after, "after")):
        edges = np.asarray(data["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        acc = np.array([np.nan if a is None else a for a in data["accuracy"]], dtype=float)
        conf = np.array([np.nan if c is None else c for c in data["confidence"]], dtype=float)
        ax.bar(
            centres,
            np.nan_to_num(acc),
            width=edges[1] - edges[0],
            edgecolor="#124",
            color="#4a8",
            alpha=0.8,
            label="share right",
        )
        ax.plot(conf, conf, "o", color="#b30", markersize=4, label="mean confidence")
        for x, y, n in zip(centres, np.nan_to_num(acc), data["counts"], strict=True):
            if n:
                ax.text(x, min(y, 0.93) + 0.02, str(n), ha="center", fontsize=6, rotation=90)
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.05),
            xlabel="confidence",
            title=f"{title}, {label} temperature: ECE {data['ece'] * 100:.2f} %",
        )
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("share of answers right")
    _save_figure(fig, path)


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss", yscale="log")
    # Error rate on a log scale: the differences that matter (99.5 vs 99.7 %) stay visible.
    series = [
        ("train", "train_accuracy"),
        ("validation", "val_accuracy"),
        ("test", "test_accuracy"),
    ]
    for label, key in series:
        if history and key in history[0]:
            ax_acc.plot(epochs, [100 * (1 - h[key]) for h in history], marker="o", label=label)
    ax_acc.set(
        xlabel="epoch", ylabel="error (%)", title="Error rate (100 % - accuracy)", yscale="log"
    )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    _save_figure(fig, path)


def worst_mistakes(probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the wrong predictions made with the most confidence."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probs[wrong, predicted[wrong]])][:n]


WORST_MISTAKES = 12  # kept in a model's manifest, for the dashboard


def mistake_items(
    images: np.ndarray, labels: np.ndarray, probs: np.ndarray, n: int = WORST_MISTAKES
) -> list[dict[str, Any]]:
    """The ``n`` most confident mistakes as JSON: test index, true digit, what the model
    said with its probability, and the 28x28 image as a PNG data URL (~0.4 KB each)."""
    from digitrec.preprocess import png_data_url

    items = []
    for i in worst_mistakes(probs, labels, n):
        said = int(probs[i].argmax())
        items.append(
            {
                "index": int(i),
                "label": int(labels[i]),
                "predicted": said,
                "confidence": round(float(probs[i, said]), 4),
                "image": png_data_url(np.ascontiguousarray(images[i], dtype=np.uint8)),
            }
        )
    return items


def plot_mistakes(
    path: Path, images: np.ndarray, labels: np.ndarray, probs: np.ndarray, n: int = 36
) -> None:
    """Grid of the most confident test mistakes, titled 'pred (p) / true'."""
    plt = _pyplot()
    picks = worst_mistakes(probs, labels, n)
    cols = 6
    rows = max(1, -(-len(picks) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.7), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks, strict=False):
        pred = int(probs[i].argmax())
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"{pred} ({probs[i, pred]:.2f}) / {int(labels[i])}", fontsize=8, color="#b00")
    fig.suptitle("Worst test mistakes: predicted (probability) / true", fontsize=10)
    _save_figure(fig, path)
