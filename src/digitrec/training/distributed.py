"""Training on several processes: which rank am I, which share of each epoch is mine, and
how `digitrec train --nproc N` starts the ranks.

``launch`` starts N copies of the same `digitrec train` through PyTorch's elastic launcher
(what ``torchrun`` runs) on 127.0.0.1; ``torchrun --nproc_per_node N -m digitrec train``
(or ``--nnodes`` for several machines) starts them the same way. Each copy finds its place
in the environment the launcher sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and
``World.join`` connects it to the others: gloo on CPUs, NCCL when each rank has a GPU.

The batch size stays the global one: each rank takes ``batch_size / N`` images of its
``shard`` of the epoch's order, and DistributedDataParallel averages the gradients, so
the step count, learning-rate schedule and moving average are those of one process at
the same batch size. Only rank 0 writes (run folder, checkpoints, report, registry) and
prints; the others train and exit. Without the launcher's environment, ``World()`` is a
world of one and nothing here changes what a run computes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from digitrec.config import Settings
from digitrec.errors import DigitrecError, InvalidRequest
from digitrec.training.device import resolve_device

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a rank waits for the others, at the start and at each collective. Rank 0
# validates and writes the checkpoint while the others wait for the next step; a rank
# that died is noticed much sooner (its sockets close, and the launcher stops the rest).
TIMEOUT = timedelta(minutes=10)
# Set by ``launch`` for its ranks: the launcher's pid. PyTorch's launcher starts each rank
# in a session of its own, so a launcher killed outright (SIGKILL, the OOM killer) would
# leave them training, and writing, as orphans; ``die_with_launcher`` prevents that.
LAUNCHER_PID = "DIGITREC_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1  # prctl(2)


def shard(order: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s share of ``order`` (DistributedSampler's): ``order`` padded with its
    own first items to a multiple of ``size``, then every ``size``-th item from ``rank``.
    The shards are disjoint but for the padding, cover ``order`` and have equal lengths."""
    pad = -len(order) % size
    if pad:
        repeats = -(-pad // len(order))
        order = torch.cat([order, order.repeat(repeats)[:pad]])
    return order[rank::size]


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a world of one by default)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None  # set once joined

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """The place the launcher (``torchrun`` or ``launch``) gave this process."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(
            size=int(os.environ["WORLD_SIZE"]),
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
        )

    def check_batch(self, batch_size: int) -> int:
        """Each rank's share of a step's ``batch_size`` images."""
        if batch_size % self.size:
            raise InvalidRequest(
                f"batch size {batch_size} cannot be split over {self.size} processes: "
                f"use a multiple of {self.size}"
            )
        return batch_size // self.size

    def device(self, setting: str) -> torch.device:
        """The rank's device: its own GPU (``cuda:LOCAL_RANK``) when CUDA is asked for or
        ``auto`` finds it, else the CPU."""
        device = resolve_device(setting)
        if self.size == 1 or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise InvalidRequest(
                f"{self.local_size} processes on this machine but {torch.cuda.device_count()} "
                "GPUs: start at most one process per GPU, or train on the CPU (--device cpu)"
            )
        return torch.device("cuda", self.local_rank)

    def threads(self, setting: int | None) -> int | None:
        """Intra-op threads: as set, else (with several ranks) the cores shared out."""
        if setting or self.size == 1:
            return setting
        return max(1, local_cores() // self.local_size)

    @contextlib.contextmanager
    def join(self, settings: Settings) -> Iterator[World]:
        """Connect to the other ranks for the length of the block (nothing for one)."""
        if self.size == 1:
            yield self
            return
        die_with_launcher()
        device = self.device(settings.device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=TIMEOUT)
        try:
            yield World(self.size, self.rank, self.local_rank, self.local_size, backend)
        finally:
            dist.destroy_process_group()

    # -- collectives (each a no-op in a world of one) --
    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def main_first(self, make: Callable[[], T]) -> T:
        """``make()`` on rank 0, then on the others (e.g. a download into a shared cache)."""
        if not self.is_main:
            self.barrier()
        value = make()
        if self.is_main:
            self.barrier()
        return value

    def from_main(self, value: T) -> T:
        """Rank 0's ``value``, on every rank."""
        if self.size == 1:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Each value summed over the ranks."""
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def describe(self) -> dict[str, Any]:
        """What a run's report and its model's manifest record."""
        return {"world_size": self.size, "backend": self.backend or "none"}


def die_with_launcher() -> None:
    """In a rank ``launch`` started: be killed when the launcher dies (Linux's parent-death
    signal), and exit now if it already has. Elsewhere (torchrun, another OS): nothing."""
    launcher = os.environ.get(LAUNCHER_PID)
    if not launcher or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not tie this rank to its launcher (errno %d)", ctypes.get_errno())
    if os.getppid() != int(launcher):  # it died before the signal was set
        os._exit(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run `digitrec ARGV` in ``nproc`` processes on this machine, as ``torchrun
    --nproc_per_node NPROC -m digitrec ARGV`` does; the exit code is 0 when every rank
    ended well. A failing rank brings the others down (the launcher stops them)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    # Each rank gets its share of the cores (the launcher would give it 1 thread).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, local_cores() // nproc)))
    os.environ[LAUNCHER_PID] = str(os.getpid())  # see die_with_launcher
    args = get_args_parser().parse_args(
        [
            f"--nproc-per-node={nproc}",
            "--nnodes=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            f"--rdzv-id={uuid.uuid4()}",
            "--max-restarts=0",
            "--module",
            "digitrec",
        ]
    )
    args.training_script_args = list(argv)  # not parsed: torchrun's own flags look alike
    config, command, command_args = config_from_args(args)
    # The launcher's own notes (rendezvous, stopping the others, its version of a
    # failure) are not the run's output: a failure is reported below, in one line.
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, command)(*command_args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        error = DigitrecError(
            f"training process {rank} of {nproc} failed (exit code {failure.exitcode}); "
            "the others were stopped",
            code="training_process_failed",
        )
        error.exit_code = failure.exitcode if failure.exitcode > 0 else 1
        raise error from None
    return 0
