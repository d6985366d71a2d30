"""Our training recipe against the tutorial recipe: same data, same machine, same run.

Both recipes train through ``digitrec.training.run_training`` on the same cached MNIST
(the same train/validation split), one after the other, never at once:

- ours: ``Settings()`` defaults (digitnet, AdamW + one-cycle, batched augmentation,
  bfloat16 autocast where the CPU has it);
- tutorial: tutorialnet, Adam at 1e-3, batch 64, constant rate, rotation 10 degrees and
  translation 0.1 only, float32.

Both get the same epoch budget (ours by default) or stop after the epoch that passes
``--time-cap`` minutes. An epoch hook measures TEST accuracy after every epoch, only to
time how fast 99.5 % and 99.6 % are reached; it does not steer training (the run still
selects its epoch on validation). Then one epoch of our recipe is profiled with manual
timers: batch assembly + augmentation, forward + loss, backward, optimizer step.

    python benchmarks/bench_train.py                                   # ~20-25 min
    python benchmarks/bench_train.py --epochs 2 --train-subset 2000    # a quick check
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.nn.functional as F

from common import machine_info, ratio, save_results, table
from digitrec.config import Settings
from digitrec.data import Mnist, load_mnist
from digitrec.model import count_parameters
from digitrec.preprocess import PreprocessSpec
from digitrec.training import run_training
from digitrec.training.device import autocast_context, autocast_dtype, resolve_device
from digitrec.training.loop import Trainer, evaluate

TARGETS = (0.995, 0.996)

# The recipe of PyTorch's MNIST example and the Flask tutorials built on it.
TUTORIAL = {
    "arch": "tutorialnet",
    "optimizer": "adam",
    "lr": 1e-3,
    "batch_size": 64,
    "schedule": "constant",
    "aug_rotation": 10.0,
    "aug_translate": 0.1,
    "aug_scale": 0.0,
    "aug_shear": 0.0,
    "aug_stroke": 0.0,
    "aug_elastic": 0.0,
    "mixed_precision": False,
}


class TimeCapReached(Exception):
    """Raised by the epoch hook after the epoch that passed the time cap."""


class PeakRss:
    """Samples this process's resident memory in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def recipe_settings(name: str, args: argparse.Namespace, home: Path) -> Settings:
    common = {"home": home / name, "data_dir": Settings().data_dir, "seed": args.seed}
    if args.epochs:
        common["epochs"] = args.epochs
    if args.train_subset:
        common["train_subset"] = args.train_subset
    return Settings(**common, **(TUTORIAL if name == "tutorial" else {}))


def train_recipe(name: str, settings: Settings, mnist: Mnist, cap_s: float) -> dict[str, Any]:
    """One recipe through run_training, with test accuracy measured after each epoch."""
    test_x = torch.from_numpy(mnist.test_images.copy())
    test_y = torch.from_numpy(mnist.test_labels.astype("int64"))
    device = resolve_device(settings.device)
    spec = PreprocessSpec()
    rows: list[dict[str, Any]] = []
    elapsed = 0.0

    def hook(model: torch.nn.Module, row: dict[str, Any]) -> dict[str, Any]:
        nonlocal elapsed
        started = time.perf_counter()
        test = evaluate(model, test_x, test_y, spec, device, settings.eval_batch_size)
        elapsed += row["seconds"]  # training + validation, without this test evaluation
        extra = {
            "test_accuracy": round(test.accuracy, 6),
            "test_loss": round(test.loss, 6),
            "elapsed_s": round(elapsed, 2),
            "test_eval_s": round(time.perf_counter() - started, 2),
        }
        rows.append({**row, **extra})
        print(
            f"  {name} epoch {row['epoch']}: {row['seconds']:.1f} s, test "
            f"{test.accuracy * 100:.2f} %, val {row['val_accuracy'] * 100:.2f} %",
            flush=True,
        )
        if elapsed >= cap_s:
            raise TimeCapReached
        return extra

    capped, final = False, None
    rss_at_start = psutil.Process().memory_info().rss
    with PeakRss() as rss:
        try:
            result = run_training(
                settings, progress=False, data=mnist, epoch_hook=hook, register_model=False
            )
            final = {
                "selected_epoch": result.metrics["selected_epoch"],
                "test_accuracy": result.metrics["test_accuracy"],
            }
        except TimeCapReached:
            capped = True
    return {
        "recipe": name,
        "settings": settings.training_dict(),
        "precision": "bfloat16 autocast"
        if autocast_dtype(device, settings.mixed_precision)
        else "float32",
        "epochs_run": len(rows),
        "time_capped": capped,
        "epochs": rows,
        "seconds_per_epoch": round(sum(r["seconds"] for r in rows) / len(rows), 2),
        "train_seconds": round(elapsed, 2),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "rss_at_start_mb": round(rss_at_start / 2**20, 1),
        "best_test_accuracy": max(r["test_accuracy"] for r in rows),
        "selected": final,
        "time_to": {f"{t * 100:g}%": time_to(rows, t) for t in TARGETS},
    }


