"""Train the script model (#14): one network that reads the digits of every script.

Classes ``10 * k + digit`` for the k-th script of ``ORDER`` (Latin first): one softmax
over every script's ten digits, so that ``script=auto`` compares scripts on one scale in
one forward pass, and ``script=NAME`` keeps that script's ten classes only. The data:
each ``fonts-SCRIPT`` dataset that ``digitrec data generate --script SCRIPT`` drew from
the training fonts (its test split, drawn from font families held out, is the test set
here and is never trained on), and MNIST's training digits for Latin. A share of each
script's training split is kept apart for choosing the epoch.

The model (``DigitNet`` with ``10 * len(ORDER)`` outputs) is exported to ONNX and
written with a manifest (classes, preprocessing, data, per-script accuracy on the
held-out fonts) to OUT, the folder the server loads it from.

    python scripts/train_script_model.py --home DIR --out src/digitrec/script_model/VERSION
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digitrec import negatives
from digitrec.config import Settings
from digitrec.data import load_mnist
from digitrec.datasets import load_dataset, read_manifest
from digitrec.export import export_onnx_file
from digitrec.model import create_model
from digitrec.preprocess import PreprocessSpec
from digitrec.registry import Registry
from digitrec.training.augment import AugmentConfig, augment_batch

ORDER = ("latin", "arabic_indic", "persian", "devanagari", "bengali", "thai", "kannada", "tamil")
VALIDATION_SHARE = 0.05  # of each script's training split, to choose the epoch
NEGATIVE_SHARE = 0.15  # non-digits (the last class) per digit image, as the digit model learns
PER_SCRIPT = 28_000  # training images of each other script
# MNIST training digits for Latin: twice as many, so that the model learns handwriting's
# variety well enough not to take a Latin digit for another script's (auto on MNIST test)
PER_LATIN = 56_000
# Latin digits sent through the variants of people's uploads (canvas exports, photos,
# JPEG screenshots, light on dark) and prepared from the file's bytes, as a share of
# every other script's digits are (script_digits.REALISTIC_SHARE): learnt from clean
# MNIST only, `auto` took an upload's marks for another script's
LATIN_REALISTIC_SHARE = 0.3
AUGMENT = AugmentConfig(rotation=10, scale=0.1, shear=0.15, translate=0.1, elastic=0.3)

Arrays = tuple[np.ndarray, np.ndarray]


def splits(
    settings: Settings,
    order: tuple[str, ...],
    per_script: int,
    seed: int,
    per_latin: int,
    latin_realistic: float = LATIN_REALISTIC_SHARE,
) -> dict[str, Arrays]:
    """train / val / test: 28x28 uint8 images and labels ``10 * script + digit``
    (``per_latin`` MNIST training digits, ``latin_realistic`` of them as uploaded;
    ``per_script`` of each other script)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        "train": ([], []),
        "val": ([], []),
        "test": ([], []),
    }
    for k, script in enumerate(order):
        if script == "latin":
            data: Any = load_mnist(settings, progress=False)
        else:
            data = load_dataset(settings, f"fonts-{script}", progress=False)
        keep = rng.permutation(len(data.train_labels))[
            : per_latin if script == "latin" else per_script
        ]
        train_x, train_y = data.train_images[keep], data.train_labels[keep]
        if script == "latin":
            train_x = as_uploaded(train_x, latin_realistic, rng)
        n_val = int(len(keep) * VALIDATION_SHARE)
        for name, idx in (("val", slice(0, n_val)), ("train", slice(n_val, None))):
            parts[name][0].append(train_x[idx])
            parts[name][1].append(10 * k + train_y[idx].astype(np.int64))
        parts["test"][0].append(data.test_images)
        parts["test"][1].append(10 * k + data.test_labels.astype(np.int64))
    mnist = load_mnist(settings, progress=False)
    for name, seed_name in (("train", "train"), ("val", "validation")):
        n = int(sum(len(y) for y in parts[name][1]) * NEGATIVE_SHARE)
        images, _ = negatives.training_pool(
            n, mnist.train_images, negatives.SEEDS[seed_name] + seed, PreprocessSpec()
        )
        parts[name][0].append(images)
        parts[name][1].append(np.full(n, 10 * len(order), np.int64))  # "not a digit"
    return {name: (np.concatenate(x), np.concatenate(y)) for name, (x, y) in parts.items()}


