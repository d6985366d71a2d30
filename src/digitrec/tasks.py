"""Background asyncio tasks (a key store's reloads, a model follower, a batcher, a
traffic recorder, a database watch): stopped one way everywhere."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has stopped, its ``CancelledError`` swallowed
    (any other error it ends with is raised); ``None``: nothing to stop."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
