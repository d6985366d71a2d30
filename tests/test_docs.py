"""The README's figures come from the shipped model's manifest and the benchmark results."""

from __future__ import annotations

import re
from pathlib import Path

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
    assert bundled_entry.manifest["settings"]["epochs"] == 15


def test_shipped_model_was_made_by_the_default_recipe(bundled_entry: ModelEntry) -> None:
    from digitrec.config import Settings

    defaults = Settings(_env_file=None).training_dict()
    stored = bundled_entry.manifest["settings"]
    differing = {
        k
        for k in defaults
        if k not in ("device", "threads", "name") and stored.get(k) != defaults[k]
    }
    assert not differing, {k: (stored.get(k), defaults[k]) for k in differing}


def test_readme_quotes_the_http_benchmark() -> None:
    import json

    results = json.loads((ROOT / "benchmarks" / "results" / "bench_http.json").read_text())
    targets = results["targets"]
    best = results["best_config_c8"]
    assert best == "digitrec workers=2" and "`digitrec serve --workers 2`" in README
    p50 = targets["default"]["p50_c1_ms"]
    speedup = targets[f"best ({best})"]["throughput_c8_vs_baseline"]
    assert f"**{p50:.2f} ms**" in README, p50
    assert f"**{speedup:.2f}x**" in README, speedup
    met = "met" if targets[f"best ({best})"]["throughput_c8_met"] else "not met"
    assert f"(target ≥ 3x: **{met}**)" in README
