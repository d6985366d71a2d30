"""The files that hold a run's training state, and their format.

``checkpoint.safetensors`` holds the weights, the optimizer and the learning-rate schedule
after the latest epoch (tensors in safetensors, everything else as JSON metadata, never a
pickle); ``epoch-NNN.safetensors`` holds the weights after each epoch, for model selection.
Every file is written atomically, so a kill leaves the previous one intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from digitrec.storage import atomic_write_bytes

CHECKPOINT = "checkpoint.safetensors"
EPOCH_WEIGHTS = "epoch-{:03d}.safetensors"  # weights after each epoch, for model selection


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
    models: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> None:
    """Weights (of each named model: the trained network and its average), optimizer
    and schedule in one safetensors file (no pickle), atomically."""
    tensors = {
        f"{name}.{k}": v.detach().cpu().contiguous()
        for name, model in models.items()
        for k, v in model.state_dict().items()
    }
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    tensors.update(optim_tensors)
    meta = {
        "state": json.dumps(state),
        "optimizer": json.dumps(optim_meta),
        "scheduler": json.dumps(scheduler.state_dict() if scheduler else None),
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_checkpoint(
    path: Path, names: tuple[str, ...] = ("net", "averaged")
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict, Any]:
    """Each named model's state (those saved), the run state, optimizer and schedule."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    states = {
        name: {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
        for name in names
    }
    optim = _unflatten_optimizer(tensors, json.loads(meta["optimizer"]))
    found = {name: state for name, state in states.items() if state}
    return found, json.loads(meta["state"]), optim, json.loads(meta["scheduler"])


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state as safetensors bytes (serialised in memory, so that a full disk
    surfaces as an ordinary OSError when the bytes are written)."""
    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def save_weights(path: Path, model: nn.Module) -> None:
    atomic_write_bytes(path, weights_bytes(model))
