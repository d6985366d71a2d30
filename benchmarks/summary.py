"""Turn ``benchmarks/results/*.json`` into ``benchmarks/results/SUMMARY.md``.

The Markdown tables the README includes. Every figure comes from a result file; each
section says which machine measured it, when, and how busy the machine was.

    python benchmarks/summary.py
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import RESULTS, ratio
from digitrec.storage import atomic_write_text


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, bool):
            return "yes" if v else "**no**"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v).replace("|", "\\|")

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i == 0 else "--:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    busy = m.get("busy_processes_at_start") or []
    noise = ", ".join(f"{b['name']} {b['cpu_percent']:.0f} %" for b in busy[:3]) or "none"
    return (
        f"_{m['cpu']}, {m['cores']} cores; torch {m['torch']}, onnxruntime "
        f"{m['onnxruntime']}; {m['date']}; load average {m['load_average_1m_5m'][0]}, "
        f"other busy processes at start: {noise}. Command: `{data['command']}`._"
    )


# --- sections ----------------------------------------------------------------------------------


def inference(data: dict[str, Any]) -> str:
    model = md_table(
        ["backend", "threads", "batch", "µs/image p50", "µs/image p99", "images/s"],
        [
            [
                r["backend"],
                r["threads"],
                r["batch"],
                r["us_per_image_p50"],
                r["us_per_image_p99"],
                r["images_per_s"],
            ]
            for r in data["model"]
        ],
    )
    ratios = md_table(
        ["threads", "batch", "PyTorch / ONNX Runtime"],
        [[r["threads"], r["batch"], r["torch_over_onnx"]] for r in data["model_ratios"]],
    )
    pre = md_table(
        [
            "input",
            "bytes",
            "decoded at",
            "p50 ms",
            "p99 ms",
            "decode",
            "ink map",
            "layout",
            "digit",
        ],
        [
            [
                r["description"],
                r["bytes"],
                "×".join(map(str, r["decoded_size"])),
                r["ms"]["p50"],
                r["ms"]["p99"],
                r["stages_ms_p50"]["decode"],
                r["stages_ms_p50"]["ink_map"],
                r["stages_ms_p50"]["mnist_layout"],
                r["digit"],
            ]
            for r in data["preprocess"]
        ],
    )
    d = data["jpeg_draft"]
    draft = (
        f"JPEG draft mode: the {d['file_size'][0]}×{d['file_size'][1]} photo is decoded "
        f"at {d['decoded_with_draft'][0]}×{d['decoded_with_draft'][1]} "
        f"({d['decode_ms_with_draft']:.1f} ms instead of {d['decode_ms_without_draft']:.1f} "
        f"ms for a full decode, {d['draft_speedup']}× faster)."
    )
    return (
        f"### Model and preprocessing\n\nForward pass per image, same weights "
        f"(`{data['model_ref']}`):\n\n{model}\n\n{ratios}\n\n"
        f"`Predictor.preprocess` per input (stage columns: p50 ms):\n\n{pre}\n\n{draft}\n\n"
        f"{machine_line(data)}\n"
    )


def http(data: dict[str, Any]) -> str:
    servers = data["servers"]
    base = data["baseline_used_for_ratios"]
    rows = []
    for s in servers:
        r = s["runs"]
        rows.append(
            [
                s["name"],
                r["c1"]["latency_ms"]["p50"],
                r["c1"]["latency_ms"]["p99"],
                r["c8"]["requests_per_s"],
                ratio(r["c8"]["requests_per_s"], base["c8"]),
                r["c32"]["requests_per_s"],
                ratio(r["c32"]["requests_per_s"], base["c32"]),
                r["c32"]["latency_ms"]["p99"],
                s["answer"]["digit"],
            ]
        )
    table = md_table(
        [
            "server",
            "c=1 p50 ms",
            "c=1 p99 ms",
            "c=8 req/s",
            "× baseline",
            "c=32 req/s",
            "× baseline",
            "c=32 p99 ms",
            "answer",
        ],
        rows,
    )
    targets = "\n".join(
        f"- {name}: p50 at c=1 {t['p50_c1_ms']:.2f} ms (target ≤ {t['p50_c1_target_ms']:g} ms: "
        f"{'met' if t['p50_c1_met'] else '**not met**'}); c=8 throughput "
        f"{t['throughput_c8_vs_baseline']}× the baseline (target ≥ {t['throughput_c8_target']:g}×: "
        f"{'met' if t['throughput_c8_met'] else '**not met**'})"
        for name, t in data["targets"].items()
    )
    return (
        f"### HTTP, end to end\n\n{data['request']['kind']} "
        f"({data['request']['bytes']} bytes, digit {data['request']['expected_digit']}) "
        f"posted as a raw body over loopback; client: {data['client']}; "
        f"{data['durations']['seconds_per_level']:g} s per concurrency level.\n\n{table}\n\n"
        f"{targets}\n{drift(servers)}\n{machine_line(data)}\n"
    )


def drift(servers: list[dict[str, Any]]) -> str:
    """How far two runs of the same server apart: differences smaller than that are noise."""
    lines = []
    for name in ("digitrec default", "flask-baseline"):
        runs = [
            s["runs"]["c8"]["requests_per_s"]
            for s in servers
            if s["name"] in (name, f"{name} (again)")
        ]
        if len(runs) == 2:
            lines.append(
                f"- run-to-run drift, {name} at c=8: {runs[0]:.0f} and {runs[1]:.0f} "
                f"req/s ({abs(runs[0] - runs[1]) / max(runs) * 100:.0f} %)"
            )
    return "\n".join(lines) + ("\n" if lines else "")


def train(data: dict[str, Any]) -> str:
    ours, base = data["ours"], data["tutorial"]

    def reach(r: dict[str, Any], key: str) -> str:
        t = r["time_to"][key]
        return (
            f"{t['seconds']:.0f} s (epoch {t['epoch']})"
            if t["reached"]
            else f"not reached (best {t['best'] * 100:.2f} %)"
        )

    def secs(r: dict[str, Any], key: str) -> float | None:
        t = r["time_to"][key]
        return t["seconds"] if t["reached"] else None

    def selected(r: dict[str, Any]) -> float | None:
        return r["selected"]["test_accuracy"] * 100 if r["selected"] else None

    rows = [
        [
            "seconds per epoch",
            ours["seconds_per_epoch"],
            base["seconds_per_epoch"],
            ratio(base["seconds_per_epoch"], ours["seconds_per_epoch"]),
        ]
    ]
    rows += [
        [
            f"time to {k} test accuracy",
            reach(ours, k),
            reach(base, k),
            ratio(secs(base, k), secs(ours, k)),
        ]
        for k in ("99.5%", "99.6%")
    ]
    rows += [
        [
            "best test accuracy, any epoch (%)",
            ours["best_test_accuracy"] * 100,
            base["best_test_accuracy"] * 100,
            None,
        ],
        [
            "test accuracy of the epoch chosen on validation (%)",
            selected(ours),
            selected(base),
            None,
        ],
        ["epochs run", ours["epochs_run"], base["epochs_run"], None],
        ["peak RSS (MB)", ours["peak_rss_mb"], base["peak_rss_mb"], None],
        [
            "process RSS at the recipe's start (MB; one process, ours first)",
            ours.get("rss_at_start_mb"),
            base.get("rss_at_start_mb"),
            None,
        ],
    ]
    table = md_table(["", "ours", "tutorial", "tutorial / ours"], rows)
    scope = f"{data['epoch_budget']} epochs each" + (
        f", {data['train_subset']} training images" if data["train_subset"] else ""
    )
    out = (
        f"### Training: our recipe vs the tutorial recipe\n\nSame data, same run, "
        f"{scope}; test accuracy measured after every epoch only to time the targets.\n\n"
        f"{table}\n"
    )
    prof = data.get("profile_one_epoch")
    if prof:
        parts = md_table(
            ["part of one epoch (ours)", "seconds", "share"],
            [
                [k.replace("_", " "), v, f"{prof['parts_share'][k] * 100:.0f} %"]
                for k, v in prof["parts_s"].items()
            ],
        )
        out += f"\n{parts}\n"
    return out + f"\n{machine_line(data)}\n"


def _verdict(r: dict[str, Any]) -> str:
    if r["met"]:
        return "yes"
    return "**no**" if r.get("required", True) else "**no** (known issue, not yet required)"


def load(data: dict[str, Any]) -> str:
    ld, mem, stop = data["load"], data["memory"], data["shutdown"]
    fresh = stop.get("new_clients_around_sigterm", {})
    kinds = md_table(
        ["request", "expected", "count", "statuses", "p50 ms", "p99 ms"],
        [
            [
                k,
                v["expected"],
                v["count"],
                ", ".join(f"{s}: {n}" for s, n in v["statuses"].items()),
                v["latency_ms"].get("p50"),
                v["latency_ms"].get("p99"),
            ]
            for k, v in ld["by_kind"].items()
        ],
    )
    reqs = md_table(
        ["requirement", "met", "measured"],
        [[r["requirement"], _verdict(r), str(r["detail"])[:90]] for r in data["requirements"]],
    )
    return (
        f"### Load test\n\n{ld['requests']} requests in {ld['seconds']:g} s "
        f"({ld['requests_per_s']:g} req/s) at concurrency {data['concurrency']}, ~80 % "
        f"valid and ~20 % invalid; latency p50 {ld['latency_ms']['p50']:.1f} ms, p99 "
        f"{ld['latency_ms']['p99']:.1f} ms. Server RSS {mem.get('cold_mb', '–')} MB cold, "
        f"{mem['before_mb']} MB after warm-up, {mem['after_mb']} MB after the load. SIGTERM "
        f"with {stop['in_flight_requests']} requests in flight: {stop['statuses']}, exit "
        f"code {stop['exit_code']} after {stop['exit_seconds_after_sigterm']} s; "
        f"{fresh.get('clients', 0)} new clients connecting around the signal: "
        f"{fresh.get('outcomes', {})}.\n\n"
        f"{kinds}\n\n{reqs}\n\n{machine_line(data)}\n"
    )


def train_step(data: dict[str, Any]) -> str:
    rows = [
        [v["variant"], v["step_ms"], v["epoch_s"], v["speedup_vs_float32"]]
        for v in data["variants"]
    ]
    aug = data["augmentation"]
    return (
        f"### One training step (digitnet, batch {data['batch']}, {data['threads']} threads)\n\n"
        f"{md_table(['variant', 'ms/step', 's/epoch (55k)', 'x float32'], rows)}\n\n"
        f"Augmentation per epoch: per-sample PIL {aug['per_sample_pil_epoch_s']} s, batched "
        f"on tensors {aug['batched_tensor_epoch_s']} s ({aug['speedup']}x).\n\n"
        f"{machine_line(data)}\n"
    )


def _attack_cell(row: dict[str, Any] | None) -> list[Any]:
    if row is None:
        return ["–"] * 4
    probe = row["probe"]["all_ms"]
    worst = f"{probe['max']:,.0f}" if probe.get("n") else "–"
    if row["probe"]["failures"]:
        worst += f" ({row['probe']['failures']} failed)"
    return [row["result"], row["answered_s"], worst, row["rss_mb"]["peak"]]


def attack(data: dict[str, Any]) -> str:
    """Each attack against the hardened server, beside the same attack against the code
    before hardening (``attack_before.json``, when present), one worker."""
    before_path = RESULTS / "attack_before.json"
    before = json.loads(before_path.read_text(encoding="utf-8")) if before_path.is_file() else None

    def by_case(result: dict[str, Any] | None, workers: int) -> dict[str, dict[str, Any]]:
        configs = [c for c in (result or {}).get("configs", []) if c["workers"] == workers]
        return {row["case"]: row for row in configs[0]["cases"]} if configs else {}

    sections = ["## Attacks (`make attack`)\n"]
    for config in data["configs"]:
        workers = config["workers"]
        old = by_case(before, workers)
        rows = [
            [row["case"], *_attack_cell(old.get(row["case"])), *_attack_cell(row)]
            for row in config["cases"]
        ]
        headers = ["case", "before: got", "s", "probe max ms", "RSS peak MB"]
        headers += ["now: got", "s", "probe max ms", "RSS peak MB"]
        sections.append(f"`--workers {workers}`:\n\n" + md_table(headers, rows) + "\n")
    sections.append(machine_line(data) + "\n")
    return "\n".join(sections)


def _pc(x: float | None) -> str | None:
    return None if x is None else f"{x * 100:.2f} %"


def rejection(data: dict[str, Any]) -> str:
    """Held-apart non-digits: share flagged / AUROC / FPR at 95 % TPR per model and method;
    then calibration error and the cost of the verdict."""
    sets = [
        "fashion_mnist",
        "fashion_mnist_uploaded",
        "unseen_fonts",
        "unseen_scribbles",
        "several_digits",
    ]
    rows = []
    for ref, model in data["models"].items():
        for method, m in model["methods"].items():
            label = f"{ref} `{method}`" + (" (its own)" if m["model's own"] else "")
            cells = [
                f"{_pc(m['negatives'][s]['flagged'])} / {m['negatives'][s]['auroc']:.4f} / "
                f"{_pc(m['negatives'][s]['fpr_at_95_tpr'])}"
                for s in sets
            ]
            flagged_real = max(v for k, v in m["positives"].items() if k != "mnist_test")
            rows.append(
                [
                    label,
                    *cells,
                    _pc(m["all_negatives"]["flagged"]),
                    f"{m['all_negatives']['auroc']:.4f}",
                    _pc(m["positives"]["mnist_test"]),
                    _pc(flagged_real),
                ]
            )
    table = md_table(
        [
            "model, method",
            *[f"{s}: flagged / AUROC / FPR95" for s in sets],
            "all: flagged",
            "all: AUROC",
            "MNIST test flagged",
            "worst redrawn variant flagged",
        ],
        rows,
    )
    cal_rows = []
    for ref, model in data["models"].items():
        e = model["ece"]
        real = [k for k in e if k != "mnist_test"]
        worst = max(real, key=lambda k: e[k]["after"])
        cal_rows.append(
            [
                ref,
                _pc(model["test_accuracy"]),
                _pc(e["mnist_test"]["before"]),
                _pc(e["mnist_test"]["after"]),
                f"{worst}: {_pc(e[worst]['before'])} → {_pc(e[worst]['after'])}",
                model["answer_ms"]["added_p50_ms"],
            ]
        )
    cal = md_table(
        [
            "model",
            "MNIST test accuracy",
            "ECE before",
            "ECE after",
            "worst redrawn variant ECE",
            "verdict adds, ms p50",
        ],
        cal_rows,
    )
    stroke_rows = [
        [
            ref,
            name,
            r["without"]["p50"],
            r["with_band"]["p50"],
            r["added_p50_ms"],
            r["cpu_ms_per_call"]["without"],
            r["cpu_ms_per_call"]["with_band"],
        ]
        for ref, model in data["models"].items()
        for name, r in model.get("stroke_ms", {}).items()
    ]
    stroke = md_table(
        [
            "model",
            "input",
            "preprocess p50 ms, no band",
            "with band",
            "added",
            "CPU ms, no band",
            "CPU ms, with band",
        ],
        stroke_rows,
    )
    return (
        "## Not a digit and calibration (`python benchmarks/bench_rejection.py`)\n\n"
        f"{table}\n\n{cal}\n\n{stroke}\n\n{machine_line(data)}\n"
    )


def prediction_log(data: dict[str, Any]) -> str:
    """Throughput with the prediction log on and off, same server and request."""
    rps, cpu = data["requests_per_s"], data["server_cpu_ms_per_request"]
    table = md_table(
        ["prediction log", "req/s at concurrency 8", "server CPU ms per request"],
        [[name, rps[name], cpu[name]] for name in ("log on", "log off")],
    )
    verdict = "met" if data["met"] else "**missed**"
    return (
        "## What keeping answers costs (`python benchmarks/bench_logging.py`)\n\n"
        f"{table}\n\nThe log costs {data['cost'] * 100:.1f} % of throughput "
        f"(target at most {data['target_max_cost'] * 100:.0f} %: {verdict}); "
        f"{data['answers_logged']:,} answers written.\n\n{machine_line(data)}\n"
    )


def _target(data: dict[str, Any], key: str, text: str) -> str:
    return f"{text}: {'met' if data['met'][key] else '**not met**'}"


def realistic_tables(data: dict[str, Any]) -> str:
    """The README's two tables on the realistic mix: ours against the baseline with the
    targets of #17, and where our CPU per request goes against each part's floor."""
    ours, base = (next(s for s in data["servers"] if s["name"] == n) for n in NAMES)
    ratios = data["ratios_to_baseline"]

    def run(server: dict[str, Any], c: str) -> dict[str, Any]:
        return dict(server["runs"][c])

    def latency(server: dict[str, Any]) -> str:
        ms = run(server, "c1")["latency_ms"]
        return f"{ms['p50']:.2f} / {ms['p95']:.2f} ms"

    rows = [
        [
            "server CPU per request, concurrency 8",
            f"{run(ours, 'c8')['server_cpu_ms_per_request']:.2f} ms",
            f"{run(base, 'c8')['server_cpu_ms_per_request']:.2f} ms",
            f"{ratios['server_cpu_per_request']:.2f}",
            _target(data, "server_cpu_per_request", "at most 1/3"),
        ],
        [
            "latency p50 / p95, concurrency 1",
            latency(ours),
            latency(base),
            f"{ratios['latency_p50']:.2f} (p50)",
            _target(data, "latency_p50", "at most 1/2"),
        ],
        [
            "requests per second, concurrency 8 / 32",
            f"{run(ours, 'c8')['requests_per_s']:.0f} / {run(ours, 'c32')['requests_per_s']:.0f}",
            f"{run(base, 'c8')['requests_per_s']:.0f} / {run(base, 'c32')['requests_per_s']:.0f}",
            f"{ratios['throughput_c8']:.2f} (c8)",
            _target(data, "throughput_c8", "at least 3x"),
        ],
    ]
    for endpoint, runs in ours.get("paths", {}).items():
        rows.append(
            [
                f"`POST {endpoint}`, 4-digit numbers",
                f"p50 {runs['c1']['latency_ms']['p50']:.2f} ms, "
                f"{runs['c8']['requests_per_s']:.0f} req/s (c8), "
                f"{runs['c8']['server_cpu_ms_per_request']:.2f} ms CPU",
                "–",
                "–",
                "–",
            ]
        )
    first = md_table(["", "ours", "baseline", "ratio", "target"], rows)
    cost = data["cost_against_floor"]
    parts = cost["parts_ms"]
    floors = [
        ("decode", "decoding", "Pillow's decoder alone, at the same scale"),
        ("prepare", "preparing (ink map, layout, stroke width)", "none: the baseline skips it"),
        ("model", "the model", "the ONNX Runtime session alone, batch 1"),
        ("answer", "the answer (probabilities, verdict)", "none"),
        (
            "http_framework_rest",
            "HTTP, framework, middleware, log, metrics, threads",
            f"a bare ASGI app on the same uvicorn (one FastAPI route: "
            f"{cost['fastapi_route_cpu_ms']:.2f} ms)",
        ),
    ]
    second = md_table(
        ["CPU ms per request (c8)", "ours", "floor", "the floor is"],
        [
            [label, f"{parts[key]['ours']:.2f}", f"{parts[key]['floor']:.2f}", what]
            for key, label, what in floors
        ]
        + [
            [
                "**total**",
                f"**{cost['server_cpu_ms']:.2f}**",
                f"**{cost['sum_of_floors_ms']:.2f}**",
                f"the target, a third of the baseline's: {cost['target_ms']:.2f}",
            ]
        ],
    )
    return f"{first}\n\n{second}"


