"""End-to-end HTTP: our server against the Flask tutorial baseline, on loopback, same run.

Every server gets the same request, the canvas PNG the web page sends (280x280 RGBA,
transparent background), as a raw ``image/png`` body to ``POST /api/v1/predict``:

- latency p50/p99 at concurrency 1 (one request after another);
- requests per second (and latency) at concurrency 8 and 32, for a fixed duration.

Servers run one at a time: ``digitrec serve`` with its default settings (rate limits
off), the Flask baseline (``baseline_flask.py``), then ``digitrec serve`` with other
worker, thread and batching settings, to find what suits this machine.

The client (``http_client.py``) runs in this one process on uvloop, with as many
keep-alive connections as the concurrency, and sends one pre-built request over raw
sockets: under 0.1 ms of CPU per request, where httpx took 1.1 ms. Its CPU time per
request is measured and reported beside the server's, so one can see it is not the
bottleneck (it shares the machine's two cores with the server).

    python benchmarks/bench_http.py            # about 4 minutes
    python benchmarks/bench_http.py --quick    # about 1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from common import (
    DIGIT,
    PREDICT,
    ROOT,
    ServerProcess,
    canvas_png,
    digitrec_serve_command,
    machine_info,
    ratio,
    save_results,
    server_env,
    summarize,
    table,
)
from http_client import Connection, HttpError, build_request

T = TypeVar("T")

CONCURRENCY_LATENCY = 1
CONCURRENCY_THROUGHPUT = (8, 32)
TARGET_P50_MS = 5.0  # canvas PNG at concurrency 1
TARGET_SPEEDUP = 3.0  # our throughput over the baseline's at concurrency 8

# name -> DIGITREC_* settings; "default" is what `digitrec serve` does out of the box.
OUR_CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "threads=1": {"DIGITREC_INFERENCE_THREADS": "1"},
    "wait=0ms": {"DIGITREC_BATCH_MAX_WAIT_MS": "0"},
    "max=8": {"DIGITREC_BATCH_MAX_SIZE": "8"},
    "workers=2": {"DIGITREC_WORKERS": "2"},
}


@dataclass
class Load:
    """What one client run saw."""

    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    connects: int = 0  # TCP connections opened (HTTP/1.0 servers close after each answer)

    def summary(self) -> dict[str, Any]:
        n = sum(self.statuses.values())
        return {
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "requests": n,
            "requests_per_s": round(n / self.seconds, 1) if self.seconds else 0,
            "latency_ms": summarize(self.latencies),
            "statuses": dict(self.statuses),
            "transport_errors": dict(self.errors),
            "client_cpu_ms_per_request": round(self.client_cpu_s / n * 1000, 3) if n else None,
            "server_cpu_ms_per_request": round(self.server_cpu_s / n * 1000, 3) if n else None,
            "connections_opened": self.connects,
        }


def server_cpu_seconds(pid: int) -> float:
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


Bodies = Sequence[tuple[bytes, str]]  # (request body, its content type), sent in turn


async def drive(
    url: str,
    bodies: Bodies,
    concurrency: int,
    pid: int,
    duration: float | None = None,
    requests: int | None = None,
    path: str = PREDICT,
) -> Load:
    """``concurrency`` clients, each sending the next request when its answer is in; the
    requests go through ``bodies`` in turn (one body: the same request every time)."""
    built = [build_request(url, "POST", path, body, kind) for body, kind in bodies]
    turn = itertools.count()
    connections = [Connection(url) for _ in range(concurrency)]
    load = Load(concurrency)

    async def one(connection: Connection) -> None:
        request = built[next(turn) % len(built)]
        started = time.perf_counter()
        try:
            status, _ = await connection.send(request)
        except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
            load.errors[type(exc).__name__] += 1
            return
        load.latencies.append(time.perf_counter() - started)
        load.statuses[status] += 1

    await asyncio.gather(*(one(c) for c in connections))  # open the connections
    load.latencies.clear()
    load.statuses.clear()
    load.errors.clear()
    sent = 0
    deadline = time.perf_counter() + (duration or 1e9)

    async def worker(connection: Connection) -> None:
        nonlocal sent
        while time.perf_counter() < deadline and (requests is None or sent < requests):
            sent += 1
            await one(connection)

    connects0 = sum(c.connects for c in connections)
    cpu0, server0, t0 = time.process_time(), server_cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    load.seconds = time.perf_counter() - t0
    load.client_cpu_s = time.process_time() - cpu0
    load.server_cpu_s = server_cpu_seconds(pid) - server0
    load.connects = sum(c.connects for c in connections) - connects0
    for connection in connections:
        connection.close()
    return load


async def first_answer(url: str, body: bytes, content_type: str) -> dict[str, Any]:
    connection = Connection(url)
    try:
        status, answer = await connection.send(
            build_request(url, "POST", PREDICT, body, content_type)
        )
    finally:
        connection.close()
    try:
        digit = json.loads(answer).get("digit")
    except (ValueError, AttributeError):
        digit = None
    return {"status": status, "digit": digit}


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (it comes with the server), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def measure(server: ServerProcess, bodies: Bodies, args: argparse.Namespace) -> dict[str, Any]:
    answer = run(first_answer(server.url, *bodies[0]))
    runs = [
        run(
            drive(
                server.url,
                bodies,
                CONCURRENCY_LATENCY,
                server.pid,
                duration=args.duration,
                requests=args.latency_requests,
            )
        )
    ]
    runs += [
        run(drive(server.url, bodies, c, server.pid, duration=args.duration))
        for c in CONCURRENCY_THROUGHPUT
    ]
    return {
        "answer": answer,
        "rss_mb": round(server.rss_bytes() / 2**20, 1),
        "runs": {f"c{r.concurrency}": r.summary() for r in runs},
    }


def measure_path(
    server: ServerProcess, path: str, bodies: Bodies, args: argparse.Namespace
) -> dict[str, Any]:
    """Latency at concurrency 1 and requests/s at 8 for another endpoint than predict."""
    runs = [
        run(drive(server.url, bodies, 1, server.pid, args.duration, args.latency_requests, path)),
        run(drive(server.url, bodies, 8, server.pid, args.duration, path=path)),
    ]
    return {f"c{r.concurrency}": r.summary() for r in runs}


def run_server(
    name: str,
    command: list[str],
    env: dict[str, str],
    bodies: Bodies,
    args: argparse.Namespace,
    home: Path,
    paths: dict[str, Bodies] | None = None,
) -> dict[str, Any]:
    """Start a server, measure it (and ``paths``: other endpoints and their bodies), stop it."""
    print(f"  {name} ...", file=sys.stderr, flush=True)
    server = ServerProcess(command, home / f"{name}.log", env=env)
    try:
        server.wait_ready()
        result = measure(server, bodies, args)
        if paths:
            result["paths"] = {p: measure_path(server, p, b, args) for p, b in paths.items()}
    finally:
        result_code = server.stop()
    return {
        "name": name,
        "command": " ".join(Path(c).name if c == sys.executable else c for c in command),
        "settings": {k: v for k, v in env.items() if k.startswith("DIGITREC_") and "HOME" not in k},
        "exit_code": result_code,
        **result,
    }


def flask_command() -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "baseline_flask.py"), "--port", "{port}"]


def baseline_figures(servers: list[dict[str, Any]]) -> dict[str, float]:
    """The baseline's req/s at each level, averaged over its runs (one, or two with --again)."""
    runs = [s["runs"] for s in servers if s["name"].startswith("flask")]
    return {
        c: round(sum(r[c]["requests_per_s"] for r in runs) / len(runs), 1) for c in ("c8", "c32")
    }


