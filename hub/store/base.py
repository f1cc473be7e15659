"""The contract every backend fulfils: a durable, numbered event log that tells the local
fan-out about every committed event, in `seq` order, exactly once.

    append(event) ──commit──> AppendResult(seq, duplicate)     (only after the commit is durable)
                      └─────> on_commit([Event, ...])          (same process, seq order)
    read(after, ...) ───────> Page(events, next, trimmed_through, head)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

from hub.events import Event
from hub.matcher import TypeFilter

__all__ = ["Backend", "AppendResult", "Page", "CommitListener"]

CommitListener = Callable[[list[Event]], None]


class AppendResult(NamedTuple):
    seq: int
    duplicate: bool


class Page(NamedTuple):
    """One page of history.

    `next` is the cursor to continue from; `trimmed_through` the highest seq removed by
    retention (0 if none), read in the same snapshot as `events`; `head` the highest seq
    committed when the page was read.
    """

    events: list[Event]
    next: int
    trimmed_through: int
    head: int


class Backend(ABC):
    #: Highest seq this process has been told about through `on_commit`.
    head: int = 0

    @abstractmethod
    async def start(self, on_commit: CommitListener) -> None:
        """Open the store; from now on every commit is reported to `on_commit` in seq order."""

    @abstractmethod
    async def append(self, event: dict[str, Any], *, agent: str | None, received: float) -> AppendResult:
        """Store `event` (validated, without `seq`) durably; deduplicate on (`source`, `id`)."""

    @abstractmethod
    async def read(
        self, after: int, *, limit: int, agent: str | None, types: TypeFilter, scan_limit: int
    ) -> Page:
        """Events with seq > `after`, oldest first, at most `limit` of them.

        `agent` set: only events whose `data.agent` equals it. At most `scan_limit` stored
        events are examined, so a narrow filter cannot make one read unbounded.
        """

    @abstractmethod
    async def find(self, *, path: str, value: str, agent: str | None, limit: int,
                   source: str | None = None) -> list[Event]:
        """Newest first, stored events whose `data.<path>` (dotted) equals `value`.

        `agent` set: only that agent's events; `source` set: only events from that source. For
        look-ups such as "which call has this recording"; not for the hot path.
        """

    @abstractmethod
    async def stored_between(
        self, *, since: float, until: float, types: Collection[str], source: str | None, after: int, limit: int
    ) -> list[Event]:
        """Events of exactly these `types` (and this `source`, if given) that the store committed
        between `since` and `until` (unix seconds, the hub's clock, both inclusive), with seq >
        `after`, oldest first, at most `limit`. Page on with `after` = the last seq answered.

        For reconciling a vendor's call history with the calls the hub already holds (AntRing's
        history records carry no call id). Bounded by its window and `limit`; a stream store
        answers it from its time-ordered entry ids (Redis Streams: XRANGE over the window).
        """

    @abstractmethod
    async def trim(self, *, max_age: float, max_count: int) -> int:
        """Apply retention; return how many events were removed."""

    @abstractmethod
    async def check_writable(self, timeout: float) -> None:
        """Raise `Unavailable` unless a write transaction can be started now."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending writes, flush, release everything."""
