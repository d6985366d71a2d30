"""Which code trained a model: the source commit that a run records in its manifest.

The trainer reads it when it starts, before anything else can change the work tree; it
lives here, below the loop, so that ``loop.py`` need not import ``runs.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


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
