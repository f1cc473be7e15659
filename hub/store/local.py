"""The embedded default: SQLite in WAL mode, one process, in-process fan-out.

Writes go through one writer thread that drains every append waiting in its queue into a
single transaction (group commit), so the cost of each fsync is shared by all the
publishers that arrived meanwhile. Only after `COMMIT` returns are the publishers
answered and the fan-out told, in seq order, on the event loop.

`seq` is assigned by the writer thread itself (it is the only writer), which lets it encode
each event's final JSON, `seq` included, once, before the insert. Retention never lowers
`trimmed_through`, and the next seq is always above both the highest stored and the
highest trimmed seq, so a seq is never reused.

The rules journal (`SQLiteJournal`) is a second SQLite file beside it (`actions.db`) with a
thread of its own: its fsyncs never wait behind the event log's, nor the log's behind it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from hub.events import Event, encode_event
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

#: Reader threads (history pages, catch-up); SQLite readers in WAL mode do not block the writer.
READER_THREADS = 4
#: Rows deleted per retention transaction, so retention never holds the write lock for long.
TRIM_CHUNK = 5000
#: Rows fetched per round trip while scanning history.
SCAN_CHUNK = 500
#: Stored events one `read` examines at most, as a multiple of its page size (at least 100):
#: a narrow filter or agent scope then returns a short page rather than scanning the log.
SCAN_FACTOR = 20
DB_FILE = "events.db"
JOURNAL_FILE = "actions.db"
OUTBOX_FILE = "webhooks.db"
#: Delivery-log rows one pruning write removes.
PRUNE_SLICE = 5000
#: The schema version the indexed columns (`call_id`, `recording`) came with.
SCHEMA_VERSION = 2


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` … `COMMIT`, or `ROLLBACK` on any error (the error goes on)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _open_durable(path: Path, schema: str) -> sqlite3.Connection:
    """A side file (rules journal, outbox): WAL, fsync per commit, its schema made if new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq    INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    id     TEXT NOT NULL,
    type   TEXT NOT NULL,
    agent  TEXT,
    ts     INTEGER NOT NULL,   -- when the hub stored it, ms since the epoch (for retention by age)
    body   BLOB NOT NULL,      -- the CloudEvent JSON, seq included, exactly as delivered
    call_id   TEXT,            -- data.call_id and data.recording: the indexed fields (INDEXED_FIELDS)
    recording TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_source_id ON events (source, id);
CREATE INDEX IF NOT EXISTS events_agent_seq ON events (agent, seq);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
#: Run after the schema: indexes on the indexed fields (also for a log made before they existed).
_INDEXES = """
CREATE INDEX IF NOT EXISTS events_call_id ON events (call_id, seq) WHERE call_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_recording ON events (recording, seq) WHERE recording IS NOT NULL;
"""

_STOP = object()