def as_uploaded(images: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of the 28x28 digits where ``share`` of them went through one of the realistic
    upload variants (``realistic``) and were prepared from the file's bytes."""
    from digitrec.errors import BlankImage
    from digitrec.preprocess import decode, prepare
    from digitrec.realistic import LIGHT_ON_DARK, VARIANTS

    variants = list({**VARIANTS, **LIGHT_ON_DARK}.values())
    out = images.copy()
    for i in np.flatnonzero(rng.random(len(images)) < share):
        make = variants[int(rng.integers(len(variants)))]
        with contextlib.suppress(BlankImage):  # kept as it is: the server would refuse it
            out[i] = prepare(decode(make(images[i], rng)), PreprocessSpec()).image
    return out


def as_served(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Each 28x28 image as the server prepares it when uploaded (ink map, layout and the
    digit model's stroke band): what the script model will see beside the digit model."""
    from PIL import Image

    from digitrec.errors import BlankImage
    from digitrec.preprocess import prepare

    out = images.copy()
    for i, image in enumerate(images):
        with contextlib.suppress(BlankImage):  # kept as it is: the server would refuse it
            out[i] = prepare(Image.fromarray(image), spec).image
    return out


def to_input(images: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    x = torch.from_numpy(images[:, None].astype(np.float32) / 255.0)
    return (x - spec.mean) / spec.std


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    model.eval()
    out = [model(to_input(images[i : i + 1000], spec)).numpy() for i in range(0, len(images), 1000)]
    return np.concatenate(out)


def train(
    data: dict[str, Arrays], classes: int, spec: PreprocessSpec, epochs: int, seed: int
) -> tuple[nn.Module, list[dict[str, float]]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = create_model("digitnet", classes=classes)
    x, y = data["train"]
    steps = epochs * (len(y) // 128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    history, best, best_state = [], -1.0, None
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(y), generator=gen).numpy()
        for start in range(0, len(order) - 127, 128):
            idx = order[start : start + 128]
            batch = augment_batch(
                torch.from_numpy(x[idx, None].astype(np.float32) / 255.0), AUGMENT, gen
            )
            loss = loss_fn(model((batch - spec.mean) / spec.std), torch.from_numpy(y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        val_x, val_y = data["val"]
        accuracy = float((predict(model, val_x, spec).argmax(1) == val_y).mean())
        history.append(
            {
                "epoch": epoch + 1,
                "val_accuracy": round(accuracy, 4),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(history[-1], flush=True)
        if accuracy > best:
            best, best_state = accuracy, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    return model.eval(), history


def per_script(
    logits: np.ndarray, labels: np.ndarray, order: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Accuracy on the test set of each script: the value with the script given (that
    script's ten classes only) and with any script (the class, its value)."""
    out = {}
    for k, script in enumerate(order):
        rows = labels // 10 == k
        digits = labels[rows] % 10
        given = logits[rows][:, 10 * k : 10 * k + 10].argmax(1)
        anywhere = logits[rows][:, : 10 * len(order)].argmax(1)
        out[script] = {
            "called_not_a_digit": round(
                float((logits[rows].argmax(1) == 10 * len(order)).mean()), 4
            ),
            "images": int(rows.sum()),
            "given": round(float((given == digits).mean()), 4),
            "any_script_value": round(float((anywhere % 10 == digits).mean()), 4),
            "script_found": round(float((anywhere // 10 == k).mean()), 4),
        }
    return out


def fonts_of(settings: Settings, order: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per script: the font families trained on and held out, and their Debian packages."""
    out = {}
    for script in order:
        if script == "latin":
            continue
        source = read_manifest(settings, f"fonts-{script}")["source"]
        out[script] = {
            "train": [g["family"] for g in source["fonts"]["train"]],
            "held_out": [g["family"] for g in source["fonts"]["held_out"]],
            "packages": source.get("packages", []),
            "per_digit": source.get("per_digit"),
        }
    return out


def model_card(manifest: dict[str, Any]) -> str:
    """MODEL_CARD.md: what each script was trained on, and how it reads held-out fonts."""
    from digitrec.scripts import digit_char

    rows = []
    for script, test in manifest["test"].items():
        fonts = manifest["fonts"].get(script)
        trained = ", ".join(fonts["train"]) if fonts else "MNIST training digits (handwriting)"
        held = ", ".join(fonts["held_out"]) if fonts else "MNIST test digits"
        digits = "".join(digit_char(script, d) for d in range(10))
        rows.append(
            f"| {script} | {digits} | {trained} | {held} | {test['given'] * 100:.2f} % "
            f"| {test['any_script_value'] * 100:.2f} % | {test['script_found'] * 100:.2f} % |"
        )
    training = manifest["training"]
    return (
        "# Script model\n\n"
        "One network reads the digits of every script below: class `10 * k + digit` for "
        "the k-th script, and a last class for non-digits. Served beside the digit model, "
        "for the requests that ask for another script than Latin: `script=auto` compares "
        "the scripts, `script=NAME` keeps that script's ten digits (see `multiscript.py`)."
        "\n\n"
        f"Trained {training['epochs']} epochs in {training['seconds']:.0f} s (seed "
        f"{training['seed']}) on {manifest['data']['train_images']:,} images "
        f"({manifest['data']['per_script']:,} per script, "
        f"{manifest['data'].get('per_latin', manifest['data']['per_script']):,} MNIST digits "
        f"for Latin, {manifest['data'].get('latin_realistic_share', 0):.0%} of them sent "
        "through the realistic upload variants); tested on font families never "
        "trained on, drawn with the same handwriting-like distortion.\n\n"
        "| script | digits | fonts trained on | held out (test) | test, script given "
        "| test, any script (value) | script found |\n|---|---|---|---|--:|--:|--:|\n"
        + "\n".join(rows)
        + "\n\n**Real handwriting**: no handwritten dataset of these scripts could be "
        "used here; the figures are for fonts made to look handwritten. To measure one you "
        "have: `digitrec data import ... --name NAME --script SCRIPT`, then `python "
        "benchmarks/bench_scripts.py --home DIR --dataset NAME`.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="where the fonts-* datasets are")
    parser.add_argument("--data-dir", type=Path, help="MNIST cache folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model to")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-script", type=int, default=PER_SCRIPT, help="training images each")
    parser.add_argument("--per-latin", type=int, default=PER_LATIN, help="MNIST training digits")
    parser.add_argument("--scripts", default=",".join(ORDER), help="comma-separated, Latin first")
    parser.add_argument(
        "--draw",
        type=int,
        metavar="PER_DIGIT",
        help="first draw each script's digits from its fonts, PER_DIGIT training images of "
        "each value (`digitrec data generate --force`); default: use those drawn before",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(home=args.home, **({"data_dir": args.data_dir} if args.data_dir else {}))
    spec = PreprocessSpec()
    started = time.perf_counter()
    order = tuple(args.scripts.split(","))
    if args.draw:
        from digitrec.script_digits import generate

        for script in order[1:]:
            generate(settings, script, per_digit=args.draw, force=True)
            print(f"drew {script} digits ({time.perf_counter() - started:.0f} s)", flush=True)
    served = Registry.from_settings(Settings()).shipped().preprocessing  # the digit model's
    data = {
        name: (as_served(x, served), y)
        for name, (x, y) in splits(
            settings, order, args.per_script, args.seed, args.per_latin
        ).items()
    }
    print(f"prepared as served in {time.perf_counter() - started:.0f} s", flush=True)
    model, history = train(data, 10 * len(order) + 1, spec, args.epochs, args.seed)
    seconds = round(time.perf_counter() - started, 1)
    test_x, test_y = data["test"]
    results = per_script(predict(model, test_x, spec), test_y, order)
    args.out.mkdir(parents=True, exist_ok=False)
    export_onnx_file(model, args.out / "model.onnx")
    manifest = {
        "kind": "script-digits",
        "scripts": list(order),
        "classes": "10 * index of the script in `scripts` + digit; the last: not a digit",
        "not_a_digit": True,
        "preprocessing": {
            "mean": spec.mean,
            "std": spec.std,
            "size": spec.size,
            "images": "as the server prepares uploads for the digit model (stroke band "
            f"{list(served.stroke_band) if served.stroke_band else None})",
        },
        "architecture": {"name": "digitnet", "classes": 10 * len(order) + 1},
        "data": {
            "per_script": args.per_script,
            "per_latin": args.per_latin,
            "latin": "MNIST training digits; test: MNIST test",
            "latin_realistic_share": LATIN_REALISTIC_SHARE,
            "other scripts": "fonts-SCRIPT datasets (digitrec data generate); test: held-out fonts",
            "train_images": len(data["train"][1]),
            "validation_share": VALIDATION_SHARE,
        },
        "training": {
            "epochs": args.epochs,
            "seed": args.seed,
            "seconds": seconds,
            "history": history,
        },
        "test": results,
        "fonts": fonts_of(settings, order),
        "sha256": hashlib.sha256((args.out / "model.onnx").read_bytes()).hexdigest(),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (args.out / "MODEL_CARD.md").write_text(model_card(manifest))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
