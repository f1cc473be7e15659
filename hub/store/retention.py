"""Retention: old events go, by age and by count, in small transactions behind the appends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hub.config import RetentionConfig
from hub.exceptions import Unavailable
from hub.store.base import Backend

__all__ = ["retain"]

logger = logging.getLogger("callhub.store")


async def retain(backend: Backend, config: RetentionConfig, on_removed: Callable[[int], None]) -> None:
    """Apply `[retention]` every `interval`, forever (a task the hub owns and cancels)."""
    while True:
        try:
            removed = await backend.trim(max_age=config.age, max_count=config.count)
            if removed:
                on_removed(removed)
                logger.info("retention removed %d events", removed)
        except Unavailable:
            pass  # the store is closing or not writable: next round
        await asyncio.sleep(config.interval)