class LocalOptions(BaseModel):
    """`[backend]` keys of the local backend (beside `url = "local"`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: SQLite `synchronous` mode: `full` fsyncs every group commit (survives power loss);
    #: `normal` survives a process crash (kill -9) but not a power cut.
    synchronous: Literal["full", "normal"] = "full"
    #: Most events written in one transaction (group commit).
    max_batch: int = Field(512, ge=1, le=100_000)


class _Append:
    __slots__ = ("event", "agent", "received", "future")

    def __init__(self, event: dict[str, Any], agent: str | None, received: float, future: asyncio.Future[AppendResult]):
        self.event = event
        self.agent = agent
        self.received = received
        self.future = future


class LocalBackend(Backend):
    Options = LocalOptions

    def __init__(self, *, url: str, options: LocalOptions, data_dir: Path) -> None:
        self.path = data_dir / DB_FILE
        self.synchronous = options.synchronous.upper()
        self.max_batch = options.max_batch
        self._journal = SQLiteJournal(data_dir / JOURNAL_FILE)
        self._outbox = SQLiteOutbox(data_dir / OUTBOX_FILE)
        self.head = 0
        self.trimmed_through = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_commit: CommitListener | None = None
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="callhub-read")
        self._local = threading.local()
        self._leases: weakref.WeakSet[LocalLease] = weakref.WeakSet()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, on_commit: CommitListener) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_commit = on_commit
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(self._connect)
        head, trimmed = self._initial_state(conn)
        self.head, self.trimmed_through = head, trimmed
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn, head), name="callhub-writer", daemon=True
        )
        self._writer.start()
        logger.info("event store %s open: head seq %d, trimmed through %d", self.path, head, trimmed)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for lease in list(self._leases):  # a store closed is a process gone: what it held is free at once
            await lease.release()
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
        self._readers.shutdown(wait=True)

    def lease(self, name: str, ttl: float) -> LocalLease:
        lease = LocalLease(self.path, name, ttl)
        self._leases.add(lease)
        return lease

    def journal(self) -> SQLiteJournal:
        return self._journal

    def outbox(self) -> SQLiteOutbox:
        return self._outbox

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version < SCHEMA_VERSION:
            self._migrate(conn, version)
        conn.executescript(_INDEXES)
        return conn

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        """A log from before the indexed columns: add them and fill them in from the stored bodies, once."""
        columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
        missing = [c for c in ("call_id", "recording") if c not in columns]
        with _transaction(conn):
            for column in missing:
                conn.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT")
                conn.execute(f"UPDATE events SET {column} = json_extract(body, '$.data.{column}') "
                             f"WHERE json_type(body, '$.data.{column}') = 'text'")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if missing:
            logger.info("event store %s: indexed call ids and recordings (schema %d -> %d)", self.path, version,
                        SCHEMA_VERSION)

    @staticmethod
    def _initial_state(conn: sqlite3.Connection) -> tuple[int, int]:
        (stored,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        row = conn.execute("SELECT value FROM meta WHERE key = 'trimmed_through'").fetchone()
        trimmed = row[0] if row else 0
        return max(stored, trimmed), trimmed

    # -- writes ------------------------------------------------------------------------------

    async def append(self, event: dict[str, Any], *, agent: str | None, received: float) -> AppendResult:
        if self._closed or self._loop is None:
            raise Unavailable("the event store is closed")
        future: asyncio.Future[AppendResult] = self._loop.create_future()
        self._queue.put(_Append(event, agent, received, future))
        # If the publisher goes away and this is cancelled, the writer still commits the event
        # (it already holds it) and skips the cancelled future.
        return await future

    async def trim(self, *, max_age: float, max_count: int) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put(("trim", max_age, max_count, future, 0))
        return await future

    async def check_writable(self, timeout: float) -> None:
        if self._closed:
            raise Unavailable("the event store is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(("ping", future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise Unavailable(f"the event store did not answer within {timeout:g}s") from None

    def _write_loop(self, conn: sqlite3.Connection, head: int) -> None:
        next_seq = head + 1
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                if isinstance(item, tuple):
                    try:
                        self._control(conn, item)
                    except Exception:
                        # Whatever one control item does, the writer goes on: it is every publisher's.
                        logger.exception("event store control %r failed", item[0])
                        self._recover(conn)
                    continue
                batch = [item]
                stop = False
                while len(batch) < self.max_batch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    if isinstance(more, tuple):
                        # Control items are rare; run them after this batch, in order.
                        self._queue.put(more)
                        break
                    batch.append(more)
                try:
                    next_seq = self._commit(conn, batch, next_seq)
                except Exception:
                    logger.exception("event store write failed unexpectedly; %d event(s) not stored", len(batch))
                    self._recover(conn)
                    error = Unavailable("the event store could not commit the event; nothing was stored, retry later")
                    self._hand_back([(item.future, error) for item in batch], [])
                if stop:
                    return
        finally:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                logger.exception("final WAL checkpoint failed")
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Append], next_seq: int) -> int:
        results: list[tuple[asyncio.Future[Any], Any]] = []
        committed: list[Event] = []
        now_ms = int(time.time() * 1000)
        seq = next_seq
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                event = item.event
                try:
                    body = encode_event(event, seq)
                except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
                    # One event that cannot be encoded fails alone; the rest of the batch commits.
                    logger.warning("event %r not stored: it cannot be encoded as JSON (%s)", event.get("id"), exc)
                    results.append((item.future, InvalidEvent(f"the event cannot be encoded as JSON: {exc}",
                                                              code="unencodable")))
                    continue
                call_id, recording = indexed_values(event)
                cur = conn.execute(
                    "INSERT OR IGNORE INTO events (seq, source, id, type, agent, ts, body, call_id, recording)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (seq, event["source"], event["id"], event["type"], item.agent, now_ms, body, call_id, recording),
                )
                if cur.rowcount == 1:
                    results.append((item.future, AppendResult(seq, False)))
                    committed.append(Event(seq, event["type"], item.agent, body, item.received))
                    seq += 1
                else:
                    (original,) = conn.execute(
                        "SELECT seq FROM events WHERE source = ? AND id = ?", (event["source"], event["id"])
                    ).fetchone()
                    results.append((item.future, AppendResult(original, True)))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            logger.error("event store write failed: %s", exc)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = Unavailable("the event store could not commit the event; nothing was stored, retry later")
            self._hand_back([(item.future, error) for item in batch], [])
            return next_seq
        self._hand_back(results, committed)
        return seq

    @staticmethod
    def _recover(conn: sqlite3.Connection) -> None:
        """Leave no transaction open after an unexpected error, so the next batch starts clean."""
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.exception("rollback after a failed write failed")

    def _control(self, conn: sqlite3.Connection, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "ping":
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                result: Any = None
            except sqlite3.Error as exc:
                result = Unavailable(f"the event store is not writable: {exc}")
            self._hand_back([(item[1], result)], [])
        elif kind == "trim":
            _, max_age, max_count, future, removed = item
            try:
                done, n = self._trim_chunk(conn, max_age, max_count)
            except sqlite3.Error as exc:
                logger.error("retention failed: %s", exc)
                self._hand_back([(future, removed)], [])
                return
            if done:
                self._hand_back([(future, removed + n)], [])
            else:
                # Requeue behind the appends that arrived meanwhile, so retention never stalls ingest.
                self._queue.put(("trim", max_age, max_count, future, removed + n))

    def _trim_chunk(self, conn: sqlite3.Connection, max_age: float, max_count: int) -> tuple[bool, int]:
        cutoff = 0
        if max_age > 0:
            limit_ms = int((time.time() - max_age) * 1000)
            (cutoff,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE ts < ?", (limit_ms,)).fetchone()
        if max_count > 0:
            row = conn.execute("SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (max_count,)).fetchone()
            if row is not None:
                cutoff = max(cutoff, row[0])
        if cutoff == 0:
            return True, 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT seq FROM events WHERE seq <= ? ORDER BY seq LIMIT 1 OFFSET ?", (cutoff, TRIM_CHUNK - 1)
            ).fetchone()
            upto = min(cutoff, row[0]) if row is not None else cutoff
            n = conn.execute("DELETE FROM events WHERE seq <= ?", (upto,)).rowcount
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('trimmed_through', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
                (upto,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._set_trimmed, upto)
        return upto >= cutoff, n

    def _set_trimmed(self, upto: int) -> None:
        self.trimmed_through = max(self.trimmed_through, upto)

    def _hand_back(self, results: list[tuple[asyncio.Future[Any], Any]], committed: list[Event]) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._complete, results, committed)
        except RuntimeError:
            # The loop is gone (interpreter shutdown); the data is committed regardless.
            pass

    def _complete(self, results: list[tuple[asyncio.Future[Any], Any]], committed: list[Event]) -> None:
        if committed:
            self.head = committed[-1].seq
            assert self._on_commit is not None
            try:
                self._on_commit(committed)
            except Exception:
                logger.exception("fan-out failed for seqs %d..%d", committed[0].seq, committed[-1].seq)
        for future, value in results:
            if future.done():
                continue
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

    # -- reads -------------------------------------------------------------------------------

    async def read(self, after: int, *, limit: int, agent: str | None, types: TypeFilter) -> Page:
        scan_limit = max(limit, 100) * SCAN_FACTOR
        page: Page = await self._in_reader(self._read, after, limit, agent, types, scan_limit)
        return page

    async def seq_at(self, when: float) -> int:
        seq: int = await self._in_reader(self._seq_at, int(when * 1000))
        return seq

    def _seq_at(self, when_ms: int) -> int:
        # One writer stamps `ts` as it assigns seqs, so both grow together.
        row = self._reader().execute("SELECT seq FROM events WHERE ts < ? ORDER BY ts DESC, seq DESC LIMIT 1",
                                     (when_ms,)).fetchone()
        return 0 if row is None else int(row[0])

    async def get(self, seq: int) -> Event | None:
        event: Event | None = await self._in_reader(self._get, seq)
        return event

    def _get(self, seq: int) -> Event | None:
        row = self._reader().execute("SELECT seq, type, agent, body FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else Event(row[0], row[1], row[2], row[3])

    async def _in_reader(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed or self._loop is None:
            raise Unavailable("the event store is closed")
        return await self._loop.run_in_executor(self._readers, fn, *args)

    async def find(self, field: IndexedField, value: str, *, agent: str | None, source: str | None,
                   limit: int) -> list[Event]:
        if field not in ("call_id", "recording"):
            raise ValueError(f"{field!r} is not an indexed field")
        events: list[Event] = await self._in_reader(self._find, field, value, agent, limit, source)
        return events

    def _find(self, field: str, value: str, agent: str | None, limit: int, source: str | None) -> list[Event]:
        sql = f"SELECT seq, type, agent, body FROM events WHERE {field} = ?"  # noqa: S608 (a declared column)
        args: list[Any] = [value]
        if agent is not None:
            sql += " AND agent = ?"
            args.append(agent)
        if source is not None:
            sql += " AND source = ?"
            args.append(source)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        rows = self._reader().execute(sql, args).fetchall()
        return [Event(seq, type_, ev_agent, body) for seq, type_, ev_agent, body in rows]

    async def stored_between(
        self, *, since: float, until: float, types: Collection[str], source: str | None, after: int, limit: int
    ) -> list[Event]:
        if limit < 1 or not types:
            raise ValueError("stored_between needs a positive limit and at least one type")
        events: list[Event] = await self._in_reader(self._stored_between, since, until, sorted(types), source, after,
                                                    limit)
        return events

    def _stored_between(self, since: float, until: float, types: list[str], source: str | None, after: int,
                        limit: int) -> list[Event]:
        conn = self._reader()
        since_ms, until_ms = int(since * 1000), int(until * 1000)
        # The one writer stamps `ts` as it assigns seqs, so both grow together: find the first seq of
        # the window on the ts index, then walk the primary key (a ts-index range scan re-read for
        # every page would cost the whole window per page).
        (first,) = conn.execute("SELECT MIN(seq) FROM events WHERE ts >= ?", (since_ms,)).fetchone()
        if first is None:
            return []
        sql = (f"SELECT seq, type, agent, body FROM events WHERE seq > ? AND ts BETWEEN ? AND ? "
               f"AND type IN ({','.join('?' * len(types))})")
        args: list[Any] = [max(after, first - 1), since_ms, until_ms, *types]
        if source is not None:
            sql += " AND source = ?"
            args.append(source)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        rows = conn.execute(sql, args).fetchall()
        return [Event(seq, type_, ev_agent, body) for seq, type_, ev_agent, body in rows]

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{os.fspath(self.path)}?mode=ro", uri=True, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
        return conn

    def _read(self, after: int, limit: int, agent: str | None, types: TypeFilter, scan_limit: int) -> Page:
        conn = self._reader()
        events: list[Event] = []
        conn.execute("BEGIN")  # one snapshot for the trim mark, the head and the rows
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'trimmed_through'").fetchone()
            trimmed = row[0] if row else 0
            (head,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            head = max(head, trimmed)
            cursor = max(after, trimmed)
            scanned = 0
            exhausted = False
            while len(events) < limit and scanned < scan_limit:
                chunk = min(SCAN_CHUNK, scan_limit - scanned)
                if agent is None:
                    rows = conn.execute(
                        "SELECT seq, type, agent, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                        (cursor, chunk),
                    ).fetchall()
                else:
                    rows = conn.execute(
                        "SELECT seq, type, agent, body FROM events WHERE agent = ? AND seq > ? ORDER BY seq LIMIT ?",
                        (agent, cursor, chunk),
                    ).fetchall()
                for seq, type_, ev_agent, body in rows:
                    scanned += 1
                    cursor = seq
                    if types.matches(type_):
                        events.append(Event(seq, type_, ev_agent, body))
                        if len(events) == limit:
                            break
                if len(rows) < chunk:
                    exhausted = True
                    break
        finally:
            conn.execute("COMMIT")
        if exhausted and (not events or len(events) < limit):
            # Nothing more in this snapshot: the caller may continue from the head.
            cursor = max(cursor, head)
        return Page(events, cursor, trimmed, head)


# -- leases ---------------------------------------------------------------------------------------------

#: (event log path, lease name) -> (holder, fencing token, expires at on the monotonic clock).
_LEASES: dict[tuple[Path, str], tuple[object, int, float]] = {}
_TOKENS: dict[tuple[Path, str], int] = {}


class LocalLease(Lease):
    """A lease among the users of one event log in this process: one process owns a local store,
    so this only keeps two parts of it (or two hubs in one test process) from both holding one."""

    def __init__(self, path: Path, name: str, ttl: float) -> None:
        self.key, self.name, self.ttl = (path, name), name, ttl
        self._me = object()

    async def acquire(self) -> int | None:
        now = time.monotonic()
        held = _LEASES.get(self.key)
        if held is not None and held[0] is not self._me and held[2] > now:
            return None
        if held is not None and held[0] is self._me and held[2] > now:
            token = held[1]
        else:
            token = _TOKENS[self.key] = _TOKENS.get(self.key, 0) + 1
        _LEASES[self.key] = (self._me, token, now + self.ttl)
        return token

    async def renew(self) -> bool:
        held = _LEASES.get(self.key)
        if held is None or held[0] is not self._me or held[2] <= time.monotonic():
            return False
        _LEASES[self.key] = (self._me, held[1], time.monotonic() + self.ttl)
        return True

    async def release(self) -> None:
        held = _LEASES.get(self.key)
        if held is not None and held[0] is self._me:
            del _LEASES[self.key]


# -- the rules journal ------------------------------------------------------------------------------

_JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (key TEXT PRIMARY KEY, rule TEXT, type TEXT, event_id TEXT,
    state TEXT NOT NULL, request BLOB, started REAL, finished REAL, result BLOB, seq INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cooldowns (rule TEXT NOT NULL, key TEXT NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (rule, key));
CREATE TABLE IF NOT EXISTS plugin_state (namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (namespace, key));
"""


