"""Outbound webhook delivery: every subscription takes the log in order and pushes what it wants to
its endpoint, at least once, signed, retried, ordered per call (docs/WEBHOOKS_OUT.md).

    store commit ─▶ Deliveries.on_commit ─▶ Worker.incoming (per subscription, bounded)
                                               │ filter, per-call queue, rate limit, concurrency
                    store.read (catch-up) ───▶ │ ─▶ WebhookSender.attempt ─▶ the endpoint
                                               ▼
                     Outbox.apply every 100 ms: the cursor, pending retries, the delivery log

**Progress is durable before it advances.** A subscription's cursor is the highest seq such that
every event at or below it is settled (delivered, failed, expired) or held as a pending row
(waiting for a retry, or behind an earlier event of its call). Rows and cursor move in one
outbox write; an event merely in flight holds the cursor back, so after a crash (or `kill -9`)
the log is read again from the cursor and the event is sent again: at least once. The
receiver deduplicates on `webhook-id`, the same for every attempt at one event.

**One slow endpoint never delays another.** Each subscription has its own worker task, its own
queue (`[webhooks] max_queue`: past it, the worker stops listening and reads the log back when
it has room), its own concurrency bound and rate limit. The commit hook only appends to the
queues of subscriptions whose types match, parsing each such event once for all of them.

**Per call.** With `ordering = "per_call"` the events of one `data.call_id` go one at a time in
seq order: a failing event holds back the later events of its call only.

**One process delivers.** With several processes sharing a store (Redis), the one holding the
`deliveries` lease runs the workers (`Deliveries.run`), starting from the outbox as after a
restart; the others keep dormant workers (the document, the durable cursor) for the API. A
change made through the API of any process is written to the outbox, then told to every
process through the log (`hub.subscription.changed`): each loads that subscription again, and
the holder's worker takes nothing committed after the change until it has (docs/SCALING.md).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import secrets
import time
from bisect import insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from hub.config import SubscriptionSpec, WebhooksConfig
from hub.events import HUB_SOURCE, Event, Publish, event_time, hub_event
from hub.exceptions import BadRequest, HubError, NotFound
from hub.ops.metrics import Metrics
from hub.outbound.guard import EgressPolicy, EgressRefused
from hub.outbound.retry import retry_after_seconds, stable_key
from hub.store.base import Attempt, Backend, Outbox, OutboxChanges, Pending
from hub.webhooks.sender import WebhookSender, WebhookUnreachable
from hub.webhooks.subscriptions import (
    CHANGED,
    HUB_DELIVERY_TYPES,
    STATES,
    Subscription,
    from_config,
    new_id,
    new_secret,
)

__all__ = ["Deliveries", "Conflict", "FLUSH_INTERVAL", "OUTCOMES", "delivery_id", "parse_delivery_id"]

logger = logging.getLogger("callhub.webhooks")

#: How often progress, retries and the delivery log are written (one outbox write for all subscriptions).
FLUSH_INTERVAL = 0.1
#: Events read per page when a subscription catches up from the log.
READ_PAGE = 500
#: Retry delays are spread by this much either way, so retries of many deliveries do not arrive together.
JITTER = 0.2
#: How often a cursor that moved only past unwanted events is written (fsyncs of an idle subscription).
QUIET_CURSOR_EVERY = 1.0
#: Bytes of the endpoint's answer kept in the delivery log.
RESPONSE_HEAD = 512
#: How often the delivery log is pruned (`[webhooks] log_retention`).
PRUNE_EVERY = 3600.0
#: Event types whose matching subscriptions the commit hook remembers (then it starts over).
MAX_ROUTES = 4096
#: How long a process that stops delivering (lease lost, shutdown) tries to write what its workers did.
STOP_FLUSH_TIMEOUT = 2.0
#: How many times a process tries to reload a subscription another process changed (a second apart).
SYNC_TRIES = 30
#: The delivery log's outcomes.
OUTCOMES = ("delivered", "retrying", "failed", "expired")
_CONTENT_TYPE = {"Content-Type": "application/cloudevents+json"}


class Conflict(HubError):
    status_code = 409
    code = "conflict"


def delivery_id(subscription: str, seq: int) -> str:
    """A delivery's id: its subscription and the event's seq (`sub_1f2e.1042`)."""
    return f"{subscription}.{seq}"


def parse_delivery_id(value: str) -> tuple[str, int]:
    subscription, _, seq = value.rpartition(".")
    if not subscription or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
        raise NotFound(f"no delivery {value[:80]!r}: a delivery id is <subscription>.<seq>", code="unknown_delivery")
    return subscription, int(seq)


class Meta(NamedTuple):
    """What a delivery needs to know of its event beyond the body."""

    message_id: str
    event_id: str
    type: str
    time: float


@dataclass(slots=True, eq=False)
class Item:
    """An event one subscription has to deliver and has not settled."""

    seq: int
    key: str | None
    meta: Meta | None
    #: The committed event (its body), while it is about to be sent; None: read it back from the store.
    event: Event | None
    attempts: int = 0
    next_at: float = 0.0
    #: queued (ready), sending, retry (its timer runs), waiting (behind an earlier event of its call).
    state: str = "queued"
    #: A pending row holds it (so it does not hold the cursor back).
    durable: bool = False
    #: An operator asked for it (replay, retry): sent whatever its age.
    forced: bool = False


class Worker:
    """One subscription's delivery: its queue, per-call order, timers, rate and concurrency."""

    def __init__(self, sub: Subscription, engine: Deliveries, cursor: int) -> None:
        self.sub = sub
        self.e = engine
        self.items: dict[int, Item] = {}
        #: Seqs of items that hold the cursor back (not durable), a heap; stale entries are skipped.
        self.holding: list[int] = []
        self.keys: dict[str, list[int]] = {}
        self.ready: deque[int] = deque()
        self.timers: list[tuple[float, int]] = []
        self.read_pos = cursor
        self.durable_cursor = cursor
        self.cursor_written = 0.0
        self.forced_through = 0
        #: While listening, the commit hook appends here: (event, body) or the seq a batch ended at.
        self.listening = False
        self.incoming: deque[tuple[Event, dict[str, Any]] | int] = deque()
        self.inflight = 0
        #: Set by `poke` (new work, a finished attempt); the loop sleeps on `_waiter` otherwise.
        self.woken = False
        self._waiter: asyncio.Future[None] | None = None
        #: The last seq of the newest committed batch, when it brought this worker nothing.
        self.seen_through = cursor
        #: A catch-up read is in flight (`seen_through` must not move `read_pos` meanwhile).
        self.reading = False
        #: Bumped by a rewind (replay, skip): a catch-up read from before it is thrown away.
        self.generation = 0
        #: Items not yet held by a pending row: what `max_queue` bounds.
        self.volatile = 0
        self.dirty: set[int] = set()
        self.settled: list[int] = []
        self.log: list[Attempt] = []
        self.tokens = math.inf  # a full bucket
        self.refilled = time.monotonic()
        self.sending: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.last_success: float | None = None
        self.last_failure: dict[str, Any] | None = None
        self.closed = False
        #: Changes another process made that this one (delivering) has seen in the log and not yet
        #: loaded: meanwhile it takes nothing more from the log, so what was committed after a
        #: change is taken as the change says (a new filter, a deletion).
        self.held = 0

    def hold(self) -> None:
        self.held += 1
        self.generation += 1  # a read of the log in flight is thrown away
        self.set_listening(False)

    def unhold(self) -> None:
        self.held = max(0, self.held - 1)
        self.poke()

    # -- taking events ----------------------------------------------------------------------------

    def offer(self, event: Event, body: dict[str, Any], *, wanted: bool = False) -> None:
        """Consider one event (its type matches): admit it if the filter wants it (`wanted`: the
        commit hook already checked)."""
        sub = self.sub
        if event.seq in self.items or not (wanted or sub.wants(event, body)):
            return
        now = time.time()
        meta = _meta(sub.id, event, body, now)
        item = Item(event.seq, sub.key_of(body) if sub.ordered else None, meta, event,
                    next_at=now + self.e.schedule[0], forced=event.seq <= self.forced_through)
        self.admit(item)

    def admit(self, item: Item) -> None:
        if item.seq in self.items:  # already held (a retry racing the live feed, a replay): once is enough
            return
        self.items[item.seq] = item
        if not item.durable:
            self.volatile += 1
            heapq.heappush(self.holding, item.seq)
        key = item.key
        if key is not None:
            queue = self.keys.setdefault(key, [])
            insort(queue, item.seq)
            if queue[0] != item.seq:
                item.state = "waiting"
                head = self.items.get(queue[0])
                if not item.durable and head is not None and (head.durable or head.state == "retry"):
                    self.dirty.add(item.seq)  # behind a retry: a row, so the cursor moves on
                return
            if len(queue) > 1:  # it went before the call's earlier head (a replay, a retry): that one waits
                previous = self.items.get(queue[1])
                if previous is not None and previous.state in ("queued", "retry"):
                    previous.state = "waiting"
        self.schedule(item)

    def room(self) -> int:
        """How many more events it may take: `max_queue` of them not yet held by a pending row,
        and ten times that in all (rows included)."""
        limit = self.e.config.max_queue
        return min(limit - self.volatile, 10 * limit - len(self.items))

    def schedule(self, item: Item) -> None:
        if item.next_at <= time.time():
            item.state = "queued"
            self.ready.append(item.seq)
        else:
            item.state = "retry"
            heapq.heappush(self.timers, (item.next_at, item.seq))

    def poke(self) -> None:
        """Wake the loop (cheaper than an `asyncio.Event` with `wait_for`, which makes a task per wait)."""
        self.woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def sleep(self, timeout: float) -> None:
        if self.woken or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def take_incoming(self) -> None:
        incoming = self.incoming
        while incoming:
            entry = incoming.popleft()
            if isinstance(entry, int):
                if entry > self.read_pos:
                    self.read_pos = entry
                continue
            event, body = entry
            if event.seq <= self.read_pos:
                continue
            self.read_pos = event.seq
            self.offer(event, body, wanted=True)
        self.skip_quiet()

    def skip_quiet(self) -> None:
        """Batches with nothing for it move it on, once nothing it was fed is unread and no read of the
        log is in flight (that read would be cut short)."""
        if self.listening and not self.reading and not self.incoming and self.seen_through > self.read_pos:
            self.read_pos = self.seen_through

    async def catch_up(self) -> None:
        """Read the log after `read_pos` while there is room; listen again once at the head."""
        generation = self.generation
        self.set_listening(True)  # buffer what commits meanwhile; the overlap is skipped by seq
        self.reading = True
        try:
            while (room := self.room()) > 0 and not self.closed:
                page = await self.e.store.read(self.read_pos, limit=min(READ_PAGE, room), agent=None,
                                               types=self.sub.types)
                if generation != self.generation:
                    return  # rewound meanwhile (a replay): the next step reads from the new position
                if page.trimmed_through > self.read_pos:
                    logger.warning("subscription %s: events %d..%d were removed by retention before delivery",
                                   self.sub.id, self.read_pos + 1, page.trimmed_through)
                for event in page.events:
                    if event.seq > self.read_pos:
                        self.read_pos = event.seq
                        self.offer(event, orjson.loads(event.body))
                self.read_pos = max(self.read_pos, page.next)
                if page.next >= page.head:
                    return
            self.set_listening(False)  # full: read on from the log when there is room again
        finally:
            self.reading = False

    def set_listening(self, listening: bool) -> None:
        self.listening = listening
        self.incoming.clear()
        self.seen_through = self.read_pos
        self.e.refresh_listening()

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self.closed:
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("subscription %s: delivery loop failed; going on in a second", self.sub.id)
                    await asyncio.sleep(1.0)
        finally:
            for task in list(self.sending):
                task.cancel()

    async def step(self) -> None:
        self.woken = False
        active = self.sub.state == "active"
        if not active and self.listening:
            self.set_listening(False)  # paused or disabled: it reads on from the log once enabled
        self.take_incoming()
        if active and not self.listening and self.room() > 0 and not self.held:
            await self.catch_up()
            self.take_incoming()
        now = time.time()
        while self.timers and self.timers[0][0] <= now:
            _, seq = heapq.heappop(self.timers)
            item = self.items.get(seq)
            if item is not None and item.state == "retry" and item.next_at <= now:
                item.state = "queued"
                self.ready.append(seq)
        timeout = 5.0
        if active:
            timeout = min(timeout, self.dispatch())
        if self.timers:
            timeout = min(timeout, max(0.0, self.timers[0][0] - time.time()))
        await self.sleep(timeout)

    def dispatch(self) -> float:
        """Start what is ready within the concurrency bound and the rate limit; how long until a
        token comes if the rate limit stopped it (else a long time)."""
        limit, rate = self.e.config.concurrency, self.sub.spec.rate_limit_per_s
        while self.ready and self.inflight < limit:
            if rate is not None:
                wait = self._take_token(rate)
                if wait > 0:
                    return wait
            seq = self.ready.popleft()
            item = self.items.get(seq)
            if item is None or item.state != "queued":
                if rate is not None:
                    self.tokens += 1.0  # not spent
                continue
            item.state = "sending"
            self.inflight += 1
            task = asyncio.get_running_loop().create_task(self.deliver(item), name=f"callhub:deliver:{self.sub.id}")
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)
        return 5.0

    def _take_token(self, rate: float) -> float:
        now = time.monotonic()
        burst = max(1.0, rate)
        self.tokens = min(burst, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate

    # -- one attempt ------------------------------------------------------------------------------

    async def deliver(self, item: Item) -> None:
        try:
            await self._attempt(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("subscription %s: delivering seq %d failed unexpectedly", self.sub.id, item.seq)
            self._retry_or_fail(item, time.time(), None, "internal error (see the hub's log)", None, None)
        finally:
            self.inflight -= 1
            self.poke()

    async def _attempt(self, item: Item) -> None:
        e, sub = self.e, self.sub
        event = item.event
        if event is None:
            event = await e.store.get(item.seq)
            if event is None:
                self.settle(item, "expired", error="the event is no longer stored (retention)")
                return
        now = time.time()
        if item.meta is None:
            item.meta = _meta(sub.id, event, orjson.loads(event.body), now)
        meta = item.meta
        max_age = None if item.forced else sub.max_age(meta.type)
        if max_age is not None and now - meta.time > max_age:
            self.settle(item, "expired", error=f"older than its max_age_s ({max_age:g} s)")
            return
        item.attempts += 1
        try:
            answer = await e.sender.attempt(sub.spec.url, event.body, msg_id=meta.message_id, signer=sub.signer(now),
                                            headers=_CONTENT_TYPE, timeout=e.config.request_timeout)
        except EgressRefused as exc:
            self.fail(item, time.time(), None, f"refused: {exc.message}", None, None, reason="refused")
            return
        except WebhookUnreachable as exc:
            e.metrics.webhook_latency.observe(time.time() - now)
            self._retry_or_fail(item, time.time(), None, exc.message, None, None)
            return
        done = time.time()
        e.metrics.webhook_latency.observe(answer.elapsed)
        latency = round(answer.elapsed * 1000, 3)
        head = answer.head[:RESPONSE_HEAD].decode("utf-8", "replace")
        status = answer.status
        if 200 <= status < 300:
            self.log_attempt(item, done, "delivered", status, latency, None, head)
            self.settle(item, "delivered")
            self.succeeded(done)
        elif status == 410:
            self.fail(item, done, status, "the endpoint answered 410 Gone", latency, head, reason="gone")
            await e.disable(self, "the endpoint answered 410 Gone")
        elif status in (408, 429) or status >= 500:
            self._retry_or_fail(item, done, status, f"HTTP {status}", latency, head,
                                retry_after=retry_after_seconds(answer.retry_after))
        else:
            hint = " (redirects are not followed)" if 300 <= status < 400 else ""
            self.fail(item, done, status, f"HTTP {status}: final{hint}", latency, head, reason="rejected")

    def _retry_or_fail(self, item: Item, now: float, status: int | None, error: str, latency: float | None,
                       head: str | None, *, retry_after: float | None = None) -> None:
        schedule = self.e.schedule
        if item.attempts >= len(schedule):
            self.fail(item, now, status, error, latency, head, reason="exhausted")
            return
        delay = schedule[item.attempts] * random.uniform(1 - JITTER, 1 + JITTER)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.e.longest_delay))
        max_age = None if item.forced or item.meta is None else self.sub.max_age(item.meta.type)
        if max_age is not None and now + delay - item.meta.time > max_age:  # type: ignore[union-attr]
            # Its next attempt would come too late to be worth it: expired now, and its call goes on.
            self.log_attempt(item, now, "expired", status, latency,
                             f"{error}; its next attempt would be past its max_age_s ({max_age:g} s)", head)
            self.settle(item, "expired")
            self.failed_attempt(now, status, error)
            return
        self.log_attempt(item, now, "retrying", status, latency, error, head)
        self.e.metrics.webhook_attempts.labels("retry").inc()
        item.next_at = now + delay
        item.event = None  # read back when due: a long backlog of retries holds no bodies
        self.dirty.add(item.seq)
        if item.key is not None:  # the later events of its call wait: rows for them too
            for seq in self.keys.get(item.key, ())[1:]:
                if not self.items[seq].durable:
                    self.dirty.add(seq)
        self.schedule(item)
        self.failed_attempt(now, status, error)

    def fail(self, item: Item, now: float, status: int | None, error: str, latency: float | None,
             head: str | None, *, reason: str) -> None:
        """No more tries: log it, settle it, say so with `hub.delivery.exhausted`."""
        self.log_attempt(item, now, "failed", status, latency, error, head)
        self.settle(item, "failed")
        self.failed_attempt(now, status, error)
        meta = item.meta
        if meta is not None and meta.type in HUB_DELIVERY_TYPES:
            return  # a report about a delivery that failed: no report of the report (two dead endpoints would loop)
        data = {"subscription": self.sub.id, "delivery": delivery_id(self.sub.id, item.seq), "seq": item.seq,
                "event_id": meta.event_id if meta else None, "event_type": meta.type if meta else None,
                "attempts": item.attempts, "status": status, "error": _public(status, reason), "reason": reason}
        self.e.announce("hub.delivery.exhausted", data, subject=self.sub.id)

    def settle(self, item: Item, outcome: str, *, error: str | None = None) -> None:
        """It is done with (delivered, failed, expired): forget it and let its call go on. An
        `error` is logged as an `expired` line without an attempt (callers that attempted log their own)."""
        if error is not None:
            self.log_attempt(item, time.time(), "expired", None, None, error, None)
        if self.items.pop(item.seq, None) is None:
            return
        self.dirty.discard(item.seq)
        if item.durable:
            self.settled.append(item.seq)
        else:
            self.volatile -= 1
        self.e.metrics.webhook_deliveries.labels(outcome).inc()
        if item.key is None:
            return
        queue = self.keys.get(item.key)
        if queue is None:
            return
        try:
            queue.remove(item.seq)
        except ValueError:
            pass
        if not queue:
            del self.keys[item.key]
            return
        following = self.items.get(queue[0])
        if following is not None and following.state == "waiting":
            self.schedule(following)
            self.poke()

    def log_attempt(self, item: Item, at: float, outcome: str, status: int | None, latency: float | None,
                    error: str | None, head: str | None) -> None:
        meta = item.meta
        self.log.append(Attempt(0, self.sub.id, item.seq, meta.event_id if meta else "",
                                meta.message_id if meta else "", at, item.attempts, outcome, status, latency,
                                error, head))
        if outcome in ("delivered", "failed"):
            self.e.metrics.webhook_attempts.labels(outcome).inc()
        if outcome != "delivered":
            self.last_failure = {"at": at, "delivery": delivery_id(self.sub.id, item.seq), "status": status,
                                 "error": error, "outcome": outcome}

    def succeeded(self, now: float) -> None:
        self.last_success = now
        if self.sub.document.get("failing_since") is not None:
            self.sub.document["failing_since"] = None
            self.e.save(self.sub)

    def failed_attempt(self, now: float, status: int | None, error: str) -> None:
        """A failure of the endpoint: start, or check, how long it has been failing without a success."""
        doc = self.sub.document
        since = doc.get("failing_since")
        if since is None:
            doc["failing_since"] = now
            self.e.save(self.sub)
        elif now - since >= self.e.config.disable_after and self.sub.state == "active":
            days = (now - since) / 86400
            last = _public(status, "failed")  # the reason is published: never the endpoint's host
            self.e.spawn(self.e.disable(self, f"failing without a success for {days:.1f} days (last: {last})"),
                         name=f"disable:{self.sub.id}")

    # -- progress -----------------------------------------------------------------------------------

    def cursor(self) -> int:
        holding, items = self.holding, self.items
        while holding:
            item = items.get(holding[0])
            if item is None or item.durable:
                heapq.heappop(holding)
                continue
            return min(self.read_pos, holding[0] - 1)
        return self.read_pos

    def collect(self, changes: OutboxChanges) -> None:
        """Move what this worker changed into `changes` (the next outbox write)."""
        sub = self.sub.id
        self.skip_quiet()  # quiet batches: the cursor moves without waking the worker
        changed = bool(self.dirty or self.settled or self.log)
        for seq in self.dirty:
            item = self.items.get(seq)
            if item is not None:
                state = "waiting" if item.state == "waiting" else "retry"
                changes.pending.append(Pending(sub, seq, item.key, item.attempts, item.next_at, state))
                if not item.durable:
                    item.durable = True
                    self.volatile -= 1
        self.dirty.clear()
        if self.settled:
            changes.settled.extend((sub, seq) for seq in self.settled)
            self.settled.clear()
        if self.log:
            changes.attempts.extend(self.log)
            self.log.clear()
        cursor = self.cursor()
        now = time.monotonic()
        # Past events it did not want, the cursor is written lazily: losing that progress in a crash
        # only means reading those events again, never sending one twice.
        if cursor > self.durable_cursor and (changed or now - self.cursor_written >= QUIET_CURSOR_EVERY):
            changes.cursors[sub] = cursor
            self.durable_cursor = cursor
            self.cursor_written = now

    def backlog(self, head: int) -> int:
        """Undelivered events: those it holds, and those after what it has read (quiet batches included)."""
        position = max(self.read_pos, self.seen_through) if self.listening else self.read_pos
        return len(self.items) + max(0, head - position)

    def restore(self, rows: list[Pending]) -> None:
        for row in rows:
            if row.seq in self.items:
                continue
            self.admit(Item(row.seq, row.key, None, None, attempts=row.attempts,
                            next_at=row.next_at if row.state == "retry" else 0.0, durable=True,
                            forced=row.state == "manual"))


