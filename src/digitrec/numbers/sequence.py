"""The shipped sequence reader (approach C's network, served): an ink strip -> its digits.

Owns the strip layout (``strip_ink``: the ink cropped, padded and scaled to
``STRIP_HEIGHT`` pixels high), loading the shipped ONNX file (``numbers/pretrained/``,
trained by ``scripts/train_number_reader.py`` through ``numbers.ctc``) and greedy CTC
decoding with where each digit was emitted. ONNX Runtime only: serving never imports
PyTorch. ``read_number`` asks it how many digits a piece that may hold touching digits
holds (``reader``).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from digitrec.preprocess import MARK_LEVEL

log = logging.getLogger(__name__)

STRIP_HEIGHT = 32  # pixels of the strip the network reads
MAX_STRIP_WIDTH = 320  # a wider strip is squeezed to this
PAD = 0.15  # space kept round the ink, strip heights
BLANK = 10  # CTC blank index after the ten digits
STRIDE = 4  # strip columns per output step of the network
SHIPPED_ROOT = Path(__file__).parent / "pretrained"  # <version>/model.onnx + manifest.json
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


def strip_ink(ink: np.ndarray) -> np.ndarray:
    """An ink map (float, ink 1) -> (STRIP_HEIGHT, width) float32 strip of its ink."""
    marked = ink > MARK_LEVEL
    rows, cols = np.flatnonzero(marked.any(1)), np.flatnonzero(marked.any(0))
    if rows.size == 0:
        return np.zeros((STRIP_HEIGHT, STRIP_HEIGHT), np.float32)
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    crop = np.pad(crop.astype(np.float32), round(PAD * crop.shape[0]))
    scale = STRIP_HEIGHT / crop.shape[0]
    width = int(np.clip(round(crop.shape[1] * scale), STRIP_HEIGHT // 2, MAX_STRIP_WIDTH))
    img = Image.fromarray(crop).resize((width, STRIP_HEIGHT), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, np.float32), 0, 1)


def ink_columns(ink: np.ndarray, shares: tuple[float, ...]) -> np.ndarray:
    """Where places along ``strip_ink(ink)`` (shares of its width) are in ``ink``'s
    columns: the strip is the ink's columns, padded, scaled evenly."""
    marked = ink > MARK_LEVEL
    rows, cols = np.flatnonzero(marked.any(1)), np.flatnonzero(marked.any(0))
    if rows.size == 0:
        return np.zeros(len(shares))
    pad = round(PAD * (rows[-1] + 1 - rows[0]))
    width = cols[-1] + 1 - cols[0] + 2 * pad
    return cols[0] - pad + np.asarray(shares, np.float64) * width


def batch_strips(strips: list[np.ndarray]) -> np.ndarray:
    """Strips -> (N, 1, STRIP_HEIGHT, width) zero-padded on the right to a multiple of
    ``STRIDE``."""
    width = max(s.shape[1] for s in strips)
    width += -width % STRIDE
    x = np.zeros((len(strips), 1, STRIP_HEIGHT, width), np.float32)
    for i, s in enumerate(strips):
        x[i, 0, :, : s.shape[1]] = s
    return x


@dataclass(frozen=True)
class SequenceReading:
    """What the sequence reader read in one strip."""

    text: str  # the digits, left to right
    positions: tuple[float, ...]  # each digit's emission, share of the strip's width
    confidence: float  # product of the emitted steps' probabilities
    digit_probs: tuple[np.ndarray, ...]  # each digit's step: the ten digits' shares


def greedy_decode(log_probs: np.ndarray, width: int) -> SequenceReading:
    """(T, 11) log-probabilities of one strip ``width`` columns wide -> best path,
    repeats merged and blanks dropped."""
    steps = max(1, width // STRIDE)
    best = log_probs[:steps].argmax(-1)
    text, positions, probs, logp = [], [], [], 0.0
    for t, b in enumerate(best.tolist()):
        if b != BLANK and (t == 0 or b != best[t - 1]):
            text.append(str(b))
            positions.append(round((t + 0.5) / steps, 4))
            digits = np.exp(log_probs[t, :BLANK].astype(np.float64))
            probs.append(digits / digits.sum())
            logp += float(log_probs[t, b])
    confidence = round(float(np.exp(logp)), 6)
    return SequenceReading("".join(text), tuple(positions), confidence, tuple(probs))


class SequenceReader:
    """The CRNN exported to ONNX, run by ONNX Runtime on one thread."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.folder = folder
        manifest = folder / MANIFEST_FILE  # how it was trained; absent while training
        self.manifest: dict[str, Any] = (
            json.loads(manifest.read_text()) if manifest.is_file() else {}
        )
        self.session = ort.InferenceSession(
            str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", self.folder.name))

    def read_strips(self, strips: list[np.ndarray]) -> list[SequenceReading]:
        """Strips (``strip_ink``) -> what each reads: one forward pass per strip, so a
        reading never depends on the others (right padding would reach the GRU's
        backward pass)."""
        out = []
        for s in strips:
            log_probs = self.session.run(None, {self.input_name: batch_strips([s])})[0][0]
            out.append(greedy_decode(log_probs, s.shape[1]))
        return out

    def read_inks(self, inks: list[np.ndarray]) -> list[SequenceReading]:
        """Ink maps (float, ink 1) -> what each reads."""
        return self.read_strips([strip_ink(ink) for ink in inks])


def shipped_folder(root: Path | None = None) -> Path | None:
    """The newest shipped version's folder (names sort by time) in ``root`` (default
    ``SHIPPED_ROOT``), None when none ships."""
    root = SHIPPED_ROOT if root is None else root
    folders = sorted(
        p.parent for p in root.glob(f"*/{MODEL_FILE}") if (p.parent / MANIFEST_FILE).is_file()
    )
    return folders[-1] if folders else None


@functools.cache
def shipped_reader() -> SequenceReader | None:
    """The shipped sequence reader, loaded once on first use; None (approach A alone)
    when no model ships or ONNX Runtime cannot load it."""
    folder = shipped_folder()
    if folder is None:
        log.info("no sequence reader ships in %s: touching digits are cut by A alone", SHIPPED_ROOT)
        return None
    try:
        return SequenceReader(folder)
    except Exception as exc:  # ImportError, or onnxruntime's own untyped errors
        log.warning("sequence reader in %s not loaded (%s): A alone", folder, exc)
        return None