NAMES = ("digitrec", "flask-baseline")


def realistic(data: dict[str, Any]) -> str:
    """Ours against the baseline on the realistic mix, with the targets of #17."""
    rows = [
        [
            s["name"],
            s["runs"]["c8"]["server_cpu_ms_per_request"],
            s["runs"]["c1"]["latency_ms"]["p50"],
            s["runs"]["c1"]["latency_ms"].get("p95"),
            s["runs"]["c8"]["requests_per_s"],
            s["runs"]["c32"]["requests_per_s"],
        ]
        for s in data["servers"]
    ]
    table = md_table(
        ["server", "CPU ms/request (c8)", "p50 ms (c1)", "p95 ms (c1)", "req/s c8", "req/s c32"],
        rows,
    )
    stages = ", ".join(
        f"{stage} {data['stages_in_process'][stage]['share'] * 100:.0f} %"
        for stage in ("open", "prepare", "infer", "answer")
    )
    mix = data["mix"]
    return (
        "## Speed on a realistic mix (`python benchmarks/bench_realistic.py`)\n\n"
        f"{mix['files']} files ({', '.join(mix['variants'])}; {mix['bytes_mean']:,} bytes on "
        f"average), ours with {data['workers']} worker(s); the floors are a bare ASGI app and "
        f"a bare FastAPI route on the same HTTP stack.\n\n{table}\n\n"
        f"{realistic_tables(data)}\n\nTime per stage in-process: {stages}.\n\n"
        f"{machine_line(data)}\n"
    )


