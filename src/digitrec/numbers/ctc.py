"""Approach C for whole numbers (#13): one small CNN + CTC reads the whole strip.

No segmentation: the number's ink (``preprocess.ink_map``) is cropped, scaled to a strip
``STRIP_HEIGHT`` pixels high, and a convolutional network followed by a bidirectional
GRU emits one distribution over "blank" and the ten digits per column group; greedy CTC
decoding gives the digits. Trained a few minutes on CPU on ``split="train"`` numbers of
``synth`` (benchmarks/bench_numbers.py --ctc). Needs PyTorch: a benchmark comparison,
not on the serving path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from digitrec.preprocess import MARK_LEVEL, ink_map, load, open_image

STRIP_HEIGHT = 32  # pixels of the strip the network reads
MAX_STRIP_WIDTH = 320  # a wider strip is squeezed to this
PAD = 0.15  # space kept round the ink, strip heights
BLANK = 10  # CTC blank index after the ten digits


def strip(raw: bytes) -> np.ndarray:
    """Image bytes -> (STRIP_HEIGHT, width) float32 ink strip (ink 1)."""
    ink = ink_map(load(open_image(raw)))
    rows = np.flatnonzero((ink > MARK_LEVEL).any(1))
    cols = np.flatnonzero((ink > MARK_LEVEL).any(0))
    if rows.size == 0:
        return np.zeros((STRIP_HEIGHT, STRIP_HEIGHT), np.float32)
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    pad = round(PAD * crop.shape[0])
    crop = np.pad(crop, pad)
    scale = STRIP_HEIGHT / crop.shape[0]
    width = int(np.clip(round(crop.shape[1] * scale), STRIP_HEIGHT // 2, MAX_STRIP_WIDTH))
    img = Image.fromarray(crop.astype(np.float32)).resize(
        (width, STRIP_HEIGHT), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(img, np.float32), 0, 1)


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


def _batch(strips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(s.shape[1] for s in strips)
    width += -width % 4
    x = np.zeros((len(strips), 1, STRIP_HEIGHT, width), np.float32)
    for i, s in enumerate(strips):
        x[i, 0, :, : s.shape[1]] = s
    lengths = torch.tensor([max(1, s.shape[1] // 4) for s in strips])
    return torch.from_numpy(x), lengths


def _batches(n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    while True:
        order = rng.permutation(n)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


def train(
    strips: list[np.ndarray], texts: list[str], seconds: float, seed: int = 0
) -> tuple[CRNN, dict[str, float]]:
    """Fit a CRNN on (strip, digits) pairs for about ``seconds`` of wall time."""
    torch.manual_seed(seed)
    model = CRNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_fn = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    rng = np.random.default_rng(seed)
    started, steps, loss_value = time.perf_counter(), 0, float("nan")
    model.train()
    for idx in _batches(len(strips), 32, rng):
        if time.perf_counter() - started > seconds:
            break
        x, lengths = _batch([strips[i] for i in idx])
        targets = [torch.tensor([int(c) for c in texts[i]]) for i in idx]
        log_probs = model(x).transpose(0, 1)  # (T, N, C) for CTCLoss
        loss = loss_fn(
            log_probs,
            torch.cat(targets),
            lengths,
            torch.tensor([len(t) for t in targets]),
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps, loss_value = steps + 1, float(loss.detach())
    model.eval()
    return model, {"steps": steps, "last_loss": round(loss_value, 4)}


def read(model: CRNN, strips: list[np.ndarray]) -> list[str]:
    """Greedy CTC decoding of each strip."""
    out = []
    with torch.inference_mode():
        for s in strips:
            x, _ = _batch([s])
            best = model(x)[0].argmax(-1).tolist()
            digits = [b for i, b in enumerate(best) if b != BLANK and (i == 0 or b != best[i - 1])]
            out.append("".join(str(d) for d in digits))
    return out
