"""Export a model to ONNX, checked against PyTorch's outputs before it is kept.

The ONNX file sits beside the weights in the model's registry folder and is recorded,
with its hash, in the manifest. Serving can then run on ONNX Runtime without PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digitrec.errors import DependencyMissing, ModelInvalid
from digitrec.registry import ONNX, ModelEntry, Registry

log = logging.getLogger(__name__)
TOLERANCE = 1e-5  # max difference of logits between PyTorch and ONNX Runtime, relative to
# the largest logit of the batch (random inputs give logits of 100 and more, where float32
# itself only resolves about 1e-5)
OPSET = 18


def export_onnx_file(model: nn.Module, path: Path) -> None:
    """Write ``model`` (eval mode, float32, dynamic batch) as ONNX to ``path``."""
    model = model.eval().float().to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    example = (torch.zeros(2, 1, 28, 28),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            verbose=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            external_data=False,
        )
    if program is None:  # pragma: no cover - only the legacy exporter returns None
        raise ModelInvalid("ONNX export produced nothing")
    program.save(str(path), external_data=False)
    verify_onnx(model, path)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs every optimisation pass and warns about torchvision ops we never use."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def verify_onnx(model: nn.Module, path: Path, tolerance: float = TOLERANCE) -> float:
    """Compare ONNX Runtime with PyTorch on random batches; return the largest difference
    (relative to the largest logit)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyMissing(
            "onnxruntime is needed to check the export: pip install 'digitrec[serve]'"
        ) from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in (1, 7, 64):
        x = torch.randn(batch, 1, 28, 28, generator=gen)
        with torch.inference_mode():
            expected = model.eval()(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        scale = max(1.0, float(np.abs(expected).max()))
        worst = max(worst, float(np.abs(got - expected).max()) / scale)
    if worst > tolerance:
        raise ModelInvalid(f"ONNX export differs from PyTorch by {worst:.2e} (> {tolerance:.0e})")
    log.info("ONNX export matches PyTorch (max relative |diff| %.2e)", worst)
    return worst


def onnx_writer(model: nn.Module) -> Callable[[Path], object]:
    """A registry file writer that exports a copy of ``model`` (training state untouched)."""

    def write(path: Path) -> None:
        import copy

        export_onnx_file(copy.deepcopy(model), path)

    return write


def export_entry(registry: Registry, entry: ModelEntry) -> ModelEntry:
    """`digitrec export --format onnx VERSION`: add model.onnx to an existing version."""
    from digitrec.predict import load_torch_model

    model = load_torch_model(entry)
    return registry.add_file(entry, ONNX, onnx_writer(model))
