"""Training: model shapes, augmentation, a short real run, dry run, resume after SIGKILL,
and what a full or read-only disk does."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from digitrec.config import Settings
from digitrec.data import Mnist
from digitrec.errors import ModelNotFound, StorageError
from digitrec.model import architectures, count_parameters, create_model, model_args
from digitrec.preprocess import png_data_url
from digitrec.registry import Registry
from digitrec.rejection import LABELS
from digitrec.training import run_training
from digitrec.training.augment import AugmentConfig, augment_batch
from digitrec.training.checkpoint import CHECKPOINT
from digitrec.training.loop import split_indices
from tests.conftest import MNIST_CACHE, run_cli

AUG = AugmentConfig(rotation=12, scale=0.12, shear=0.15, translate=0.1, stroke=0.1, elastic=0.5)


# --- model and augmentation -----------------------------------------------------------


@pytest.mark.parametrize("arch", architectures())
def test_every_architecture_maps_images_to_ten_logits(arch: str) -> None:
    model = create_model(arch).eval()
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    rebuilt = create_model(arch, **model_args(model))
    assert count_parameters(rebuilt) == count_parameters(model)


def test_default_model_is_small() -> None:
    assert count_parameters(create_model("digitnet")) < 1_000_000  # well under 5 MB as float32


def test_unknown_architecture() -> None:
    with pytest.raises(ModelNotFound, match="digitnet"):
        create_model("resnet9000")


def test_augmentation_keeps_shape_range_and_is_seeded() -> None:
    x = torch.rand(64, 1, 28, 28)
    a = augment_batch(x.clone(), AUG, torch.Generator().manual_seed(1))
    b = augment_batch(x.clone(), AUG, torch.Generator().manual_seed(1))
    c = augment_batch(x.clone(), AUG, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmentation_changes_images_but_keeps_the_digit(mnist: Mnist) -> None:
    x = torch.from_numpy(mnist.test_images[:256].copy()).unsqueeze(1).float() / 255
    out = augment_batch(x, AUG, torch.Generator().manual_seed(0))
    assert (out - x).abs().mean() > 0.01  # really transformed
    ink_ratio = out.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert 0.6 < float(ink_ratio.median()) < 1.5  # the digit is still there, whole


def test_zero_augmentation_is_identity() -> None:
    x = torch.rand(4, 1, 28, 28)
    out = augment_batch(x, AugmentConfig(0, 0, 0, 0), torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_fat_pen_fills_small_loops_of_the_chosen_images_only() -> None:
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 8:20, 9:19] = 1  # a ring: a 10x12 box of ink with a 4x4 hole
    x[:, :, 12:16, 12:16] = 0
    every = augment_batch(x.clone(), AugmentConfig(0, 0, 0, 0, fat=1.0), torch.Generator())
    assert torch.all(every[:, :, 12:16, 12:16] > 0.99)  # the loop is filled
    assert every.sum() > x.sum()  # and the strokes are bolder
    some = augment_batch(x.clone(), AugmentConfig(0, 0, 0, 0, fat=0.5), torch.Generator())
    filled = some[:, 0, 13, 13] > 0.99
    assert 0 < int(filled.sum()) < 8  # only the chosen images changed...
    assert torch.allclose(some[~filled], x[~filled], atol=1e-5)  # ...the others are intact


def test_split_is_fixed_and_disjoint() -> None:
    train, val = split_indices(1000, 100, 7)
    again, _ = split_indices(1000, 100, 7)
    assert len(val) == 100 and len(train) == 900 and not set(train) & set(val)
    assert np.array_equal(train, again)


# --- real training ---------------------------------------------------------------------


# A small run needs few distinct non-digits and few redrawn digits to choose thresholds.
SMALL_RUN_ENV = {"DIGITREC_NEGATIVES_POOL": "1000", "DIGITREC_CALIBRATION_VARIANTS": "30"}


def small_settings(home: Path, **extra: object) -> Settings:
    base: dict[str, object] = dict(
        home=home,
        data_dir=MNIST_CACHE,
        train_subset=3000,
        val_size=1000,
        epochs=3,
        batch_size=64,
        threads=2,
        seed=3,
        negatives_pool=int(SMALL_RUN_ENV["DIGITREC_NEGATIVES_POOL"]),
        calibration_variants=int(SMALL_RUN_ENV["DIGITREC_CALIBRATION_VARIANTS"]),
    )
    return Settings(**{**base, **extra})


@pytest.mark.mnist
@pytest.mark.slow
def test_short_real_training_beats_chance_widely(tmp_path: Path, mnist: Mnist) -> None:
    result = run_training(small_settings(tmp_path), progress=False, data=mnist)
    assert result.metrics["test_accuracy"] > 0.85  # chance is 0.10
    run = result.run_dir
    for name in (
        "metrics.csv",
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "training_curves.png",
        "per_class.csv",
        "worst_mistakes.png",
        "report.json",
    ):
        assert (run / name).stat().st_size > 0, name
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
    ]
    entry = result.entry
    assert entry is not None
    manifest = entry.manifest
    arch = manifest["architecture"]
    assert arch["parameters"] == count_parameters(create_model("digitnet", **arch["args"]))
    assert arch["args"]["classes"] == 12 and manifest["labels"][10:] == LABELS[10:]
    assert manifest["data"]["md5"]["t10k-images-idx3-ubyte"] == "2646ac647ad5339dbf082846283269ea"
    assert manifest["metrics"]["test_accuracy"] == result.metrics["test_accuracy"]
    assert np.array(manifest["metrics"]["confusion_matrix"]).sum() == 10000
    assert manifest["settings"]["seed"] == 3
    assert set(manifest["files"]) == {"model.safetensors", "model.onnx", "reliability.png"}
    entry.verify()
    card = (entry.path / "MODEL_CARD.md").read_text()
    assert card.count("|") > 20 and "](reliability.png)" in card
    assert {"rejection", "calibration"} <= set(manifest)
    assert manifest["rejection"]["method"] in manifest["rejection"]["validation"]
    assert manifest["preprocessing"]["stroke_band"] is not None
    # What the dashboard draws without the run folder: curves and the worst mistakes.
    epochs = manifest["settings"]["epochs"]
    assert [h["epoch"] for h in manifest["history"]] == list(range(1, epochs + 1))
    assert all(0 < h["val_accuracy"] <= 1 for h in manifest["history"])
    worst = manifest["metrics"]["worst_mistakes"]
    errors = manifest["metrics"]["test_errors"]
    assert len(worst) == min(12, errors)
    confidences = [m["confidence"] for m in worst]
    assert confidences == sorted(confidences, reverse=True)
    test_labels = mnist.test_labels
    assert all(m["label"] == test_labels[m["index"]] != m["predicted"] for m in worst)
    assert worst[0]["image"] == png_data_url(mnist.test_images[worst[0]["index"]])


def cli(*args: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, home=home, env=SMALL_RUN_ENV, timeout=timeout)


@pytest.mark.mnist
def test_dry_run_cli_end_to_end(tmp_path: Path) -> None:
    done = cli("train", "--dry-run", "--no-progress", "--train-subset", "2000", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout
    entries = Registry(tmp_path / "models", extra_roots=()).list()
    assert len(entries) == 1 and entries[0].dry_run


TRAIN_ARGS = (
    "train",
    "--no-progress",
    "--train-subset",
    "1536",
    "--val-size",
    "1000",
    "--epochs",
    "3",
    "--batch-size",
    "64",
    "--threads",
    "1",
    "--seed",
    "5",
)


def weights_of(home: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (entry,) = Registry(home / "models", extra_roots=()).list()
    return load_file(str(entry.path / "model.safetensors"))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The weights of the same run, never interrupted."""
    home = tmp_path_factory.mktemp("straight")
    done = cli(*TRAIN_ARGS, home=home)
    assert done.returncode == 0, done.stderr
    return weights_of(home)


