"""Train the sequence reader that ``read_number`` asks about touching digits (#13).

A CRNN + CTC (``numbers.ctc``) is trained for ``--seconds`` of wall time on numbers
generated while it trains from MNIST *training* digits 0-54999 (the last 5000 are kept
for validation), then exported to ONNX into ``--out`` with a manifest saying how:

    python scripts/train_number_reader.py --seconds 3000 --seed 0 \
        --out src/digitrec/numbers/pretrained/$(date -u +%Y%m%d-%H%M%S)

Every ``--checkpoint-every`` seconds the folder is rewritten (model.onnx, manifest.json
with the validation figures so far), so a run stopped early leaves a usable model. One
PyTorch thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitrec.config import Settings
from digitrec.data import Mnist, load_mnist
from digitrec.numbers import ctc
from digitrec.numbers.sequence import (
    MANIFEST_FILE,
    MAX_STRIP_WIDTH,
    MODEL_FILE,
    PAD,
    STRIP_HEIGHT,
    SequenceReader,
)
from digitrec.numbers.synth import make_number

log = logging.getLogger("train_number_reader")
VALIDATION = 5000  # the last MNIST training digits, never drawn for training
VAL_KINDS = [(s, v) for s in ("touching", "clear") for v in ("canvas", "photo")]


def held_out(mnist: Mnist) -> tuple[Mnist, Mnist]:
    """MNIST with its training digits split into training and validation digits."""
    cut = len(mnist.train_images) - VALIDATION
    train = Mnist(
        mnist.train_images[:cut], mnist.train_labels[:cut], mnist.test_images, mnist.test_labels
    )
    val = Mnist(
        mnist.train_images[cut:], mnist.train_labels[cut:], mnist.test_images, mnist.test_labels
    )
    return train, val


def validation_set(mnist: Mnist, per_kind: int, seed: int) -> list[tuple[str, np.ndarray, str]]:
    """``per_kind`` numbers of 2-6 validation digits per spacing and variant."""
    rng = np.random.default_rng(seed)
    out = []
    for spacing, variant in VAL_KINDS:
        for _ in range(per_kind):
            picks = rng.integers(0, len(mnist.train_images), size=int(rng.integers(2, 7)))
            n = make_number(
                [mnist.train_images[i] for i in picks],
                [int(mnist.train_labels[i]) for i in picks],
                rng,
                spacing,  # type: ignore[arg-type]
                variant,
            )
            out.append((f"{spacing}/{variant}", ctc.strip(n.data), n.text))
    return out


def validate(folder: Path, val: list[tuple[str, np.ndarray, str]]) -> dict[str, float]:
    """Whole-number accuracy of the exported file, per spacing/variant."""
    reader = SequenceReader(folder)
    readings = reader.read_strips([s for _, s, _ in val])
    kinds = sorted({k for k, _, _ in val})
    return {
        k: round(
            float(
                np.mean(
                    [r.text == t for (kk, _, t), r in zip(val, readings, strict=True) if kk == k]
                )
            ),
            4,
        )
        for k in kinds
    }


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def checkpointer(
    out: Path, args: argparse.Namespace, val: list[tuple[str, np.ndarray, str]]
) -> Any:
    """``ctc.train``'s checkpoint callback: export, validate, write the manifest."""
    started = time.perf_counter()

    def save(model: ctc.CRNN, info: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        ctc.export_onnx(model, out / MODEL_FILE)
        manifest = {
            "name": "number-reader",
            "version": out.name,
            "architecture": "crnn-ctc",
            "arguments": {"hidden": model.rnn.hidden_size},
            "strip": {"height": STRIP_HEIGHT, "max_width": MAX_STRIP_WIDTH, "pad": PAD},
            "outputs": "log-probabilities per 4 strip columns: digits 0-9, blank 10",
            "data": {
                "source": f"numbers.synth from MNIST training digits 0-{59999 - VALIDATION}",
                "lengths": list(ctc.LENGTHS),
                "touching_share": ctc.TOUCHING_SHARE,
                "photo_share": ctc.PHOTO_SHARE,
                "pool": args.pool,
                "fresh_per_step": ctc.FRESH,
                "batch": ctc.BATCH,
            },
            "training": {
                "seed": args.seed,
                "budget_s": args.seconds,
                "wall_s": round(time.perf_counter() - started),
                "threads": args.threads,
                "lr": ctc.LR,
                "torch": torch.__version__,
                **info,
            },
            "validation": {
                "digits": f"MNIST training digits {60000 - VALIDATION}-59999 (never trained on)",
                "numbers_per_kind": args.val_n,
                "lengths": "2-6",
                "whole_number_accuracy": validate(out, val),
            },
            "git_commit": git_commit(),
            "sha256": {MODEL_FILE: hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest()},
        }
        tmp = out / (MANIFEST_FILE + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.replace(out / MANIFEST_FILE)
        log.info("checkpoint %s: %s", info, manifest["validation"]["whole_number_accuracy"])

    return save


def revalidate(out: Path, val: list[tuple[str, np.ndarray, str]]) -> None:
    """Rewrite the validation figures of the model in ``out`` (its manifest otherwise
    unchanged)."""
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["validation"]["whole_number_accuracy"] = validate(out, val)
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / MANIFEST_FILE)
    log.info("validation: %s", manifest["validation"]["whole_number_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3000, help="training wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for model.onnx + manifest")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    parser.add_argument("--val-n", type=int, default=100, help="validation numbers per kind")
    parser.add_argument("--pool", type=int, default=ctc.POOL, help="numbers held at once")
    parser.add_argument(
        "--validate-only", action="store_true", help="recompute --out's validation figures"
    )
    parser.add_argument("--checkpoint-every", type=float, default=300, help="seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    train_digits, val_digits = held_out(load_mnist(Settings(), progress=False))
    val = validation_set(val_digits, args.val_n, args.seed + 1)
    if args.validate_only:
        revalidate(args.out, val)
        return
    stream = ctc.NumberStream(train_digits, args.seed, args.pool)
    log.info("pool of %d numbers ready; training %.0f s", args.pool, args.seconds)
    save = checkpointer(args.out, args, val)
    ctc.train(stream, args.seconds, args.seed, save, args.checkpoint_every)


if __name__ == "__main__":
    main()
