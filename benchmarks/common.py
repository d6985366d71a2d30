"""What every benchmark shares: machine facts, result files, timing statistics, tables,
the benchmark inputs (drawn on the fly, seeded) and a server process on loopback.

Results go to ``benchmarks/results/<name>.json``, written atomically (temporary file,
then rename) with the machine they were measured on. Nothing here types a figure in.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from digitrec.registry import BUNDLED_ROOT, ModelEntry, Registry
from digitrec.storage import atomic_write_json
from digitrec.training.device import cpu_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PREDICT = "/api/v1/predict"


# --- machine and result files ---------------------------------------------------------------


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def busy_processes(sample_s: float = 0.5, threshold: float = 5.0) -> list[dict[str, Any]]:
    """Other processes using more than ``threshold`` % of a core: the noise in a figure."""
    import psutil

    procs = [p for p in psutil.process_iter(["pid", "name"]) if p.pid != os.getpid()]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(sample_s)
    busy = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu > threshold:
            busy.append({"pid": p.pid, "name": p.info["name"], "cpu_percent": round(cpu, 1)})
    return sorted(busy, key=lambda b: -b["cpu_percent"])


def machine_info() -> dict[str, Any]:
    """CPU, cores, library versions, date, load: enough to judge where a figure comes from."""
    load1, load5, _ = os.getloadavg()
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
        "uvicorn": _version("uvicorn"),
        "digitrec": _version("digitrec"),
        "git_commit": _git_commit(),
        "src_uncommitted_diff_sha256": _source_state(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1m_5m": [round(load1, 2), round(load5, 2)],
        "busy_processes_at_start": busy_processes(),
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, timeout=5, check=False, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode(errors="replace").strip() if out.returncode == 0 else None


def _git_commit() -> str | None:
    return _git("describe", "--always", "--dirty", "--abbrev=12", "--exclude=*") or None


def _source_state() -> str | None:
    """A short hash of the uncommitted changes under src/: ties a figure to the exact code."""
    import hashlib

    diff = _git("diff", "HEAD", "--", "src")
    if diff is None:
        return None
    return hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else "clean"


def save_results(
    name: str, results: dict[str, Any], machine: dict[str, Any], path: Path | None = None
) -> Path:
    """Write ``{"benchmark", "machine", "command", ...results}`` atomically; return the path."""
    target = path or RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "machine": machine,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **results,
    }
    atomic_write_json(target, payload)
    return target


def bundled_model() -> ModelEntry:
    """The model that ships with digitrec: every benchmark measures the same weights."""
    return Registry(BUNDLED_ROOT, extra_roots=()).resolve()


# --- statistics and tables -------------------------------------------------------------------


def summarize(seconds: Sequence[float], scale: float = 1000.0) -> dict[str, float]:
    """n, p50, p90, p95, p99, mean, min, max of durations, in milliseconds by default."""
    a = np.asarray(seconds, dtype=np.float64) * scale
    if a.size == 0:
        return {"n": 0}
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return {
        "n": int(a.size),
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p95": round(float(p95), 4),
        "p99": round(float(p99), 4),
        "mean": round(float(a.mean()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
    }


def repeat(
    fn: Callable[[], object],
    min_reps: int = 20,
    min_seconds: float = 1.0,
    warmup: int = 3,
    max_reps: int = 1_000_000,
) -> list[float]:
    """Call ``fn`` after ``warmup`` calls until both ``min_reps`` and ``min_seconds`` are met."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_reps and (
        len(times) < min_reps or time.perf_counter() - started < min_seconds
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, right-aligned numbers, for the terminal."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append(
            "  ".join(
                c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)
            )
        )
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("x", "").lstrip("-").isdigit()


# --- inputs ----------------------------------------------------------------------------------

# A "3" as key points (shares of the drawing area), joined by a thick round pen.
THREE = [
    (0.32, 0.24),
    (0.45, 0.17),
    (0.60, 0.19),
    (0.67, 0.30),
    (0.59, 0.43),
    (0.46, 0.48),
    (0.61, 0.53),
    (0.68, 0.66),
    (0.61, 0.78),
    (0.45, 0.83),
    (0.30, 0.76),
]
DIGIT = 3  # the digit every generated input shows


