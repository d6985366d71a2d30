"""The README's figures come from the shipped model's manifest and the benchmark results."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from digitrec.registry import ModelEntry

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_quotes_the_manifest(bundled_entry: ModelEntry) -> None:
    metrics = bundled_entry.manifest["metrics"]
    accuracy = f"{metrics['test_accuracy'] * 100:.2f} %"
    quoted = set(re.findall(r"\*\*(\d\d\.\d\d %)\*\*", README))
    assert quoted == {accuracy}, f"README quotes {quoted}, the manifest says {accuracy}"
    assert f"({metrics['test_errors']} errors)" in README
    assert f"{bundled_entry.manifest['architecture']['parameters']:,} parameters" in README


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make serve" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_shipped_model_is_small(bundled_entry: ModelEntry) -> None:
    total = sum(f["bytes"] for f in bundled_entry.manifest["files"].values())
    assert total < 5 * 1024 * 1024
    assert bundled_entry.manifest["dry_run"] is False


def test_shipped_model_was_made_by_the_default_recipe(bundled_entry: ModelEntry) -> None:
    from digitrec.config import Settings

    defaults = Settings(_env_file=None).training_dict()
    # Models from before imported datasets (#14) were all trained on MNIST.
    stored = {"dataset": "mnist", **bundled_entry.manifest["settings"]}
    # How to fine-tune on corrections does not shape a model trained from scratch.
    finetuning = {"with_feedback", "from_version", "finetune_epochs", "finetune_lr"}
    finetuning |= {k for k in defaults if k.startswith("feedback_")}
    assert not stored.get("with_feedback")
    differing = {
        k
        for k in defaults
        if k not in ("device", "threads", "name", *finetuning) and stored.get(k) != defaults[k]
    }
    assert not differing, {k: (stored.get(k), defaults[k]) for k in differing}


HTTP_RESULTS = ROOT / "benchmarks" / "results" / "bench_http.json"


def server(results: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in results["servers"] if s["name"] == name)


def serve_options() -> set[str]:
    """The options `digitrec serve` accepts, read from the real parser."""
    from digitrec.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {o for action in commands.choices["serve"]._actions for o in action.option_strings}


def invocation(results: dict[str, Any], name: str) -> str:
    """How the README names a configuration: `digitrec serve` with what sets it apart from
    the default, as a flag where there is one (``DIGITREC_WORKERS=2`` is ``--workers 2``),
    else as the environment variable."""
    default = server(results, "digitrec default")["settings"]
    settings = server(results, name)["settings"]
    options, env, flags = serve_options(), [], []
    for key, value in settings.items():
        flag = "--" + key.removeprefix("DIGITREC_").lower().replace("_", "-")
        if default.get(key) == value:
            continue
        if flag in options:
            flags.append(f"{flag} {value}")
        else:
            env.append(f"{key}={value}")
    return "`" + " ".join([*env, "digitrec serve", *flags]) + "`"


def http_claims(results: dict[str, Any]) -> dict[str, list[str]]:
    """What each README row about HTTP must say, derived from a results file of any machine."""
    best = results["best_config_c8"]
    default, top = results["targets"]["default"], results["targets"][f"best ({best})"]
    base = results["baseline_used_for_ratios"]
    runs = server(results, best)["runs"]
    flask_p50 = server(results, "flask-baseline")["runs"]["c1"]["latency_ms"]["p50"]
    met = {True: "met", False: "not met"}
    claims = {
        "HTTP p50 at concurrency 1": [
            f"**{default['p50_c1_ms']:.2f} ms**",
            f"(target ≤ {default['p50_c1_target_ms']:g} ms: {met[default['p50_c1_met']]})",
            f"vs {flask_p50:.2f} ms for the Flask baseline",
        ],
        "HTTP throughput at concurrency 8": [
            invocation(results, best),
            f"{runs['c8']['requests_per_s']:.0f} req/s vs {base['c8']:.0f} for the baseline",
            f"**{top['throughput_c8_vs_baseline']:.2f}x**",
            f"(target ≥ {top['throughput_c8_target']:g}x: **{met[top['throughput_c8_met']]}**)",
            f"at concurrency 32: {runs['c32']['requests_per_s']:.0f} req/s, "
            f"{runs['c32']['requests_per_s'] / base['c32']:.2f}x",
        ],
    }
    if invocation(results, best) != invocation(results, "digitrec default"):
        rps = server(results, "digitrec default")["runs"]["c8"]["requests_per_s"]
        claims["the same with the default single worker"] = [
            f"{rps:.0f} req/s: {default['throughput_c8_vs_baseline']:.2f}x"
        ]
    return claims


def test_readme_quotes_the_http_benchmark() -> None:
    # Whichever configuration this machine's `make bench` found best, the README names it
    # and quotes its figures as the results file states them.
    for label, quotes in http_claims(json.loads(HTTP_RESULTS.read_text())).items():
        (row,) = [line for line in README.splitlines() if label in line]
        missing = [quote for quote in quotes if quote not in row]
        assert not missing, f"README row {label!r} lacks {missing}: {row}"


def test_readme_attack_table_is_the_one_the_results_produce() -> None:
    """The README's attack table is the one ``benchmarks/summary.py`` renders from
    ``attack.json`` and ``attack_before.json`` (whatever machine ran ``make attack``)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from summary import attack
    finally:
        sys.path.pop(0)
    results = ROOT / "benchmarks" / "results"
    rendered = attack(json.loads((results / "attack.json").read_text(encoding="utf-8")))
    one_worker = rendered.split("`--workers 1`:")[1].split("`--workers")[0].strip()
    assert one_worker in README
    assert "make attack" in README and "attack" in (ROOT / "Makefile").read_text()


