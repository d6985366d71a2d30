"""What keeping answers for corrections costs: throughput with the prediction log on
(the default: each answer, its 28x28 input included, written to the database in
batches by a background thread) and off (``DIGITREC_LOG_PREDICTIONS=false``).

Same server, same request (the page's canvas PNG), alternated on/off/on/off so both see
the same machine; requests per second at concurrency 8 and CPU per request. Target: the
log costs at most 5 % of throughput. The database is the default SQLite file.

    python benchmarks/bench_logging.py            # about 2 minutes
    python benchmarks/bench_logging.py --quick
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_http import run_server
from common import canvas_png, digitrec_serve_command, machine_info, ratio, save_results, server_env

TARGET_MAX_COST = 0.05  # share of throughput the log may cost
VARIANTS = {"log on": {}, "log off": {"DIGITREC_LOG_PREDICTIONS": "false"}}


def logged_rows(home: Path) -> int:
    with sqlite3.connect(home / "digitrec.db") as db:
        return int(db.execute("select count(*) from predictions").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per figure, one round")
    parser.add_argument("--output", type=Path, help="result file (default benchmarks/results/)")
    args = parser.parse_args()
    args.duration = 2.0 if args.quick else 8.0
    args.latency_requests = 100 if args.quick else 300
    rounds = 1 if args.quick else 2
    body = canvas_png()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    rows = 0
    with tempfile.TemporaryDirectory(prefix="bench-log-") as tmp:
        for r in range(rounds):
            for name, settings in VARIANTS.items():
                home = Path(tmp) / f"{name.replace(' ', '-')}-{r}"
                env = server_env(home, settings)
                runs[name].append(
                    run_server(
                        name,
                        digitrec_serve_command(),
                        env,
                        [(body, "image/png")],
                        args,
                        Path(tmp),
                    )
                )
                if name == "log on":
                    rows += logged_rows(home)
    results = summarize(runs, rows)
    print_report(results)
    path = save_results("bench_logging", results, machine_info(), args.output)
    print(f"\nwrote {path}")


def summarize(runs: dict[str, list[dict[str, Any]]], rows: int) -> dict[str, Any]:
    def mean(name: str, key: str) -> float:
        values = [s["runs"]["c8"][key] for s in runs[name]]
        return round(sum(values) / len(values), 2)

    on, off = mean("log on", "requests_per_s"), mean("log off", "requests_per_s")
    cost = round(1 - on / off, 4) if off else None
    return {
        "request": "canvas PNG, 280x280 RGBA, raw image/png body, concurrency 8",
        "requests_per_s": {"log on": on, "log off": off},
        "server_cpu_ms_per_request": {
            name: mean(name, "server_cpu_ms_per_request") for name in VARIANTS
        },
        "throughput_ratio": ratio(on, off),
        "cost": cost,
        "target_max_cost": TARGET_MAX_COST,
        "met": cost is not None and cost <= TARGET_MAX_COST,
        "answers_logged": rows,
        "runs": runs,
    }


def print_report(results: dict[str, Any]) -> None:
    rps, cpu = results["requests_per_s"], results["server_cpu_ms_per_request"]
    for name in VARIANTS:
        print(f"{name:8s} {rps[name]:8.1f} req/s  {cpu[name]:6.2f} ms CPU per request")
    verdict = "met" if results["met"] else "MISSED"
    print(
        f"the log costs {results['cost']:.1%} of throughput (target <= "
        f"{TARGET_MAX_COST:.0%}: {verdict}); {results['answers_logged']} answers written",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
