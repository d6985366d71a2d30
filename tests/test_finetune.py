"""`digitrec train --with-feedback`: fine-tuning on users' corrections stored through
``digitrec.feedback`` in a real SQLite database; a new version is registered with its
``feedback`` section, production does not move, too few corrections fail clearly, and
the fine-tune really learns what the corrections teach."""

from __future__ import annotations

import itertools
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitrec.config import Settings
from digitrec.data import Mnist
from digitrec.registry import Registry
from digitrec.training import run_training
from digitrec.training.finetune import held_out
from digitrec.training.loop import hold_then_decay
from tests.conftest import MNIST_CACHE, run_cli

# A small run needs few distinct non-digits and few redrawn digits to choose thresholds.
NEGATIVES_POOL, CALIBRATION_VARIANTS = 200, 30


def shipped_ref(home: Path) -> str:
    return Registry(home / "models").shipped().ref


def store_corrections(
    settings: Settings, images: np.ndarray, labels: list[int | None]
) -> list[str]:
    """Log one answer per image as the service does, then correct each with its label
    (None: not a digit). Ids are fixed, so the held-out split is known in advance."""
    from digitrec.db import Database
    from digitrec.feedback import PredictionLog, PredictionRecord, record_feedback

    db = Database.from_settings(settings)
    db.migrate()
    ids = [f"{i:032x}" for i in range(len(images))]
    log = PredictionLog(db)
    for pid, image in zip(ids, images, strict=True):
        log.add(
            PredictionRecord(
                id=pid,
                created_at=datetime.now(UTC),
                model=shipped_ref(settings.home),
                arm=None,
                experiment_id=None,
                client_hash=None,
                digit=0,
                confidence=0.5,
                verdict="not_a_digit",
                probabilities=[0.1] * 10,
                input=image,
            )
        )
    log.stop()
    for pid, label in zip(ids, labels, strict=True):
        record_feedback(db, pid, label=label)
    db.dispose()
    return ids


def cross(rng: np.random.Generator) -> np.ndarray:
    """A distinctive pattern the shipped model calls "not a digit": an X, drawn a little
    differently each time and laid out like MNIST (20x20 box in 28x28)."""
    img = Image.new("L", (112, 112), 0)
    draw = ImageDraw.Draw(img)

    def jitter() -> float:
        return float(rng.uniform(-6, 6))

    width = int(rng.integers(7, 11))
    a, b = 24 + jitter(), 88 + jitter()
    draw.line([(a, a + jitter()), (b, b + jitter())], 255, width)
    draw.line([(a + jitter(), b), (b + jitter(), a)], 255, width)
    out = np.zeros((28, 28), np.uint8)
    out[4:24, 4:24] = np.asarray(img.resize((20, 20), Image.Resampling.BILINEAR))
    return out


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    small = {
        "DIGITREC_NEGATIVES_POOL": str(NEGATIVES_POOL),
        "DIGITREC_CALIBRATION_VARIANTS": str(CALIBRATION_VARIANTS),
    }
    return run_cli(*args, home=home, env=small)


FINETUNE_ARGS = (
    "train",
    "--with-feedback",
    "--dry-run",
    "--no-progress",
    "--no-mixed-precision",
    "--train-subset",
    "500",
    "--val-size",
    "1000",
    "--threads",
    "2",
)


def test_held_out_split_is_a_fixed_hash_of_the_id() -> None:
    ids = [f"{i:032x}" for i in range(2000)]
    mask = held_out(ids, 0.2)
    assert np.array_equal(mask, held_out(list(reversed(ids)), 0.2)[::-1])  # order-free
    assert 0.17 < mask.mean() < 0.23
    assert not (held_out(ids, 0.1) & ~mask).any()  # a smaller share holds out a subset


def test_fine_tuning_rate_is_held_then_decays_to_zero() -> None:
    rates = [hold_then_decay(step, 100) for step in range(101)]
    assert rates[:50] == [1.0] * 50
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert rates[100] == pytest.approx(0.0)


