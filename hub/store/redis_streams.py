"""The Redis backend (`[backend] url = "redis://host:port/db"`): one event log that several hub
processes share, on a Redis Stream, with the rules journal and the outbox beside it.

The event log
-------------
One Lua script appends an event: it checks the dedup hash (`source` + `id`), takes the next
`seq` from a counter (`INCR`), writes the stream entry under the id `<seq>-0` with the event's
final JSON (the script splices the seq into the bytes the hub encoded once), and adds the entry
to the per-agent and indexed-field sorted sets. Redis runs a script alone, so seqs follow commit
order across every process, with no gap: when the script for seq N returns, every seq below N
is in the stream. The stream entry also keeps the stamp of Redis's own clock (`TIME`), one clock
for all processes, so `seq_at` and `stored_between` find a time by bisecting the stream.

Every process tells its own fan-out about every commit, its own and the others', in seq order
and exactly once: when an append of this process returns (so `on_commit` has run before
`append` answers), from the bytes it sent, unless another process's commits come before or
between them (then it reads the stream back from the last seq it reported, `XRANGE`); and when
the follower's blocking `XREAD` sees entries another process wrote.

Durability is Redis's: run it with `appendonly yes` and `appendfsync always` (or `everysec`,
which may lose the last second of acknowledged events if the Redis host dies; docs/SCALING.md).

Keys, under `prefix` (default `callhub:`): `log` (the stream), `seq`, `trimmed`, `dedup`
(hash), `agent:<agent>`, `call_id:<value>`, `recording:<value>` (sorted sets of seqs); the
journal's `j:*` and the outbox's `o:*`. For Redis Cluster, put the prefix in a hash tag
(`{callhub}:`) so every key lives in one slot, as the scripts need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field
from redis import asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError, WatchError

from hub.config import Duration
from hub.events import Event, encode_event_parts
from hub.exceptions import InvalidEvent, Unavailable
from hub.matcher import TypeFilter
from hub.store.base import (
    AppendResult,
    Attempt,
    Backend,
    CommitListener,
    IndexedField,
    Journal,
    JournalEntry,
    Lease,
    Outbox,
    OutboxChanges,
    Page,
    Pending,
    Unfinished,
    indexed_values,
    new_owner,
)

logger = logging.getLogger("callhub.store")

#: Entries one round trip reads (pump, history, retention, windows).
CHUNK = 500
#: Most appends sent in one pipeline (group commit).
MAX_BATCH = 512
#: Stored events one `read` examines at most, as a multiple of its page size (at least 100), as the local backend.
SCAN_FACTOR = 20
#: Events one retention step removes (each step is one script: other commands run in between).
TRIM_CHUNK = 2000
#: How long the follower's `XREAD` blocks before it asks again, in milliseconds.
FOLLOW_BLOCK_MS = 1000
#: Delivery-log lines one pruning step removes.
PRUNE_SLICE = 2000
UNAVAILABLE = "the event store (Redis) is unavailable"
#: A client. redis-py types every answer as a union of each decoding it could use; this one
#: never decodes (answers are bytes), so its answers are treated as what they are.
Client: TypeAlias = Any

#: An append waiting for the writer: (script arguments, the appender's future, when it was received).
_Queued: TypeAlias = tuple[list[Any], "asyncio.Future[AppendResult]", float]

_APPEND = """
local existing = redis.call('HGET', KEYS[3], ARGV[1])
if existing then return {tonumber(existing), 1} end
local seq = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local fields = {'b', ARGV[2] .. seq .. ARGV[3], 't', ARGV[4], 's', ARGV[5], 'd', ARGV[1], 'ts', ms}
if ARGV[6] ~= '' then table.insert(fields, 'a'); table.insert(fields, ARGV[6]) end
if ARGV[7] ~= '' then table.insert(fields, 'c'); table.insert(fields, ARGV[7]) end
if ARGV[8] ~= '' then table.insert(fields, 'r'); table.insert(fields, ARGV[8]) end
redis.call('XADD', KEYS[1], seq .. '-0', unpack(fields))
redis.call('HSET', KEYS[3], ARGV[1], seq)
local p = ARGV[9]
if ARGV[6] ~= '' then redis.call('ZADD', p .. 'agent:' .. ARGV[6], seq, seq) end
if ARGV[7] ~= '' then redis.call('ZADD', p .. 'call_id:' .. ARGV[7], seq, seq) end
if ARGV[8] ~= '' then redis.call('ZADD', p .. 'recording:' .. ARGV[8], seq, seq) end
return {seq, 0}
"""

# Remove the entries up to ARGV[1] (at most ARGV[2] of them) with their dedup and index entries.
_TRIM = """
local p = ARGV[3]
local entries = redis.call('XRANGE', KEYS[1], '-', ARGV[1] .. '-0', 'COUNT', tonumber(ARGV[2]))
local last = 0
for _, entry in ipairs(entries) do
  local seq = tonumber(string.match(entry[1], '^(%d+)'))
  local f = entry[2]
  for i = 1, #f, 2 do
    local k, v = f[i], f[i + 1]
    if k == 'd' then redis.call('HDEL', KEYS[3], v)
    elseif k == 'a' then redis.call('ZREM', p .. 'agent:' .. v, seq)
    elseif k == 'c' then redis.call('ZREM', p .. 'call_id:' .. v, seq)
    elseif k == 'r' then redis.call('ZREM', p .. 'recording:' .. v, seq) end
  end
  redis.call('XDEL', KEYS[1], entry[1])
  last = seq