def targets(ours: dict[str, Any], baseline: dict[str, float]) -> dict[str, Any]:
    p50 = ours["runs"]["c1"]["latency_ms"]["p50"]
    speedup = ratio(ours["runs"]["c8"]["requests_per_s"], baseline["c8"])
    return {
        "p50_c1_ms": p50,
        "p50_c1_target_ms": TARGET_P50_MS,
        "p50_c1_met": p50 <= TARGET_P50_MS,
        "throughput_c8_vs_baseline": speedup,
        "throughput_c8_target": TARGET_SPEEDUP,
        "throughput_c8_met": speedup is not None and speedup >= TARGET_SPEEDUP,
    }


def print_report(results: dict[str, Any]) -> None:
    servers = results["servers"]
    base = results["baseline_used_for_ratios"]
    rows = []
    for s in servers:
        r = s["runs"]
        rows.append(
            [
                s["name"],
                s["answer"]["digit"],
                r["c1"]["latency_ms"]["p50"],
                r["c1"]["latency_ms"]["p99"],
                r["c8"]["requests_per_s"],
                ratio(r["c8"]["requests_per_s"], base["c8"]),
                r["c8"]["latency_ms"]["p99"],
                r["c32"]["requests_per_s"],
                ratio(r["c32"]["requests_per_s"], base["c32"]),
                r["c32"]["latency_ms"]["p99"],
                r["c8"]["server_cpu_ms_per_request"],
                r["c8"]["client_cpu_ms_per_request"],
                s["rss_mb"],
            ]
        )
    print("\nHTTP, canvas PNG, loopback (latency in ms; x = ratio to the Flask baseline's mean)")
    print(
        table(
            [
                "server",
                "digit",
                "c1 p50",
                "c1 p99",
                "c8 req/s",
                "c8 x",
                "c8 p99",
                "c32 req/s",
                "c32 x",
                "c32 p99",
                "srv cpu ms/req",
                "cli cpu ms/req",
                "RSS MB",
            ],
            rows,
        )
    )
    errors = {
        s["name"]: {c: r["transport_errors"] for c, r in s["runs"].items() if r["transport_errors"]}
        for s in servers
    }
    if any(errors.values()):
        print(f"transport errors: {errors}")
    for name, t in results["targets"].items():
        print(
            f"targets ({name}): p50 at c1 {t['p50_c1_ms']} ms "
            f"({'met' if t['p50_c1_met'] else 'NOT met'}, target <= {TARGET_P50_MS} ms); "
            f"c8 throughput {t['throughput_c8_vs_baseline']}x the baseline "
            f"({'met' if t['throughput_c8_met'] else 'NOT met'}, target >= {TARGET_SPEEDUP}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per figure, fewer configs")
    parser.add_argument("--duration", type=float, help="seconds per concurrency level")
    parser.add_argument("--latency-requests", type=int, help="requests at concurrency 1")
    parser.add_argument(
        "--configs",
        nargs="*",
        choices=list(OUR_CONFIGS),
        help="our settings to try (default: all; --quick: default, workers=2)",
    )
    parser.add_argument(
        "--no-again",
        dest="again",
        action="store_false",
        help="skip measuring the default and the baseline a second time at the end",
    )
    parser.add_argument("--output", type=Path, help="result file (default benchmarks/results/)")
    args = parser.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.latency_requests = args.latency_requests or (200 if args.quick else 1000)
    configs = args.configs or (["default", "workers=2"] if args.quick else list(OUR_CONFIGS))
    args.again = args.again and not args.quick
    if "default" not in configs:
        configs.insert(0, "default")

    machine = machine_info()
    body = canvas_png()
    # (name, command, home folder, settings): ours by default, the baseline, our other
    # settings, then the two main figures once more to show how much they drift in a run.
    ours = ("digitrec default", digitrec_serve_command(), "ours", None)
    flask = ("flask-baseline", flask_command(), "flask", None)
    plan = [ours, flask]
    plan += [
        (f"digitrec {name}", digitrec_serve_command(), "ours", OUR_CONFIGS[name])
        for name in configs
        if name != "default"
    ]
    if args.again:
        plan += [(f"{name} (again)", *rest) for name, *rest in (ours, flask)]
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        home = Path(tmp)
        servers = [
            run_server(
                name,
                command,
                server_env(home / folder, settings),
                [(body, "image/png")],
                args,
                home,
            )
            for name, command, folder, settings in plan
        ]
    base = baseline_figures(servers)
    candidates = [s for s in servers if not s["name"].startswith("flask")]
    best = max(candidates, key=lambda s: s["runs"]["c8"]["requests_per_s"])
    results = {
        "baseline_used_for_ratios": base,
        "client": "http_client.py: pre-built request on raw sockets, uvloop, "
        "one keep-alive connection per concurrent client, one process",
        "request": {
            "kind": "canvas PNG, 280x280 RGBA, transparent background",
            "bytes": len(body),
            "expected_digit": DIGIT,
        },
        "durations": {"seconds_per_level": args.duration, "requests_at_c1": args.latency_requests},
        "servers": servers,
        "targets": {
            "default": targets(servers[0], base),
            f"best ({best['name']})": targets(best, base),
        },
        "best_config_c8": best["name"],
    }
    print_report(results)
    path = save_results("bench_http", results, machine, args.output)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
