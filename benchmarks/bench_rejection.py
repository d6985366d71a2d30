"""Not-a-digit and calibration: today's model against the one before, same sets, one run.

For each bundled model and each rejection method it can use (the plain maximum-softmax
baseline, the energy score, and the extra classes of a model trained with negatives),
thresholds are chosen on validation data with the one rule training uses
(``rejection.choose_thresholds``); then, on data that chose nothing (MNIST test, the
redrawn test digits, Fashion-MNIST, unseen fonts, unseen scribbles, several test digits),
it reports the share flagged, AUROC and FPR at 95 % TPR, and the calibration error.
It also times what the verdict adds to a request (``Predictor.answer`` with and without
rejection) and what stroke-width normalisation adds to preprocessing (each benchmark
input with and without the band), p50 over many interleaved calls.

    python benchmarks/bench_rejection.py [--limit 1000] [--negatives 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np

from common import INPUTS, canvas_png, machine_info, save_results, summarize
from digitrec import negatives
from digitrec.config import Settings
from digitrec.evaluate import Evaluator, model_outputs, redrawn_sets, served_input
from digitrec.predict import Predictor
from digitrec.preprocess import preprocess_bytes
from digitrec.registry import BUNDLED_ROOT, Registry
from digitrec.rejection import (
    SCORES,
    Rejection,
    choose_thresholds,
    flagged_share,
    separation,
)
from digitrec.training.loop import split_indices


def validation_rule(evaluator: Evaluator, method: str, n_redrawn: int) -> Rejection:
    """Thresholds for ``method`` from validation digits, exactly as training chooses them."""
    s, mnist, predictor = evaluator.settings, evaluator.mnist, evaluator.predictor
    _, val_idx = split_indices(len(mnist.train_images), s.val_size, s.split_seed)
    images, labels = mnist.train_images[val_idx], mnist.train_labels[val_idx]
    val = model_outputs(predictor, images)
    sets = redrawn_sets(
        images,
        labels,
        n_redrawn,
        predictor.spec,
        negatives.SEEDS["validation"],
        lambda raw: served_input(predictor, raw),
    )
    real = model_outputs(predictor, np.concatenate([kept for kept, _, _ in sets.values()]))
    score = SCORES[method]
    return choose_thresholds(method, score(val), score(real), predictor.rejection.temperature)


def measure(evaluator: Evaluator, args: argparse.Namespace) -> dict[str, Any]:
    predictor = evaluator.predictor
    held = {k: model_outputs(predictor, v) for k, v in evaluator.held_apart(args.negatives).items()}
    redrawn = evaluator.redrawn(args.limit)
    positives = {"mnist_test": evaluator.test_outputs} | {k: v[0] for k, v in redrawn.items()}
    pooled = np.concatenate(list(held.values()))
    methods = {}
    for method in evaluator.methods():
        own = predictor.rejection.method == method
        rule = (
            predictor.rejection
            if own
            else validation_rule(evaluator, method, args.calibration_variants)
        )
        score = SCORES[method]
        digits = score(evaluator.test_outputs)
        methods[method] = {
            "model's own": own,
            "accept": rule.accept,
            "reject": rule.reject,
            "negatives": {
                k: {"flagged": flagged_share(rule.verdicts(v)), **separation(digits, score(v))}
                for k, v in held.items()
            },
            "all_negatives": {
                "flagged": flagged_share(rule.verdicts(pooled)),
                **separation(digits, score(pooled)),
            },
            "positives": {k: flagged_share(rule.verdicts(v)) for k, v in positives.items()},
        }
    test = evaluator.test()
    realistic = evaluator.realistic(args.limit)
    return {
        "model": predictor.entry.ref,
        "classes": int(evaluator.test_outputs.shape[1]),
        "test_accuracy": test["test_accuracy"],
        "ece": {
            "mnist_test": {"before": test["ece_before"], "after": test["ece_after"]},
            **{
                k: {"before": v["ece_before"], "after": v["ece_after"]}
                for k, v in realistic["variants"].items()
            },
        },
        "realistic_accuracy": {k: v["accuracy"] for k, v in realistic["variants"].items()},
        "methods": methods,
        "answer_ms": answer_cost(predictor),
        "stroke_ms": stroke_cost(predictor),
    }


def answer_cost(predictor: Predictor, calls: int = 20000) -> dict[str, Any]:
    """Time of ``Predictor.answer`` (what runs after the forward pass), with the model's
    verdict and with rejection switched off, interleaved so both see the same machine."""
    raw = _sample_png()
    pre = predictor.prepare(predictor.open(raw))
    logits = predictor.infer(pre.tensor[None])[0]
    plain = dataclasses.replace(predictor.rejection, method=None)
    own = predictor.rejection
    times: dict[str, list[float]] = {"with_verdict": [], "without": []}
    for _ in range(calls):
        for key, rule in (("with_verdict", own), ("without", plain)):
            predictor.rejection = rule
            t0 = time.perf_counter()
            predictor.answer(pre, logits, 3, t0)
            times[key].append(time.perf_counter() - t0)
    predictor.rejection = own
    out = {k: summarize(v) for k, v in times.items()}
    out["added_p50_ms"] = round(out["with_verdict"]["p50"] - out["without"]["p50"], 4)
    return out


def _sample_png() -> bytes:
    return canvas_png()


def stroke_cost(predictor: Predictor, calls: int = 2000) -> dict[str, Any]:
    """What stroke-width normalisation adds to preprocessing, per realistic input (the
    benchmark inputs of ``common.INPUTS``): ``preprocess_bytes`` with the model's spec and
    with ``stroke_band=None``, interleaved. CPU time per call as well as wall time."""
    if predictor.spec.stroke_band is None:
        return {}
    plain = dataclasses.replace(predictor.spec, stroke_band=None)
    out: dict[str, Any] = {}
    for item in INPUTS:
        raw = item.make()
        reps = max(20, calls // 40) if len(raw) > 1_000_000 else calls
        wall: dict[str, list[float]] = {"with_band": [], "without": []}
        cpu: dict[str, float] = {"with_band": 0.0, "without": 0.0}
        for _ in range(reps):
            for key, spec in (("with_band", predictor.spec), ("without", plain)):
                c0, t0 = time.process_time(), time.perf_counter()
                preprocess_bytes(raw, spec)
                wall[key].append(time.perf_counter() - t0)
                cpu[key] += time.process_time() - c0
        row = {k: summarize(v) for k, v in wall.items()}
        row["added_p50_ms"] = round(row["with_band"]["p50"] - row["without"]["p50"], 4)
        row["cpu_ms_per_call"] = {k: round(v / reps * 1000, 4) for k, v in cpu.items()}
        out[item.name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="redrawn digits per variant")
    parser.add_argument("--negatives", type=int, default=2000, help="generated per set")
    parser.add_argument("--calibration-variants", type=int, default=300)
    args = parser.parse_args()
    machine = machine_info()
    settings = Settings()
    registry = Registry(BUNDLED_ROOT, extra_roots=())
    models = {}
    for entry in registry.list():
        started = time.perf_counter()
        predictor = Predictor(entry, "onnx", 1)
        models[entry.ref] = measure(Evaluator(settings, predictor), args)
        print(f"{entry.ref}: {time.perf_counter() - started:.0f} s")
    path = save_results(
        "bench_rejection",
        {"limit": args.limit, "negatives_per_set": args.negatives, "models": models},
        machine,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
