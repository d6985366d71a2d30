"""Why the default recipe trains the way it does: one training step of digitnet, timed in
each variant we considered, in the same run.

Variants: float32 with the default memory layout, float32 channels-last, bfloat16 autocast
channels-last (the default where the CPU has bfloat16), and the same under
``torch.compile``. Also the per-sample PIL augmentation a tutorial uses against our batched
tensor augmentation, per epoch of 55,000 images.

    python benchmarks/bench_train_step.py             # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common import machine_info, ratio, save_results, table
from digitrec.config import Settings
from digitrec.model import create_model
from digitrec.training.augment import AugmentConfig, augment_batch

TRAIN_IMAGES = 55_000


def step_time(channels_last: bool, bf16: bool, compiled: bool, batch: int, steps: int) -> float:
    """Median seconds of one forward + backward + AdamW step on random data."""
    torch.manual_seed(0)
    model = create_model("digitnet").train()
    x = torch.randn(batch, 1, 28, 28)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compiled else model

    def one() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(forward(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5 if compiled else 3):  # compile and warm up
        one()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        one()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def pil_augment_epoch_seconds(images: np.ndarray, sample: int) -> float:
    """Per-sample PIL rotation + shift, as torchvision-style tutorials do, scaled to an epoch."""
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for i in range(sample):
        img = Image.fromarray(images[i % len(images)])
        angle = float(rng.uniform(-10, 10))
        shift = tuple(int(v) for v in rng.integers(-3, 4, size=2))
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, translate=shift)
        torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    return (time.perf_counter() - started) / sample * TRAIN_IMAGES


def batched_augment_epoch_seconds(images: np.ndarray, batch: int) -> float:
    s = Settings()
    cfg = AugmentConfig.from_settings(s)
    gen = torch.Generator().manual_seed(0)
    x_all = torch.from_numpy(images.copy())
    steps = math.ceil(TRAIN_IMAGES / batch)
    started = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        augment_batch(x_all[idx].unsqueeze(1).float().div_(255), cfg, gen)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    steps_per_epoch = math.ceil(TRAIN_IMAGES / args.batch)
    variants = [
        ("float32", False, False, False),
        ("float32, channels-last", True, False, False),
        ("bfloat16 autocast, channels-last (default)", True, True, False),
        ("bfloat16 autocast, channels-last, torch.compile", True, True, True),
    ]
    rows: list[dict[str, Any]] = []
    for name, channels_last, bf16, compiled in variants:
        print(f"  {name} ...", flush=True)
        seconds = step_time(channels_last, bf16, compiled, args.batch, args.steps)
        rows.append(
            {
                "variant": name,
                "step_ms": round(seconds * 1000, 2),
                "epoch_s": round(seconds * steps_per_epoch, 1),
            }
        )
    base = rows[0]["step_ms"]
    for row in rows:
        row["speedup_vs_float32"] = ratio(base, row["step_ms"])

    from digitrec.data import load_mnist

    images = load_mnist(Settings(), progress=False).train_images[:TRAIN_IMAGES]
    pil = pil_augment_epoch_seconds(images, sample=5000)
    batched = batched_augment_epoch_seconds(images, args.batch)
    augmentation = {
        "per_sample_pil_epoch_s": round(pil, 2),
        "batched_tensor_epoch_s": round(batched, 2),
        "speedup": ratio(pil, batched),
    }

    print(
        table(
            ["variant", "ms/step", "s/epoch", "x float32"],
            [[r["variant"], r["step_ms"], r["epoch_s"], r["speedup_vs_float32"]] for r in rows],
        )
    )
    print(
        f"augmentation per epoch: per-sample PIL {pil:.1f} s, batched tensors "
        f"{batched:.2f} s ({augmentation['speedup']}x)"
    )
    results = {
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "variants": rows,
        "augmentation": augmentation,
    }
    print(f"wrote {save_results('bench_train_step', results, machine_info())}")


if __name__ == "__main__":
    main()
