"""Approach C for whole numbers (#13): one small CNN + CTC reads a whole strip; training.

No segmentation: the number's ink (``preprocess.ink_map``) is laid out as a strip
(``sequence.strip_ink``) and a convolutional network followed by a bidirectional GRU
emits one distribution over "blank" and the ten digits per ``STRIDE`` columns; greedy
CTC decoding gives the digits. Owns the network (``CRNN``), its training on numbers of
``synth`` drawn fresh while it trains (``NumberStream``: MNIST *training* digits, clear
and touching, canvas and photo, 1-6 digits) and the ONNX export that ``sequence``
serves. Needs PyTorch: training and benchmarks only.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digitrec.data import Mnist
from digitrec.numbers.sequence import (
    BLANK,
    STRIDE,
    STRIP_HEIGHT,
    batch_strips,
    greedy_decode,
    strip_ink,
)
from digitrec.numbers.synth import make_number
from digitrec.preprocess import ink_map, load, open_image

LENGTHS = (1, 2, 3, 4, 5, 6)  # digits per training number, drawn evenly
TOUCHING_SHARE = 0.6  # share of training numbers whose neighbours touch
PHOTO_SHARE = 0.5  # share photographed on paper (the rest: canvas exports)
POOL = 6144  # training numbers held at once...
FRESH = 12  # ...of which this many are replaced by new ones every step
BATCH = 32
LR = 2e-3  # peak AdamW learning rate, cosine-decayed over the time budget
WARMUP = 0.03  # share of the time budget spent warming the learning rate up


def strip(raw: bytes) -> np.ndarray:
    """Image bytes -> the strip ``sequence`` reads (ink 1)."""
    return strip_ink(ink_map(load(open_image(raw))))


class CRNN(nn.Module):
    """Conv blocks to a 1-pixel-high feature map (a column every 4 pixels), BiGRU, linear."""

    def __init__(self, hidden: int = 96) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: tuple[int, int]) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(pool),
            )

        self.features = nn.Sequential(
            block(1, 32, (2, 2)),  # 16 x W/2
            block(32, 64, (2, 2)),  # 8 x W/4
            block(64, 96, (2, 1)),  # 4 x W/4
            block(96, 128, (4, 1)),  # 1 x W/4
        )
        self.rnn = nn.GRU(128, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, BLANK + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, W/4, 11) log-probabilities."""
        f = self.features(x).squeeze(2).transpose(1, 2)
        out, _ = self.rnn(f)
        return self.head(out).log_softmax(-1)


class NumberStream:
    """Training numbers of MNIST *training* digits, drawn from a seeded generator: a
    pool of ``POOL`` strips in which ``FRESH`` are replaced by new numbers each step, so
    the network rarely sees one twice and the pool never has to be regenerated."""

    def __init__(self, mnist: Mnist, seed: int, pool: int = POOL) -> None:
        self.images, self.labels = mnist.train_images, mnist.train_labels
        self.rng = np.random.default_rng(seed)
        self.drawn = 0
        pairs = [self.new() for _ in range(pool)]
        self.strips = [s for s, _ in pairs]
        self.texts = [t for _, t in pairs]

    def new(self) -> tuple[np.ndarray, str]:
        """One freshly generated number: its strip and its digits."""
        rng = self.rng
        picks = rng.integers(0, len(self.images), size=int(rng.choice(LENGTHS)))
        spacing = "touching" if rng.random() < TOUCHING_SHARE else "clear"
        variant = "photo" if rng.random() < PHOTO_SHARE else "canvas"
        number = make_number(
            [self.images[i] for i in picks],
            [int(self.labels[i]) for i in picks],
            rng,
            spacing,  # type: ignore[arg-type]
            variant,
        )
        self.drawn += 1
        return strip(number.data), number.text

    def batch(self) -> tuple[list[np.ndarray], list[str]]:
        """Refresh ``FRESH`` pool entries, then draw a batch from the pool."""
        pool = len(self.strips)
        for k in self.rng.integers(0, pool, size=FRESH):
            self.strips[k], self.texts[k] = self.new()
        idx = self.rng.integers(0, pool, size=BATCH)
        return [self.strips[i] for i in idx], [self.texts[i] for i in idx]


def ctc_loss(model: CRNN, strips: list[np.ndarray], texts: list[str]) -> torch.Tensor:
    x = torch.from_numpy(batch_strips(strips))
    lengths = torch.tensor([max(1, s.shape[1] // STRIDE) for s in strips])
    targets = torch.tensor([int(c) for t in texts for c in t])
    log_probs = model(x).transpose(0, 1)  # (T, N, C) for CTCLoss
    return nn.functional.ctc_loss(
        log_probs,
        targets,
        lengths,
        torch.tensor([len(t) for t in texts]),
        blank=BLANK,
        zero_infinity=True,
    )


def learning_rate(progress: float) -> float:
    """Linear warm-up, then cosine decay to zero, over the share of the budget spent."""
    if progress < WARMUP:
        return LR * progress / WARMUP
    return LR * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - WARMUP) / (1 - WARMUP))))


def train(
    stream: NumberStream,
    seconds: float,
    seed: int = 0,
    checkpoint: Callable[[CRNN, dict[str, Any]], None] | None = None,
    every: float = 300.0,
) -> tuple[CRNN, dict[str, Any]]:
    """Fit a CRNN on ``stream`` for about ``seconds`` of wall time; ``checkpoint(model,
    info)`` is called every ``every`` seconds and at the end (the model in eval mode)."""
    torch.manual_seed(seed)
    model = CRNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    started = last = time.perf_counter()
    info: dict[str, Any] = {"steps": 0, "loss": float("nan")}
    smooth = None
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(elapsed / seconds)
        model.train()
        loss = ctc_loss(model, *stream.batch())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        value = float(loss.detach())
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        info = {"steps": info["steps"] + 1, "loss": round(smooth, 4), "seconds": round(elapsed)}
        if checkpoint is not None and time.perf_counter() - last > every:
            checkpoint(model.eval(), {**info, "numbers_drawn": stream.drawn})
            last = time.perf_counter()
    model.eval()
    info["numbers_drawn"] = stream.drawn
    if checkpoint is not None:
        checkpoint(model, info)
    return model, info


def read(model: CRNN, strips: list[np.ndarray]) -> list[str]:
    """Greedy CTC decoding of each strip (PyTorch)."""
    out = []
    with torch.inference_mode():
        for s in strips:
            log_probs = model(torch.from_numpy(batch_strips([s])))[0].numpy()
            out.append(greedy_decode(log_probs, s.shape[1]).text)
    return out


def export_onnx(model: CRNN, path: Path) -> None:
    """Write ``model`` as ONNX with dynamic batch and width (legacy TorchScript exporter:
    one small graph with a GRU), to a temporary file then renamed. Its warnings (the
    exporter's deprecation; a GRU exported from a batch of 1, which is what is done here
    and what tests/test_number_hybrid.py checks against PyTorch) are silenced."""
    model = model.eval()
    example = torch.zeros(1, 1, STRIP_HEIGHT, 2 * STRIP_HEIGHT)
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export(model, example, tmp)
    tmp.replace(path)


def _export(model: CRNN, example: torch.Tensor, tmp: Path) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        dynamo=False,
        input_names=["strip"],
        output_names=["log_probs"],
        dynamic_axes={"strip": {0: "batch", 3: "width"}, "log_probs": {0: "batch", 1: "steps"}},
        opset_version=17,
    )