def _draw_digit(
    draw: ImageDraw.ImageDraw, width: int, height: int, pen: int, fill: int | tuple[int, ...]
) -> None:
    points = [(x * width, y * height) for x, y in THREE]
    draw.line(points, fill=fill, width=pen, joint="curve")
    r = pen / 2
    for x, y in (points[0], points[-1]):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def canvas_png() -> bytes:
    """What the web page sends: 280x280 RGBA, transparent background, a black stroke."""
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    _draw_digit(ImageDraw.Draw(img), 280, 280, pen=18, fill=(0, 0, 0, 255))
    return _encode(img, "PNG")


def _paper_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A dark digit on paper under uneven light, with sensor noise, as a phone sees it."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (width, height), 0)
    _draw_digit(ImageDraw.Draw(img), width, height, pen=max(3, width // 30), fill=255)
    ink = np.asarray(img, dtype=np.float32) / 255
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    paper = 215 + 25 * x - 15 * y  # light falling from one side
    grey = paper * (1 - 0.8 * ink) + rng.normal(0, 4, (height, width)).astype(np.float32)
    rgb = np.clip(np.stack([grey * 1.0, grey * 0.97, grey * 0.92], -1), 0, 255)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def paper_jpeg(width: int, height: int, quality: int = 90) -> bytes:
    """A JPEG photo of a dark digit on unevenly lit paper."""
    return _encode(_paper_photo(width, height), "JPEG", quality=quality)


def phone_jpeg() -> bytes:
    """A 12-megapixel phone photo (4000x3000 JPEG, quality 90) of a digit on paper."""
    return paper_jpeg(4000, 3000)


def small_png() -> bytes:
    """A 28x28 greyscale PNG: white digit on black, like an MNIST sample saved to disk."""
    img = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(img)
    points = [(4 + x * 20, 4 + y * 20) for x, y in THREE]
    draw.line(points, fill=255, width=2, joint="curve")
    return _encode(img, "PNG")


def webp_1000() -> bytes:
    """A 1000x1000 WebP (quality 85) of a digit on paper: a scan or a cropped photo."""
    return _encode(_paper_photo(1000, 1000, seed=1), "WEBP", quality=85)


@dataclass(frozen=True)
class Input:
    name: str
    description: str
    make: Callable[[], bytes]
    content_type: str


INPUTS = (
    Input("canvas_png", "280x280 RGBA canvas PNG, transparent background", canvas_png, "image/png"),
    Input(
        "phone_jpeg", "4000x3000 (12 MP) phone JPEG, dark digit on paper", phone_jpeg, "image/jpeg"
    ),
    Input("small_png", "28x28 greyscale PNG", small_png, "image/png"),
    Input("webp_1000", "1000x1000 WebP, digit on paper", webp_1000, "image/webp"),
)


# --- a server process on loopback ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server command in a subprocess on 127.0.0.1, polled until ``ready_path`` answers 200.

    The approach of ``tests/conftest.py``'s ``LiveServer``, for any command: ``digitrec
    serve`` or the Flask baseline. ``{port}`` in ``command`` is replaced by a free port.
    """

    def __init__(
        self,
        command: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        ready_path: str = "/readyz",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [part.replace("{port}", str(self.port)) for part in command],
            env={**os.environ, **(env or {})},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s: {self.tail()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server and its worker processes together."""
        import psutil

        try:
            proc = psutil.Process(self.pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait (kill after ``timeout``); return the exit code (negative: signal)."""
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()
        return int(self.process.returncode)

    def tail(self, chars: int = 2000) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-chars:]


def digitrec_serve_command(extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "digitrec.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        *extra,
    ]


def server_env(home: Path, settings: dict[str, str] | None = None) -> dict[str, str]:
    """A fresh home (so the bundled model is served), rate limits off, and no delay
    before the drain on SIGTERM (there is no load balancer to tell)."""
    return {
        "DIGITREC_HOME": str(home),
        "DIGITREC_RATE_LIMIT_PER_MINUTE": "0",
        "DIGITREC_WEB_RATE_LIMIT_PER_MINUTE": "0",
        "DIGITREC_SHUTDOWN_DELAY_S": "0",
        "OMP_WAIT_POLICY": "PASSIVE",
        **(settings or {}),
    }
