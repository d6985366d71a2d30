"""Bounded load against a real server on loopback, then a graceful stop under load.

1. Start ``digitrec serve`` (default settings, rate limits off) on 127.0.0.1.
2. ``--concurrency`` clients (default 32) for ``--duration`` seconds (default 60) send a
   seeded mix: ~80 % valid (canvas PNG, phone JPEG, JSON with base64) and ~20 % invalid
   (text, truncated PNG, a PNG header declaring 100000x100000 pixels, bad base64,
   top_k=99). Each kind has the status it must get. The client is asyncio +
   httpx.AsyncClient with a keep-alive pool as big as the concurrency.
3. Memory: the server's resident memory (psutil, with any worker processes) when cold,
   after ``--warmup`` seconds of the same load (thread pool and allocator arenas filled),
   and after the measured load; the growth that must stay under 50 MB is the one over
   the measured load, the growth from cold is reported beside it, with a timeline.
4. SIGTERM while requests are in flight: every request whose body was fully sent on an
   open connection before the signal must be answered (no reset, no empty reply), and
   the process must exit 0 within the graceful window. New clients keep connecting
   around the signal; they must be refused or answered (reported, not yet required).

Requirements (the exit code is 1 if any fails): zero 5xx, zero transport errors (dropped
connections, resets), every request answered with its expected status, memory growth
under 50 MB, in-flight requests answered after SIGTERM, exit code 0 within the window,
no traceback in the server log.

    python benchmarks/load_test.py                                  # 60 s at concurrency 32
    python benchmarks/load_test.py --duration 8 --concurrency 16    # what tests/test_load.py runs
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from common import (
    PREDICT,
    ServerProcess,
    canvas_png,
    digitrec_serve_command,
    machine_info,
    paper_jpeg,
    phone_jpeg,
    save_results,
    server_env,
    summarize,
    table,
)
from digitrec.api.server import GRACEFUL_SHUTDOWN_S

MAX_RSS_GROWTH_MB = 50.0
SEED = 20240229


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix: how to send it and the status it must get."""

    name: str
    weight: float  # share of the mix
    body: bytes
    content_type: str
    expected: int
    params: str = ""


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + tag
        + data
        + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )


def bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header that declares side x side pixels, with almost no data behind it."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def request_mix() -> list[Kind]:
    canvas = canvas_png()
    as_json = b'{"image": "' + base64.b64encode(canvas) + b'"}'
    return [
        Kind("canvas_png", 0.40, canvas, "image/png", 200),
        Kind("photo_jpeg", 0.20, paper_jpeg(1600, 1200), "image/jpeg", 200),
        Kind("json_base64", 0.20, as_json, "application/json", 200),
        Kind("text", 0.04, b"this is not an image\n", "text/plain", 415),
        Kind("truncated_png", 0.04, canvas[: len(canvas) // 2], "image/png", 422),
        Kind("bomb_header", 0.04, bomb_png(), "image/png", 413),
        Kind("bad_base64", 0.04, b'{"image": "not*base64!"}', "application/json", 400),
        Kind("top_k_99", 0.04, canvas, "image/png", 422, "?top_k=99"),
    ]


# --- the load --------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: a transport error
    error: str | None
    seconds: float
    finished: float  # time.perf_counter() when the answer (or the error) came


async def send(client: httpx.AsyncClient, kind: Kind, **extensions: Any) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(
            PREDICT + kind.params,
            content=kind.body,
            headers={"content-type": kind.content_type},
            extensions=extensions or None,
        )
    except httpx.TransportError as exc:
        now = time.perf_counter()
        return Outcome(kind.name, None, f"{type(exc).__name__}: {exc}"[:200], now - started, now)
    now = time.perf_counter()
    return Outcome(kind.name, response.status_code, None, now - started, now)


async def run_load(
    url: str,
    mix: list[Kind],
    concurrency: int,
    duration: float,
    max_requests: int | None,
    rss: Callable[[], int] | None = None,
) -> tuple[list[Outcome], float, list[tuple[float, float]]]:
    """The mixed load; returns the outcomes, the seconds taken and an RSS timeline (s, MB)."""
    rng = random.Random(SEED)
    weights = [k.weight for k in mix]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    outcomes: list[Outcome] = []
    timeline: list[tuple[float, float]] = []
    sent = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        deadline = started + duration

        def going() -> bool:
            return time.perf_counter() < deadline and (max_requests is None or sent < max_requests)

        async def worker() -> None:
            nonlocal sent
            while going():
                sent += 1
                outcomes.append(await send(client, rng.choices(mix, weights)[0]))

        async def sample() -> None:
            while rss is not None and going():
                timeline.append((round(time.perf_counter() - started, 1), rss() / 2**20))
                await asyncio.sleep(1.0)

        await asyncio.gather(sample(), *(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return outcomes, elapsed, [(t, round(mb, 1)) for t, mb in timeline]


def load_report(outcomes: list[Outcome], elapsed: float, mix: list[Kind]) -> dict[str, Any]:
    expected = {k.name: k.expected for k in mix}
    by_kind: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_kind[o.kind].append(o)
    statuses = Counter(str(o.status) for o in outcomes if o.status is not None)
    errors = Counter(o.error.split(":")[0] for o in outcomes if o.error)
    unexpected = Counter(
        f"{o.kind}->{o.status}"
        for o in outcomes
        if o.status is not None and o.status != expected[o.kind]
    )
    return {
        "requests": len(outcomes),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(outcomes) / elapsed, 1) if elapsed else 0,
        "statuses": dict(sorted(statuses.items())),
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "transport_errors": dict(errors),
        "transport_error_examples": sorted({o.error for o in outcomes if o.error})[:5],
        "unexpected_statuses": dict(unexpected),
        "latency_ms": summarize([o.seconds for o in outcomes if o.status is not None]),
        "by_kind": {
            name: {
                "expected": expected[name],
                "count": len(items),
                "statuses": dict(Counter(str(o.status) for o in items)),
                "latency_ms": summarize([o.seconds for o in items if o.status is not None]),
            }
            for name, items in sorted(by_kind.items())
        },
    }


# --- graceful stop -----------------------------------------------------------------------------


async def sigterm_in_flight(
    server: ServerProcess, kind: Kind, quick: Kind, n: int, window: float
) -> dict[str, Any]:
    """Send ``n`` slow requests on warm connections, SIGTERM once all are sent, collect.

    Meanwhile new clients keep connecting (one every 10 ms, from 50 ms before the signal to
    100 ms after it) and send a quick request each: those must be refused or answered,
    never dropped once their request was sent before the signal.
    """
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    sent_at: list[float] = []
    all_sent = asyncio.Event()

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "http11.send_request_body.complete":
            sent_at.append(time.perf_counter())
            if len(sent_at) == n:
                all_sent.set()

    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=window + 30) as client:
        warm = await asyncio.gather(*(send(client, kind) for _ in range(n)))  # n connections
        tasks = [asyncio.create_task(send(client, kind, trace=trace)) for _ in range(n)]
        await asyncio.wait_for(all_sent.wait(), timeout=30)
        newcomers = asyncio.create_task(_newcomers(server.url, quick, 0.15, window))
        await asyncio.sleep(0.05)  # let the server's event loop read what was sent
        signalled = time.perf_counter()
        server.terminate()
        await asyncio.sleep(0.5)
        probe = await _probe_new_connection(server.url)
        outcomes = await asyncio.gather(*tasks)
        fresh = await newcomers
        answered_at = time.perf_counter()
    exit_code, exit_seconds = await asyncio.to_thread(_wait_exit, server, signalled, window + 10)
    statuses = Counter(
        str(o.status) if o.status is not None else "transport error" for o in outcomes
    )
    return {
        "in_flight_requests": n,
        "kind": kind.name,
        "warm_up_statuses": dict(Counter(str(o.status) for o in warm)),
        "all_sent_before_sigterm": len(sent_at) == n and max(sent_at) < signalled,
        "statuses": dict(statuses),
        "transport_errors": [o.error for o in outcomes if o.error],
        "answered_after_sigterm": sum(
            1 for o in outcomes if o.status is not None and o.finished > signalled
        ),
        "last_answer_after_sigterm_s": round(answered_at - signalled, 3),
        "new_connection_after_sigterm": probe,
        "new_clients_around_sigterm": _classify(fresh, signalled),
        "exit_code": exit_code,
        "exit_seconds_after_sigterm": exit_seconds,
        "graceful_window_s": window,
    }


async def _newcomers(
    url: str, kind: Kind, seconds: float, window: float
) -> list[tuple[Outcome, float | None]]:
    """A request on a new connection every 10 ms for ``seconds``: (outcome, when its
    request was fully sent)."""
    no_reuse = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=no_reuse, timeout=window + 30) as client:

        async def one() -> tuple[Outcome, float | None]:
            sent: float | None = None

            async def trace(event: str, info: dict[str, Any]) -> None:
                nonlocal sent
                if event == "http11.send_request_body.complete":
                    sent = time.perf_counter()

            outcome = await send(client, kind, trace=trace)
            return outcome, sent

        tasks = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(0.01)
        return list(await asyncio.gather(*tasks))


def _classify(fresh: list[tuple[Outcome, float | None]], signalled: float) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    for outcome, sent in fresh:
        if outcome.status is not None:
            counts["answered"] += 1
        elif outcome.error and outcome.error.startswith("ConnectError"):
            counts["refused"] += 1
        elif sent is not None and sent < signalled:
            counts["dropped, sent before the signal"] += 1
        elif sent is not None:
            counts["dropped, sent after the signal"] += 1
        else:
            counts["dropped before the request was sent"] += 1
    errors = sorted({o.error for o, _ in fresh if o.error and not o.error.startswith("Connect")})
    return {"clients": len(fresh), "outcomes": dict(counts), "errors": errors[:5]}


async def _probe_new_connection(url: str) -> str:
    """What a brand-new client gets once the server is stopping (refused is right)."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            response = await client.get("/healthz")
        return f"answered {response.status_code}"
    except httpx.ConnectError:
        return "refused"
    except httpx.TransportError as exc:
        return f"{type(exc).__name__}"


def _wait_exit(
    server: ServerProcess, signalled: float, timeout: float
) -> tuple[int | None, float | None]:
    import subprocess

    try:
        code = server.process.wait(timeout=max(0.1, signalled + timeout - time.perf_counter()))
    except subprocess.TimeoutExpired:
        return None, None
    return code, round(time.perf_counter() - signalled, 3)


# --- requirements and output -------------------------------------------------------------------


def requirements(
    load: dict[str, Any], memory: dict[str, Any], stop: dict[str, Any], log_text: str
) -> list[dict[str, Any]]:
    def req(name: str, met: bool, detail: Any, required: bool = True) -> dict[str, Any]:
        return {"requirement": name, "met": bool(met), "detail": detail, "required": required}

    return [
        req("zero 5xx responses", load["server_errors_5xx"] == 0, load["statuses"]),
        req(
            "zero transport errors (drops, resets) under load",
            not load["transport_errors"],
            load["transport_errors"],
        ),
        req(
            "every request got its expected status",
            not load["unexpected_statuses"],
            load["unexpected_statuses"],
        ),
        req(
            f"RSS growth < {MAX_RSS_GROWTH_MB:g} MB",
            memory["growth_mb"] < MAX_RSS_GROWTH_MB,
            f"{memory['before_mb']} -> {memory['after_mb']} MB",
        ),
        req(
            "requests were in flight at SIGTERM",
            stop["all_sent_before_sigterm"] and stop["answered_after_sigterm"] > 0,
            f"{stop['answered_after_sigterm']} of {stop['in_flight_requests']} answered after "
            "the signal",
        ),
        req(
            "in-flight requests answered after SIGTERM (no resets)",
            stop["statuses"] == {"200": stop["in_flight_requests"]},
            stop["statuses"],
        ),
        # Not required (yet): uvicorn closes its listening socket up to 0.1 s after the
        # signal, and connections still waiting in the kernel's accept queue are then reset,
        # even when their request was sent before the signal. Shown as WARN when it happens.
        req(
            "new clients around SIGTERM: refused or answered once their request was sent",
            stop["new_clients_around_sigterm"]["outcomes"].get("dropped, sent before the signal", 0)
            == 0,
            stop["new_clients_around_sigterm"]["outcomes"],
            required=False,
        ),
        req(
            "exit code 0 within the graceful window",
            stop["exit_code"] == 0
            and stop["exit_seconds_after_sigterm"] is not None
            and stop["exit_seconds_after_sigterm"] <= stop["graceful_window_s"],
            f"exit code {stop['exit_code']} after {stop['exit_seconds_after_sigterm']} s",
        ),
        req(
            "no traceback in the server log",
            "Traceback" not in log_text,
            log_text[log_text.find("Traceback") :][:300] if "Traceback" in log_text else "",
        ),
    ]


def _verdict(r: dict[str, Any]) -> str:
    return "yes" if r["met"] else "NO" if r["required"] else "WARN"


def print_report(results: dict[str, Any]) -> None:
    load, mem, stop = results["load"], results["memory"], results["shutdown"]
    print(
        f"\nLoad: {load['requests']} requests in {load['seconds']} s "
        f"({load['requests_per_s']} req/s) at concurrency {results['concurrency']}"
    )
    print(
        table(
            ["kind", "expected", "count", "statuses", "p50 ms", "p99 ms"],
            [
                [
                    k,
                    v["expected"],
                    v["count"],
                    " ".join(f"{s}:{n}" for s, n in v["statuses"].items()),
                    v["latency_ms"].get("p50"),
                    v["latency_ms"].get("p99"),
                ]
                for k, v in load["by_kind"].items()
            ],
        )
    )
    lat = load["latency_ms"]
    print(
        f"all: statuses {load['statuses']}, latency p50 {lat.get('p50')} ms, "
        f"p99 {lat.get('p99')} ms; transport errors {load['transport_errors'] or 'none'}"
    )
    print(
        f"server RSS: {mem['cold_mb']} MB cold, {mem['before_mb']} MB after the warm-up load, "
        f"{mem['after_mb']} MB after the measured load ({mem['growth_mb']:+} MB; "
        f"{mem['growth_from_cold_mb']:+} MB from cold)"
    )
    print(
        f"SIGTERM with {stop['in_flight_requests']} {stop['kind']} requests in flight: "
        f"{stop['statuses']}, {stop['answered_after_sigterm']} answered after the signal, "
        f"new connection 0.5 s later: {stop['new_connection_after_sigterm']}, exit code "
        f"{stop['exit_code']} after {stop['exit_seconds_after_sigterm']} s"
    )
    fresh = stop["new_clients_around_sigterm"]
    print(
        f"{fresh['clients']} new clients around the signal: {fresh['outcomes']} {fresh['errors']}"
    )
    print(
        table(
            ["requirement", "met", "detail"],
            [
                [r["requirement"], _verdict(r), str(r["detail"])[:70]]
                for r in results["requirements"]
            ],
        )
    )
    print("PASSED" if results["passed"] else "FAILED")


async def warm_up(url: str, mix: list[Kind]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(3):
            for kind in mix:
                await send(client, kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=32, help="clients at once")
    parser.add_argument("--max-requests", type=int, help="stop after this many requests")
    parser.add_argument(
        "--in-flight", type=int, default=16, help="requests in flight when SIGTERM is sent"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of the same load before the memory baseline is taken",
    )
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--output", type=Path, help="result file (default benchmarks/results/)")
    args = parser.parse_args()

    machine = machine_info()
    mix = request_mix()
    slow = Kind("phone_jpeg_12mp", 0, phone_jpeg(), "image/jpeg", 200)
    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        env = server_env(Path(tmp) / "home", {"DIGITREC_WORKERS": str(args.workers)})
        server = ServerProcess(digitrec_serve_command(), Path(tmp) / "server.log", env=env)
        try:
            server.wait_ready()
            asyncio.run(warm_up(server.url, mix))
            cold = server.rss_bytes()
            if args.warmup > 0:  # the same load, unmeasured: thread pool and caches fill up
                asyncio.run(run_load(server.url, mix, args.concurrency, args.warmup, None))
            before = server.rss_bytes()
            outcomes, elapsed, timeline = asyncio.run(
                run_load(
                    server.url,
                    mix,
                    args.concurrency,
                    args.duration,
                    args.max_requests,
                    rss=server.rss_bytes,
                )
            )
            time.sleep(1.0)
            after = server.rss_bytes()
            stop = asyncio.run(
                sigterm_in_flight(server, slow, mix[0], args.in_flight, GRACEFUL_SHUTDOWN_S)
            )
        finally:
            server.stop()
        log_text = server.log.read_text(errors="replace")
    load = load_report(outcomes, elapsed, mix)
    memory = {
        "cold_mb": round(cold / 2**20, 1),
        "before_mb": round(before / 2**20, 1),
        "after_mb": round(after / 2**20, 1),
        "growth_mb": round((after - before) / 2**20, 1),
        "growth_from_cold_mb": round((after - cold) / 2**20, 1),
        "timeline_s_mb": timeline,
    }
    reqs = requirements(load, memory, stop, log_text)
    results = {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "max_requests": args.max_requests,
        "workers": args.workers,
        "client": "asyncio + httpx.AsyncClient, keep-alive pool = concurrency",
        "mix": [
            {
                "kind": k.name,
                "share": k.weight,
                "bytes": len(k.body),
                "content_type": k.content_type,
                "expected": k.expected,
                "params": k.params,
            }
            for k in mix
        ],
        "load": load,
        "memory": memory,
        "shutdown": stop,
        "requirements": reqs,
        "passed": all(r["met"] or not r["required"] for r in reqs),
        "server_log_tail": log_text[-1500:],
    }
    print_report(results)
    path = save_results("load_test", results, machine, args.output)
    print(f"wrote {path}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
