"""Decoding the realistic mix (#17): Pillow, which we use, against the other decoders.

Decoding is the largest stage on the mix of ``bench_realistic.py`` and the one we cannot
skip, so its floor decides how low the CPU per request can go. Each decoder decodes
every file of the mix at the smallest scale our preprocessing can use (big JPEGs in grey
at 1/2..1/8, as ``preprocess.load`` asks Pillow; PNGs whole, as no PNG decoder can do
less), in this process, one thread:

- Pillow (``bench_realistic.decode_floor``: the open stage without our checks);
- OpenCV's ``cv2.imdecode`` (libpng, libjpeg-turbo; a core dependency already);
- libspng through ``pyspng`` (PNG only) and libjpeg-turbo through ``simplejpeg`` (JPEG
  only), when they are installed (the dev extra installs them).

    python benchmarks/bench_decoders.py            # about 20 seconds
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from bench_realistic import decode_floor, realistic_mix
from common import machine_info, save_results, table
from digitrec.preprocess import WORK_SIDE

Decoder = Callable[[bytes], object]


def _jpeg_factor(width: int, height: int) -> int:
    """The DCT scale ``preprocess.load`` decodes a JPEG at: 1, 2, 4 or 8."""
    factor = 1
    while factor < 8 and max(width, height) / (2 * factor) >= WORK_SIDE:
        factor *= 2
    return factor


_CV_REDUCED = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def opencv(body: bytes) -> object:
    buffer = np.frombuffer(body, np.uint8)
    if body[:2] == b"\xff\xd8":
        img = Image.open(io.BytesIO(body))  # the header only, for the scale
        return cv2.imdecode(buffer, _CV_REDUCED[_jpeg_factor(*img.size)])
    return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)


def optional_decoders() -> dict[str, tuple[str, Decoder] | None]:
    """name -> (the format it reads, its decode), or None when it is not installed."""
    found: dict[str, tuple[str, Decoder] | None] = {"libspng": None, "simplejpeg": None}
    try:
        import pyspng

        found["libspng"] = ("PNG", pyspng.load)
    except ImportError:
        pass
    try:
        import simplejpeg

        def turbo(body: bytes) -> object:
            width, height, _, _ = simplejpeg.decode_jpeg_header(body)
            factor = _jpeg_factor(width, height)
            return simplejpeg.decode_jpeg(
                body, colorspace="GRAY", min_width=width // factor, min_height=height // factor
            )

        found["simplejpeg"] = ("JPEG", turbo)
    except ImportError:
        pass
    return found


def mean_ms(decode: Decoder, bodies: list[bytes], rounds: int) -> float:
    for body in bodies[:3]:
        decode(body)  # warm up
    started = time.perf_counter()
    for _ in range(rounds):
        for body in bodies:
            decode(body)
    return round((time.perf_counter() - started) / rounds / len(bodies) * 1000, 4)


def measure(mix: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    by_variant: dict[str, list[bytes]] = {}
    formats: dict[str, str] = {}
    for item in mix:
        by_variant.setdefault(item["variant"], []).append(item["body"])
        formats[item["variant"]] = "JPEG" if item["body"][:2] == b"\xff\xd8" else "PNG"
    extra = optional_decoders()
    rows: dict[str, dict[str, Any]] = {}
    for variant, bodies in by_variant.items():
        fmt = formats[variant]
        row: dict[str, Any] = {"format": fmt, "files": len(bodies)}
        row["pillow"] = mean_ms(decode_floor, bodies, rounds)
        row["opencv"] = mean_ms(opencv, bodies, rounds)
        for name, found in extra.items():
            if found is not None and found[0] == fmt:
                row[name] = mean_ms(found[1], bodies, rounds)
        rows[variant] = row
    files = len(mix)

    def over_mix(decoder: str, fallback: str = "pillow") -> float:
        """Mean ms per file of the mix, Pillow where ``decoder`` does not read the format."""
        return round(
            sum(r.get(decoder, r[fallback]) * r["files"] for r in rows.values()) / files, 4
        )

    best = {
        variant: min((v, k) for k, v in r.items() if k not in ("format", "files"))[1]
        for variant, r in rows.items()
    }
    return {
        "by_variant_ms": rows,
        "installed": {name: found is not None for name, found in extra.items()},
        "mix_mean_ms": {
            "pillow": over_mix("pillow"),
            "opencv": over_mix("opencv"),
            "libspng_and_simplejpeg": round(
                sum(
                    r.get("libspng", r.get("simplejpeg", r["pillow"])) * r["files"]
                    for r in rows.values()
                )
                / files,
                4,
            ),
            "best_of_each_variant": round(
                sum(r[best[v]] * r["files"] for v, r in rows.items()) / files, 4
            ),
        },
        "fastest_by_variant": best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--n", type=int, default=300, help="files in the mix")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the mix")
    parser.add_argument("--output", type=Path, help="result file (default benchmarks/results/)")
    args = parser.parse_args()
    results = measure(realistic_mix(args.n), args.rounds)
    names = ["pillow", "opencv", "libspng", "simplejpeg"]
    rows = [
        [variant, r["format"], *(r.get(name, "") for name in names)]
        for variant, r in results["by_variant_ms"].items()
    ]
    print(table(["variant (ms per file)", "format", *names], rows))
    print(f"mean over the mix, ms: {results['mix_mean_ms']}")
    path = save_results("bench_decoders", results, machine_info(), args.output)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
