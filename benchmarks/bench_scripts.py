"""Digits of other writing systems (#14): per script, on fonts held out of training.

Every test image goes through the serving path as an upload: a PNG file, decoded and
prepared as the server does (``Predictor.predict_bytes``), then read in a script by the
shipped script model exactly as the API reads it (``multiscript.read_in``: the same
``ScriptModel.read``). The test sets: each ``fonts-SCRIPT`` dataset's test split (drawn
by ``digitrec data generate`` from font families never trained on, with handwriting-like
distortion, half of it exported as a canvas or photographed), and MNIST test for Latin.

Per script: whole numbers of 2-4 test digits read in the script, with ``auto`` and with
Latin cuts (``numbers``); top-1 accuracy of the value with the script given and with ``auto``, how
often either called the digit "not a digit" (its value still counts in top-1, as MNIST
accuracy counts the digits the digit model rejects), how often ``auto`` found the
script, and how often it reported the script as uncertain. For
MNIST test: the default model alone, with ``script=latin`` and with ``auto``, as clean
28x28 files and as people upload them (``bench_realistic.realistic_mix``: canvas
exports, photos, JPEG screenshots, light on dark). Model time
per image at batch 1: the digit model alone, and with the script model beside it.

    python benchmarks/bench_scripts.py --home DIR   # DIR holds the fonts-* datasets
    python benchmarks/bench_scripts.py --home DIR --dataset madbase   # and one you imported
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_realistic import realistic_mix
from common import machine_info, save_results, table
from digitrec.config import Settings
from digitrec.data import load_mnist
from digitrec.datasets import load_dataset
from digitrec.errors import DigitrecError
from digitrec.multiscript import LATIN, REJECTED, load_shipped, read_in
from digitrec.predict import Predictor
from digitrec.preprocess import to_png

TARGETS = {"given": 0.97, "auto": 0.95, "latin": 0.997}  # issue #14
LATENCY_ROUNDS = 5  # HTTP rounds of each plan, interleaved


def read_all(
    predictor: Predictor, images: np.ndarray | list[bytes], scripts: tuple[str, ...]
) -> dict[str, list[Any]]:
    """Each image uploaded (an array as a PNG; bytes as they are), read once by the digit
    model, then in each of ``scripts``; a refused file (blank) counts as wrong."""
    out: dict[str, list[Any]] = {s: [] for s in scripts}
    for image in images:
        try:
            body = image if isinstance(image, bytes) else to_png(image)
            answer = predictor.predict_bytes(body, top_k=3)
        except DigitrecError:
            for s in scripts:
                out[s].append(None)
            continue
        for s in scripts:
            out[s].append(read_in(answer, s, 3))
    return out


def latin_digits(
    predictor: Predictor, images: np.ndarray | list[bytes], labels: np.ndarray
) -> dict[str, Any]:
    """Latin digits read with ``script=latin`` and with ``auto``: top-1, how often each
    called them not a digit, and how often ``auto`` took them for another script."""
    read = read_all(predictor, images, ("latin", "auto"))
    return {
        "images": len(labels),
        "latin": right(read["latin"], labels),
        "auto": right(read["auto"], labels),
        "latin_not_a_digit": rejected(read["latin"]),
        "auto_not_a_digit": rejected(read["auto"]),
        "auto_not_latin": round(
            float(np.mean([a is not None and a.script != LATIN for a in read["auto"]])), 4
        ),
    }


def right(answers: list[Any], labels: np.ndarray) -> float:
    return round(
        float(
            np.mean([a is not None and a.digit == y for a, y in zip(answers, labels, strict=True)])
        ),
        4,
    )


def numbers(
    predictor: Predictor,
    model: Any,
    script: str,
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
) -> dict[str, Any]:
    """Whole-number accuracy on ``count`` numbers of 2-4 of the test digits, written as
    people write (``numbers.synth``, clear gaps, canvas exports, seeded), read as the API
    reads them (``read_number_as``) in the script and with ``auto``, and with the pieces
    cut as Latin digits would be, then read in the script (what was served before); and
    how often the reading in the script found more or fewer pieces than digits."""
    from digitrec.multiscript import read_number, read_number_as
    from digitrec.numbers.reader import read_number as pieces_of
    from digitrec.numbers.synth import make_number

    rng = np.random.default_rng(0)
    right = {"given": 0, "auto": 0, "latin_cuts": 0}
    miscounted = 0
    for _ in range(count):
        picks = rng.integers(0, len(labels), size=int(rng.integers(2, 5)))
        made = make_number([images[i] for i in picks], [int(labels[i]) for i in picks], rng)

        @functools.cache  # each way of cutting read once for the three readings
        def read(cut: bool, data: bytes = made.data) -> Any:
            return pieces_of(data, predictor, cut=cut)

        readings = {
            "given": read_number_as(model, read, script),
            "auto": read_number_as(model, read, "auto"),
            "latin_cuts": read_number(model, read(True), script),
        }
        for name, r in readings.items():
            right[name] += r.complete and r.number == made.text
        miscounted += len(readings["given"].digits) != len(made.text)
    return {
        "count": count,
        **{k: round(v / count, 4) for k, v in right.items()},
        "given_miscounted": round(miscounted / count, 4),
    }


def rejected(answers: list[Any]) -> float:
    """The share of digits called not a digit (or refused as blank)."""
    return round(float(np.mean([a is None or a.verdict in REJECTED for a in answers])), 4)


def non_digits(settings: Settings, predictor: Predictor, n: int = 1000) -> dict[str, Any]:
    """The held-apart non-digits of the not-a-digit benchmark (Fashion-MNIST, glyphs of
    unseen fonts, unseen scribbles, several digits): the share flagged (verdict not
    "digit") with ``script=latin`` and with ``auto``."""
    from digitrec.evaluate import Evaluator
    from digitrec.preprocess import from_image

    out = {}
    for name, images in Evaluator(settings, predictor).held_apart(n).items():
        flagged: dict[str, list[bool]] = {"latin": [], "auto": []}
        for image in images[:n]:
            pre = from_image(image, predictor.spec)
            answer = predictor.answer(pre, predictor.infer(pre.tensor[None])[0], 3, 0.0)
            for script in flagged:
                flagged[script].append(read_in(answer, script, 3).verdict != "digit")
        out[name] = {s: round(float(np.mean(v)), 4) for s, v in flagged.items()}
    return out


def batch1_us(fn: Any, x: np.ndarray, reps: int = 500) -> float:
    for _ in range(20):
        fn(x)
    started = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return round((time.perf_counter() - started) / reps * 1e6, 1)


def http_latency(requests: int, files: int = 100) -> dict[str, Any]:
    """p50 at concurrency 1 and the server's CPU per request, over HTTP on loopback, on
    ``files`` of the realistic mix that ``bench_realistic.py`` sends (canvas exports,
    screenshots, photos): a server without the script model (``DIGITREC_SCRIPTS=false``,
    what Latin users had before) against one with it, asked for ``script=latin`` and for
    ``auto``; each in turn, ``LATENCY_ROUNDS`` times (the median: on two shared cores one
    round of one plan can be 10 % off the next)."""
    import tempfile

    from bench_http import drive, run
    from bench_realistic import realistic_mix
    from common import ServerProcess, digitrec_serve_command, server_env

    bodies = [(f["body"], f["content_type"]) for f in realistic_mix(files)]
    plans = {"without": ("false", "latin"), "latin": ("true", "latin"), "auto": ("true", "auto")}
    p50s: dict[str, list[float]] = {name: [] for name in plans}
    cpus: dict[str, list[float]] = {name: [] for name in plans}
    with tempfile.TemporaryDirectory(prefix="bench-scripts-") as tmp:
        servers = {}
        try:
            for on in ("false", "true"):
                home = Path(tmp) / on
                env = server_env(home, {"DIGITREC_SCRIPTS": on})
                servers[on] = ServerProcess(digitrec_serve_command(), home / "server.log", env)
                servers[on].wait_ready()
            for _ in range(LATENCY_ROUNDS):
                for name, (on, script) in plans.items():
                    server = servers[on]
                    path = f"/api/v1/predict?script={script}"
                    load = run(
                        drive(server.url, bodies, 1, server.pid, requests=requests, path=path)
                    )
                    summary = load.summary()
                    p50s[name].append(summary["latency_ms"]["p50"])
                    cpus[name].append(summary["server_cpu_ms_per_request"])
        finally:
            for server in servers.values():
                server.stop()
    p50 = {name: round(float(np.median(v)), 4) for name, v in p50s.items()}
    cpu = {name: round(float(np.median(v)), 4) for name, v in cpus.items()}
    return {
        "input": f"{len(bodies)} files of the realistic mix (bench_realistic.realistic_mix)",
        "p50_runs_ms": p50s,
        "p50_ms": p50,
        "cpu_ms_per_request": cpu,
        "latin_over_without": round(p50["latin"] / p50["without"], 3),
        "auto_over_without": round(p50["auto"] / p50["without"], 3),
        "cpu_latin_over_without": round(cpu["latin"] / cpu["without"], 3),
        "cpu_auto_over_without": round(cpu["auto"] / cpu["without"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--home", type=Path, required=True, help="where the fonts-* datasets are")
    parser.add_argument("--data-dir", type=Path, help="MNIST cache folder")
    parser.add_argument("--n", type=int, default=0, help="test images per script (0: all)")
    parser.add_argument("--requests", type=int, default=600, help="HTTP requests per figure")
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME",
        help="also a dataset you imported (`digitrec data import ... --script SCRIPT`), "
        "e.g. real handwriting: its test split, read in its script and with auto",
    )
    parser.add_argument(
        "--numbers", type=int, default=200, help="generated numbers per script (2-4 digits)"
    )
    parser.add_argument(
        "--realistic", type=int, default=2000, help="realistic Latin uploads (bench_realistic)"
    )
    parser.add_argument("--output", type=Path, help="result file (default benchmarks/results/)")
    args = parser.parse_args()
    model = load_shipped()
    if model is None:
        raise SystemExit("no script model is shipped (src/digitrec/script_model/)")
    settings = Settings(home=args.home, **({"data_dir": args.data_dir} if args.data_dir else {}))
    predictor = Predictor(Predictor.from_settings(Settings()).entry, backend="onnx", threads=1)
    results: dict[str, Any] = {"script_model": model.version, "digit_model": predictor.ref}
    mnist = load_mnist(settings, progress=False)
    n = args.n or None
    images, labels = mnist.test_images[:n], mnist.test_labels[:n]
    results["mnist_test"] = latin_digits(predictor, images, labels)
    # Latin digits as people upload them (canvas exports, photos, JPEG screenshots...):
    # the files of bench_realistic.py, made from MNIST test digits
    mix = realistic_mix(args.realistic)
    labels = np.array([m["label"] for m in mix])
    results["mnist_realistic"] = latin_digits(predictor, [m["body"] for m in mix], labels)
    results["non_digits"] = non_digits(settings, predictor)
    results["scripts"] = {}
    for script in model.scripts:
        if script == LATIN:
            continue
        data = load_dataset(settings, f"fonts-{script}", progress=False)
        images, labels = data.test_images[:n], data.test_labels[:n]
        read = read_all(predictor, images, (script, "auto"))
        found = [a is not None and a.script == script for a in read["auto"]]
        results["scripts"][script] = {
            "numbers": numbers(predictor, model, script, images, labels, args.numbers),
            "images": len(labels),
            "fonts": model.manifest.get("fonts", {}).get(script),
            "given": right(read[script], labels),
            "auto": right(read["auto"], labels),
            "given_not_a_digit": rejected(read[script]),
            "auto_not_a_digit": rejected(read["auto"]),
            "auto_found_script": round(float(np.mean(found)), 4),
            "auto_uncertain": round(
                float(np.mean([a is not None and a.script_uncertain for a in read["auto"]])), 4
            ),
        }
    results["imported"] = {}
    for name in args.dataset:
        data = load_dataset(settings, name, progress=False)
        model.check(data.script)  # a script the model cannot read stops here, with the reason
        images, labels = data.test_images[:n], data.test_labels[:n]
        read = read_all(predictor, images, (data.script, "auto"))
        results["imported"][name] = {
            "script": data.script,
            "images": len(labels),
            "given": right(read[data.script], labels),
            "auto": right(read["auto"], labels),
        }
    pixels = mnist.test_images[:1, None].astype(np.float32) / 255.0
    x = ((pixels - predictor.spec.mean) / predictor.spec.std).astype(np.float32)
    alone = batch1_us(predictor.infer, x)
    both = batch1_us(lambda x: (predictor.infer(x), model.infer(pixels)), x)
    results["batch1_us"] = {"digit_model": alone, "with_script_model": both}
    results["http_c1"] = http_latency(args.requests)
    results["targets"] = TARGETS
    rows = [
        [s, r["images"], r["given"], r["auto"], r["auto_found_script"], r["auto_uncertain"]]
        for s, r in results["scripts"].items()
    ]
    print(table(["script", "images", "given", "auto", "auto found it", "auto unsure"], rows))
    print(f"MNIST test: {results['mnist_test']}")
    print(f"MNIST test as uploaded: {results['mnist_realistic']}")
    for name, r in results["imported"].items():
        print(
            f"imported {name} ({r['script']}, {r['images']} images): "
            f"given {r['given']}, auto {r['auto']}"
        )
    print(f"non-digits flagged: {results['non_digits']}")
    print(f"model time at batch 1: {results['batch1_us']} us")
    http = results["http_c1"]
    print(
        f"HTTP p50 at concurrency 1: {http['p50_ms']} ms; latin/without "
        f"{http['latin_over_without']}, auto/without {http['auto_over_without']}; server CPU "
        f"per request {http['cpu_ms_per_request']} ms"
    )
    path = save_results("bench_scripts", results, machine_info(), args.output)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
