"""Reading whole numbers (#13): the approaches compared on generated numbers.

Numbers of 2-6 MNIST *test* digits (``numbers.synth``, seeded), with clear gaps or
touching / slightly overlapping neighbours, sent as a canvas export or photographed on
paper, are read by

- A, ``read_number_components``: connected components, broken digits joined, touching
  digits cut where the model reads the parts best;
- B, ``read_number_projection``: the naive baseline, one piece per run of inked columns;
- C, the shipped sequence reader (``numbers.sequence``, a CNN + CTC trained by
  ``scripts/train_number_reader.py`` on numbers of MNIST *training* digits) reading the
  whole strip (per digit: 1 - edit distance / length, as it gives no boxes);
- D, ``read_number`` (served): A, with C saying how many digits each piece that may
  hold touching digits holds.

Per cell: whole-number accuracy (the number read, complete, equals the truth) and
per-digit accuracy (each true digit's box is matched to the read piece overlapping it
most, IoU at least ``MATCH_IOU``; right when that piece reads the digit). Latency: p50
of ``read_number`` on 4-digit canvas numbers against ``Predictor.predict_bytes`` on
one-digit canvas images, same process and model, interleaved.

    python benchmarks/bench_numbers.py [--n 300] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from common import RESULTS, bundled_model, machine_info, ratio, save_results, summarize, table
from digitrec.config import Settings
from digitrec.data import load_mnist
from digitrec.numbers.reader import (
    NumberReading,
    read_number,
    read_number_components,
    read_number_projection,
)
from digitrec.numbers.scoring import LENGTHS, SPACINGS, TARGETS, VARIANTS, accuracy
from digitrec.numbers.sequence import SequenceReader, shipped_reader
from digitrec.numbers.synth import SynthNumber, number_set
from digitrec.predict import Predictor
from digitrec.preprocess import ink_map, load, open_image
from digitrec.realistic import transparent

APPROACHES: dict[str, Callable[..., NumberReading]] = {
    "A_components": read_number_components,
    "B_projection": read_number_projection,
    "D_hybrid": read_number,
}
CTC = "C_ctc"  # approach C's name in the results


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def ctc_accuracy(reader: SequenceReader, numbers: list[SynthNumber]) -> dict[str, Any]:
    """Whole-number accuracy, and per digit 1 - edit distance / length (no boxes)."""
    started = time.perf_counter()
    texts = [reader.read_inks([ink_map(load(open_image(n.data)))])[0].text for n in numbers]
    pairs = list(zip(texts, numbers, strict=True))
    digits = sum(max(0, len(n.text) - edit_distance(t, n.text)) for t, n in pairs)
    return {
        "numbers": len(numbers),
        "whole": round(sum(t == n.text for t, n in pairs) / len(numbers), 4),
        "per_digit": round(digits / sum(len(n.text) for n in numbers), 4),
        "ms_per_number": round((time.perf_counter() - started) / len(numbers) * 1000, 2),
    }


def latency(predictor: Predictor, mnist: Any, runs: int, seed: int) -> dict[str, Any]:
    """p50 of ``read_number`` on a 4-digit canvas number against ``predict_bytes`` on one
    digit, interleaved: the digit as the page exports its 280x280 canvas (realistic.py's
    ``transparent``), and, for comparison, a one-digit number of the generator (a small
    image cropped round the digit)."""
    fours = [n.data for n in number_set(mnist, 20, lengths=(4,), seed=seed + 1)]
    touching = number_set(mnist, 20, lengths=(4,), spacing="touching", seed=seed + 3)
    rng = np.random.default_rng(seed + 2)
    canvases = [transparent(mnist.test_images[i], rng) for i in range(20)]
    ones = [n.data for n in number_set(mnist, 20, lengths=(1,), seed=seed + 2)]
    calls: dict[str, tuple[Callable[[bytes], object], list[bytes]]] = {
        "number": (lambda raw: read_number(raw, predictor), fours),
        "touching": (lambda raw: read_number(raw, predictor), [n.data for n in touching]),
        "canvas_digit": (predictor.predict_bytes, canvases),
        "cropped_digit": (predictor.predict_bytes, ones),
    }
    times: dict[str, list[float]] = {key: [] for key in calls}
    for i in range(runs):
        for key, (call, inputs) in calls.items():
            t0 = time.perf_counter()
            call(inputs[i % len(inputs)])
            times[key].append(time.perf_counter() - t0)
    ms = {key: summarize(values) for key, values in times.items()}
    return {
        "four_digit_number_ms": ms["number"],
        "four_touching_digits_ms": ms["touching"],
        "single_digit_ms": ms["canvas_digit"],
        "cropped_single_digit_ms": ms["cropped_digit"],
        "p50_ratio": ratio(ms["number"]["p50"], ms["canvas_digit"]["p50"]),
        "p50_ratio_to_cropped": ratio(ms["number"]["p50"], ms["cropped_digit"]["p50"]),
        "p50_ratio_touching": ratio(ms["touching"]["p50"], ms["canvas_digit"]["p50"]),
        "target_ratio": 3.0,
    }


def report(results: dict[str, Any]) -> str:
    """A Markdown table: whole / per-digit accuracy per cell and approach, then totals."""
    lines = ["# Reading whole numbers (#13)", "", f"Command: `{results['command']}`", ""]
    names = results["approaches"]
    headers = ["spacing", "variant", "length"] + [f"{a} whole / digit" for a in names]
    rows = []
    for cell in results["cells"]:
        scores = [cell[a] for a in names]
        rows.append(
            [cell["spacing"], cell["variant"], cell["length"]]
            + [f"{s['whole']:.3f} / {s['per_digit']:.3f}" for s in scores]
        )
    lines += [_markdown(headers, rows), "", "## Lengths 2-6 together, against the targets", ""]
    headers = ["spacing", "variant", "target"] + [f"{a} whole / digit" for a in names]
    rows = [
        [t["spacing"], t["variant"], t["target"] if t["target"] is not None else "-"]
        + [f"{t[a]['whole']:.3f} / {t[a]['per_digit']:.3f}" for a in names]
        for t in results["totals"]
    ]
    lat = results["latency"]
    lines += [
        _markdown(headers, rows),
        "",
        f"Latency p50: 4-digit canvas number {lat['four_digit_number_ms']['p50']} ms; "
        f"one digit on a 280x280 canvas {lat['single_digit_ms']['p50']} ms: ratio "
        f"{lat['p50_ratio']} (target at most {lat['target_ratio']}); one digit cropped "
        f"small {lat['cropped_single_digit_ms']['p50']} ms: ratio {lat['p50_ratio_to_cropped']}. "
        f"A 4-digit canvas number whose digits touch {lat['four_touching_digits_ms']['p50']} ms: "
        f"ratio {lat['p50_ratio_touching']}.",
        "",
        f"Sequence reader (C, and D's digit counts): {results['sequence_reader']}. "
        f"Wall time of the run: {results['wall_s']} s.",
        "",
    ]
    return "\n".join(lines)


def _markdown(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="numbers per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-runs", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="30 numbers per cell, 60 runs")
    args = parser.parse_args()
    started = time.perf_counter()
    n, runs = (30, 60) if args.quick else (args.n, args.latency_runs)
    machine = machine_info()
    mnist = load_mnist(Settings(), progress=False)
    predictor = Predictor(bundled_model(), "onnx", 1)
    ctc_model = shipped_reader()
    names = [*APPROACHES, *([CTC] if ctc_model is not None else [])]
    cells, totals = [], []
    for s, spacing in enumerate(SPACINGS):
        for v, variant in enumerate(VARIANTS):
            for length in LENGTHS:
                seed = args.seed * 1000 + 100 * s + 10 * v + length
                numbers = number_set(
                    mnist, n, lengths=(length,), spacing=spacing, variant=variant, seed=seed
                )
                cell: dict[str, Any] = {"spacing": spacing, "variant": variant, "length": length}
                for name, read in APPROACHES.items():
                    cell[name] = accuracy(predictor, numbers, read)
                if ctc_model is not None:
                    cell[CTC] = ctc_accuracy(ctc_model, numbers)
                print(table(["cell", *names], [[cell_name(cell), *_scores(cell, names)]]))
                cells.append(cell)
            total: dict[str, Any] = {
                "spacing": spacing,
                "variant": variant,
                "target": TARGETS.get((spacing, variant)),
            }
            for name in names:
                mine = [
                    c[name] for c in cells if (c["spacing"], c["variant"]) == (spacing, variant)
                ]
                total[name] = {
                    "whole": round(sum(m["whole"] for m in mine) / len(mine), 4),
                    "per_digit": round(sum(m["per_digit"] for m in mine) / len(mine), 4),
                }
            totals.append(total)
    results: dict[str, Any] = {
        "numbers_per_cell": n,
        "seed": args.seed,
        "split": "test",
        "cells": cells,
        "totals": totals,
        "latency": latency(predictor, mnist, runs, args.seed),
        "approaches": names,
        "sequence_reader": _sequence_info(ctc_model),
        "wall_s": round(time.perf_counter() - started),
    }
    path = save_results("numbers", results, machine)
    results["command"] = " ".join(["python benchmarks/bench_numbers.py", *_argv()])
    (RESULTS / "numbers.md").write_text(report(results))
    print(report(results))
    print(f"wrote {path}")


def _sequence_info(reader: SequenceReader | None) -> dict[str, Any] | None:
    """The shipped sequence reader's version and how it was trained (its manifest)."""
    if reader is None:
        return None
    m = reader.manifest
    return {"version": reader.version, "training": m.get("training"), "data": m.get("data")}


def cell_name(cell: dict[str, Any]) -> str:
    return f"{cell['spacing']}/{cell['variant']}/{cell['length']}"


def _scores(cell: dict[str, Any], names: list[str]) -> list[str]:
    return [f"{cell[a]['whole']:.3f}/{cell[a]['per_digit']:.3f}" for a in names]


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
