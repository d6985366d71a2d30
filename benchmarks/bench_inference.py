"""Model and preprocessing time, in one process, on the shipped model.

1. Model time per image at batch 1 and 256: PyTorch eager vs ONNX Runtime on the same
   weights (the shipped safetensors and its ONNX export), 1 and 2 threads. Only the
   forward pass is timed (``predictor.backend``), after warm-up.
2. ``Predictor.preprocess`` per input kind (canvas PNG, 12 MP phone JPEG, 28x28 PNG,
   1000x1000 WebP), split into its stages (decode, ink map, MNIST layout), with a check
   that JPEG draft mode decodes big photos at reduced scale, and cProfile of the canvas and
   JPEG paths: where the time goes.

    python benchmarks/bench_inference.py            # about a minute
    python benchmarks/bench_inference.py --quick    # a few seconds per figure less
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common import (
    INPUTS,
    bundled_model,
    machine_info,
    ratio,
    repeat,
    save_results,
    summarize,
    table,
)
from digitrec.predict import Predictor
from digitrec.preprocess import decode, ink_map, mnist_layout, prepare

BATCHES = (1, 256)
THREADS = (1, 2)
BACKENDS = ("torch", "onnx")


# --- model time ----------------------------------------------------------------------------


def model_times(entry: Any, budget_s: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch

    rng = np.random.default_rng(0)
    batches = {b: rng.normal(0, 1, (b, 1, 28, 28)).astype(np.float32) for b in BATCHES}
    rows, outputs = [], {}
    for threads in THREADS:
        for backend in BACKENDS:
            predictor = Predictor(entry, backend=backend, threads=threads)
            for batch in BATCHES:
                x = batches[batch]
                if backend == "torch":
                    torch.set_num_threads(threads)  # process-wide: set before every figure
                times = repeat(
                    lambda p=predictor, x=x: p.backend(x),
                    min_reps=200 if batch == 1 else 10,
                    min_seconds=budget_s,
                    warmup=20 if batch == 1 else 3,
                )
                per_image = summarize([t / batch for t in times], scale=1e6)  # microseconds
                rows.append(
                    {
                        "backend": backend,
                        "threads": threads,
                        "batch": batch,
                        "us_per_image_p50": per_image["p50"],
                        "us_per_image_p99": per_image["p99"],
                        "images_per_s": round(1e6 / per_image["p50"], 1),
                        "reps": per_image["n"],
                    }
                )
                outputs[(backend, batch)] = predictor.infer(x)
    agreement = {
        f"batch_{b}": {
            "max_abs_probability_diff": float(
                np.abs(outputs[("torch", b)] - outputs[("onnx", b)]).max()
            ),
            "same_argmax": bool(
                (outputs[("torch", b)].argmax(1) == outputs[("onnx", b)].argmax(1)).all()
            ),
        }
        for b in BATCHES
    }
    return rows, agreement


def model_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PyTorch time over ONNX Runtime time for each (threads, batch): >1 means ONNX wins."""
    by = {(r["backend"], r["threads"], r["batch"]): r["us_per_image_p50"] for r in rows}
    return [
        {
            "threads": t,
            "batch": b,
            "torch_over_onnx": ratio(by[("torch", t, b)], by[("onnx", t, b)]),
            "onnx_2_threads_speedup": ratio(by[("onnx", 1, b)], by[("onnx", 2, b)])
            if t == 2
            else None,
        }
        for t in THREADS
        for b in BATCHES
    ]


# --- an int8 model (#17: a candidate, measured before it is kept) ---------------------------

CALIBRATION_DIGITS = 500  # MNIST training digits that set the int8 activation ranges