def _meta(subscription: str, event: Event, body: dict[str, Any], now: float) -> Meta:
    event_id, source = str(body.get("id", "")), str(body.get("source", ""))
    return Meta(stable_key(subscription, source, event_id, prefix="msg"), event_id, event.type,
                event_time(body, default=now))


@dataclass(slots=True, eq=False)
class _Late:
    """A change noticed while `run` was loading the subscriptions to deliver: the worker `run` held
    for it once loaded (released when the change is loaded), unless the change was loaded first."""

    subscription: str
    worker: Worker | None = None
    done: bool = False


class Deliveries:
    """Every subscription's worker, the shared outbox writer, and what the API asks of them."""

    def __init__(self, outbox: Outbox, store: Backend, sender: WebhookSender, config: WebhooksConfig, *,
                 publish: Publish, spawn: Callable[..., asyncio.Task[Any]], metrics: Metrics) -> None:
        self.outbox = outbox
        self.store = store
        self.sender = sender
        self.config = config
        self.schedule = list(config.retry_schedule)
        self.longest_delay = max(max(self.schedule), 3600.0)
        self.metrics = metrics
        self._publish = publish
        self.spawn = spawn
        self.workers: dict[str, Worker] = {}
        self._listening: list[Worker] = []
        #: event type -> the listening workers whose `types` match it (cleared whenever either changes)
        self._routes: dict[str, list[Worker]] = {}
        self._unapplied: OutboxChanges | None = None
        self._flush_lock = asyncio.Lock()
        self._pruned = 0.0
        self.started = False
        #: Other processes may share the store: changes made through the API are told to them all
        #: through the log (`CHANGED`), and only the holder of the `deliveries` lease delivers.
        self.shared = store.shared
        #: This engine's name in the `CHANGED` events it publishes (it skips its own).
        self.origin = secrets.token_hex(8)
        #: This process delivers (holds the lease, `run`): the workers' tasks run. Otherwise its
        #: workers are dormant: the documents (for the API) and the durable cursors, nothing in flight.
        self.on = False
        #: The workers were loaded by `start` and nothing since needs them loaded again.
        self._fresh = False
        #: Serialises loading subscriptions from the outbox with the API's changes in this process.
        self._sync = asyncio.Lock()
        #: While `run` loads the subscriptions to deliver: the changes noticed meanwhile (their
        #: workers are held once loaded, until each change is loaded too).
        self._starting: list[_Late] | None = None

    @property
    def policy(self) -> EgressPolicy:
        return self.sender.policy

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the outbox, bring `[[webhooks.subscriptions]]` in, and start every worker."""
        await self.outbox.start()
        head = self.store.head
        stored = {doc["id"]: (doc, cursor) for doc, cursor in await self.outbox.subscriptions()}
        now = time.time()
        declared = {entry.id for entry in self.config.subscriptions}
        for entry in self.config.subscriptions:
            doc = from_config(entry, now)
            old = stored.get(entry.id)
            write: int | None = None
            if old is not None:
                previous, cursor = old
                doc.update({k: previous.get(k) for k in ("disabled", "failing_since", "created")})
                if previous.get("managed") == "config":
                    # A changed secret: the ones before it keep signing beside it until their overlap ends.
                    doc["secrets"] += _older_secrets(previous.get("secrets") or [], entry.secret, now,
                                                     self.config.secret_overlap)
                # The cursor stays as stored (another process sharing the store may be moving it on).
            else:
                cursor = write = head
            await self.outbox.save(doc, cursor=write)
            stored[entry.id] = (doc, cursor)
        for id_, (doc, _) in list(stored.items()):
            if doc.get("managed") == "config" and id_ not in declared:
                await self.outbox.delete(id_)  # no longer declared: gone, as the config says
                del stored[id_]
        # Alone on its store, this process delivers from the start (its `deliveries` lease is
        # always its own); sharing it, it delivers once it holds that lease (`run`).
        self.on = not self.shared
        for id_, (doc, cursor) in stored.items():
            try:
                sub = Subscription(doc)
            except Exception:  # one unreadable document must not keep the hub (and every other one) down
                logger.exception("subscription %s: its stored document cannot be read; it is not delivered", id_)
                continue
            worker = Worker(sub, self, head if cursor is None else cursor)
            if not self.shared:  # shared: loaded again by `run`, as the lease may come much later
                worker.restore(await self.outbox.pending(id_))
            self._start(worker)
        self._fresh = not self.shared
        self.spawn(self._flusher(), name="deliveries:flush")
        self.started = True

    def _start(self, worker: Worker) -> None:
        self.workers[worker.sub.id] = worker
        if self.on and worker.task is None:
            worker.task = self.spawn(worker.run(), name=f"deliveries:{worker.sub.id}")

    async def run(self) -> None:
        """Deliver, while this process holds the `deliveries` lease (always, with a local store):
        load every subscription's cursor and pending deliveries from the outbox, as after a
        restart (unless `start` just did), run the workers; when cancelled (the lease is lost, or
        the hub stops), stop them at once and write what they did."""
        noticed: list[_Late] = []
        self._starting = noticed
        try:
            while True:
                try:
                    async with self._sync:  # changes noticed from now on wait for it (the lock is fair)
                        if not self._fresh:
                            await self._load()
                        self._fresh = False
                        for late in noticed:
                            if not late.done:
                                late.worker = self.workers.get(late.subscription)
                                if late.worker is not None:
                                    late.worker.hold()
                        self._starting = None
                        self.on = True
                        for worker in self.workers.values():
                            self._start(worker)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("loading the subscriptions to deliver failed; trying again in a second")
                    await asyncio.sleep(1.0)
        finally:
            self._starting = None
        logger.info("this process delivers the webhook subscriptions (%d)", len(self.workers))
        try:
            await asyncio.Event().wait()
        finally:
            self.on = False
            await self._stop_workers()

    async def _load(self) -> None:
        """Every subscription from the outbox, as workers (with their pending deliveries)."""
        head = self.store.head
        workers: dict[str, Worker] = {}
        for doc, cursor in await self.outbox.subscriptions():
            try:
                sub = Subscription(doc)
            except Exception:
                logger.exception("subscription %s: its stored document cannot be read; it is not delivered",
                                 doc.get("id"))
                continue
            worker = Worker(sub, self, head if cursor is None else cursor)
            worker.restore(await self.outbox.pending(sub.id))
            workers[sub.id] = worker
        for old in self.workers.values():
            old.closed = True
        self.workers = workers
        self.refresh_listening()

    async def _stop_workers(self) -> None:
        """Stop every worker now, write what they did (as much as can be written), and keep dormant
        copies: what the API shows until this process delivers again (it then loads them afresh)."""
        workers = list(self.workers.values())
        for worker in workers:
            worker.closed = True
            if worker.task is not None:
                worker.task.cancel()
        await asyncio.gather(*(w.task for w in workers if w.task is not None), return_exceptions=True)
        try:
            await asyncio.wait_for(self.flush(), STOP_FLUSH_TIMEOUT)
        except Exception as exc:  # kept in `_unapplied`: written by the next flush that succeeds
            logger.warning("writing webhook delivery progress on stopping failed: %r", exc)
        self.workers = {id_: Worker(w.sub, self, w.durable_cursor) for id_, w in self.workers.items()}
        self.refresh_listening()

    async def close(self) -> None:
        """After the workers were cancelled: write what they did, close the outbox."""
        for worker in self.workers.values():
            worker.closed = True
        if self.started:
            await self.flush()
        await self.outbox.close()

    # -- the commit hook (the ingest path: cheap) --------------------------------------------------------

    def on_commit(self, events: list[Event]) -> None:
        if self.shared:
            self._notice(events)
        listening = self._listening
        if not listening or not events:
            return
        limit = self.config.max_queue
        routes = self._routes
        fed: set[Worker] = set()
        for event in events:
            route = routes.get(event.type)
            if route is None:
                route = self._route(event.type)
            if not route:
                continue
            body: dict[str, Any] = orjson.loads(event.body)
            # Subscriptions with the same filter decide once per event.
            decided: dict[str, bool] = {}
            seen: dict[str, object] = {}
            for worker in route:
                if worker.sub.wants(event, body, decided, seen):
                    worker.incoming.append((event, body))
                    fed.add(worker)
        last = events[-1].seq
        overflowed = False
        for worker in listening:
            if worker not in fed:  # nothing for it: its position moves on without waking it
                worker.seen_through = last
                continue
            worker.incoming.append(last)
            if len(worker.incoming) > limit:  # it will read these back from the log when it has room
                worker.incoming.clear()
                worker.listening = False
                overflowed = True
            worker.poke()
        if overflowed:
            self._set_listening([w for w in listening if w.listening])

    def _notice(self, events: list[Event]) -> None:
        """With a shared store: a subscription another process changed (`CHANGED`) is loaded again."""
        for event in events:
            if event.type != CHANGED:
                continue
            try:
                body = orjson.loads(event.body)
            except orjson.JSONDecodeError:
                continue
            data = body.get("data")
            if (body.get("source") == HUB_SOURCE and isinstance(data, dict) and data.get("origin") != self.origin
                    and isinstance(data.get("subscription"), str)):
                id_ = data["subscription"]
                worker = self.workers.get(id_) if self.on else None
                if worker is not None:
                    worker.hold()  # before the rest of this batch is routed
                late = None
                if self._starting is not None:  # `run` is loading: it holds that worker once loaded
                    late = _Late(id_)
                    self._starting.append(late)
                self.spawn(self._changed(data, worker, late), name="deliveries:changed")

    def _route(self, type_: str) -> list[Worker]:
        routes = self._routes
        if len(routes) >= MAX_ROUTES:  # many distinct types: start over rather than grow without bound
            routes.clear()
        route = routes[type_] = [w for w in self._listening if w.sub.types.matches(type_)]
        return route

    def _set_listening(self, listening: list[Worker]) -> None:
        if listening != self._listening:
            self._routes = {}
        self._listening = listening

    def refresh_listening(self) -> None:
        self._set_listening([w for w in self.workers.values() if w.listening])

    # -- durability -------------------------------------------------------------------------------

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self.refresh_listening()
                await self.flush()
                self._gauges()
                if time.time() - self._pruned > PRUNE_EVERY:
                    self._pruned = time.time()
                    await self.outbox.prune(self._pruned - self.config.log_retention)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("writing webhook delivery progress failed; trying again")

    async def flush(self) -> None:
        """Write every worker's progress in one outbox write; one that failed is merged into the next."""
        async with self._flush_lock:
            changes = OutboxChanges()
            for worker in self.workers.values():
                worker.collect(changes)
            if self._unapplied is not None:
                changes = self._unapplied.merged(changes)
                self._unapplied = None
            if not changes:
                return
            try:
                await self.outbox.apply(changes)
            except BaseException:
                self._unapplied = changes
                raise

    def save(self, sub: Subscription) -> None:
        """Write the state the workers change (`disabled`, `failing_since`), and only that (the API of
        another process may be writing the rest); logged if it fails. Nothing for a subscription
        deleted meanwhile."""
        if self.workers.get(sub.id) is None or self.workers[sub.id].sub is not sub:
            return
        doc = sub.document
        doc["updated"] = time.time()
        future = self.outbox.update(sub.id, {k: doc.get(k) for k in ("disabled", "failing_since", "updated")})
        future.add_done_callback(_log_failure)

    def _gauges(self) -> None:
        """Subscriptions and backlog, from the process that delivers (the others report zeros, so
        a sum over the processes sharing a store counts each subscription once)."""
        head = self.store.head
        counts = dict.fromkeys(STATES, 0)
        backlog = dict.fromkeys(STATES, 0)
        for worker in self.workers.values() if self.on else ():
            state = worker.sub.state
            counts[state] += 1
            backlog[state] += worker.backlog(head)
        for state in STATES:
            self.metrics.webhook_subscriptions.labels(state).set(counts[state])
            self.metrics.webhook_backlog.labels(state).set(backlog[state])

    def announce(self, type_: str, data: dict[str, Any], *, subject: str) -> None:
        """Publish a hub event about deliveries (never awaited by the worker)."""

        async def publish() -> None:
            try:
                await self.flush()  # the delivery log shows what the event reports by the time it is out
                await self._publish(hub_event(type_, data, subject=subject), default_source=HUB_SOURCE)
            except HubError as exc:
                logger.warning("could not publish %s for %s: %s", type_, subject, exc.message)

        self.spawn(publish(), name=f"announce:{type_}")

    async def disable(self, worker: Worker, reason: str) -> None:
        sub = worker.sub
        if sub.document.get("disabled"):
            return
        now = time.time()
        sub.document["disabled"] = {"at": now, "reason": reason}
        self.save(sub)
        logger.warning("subscription %s disabled: %s", sub.id, reason)
        self.announce("hub.subscription.disabled", {"subscription": sub.id, "reason": reason,
                                                     "failing_since": sub.document.get("failing_since")},
                      subject=sub.id)

    # -- what the API asks ----------------------------------------------------------------------------

    # -- several processes: changes made elsewhere ----------------------------------------------------

    async def _tell(self, id_: str, change: str, **details: Any) -> None:
        """Tell every process sharing the store that a subscription changed (they load it again from
        the outbox, where it is already written): its id and what changed, never a secret."""
        if not self.shared:
            return
        data = {"subscription": id_, "change": change, "origin": self.origin, **details}
        await self._publish(hub_event(CHANGED, data, subject=id_), default_source=HUB_SOURCE)

    async def _changed(self, data: dict[str, Any], held: Worker | None, late: _Late | None = None) -> None:
        """Another process changed a subscription: load it again; the holder also does what was asked
        (a replay, a retry, an enable skipping the backlog), then its worker takes the log on."""
        id_ = data["subscription"]
        try:
            for _ in range(SYNC_TRIES):
                try:
                    async with self._sync:
                        worker = await self._reload(id_, keep_state=data.get("change") != "enabled")
                        if worker is not None and self.on:
                            await self._apply_change(worker, data)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("subscription %s: loading a change made by another process failed; again", id_)
                    await asyncio.sleep(1.0)
        finally:
            if late is not None:  # noticed while `run` was loading: the worker it held, if any
                late.done, held = True, late.worker
            if held is not None:
                held.unhold()

    async def _reload(self, id_: str, *, keep_state: bool = True) -> Worker | None:
        """One subscription as the outbox has it now: made, changed in place, or forgotten."""
        stored = {doc["id"]: (doc, cursor) for doc, cursor in await self.outbox.subscriptions()}
        worker = self.workers.get(id_)
        if id_ not in stored:
            if worker is not None:
                self._forget(worker)
            return None
        doc, cursor = stored[id_]
        if worker is None:
            worker = Worker(Subscription(doc), self, self.store.head if cursor is None else cursor)
            if self.on:
                worker.restore(await self.outbox.pending(id_))
            self._start(worker)
            return worker
        if self.on and keep_state:  # the holder's own view of how the endpoint fares is newer
            doc.update({k: worker.sub.document.get(k) for k in ("disabled", "failing_since")})
        self._refresh(worker, doc, None if self.on else cursor)
        return worker

    def _refresh(self, worker: Worker, doc: dict[str, Any], cursor: int | None) -> None:
        sub = worker.sub
        previous = sub.document
        sub.document = doc
        try:
            sub.refresh()
        except Exception:
            sub.document = previous
            raise
        if cursor is not None and not worker.items:  # dormant: the durable cursor, for the API
            worker.read_pos = worker.durable_cursor = worker.seen_through = cursor
        self._routes = {}  # its types may have changed
        worker.poke()

    async def refresh(self) -> None:
        """A process that does not deliver: every document and cursor as the outbox has them now
        (the holder writes how each endpoint fares), before the API answers a read."""
        if not self.shared or self.on:
            return
        async with self._sync:
            if self.on:
                return
            stored = {doc["id"]: (doc, cursor) for doc, cursor in await self.outbox.subscriptions()}
            for id_, gone in list(self.workers.items()):
                if id_ not in stored:
                    self._forget(gone)
            head = self.store.head
            for id_, (doc, cursor) in stored.items():
                known = self.workers.get(id_)
                try:
                    if known is None:
                        self._start(Worker(Subscription(doc), self, head if cursor is None else cursor))
                    else:
                        self._refresh(known, doc, cursor)
                except Exception:
                    logger.exception("subscription %s: its stored document cannot be read", id_)

    async def _apply_change(self, worker: Worker, data: dict[str, Any]) -> None:
        """What another process's API asked of this one, the holder (already written to the outbox)."""
        change = data.get("change")
        if change == "replay":
            worker.forced_through = max(worker.forced_through, int(data["through_seq"]))
            cursor = self._rewind(worker, int(data["after_seq"]))
            await self.outbox.update(worker.sub.id, {}, cursor=cursor)
        elif change == "retry":
            await self._retry_here(worker, int(data["seq"]))
        elif change == "enabled" and data.get("skip_backlog"):
            self._skip_backlog(worker, int(data["cursor"]))

    def _forget(self, worker: Worker) -> None:
        worker.closed = True
        if worker.task is not None:
            worker.task.cancel()
        self.workers.pop(worker.sub.id, None)
        self.refresh_listening()

    # -- what the API asks ----------------------------------------------------------------------------

    def worker(self, id_: str) -> Worker:
        worker = self.workers.get(id_)
        if worker is None:
            raise NotFound(f"no subscription {id_[:80]!r}", code="unknown_subscription")
        return worker

    def _editable(self, id_: str) -> Worker:
        worker = self.worker(id_)
        if worker.sub.managed_by_config:
            raise Conflict(f"subscription {id_!r} is declared in the config file: change it there",
                           code="managed_by_config")
        return worker

    def describe(self, worker: Worker) -> dict[str, Any]:
        """A non-holder (shared store) knows the document and the durable cursor: its backlog is the
        events after that cursor, its `last_success` and `last_failure` are null (the delivery log has them)."""
        out = worker.sub.describe()
        failure = worker.last_failure
        out["backlog"] = worker.backlog(self.store.head)
        out["cursor"] = worker.durable_cursor
        out["last_success"] = _iso(worker.last_success)
        out["last_failure"] = None if failure is None else {**failure, "at": _iso(failure["at"])}
        return out

    def describe_all(self) -> list[dict[str, Any]]:
        return [self.describe(w) for w in sorted(self.workers.values(), key=lambda w: w.sub.document["created"])]

    async def create(self, spec: SubscriptionSpec) -> tuple[dict[str, Any], str]:
        """A new subscription, starting at the head of the log; its secret (shown once)."""
        if len(self.workers) >= self.config.max_subscriptions:
            raise Conflict(f"at most {self.config.max_subscriptions} subscriptions ([webhooks] max_subscriptions)",
                           code="too_many_subscriptions")
        await self.policy.check(spec.url)
        if len(self.workers) >= self.config.max_subscriptions:  # again: others may have been made meanwhile
            raise Conflict(f"at most {self.config.max_subscriptions} subscriptions ([webhooks] max_subscriptions)",
                           code="too_many_subscriptions")
        now, secret = time.time(), new_secret()
        doc = {"id": new_id(), "spec": spec.model_dump(), "managed": "api",
               "secrets": [{"secret": secret, "expires": None}], "disabled": None, "failing_since": None,
               "created": now, "updated": now}
        async with self._sync:
            head = self.store.head
            await self.outbox.save(doc, cursor=head)
            worker = Worker(Subscription(doc), self, head)
            self._start(worker)
        await self._tell(worker.sub.id, "created")
        return self.describe(worker), secret

    async def update(self, id_: str, spec: SubscriptionSpec) -> dict[str, Any]:
        worker = self._editable(id_)
        if spec.url != worker.sub.spec.url:
            await self.policy.check(spec.url)
            worker = self._editable(id_)  # deleted meanwhile?
        async with self._sync:
            worker = self._editable(id_)
            # Changed in place (a disable the worker made meanwhile stays); only what changed is written.
            doc = worker.sub.document
            doc["spec"], doc["updated"] = spec.model_dump(), time.time()
            worker.sub.refresh()
            self._routes = {}  # its types may have changed
            worker.poke()
            await self.outbox.update(id_, {"spec": doc["spec"], "updated": doc["updated"]})
        await self._tell(id_, "updated")
        return self.describe(worker)

    async def delete(self, id_: str) -> None:
        async with self._sync:
            self._forget(self._editable(id_))
            await self.outbox.delete(id_)
        await self._tell(id_, "deleted")

    async def rotate(self, id_: str) -> tuple[dict[str, Any], str]:
        async with self._sync:
            worker = self._editable(id_)
            secret = worker.sub.rotate(self.config.secret_overlap, time.time())
            doc = worker.sub.document
            await self.outbox.update(id_, {"secrets": doc["secrets"], "updated": doc["updated"]})
        await self._tell(id_, "rotated")
        return self.describe(worker), secret

    async def enable(self, id_: str, *, skip_backlog: bool) -> dict[str, Any]:
        """Clear a disable (410, continuous failure) and, unless managed by config, a pause. With
        `skip_backlog`, what was committed meanwhile is not delivered: it starts at the head."""
        async with self._sync:
            worker = self.worker(id_)
            doc = worker.sub.document
            doc["disabled"], doc["failing_since"] = None, None
            if not worker.sub.managed_by_config:
                doc["spec"] = {**doc["spec"], "enabled": True}
            cursor = None
            if skip_backlog:
                cursor = self.store.head
                self._skip_backlog(worker, cursor)
            doc["updated"] = time.time()
            worker.sub.refresh()
            self._routes = {}  # its types may have changed
            worker.poke()
            await self.outbox.update(id_, {k: doc[k] for k in ("disabled", "failing_since", "spec", "updated")},
                                     cursor=cursor)
        await self._tell(id_, "enabled", skip_backlog=skip_backlog, cursor=cursor)
        return self.describe(worker)

    def _skip_backlog(self, worker: Worker, cursor: int) -> None:
        """Drop what it holds (each logged `expired`) and go on from `cursor`."""
        for item in sorted(worker.items.values(), key=lambda i: i.seq):
            if item.state != "sending":
                worker.settle(item, "expired", error="skipped: enabled with skip_backlog")
        self._rewind(worker, cursor, forward=True)

    async def replay(self, id_: str, *, after_seq: int | None, since: float | None) -> dict[str, Any]:
        """Send the stored events after `after_seq` (or committed from `since` on) again, then go on live."""
        worker = self.worker(id_)
        if (after_seq is None) == (since is None):
            raise BadRequest("give one of 'after_seq' or 'since'", code="invalid_replay")
        head = self.store.head
        if since is not None:
            after_seq = await self.store.seq_at(since)
        assert after_seq is not None
        if after_seq > head:
            raise BadRequest(f"'after_seq' is past the head of the log ({head})", code="invalid_replay")
        async with self._sync:
            worker = self.worker(id_)
            worker.forced_through = max(worker.forced_through, head)  # sent whatever their age: an operator asked
            cursor = self._rewind(worker, after_seq)
            # A process that does not deliver writes where the holder is to read from (it also
            # does so itself when told, as its own progress may have been written meanwhile).
            await self.outbox.update(id_, {}, cursor=cursor)
        await self._tell(id_, "replay", after_seq=after_seq, through_seq=head)
        return {"subscription": id_, "from_seq": after_seq + 1, "through_seq": head}

    def _rewind(self, worker: Worker, after: int, *, forward: bool = False) -> int:
        """Read the log from `after` on (never past what it has not read yet, unless `forward`);
        the cursor to write, set in the same breath so no flush in between writes an older one."""
        worker.read_pos = after if forward else min(worker.read_pos, after)
        worker.generation += 1  # a catch-up read in flight is thrown away
        worker.set_listening(False)
        worker.durable_cursor = worker.cursor() if not forward else after
        worker.poke()
        return worker.durable_cursor

    async def _manual_row(self, worker: Worker, id_: str, seq: int) -> tuple[Event, dict[str, Any], str | None]:
        """Write a `manual` pending row for the event `seq`, if it is stored and the subscription takes
        it; the event, its JSON and its ordering key."""
        event = await self.store.get(seq)
        if event is None:
            raise NotFound(f"event {seq} is not stored (never, or removed by retention)", code="unknown_delivery")
        body = orjson.loads(event.body)
        if not (worker.sub.types.matches(event.type) and worker.sub.wants(event, body)):
            raise NotFound(f"event {seq} is not one subscription {id_!r} takes (its types and filter)",
                           code="unknown_delivery")
        key = Subscription.key_of(body) if worker.sub.ordered else None
        await self.outbox.apply(OutboxChanges(pending=[Pending(id_, seq, key, 0, 0.0, "manual")]))
        return event, body, key

    async def retry(self, delivery: str) -> dict[str, Any]:
        """Send one delivery again now (whatever its outcome was, and its age)."""
        id_, seq = parse_delivery_id(delivery)
        worker = self.worker(id_)
        if not self.on:  # another process delivers: a row it is told about (and finds after a takeover)
            await self._manual_row(worker, id_, seq)
            await self._tell(id_, "retry", seq=seq)
            return {"delivery": delivery, "state": "queued"}
        if seq not in worker.items:
            event, body, key = await self._manual_row(worker, id_, seq)
            worker = self.worker(id_)  # deleted meanwhile?
            if seq not in worker.items:  # else taken meanwhile (another retry, the live feed): once is enough
                worker.admit(Item(seq, key, _meta(id_, event, body, time.time()), event, durable=True, forced=True))
                worker.poke()
                return {"delivery": delivery, "state": worker.items[seq].state}
        item = worker.items[seq]
        self._retry_now(worker, item)
        return {"delivery": delivery, "state": item.state}

    def _retry_now(self, worker: Worker, item: Item) -> None:
        if item.state == "retry":
            item.next_at, item.forced = time.time(), True
            item.state = "queued"
            worker.ready.append(item.seq)
            worker.poke()

    async def _retry_here(self, worker: Worker, seq: int) -> None:
        """The holder, told of a retry asked of another process (which wrote its pending row)."""
        item = worker.items.get(seq)
        if item is not None:
            self._retry_now(worker, item)
            return
        event = await self.store.get(seq)
        if event is None or worker.closed:
            return
        body = orjson.loads(event.body)
        key = Subscription.key_of(body) if worker.sub.ordered else None
        if seq not in worker.items:
            worker.admit(Item(seq, key, _meta(worker.sub.id, event, body, time.time()), event, durable=True,
                              forced=True))
            worker.poke()

    async def attempts(self, id_: str, *, outcome: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        self.worker(id_)
        rows = await self.outbox.attempts(id_, outcome=outcome, after=after, limit=limit)
        return [{"id": a.id, "delivery": delivery_id(a.subscription, a.seq), "seq": a.seq, "event_id": a.event_id,
                 "webhook_id": a.message_id, "at": _iso(a.at), "attempt": a.attempt, "outcome": a.outcome,
                 "status": a.status, "latency_ms": a.latency_ms, "error": a.error, "response": a.response}
                for a in rows]


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def _older_secrets(previous: list[dict[str, Any]], current: str, now: float, overlap: float) -> list[dict[str, Any]]:
    """The secrets a declared subscription had before its config changed to `current`, still in
    force: each until its own end, the one that was in force until `overlap` from now."""
    kept = []
    for entry in previous:
        if entry["secret"] == current or (entry["expires"] is not None and entry["expires"] <= now):
            continue
        kept.append({"secret": entry["secret"], "expires": entry["expires"] or now + overlap})
    return kept if overlap > 0 else []


def _public(status: int | None, reason: str) -> str:
    """What a published report says went wrong: never the endpoint's host or its answer (the
    delivery log, admin only, has those)."""
    if status is not None:
        return f"HTTP {status}"
    return {"refused": "refused by the SSRF guard"}.get(reason, "no answer (timeout or connection failure)")


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("saving a subscription failed", exc_info=future.exception())