@pytest.mark.mnist
def test_fine_tune_registers_a_new_version_and_never_promotes(tmp_path: Path, mnist: Mnist) -> None:
    from digitrec import aliases
    from digitrec.db import Database
    from digitrec.lifecycle import served_entry

    home = tmp_path / "home"
    settings = Settings(home=home, data_dir=MNIST_CACHE)
    n_digits, n_other = 32, 8
    images = np.concatenate(
        [mnist.test_images[:n_digits], np.random.default_rng(0).integers(0, 256, (n_other, 28, 28))]
    ).astype(np.uint8)
    labels: list[int | None] = [int(y) for y in mnist.test_labels[:n_digits]] + [None] * n_other
    ids = store_corrections(settings, images, labels)
    start = shipped_ref(home)

    done = cli(home, *FINETUNE_ARGS)
    assert done.returncode == 0, done.stderr
    assert "held-out corrections" in done.stdout and "not promoted" in done.stdout

    (entry,) = Registry(home / "models", extra_roots=()).list()
    fb = entry.manifest["feedback"]
    n_held = int(held_out(ids, Settings().feedback_holdout).sum())
    assert fb["from"] == start
    assert (fb["corrections_used"], fb["corrections_held_out"]) == (len(ids) - n_held, n_held)
    assert fb["corrections_skipped"] == 0  # the shipped model can say "not a digit"
    for key in ("held_out_accuracy", "held_out_accuracy_before", "mnist_test_accuracy"):
        assert 0 <= fb[key] <= 1
    assert entry.manifest["settings"]["with_feedback"] is True
    assert entry.manifest["settings"]["from_version"] == start
    assert (
        entry.manifest["preprocessing"]
        == Registry(home / "models").shipped().manifest["preprocessing"]
    )
    assert "Fine-tuned from" in (entry.path / "MODEL_CARD.md").read_text()
    (run,) = (home / "runs").iterdir()
    recorded = json.loads((run / "feedback.json").read_text())
    assert sorted(recorded["train_ids"] + recorded["held_out_ids"]) == sorted(ids)

    db = Database.from_settings(settings)
    assert aliases.production(db) is None  # nothing promoted...
    db.dispose()
    assert served_entry(settings).ref == start  # ...so the shipped model still serves


@pytest.mark.mnist
def test_too_few_corrections_is_a_clear_error_and_registers_nothing(
    tmp_path: Path, mnist: Mnist
) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, data_dir=MNIST_CACHE)
    none_yet = cli(home, *FINETUNE_ARGS)  # no database at all: none is created
    assert none_yet.returncode == 2 and "0 to train on and 0 held out" in none_yet.stderr
    assert not (home / "digitrec.db").exists()

    store_corrections(settings, mnist.test_images[:9], [int(y) for y in mnist.test_labels[:9]])
    few = cli(home, *FINETUNE_ARGS)
    assert few.returncode == 2
    (line,) = [x for x in few.stderr.splitlines() if x.startswith("digitrec: error:")]
    assert "too few corrections" in line and "9 stored" in line
    assert "Traceback" not in few.stderr
    assert not (home / "models").exists() and not (home / "runs").exists()

    unknown = cli(home, *FINETUNE_ARGS, "--from", "no-such-version")
    assert unknown.returncode != 0 and "no model 'no-such-version'" in unknown.stderr


@pytest.mark.mnist
@pytest.mark.slow
def test_fine_tune_learns_what_the_corrections_teach(tmp_path: Path, mnist: Mnist) -> None:
    """The shipped model calls an X "not a digit"; 60 users say it is a 7. After a short
    fine-tune the held-out X's are answered 7, and MNIST is not forgotten."""
    settings = Settings(
        home=tmp_path / "home",
        data_dir=MNIST_CACHE,
        with_feedback=True,
        train_subset=1000,
        val_size=1000,
        batch_size=64,
        finetune_epochs=2,
        feedback_share=0.25,
        threads=2,
        mixed_precision=False,
        negatives_pool=NEGATIVES_POOL,
        calibration_variants=CALIBRATION_VARIANTS,
    )
    rng = np.random.default_rng(1)
    store_corrections(settings, np.stack([cross(rng) for _ in range(60)]), [7] * 60)

    result = run_training(settings, progress=False, data=mnist)

    assert result.entry is not None
    fb = result.entry.manifest["feedback"]
    assert fb["corrections_held_out"] >= 8
    assert fb["held_out_accuracy_before"] <= 0.1
    assert fb["held_out_accuracy"] >= 0.9
    assert fb["mnist_test_accuracy"] >= fb["mnist_test_accuracy_before"] - 0.01
