"""The model card: every figure comes from the manifest, never retyped, and the card
shipped with the bundled model is exactly what its manifest renders."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from digitrec.card import CARD, render, summary, write_model_card
from digitrec.registry import ModelEntry


def fake_entry(base: ModelEntry, folder: Path, **changes: Any) -> ModelEntry:
    """The shipped manifest with top-level keys replaced (``None`` removes the key)."""
    manifest = copy.deepcopy(base.manifest)
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    return ModelEntry(path=folder, manifest=manifest)


def table_rows(card: str, heading: str) -> list[str]:
    """The data rows of the table under ``## heading``."""
    section = card.split(f"## {heading}\n", 1)[1].split("\n\n", 1)[0]
    return [line for line in section.splitlines()[2:] if line.startswith("|")]


def test_the_shipped_card_is_rendered_from_its_manifest(bundled_entry: ModelEntry) -> None:
    assert render(bundled_entry) == (bundled_entry.path / CARD).read_text(encoding="utf-8")


def test_summary_reads_the_manifest(bundled_entry: ModelEntry) -> None:
    m = bundled_entry.manifest
    s = summary(bundled_entry)
    assert (s["name"], s["version"]) == (m["name"], m["version"])
    assert s["architecture"] == m["architecture"]["name"]
    assert s["parameters"] == m["architecture"]["parameters"]
    for key in ("test_accuracy", "test_size", "val_accuracy", "epochs"):
        assert s[key] == m["metrics"][key]
    assert s["trained_at"] == m["created_at"] and s["device"] == m["device"]
    assert s["train_seconds"] == m["timings"]["train_seconds"]
    assert s["preprocessing"] == m["preprocessing"] and s["dry_run"] is False


def test_summary_of_a_bare_manifest_has_no_invented_figures(tmp_path: Path) -> None:
    bare = ModelEntry(
        path=tmp_path,
        manifest={"name": "bare", "version": "v0", "architecture": {"name": "tiny"}},
    )
    s = summary(bare)
    assert s["architecture"] == "tiny" and s["dry_run"] is False and s["preprocessing"] == {}
    for key in ("parameters", "test_accuracy", "test_size", "val_accuracy", "trained_at"):
        assert s[key] is None
    assert s["train_seconds"] is None and s["epochs"] is None and s["device"] is None


def test_the_card_shows_this_manifests_figures(bundled_entry: ModelEntry, tmp_path: Path) -> None:
    metrics = {
        **bundled_entry.manifest["metrics"],
        "test_accuracy": 0.5,
        "test_size": 1234,
        "test_errors": 617,
        "per_class": [
            {"digit": 3, "precision": 0.25, "recall": 0.5, "f1": 1 / 3, "support": 7},
            {"digit": 8, "precision": 1.0, "recall": 0.125, "f1": 0.2222, "support": 9},
        ],
    }
    preprocessing = {**bundled_entry.manifest["preprocessing"], "mean": 0.5, "std": 0.25}
    entry = fake_entry(
        bundled_entry,
        tmp_path,
        metrics=metrics,
        preprocessing=preprocessing,
        name="toy",
        version="v7",
        git_commit=None,
        dry_run=True,
    )
    card = render(entry)
    assert card.startswith("# Model card: toy:v7\n")
    assert "| Test accuracy | 50.00 % on 1,234 MNIST test images |" in card
    assert "| Test errors | 617 |" in card
    assert "then (x - 0.5) / 0.25." in card
    assert "| Commit | unknown |" in card
    assert table_rows(card, "Per-class results (test)") == [
        "| 3 | 0.2500 | 0.5000 | 0.3333 | 7 |",
        "| 8 | 1.0000 | 0.1250 | 0.2222 | 9 |",
    ]
    assert "99.69" not in card  # nothing left of the shipped model's figures
    assert summary(entry)["dry_run"] is True


def test_a_model_without_metrics_is_not_measured(bundled_entry: ModelEntry, tmp_path: Path) -> None:
    card = render(fake_entry(bundled_entry, tmp_path, metrics=None))
    assert "| Test accuracy | not measured |" in card
    assert table_rows(card, "Per-class results (test)") == []


def test_write_model_card_writes_the_rendering_beside_the_manifest(
    bundled_entry: ModelEntry, tmp_path: Path
) -> None:
    entry = fake_entry(bundled_entry, tmp_path / "toy" / "v7", version="v7")
    (entry.path / CARD).write_text("a stale card")
    write_model_card(entry)
    assert (entry.path / CARD).read_text(encoding="utf-8") == render(entry)
    assert sorted(p.name for p in entry.path.iterdir()) == [CARD]  # no temporary left
