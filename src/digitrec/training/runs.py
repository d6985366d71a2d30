"""`digitrec train` from start to finish: a new run or a resumed one, then fit, select,
report and register. ``run_training`` is the entry point; it imports the rest of
``training/`` and nothing there imports it back.

With ``with_feedback`` the run fine-tunes a registered model on users' corrections mixed
into MNIST (``finetune.py``) and its manifest gains a ``feedback`` section.

A run lives in its own folder (``<runs_dir>/<run id>/``): its resolved settings
(``settings.json``), a checkpoint after every epoch, ``metrics.csv``, the report
(confusion matrix, per-class metrics, plots) and finally a model version in the registry.
``--resume`` continues a killed run from its folder with the settings it started with.
On several processes (``distributed.py``) every rank runs this; rank 0 alone names the
run, writes its folder and registers the model, and the others return after the epochs.
The test set is used only for the final report (and, in benchmarks, to time how fast
accuracy targets are reached; it never steers training).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from digitrec.config import Settings
from digitrec.data import Mnist
from digitrec.errors import DigitrecError
from digitrec.registry import ModelEntry
from digitrec.storage import atomic_write_json, remove_stale_temporaries
from digitrec.training.calibrate import calibrate
from digitrec.training.distributed import World
from digitrec.training.finetune import FeedbackRun
from digitrec.training.loop import EpochHook, Evaluation, Trainer
from digitrec.training.publish import register, write_report

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    test: Evaluation | None = None
    entry: ModelEntry | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def run_training(
    settings: Settings,
    *,
    resume: str | None = None,
    progress: bool = True,
    data: Mnist | None = None,
    epoch_hook: EpochHook | None = None,
    register_model: bool = True,
) -> TrainResult:
    """The whole of `digitrec train`: fit, select an epoch on validation, report, register.
    Run by each rank when the launcher started several (``distributed.World.from_env``)."""
    resumed = resolve_run(settings, resume) if resume else None
    if resumed is not None:
        settings = load_run_settings(resumed, settings)
    world = World.from_env()
    world.check_batch(settings.batch_size)  # before anything is written
    with world.join(settings) as joined:
        return _run(settings, joined, resumed, progress, data, epoch_hook, register_model)


def _run(
    settings: Settings,
    world: World,
    resumed: Path | None,
    progress: bool,
    data: Mnist | None,
    epoch_hook: EpochHook | None,
    register_model: bool,
) -> TrainResult:
    resume = resumed is not None
    if resumed is not None:
        run_dir = resumed
        if world.is_main:
            # A kill during registration leaves this run's hidden temporary model folder.
            remove_stale_temporaries(settings.registry_dir / settings.model_name, run_dir.name)
    else:
        run_dir = world.from_main(new_run_dir(settings) if world.is_main else Path())
    feedback = None
    if settings.with_feedback:  # before anything is written: a refusal leaves no run folder
        feedback = FeedbackRun.prepare(settings, run_dir if resume else None)
        settings = feedback.settings
    if not resume and world.is_main:
        atomic_write_json(run_dir / SETTINGS_FILE, settings.training_dict())
        if feedback is not None:
            feedback.save(run_dir)
    trainer = Trainer(
        settings,
        run_dir,
        data=data,
        progress=progress,
        epoch_hook=epoch_hook,
        finetune=feedback.finetune if feedback is not None else None,
        world=world,
    )
    history = trainer.fit()
    if not world.is_main:
        return TrainResult(run_dir, history)
    selected_epoch = trainer.load_selected()
    test = trainer.evaluate_split(trainer.x_test, trainer.y_test)
    metrics = write_report(run_dir, test, trainer.data.test_images, history)
    trainer.sections = calibrate(trainer, run_dir, test.logits)
    atomic_write_json(run_dir / "rejection.json", trainer.sections)
    if feedback is not None:
        trainer.sections["feedback"] = feedback.section(trainer, test)
        feedback.save(run_dir, trainer.sections["feedback"])
    chosen = history[selected_epoch - 1]
    metrics.update(
        selected_epoch=selected_epoch,
        val_accuracy=chosen["val_accuracy"],
        val_loss=chosen["val_loss"],
        epochs=len(history),
    )
    report = {**metrics, "processes": world.describe()}
    atomic_write_json(run_dir / "report.json", report)
    result = TrainResult(run_dir, history, test, metrics=metrics)
    if register_model:
        result.entry = register(trainer, run_dir.name, metrics)
        atomic_write_json(
            run_dir / "model.json", {"model": result.entry.ref, "path": str(result.entry.path)}
        )
    return result


def preflight(settings: Settings, resume: str | None, processes: int) -> None:
    """Before ranks are started: refuse what each of them would refuse (an unknown or
    finished run, a batch size that does not split), in one line rather than N."""
    if resume:
        settings = load_run_settings(resolve_run(settings, resume), settings)
    World(size=processes).check_batch(settings.batch_size)


def resolve_run(settings: Settings, ref: str) -> Path:
    candidate = Path(ref).expanduser()
    run_dir = candidate if candidate.is_dir() else settings.runs_path / ref
    if not (run_dir / SETTINGS_FILE).is_file():
        raise DigitrecError(
            f"no training run {ref!r} (looked for {run_dir / SETTINGS_FILE})", code="run_not_found"
        )
    if (run_dir / "model.json").is_file():
        raise DigitrecError(
            f"run {run_dir.name} already finished; its model is in "
            f"{json.loads((run_dir / 'model.json').read_text())['model']}",
            code="run_finished",
        )
    return run_dir


def load_run_settings(run_dir: Path, current: Settings) -> Settings:
    """The settings a run started with. Paths come from now; device and threads too, but
    only when given explicitly (another thread count can change the numbers slightly)."""
    stored = json.loads((run_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    paths = {"home", "data_dir", "datasets_dir", "models_dir", "runs_dir"}
    override = paths | ({"device", "threads"} & current.model_fields_set)
    ignored = sorted(
        k
        for k in current.model_fields_set - override
        if k in stored and stored[k] != getattr(current, k)
    )
    if ignored:
        log.warning("resuming with the run's own settings; ignoring %s", ", ".join(ignored))
    merged = {**stored, **{k: getattr(current, k) for k in override}}
    return Settings(**{k: v for k, v in merged.items() if k in Settings.model_fields})


def new_run_dir(settings: Settings) -> Path:
    run_dir = settings.runs_path / new_run_id()
    while run_dir.exists():
        time.sleep(1)
        run_dir = settings.runs_path / new_run_id()
    return run_dir


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