def time_to(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    for r in rows:
        if r["test_accuracy"] >= target:
            return {"reached": True, "seconds": r["elapsed_s"], "epoch": r["epoch"]}
    return {"reached": False, "best": max(r["test_accuracy"] for r in rows)}


def profile_epoch(settings: Settings, mnist: Mnist, home: Path) -> dict[str, Any]:
    """One epoch of a recipe with manual timers; mirrors ``Trainer.train_epoch``."""
    trainer = Trainer(settings, home / "profile", data=mnist, progress=False)
    model, optimizer, scheduler = trainer.model, trainer.optimizer, trainer.scheduler
    model.train()
    parts = dict.fromkeys(
        ("batches_and_augmentation", "forward_and_loss", "backward", "optimizer_step"), 0.0
    )
    batches = trainer._batches(0)
    started = time.perf_counter()
    steps = 0
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            break
        t1 = time.perf_counter()
        with autocast_context(trainer.device, trainer.dtype):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=settings.label_smoothing)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        t4 = time.perf_counter()
        for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[key] += seconds
        steps += 1
    total = time.perf_counter() - started
    return {
        "recipe": "ours",
        "steps": steps,
        "batch_size": settings.batch_size,
        "images": len(trainer.x_train),
        "seconds": round(total, 2),
        "parameters": count_parameters(model),
        "parts_s": {k: round(v, 2) for k, v in parts.items()},
        "parts_share": {k: round(v / total, 3) for k, v in parts.items()},
        "other_s": round(total - sum(parts.values()), 2),
    }


def summary_rows(ours: dict[str, Any], base: dict[str, Any]) -> list[list[Any]]:
    def reach(r: dict[str, Any], key: str) -> Any:
        t = r["time_to"][key]
        return (
            f"{t['seconds']:.0f} s (ep {t['epoch']})"
            if t["reached"]
            else f"not reached (best {t['best'] * 100:.2f} %)"
        )

    def secs(r: dict[str, Any], key: str) -> float | None:
        t = r["time_to"][key]
        return t["seconds"] if t["reached"] else None

    rows = [
        [
            "seconds per epoch",
            ours["seconds_per_epoch"],
            base["seconds_per_epoch"],
            ratio(base["seconds_per_epoch"], ours["seconds_per_epoch"]),
        ]
    ]
    for key in ("99.5%", "99.6%"):
        rows.append(
            [
                f"time to {key} test",
                reach(ours, key),
                reach(base, key),
                ratio(secs(base, key), secs(ours, key)),
            ]
        )
    rows += [
        [
            "best test accuracy (%)",
            ours["best_test_accuracy"] * 100,
            base["best_test_accuracy"] * 100,
            None,
        ],
        [
            "selected epoch's test acc (%)",
            ours["selected"]["test_accuracy"] * 100 if ours["selected"] else None,
            base["selected"]["test_accuracy"] * 100 if base["selected"] else None,
            None,
        ],
        ["epochs run", ours["epochs_run"], base["epochs_run"], None],
        [
            "peak RSS (MB)",
            ours["peak_rss_mb"],
            base["peak_rss_mb"],
            ratio(base["peak_rss_mb"], ours["peak_rss_mb"]),
        ],
        [
            "process RSS at the recipe's start (MB)",
            ours["rss_at_start_mb"],
            base["rss_at_start_mb"],
            None,
        ],
    ]
    return rows


def print_report(results: dict[str, Any]) -> None:
    ours, base = results["ours"], results["tutorial"]
    n = max(ours["epochs_run"], base["epochs_run"])

    def cell(r: dict[str, Any], i: int, key: str, scale: float = 1.0) -> Any:
        return r["epochs"][i][key] * scale if i < len(r["epochs"]) else None

    print("\nPer epoch (seconds: training + validation; test accuracy in %)")
    print(
        table(
            ["epoch", "ours s", "ours test", "tutorial s", "tutorial test"],
            [
                [
                    i + 1,
                    cell(ours, i, "seconds"),
                    cell(ours, i, "test_accuracy", 100),
                    cell(base, i, "seconds"),
                    cell(base, i, "test_accuracy", 100),
                ]
                for i in range(n)
            ],
        )
    )
    print("\nOverall (ratio = tutorial / ours: > 1 means ours is faster or smaller)")
    print(table(["", "ours", "tutorial", "ratio"], summary_rows(ours, base)))
    prof = results["profile_one_epoch"]
    if prof is None:
        return
    print(
        f"\nOne epoch of our recipe, {prof['steps']} steps of {prof['batch_size']}: "
        f"{prof['seconds']} s"
    )
    print(
        table(
            ["part", "seconds", "share"],
            [[k, prof["parts_s"][k], prof["parts_share"][k]] for k in prof["parts_s"]],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs per recipe (default: ours, 15)")
    parser.add_argument("--train-subset", type=int, help="train on this many images only")
    parser.add_argument(
        "--time-cap",
        type=float,
        default=20.0,
        help="minutes per recipe; stop after the epoch that passes it",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profile", action="store_true", help="skip the one-epoch profile")
    parser.add_argument("--output", type=Path, help="result file (default benchmarks/results/)")
    args = parser.parse_args()

    machine = machine_info()
    mnist = load_mnist(Settings(), progress=False)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        home = Path(tmp)
        recipes = {}
        for name in ("ours", "tutorial"):
            print(f"training {name} ...", flush=True)
            recipes[name] = train_recipe(
                name, recipe_settings(name, args, home), mnist, args.time_cap * 60
            )
        profile = (
            None
            if args.no_profile
            else profile_epoch(recipe_settings("ours", args, home), mnist, home)
        )
    results = {
        "epoch_budget": args.epochs or Settings().epochs,
        "train_subset": args.train_subset,
        "time_cap_min": args.time_cap,
        "torch_threads": torch.get_num_threads(),
        **recipes,
        "profile_one_epoch": profile,
    }
    print_report(results)
    path = save_results("bench_train", results, machine, args.output)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
