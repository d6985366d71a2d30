"""Training: fit a registered architecture on MNIST, checkpoint, resume, evaluate, register.

A run lives in its own folder (``<runs_dir>/<run id>/``): resolved settings, a checkpoint
after every epoch, ``metrics.csv``, the report (confusion matrix, per-class metrics,
plots) and finally a model version in the registry. Each epoch's shuffling, augmentation
and dropout are seeded from ``(seed, epoch)``, so a run resumed from its last checkpoint
after a kill ends with the same weights as an uninterrupted one.

Model selection uses the validation split (carved from the 60,000 training images with
``split_seed``); the test set is used only for the final report (and, in benchmarks, to
time how fast accuracy targets are reached; it never steers training).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from digitrec import __version__
from digitrec.augment import AugmentConfig, augment_batch
from digitrec.config import Settings
from digitrec.data import MNIST_FILES, Mnist, load_mnist
from digitrec.errors import DigitrecError, InvalidRequest
from digitrec.model import count_parameters, create_model, model_args
from digitrec.preprocess import PreprocessSpec, normalize
from digitrec.registry import MANIFEST, ONNX, WEIGHTS, ModelEntry, Registry
from digitrec.report import (
    accuracy,
    confusion_matrix,
    csv_text,
    per_class_metrics,
    plot_confusion,
    plot_curves,
    plot_mistakes,
    write_confusion_csv,
    write_per_class_csv,
)
from digitrec.storage import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
    storage_errors,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
EPOCH_WEIGHTS = "epoch-{:03d}.safetensors"  # weights after each epoch, for model selection
SETTINGS_FILE = "settings.json"
METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
)


# --- devices and determinism ---------------------------------------------------------------


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest(f"device {setting!r} was asked for but CUDA is not available")
    return device


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast where the hardware does it natively, else full precision."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return torch.bfloat16 if supported else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device, dtype: torch.dtype | None) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_name()}, {torch.get_num_threads()} threads"
    precision = "bfloat16 autocast" if dtype is not None else "float32"
    return f"{device} ({name}; {precision})"


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)


def split_indices(n: int, val_size: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train/validation split of ``range(n)``: same seed, same split, everywhere."""
    if not 0 < val_size < n:
        raise InvalidRequest(f"validation size {val_size} must be between 1 and {n - 1}")
    order = np.random.default_rng(split_seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def git_commit() -> str | None:
    """The source commit, with ``-dirty`` when the work tree had uncommitted changes."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40", "--exclude=*"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


# --- evaluation ------------------------------------------------------------------------------


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    probs: np.ndarray  # (N, 10) softmax outputs
    labels: np.ndarray


def to_input(images: torch.Tensor, spec: PreprocessSpec, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) MNIST images -> normalised float (N, 1, 28, 28), channels-last."""
    x = images.to(device, non_blocking=True).unsqueeze(1).float().div_(255)
    return normalize(x, spec).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: PreprocessSpec,
    device: torch.device,
    batch_size: int = 1000,
    max_batches: int | None = None,
) -> Evaluation:
    """Loss, accuracy and probabilities in float32, exactly as the served model computes."""
    model.eval()
    probs, losses, seen = [], 0.0, 0
    for b, start in enumerate(range(0, len(images), batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        x = to_input(images[start : start + batch_size], spec, device)
        y = labels[start : start + batch_size].to(device)
        logits = model(x).float()
        losses += float(F.cross_entropy(logits, y, reduction="sum"))
        probs.append(logits.softmax(1).cpu().numpy())
        seen += len(y)
    p = np.concatenate(probs)
    y_np = labels[:seen].numpy()
    return Evaluation(losses / seen, float((p.argmax(1) == y_np).mean()), p, y_np)


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[object]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# --- checkpoints -------------------------------------------------------------------------------


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["plain"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> None:
    """Weights, optimizer and schedule in one safetensors file (no pickle), atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    tensors.update(optim_tensors)
    meta = {
        "state": json.dumps(state),
        "optimizer": json.dumps(optim_meta),
        "scheduler": json.dumps(scheduler.state_dict() if scheduler else None),
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict, Any]:
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = _unflatten_optimizer(tensors, json.loads(meta["optimizer"]))
    return model_state, json.loads(meta["state"]), optim, json.loads(meta["scheduler"])


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state as safetensors bytes (serialised in memory, so that a full disk
    surfaces as an ordinary OSError when the bytes are written)."""
    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def save_weights(path: Path, model: nn.Module) -> None:
    atomic_write_bytes(path, weights_bytes(model))


# --- the trainer -------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    test: Evaluation | None = None
    entry: ModelEntry | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


EpochHook = Callable[[nn.Module, dict[str, Any]], dict[str, Any]]


class Trainer:
    """Runs one training run in ``run_dir``; ``fit()`` picks up from a checkpoint if any."""

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        data: Mnist | None = None,
        progress: bool = True,
        epoch_hook: EpochHook | None = None,
    ) -> None:
        self.settings = settings
        self.commit = git_commit()  # the code that trains, read before anything else changes
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.epoch_hook = epoch_hook
        self.spec = PreprocessSpec()
        self.epochs = 1 if settings.dry_run else settings.epochs
        self.aug = AugmentConfig.from_settings(settings)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = resolve_device(settings.device)
        self.dtype = autocast_dtype(self.device, settings.mixed_precision)
        self.data = data if data is not None else load_mnist(settings, progress=progress)
        self._split()
        torch.manual_seed(settings.seed)
        self.model = create_model(settings.arch).to(self.device)
        self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = self._optimizer()
        self.steps_per_epoch = self._steps_per_epoch()
        self.scheduler = self._scheduler()

    # -- setup --
    def _split(self) -> None:
        s, d = self.settings, self.data
        train_idx, val_idx = split_indices(len(d.train_images), s.val_size, s.split_seed)
        if s.train_subset:
            train_idx = train_idx[: s.train_subset]
        self.x_train = torch.from_numpy(d.train_images[train_idx].copy())
        self.y_train = torch.from_numpy(d.train_labels[train_idx].astype(np.int64))
        self.x_val = torch.from_numpy(d.train_images[val_idx].copy())
        self.y_val = torch.from_numpy(d.train_labels[val_idx].astype(np.int64))
        self.x_test = torch.from_numpy(d.test_images.copy())
        self.y_test = torch.from_numpy(d.test_labels.astype(np.int64))

    def _optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        if s.optimizer == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=s.lr)
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": s.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=s.lr)

    def _steps_per_epoch(self) -> int:
        steps = math.ceil(len(self.x_train) / self.settings.batch_size)
        return min(steps, self.settings.dry_run_batches) if self.settings.dry_run else steps

    def _scheduler(self) -> Any:
        s = self.settings
        if s.schedule == "constant":
            return None
        return torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=s.lr,
            total_steps=self.epochs * self.steps_per_epoch,
            pct_start=s.warmup_fraction,
        )

    # -- one epoch --
    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.settings.seed, epoch))
        order = torch.randperm(len(self.x_train), generator=gen)
        bs = self.settings.batch_size
        for step in range(self.steps_per_epoch):
            idx = order[step * bs : (step + 1) * bs]
            x = self.x_train[idx].unsqueeze(1).float().div_(255)
            x = augment_batch(x, self.aug, gen)
            yield (
                normalize(x, self.spec).contiguous(memory_format=torch.channels_last),
                self.y_train[idx],
            )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        torch.manual_seed(epoch_seed(self.settings.seed, epoch) + 1)  # dropout
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            self._batches(epoch),
            total=self.steps_per_epoch,
            unit="batch",
            leave=False,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=not self.progress,
        )
        for x, y in bar:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast_context(self.device, self.dtype):
                logits = self.model(x)
                loss = F.cross_entropy(
                    logits.float(), y, label_smoothing=self.settings.label_smoothing
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
        return {"train_loss": total_loss / seen, "train_accuracy": correct / seen}

    # -- the run --
    def evaluate_split(self, images: torch.Tensor, labels: torch.Tensor) -> Evaluation:
        max_batches = self.settings.dry_run_batches if self.settings.dry_run else None
        return evaluate(
            self.model,
            images,
            labels,
            self.spec,
            self.device,
            self.settings.eval_batch_size,
            max_batches,
        )

    def _restore(self) -> dict[str, Any]:
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            return {"epoch": 0, "history": [], "seconds": 0.0}
        model_state, state, optim_state, sched_state = load_checkpoint(path)
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optim_state)
        if self.scheduler is not None and sched_state is not None:
            self.scheduler.load_state_dict(sched_state)
        log.info("resuming %s after epoch %d", self.run_dir.name, state["epoch"])
        return state

    def fit(self) -> list[dict[str, Any]]:
        """Train until ``settings.epochs``; return the per-epoch history."""
        s = self.settings
        with storage_errors(f"run folder {self.run_dir}"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.run_dir)
        state = self._restore()
        log.info(
            "training %s (%d parameters) on %s: %d train / %d validation images",
            s.arch,
            count_parameters(self.model),
            describe_device(self.device, self.dtype),
            len(self.x_train),
            len(self.x_val),
        )
        for epoch in range(state["epoch"], self.epochs):
            start = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            train_seconds = time.perf_counter() - start
            val = self.evaluate_split(self.x_val, self.y_val)
            row.update(
                val_loss=val.loss,
                val_accuracy=val.accuracy,
                lr=self.optimizer.param_groups[0]["lr"],
                seconds=round(time.perf_counter() - start, 3),
                train_seconds=round(train_seconds, 3),
            )
            if self.epoch_hook is not None:
                row.update(self.epoch_hook(self.model, row))
            state["history"].append(row)
            state["seconds"] += row["seconds"]
            save_weights(self.run_dir / EPOCH_WEIGHTS.format(epoch + 1), self.model)
            state["epoch"] = epoch + 1
            self._write_metrics(state["history"])
            save_checkpoint(
                self.run_dir / CHECKPOINT, self.model, self.optimizer, self.scheduler, state
            )
            log.info(
                "epoch %d/%d: loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs",
                epoch + 1,
                self.epochs,
                row["train_loss"],
                row["train_accuracy"],
                val.loss,
                val.accuracy,
                row["seconds"],
            )
        self.state = state
        return state["history"]

    def _write_metrics(self, history: list[dict[str, Any]]) -> None:
        columns = list(METRICS_COLUMNS) + [k for k in history[0] if k not in METRICS_COLUMNS]
        rows = [[_fmt(h.get(c)) for c in columns] for h in history]
        atomic_write_text(self.run_dir / "metrics.csv", csv_text(columns, rows))

    def load_selected(self) -> int:
        """Load the weights of the epoch chosen on the validation split; return its number."""
        epoch = select_epoch(self.state["history"], len(self.x_val))
        self.model.load_state_dict(load_file(str(self.run_dir / EPOCH_WEIGHTS.format(epoch))))
        return epoch