# Kill moments after the first checkpoint: mid-epoch, and a seeded random point later on
# (in a later epoch, a checkpoint write or the registration, wherever it falls).
KILL_DELAYS = [0.4, round(random.Random(2026).uniform(1.0, 3.5), 2)]


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.parametrize("delay", KILL_DELAYS)
def test_resume_after_sigkill_gives_the_same_model(
    tmp_path: Path, straight_run: dict[str, torch.Tensor], delay: float
) -> None:
    home = tmp_path / "killed"
    env = {
        **os.environ,
        **SMALL_RUN_ENV,
        "DIGITREC_HOME": str(home),
        "DIGITREC_DATA_DIR": str(MNIST_CACHE),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "digitrec.cli", *TRAIN_ARGS],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    checkpoints: list[Path] = []
    while time.monotonic() < deadline and not checkpoints:
        checkpoints = list((home / "runs").glob(f"*/{CHECKPOINT}"))
        time.sleep(0.02)
    assert checkpoints, "no checkpoint was written"
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the kill; shorten the delay"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = checkpoints[0].parent
    assert not (run_dir / "model.json").exists()
    for path in home.rglob("*"):  # every file that is not a temporary one is whole
        if path.is_file() and not path.name.endswith(".tmp") and path.suffix == ".safetensors":
            __import__("safetensors").safe_open(str(path), "pt").keys()

    resumed = cli(*TRAIN_ARGS[:1], "--resume", run_dir.name, "--no-progress", home=home)
    assert resumed.returncode == 0, resumed.stderr
    b = weights_of(home)
    assert straight_run.keys() == b.keys()
    assert all(torch.equal(straight_run[k], b[k]) for k in b), "resumed run differs"
    assert not list(home.rglob("*.tmp")), "a temporary file was left behind"

    again = cli("train", "--resume", run_dir.name, home=home)
    assert again.returncode != 0 and "already finished" in again.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 6 MB file system: room for one model (3.8 MB), not for a run's checkpoints;
    writes beyond it fail with ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.mnist
