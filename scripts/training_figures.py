"""Add the dashboard's training figures to a model published before training kept them.

Since the monitoring issue, ``digitrec train`` writes into each model's manifest its
learning curves (``history``, per epoch) and its most confident MNIST test mistakes
(``metrics.worst_mistakes``, with the 28x28 images). Models published earlier lack both;
this script measures the mistakes again on the MNIST test set, through the model as it is
served, and reads the curves from the model's run folder when it still exists:

    python scripts/training_figures.py src/digitrec/pretrained/digitnet/20261130-113428 \\
        --run ~/.digitrec/runs/20261130-113428

It refuses when its count of test errors differs from the manifest's by more than one
image (float32 on another engine may flip a near-tie), and writes the manifest atomically.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from digitrec.config import Settings
from digitrec.data import load_mnist
from digitrec.evaluate import model_outputs
from digitrec.predict import Predictor
from digitrec.registry import MANIFEST, ModelEntry
from digitrec.rejection import digit_probabilities
from digitrec.report import mistake_items
from digitrec.storage import atomic_write_json
from digitrec.training.publish import history_rows


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def read_history(run_dir: Path) -> list[dict[str, object]]:
    with (run_dir / "metrics.csv").open(encoding="utf-8", newline="") as handle:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    return history_rows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("model", type=Path, help="the model's folder (with manifest.json)")
    parser.add_argument("--run", type=Path, help="its run folder (with metrics.csv)")
    args = parser.parse_args(argv)

    manifest = json.loads((args.model / MANIFEST).read_text(encoding="utf-8"))
    settings = Settings()
    predictor = Predictor.for_entry(ModelEntry(args.model, manifest), settings)
    mnist = load_mnist(settings, progress=False)
    probs = digit_probabilities(model_outputs(predictor, mnist.test_images))
    errors = int((probs.argmax(1) != mnist.test_labels).sum())
    stored = manifest["metrics"].get("test_errors")
    if stored is not None and abs(errors - stored) > 1:
        print(f"error: {errors} test errors here, {stored} in the manifest", file=sys.stderr)
        return 1
    manifest["metrics"]["worst_mistakes"] = mistake_items(
        mnist.test_images, mnist.test_labels, probs
    )
    if args.run is not None:
        manifest["history"] = read_history(args.run)
    atomic_write_json(args.model / MANIFEST, manifest)
    curves = f", {len(manifest['history'])} epochs of curves" if args.run else ""
    worst = len(manifest["metrics"]["worst_mistakes"])
    print(f"{manifest['name']}:{manifest['version']}: {errors} test errors, {worst} kept{curves}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
