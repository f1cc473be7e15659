"""What every vendor simulator shares: misbehaving on demand the same way.

A simulator's state has `delay` (seconds to wait before answering each request), `fail_next`
(answer the next N requests with an error, doing nothing) and `fail_skip` (serve this many
requests normally first). Tests set them to make a vendor slow or failing at a chosen request.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Misbehaving", "misbehave"]


class Misbehaving(Protocol):
    delay: float
    fail_next: int
    fail_skip: int


async def misbehave(state: Misbehaving) -> bool:
    """Wait `state.delay`; then True if this request is one of the `fail_next` to fail."""
    if state.delay > 0:
        await asyncio.sleep(state.delay)
    if state.fail_skip > 0:
        state.fail_skip -= 1
        return False
    if state.fail_next > 0:
        state.fail_next -= 1
        return True
    return False
