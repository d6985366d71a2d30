"""Requests per second through HAProxy with 1, 2 and 3 replicas on shared state (#15).

One topology (tests/topology.py: PostgreSQL, Redis, three `digitrec serve` replicas with
one worker each, HAProxy with deploy/haproxy.cfg) with the prediction log, metrics and
rate limits shared through Redis on (a limit no client reaches). For 1, 2 and 3
replicas in front, a fresh HAProxy sends the realistic mix of bench_realistic.py (300
files people send) at concurrency 8 and 32; one replica straight, without the proxy, is
the baseline in the same run. For each: answered requests per second, p50/p95 latency,
and CPU per request of the replicas, HAProxy, PostgreSQL with Redis, and the load
generator, so what limits the figure is visible (here all of them share two cores).

    python benchmarks/bench_replicas.py            # about 2 minutes
    python benchmarks/bench_replicas.py --quick    # about 1 minute
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import summary
from bench_http import drive, run, server_cpu_seconds
from bench_realistic import realistic_mix
from common import ROOT, machine_info, save_results

sys.path.insert(0, str(ROOT))  # tests/topology.py starts the components
from tests.topology import Proxy, Topology, topology_missing

CONCURRENCY = (8, 32)


def measure(
    url: str, bodies: list[tuple[bytes, str]], pids: dict[str, list[int]], seconds: float
) -> dict[str, Any]:
    rows = {}
    for concurrency in CONCURRENCY:
        before = {name: sum(map(server_cpu_seconds, ids)) for name, ids in pids.items()}
        load = run(drive(url, bodies, concurrency, pids["replicas"][0], duration=seconds))
        after = {name: sum(map(server_cpu_seconds, ids)) for name, ids in pids.items()}
        summary = load.summary()
        n = summary["requests"] or 1
        # Answered: 200s. A 503 is the server shedding load (too many photos waiting for
        # the decoding sandbox, by design), counted apart.
        summary["answered_per_s"] = round(load.statuses[200] / load.seconds, 1)
        summary["cpu_ms_per_request"] = {
            name: round((after[name] - before[name]) / n * 1000, 3) for name in pids
        } | {"load generator": summary["client_cpu_ms_per_request"]}
        rows[f"c{concurrency}"] = summary
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="3 s per figure instead of 10")
    parser.add_argument("--n", type=int, default=300, help="files in the mix")
    parser.add_argument("--output", type=Path, help="result file (default benchmarks/results/)")
    args = parser.parse_args()
    reason = topology_missing()
    if reason:
        sys.exit(f"bench_replicas: {reason}")
    seconds = 3.0 if args.quick else 10.0
    mix = realistic_mix(args.n)
    bodies = [(m["body"], m["content_type"]) for m in mix]
    # Rate limits on, as in production, counted in Redis (one round trip per request),
    # but far above what the load generator sends: every request is measured, none limited.
    env = {"DIGITREC_RATE_LIMIT_PER_MINUTE": str(10**9), "DIGITREC_WEB_RATE_LIMIT_PER_MINUTE": "0"}
    configs = []
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        topology = Topology(Path(tmp), replicas=3, env=env).start()
        try:
            if topology.proxy is not None:
                topology.proxy.stop()  # each configuration gets its own proxy below
            replicas = topology.replicas
            postmaster = int((topology.postgres.data / "postmaster.pid").read_text().split()[0])
            assert topology.redis.process is not None
            shared = [postmaster, topology.redis.process.pid]  # their CPU: state, not answers
            print("  one replica, straight ...", file=sys.stderr, flush=True)
            alone = {"replicas": [replicas[0].process.pid], "postgres+redis": shared}
            straight = measure(replicas[0].url, bodies, alone, seconds)
            configs.append({"name": "1 replica, no proxy", "replicas": 1, "runs": straight})
            for n in (1, 2, 3):
                print(f"  {n} behind haproxy ...", file=sys.stderr, flush=True)
                proxy = Proxy([f"127.0.0.1:{r.port}" for r in replicas[:n]], Path(tmp) / f"p{n}")
                try:
                    proxy.wait_ready()
                    pids = {
                        "replicas": [r.process.pid for r in replicas[:n]],
                        "haproxy": [proxy.process.pid],
                        "postgres+redis": shared,
                    }
                    runs = measure(proxy.url, bodies, pids, seconds)
                finally:
                    proxy.stop()
                configs.append({"name": f"{n} behind HAProxy", "replicas": n, "runs": runs})
        finally:
            topology.stop()
    results = {
        "mix": {"files": len(mix), "variants": sorted({m["variant"] for m in mix})},
        "seconds_per_figure": seconds,
        "configs": configs,
    }
    path = save_results("bench_replicas", results, machine_info(), args.output)
    print(summary.replicas(json.loads(path.read_text(encoding="utf-8"))))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