def decoders(data: dict[str, Any]) -> str:
    """Decoding the realistic mix: Pillow against the other decoders."""
    names = ["pillow", "opencv", "libspng", "simplejpeg"]
    rows = [
        [variant, r["format"], r["files"], *(r.get(name, "–") for name in names)]
        for variant, r in data["by_variant_ms"].items()
    ]
    means = ", ".join(f"{k.replace('_', ' ')} {v} ms" for k, v in data["mix_mean_ms"].items())
    return (
        "## Decoding the realistic mix (`python benchmarks/bench_decoders.py`)\n\n"
        f"{md_table(['variant (ms per file)', 'format', 'files', *names], rows)}\n\n"
        f"Mean per file over the mix: {means}.\n\n{machine_line(data)}\n"
    )


def _share(value: float) -> str:
    return f"{value * 100:.1f} %"


def scripts_table(data: dict[str, Any]) -> str:
    """The README's table of #14: per script, the fonts and the accuracy on held-out ones."""
    from digitrec.scripts import digit_char

    targets = data["targets"]

    def mark(value: float, target: float) -> str:
        return f"{value * 100:.2f} %" + ("" if value >= target else " (**missed**)")

    rows = []
    for script, r in data["scripts"].items():
        fonts = r.get("fonts") or {}
        rows.append(
            [
                script,
                "".join(digit_char(script, d) for d in range(10)),
                ", ".join(fonts.get("train", [])),
                ", ".join(fonts.get("held_out", [])),
                f"{r['images']:,}",
                mark(r["given"], targets["given"]),
                _share(r["given_not_a_digit"]),
                mark(r["auto"], targets["auto"]),
                _share(r["auto_not_a_digit"]),
                _share(r["auto_uncertain"]),
            ]
        )
    mnist = data["mnist_test"]
    rows.append(
        [
            "latin (MNIST test)",
            "0123456789",
            "MNIST training digits",
            "–",
            f"{mnist['images']:,}",
            mark(mnist["latin"], targets["latin"]),
            _share(mnist["latin_not_a_digit"]),
            mark(mnist["auto"], targets["latin"]),
            _share(mnist["auto_not_a_digit"]),
            "–",
        ]
    )
    if "mnist_realistic" in data:  # the same digits as people upload them: no target
        uploaded = data["mnist_realistic"]
        rows.append(
            [
                "latin (MNIST test, as uploaded)",
                "0123456789",
                "MNIST training digits",
                "–",
                f"{uploaded['images']:,}",
                f"{uploaded['latin'] * 100:.2f} %",
                _share(uploaded["latin_not_a_digit"]),
                f"{uploaded['auto'] * 100:.2f} %",
                _share(uploaded["auto_not_a_digit"]),
                "–",
            ]
        )
    return md_table(
        [
            "script",
            "digits",
            "fonts trained on",
            "held out (test)",
            "test images",
            "script given",
            "given: not a digit",
            "auto",
            "auto: not a digit",
            "auto unsure",
        ],
        rows,
    )