end
local mark = #entries < tonumber(ARGV[2]) and tonumber(ARGV[1]) or last
local trimmed = tonumber(redis.call('GET', KEYS[2]) or '0')
if mark > trimmed then redis.call('SET', KEYS[2], mark) end
return {#entries, mark}
"""

_SET_MAX = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class RedisOptions(BaseModel):
    """`[backend]` keys of the Redis backend (beside `url = "redis://host:port/db"`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Prefix of every key the hub writes (several hubs may share one Redis under different ones).
    prefix: str = Field("callhub:", pattern=r"^[A-Za-z0-9:_.{}-]{1,64}$")
    #: How long one Redis command may take (or wait for a connection) before the store counts as unavailable.
    timeout: Duration = Field(5.0, gt=0, le=300)
    #: Connections this process opens to Redis for the event log (appends and reads share them).
    max_connections: int = Field(32, ge=2, le=10_000)


def _connection(url: str, timeout: float) -> Client:
    """A client of one connection, for one task's commands in turn (the writer, the follower):
    no pool to take the connection from and give it back to at every command."""
    return aioredis.Redis.from_url(url, single_connection_client=True, socket_timeout=timeout,
                                   socket_connect_timeout=timeout, health_check_interval=30)


def _client(url: str, timeout: float, connections: int = 1) -> Client:
    """A client whose commands wait for a free connection (up to `timeout`) rather than fail."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=timeout, socket_timeout=timeout, socket_connect_timeout=timeout,
        health_check_interval=30)
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


async def _drop_idle(client: Client) -> None:
    """Close the connections of `client`'s pool that nobody is using (best effort)."""
    if client is not None:
        try:
            await client.connection_pool.disconnect(inuse_connections=False)
        except Exception:  # noqa: S110 - best effort: a connection that stays fails once, as before
            pass


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"{UNAVAILABLE}: {type(exc).__name__}; nothing was stored, retry later")


def _seq_of(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def _event(entry_id: bytes, fields: dict[bytes, bytes], received: float = 0.0) -> Event:
    agent = fields.get(b"a")
    return Event(_seq_of(entry_id), fields[b"t"].decode(), None if agent is None else agent.decode(), fields[b"b"],
                 received)


class RedisBackend(Backend):
    Options = RedisOptions
    shared = True

    def __init__(self, *, url: str, options: RedisOptions, data_dir: Path) -> None:
        self.url = url
        self.prefix = options.prefix
        self.timeout = options.timeout
        self.connections = options.max_connections
        self._journal = RedisJournal(url, options)
        self._outbox = RedisOutbox(url, options)
        self.head = 0
        self._redis: Client = None
        self._follow_client: Client = None
        self._write_client: Client = None
        self._on_commit: CommitListener | None = None
        self._pump_lock = asyncio.Lock()
        self._received: dict[int, float] = {}
        #: Appends waiting for the writer.
        self._queue: list[_Queued] = []
        self._append_sha = ""
        self._writer: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._closed = False
        self._trim: Any = None

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, on_commit: CommitListener) -> None:
        self._on_commit = on_commit
        self._redis = _client(self.url, self.timeout, self.connections)
        # The follower blocks in XREAD: a connection of its own, with room for the block.
        self._follow_client = _connection(self.url, self.timeout + FOLLOW_BLOCK_MS / 1000)
        self._write_client = _connection(self.url, self.timeout)
        self._trim = self._redis.register_script(_TRIM)
        try:
            head = await self._redis.get(self.key("seq"))
            self._append_sha = await self._redis.script_load(_APPEND)
        except RedisError as exc:
            await self._release()
            raise Unavailable(f"{UNAVAILABLE} at {_safe(self.url)}: {exc}") from None
        # What is already stored is history: this process reports what commits from now on.
        self.head = int(head or 0)
        self._follower = asyncio.create_task(self._follow(), name="callhub-redis-follower")
        logger.info("event store %s (prefix %r) open: head seq %d", _safe(self.url), self.prefix, self.head)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:  # what was accepted is written before the connections close
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._follower is not None:
            self._follower.cancel()
            try:
                await self._follower
            except (asyncio.CancelledError, Exception):  # noqa: S110 - stopping; the follower logs its own errors
                pass
        await self._release()

    async def _release(self) -> None:
        for client in (self._redis, self._follow_client, self._write_client):
            if client is not None:
                await client.aclose()

    def lease(self, name: str, ttl: float) -> RedisLease:
        return RedisLease(self, name, ttl)

    def journal(self) -> RedisJournal:
        return self._journal

    def outbox(self) -> RedisOutbox:
        return self._outbox

    @property
    def _r(self) -> Client:
        if self._closed or self._redis is None:
            raise Unavailable("the event store is closed")
        return self._redis

    # -- writes ------------------------------------------------------------------------------

    async def append(self, event: dict[str, Any], *, agent: str | None, received: float) -> AppendResult:
        if self._closed or self._write_client is None:
            raise Unavailable("the event store is closed")
        try:
            prefix, suffix = encode_event_parts(event)
        except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
            raise InvalidEvent(f"the event cannot be encoded as JSON: {exc}", code="unencodable") from None
        call_id, recording = indexed_values(event)
        source, id_ = event["source"], event["id"]
        args = [f"{source}\x00{id_}", prefix, suffix, event["type"], source, agent or "", call_id or "",
                recording or "", self.prefix]
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future, received))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(self._write_client), name="callhub-redis-writer")
        # If the publisher goes away and this is cancelled, the writer still stores the event.
        return await future

    async def _write(self, redis: Client) -> None:
        """Group commit: every append waiting goes to Redis in one pipeline (one round trip, and
        with `appendfsync always` one fsync), then the fan-out is told, then the appenders."""
        queue = self._queue
        while queue:
            batch, queue[:] = queue[:MAX_BATCH], queue[MAX_BATCH:]
            try:
                await self._commit(redis, batch)
            except Exception as exc:  # never leave an appender waiting, whatever went wrong
                if isinstance(exc, RedisError):
                    logger.error("event store (Redis) append failed: %s", exc)
                else:
                    logger.exception("event store (Redis) writer failed")
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(_unavailable(exc))

    async def _commit(self, redis: Client, batch: list[_Queued]) -> None:
        """One batch: append, tell the fan-out, answer the appenders."""
        answers = await self._run_appends(redis, [args for args, _, _ in batch])
        results: list[tuple[asyncio.Future[AppendResult], AppendResult | BaseException]] = []
        stored: list[Event] = []
        for (args, future, received), answer in zip(batch, answers, strict=True):
            if isinstance(answer, BaseException):
                results.append((future, _unavailable(answer)))
                continue
            seq, duplicate = int(answer[0]), bool(answer[1])
            if not duplicate:
                # The stored bytes, as the script wrote them: the fan-out needs no read-back.
                stored.append(Event(seq, args[3], args[5] or None, args[1] + str(seq).encode() + args[2],
                                    received))
            results.append((future, AppendResult(seq, duplicate)))
        if stored:
            try:
                await self._report_own(redis, stored)
            except RedisError as exc:
                # Stored, but not yet read back: the follower reports them once Redis answers again.
                logger.warning("events through %d stored but not yet read back for the fan-out: %s",
                               stored[-1].seq, exc)
        for future, result in results:
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _run_appends(self, redis: Client, calls: list[list[Any]]) -> list[Any]:
        """Run the append script once per call in one pipeline (EVALSHA: no `SCRIPT EXISTS` round
        trip per batch; a Redis that lost its script cache gets it again and reruns only those)."""
        keys = [self.key("log"), self.key("seq"), self.key("dedup")]
        answers: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            replies: list[Any]
            if len(todo) == 1:  # the usual case below a few hundred events/s: no pipeline to build
                try:
                    replies = [await redis.execute_command("EVALSHA", self._append_sha, 3, *keys, *calls[todo[0]])]
                except ResponseError as exc:  # NOSCRIPT, or the script failed: an answer, as in a pipeline
                    replies = [exc]
            else:
                async with redis.pipeline(transaction=False) as pipe:
                    for i in todo:
                        pipe.evalsha(self._append_sha, 3, *keys, *calls[i])
                    replies = await pipe.execute(raise_on_error=False)
            for i, reply in zip(todo, replies, strict=True):
                answers[i] = reply
            todo = [i for i, reply in zip(todo, replies, strict=True) if isinstance(reply, NoScriptError)]
            if not todo or attempt:
                break
            await redis.script_load(_APPEND)  # a script that was missing never ran: running it again is safe
        return answers

    async def _report_own(self, redis: Client, stored: list[Event]) -> None:
        """Report this process's commits; every seq below them is stored (seqs follow commit
        order), so those of other processes not reported yet are read first."""
        stored.sort(key=lambda event: event.seq)
        async with self._pump_lock:
            fresh = [event for event in stored if event.seq > self.head]
            if not fresh:
                return  # the follower got there first
            if fresh[0].seq != self.head + 1 or fresh[-1].seq - fresh[0].seq + 1 != len(fresh):
                # Another process's commits come before or between these: read them all back.
                for event in fresh:
                    self._received[event.seq] = event.received
                target = fresh[-1].seq
                while self.head < target:
                    if not await self._pump(redis) and self.head < target:
                        self.head = target  # retention removed them before this process read them
                return
            self._tell(fresh)

    async def _pump(self, redis: Client) -> bool:
        """Read and report what follows the head (under the pump lock); False if nothing did.
        On the writer's connection: it reads while `close` waits for the writer to finish."""
        entries = await redis.xrange(self.key("log"), min=f"({self.head}-0", max="+", count=CHUNK)
        self._report(entries)
        return bool(entries)

    def _report(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        received = self._received
        events = []
        for entry_id, fields in entries:
            seq = _seq_of(entry_id)
            if seq <= self.head:
                continue
            events.append(_event(entry_id, fields, received.pop(seq, 0.0)))
        if events:
            self._tell(events)

    def _tell(self, events: list[Event]) -> None:
        """Move the head past `events` (the next commits, in seq order) and tell `on_commit`."""
        self.head = events[-1].seq
        assert self._on_commit is not None
        try:
            self._on_commit(events)
        except Exception:
            logger.exception("fan-out failed for seqs %d..%d", events[0].seq, events[-1].seq)

    async def _follow(self) -> None:
        """Report what other processes commit, as it commits."""
        assert self._follow_client is not None
        failing = False
        while not self._closed:
            try:
                answer = await self._follow_client.xread({self.key("log"): f"{self.head}-0"}, count=CHUNK,
                                                         block=FOLLOW_BLOCK_MS)
                if failing:
                    logger.warning("event store (Redis) reachable again; following the log from seq %d", self.head)
                    failing = False
                    await self._drop_idle_connections()
                if answer:
                    async with self._pump_lock:
                        self._report(answer[0][1])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:  # the client turns a cancelled read into an error of its own
                    return
                if not failing:
                    logger.error("following the event log (Redis) failed: %s; retrying", exc)
                    failing = True
                    await self._drop_idle_connections()
                await asyncio.sleep(0.5)

    async def _drop_idle_connections(self) -> None:
        """Close the pooled connections nobody is using, here and in the journal and outbox: after
        Redis restarted they are dead, and each would fail the next command given to it (redis-py
        retries nothing). They open again when next needed. The writer's and the follower's own
        connections reconnect by themselves after their error."""
        await _drop_idle(self._redis)
        await self._journal.drop_idle_connections()
        await self._outbox.drop_idle_connections()

    async def trim(self, *, max_age: float, max_count: int) -> int:
        redis = self._r
        cutoff = 0
        if max_age > 0:
            cutoff = await self.seq_at(time.time() - max_age)
        if max_count > 0:
            head = int(await redis.get(self.key("seq")) or 0)
            cutoff = max(cutoff, head - max_count)
        if cutoff <= 0:
            return 0
        removed = 0
        while True:
            count, mark = await self._trim(keys=[self.key("log"), self.key("trimmed"), self.key("dedup")],
                                           args=[cutoff, TRIM_CHUNK, self.prefix], client=redis)
            removed += int(count)
            if int(mark) >= cutoff:
                return removed

    async def check_writable(self, timeout: float) -> None:
        redis = self._r
        try:
            # A write, not a PING: a Redis that refuses writes (MISCONF, a read-only replica) is not writable.
            await asyncio.wait_for(redis.set(self.key("alive"), int(time.time())), timeout)
        except TimeoutError:
            raise Unavailable(f"the event store (Redis) did not answer within {timeout:g}s") from None
        except RedisError as exc:
            raise Unavailable(f"the event store (Redis) is not writable: {exc}") from None

    # -- reads -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await fn()
        except RedisError as exc:
            raise _unavailable(exc) from None

    async def read(self, after: int, *, limit: int, agent: str | None, types: TypeFilter) -> Page:
        redis = self._r
        scan_limit = max(limit, 100) * SCAN_FACTOR
        return await self._call(lambda: self._read(redis, after, limit, agent, types, scan_limit))  # type: ignore[no-any-return]

    async def _read(self, redis: Client, after: int, limit: int, agent: str | None, types: TypeFilter,
                    scan_limit: int) -> Page:
        log = self.key("log")
        events: list[Event] = []
        cursor = after
        scanned = 0
        exhausted = False
        first = True
        trimmed = head = 0
        while len(events) < limit and scanned < scan_limit:
            chunk = min(CHUNK, scan_limit - scanned)
            async with redis.pipeline(transaction=True) as pipe:
                if first:  # the trim mark, the head and the first rows in one snapshot
                    pipe.get(self.key("trimmed"))
                    pipe.get(self.key("seq"))
                if agent is None:
                    pipe.xrange(log, min=f"({cursor}-0", max="+", count=chunk)
                else:
                    pipe.zrangebyscore(self.key(f"agent:{agent}"), f"({cursor}", "+inf", start=0, num=chunk)
                answers = await pipe.execute()
            if first:
                trimmed, head = int(answers[0] or 0), int(answers[1] or 0)
                head = max(head, trimmed)
                cursor = max(cursor, trimmed)
                first = False
            rows = answers[-1]
            if agent is not None:
                seqs = [int(s) for s in rows]
                rows = await self._entries(redis, seqs)
                listed = len(seqs)
            else:
                listed = len(rows)
            for entry_id, fields in rows:
                scanned += 1
                cursor = _seq_of(entry_id)
                if types.matches(fields[b"t"].decode()):
                    events.append(_event(entry_id, fields))
                    if len(events) == limit:
                        break
            if agent is not None and listed and len(events) < limit:
                cursor = max(cursor, seqs[-1])
            if listed < chunk:
                exhausted = True
                break
        if exhausted and len(events) < limit:
            cursor = max(cursor, head)
        return Page(events, cursor, trimmed, head)

    async def _entries(self, redis: Client, seqs: Sequence[int]) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The stream entries of these seqs, in order (those retention removed meanwhile left out)."""
        if not seqs:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for seq in seqs:
                pipe.xrange(self.key("log"), min=f"{seq}-0", max=f"{seq}-0")
            answers = await pipe.execute()
        return [found[0] for found in answers if found]

    async def get(self, seq: int) -> Event | None:
        redis = self._r
        found = await self._call(lambda: redis.xrange(self.key("log"), min=f"{seq}-0", max=f"{seq}-0"))
        return _event(*found[0]) if found else None

    async def find(self, field: IndexedField, value: str, *, agent: str | None, source: str | None,
                   limit: int) -> list[Event]:
        if field not in ("call_id", "recording"):
            raise ValueError(f"{field!r} is not an indexed field")
        redis = self._r

        async def run() -> list[Event]:
            # Filters narrow what the index gives: look at a bounded number of its newest entries.
            budget = limit if agent is None and source is None else max(limit, 100) * SCAN_FACTOR
            seqs = [int(s) for s in await redis.zrevrangebyscore(self.key(f"{field}:{value}"), "+inf", "-inf",
                                                                 start=0, num=budget)]
            found = []
            for entry_id, fields in await self._entries(redis, seqs):
                if agent is not None and fields.get(b"a", b"").decode() != agent:
                    continue
                if source is not None and fields[b"s"].decode() != source:
                    continue
                found.append(_event(entry_id, fields))
                if len(found) == limit:
                    break
            return found

        return await self._call(run)  # type: ignore[no-any-return]

    async def _first_at(self, redis: Client, when_ms: int) -> int | None:
        """The lowest stored seq stamped at or after `when_ms` (None if none): a bisection of the
        stream by seq (one script numbers and stamps every entry, so both grow together, and
        retention removes only the oldest, so the stored seqs run without a hole)."""
        log = self.key("log")
        oldest = await redis.xrange(log, count=1)
        newest = await redis.xrevrange(log, count=1)
        if not oldest or int(newest[0][1][b"ts"]) < when_ms:
            return None
        lo, hi = _seq_of(oldest[0][0]), _seq_of(newest[0][0])
        while lo < hi:
            mid = (lo + hi) // 2
            entry = await redis.xrange(log, min=f"{mid}-0", max="+", count=1)
            seq = _seq_of(entry[0][0])
            if seq > mid:  # retention removed `mid` meanwhile, and everything below it
                lo = seq
            elif int(entry[0][1][b"ts"]) >= when_ms:
                hi = mid
            else:
                lo = mid + 1
        entry = await redis.xrange(log, min=f"{lo}-0", max="+", count=1)
        return _seq_of(entry[0][0]) if entry and int(entry[0][1][b"ts"]) >= when_ms else None

    async def seq_at(self, when: float) -> int:
        redis = self._r

        async def run() -> int:
            first = await self._first_at(redis, int(when * 1000))
            if first is None:  # nothing stamped at or after it: everything stored is before it
                newest = await redis.xrevrange(self.key("log"), count=1)
                return _seq_of(newest[0][0]) if newest else 0
            before = await redis.xrevrange(self.key("log"), max=f"({first}-0", min="-", count=1)
            return _seq_of(before[0][0]) if before else 0

        return await self._call(run)  # type: ignore[no-any-return]

    async def stored_between(
        self, *, since: float, until: float, types: Collection[str], source: str | None, after: int, limit: int
    ) -> list[Event]:
        if limit < 1 or not types:
            raise ValueError("stored_between needs a positive limit and at least one type")
        redis = self._r
        wanted = set(types)
        since_ms, until_ms = int(since * 1000), int(until * 1000)

        async def run() -> list[Event]:
            first = await self._first_at(redis, since_ms)
            if first is None:
                return []
            cursor = max(after, first - 1)
            found: list[Event] = []
            while len(found) < limit:
                rows = await redis.xrange(self.key("log"), min=f"({cursor}-0", max="+", count=CHUNK)
                for entry_id, fields in rows:
                    cursor = _seq_of(entry_id)
                    ts = int(fields[b"ts"])
                    if ts > until_ms:
                        return found
                    if ts >= since_ms and fields[b"t"].decode() in wanted and (
                            source is None or fields[b"s"].decode() == source):
                        found.append(_event(entry_id, fields))
                        if len(found) == limit:
                            return found
                if len(rows) < CHUNK:
                    return found
            return found

        return await self._call(run)  # type: ignore[no-any-return]


# -- leases ---------------------------------------------------------------------------------------------

# KEYS: the lease, its token counter. ARGV: the holder, ttl in ms. A holder taking its own lease again keeps its token.
_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. ':'
if v then
  if string.sub(v, 1, #mine) == mine then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(v, #mine + 1))
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], mine .. token, 'PX', ARGV[2])
return token
"""

_RENEW = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return 1
end
return 0
"""


class RedisLease(Lease):
    """A lease in Redis (`lease:<name>`, expiring by itself after `ttl`), its fencing token from
    a counter (`lease:<name>:token`) that only grows."""

    def __init__(self, backend: RedisBackend, name: str, ttl: float) -> None:
        self.backend, self.name, self.ttl = backend, name, ttl
        self.holder = new_owner()
        self._keys = [backend.key(f"lease:{name}"), backend.key(f"lease:{name}:token")]

    async def acquire(self) -> int | None:
        token = await self.backend._call(lambda: self.backend._r.eval(
            _ACQUIRE, 2, *self._keys, self.holder, int(self.ttl * 1000)))
        return None if token is None else int(token)

    async def renew(self) -> bool:
        return bool(await self.backend._call(lambda: self.backend._r.eval(
            _RENEW, 1, self._keys[0], self.holder, int(self.ttl * 1000))))

    async def release(self) -> None:
        await self.backend._call(lambda: self.backend._r.eval(_RENEW, 1, self._keys[0], self.holder, 0))


def _safe(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


# -- writes in call order (journal, outbox) ---------------------------------------------------------------


class _InOrder:
    """Runs queued coroutines one after another in the order they were queued (the journal's and
    the outbox's writes apply in call order, as the contract says), each answered through the
    future made when it was queued."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: asyncio.Queue[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]] | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=self.name)

    def submit(self, fn: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._queue is None:
            future.set_exception(Unavailable(f"the {self.name} is not open"))
        else:
            self._queue.put_nowait((fn, future))
        return future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            if item is None:
                return
            fn, future = item
            try:
                result = await fn()
            except RedisError as exc:
                if not future.done():
                    future.set_exception(Unavailable(f"the {self.name} (Redis) is unavailable: {type(exc).__name__}"))
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    async def stop(self) -> None:
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._queue = None


class _Part:
    """A side store on Redis (journal, outbox): its own client, its writes in call order."""

    def __init__(self, url: str, options: RedisOptions, name: str) -> None:
        self.url = url
        self.prefix = options.prefix
        self.timeout = options.timeout
        self._redis: Client = None
        self._writes = _InOrder(name)

    def key(self, name: str) -> str:
        return self.prefix + name

    async def start(self) -> None:
        self._redis = _client(self.url, self.timeout, 4)
        try:
            await self._redis.ping()
        except RedisError as exc:
            await self._redis.aclose()
            self._redis = None
            raise Unavailable(f"{self._writes.name} (Redis) unavailable at {_safe(self.url)}: {exc}") from None
        self._writes.start()

    @property
    def _r(self) -> Client:
        if self._redis is None:
            raise Unavailable(f"the {self._writes.name} is not open")
        return self._redis

    async def _read(self, fn: Callable[[Client], Awaitable[Any]]) -> Any:
        redis = self._r
        try:
            return await fn(redis)
        except RedisError as exc:
            raise Unavailable(f"the {self._writes.name} (Redis) is unavailable: {type(exc).__name__}") from None

    async def drop_idle_connections(self) -> None:
        await _drop_idle(self._redis)

    async def close(self) -> None:
        await self._writes.stop()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


# -- the rules journal --------------------------------------------------------------------------------------

_BEGIN = """
local p = ARGV[1]
local entries = cjson.decode(ARGV[2])
local now = ARGV[3]
local fresh = {}
for i, e in ipairs(entries) do
  local key = p .. 'j:a:' .. e[1]
  if redis.call('EXISTS', key) == 1 then
    fresh[i] = 0
  else
    redis.call('HSET', key, 'rule', e[2], 'type', e[3], 'event_id', e[4], 'seq', e[5], 'request', e[6],
               'state', e[7], 'started', now, 'owner', ARGV[6])
    if e[7] == 'started' then redis.call('SADD', p .. 'j:started', e[1])
    else redis.call('HSET', key, 'finished', now, 'result', e[8]) end
    fresh[i] = 1
  end
end
local cooldowns = cjson.decode(ARGV[4])
for _, c in ipairs(cooldowns) do redis.call('HSET', p .. 'j:cooldowns', c[1] .. '\\0' .. c[2], c[3]) end
if ARGV[5] ~= '' then
  local current = tonumber(redis.call('GET', p .. 'j:cursor') or '-1')
  if tonumber(ARGV[5]) > current then redis.call('SET', p .. 'j:cursor', ARGV[5]) end
end
return fresh
"""

_FINISH = """
local key = ARGV[1] .. 'j:a:' .. ARGV[2]
if redis.call('EXISTS', key) == 1 then
  redis.call('HSET', key, 'state', ARGV[3], 'finished', ARGV[4], 'result', ARGV[5])
end
redis.call('SREM', ARGV[1] .. 'j:started', ARGV[2])
return 1
"""


class RedisJournal(_Part, Journal):
    """The rules journal on Redis: one hash per action (`j:a:<key>`), the set of those started
    and not finished, the cursor, the cooldowns (a hash of `rule\\0key` -> until), and the
    handlers' state (a hash per namespace, `j:state:<namespace>`)."""

    def __init__(self, url: str, options: RedisOptions) -> None:
        super().__init__(url, options, "rules journal")
        self.owner = new_owner()

    def begin(self, entries: Sequence[JournalEntry], cursor: int | None,
              cooldowns: Sequence[tuple[str, str, float]] = ()) -> asyncio.Future[list[bool]]:
        rows = []
        for e in entries:
            state, result = ("failed", orjson.dumps({"error": e.error}).decode()) if e.error else ("started", "")
            rows.append([e.key, e.rule, e.type, e.event_id, e.seq, orjson.dumps(dict(e.request), default=str).decode(),
                         state, result])
        args = [self.prefix, orjson.dumps(rows).decode(), repr(time.time()),
                orjson.dumps([list(c) for c in cooldowns]).decode(), "" if cursor is None else str(cursor), self.owner]

        async def write() -> list[bool]:
            fresh = await self._r.eval(_BEGIN, 0, *args)
            return [bool(f) for f in fresh]

        future: asyncio.Future[list[bool]] = self._writes.submit(write)
        return future

    def finish(self, key: str, state: str, result: Any) -> asyncio.Future[None]:
        args = [self.prefix, key, state, repr(time.time()), orjson.dumps(result, default=str).decode()]

        async def write() -> None:
            await self._r.eval(_FINISH, 0, *args)

        future: asyncio.Future[None] = self._writes.submit(write)
        return future

    def set_cursor(self, seq: int) -> asyncio.Future[None]:
        async def write() -> None:
            await self._r.eval(_SET_MAX, 1, self.key("j:cursor"), seq)

        future: asyncio.Future[None] = self._writes.submit(write)
        return future

    async def unfinished(self) -> list[Unfinished]:
        async def run() -> list[Unfinished]:
            redis = self._r
            keys = sorted(k.decode() for k in await redis.smembers(self.key("j:started")))
            found = []
            for key in keys:
                row = await redis.hgetall(self.key(f"j:a:{key}"))
                if not row or row.get(b"state") != b"started":
                    continue
                found.append(Unfinished(key, row[b"rule"].decode(), row[b"type"].decode(), row[b"event_id"].decode(),
                                        int(row.get(b"seq") or 0), orjson.loads(row[b"request"]),
                                        row.get(b"owner", b"").decode()))
            return found

        future: asyncio.Future[list[Unfinished]] = self._writes.submit(run)
        return await future

    async def cursor(self) -> int | None:
        async def run() -> int | None:
            value = await self._r.get(self.key("j:cursor"))
            return None if value is None else int(value)

        future: asyncio.Future[int | None] = self._writes.submit(run)
        return await future

    async def cooldowns(self, now: float) -> list[tuple[str, str, float]]:
        async def run() -> list[tuple[str, str, float]]:
            redis = self._r
            running, expired = [], []
            for field, until in (await redis.hgetall(self.key("j:cooldowns"))).items():
                rule, _, key = field.decode().partition("\x00")
                if float(until) <= now:
                    expired.append(field)
                else:
                    running.append((rule, key, float(until)))
            if expired:
                await redis.hdel(self.key("j:cooldowns"), *expired)
            return sorted(running)

        future: asyncio.Future[list[tuple[str, str, float]]] = self._writes.submit(run)
        return await future


    async def state_get(self, namespace: str, key: str) -> Any:
        async def run() -> Any:
            value = await self._r.hget(self.key(f"j:state:{namespace}"), key)
            return None if value is None else orjson.loads(value)

        return await self._writes.submit(run)

    def state_put(self, namespace: str, key: str, value: Any) -> asyncio.Future[None]:
        encoded = None if value is None else orjson.dumps(value)

        async def write() -> None:
            if encoded is None:
                await self._r.hdel(self.key(f"j:state:{namespace}"), key)
            else:
                await self._r.hset(self.key(f"j:state:{namespace}"), key, encoded)

        future: asyncio.Future[None] = self._writes.submit(write)
        return future


# -- the outbox -------------------------------------------------------------------------------------------

_APPLY = """
local p = ARGV[1]
local c = cjson.decode(ARGV[2])
for _, s in ipairs(c.settled) do redis.call('HDEL', p .. 'o:p:' .. s[1], s[2]) end
-- A subscription deleted meanwhile (by another process) gets no rows or log lines back.
for _, row in ipairs(c.pending) do
  if redis.call('HEXISTS', p .. 'o:subs', row[1]) == 1 then
    redis.call('HSET', p .. 'o:p:' .. row[1], row[2], cjson.encode(row))
  end
end
if #c.attempts > 0 then
  local last = redis.call('INCRBY', p .. 'o:attempt', #c.attempts)
  local id = last - #c.attempts
  for _, a in ipairs(c.attempts) do
    id = id + 1
    if redis.call('HEXISTS', p .. 'o:subs', a[2]) == 1 then
      a[1] = id
      local line = cjson.encode(a)
      redis.call('ZADD', p .. 'o:log:' .. a[2], id, line)
      redis.call('ZADD', p .. 'o:log:' .. a[2] .. ':' .. a[8], id, line)
      redis.call('ZADD', p .. 'o:log-at', a[6], a[2] .. '\\0' .. a[8] .. '\\0' .. id)
    end
  end
end
for sub, cursor in pairs(c.cursors) do
  if redis.call('HEXISTS', p .. 'o:subs', sub) == 1 then
    local current = tonumber(redis.call('HGET', p .. 'o:cursors', sub) or '0')
    if cursor > current then redis.call('HSET', p .. 'o:cursors', sub, cursor) end
  end
end
return 1
"""

_PRUNE = """
local p = ARGV[1]
local lines = redis.call('ZRANGEBYSCORE', p .. 'o:log-at', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(lines) do
  local sub, outcome, id = string.match(member, '^(.*)%z([^%z]*)%z(%d+)$')
  redis.call('ZREMRANGEBYSCORE', p .. 'o:log:' .. sub, id, id)
  redis.call('ZREMRANGEBYSCORE', p .. 'o:log:' .. sub .. ':' .. outcome, id, id)
  redis.call('ZREM', p .. 'o:log-at', member)
end
return #lines
"""

OUTCOMES = ("delivered", "retrying", "failed", "expired")


class RedisOutbox(_Part, Outbox):
    """The outbox on Redis: documents and cursors (hashes), pending deliveries (a hash per
    subscription), the delivery log (a sorted set per subscription and per outcome, by attempt id)."""

    def __init__(self, url: str, options: RedisOptions) -> None:
        super().__init__(url, options, "outbox")

    async def subscriptions(self) -> list[tuple[dict[str, Any], int | None]]:
        async def run(redis: Client) -> list[tuple[dict[str, Any], int | None]]:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.key("o:subs"))
                pipe.hgetall(self.key("o:cursors"))
                documents, cursors = await pipe.execute()
            return [(orjson.loads(documents[id_]), int(cursors[id_]) if id_ in cursors else None)
                    for id_ in sorted(documents)]

        return await self._read(run)  # type: ignore[no-any-return]

    def save(self, document: dict[str, Any], *, cursor: int | None = None) -> asyncio.Future[None]:
        id_, body = str(document["id"]), orjson.dumps(document)

        async def write() -> None:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(self.key("o:subs"), id_, body)
                if cursor is not None:
                    pipe.hset(self.key("o:cursors"), id_, cursor)
                await pipe.execute()

        future: asyncio.Future[None] = self._writes.submit(write)
        return future

    def update(self, subscription: str, fields: dict[str, Any], *, cursor: int | None = None) -> asyncio.Future[None]:
        key = self.key("o:subs")

        async def write() -> None:
            # Read, change, write back unless another process wrote a document meanwhile (then again).
            async with self._r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.hget(key, subscription)
                        if raw is None:
                            await pipe.unwatch()
                            return
                        document = orjson.loads(raw)
                        document.update(fields)
                        pipe.multi()
                        pipe.hset(key, subscription, orjson.dumps(document))
                        if cursor is not None:
                            pipe.hset(self.key("o:cursors"), subscription, cursor)
                        await pipe.execute()
                        return
                    except WatchError:
                        continue

        future: asyncio.Future[None] = self._writes.submit(write)
        return future

    def delete(self, subscription: str) -> asyncio.Future[None]:
        async def write() -> None:
            redis = self._r
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self.key("o:subs"), subscription)
                pipe.hdel(self.key("o:cursors"), subscription)
                pipe.delete(self.key(f"o:p:{subscription}"), self.key(f"o:log:{subscription}"),
                            *(self.key(f"o:log:{subscription}:{o}") for o in OUTCOMES))
                await pipe.execute()
            # Its lines in the time index go at the next prune (they point at nothing now).

        future: asyncio.Future[None] = self._writes.submit(write)
        return future

    def apply(self, changes: OutboxChanges) -> asyncio.Future[None]:
        payload = orjson.dumps({
            "settled": [list(s) for s in changes.settled],
            "pending": [list(p) for p in changes.pending],
            "attempts": [list(a) for a in changes.attempts],
            "cursors": changes.cursors,
        }).decode()
        # cjson turns an empty list into an empty object and back; the script only iterates them.

        async def write() -> None:
            await self._r.eval(_APPLY, 0, self.prefix, payload)

        future: asyncio.Future[None] = self._writes.submit(write)
        return future

    async def pending(self, subscription: str) -> list[Pending]:
        async def run(redis: Client) -> list[Pending]:
            rows = [orjson.loads(v) for v in (await redis.hgetall(self.key(f"o:p:{subscription}"))).values()]
            return sorted((Pending(*row) for row in rows), key=lambda p: p.seq)

        return await self._read(run)  # type: ignore[no-any-return]

    async def attempts(self, subscription: str, *, outcome: str | None, after: int, limit: int) -> list[Attempt]:
        key = self.key(f"o:log:{subscription}" if outcome is None else f"o:log:{subscription}:{outcome}")

        async def run(redis: Client) -> list[Attempt]:
            lines = await redis.zrangebyscore(key, f"({after}", "+inf", start=0, num=limit)
            return [Attempt(*orjson.loads(line)) for line in lines]

        return await self._read(run)  # type: ignore[no-any-return]

    async def prune(self, before: float) -> int:
        removed = 0
        while True:
            count = int(await self._read(lambda redis: redis.eval(_PRUNE, 0, self.prefix, repr(before), PRUNE_SLICE)))
            removed += count
            if count < PRUNE_SLICE:
                return removed