def test_readme_rejection_tables_are_the_ones_the_results_produce(
    bundled_entry: ModelEntry,
) -> None:
    """The README's not-a-digit and calibration tables are the ones
    ``benchmarks/summary.py`` renders from ``bench_rejection.json``, which measured the
    shipped model."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from summary import rejection
    finally:
        sys.path.pop(0)
    data = json.loads((ROOT / "benchmarks" / "results" / "bench_rejection.json").read_text())
    assert bundled_entry.ref in data["models"]
    tables = rejection(data).split("\n\n")[1:3]
    for table in tables:
        assert table in README
    assert "python benchmarks/bench_rejection.py" in README


def test_readme_walkthrough_is_the_transcript_the_script_wrote() -> None:
    """The README's lifecycle walkthrough is `make walkthrough`'s real output, verbatim."""
    path = ROOT / "benchmarks" / "results" / "lifecycle_walkthrough.txt"
    transcript = path.read_text(encoding="utf-8").strip()
    assert f"```text\n{transcript}\n```" in README
    assert "make walkthrough" in README


def test_readme_quotes_what_keeping_answers_costs() -> None:
    data = json.loads((ROOT / "benchmarks" / "results" / "bench_logging.json").read_text())
    rps = data["requests_per_s"]
    assert f"costs {data['cost'] * 100:.1f} % of throughput" in README
    assert f"{rps['log on']:.0f} against {rps['log off']:.0f} requests" in README


def test_readme_replica_figures_are_the_ones_the_results_produce() -> None:
    """The README's 1/2/3-replica table is the one ``summary.replicas`` renders from
    ``bench_replicas.json``, and the costs quoted under it are that file's."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from summary import replicas
    finally:
        sys.path.pop(0)
    data = json.loads((ROOT / "benchmarks" / "results" / "bench_replicas.json").read_text())
    rendered = replicas(data)
    table = "\n".join(line for line in rendered.splitlines() if line.startswith("|"))
    assert table in README
    two = next(c for c in data["configs"] if c["name"] == "2 behind HAProxy")["runs"]["c8"]
    cpu = two["cpu_ms_per_request"]
    busy = two["answered_per_s"] * sum(cpu.values()) / 1000
    text = " ".join(README.split())
    for quote in (
        f"a replica spends {cpu['replicas']:.2f} ms of CPU per request",
        f"HAProxy {cpu['haproxy']:.2f} ms, PostgreSQL and Redis together "
        f"{cpu['postgres+redis']:.2f} ms, the load generator {cpu['load generator']:.2f} ms",
        f"at {two['answered_per_s']:.0f} answers per second that is {busy:.2f} CPU-seconds",
    ):
        assert quote in text, quote


def _results(name: str) -> dict[str, Any]:
    return dict(json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text()))