def test_full_disk_during_training_is_a_clear_error(tiny_disk: Path, mnist: Mnist) -> None:
    settings = small_settings(tiny_disk, epochs=1, train_subset=500, dry_run=True)
    with pytest.raises(StorageError, match="No space left"):
        run_training(settings, progress=False, data=mnist)
    assert not list(tiny_disk.rglob("*.tmp"))
    assert not list(tiny_disk.rglob("manifest.json"))


@pytest.mark.mnist
def test_read_only_registry_keeps_the_previous_model(
    tmp_path: Path, tiny_disk: Path, mnist: Mnist
) -> None:
    settings = small_settings(
        tmp_path, models_dir=tiny_disk, epochs=1, train_subset=500, dry_run=True, name="keep"
    )
    first = run_training(settings, progress=False, data=mnist).entry
    assert first is not None
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    with pytest.raises(StorageError, match="Read-only"):
        run_training(settings.model_copy(update={"seed": 9}), progress=False, data=mnist)
    assert [e.ref for e in Registry(tiny_disk, extra_roots=()).list()] == [first.ref]
    first.verify()


def test_every_augmentation_setting_reaches_the_augmenter() -> None:
    """AugmentConfig is derived from the aug_* settings by name: none can be left out."""
    from dataclasses import fields

    from digitrec.config import Settings, TrainingSettings
    from digitrec.training.augment import AugmentConfig

    aug_settings = {name for name in TrainingSettings.model_fields if name.startswith("aug_")}
    assert {f"aug_{f.name}" for f in fields(AugmentConfig)} == aug_settings
    cfg = AugmentConfig.from_settings(Settings(aug_elastic_sigma=4.5, aug_rotation=7.0))
    assert (cfg.elastic_sigma, cfg.rotation) == (4.5, 7.0)


def test_the_manifest_keeps_every_training_setting() -> None:
    from digitrec.config import Settings, TrainingSettings

    stored = Settings(epochs=3).training_dict()
    assert set(stored) == set(TrainingSettings.model_fields)
    assert stored["epochs"] == 3 and "home" not in stored and "max_pixels" not in stored
