"""Predictor: the prediction pipeline of one model, on PyTorch or ONNX Runtime.

Four stages, the same for every caller: ``open`` (image bytes -> decoded image, limits
checked before any pixel is decoded), ``prepare`` (-> the 28x28 model input, with the
constants from the model's manifest), ``infer`` (a batch of inputs -> raw outputs) and
``answer`` (-> a ``Prediction``: top-k digits, probabilities, verdict).
``predict_bytes`` runs them in a row (`digitrec predict`); the server runs the first two
in its decoding threads or sandbox and ``infer`` on micro-batches (api/service.py);
evaluation runs ``infer`` and ``answer``'s scoring on whole sets (evaluate.py). Weights
are read only from safetensors or ONNX files whose hashes match the manifest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from digitrec import imagecheck
from digitrec.config import Settings
from digitrec.errors import DependencyMissing, InvalidRequest, ModelInvalid
from digitrec.preprocess import Limits, Preprocessed, decode, prepare
from digitrec.registry import ONNX, WEIGHTS, ModelEntry
from digitrec.rejection import DIGIT_CLASSES, Rejection, digit_probabilities
from digitrec.scripts import digit_char

if TYPE_CHECKING:
    from PIL import Image
    from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    digit: int
    confidence: float
    top: list[tuple[int, float]]  # (digit, probability), most likely first
    model_name: str
    model_version: str
    image: np.ndarray  # the 28x28 uint8 picture the model saw
    processing_ms: float
    verdict: str = "digit"  # a key of rejection.VERDICTS
    digit_score: float | None = None  # the rejection score; None: the model cannot reject
    probabilities: tuple[float, ...] = ()  # of each digit, calibrated (all ten)
    prediction_id: str | None = None  # set by the server, which keeps it for corrections
    arm: str | None = None  # the A/B test arm that served it, if any
    script: str = "latin"  # the writing system the digit was read in (multiscript.py)
    script_uncertain: bool = False  # another script reads another value almost as likely
    alternatives: tuple[Any, ...] = ()  # those readings (multiscript.Alternative)

    @property
    def character(self) -> str:
        """The digit as it is written in its script."""
        return digit_char(self.script, self.digit)

    @property
    def is_digit(self) -> bool:
        return self.verdict == "digit"

    def to_dict(self) -> dict[str, Any]:
        return {
            "digit": self.digit,
            "confidence": self.confidence,
            "is_digit": self.is_digit,
            "verdict": self.verdict,
            "digit_score": self.digit_score,
            "top": [
                {"digit": d, "probability": p, "character": digit_char(self.script, d)}
                for d, p in self.top
            ],
            "model": {"name": self.model_name, "version": self.model_version},
            "processing_ms": self.processing_ms,
            "prediction_id": self.prediction_id,
            "arm": self.arm,
            "script": self.script,
            "character": self.character,
            "script_uncertain": self.script_uncertain,
            "alternatives": [a.to_dict() for a in self.alternatives],
        }


class Backend(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 1, 28, 28) float32 -> (N, classes) logits (10, or 12 with rejection)."""
        ...


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise DependencyMissing(
            "PyTorch is not installed: pip install 'digitrec[train]', "
            "or use the ONNX model with --backend onnx"
        ) from exc
    return torch


def load_torch_model(entry: ModelEntry) -> nn.Module:
    """Rebuild the architecture from the manifest and load its safetensors weights."""
    _import_torch()
    from safetensors.torch import load_file

    from digitrec.model import create_model

    arch = entry.manifest["architecture"]
    model = create_model(arch["name"], **arch.get("args", {}))
    try:
        model.load_state_dict(load_file(str(entry.file(WEIGHTS))))
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelInvalid(f"model {entry.ref}: cannot load its weights ({exc})") from None
    return model.eval()


class TorchBackend:
    name = "torch"

    def __init__(self, entry: ModelEntry, threads: int | None = None) -> None:
        torch = _import_torch()
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model = load_torch_model(entry)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(batch)).numpy()