def test_readme_realistic_mix_tables_are_the_ones_the_results_produce() -> None:
    """The realistic mix comes first in the README's performance section, with the two
    tables ``summary.realistic_tables`` renders from ``bench_realistic.json`` (ours
    against the baseline and the targets; each part against its floor), and the figures
    quoted about the floors and the candidates are the results files' own."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from summary import realistic_tables
    finally:
        sys.path.pop(0)
    data = _results("bench_realistic")
    assert realistic_tables(data) in README
    section = README.split("## Measured performance")[1]
    assert section.index("**On a realistic mix**") < section.index("**Training**")
    text = " ".join(README.split())
    cost = data["cost_against_floor"]
    assert f"add up to {cost['sum_of_floors_ms']:.2f} ms of the target's " in text
    assert f"{cost['target_ms']:.2f} ms" in text
    q = _results("bench_inference")["int8"]
    assert (
        f"{q['us_batch1_p50']['float']:.0f} µs against {q['us_batch1_p50']['int8']:.0f} µs "
        f"at batch 1 ({q['speedup']:.2f}x); MNIST test accuracy "
        f"{q['mnist_test_accuracy']['float']:.2f} % against "
        f"{q['mnist_test_accuracy']['int8']:.2f} %" in text
    )
    mix = _results("bench_decoders")["mix_mean_ms"]
    assert f"Pillow {mix['pillow']:.2f} ms, OpenCV {mix['opencv']:.2f} ms" in text
    assert f"the fastest for each kind of file {mix['best_of_each_variant']:.2f} ms" in text


def inference_rows(data: dict[str, Any]) -> list[str]:
    """The README's model and preprocessing rows, from ``bench_inference.json``."""
    us = {(r["backend"], r["threads"], r["batch"]): r["us_per_image_p50"] for r in data["model"]}
    pre = {r["input"]: r for r in data["preprocess"]}
    canvas, phone = pre["canvas_png"], pre["phone_jpeg"]
    return [
        f"| model, batch 1: ONNX Runtime vs PyTorch eager (1 thread) | "
        f"{us[('onnx', 1, 1)]:.0f} µs vs {us[('torch', 1, 1)]:.0f} µs per image "
        f"({us[('torch', 1, 1)] / us[('onnx', 1, 1)]:.1f}x) |",
        f"| model, batch 256, 2 threads: ONNX Runtime vs PyTorch | "
        f"{us[('onnx', 2, 256)]:.0f} µs vs {us[('torch', 2, 256)]:.0f} µs per image "
        f"({us[('torch', 2, 256)] / us[('onnx', 2, 256)]:.1f}x) |",
        f"| preprocessing, 280x280 canvas PNG | {canvas['ms']['p50']:.2f} ms (PNG decode "
        f"{canvas['stages_ms_p50']['decode']:.2f}, ink map "
        f"{canvas['stages_ms_p50']['ink_map']:.2f}, layout "
        f"{canvas['stages_ms_p50']['mnist_layout']:.2f}) |",
        f"| preprocessing, 12-megapixel phone JPEG (decoded at 1/8 scale) | "
        f"{phone['ms']['p50']:.1f} ms (decode {phone['stages_ms_p50']['decode']:.1f}) |",
    ]


def test_readme_inference_rows_are_the_ones_the_results_produce() -> None:
    for row in inference_rows(_results("bench_inference")):
        assert row in README


def test_readme_script_table_is_the_one_the_results_produce() -> None:
    """The README's tables of digits and numbers of other scripts (#14) are the ones
    ``summary.scripts_table`` and ``script_numbers_table`` render from
    ``bench_scripts.json``, which measured the script model that ships."""
    import sys

    from digitrec.multiscript import shipped_folder

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from summary import script_numbers_table, scripts_table
    finally:
        sys.path.pop(0)
    data = _results("bench_scripts")
    folder = shipped_folder()
    assert folder is not None and data["script_model"] == folder.name
    assert scripts_table(data) in README
    assert script_numbers_table(data) in README  # numbers written in those scripts
    http = data["http_c1"]  # what the script model costs, quoted in the text

    def more(ratio: float, places: int) -> str:
        return f"{(ratio - 1) * 100:+.{places}f} %"

    latin = f"({more(http['latin_over_without'], 1)} and {more(http['cpu_latin_over_without'], 1)}"
    auto = f"({more(http['auto_over_without'], 0)} and {more(http['cpu_auto_over_without'], 0)}"
    assert latin in README and auto in README, (latin, auto)