def script_numbers_table(data: dict[str, Any]) -> str:
    """The README's table of whole numbers in other scripts (#14 with #13): per script,
    generated numbers of held-out font digits read in the script, with auto, and with
    the pieces cut as Latin digits are."""
    rows = [
        [
            script,
            f"{got['count']:,}",
            _share(got["given"]),
            _share(got["given_miscounted"]),
            _share(got["auto"]),
            _share(got["latin_cuts"]),
        ]
        for script, r in data["scripts"].items()
        for got in [r["numbers"]]
    ]
    return md_table(
        [
            "script",
            "numbers (2-4 digits)",
            "script given",
            "given: pieces miscounted",
            "auto",
            "script given, Latin cuts",
        ],
        rows,
    )


def scripts(data: dict[str, Any]) -> str:
    us, http = data["batch1_us"], data["http_c1"]
    return (
        "## Digits of other scripts (`python benchmarks/bench_scripts.py`)\n\n"
        f"Script model {data['script_model']}, digit model {data['digit_model']}.\n\n"
        f"{scripts_table(data)}\n\n{script_numbers_table(data)}\n\n"
        f"Model time at batch 1: {us['digit_model']} µs alone, "
        f"{us['with_script_model']} µs with the script model. HTTP p50 at concurrency 1 on "
        f"{http['input']}: {http['p50_ms']} ms (latin / without: {http['latin_over_without']}, "
        f"auto / without: {http['auto_over_without']}); server CPU per request "
        f"{http['cpu_ms_per_request']} ms (latin / without: {http['cpu_latin_over_without']}, "
        f"auto / without: {http['cpu_auto_over_without']}).\n\n"
        f"{machine_line(data)}\n"
    )