def select_epoch(history: list[dict[str, Any]], val_size: int) -> int:
    """The latest epoch whose validation accuracy is within one standard error of the best.

    Differences smaller than the validation set can resolve (one standard error is about
    0.1 point, five images, at 99.5 % on 5,000) are noise; among epochs that are equally
    good within that noise, the later one has seen more training at a lower learning rate.
    """
    best = max(h["val_accuracy"] for h in history)
    standard_error = math.sqrt(max(best * (1 - best), 1e-12) / max(val_size, 1))
    return max(h["epoch"] for h in history if h["val_accuracy"] >= best - standard_error)


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


# --- reporting and registration ----------------------------------------------------------------


def write_report(
    run_dir: Path, test: Evaluation, images: np.ndarray, history: list[dict[str, Any]]
) -> dict[str, Any]:
    """Confusion matrix, per-class metrics and plots of the final test evaluation."""
    cm = confusion_matrix(test.labels, test.probs.argmax(1))
    classes = per_class_metrics(cm)
    write_confusion_csv(run_dir / "confusion_matrix.csv", cm)
    write_per_class_csv(run_dir / "per_class.csv", classes)
    plot_confusion(run_dir / "confusion_matrix.png", cm)
    plot_curves(run_dir / "training_curves.png", history)
    plot_mistakes(
        run_dir / "worst_mistakes.png", images[: len(test.labels)], test.labels, test.probs
    )
    return {
        "test_accuracy": round(accuracy(cm), 6),
        "test_loss": round(test.loss, 6),
        "test_errors": int(cm.sum() - np.trace(cm)),
        "test_size": int(cm.sum()),
        "per_class": classes,
        "confusion_matrix": cm.tolist(),
    }