class OnnxBackend:
    name = "onnx"

    def __init__(self, entry: ModelEntry, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DependencyMissing(
                "ONNX Runtime is not installed: pip install 'digitrec[serve]'"
            ) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle intra-op threads would spin-wait after every run, burning a core that the
        # server needs for decoding (on 2 cores: 9 ms of CPU per request instead of 4).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(entry.file(ONNX)), options, providers=["CPUExecutionProvider"]
            )
        except ModelInvalid:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelInvalid(f"model {entry.ref}: cannot load model.onnx ({exc})") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def choose_backend(entry: ModelEntry, backend: str, threads: int | None) -> Backend:
    """``auto``: ONNX Runtime when the model has an ONNX file and it is installed."""
    if backend == "onnx":
        return OnnxBackend(entry, threads)
    if backend == "torch":
        return TorchBackend(entry, threads)
    if entry.has_file(ONNX):
        try:
            return OnnxBackend(entry, threads)
        except DependencyMissing:
            log.info("onnxruntime is not installed; using PyTorch")
    return TorchBackend(entry, threads)


class Predictor:
    """A loaded, verified model and the one way to turn images into answers."""

    def __init__(
        self,
        entry: ModelEntry,
        backend: str = "auto",
        threads: int | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.entry = entry
        self.spec = entry.preprocessing
        self.limits = limits or Limits()
        self.rejection = Rejection.from_manifest(entry.manifest)
        self.backend = choose_backend(entry, backend, threads)
        self.infer(np.zeros((1, 1, self.spec.size, self.spec.size), np.float32))  # warm up
        log.info("loaded model %s on %s", entry.ref, self.backend.name)

    @classmethod
    def from_settings(cls, settings: Settings) -> Predictor:
        from digitrec.lifecycle import served_entry

        return cls.for_entry(served_entry(settings), settings)

    @classmethod
    def for_entry(cls, entry: ModelEntry, settings: Settings) -> Predictor:
        """Load ``entry`` with the settings' backend, threads and upload limits."""
        limits = Limits.from_settings(settings)
        # One thread: batch-1 latency is best there (PyTorch is 3x slower with two), and
        # concurrent requests are batched rather than split across threads.
        return cls(entry, settings.backend, settings.inference_threads or 1, limits)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return self.entry.version

    @property
    def ref(self) -> str:
        return self.entry.ref

    # -- the four stages --
    def open(self, raw: bytes, checked: imagecheck.Structure | None = None) -> Image.Image:
        """Image file bytes -> decoded image, the upload limits checked first (``checked``:
        the structure walk's result, when the caller has done it with ``self.limits``)."""
        return decode(raw, self.limits, checked)

    def prepare(self, image: Image.Image) -> Preprocessed:
        """Decoded image -> model input, with this model's spec."""
        return prepare(image, self.spec)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 1, 28, 28) normalised float32 -> (N, classes) raw outputs (logits)."""
        return self.backend(np.ascontiguousarray(batch, dtype=np.float32))

    def digit_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, classes) outputs -> (N, 10) calibrated probabilities of each digit."""
        return digit_probabilities(logits, self.rejection.temperature)

    def answer(
        self, pre: Preprocessed, logits: np.ndarray, top_k: int, started: float
    ) -> Prediction:
        """Build the Prediction for one image from the model's outputs for it."""
        if not 1 <= top_k <= DIGIT_CLASSES:
            raise InvalidRequest(
                f"top_k must be between 1 and {DIGIT_CLASSES}", code="validation_error"
            )
        row = logits[None]
        probs = self.digit_probabilities(row)[0]
        score = self.rejection.score(row)
        verdict = self.rejection.verdicts(row, score)[0]
        order = np.argsort(-probs, kind="stable")[:top_k]
        top = [(int(d), round(float(probs[d]), 6)) for d in order]
        return Prediction(
            digit=top[0][0],
            confidence=top[0][1],
            top=top,
            model_name=self.name,
            model_version=self.version,
            image=pre.image,
            processing_ms=round((time.perf_counter() - started) * 1000, 3),
            verdict=verdict,
            digit_score=round(float(score[0]), 6) if self.rejection.method else None,
            probabilities=tuple(round(float(p), 6) for p in probs),
        )

    def predict_bytes(self, raw: bytes, top_k: int = 3) -> Prediction:
        """All four stages for one image, in this thread."""
        started = time.perf_counter()
        pre = self.prepare(self.open(raw))
        logits = self.infer(pre.tensor[None])[0]
        return self.answer(pre, logits, top_k, started)
