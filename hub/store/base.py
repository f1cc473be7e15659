"""The store's contract: what a backend module provides, so a second backend is one more module.

A backend is two things behind one URL scheme (`[backend] url`):

- the **event log**: durable, numbered, deduplicated; it tells this process's fan-out about
  every commit, in `seq` order, exactly once;

      append(event) ──commit──> AppendResult(seq, duplicate)     (only after the commit is durable)
                        └─────> on_commit([Event, ...])          (same process, seq order)
      read(after, ...) ───────> Page(events, next, trimmed_through, head)

- the **rules journal** (`Journal`): which rule actions started and how they ended, how far the
  rules have evaluated the log (the cursor), the cooldowns running, and the handlers' small
  key/value state (a vendor poller's cursor: `state_get` / `state_put`, one namespace each);
- the **outbox** (`Outbox`): outbound webhook subscriptions, how far each has taken the log,
  the deliveries waiting for a retry (or behind one of the same call), and the delivery log.

Each backend class declares its own options (`Options`, validated from the `[backend]` table
beside `url`), keeps its scan budgets to itself, and answers look-ups by the fields this
contract declares indexed (`INDEXED_FIELDS`), not by arbitrary JSON paths. The behaviour suite
in `tests/test_store_contract.py` runs against every backend.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from hub.events import Event
from hub.matcher import TypeFilter

__all__ = ["Backend", "Lease", "Journal", "JournalEntry", "Unfinished", "Outbox", "OutboxChanges", "Pending", "Attempt",
           "AppendResult", "Page", "CommitListener", "IndexedField", "INDEXED_FIELDS", "indexed_values", "NoOptions"]

CommitListener = Callable[[list[Event]], None]
#: Fields of `data` every backend indexes, for look-ups off the hot path (`Backend.find`).
IndexedField = Literal["call_id", "recording"]
INDEXED_FIELDS: tuple[IndexedField, ...] = ("call_id", "recording")


def indexed_values(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """An event's `data.call_id` and `data.recording`, when they are strings (what `find` looks up)."""
    data = event.get("data")
    if not isinstance(data, dict):
        return None, None
    call_id, recording = data.get("call_id"), data.get("recording")
    return (call_id if isinstance(call_id, str) else None, recording if isinstance(recording, str) else None)


class NoOptions(BaseModel):
    """A backend without options of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    """Constructed as `Backend(url=..., options=<its Options>, data_dir=...)`, opening nothing
    until `start` (so `callhub check` can build one to validate a config)."""

    #: The backend's own options: the `[backend]` table's keys beside `url`.
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: Highest seq this process has been told about through `on_commit`.
    head: int = 0
    #: Several processes may share this store (each sees every process's commits through `on_commit`).
    shared: ClassVar[bool] = False

    @abstractmethod
    async def start(self, on_commit: CommitListener) -> None:
        """Open the store; from now on every commit is reported to `on_commit` in seq order."""

    @abstractmethod
    async def append(self, event: dict[str, Any], *, agent: str | None, received: float) -> AppendResult:
        """Store `event` (validated, without `seq`) durably; deduplicate on (`source`, `id`)."""

    @abstractmethod
    async def read(self, after: int, *, limit: int, agent: str | None, types: TypeFilter) -> Page:
        """Events with seq > `after`, oldest first, at most `limit` of them.

        `agent` set: only events whose `data.agent` equals it. The backend examines a bounded
        number of stored events per call (its own scan budget), so a narrow filter cannot make
        one read unbounded: a page may then hold fewer than `limit` events with a `next` still
        behind the head, and the caller reads on from `next`.
        """

    @abstractmethod
    async def get(self, seq: int) -> Event | None:
        """The stored event with this seq (None if there is none, or retention removed it)."""

    @abstractmethod
    async def find(self, field: IndexedField, value: str, *, agent: str | None, source: str | None,
                   limit: int) -> list[Event]:
        """Newest first, at most `limit` stored events whose `data.<field>` equals `value`.

        `agent` set: only that agent's events; `source` set: only that source's. For look-ups such
        as "which call has this recording"; bounded by the index, not a scan.
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

    @abstractmethod
    async def seq_at(self, when: float) -> int:
        """The highest seq stored before `when` (unix seconds, the hub's clock): reading after it
        gives what was stored from `when` on. 0 if nothing was stored before."""

    @abstractmethod
    def lease(self, name: str, ttl: float) -> Lease:
        """A lease on one piece of work that must run in one process at a time (an upstream
        connection, a poller) among every process sharing this store."""

    @abstractmethod
    def journal(self) -> Journal:
        """The rules journal this backend keeps (one per backend; opened by its own `start`)."""

    @abstractmethod
    def outbox(self) -> Outbox:
        """The outbound webhooks' state this backend keeps (one per backend; opened by its own `start`)."""