def build_manifest(trainer: Trainer, run_id: str, metrics: dict[str, Any]) -> dict[str, Any]:
    s, history = trainer.settings, trainer.state["history"]
    return {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dry_run": s.dry_run,
        "architecture": {
            "name": s.arch,
            "args": model_args(trainer.model),
            "parameters": count_parameters(trainer.model),
        },
        "preprocessing": trainer.spec.to_dict(),
        "labels": list(range(10)),
        "input": {"shape": [1, 1, 28, 28], "dtype": "float32", "layout": "NCHW"},
        "data": {
            "source": "MNIST",
            "md5": dict(MNIST_FILES),
            "train_size": len(trainer.x_train),
            "val_size": len(trainer.x_val),
            "test_size": len(trainer.x_test),
            "split_seed": s.split_seed,
        },
        "settings": s.training_dict(),
        "run": run_id,
        "git_commit": trainer.commit,
        "software": {
            "digitrec": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "device": describe_device(trainer.device, trainer.dtype),
        "timings": {
            "train_seconds": round(trainer.state["seconds"], 2),
            "seconds_per_epoch": [h["seconds"] for h in history],
        },
        "metrics": metrics,
    }


def register(
    trainer: Trainer, run_id: str, metrics: dict[str, Any], export_onnx: bool = True
) -> ModelEntry:
    """Save the selected model as version ``run_id`` with its manifest and model card."""
    from digitrec.card import write_model_card

    registry = Registry.from_settings(trainer.settings)
    name = trainer.settings.model_name
    if (registry.root / name / run_id / MANIFEST).is_file():
        entry = registry.resolve(f"{name}:{run_id}")  # saved just before a kill: keep it
        entry.verify()
    else:
        writers: dict[str, Callable[[Path], object]] = {
            WEIGHTS: lambda p: p.write_bytes(weights_bytes(trainer.model)),
        }
        if export_onnx:
            from digitrec.export import onnx_writer

            writers[ONNX] = onnx_writer(trainer.model)
        entry = registry.save(name, run_id, build_manifest(trainer, run_id, metrics), writers)
    write_model_card(entry)
    return entry


def run_training(
    settings: Settings,
    *,
    resume: str | None = None,
    progress: bool = True,
    data: Mnist | None = None,
    epoch_hook: EpochHook | None = None,
    register_model: bool = True,
) -> TrainResult:
    """The whole of `digitrec train`: fit, select an epoch on validation, report, register."""
    if resume:
        run_dir = resolve_run(settings, resume)
        settings = load_run_settings(run_dir, settings)
        # A kill during registration leaves this run's hidden temporary model folder.
        remove_stale_temporaries(settings.registry_dir / settings.model_name, run_dir.name)
    else:
        run_dir = settings.runs_path / new_run_id()
        while run_dir.exists():
            time.sleep(1)
            run_dir = settings.runs_path / new_run_id()
        atomic_write_json(run_dir / SETTINGS_FILE, settings.training_dict())
    trainer = Trainer(settings, run_dir, data=data, progress=progress, epoch_hook=epoch_hook)
    history = trainer.fit()
    selected_epoch = trainer.load_selected()
    test = trainer.evaluate_split(trainer.x_test, trainer.y_test)
    metrics = write_report(run_dir, test, trainer.data.test_images, history)
    chosen = history[selected_epoch - 1]
    metrics.update(
        selected_epoch=selected_epoch,
        val_accuracy=chosen["val_accuracy"],
        val_loss=chosen["val_loss"],
        epochs=len(history),
    )
    atomic_write_json(run_dir / "report.json", {k: v for k, v in metrics.items()})
    result = TrainResult(run_dir, history, test, metrics=metrics)
    if register_model:
        result.entry = register(trainer, run_dir.name, metrics)
        atomic_write_json(
            run_dir / "model.json", {"model": result.entry.ref, "path": str(result.entry.path)}
        )
    return result


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
    paths = {"home", "data_dir", "models_dir", "runs_dir"}
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