class SQLiteJournal(Journal):
    """The rules journal in one SQLite file (WAL, fsync per write), written by one thread in call order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.owner = new_owner()
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="callhub-journal")

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue `fn(*args)` on the journal's thread now (so in call order) and return its future."""
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def start(self) -> None:
        await self._submit(self._open)

    def _open(self) -> None:
        db = _open_durable(self.path, _JOURNAL_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(actions)")}
        if "seq" not in columns:
            db.execute("ALTER TABLE actions ADD COLUMN seq INTEGER")  # a journal from before the rules cursor
        if "owner" not in columns:
            db.execute("ALTER TABLE actions ADD COLUMN owner TEXT")  # a journal from before owners were kept
        self._db = db

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise Unavailable("the rules journal is not open")
        return self._db

    def begin(self, entries: Sequence[JournalEntry], cursor: int | None,
              cooldowns: Sequence[tuple[str, str, float]] = ()) -> asyncio.Future[list[bool]]:
        future: asyncio.Future[list[bool]] = self._submit(self._begin, list(entries), cursor, list(cooldowns))
        return future

    def _begin(self, entries: list[JournalEntry], cursor: int | None,
               cooldowns: list[tuple[str, str, float]]) -> list[bool]:
        db, now = self._conn, time.time()
        with _transaction(db):
            fresh = []
            for e in entries:
                state, result = ("failed", orjson.dumps({"error": e.error})) if e.error else ("started", None)
                cur = db.execute(
                    "INSERT OR IGNORE INTO actions (key, rule, type, event_id, seq, state, request, started,"
                    " finished, result, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.key, e.rule, e.type, e.event_id, e.seq, state, orjson.dumps(dict(e.request), default=str),
                     now, now if e.error else None, result, self.owner),
                )
                fresh.append(cur.rowcount == 1)
            if cooldowns:
                db.executemany("INSERT INTO cooldowns (rule, key, until) VALUES (?, ?, ?) ON CONFLICT"
                               " (rule, key) DO UPDATE SET until = excluded.until", cooldowns)
            if cursor is not None:
                self._write_cursor(cursor)
        return fresh

    def finish(self, key: str, state: str, result: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._submit(self._finish, key, state, orjson.dumps(result, default=str))
        return future

    def _finish(self, key: str, state: str, result: bytes) -> None:
        self._conn.execute("UPDATE actions SET state = ?, finished = ?, result = ? WHERE key = ?",
                           (state, time.time(), result, key))

    def set_cursor(self, seq: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._submit(self._write_cursor, seq)
        return future

    def _write_cursor(self, seq: int) -> None:
        self._conn.execute("INSERT INTO meta (key, value) VALUES ('rules_cursor', ?) ON CONFLICT(key) DO UPDATE"
                           " SET value = MAX(value, excluded.value)", (seq,))

    async def unfinished(self) -> list[Unfinished]:
        rows: list[tuple[Any, ...]] = await self._submit(lambda: self._conn.execute(
            "SELECT key, rule, type, event_id, COALESCE(seq, 0), request, COALESCE(owner, '') FROM actions"
            " WHERE state = 'started'"
        ).fetchall())
        return [Unfinished(key, rule, type_, event_id, seq, orjson.loads(request), owner)
                for key, rule, type_, event_id, seq, request, owner in rows]

    async def cursor(self) -> int | None:
        row = await self._submit(lambda: self._conn.execute(
            "SELECT value FROM meta WHERE key = 'rules_cursor'").fetchone())
        return None if row is None else int(row[0])

    async def cooldowns(self, now: float) -> list[tuple[str, str, float]]:
        rows: list[tuple[str, str, float]] = await self._submit(self._cooldowns, now)
        return rows

    def _cooldowns(self, now: float) -> list[tuple[str, str, float]]:
        self._conn.execute("DELETE FROM cooldowns WHERE until <= ?", (now,))
        rows: list[tuple[str, str, float]] = self._conn.execute("SELECT rule, key, until FROM cooldowns").fetchall()
        return rows

    async def state_get(self, namespace: str, key: str) -> Any:
        row = await self._submit(lambda: self._conn.execute(
            "SELECT value FROM plugin_state WHERE namespace = ? AND key = ?", (namespace, key)).fetchone())
        return None if row is None else orjson.loads(row[0])

    def state_put(self, namespace: str, key: str, value: Any) -> asyncio.Future[None]:
        encoded = None if value is None else orjson.dumps(value)
        future: asyncio.Future[None] = self._submit(self._state_put, namespace, key, encoded)
        return future

    def _state_put(self, namespace: str, key: str, value: bytes | None) -> None:
        if value is None:
            self._conn.execute("DELETE FROM plugin_state WHERE namespace = ? AND key = ?", (namespace, key))
        else:
            self._conn.execute("INSERT INTO plugin_state (namespace, key, value) VALUES (?, ?, ?) ON CONFLICT"
                               " (namespace, key) DO UPDATE SET value = excluded.value", (namespace, key, value))

    async def close(self) -> None:
        if self._db is not None:
            await self._submit(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)


# -- the outbox ---------------------------------------------------------------------------------------------

_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (id TEXT PRIMARY KEY, document BLOB NOT NULL, cursor INTEGER);
CREATE TABLE IF NOT EXISTS pending (subscription TEXT NOT NULL, seq INTEGER NOT NULL, key TEXT,
    attempts INTEGER NOT NULL, next_at REAL NOT NULL, state TEXT NOT NULL, PRIMARY KEY (subscription, seq));
CREATE TABLE IF NOT EXISTS attempts (id INTEGER PRIMARY KEY AUTOINCREMENT, subscription TEXT NOT NULL,
    seq INTEGER NOT NULL, event_id TEXT NOT NULL, message_id TEXT NOT NULL, at REAL NOT NULL, attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL, status INTEGER, latency_ms REAL, error TEXT, response TEXT);
CREATE INDEX IF NOT EXISTS attempts_subscription ON attempts (subscription, id);
CREATE INDEX IF NOT EXISTS attempts_outcome ON attempts (subscription, outcome, id);
CREATE INDEX IF NOT EXISTS attempts_at ON attempts (at);
"""


class SQLiteOutbox(Outbox):
    """The outbox in one SQLite file (WAL, fsync per write), written by one thread in call order;
    reads (the delivery log, start-up) on a second connection and thread, so a long read never
    holds the writes of every subscription back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="callhub-outbox")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="callhub-outbox-read")

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> asyncio.Future[list[Any]]:
        def run() -> list[Any]:
            if self._reader is None:
                raise Unavailable("the outbox is not open")
            return self._reader.execute(sql, args).fetchall()

        return asyncio.get_running_loop().run_in_executor(self._read_thread, run)

    async def start(self) -> None:
        await self._submit(self._open)

    def _open(self) -> None:
        self._db = _open_durable(self.path, _OUTBOX_SCHEMA)
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise Unavailable("the outbox is not open")
        return self._db

    async def subscriptions(self) -> list[tuple[dict[str, Any], int | None]]:
        rows = await self._read("SELECT document, cursor FROM subscriptions ORDER BY id")
        return [(orjson.loads(document), cursor) for document, cursor in rows]

    def save(self, document: dict[str, Any], *, cursor: int | None = None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._submit(self._save, document["id"], orjson.dumps(document), cursor)
        return future

    def _save(self, id_: str, document: bytes, cursor: int | None) -> None:
        self._conn.execute("INSERT INTO subscriptions (id, document, cursor) VALUES (?, ?, ?) ON CONFLICT(id) DO"
                           " UPDATE SET document = excluded.document, cursor = COALESCE(excluded.cursor, cursor)",
                           (id_, document, cursor))

    def update(self, subscription: str, fields: dict[str, Any], *, cursor: int | None = None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._submit(self._update, subscription, orjson.dumps(fields), cursor)
        return future

    def _update(self, id_: str, fields: bytes, cursor: int | None) -> None:
        with _transaction(self._conn) as db:
            row = db.execute("SELECT document FROM subscriptions WHERE id = ?", (id_,)).fetchone()
            if row is None:
                return
            document = orjson.loads(row[0])
            document.update(orjson.loads(fields))
            db.execute("UPDATE subscriptions SET document = ?, cursor = COALESCE(?, cursor) WHERE id = ?",
                       (orjson.dumps(document), cursor, id_))

    def delete(self, subscription: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._submit(self._delete, subscription)
        return future

    def _delete(self, subscription: str) -> None:
        with _transaction(self._conn) as db:
            for table, column in (("subscriptions", "id"), ("pending", "subscription"), ("attempts", "subscription")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (subscription,))  # noqa: S608

    def apply(self, changes: OutboxChanges) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._submit(self._apply, changes)
        return future

    def _apply(self, changes: OutboxChanges) -> None:
        with _transaction(self._conn) as db:
            if changes.settled:
                db.executemany("DELETE FROM pending WHERE subscription = ? AND seq = ?", changes.settled)
            if changes.pending:
                db.executemany("INSERT INTO pending (subscription, seq, key, attempts, next_at, state)"
                               " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (subscription, seq) DO UPDATE SET"
                               " key = excluded.key, attempts = excluded.attempts, next_at = excluded.next_at,"
                               " state = excluded.state", changes.pending)
            if changes.attempts:
                db.executemany("INSERT INTO attempts (subscription, seq, event_id, message_id, at, attempt, outcome,"
                               " status, latency_ms, error, response) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [a[1:] for a in changes.attempts])
            for subscription, cursor in changes.cursors.items():
                db.execute("UPDATE subscriptions SET cursor = MAX(COALESCE(cursor, 0), ?) WHERE id = ?",
                           (cursor, subscription))

    async def pending(self, subscription: str) -> list[Pending]:
        rows = await self._read("SELECT subscription, seq, key, attempts, next_at, state FROM pending"
                                " WHERE subscription = ? ORDER BY seq", (subscription,))
        return [Pending(*row) for row in rows]

    async def attempts(self, subscription: str, *, outcome: str | None, after: int, limit: int) -> list[Attempt]:
        sql = ("SELECT id, subscription, seq, event_id, message_id, at, attempt, outcome, status, latency_ms, error,"
               " response"
               " FROM attempts WHERE subscription = ? AND id > ?")
        args: list[Any] = [subscription, after]
        if outcome is not None:
            sql += " AND outcome = ?"
            args.append(outcome)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [Attempt(*row) for row in await self._read(sql, args)]

    async def prune(self, before: float) -> int:
        """In slices of PRUNE_SLICE rows, each its own write: other writes go in between."""
        removed = 0
        while True:
            count: int = await self._submit(lambda: self._conn.execute(
                "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at < ? LIMIT ?)",
                (before, PRUNE_SLICE)).rowcount)
            removed += count
            if count < PRUNE_SLICE:
                return removed

    async def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.get_running_loop().run_in_executor(self._read_thread, reader.close)
        if self._db is not None:
            await self._submit(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)
        self._read_thread.shutdown(wait=True)
