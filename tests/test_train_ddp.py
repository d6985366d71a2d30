"""Training on several processes (`digitrec train --nproc 2`, DistributedDataParallel on
gloo): the shard each rank sees, a real two-process run against one process at the same
global batch, what the ranks write, and --resume after the whole process group is killed.

Every test of this file carries the ``ddp`` marker (``pytest -m ddp``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from digitrec.registry import Registry
from digitrec.training.checkpoint import CHECKPOINT
from digitrec.training.distributed import shard
from tests.conftest import MNIST_CACHE, run_cli

pytestmark = pytest.mark.ddp


@pytest.mark.parametrize(("n", "size"), [(10, 2), (11, 2), (1000, 3), (7, 4), (3, 8)])
def test_shards_are_disjoint_cover_the_order_and_have_equal_sizes(n: int, size: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [shard(order, rank, size) for rank in range(size)]
    assert len({len(s) for s in shards}) == 1  # equal sizes: every rank takes as many steps
    assert len(shards[0]) == -(-n // size)
    seen = torch.cat(shards)
    assert set(seen.tolist()) == set(range(n))  # covering
    pad = -n % size  # DistributedSampler's padding: the order's first items, once more
    assert len(seen) == n + pad and len(set(seen.tolist())) == n
    assert sorted(torch.cat([order, order.repeat(8)[:pad]]).tolist()) == sorted(seen.tolist())


def test_a_batch_size_that_does_not_split_is_refused_in_one_line(tmp_path: Path) -> None:
    done = run_cli("train", "--nproc", "2", "--batch-size", "65", home=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "digitrec: error: batch size 65 cannot be split over 2 processes: use a multiple of 2"
    )
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# A short run: 1,024 images, batches of 64 (16 steps an epoch), no non-digits, no
# augmentation (with it, the ranks' different random streams would be the main difference).
TRAIN_ARGS = (
    "train",
    "--no-progress",
    "--train-subset",
    "1024",
    "--val-size",
    "1000",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--negatives",
    "0",
    "--seed",
    "5",
)
STEPS = 2 * 1024 // 64
NO_AUGMENTATION = {
    f"DIGITREC_AUG_{name}": "0"
    for name in ("ROTATION", "SCALE", "SHEAR", "TRANSLATE", "STROKE", "FAT", "TEXTURE")
}
ENV = {"DIGITREC_CALIBRATION_VARIANTS": "30", **NO_AUGMENTATION}

# Records, per rank, every file a rank creates, opens for writing, renames or removes
# under DIGITREC_HOME (a Python audit hook, loaded by every process through PYTHONPATH).
WRITE_AUDIT = textwrap.dedent(
    """
    import atexit, os, sys
    home, log = os.environ["DIGITREC_HOME"], os.environ.get("WRITE_AUDIT_LOG")
    writes, WRITING = [], os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
    def hook(event, args):
        if event == "open" and isinstance(args[2], int) and args[2] & WRITING:
            path = args[0]
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir"):
            path = args[0]
        else:
            return
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(home):
            writes.append(f"{event} {os.fspath(path)}")
    def save():
        if "RANK" in os.environ and log:
            with open(f"{log}.{os.environ['RANK']}", "w") as fh:
                fh.write("\\n".join(writes))
    if log:
        sys.addaudithook(hook)
        atexit.register(save)
    """
)


def train(home: Path, *extra: str, audit: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(ENV)
    if audit is not None:
        (audit / "sitecustomize.py").write_text(WRITE_AUDIT)
        env["PYTHONPATH"] = os.pathsep.join([str(audit), os.environ.get("PYTHONPATH", "")])
        env["WRITE_AUDIT_LOG"] = str(audit / "writes")
    return run_cli(*TRAIN_ARGS, *extra, home=home, env=env, timeout=300)


def only_run(home: Path) -> Path:
    (run,) = (home / "runs").iterdir()
    return run


def processes_with(variable: str) -> list[int]:
    """The pids of the live processes whose environment holds ``variable`` (NAME=VALUE)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if variable.encode() in environ.read_bytes().split(b"\0"):
                stat = (environ.parent / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # not a zombie
                    found.append(int(environ.parent.name))
        except OSError:
            continue  # gone, or not ours to read
    return found


def steps_taken(run: Path) -> int:
    with safe_open(str(run / CHECKPOINT), framework="pt") as fh:
        return int(json.loads(fh.metadata()["scheduler"])["_step_count"]) - 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same run on one process and on two (each with the machine's cores)."""
    homes = {}
    for name, extra in (("one", ()), ("two", ("--nproc", "2"))):
        home = tmp_path_factory.mktemp(name)
        audit = tmp_path_factory.mktemp(f"{name}-audit")
        done = train(home, *extra, audit=audit)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("run folder:") == 1 and done.stdout.count("model:") == 1
        assert done.stderr.count("epoch 2/2:") == 1  # rank 0 alone logs
        homes[name], homes[f"{name}-audit"] = home, audit
    return homes


@pytest.mark.mnist
@pytest.mark.slow
def test_two_processes_train_the_same_recipe_as_one(runs: dict[str, Path]) -> None:
    one, two = only_run(runs["one"]), only_run(runs["two"])
    # Same number of optimizer steps, same schedule, same learning rate at each epoch.
    assert steps_taken(one) == steps_taken(two) == STEPS
    metrics = {
        name: (run / "metrics.csv").read_text().splitlines()
        for name, run in (("one", one), ("two", two))
    }
    lr = {name: [row.split(",")[5] for row in rows[1:]] for name, rows in metrics.items()}
    assert lr["one"] == lr["two"]
    # Within noise: without augmentation the runs differ by batch-norm statistics
    # (each rank normalises its 32 images, one process its 64) and dropout's random
    # streams; after 32 steps that moves validation accuracy by a point or two (1,000
    # images: one standard error is 1.3 points at 80 %).
    a, b = (json.loads((run / "report.json").read_text()) for run in (one, two))
    assert a["val_accuracy"] > 0.5 and b["val_accuracy"] > 0.5  # both really trained
    assert abs(a["val_accuracy"] - b["val_accuracy"]) < 0.05
    assert abs(a["val_loss"] - b["val_loss"]) < 0.15
    assert a["processes"] == {"world_size": 1, "backend": "none"}
    assert b["processes"] == {"world_size": 2, "backend": "gloo"}


@pytest.mark.mnist
@pytest.mark.slow
def test_only_rank_0_writes(runs: dict[str, Path]) -> None:
    home, audit = runs["two"], runs["two-audit"]
    (entry,) = Registry(home / "models", extra_roots=()).list()
    assert entry.manifest["processes"] == {"world_size": 2, "backend": "gloo"}
    assert entry.manifest["settings"]["batch_size"] == 64  # the global batch, not N's share
    entry.verify()
    assert only_run(home).name == entry.version
    writes = {rank: (audit / f"writes.{rank}").read_text().split("\n") for rank in "01"}
    assert any(CHECKPOINT in w for w in writes["0"])  # the audit sees rank 0's writes...
    assert writes["1"] == [""]  # ...and none of rank 1's, for there are none
    assert not list(home.rglob("*.tmp"))


# Rank 1 dies (exit code 3) as it opens the MNIST images, while rank 0 waits for it.
DIE_ON_RANK_1 = textwrap.dedent(
    """
    import os, sys
    def hook(event, args):
        if event == "open" and "train-images" in str(args[0]):
            os._exit(3)
    if os.environ.get("RANK") == "1":
        sys.addaudithook(hook)
    """
)


@pytest.mark.mnist
def test_a_failing_rank_stops_the_others_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(DIE_ON_RANK_1)
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    home = tmp_path / "home"
    done = run_cli(
        *TRAIN_ARGS, "--nproc", "2", home=home, env={**ENV, "PYTHONPATH": path}, timeout=120
    )
    # Rank 0, waiting in a collective, is stopped by the launcher (or, should it see the
    # lost peer first, fails itself): either way the run ends at once, non-zero.
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"digitrec: error: training process [01] of 2 failed \(exit code -?\d+\); "
        r"the others were stopped",
        last,
    ), done.stderr
    assert not (home / "models").exists()


@pytest.mark.mnist
@pytest.mark.slow
def test_resume_on_two_processes_after_the_group_is_killed(
    tmp_path: Path, runs: dict[str, Path]
) -> None:
    home = tmp_path / "killed"
    env = {**os.environ, **ENV, "DIGITREC_HOME": str(home), "DIGITREC_DATA_DIR": str(MNIST_CACHE)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "digitrec", *TRAIN_ARGS, "--nproc", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the launcher's group (PyTorch starts each rank in its own)
    )
    deadline = time.monotonic() + 120
    checkpoints: list[Path] = []
    while time.monotonic() < deadline and not checkpoints:
        checkpoints = list((home / "runs").glob(f"*/{CHECKPOINT}"))
        time.sleep(0.01)
    assert checkpoints, "no checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The ranks die with their launcher: none goes on training and writing as an orphan
    # (which would then race the resumed run to the registry).
    deadline = time.monotonic() + 10
    while (left := processes_with(f"DIGITREC_HOME={home}")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"ranks outlived their launcher: {left}"
    run = checkpoints[0].parent
    assert not (run / "model.json").exists(), "the run ended before the kill"
    assert steps_taken(run) == STEPS // 2  # killed after epoch 1 of 2

    resumed = run_cli(
        "train", "--resume", run.name, "--nproc", "2", "--no-progress", home=home, env=ENV
    )
    assert resumed.returncode == 0, resumed.stderr
    assert steps_taken(run) == STEPS
    (entry,) = Registry(home / "models", extra_roots=()).list()
    (straight,) = Registry(runs["two"] / "models", extra_roots=()).list()
    a, b = (load_file(str(e.path / "model.safetensors")) for e in (entry, straight))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs"