def int8_candidate(entry: Any, budget_s: float, realistic_n: int) -> dict[str, Any]:
    """The shipped ONNX model quantised to int8 (static, QDQ: weights int8, activations
    uint8, ranges from ``CALIBRATION_DIGITS`` training digits), against the float model:
    batch-1 time, MNIST test accuracy, verdicts that change, and accuracy on the realistic
    redrawn digits (``realistic_n`` of each variant, prepared once by the serving path)."""
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from digitrec.config import Settings
    from digitrec.data import load_mnist
    from digitrec.evaluate import model_outputs, redrawn_sets
    from digitrec.preprocess import normalize

    mnist = load_mnist(Settings(), progress=False)
    float_model = Predictor(entry, backend="onnx", threads=1)
    int8_model = Predictor(entry, backend="onnx", threads=1)
    session = float_model.backend.session  # type: ignore[attr-defined]
    name = session.get_inputs()[0].name
    calibration = normalize(
        mnist.train_images[:CALIBRATION_DIGITS, None].astype(np.float32) / 255.0,
        entry.preprocessing,
    )

    class Digits(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.rest = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.rest, None)
            return None if x is None else {name: x[None]}

    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(entry.file("model.onnx")), str(pre))
        quantize_static(
            str(pre),
            str(out),
            Digits(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        int8_session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        int8_model.backend.session = int8_session  # type: ignore[attr-defined]
        size_kb = {
            "float": entry.file("model.onnx").stat().st_size // 1024,
            "int8": out.stat().st_size // 1024,
        }
    one = calibration[:1].copy()
    us = {
        label: summarize(repeat(lambda p=p: p.infer(one), 200, budget_s, warmup=20), scale=1e6)[
            "p50"
        ]
        for label, p in (("float", float_model), ("int8", int8_model))
    }
    outputs = {
        label: model_outputs(p, mnist.test_images)
        for label, p in (("float", float_model), ("int8", int8_model))
    }
    verdicts = {label: np.array(float_model.rejection.verdicts(o)) for label, o in outputs.items()}
    redrawn = redrawn_sets(mnist.test_images, mnist.test_labels, realistic_n, entry.preprocessing)
    images = np.concatenate([v[0] for v in redrawn.values()])
    labels = np.concatenate([v[1] for v in redrawn.values()])

    def accuracy(p: Predictor, x: np.ndarray, y: np.ndarray) -> float:
        return round(float((model_outputs(p, x)[:, :10].argmax(1) == y).mean()) * 100, 2)

    return {
        "calibration_digits": CALIBRATION_DIGITS,
        "us_batch1_p50": us,
        "speedup": ratio(us["float"], us["int8"]),
        "file_kb": size_kb,
        "mnist_test_accuracy": {
            label: round(float((o[:, :10].argmax(1) == mnist.test_labels).mean()) * 100, 2)
            for label, o in outputs.items()
        },
        "verdicts_changed_mnist_test": round(
            float((verdicts["float"] != verdicts["int8"]).mean()) * 100, 2
        ),
        "realistic_accuracy": {
            "digits": len(labels),
            "float": accuracy(float_model, images, labels),
            "int8": accuracy(int8_model, images, labels),
        },
    }


# --- preprocessing -------------------------------------------------------------------------


def preprocess_times(
    predictor: Predictor, raws: dict[str, bytes], budget_s: float
) -> list[dict[str, Any]]:
    rows = []
    spec, limits = predictor.spec, predictor.limits
    for item in INPUTS:
        raw = raws[item.name]
        total = summarize(
            repeat(
                lambda raw=raw: predictor.prepare(predictor.open(raw)),
                min_reps=20,
                min_seconds=budget_s,
            )
        )
        img = decode(raw, limits)
        ink = ink_map(img)
        stages = {
            "decode": summarize(repeat(lambda raw=raw: decode(raw, limits), 10, budget_s / 3)),
            "ink_map": summarize(repeat(lambda img=img: ink_map(img), 10, budget_s / 3)),
            "mnist_layout": summarize(
                repeat(lambda ink=ink: mnist_layout(ink, spec), 10, budget_s / 3)
            ),
        }
        answer = predictor.predict_bytes(raw)
        rows.append(
            {
                "input": item.name,
                "description": item.description,
                "bytes": len(raw),
                "decoded_size": list(img.size),
                "decoded_mode": img.mode,
                "ink_map_shape": list(ink.shape),
                "ms": total,
                "stages_ms_p50": {k: v["p50"] for k, v in stages.items()},
                "digit": answer.digit,
                "confidence": answer.confidence,
            }
        )
    return rows


def jpeg_draft_check(raw: bytes, budget_s: float) -> dict[str, Any]:
    """Does draft mode decode the 12 MP JPEG at reduced scale, and what does that save?"""

    def full_decode() -> Image.Image:
        img = Image.open(io.BytesIO(raw))
        img.load()
        return img.convert("L")

    with_draft = decode(raw)
    without = full_decode()
    t_draft = summarize(repeat(lambda: decode(raw), 5, budget_s))["p50"]
    t_full = summarize(repeat(full_decode, 5, budget_s))["p50"]
    return {
        "file_size": list(Image.open(io.BytesIO(raw)).size),
        "decoded_with_draft": list(with_draft.size),
        "mode_with_draft": with_draft.mode,
        "decoded_without_draft": list(without.size),
        "draft_scale": round(without.size[0] / with_draft.size[0], 3),
        "decode_ms_with_draft": t_draft,
        "decode_ms_without_draft": t_full,
        "draft_speedup": ratio(t_full, t_draft),
    }


def profile(predictor: Predictor, raw: bytes, reps: int, top: int = 12) -> dict[str, Any]:
    """cProfile of ``reps`` calls: our functions by cumulative time, all by own time."""
    img = decode(raw, predictor.limits)
    prepare(img, predictor.spec)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for _ in range(reps):
        predictor.prepare(predictor.open(raw))
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    entries = []
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        where = Path(filename).name if filename != "~" else "builtin"
        entries.append(
            {
                "function": f"{where}:{func}",
                "line": line,
                "calls": ncalls // reps,
                "own_ms": round(tottime / reps * 1000, 3),
                "cumulative_ms": round(cumtime / reps * 1000, 3),
            }
        )
    ours = sorted(
        (e for e in entries if e["function"].startswith("preprocess.py:")),
        key=lambda e: -e["cumulative_ms"],
    )
    own = sorted(entries, key=lambda e: -e["own_ms"])[:top]
    return {
        "reps": reps,
        "ms_per_call_under_profiler": round(wall / reps * 1000, 3),
        "preprocess_functions_by_cumulative": ours,
        "top_by_own_time": own,
    }


# --- output --------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    print("\nModel time per image (forward pass only), microseconds")
    print(
        table(
            ["backend", "threads", "batch", "p50 us/img", "p99 us/img", "img/s"],
            [
                [
                    r["backend"],
                    r["threads"],
                    r["batch"],
                    r["us_per_image_p50"],
                    r["us_per_image_p99"],
                    r["images_per_s"],
                ]
                for r in results["model"]
            ],
        )
    )
    print(
        table(
            ["threads", "batch", "torch/onnx", "onnx 1->2 threads"],
            [
                [r["threads"], r["batch"], r["torch_over_onnx"], r["onnx_2_threads_speedup"]]
                for r in results["model_ratios"]
            ],
        )
    )
    print(f"same weights: {results['backend_agreement']}")
    q = results["int8"]
    print(
        f"int8 (static, QDQ) vs float ONNX at batch 1: {q['us_batch1_p50']} us ({q['speedup']}x); "
        f"MNIST test {q['mnist_test_accuracy']} %, verdicts changed "
        f"{q['verdicts_changed_mnist_test']} %; realistic {q['realistic_accuracy']}"
    )
    print("\nPredictor.preprocess per input, milliseconds")
    print(
        table(
            [
                "input",
                "bytes",
                "decoded",
                "p50 ms",
                "p99 ms",
                "decode",
                "ink_map",
                "layout",
                "digit",
            ],
            [
                [
                    r["input"],
                    r["bytes"],
                    "x".join(map(str, r["decoded_size"])),
                    r["ms"]["p50"],
                    r["ms"]["p99"],
                    r["stages_ms_p50"]["decode"],
                    r["stages_ms_p50"]["ink_map"],
                    r["stages_ms_p50"]["mnist_layout"],
                    r["digit"],
                ]
                for r in results["preprocess"]
            ],
        )
    )
    d = results["jpeg_draft"]
    print(
        f"\nJPEG draft mode: {d['file_size']} decoded as {d['decoded_with_draft']} "
        f"{d['mode_with_draft']} (1/{d['draft_scale']:g} scale) in "
        f"{d['decode_ms_with_draft']} ms vs {d['decode_ms_without_draft']} ms for a full "
        f"decode: {d['draft_speedup']}x"
    )
    for name, prof in results["profiles"].items():
        print(
            f"\nWhere {name} preprocessing time goes (cProfile, "
            f"{prof['ms_per_call_under_profiler']} ms/call under the profiler)"
        )
        print(
            table(
                ["function", "calls", "cumulative ms", "own ms"],
                [
                    [e["function"], e["calls"], e["cumulative_ms"], e["own_ms"]]
                    for e in prof["preprocess_functions_by_cumulative"][:8]
                ],
            )
        )
        print(
            table(
                ["top own time", "calls", "own ms"],
                [[e["function"], e["calls"], e["own_ms"]] for e in prof["top_by_own_time"][:6]],
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing budgets")
    parser.add_argument("--output", type=Path, help="result file (default benchmarks/results/)")
    args = parser.parse_args()
    budget = 0.5 if args.quick else 2.0

    machine = machine_info()
    entry = bundled_model()
    raws = {item.name: item.make() for item in INPUTS}
    rows, agreement = model_times(entry, budget)
    predictor = Predictor(entry, backend="onnx", threads=1)
    results: dict[str, Any] = {
        "model_ref": entry.ref,
        "model": rows,
        "model_ratios": model_ratios(rows),
        "backend_agreement": agreement,
        "preprocess": preprocess_times(predictor, raws, budget),
        "jpeg_draft": jpeg_draft_check(raws["phone_jpeg"], budget),
        "int8": int8_candidate(entry, budget, 100 if args.quick else 300),
        "profiles": {
            name: profile(predictor, raws[name], reps)
            for name, reps in (
                ("canvas_png", 20 if args.quick else 100),
                ("phone_jpeg", 5 if args.quick else 20),
            )
        },
    }
    print_report(results)
    path = save_results("bench_inference", results, machine, args.output)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
