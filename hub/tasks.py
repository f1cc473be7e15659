"""The owner of the hub's background tasks: every task is named, kept, cancelled and awaited on stop.

Parts that start tasks are given `Tasks.spawn` (a `Spawn`), never the loop: no task outlives the hub.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

__all__ = ["Tasks", "Spawn"]

logger = logging.getLogger("callhub")


class Spawn(Protocol):
    def __call__(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]: ...


class Tasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run `coro` as a task owned here: cancelled and awaited by `stop`."""
        task = asyncio.get_running_loop().create_task(coro, name=f"callhub:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self, timeout: float) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def __len__(self) -> int:
        return len(self._tasks)