def replicas(data: dict[str, Any]) -> str:
    rows = []
    for config in data["configs"]:
        for name, run in config["runs"].items():
            cpu = run["cpu_ms_per_request"]
            failed = sum(v for k, v in run["statuses"].items() if str(k) not in ("200", "503"))
            rows.append(
                [
                    config["name"],
                    name[1:],
                    run["answered_per_s"],
                    run["statuses"].get("503", run["statuses"].get(503, 0)),
                    failed + sum(run["transport_errors"].values()),
                    run["latency_ms"]["p50"],
                    run["latency_ms"]["p95"],
                    cpu["replicas"],
                    cpu.get("haproxy", "-"),
                    cpu.get("postgres+redis", "-"),
                    cpu["load generator"],
                ]
            )
    headers = [
        "configuration",
        "concurrency",
        "answered/s",
        "shed (503)",
        "failed",
        "p50 ms",
        "p95 ms",
        "replicas CPU ms/req",
        "HAProxy CPU ms/req",
        "PostgreSQL+Redis CPU ms/req",
        "client CPU ms/req",
    ]
    return (
        "## Several replicas behind HAProxy (`make bench-replicas`)\n\n"
        f"The realistic mix ({data['mix']['files']} files), {data['seconds_per_figure']} s per "
        "figure; PostgreSQL, Redis and one worker per replica, all on this machine. A 503 "
        "is a replica shedding load (too many photos waiting for the decoding sandbox).\n\n"
        f"{md_table(headers, rows)}\n\n{machine_line(data)}\n"
    )