# -- leases -------------------------------------------------------------------------------------------


class Lease(ABC):
    """The exclusive right to do one piece of work, held `ttl` seconds at a time and renewed.

    Each new holder gets a **fencing token** higher than every earlier holder's, so a holder that
    was paused past its lease can be told apart from the one that took over. A holder renews well
    inside `ttl` and stops its work as soon as a renewal fails, so two holders never overlap
    while clocks run at the same rate.
    """

    name: str
    ttl: float

    @abstractmethod
    async def acquire(self) -> int | None:
        """Take the lease if it is free or already ours; the fencing token, or None if another holds it."""

    @abstractmethod
    async def renew(self) -> bool:
        """Hold it `ttl` more seconds; False if it is no longer ours (expired and taken, or released)."""

    @abstractmethod
    async def release(self) -> None:
        """Give it up now (if ours), so another process takes over without waiting for `ttl`."""


# -- the rules journal ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One action about to run (or failed before running: `error`), on its way into the journal."""

    key: str
    rule: str
    type: str
    event_id: str
    seq: int
    request: Mapping[str, Any]
    error: str | None = None


class Unfinished(NamedTuple):
    """An action the journal shows started and not finished (the hub stopped while it ran)."""

    key: str
    rule: str
    type: str
    event_id: str
    seq: int
    request: dict[str, Any]
    #: The journal (one per hub process: `Journal.owner`) that began it; "" before owners were kept.
    owner: str = ""


