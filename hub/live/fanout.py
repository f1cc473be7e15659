"""Live fan-out: from committed events to every subscriber that may see them.

Subscribers with the same scope (`agent`) and the same filter form one `Group`. For each
committed batch the fan-out decides once per group which events it gets, builds one
`Payload` (whose wire forms are encoded once, lazily), and hands it to every member's sink.
Per subscriber that is one non-blocking `transport.write`: no JSON, no task, no await.

A subscriber that resumes (`after`, `Last-Event-ID`) joins its group at once with its sink
*holding* live events, reads the store from its cursor until a read reaches the stored
head, then releases the held events newer than what it read. The store holds every event
before it is published, so this has no gap and no duplicate; if more live events arrive
during the catch-up than the sink may hold, they are dropped and read from the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from hub.events import Event, encode_event, hub_event
from hub.exceptions import TooManyRequests
from hub.live.sinks import Payload, Sink, TransportSink
from hub.matcher import TypeFilter
from hub.ops.metrics import Metrics
from hub.store.base import Backend

logger = logging.getLogger("callhub.fanout")

__all__ = ["Fanout", "Subscriber", "CloseCode"]


class CloseCode:
    """WebSocket close codes the hub sends (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    POLICY = 1008  # token expired
    TOO_BIG = 1009
    INTERNAL = 1011
    RESTART = 1012  # service restart (graceful shutdown)
    TRY_AGAIN_LATER = 1013  # too slow: buffer overflow


#: Drop reasons, as they appear in `callhub_subscribers_dropped_total{reason}`.
DROP_CODES = {
    "slow_consumer": (CloseCode.TRY_AGAIN_LATER, "subscriber too slow: buffer full; resume from your last seq"),
    "token_expired": (CloseCode.POLICY, "token expired"),
    "shutdown": (CloseCode.RESTART, "service restart"),
    "catchup_failed": (CloseCode.INTERNAL, "could not read history; resume from your last seq"),
    "bad_messages": (CloseCode.POLICY, "too many bad messages in a row"),
}


class Subscriber:
    __slots__ = (
        "id", "transport", "principal", "agent", "filter", "sink", "since", "remote",
        "group", "closing", "catchup", "expiry",
    )

    def __init__(
        self, *, transport: str, principal: str, agent: str | None, filter: TypeFilter, sink: Sink, remote: str
    ) -> None:
        self.id = 0
        self.transport = transport
        self.principal = principal
        self.agent = agent
        self.filter = filter
        self.sink = sink
        self.since = time.time()
        self.remote = remote
        self.group: Group | None = None
        self.closing = False
        self.catchup: asyncio.Task[None] | None = None
        self.expiry: asyncio.TimerHandle | None = None

    def describe(self) -> dict[str, Any]:
        backlog = self.sink.backlog if not self.sink.closed else 0
        return {
            "id": self.id,
            "transport": self.transport,
            "principal": self.principal,
            "agent": self.agent,
            "types": list(self.filter.patterns),
            "allowed_types": list(self.filter.allowed) or None,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
            "remote": self.remote,
            "state": "catching_up" if self.sink.held is not None else "live",
            "writer": "direct" if isinstance(self.sink, TransportSink) else "queued",
            "last_seq": self.sink.last_seq,
            "buffer": {"events": backlog, "limit": self.sink.limit, "fill": round(backlog / self.sink.limit, 4)},
        }


class Group:
    __slots__ = ("agent", "filter", "members", "ws", "sse")

    def __init__(self, agent: str | None, filter: TypeFilter) -> None:
        self.agent = agent
        self.filter = filter
        self.members: dict[Subscriber, None] = {}
        self.ws = 0
        self.sse = 0


class Fanout:
    def __init__(
        self,
        backend: Backend,
        metrics: Metrics,
        *,
        catchup_page: int,
        close_timeout: float,
        sse_heartbeat: float,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.catchup_page = catchup_page
        self.close_timeout = close_timeout
        self.sse_heartbeat = sse_heartbeat
        self.head = 0
        self.subscribers: dict[int, Subscriber] = {}
        #: Live connections per credential (`Principal.id`): `admit` / `release`.
        self._per_credential: dict[str, int] = {}
        self.closing = False
        # agent (None = unscoped) -> filter key -> group
        self._groups: dict[str | None, dict[Any, Group]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.TimerHandle | None = None
        self._m_delivered_ws = metrics.events_delivered.labels("ws")
        self._m_delivered_sse = metrics.events_delivered.labels("sse")
        self._m_latency = metrics.fanout_latency

    def start(self) -> None:
        self.head = self.backend.head
        self._schedule_heartbeat()

    # -- publishing (hot path) -------------------------------------------------------------

    def publish(self, events: list[Event]) -> None:
        """Called by the backend with each committed batch, in seq order."""
        self.head = events[-1].seq
        groups = self._groups
        if groups:
            unscoped = groups.get(None)
            per_group: dict[Group, list[Event]] = {}
            for event in events:
                if unscoped:
                    for group in unscoped.values():
                        if group.filter.matches(event.type):
                            per_group.setdefault(group, []).append(event)
                if event.agent is not None:
                    scoped = groups.get(event.agent)
                    if scoped:
                        for group in scoped.values():
                            if group.filter.matches(event.type):
                                per_group.setdefault(group, []).append(event)
            ws = sse = 0
            for group, group_events in per_group.items():
                payload = Payload(group_events)
                for subscriber in group.members:
                    subscriber.sink.write(payload)
                n = len(group_events)
                ws += n * group.ws
                sse += n * group.sse
            if ws:
                self._m_delivered_ws.inc(ws)
            if sse:
                self._m_delivered_sse.inc(sse)
        now = time.perf_counter()
        observe = self._m_latency.observe
        for event in events:
            if event.received:
                observe(now - event.received)

    # -- membership ----------------------------------------------------------------------------

    def _join(self, subscriber: Subscriber) -> None:
        by_filter = self._groups.setdefault(subscriber.agent, {})
        group = by_filter.get(subscriber.filter.key)
        if group is None:
            group = by_filter[subscriber.filter.key] = Group(subscriber.agent, subscriber.filter)
        else:
            # Share the group's filter so its match cache is shared too.
            subscriber.filter = group.filter
        group.members[subscriber] = None
        if subscriber.transport == "ws":
            group.ws += 1
        else:
            group.sse += 1
        subscriber.group = group

    def _leave(self, subscriber: Subscriber) -> None:
        group = subscriber.group
        if group is None:
            return
        subscriber.group = None
        group.members.pop(subscriber, None)
        if subscriber.transport == "ws":
            group.ws -= 1
        else:
            group.sse -= 1
        if not group.members:
            by_filter = self._groups.get(group.agent)
            if by_filter is not None:
                by_filter.pop(group.filter.key, None)
                if not by_filter:
                    del self._groups[group.agent]

    def admit(self, credential: str, limit: int) -> None:
        """Count one more live connection for `credential` (a `Principal.id`), or raise
        `TooManyRequests` if it holds `limit` already (0: no limit). Synchronous, so connections
        opened at the same moment cannot all slip under the limit; `release` when it ends."""
        held = self._per_credential.get(credential, 0)
        if limit and held >= limit:
            raise TooManyRequests(f"this credential already holds {limit} live connections ([streams] "
                                  "max_per_credential); close one first", limit=limit)
        self._per_credential[credential] = held + 1

    def release(self, credential: str) -> None:
        held = self._per_credential.get(credential, 0) - 1
        if held > 0:
            self._per_credential[credential] = held
        else:
            self._per_credential.pop(credential, None)

    def register(self, subscriber: Subscriber, *, expires_at: float | None) -> None:
        subscriber.id = next(self._ids)
        self.subscribers[subscriber.id] = subscriber
        subscriber.sink.on_overflow = lambda: self.drop(subscriber, "slow_consumer")
        self.metrics.subscribers.labels(subscriber.transport).inc()
        if expires_at is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, expires_at - time.time())
            subscriber.expiry = loop.call_later(delay, self.drop, subscriber, "token_expired")

    def subscribe(self, subscriber: Subscriber, after: int | None) -> None:
        """(Re)start delivery to `subscriber`: live from now, or from `after` through the store."""
        self._cancel_catchup(subscriber)
        self._leave(subscriber)
        if after is None:
            subscriber.sink.held = None  # a catch-up cut short by this call holds nothing we want
            self._join(subscriber)
            return
        subscriber.sink.hold()
        self._join(subscriber)
        task = asyncio.get_running_loop().create_task(self._catch_up(subscriber, after))
        subscriber.catchup = task

    def unregister(self, subscriber: Subscriber) -> None:
        """The connection is gone (either side closed it)."""
        if self.subscribers.pop(subscriber.id, None) is None:
            return
        self._cancel_catchup(subscriber)
        self._leave(subscriber)
        if subscriber.expiry is not None:
            subscriber.expiry.cancel()
        subscriber.sink.discard()
        self.metrics.subscribers.labels(subscriber.transport).dec()

    def _cancel_catchup(self, subscriber: Subscriber) -> None:
        task = subscriber.catchup
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        subscriber.catchup = None

    async def _catch_up(self, subscriber: Subscriber, after: int) -> None:
        sink = subscriber.sink
        cursor = after
        gap_sent = False
        page_size = self.catchup_page
        try:
            while not sink.closed:
                page = await self.backend.read(cursor, limit=page_size, agent=subscriber.agent, types=subscriber.filter)
                if sink.closed:
                    return
                if not gap_sent and cursor < page.trimmed_through:
                    gap_sent = True
                    if subscriber.filter.allows(GAP):  # a token whose types claim excludes it never sees it
                        self._write_direct(sink, [gap_event(cursor, page.trimmed_through)])
                # What the fan-out has published (or less: the store's head when it read, if a
                # store lost writes it had acknowledged); a newer event the read found (stored,
                # not yet reported to the fan-out) is left to the hold, or it would come twice.
                head = min(self.head, page.head)
                events = page.events
                beyond = bool(events) and events[-1].seq > head
                if beyond:
                    events = [event for event in events if event.seq <= head]
                if events:
                    self._write_direct(sink, events)
                cursor = max(cursor, min(page.next, head))
                if cursor >= head and (beyond or len(page.events) < page_size):
                    # This read reached what the fan-out has published; everything newer is
                    # published after we joined, so it is in the hold (unless the hold
                    # overflowed: then read on).
                    if sink.release(cursor):
                        return
                    continue
                # Let the subscriber take what we wrote before reading more.
                if not await sink.drained(max(1, sink.limit // 2), self.close_timeout * 4):
                    self.drop(subscriber, "slow_consumer")
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("catch-up failed for subscriber %d", subscriber.id)
            self.drop(subscriber, "catchup_failed")
        finally:
            if subscriber.catchup is asyncio.current_task():
                subscriber.catchup = None

    @staticmethod
    def _write_direct(sink: Sink, events: list[Event]) -> None:
        held = sink.held
        sink.held = None  # write through the hold, then put it back
        try:
            sink.write(Payload(events))
        finally:
            if sink.held is None:
                sink.held = held

    # -- closing -------------------------------------------------------------------------------

    def drop(self, subscriber: Subscriber, reason: str) -> None:
        """Disconnect `subscriber` from the hub's side, counted under `reason`."""
        if subscriber.closing or subscriber.id not in self.subscribers:
            return
        subscriber.closing = True
        self.metrics.subscribers_dropped.labels(subscriber.transport, reason).inc()
        code, message = DROP_CODES[reason]
        self._cancel_catchup(subscriber)
        # Stop writing now; leave the group later: this may run inside `publish`'s loop over it.
        subscriber.sink.closed = True
        logger.info("dropping subscriber %d (%s): %s", subscriber.id, subscriber.transport, reason)
        task = asyncio.get_running_loop().create_task(self._close(subscriber, code, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, subscriber: Subscriber, code: int, message: str) -> None:
        self._leave(subscriber)
        sink = subscriber.sink
        try:
            await asyncio.wait_for(sink.close(code, message), self.close_timeout)
        except Exception:
            # The peer does not take its close frame (it stopped reading): cut the connection.
            sink.abort()

    async def shutdown(self, timeout: float) -> None:
        """Close every subscriber (WS 1012, SSE end of stream) and wait for the closes to go out."""
        self.closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for subscriber in list(self.subscribers.values()):
            self.drop(subscriber, "shutdown")
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def _schedule_heartbeat(self) -> None:
        if self.sse_heartbeat <= 0 or self.closing:
            return
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.call_later(self.sse_heartbeat, self._send_heartbeats)

    def _send_heartbeats(self) -> None:
        for subscriber in self.subscribers.values():
            if subscriber.transport == "sse" and not subscriber.closing:
                subscriber.sink.heartbeat()
        self._schedule_heartbeat()

    def describe(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.subscribers.values()]


GAP = "hub.gap"


def gap_event(after: int, trimmed_through: int) -> Event:
    """The `hub.gap` event: seqs `after+1 .. trimmed_through` were removed by retention.

    It carries `seq = trimmed_through`, so a client that remembers the last seq it saw
    resumes after the gap.
    """
    first = after + 1
    attrs = hub_event(
        GAP,
        {"from": first, "to": trimmed_through, "missing": trimmed_through - first + 1, "reason": "retention"},
    )
    return Event(trimmed_through, GAP, None, encode_event(attrs, trimmed_through))