SECTIONS: dict[str, tuple[Callable[[dict[str, Any]], str], str]] = {
    "bench_inference": (inference, "python benchmarks/bench_inference.py"),
    "bench_http": (http, "python benchmarks/bench_http.py"),
    "bench_train": (train, "make bench-train"),
    "bench_train_step": (train_step, "python benchmarks/bench_train_step.py"),
    "load_test": (load, "make load"),
    "attack": (attack, "make attack"),
    "bench_rejection": (rejection, "python benchmarks/bench_rejection.py"),
    "bench_logging": (prediction_log, "python benchmarks/bench_logging.py"),
    "bench_realistic": (realistic, "python benchmarks/bench_realistic.py"),
    "bench_decoders": (decoders, "python benchmarks/bench_decoders.py"),
    "bench_scripts": (scripts, "python benchmarks/bench_scripts.py --home DIR"),
    "bench_replicas": (replicas, "make bench-replicas"),
}


def build(results_dir: Path) -> str:
    parts = [
        "<!-- Written by benchmarks/summary.py from benchmarks/results/*.json; "
        "do not edit by hand. -->\n"
    ]
    for name, (render, command) in SECTIONS.items():
        path = results_dir / f"{name}.json"
        if not path.is_file():
            parts.append(f"_{name}: not measured yet (`{command}`)._\n")
            continue
        parts.append(render(json.loads(path.read_text(encoding="utf-8"))))
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of result files")
    args = parser.parse_args()
    text = build(args.results)
    target = atomic_write_text(args.results / "SUMMARY.md", text)
    print(text)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