def new_owner() -> str:
    """A name for one process's journal, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Journal(ABC):
    """What rule actions need remembered across restarts: each started at most once, how each
    ended, how far the log was evaluated, and the cooldowns running; and the handlers' small
    key/value state (a poller's cursor, `state_get` / `state_put`).

    Each process's journal has its own `owner` (`new_owner()`), written with every action it
    begins, so that with processes sharing a store the unfinished actions of a dead process can
    be told from those still running in another.

    Writes are applied in the order the calls were made (the futures are made at call time, the
    writes queued then), which is what lets the cursor be written lazily: a cursor written after
    a `begin` can never be durable before it.
    """

    owner: str = ""

    @abstractmethod
    async def start(self) -> None:
        """Open it (before any other call)."""

    @abstractmethod
    def begin(self, entries: Sequence[JournalEntry], cursor: int | None,
              cooldowns: Sequence[tuple[str, str, float]] = ()) -> asyncio.Future[list[bool]]:
        """Record that these actions start (or failed before starting), the cooldowns their rules
        started, and move the cursor, in one durable write. The answer says, per entry, whether it
        is new: an entry already journaled must not run again."""

    @abstractmethod
    def finish(self, key: str, state: str, result: Any) -> asyncio.Future[None]:
        """Record how an action ended (`succeeded`, `failed`, `unknown`)."""

    @abstractmethod
    def set_cursor(self, seq: int) -> asyncio.Future[None]:
        """Events up to `seq` have been evaluated (the cursor never moves back)."""

    @abstractmethod
    async def unfinished(self) -> list[Unfinished]:
        """Actions started and never finished."""

    @abstractmethod
    async def cursor(self) -> int | None:
        """The highest seq whose rule firings are all journaled; None for a new journal."""

    @abstractmethod
    async def cooldowns(self, now: float) -> list[tuple[str, str, float]]:
        """(rule, key, until) of the cooldowns still running at `now`; expired ones are forgotten."""

    @abstractmethod
    async def state_get(self, namespace: str, key: str) -> Any:
        """A handler's stored value (JSON: what `state_put` stored), or None if there is none."""

    @abstractmethod
    def state_put(self, namespace: str, key: str, value: Any) -> asyncio.Future[None]:
        """Store a JSON-able value durably under (`namespace`, `key`), replacing the old one; None forgets it."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release everything."""


# -- the outbox (outbound webhook subscriptions) --------------------------------------------------------


class Pending(NamedTuple):
    """A delivery that is not settled and that the cursor has passed: due for a retry at `next_at`
    (`retry`), or waiting behind an earlier delivery of the same call (`waiting`), or asked for
    again by an operator (`manual`)."""

    subscription: str
    seq: int
    #: The ordering key (the call id) it waits on, if any.
    key: str | None
    attempts: int
    next_at: float
    state: str


class Attempt(NamedTuple):
    """One line of the delivery log: an attempt, or an outcome without one (`expired`)."""

    id: int
    subscription: str
    seq: int
    event_id: str
    #: The `webhook-id` the receiver saw.
    message_id: str
    at: float
    attempt: int
    #: `delivered`, `retrying` (failed, will try again), `failed` (no more tries), `expired`.
    outcome: str
    status: int | None
    latency_ms: float | None
    error: str | None
    #: The first bytes of the receiver's answer.
    response: str | None


@dataclass
class OutboxChanges:
    """What one durable write applies: cursors moved, pending deliveries added, changed or settled,
    attempts logged. All of it or none of it."""

    cursors: dict[str, int] = field(default_factory=dict)
    pending: list[Pending] = field(default_factory=list)
    settled: list[tuple[str, int]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.cursors or self.pending or self.settled or self.attempts)

    def merged(self, later: OutboxChanges) -> OutboxChanges:
        """These changes, then `later`, as one: for each delivery the last word counts (a row
        settled after it was written stays settled; one written again after it settled comes back)."""
        last: dict[tuple[str, int], Pending | None] = {}
        for changes in (self, later):
            for key in changes.settled:
                last[key] = None
            for row in changes.pending:
                last[(row.subscription, row.seq)] = row
        cursors = dict(self.cursors)
        for sub, cursor in later.cursors.items():
            cursors[sub] = max(cursor, cursors.get(sub, cursor))
        return OutboxChanges(cursors=cursors, pending=[r for r in last.values() if r is not None],
                             settled=[k for k, r in last.items() if r is None], attempts=self.attempts + later.attempts)


class Outbox(ABC):
    """Durable state of outbound webhook subscriptions (writes applied in the order they were made)."""

    @abstractmethod
    async def start(self) -> None:
        """Open it (before any other call)."""

    @abstractmethod
    async def subscriptions(self) -> list[tuple[dict[str, Any], int | None]]:
        """Every stored subscription (its document) with its cursor (None: it has not read the log yet)."""

    @abstractmethod
    def save(self, document: dict[str, Any], *, cursor: int | None = None) -> asyncio.Future[None]:
        """Create or replace a subscription's document (keyed by its `id`); `cursor` sets where it starts."""

    @abstractmethod
    def update(self, subscription: str, fields: dict[str, Any], *, cursor: int | None = None) -> asyncio.Future[None]:
        """Set these top-level fields of a stored document, leaving the others as they are (several
        processes may write one document: each writes only what it changed); `cursor` set: it too.
        Nothing if there is no such subscription (deleted meanwhile)."""

    @abstractmethod
    def delete(self, subscription: str) -> asyncio.Future[None]:
        """Forget a subscription: its document, cursor, pending deliveries and delivery log."""

    @abstractmethod
    def apply(self, changes: OutboxChanges) -> asyncio.Future[None]:
        """Apply `changes` in one durable write (a cursor never moves back)."""

    @abstractmethod
    async def pending(self, subscription: str) -> list[Pending]:
        """The subscription's pending deliveries, by seq."""

    @abstractmethod
    async def attempts(self, subscription: str, *, outcome: str | None, after: int, limit: int) -> list[Attempt]:
        """The delivery log of one subscription, oldest first, after the attempt id `after`."""

    @abstractmethod
    async def prune(self, before: float) -> int:
        """Drop log lines older than `before`; how many went."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release everything."""
