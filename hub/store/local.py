"""The embedded default: SQLite in WAL mode, one process, in-process fan-out.

Writes go through one writer thread that drains every append waiting in its queue into a
single transaction (group commit), so the cost of each fsync is shared by all the
publishers that arrived meanwhile. Only after `COMMIT` returns are the publishers
answered and the fan-out told, in seq order, on the event loop.

`seq` is assigned by the writer thread itself (it is the only writer), which lets it encode
each event's final JSON, `seq` included, once, before the insert. Retention never lowers
`trimmed_through`, and the next seq is always above both the highest stored and the
highest trimmed seq, so a seq is never reused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hub.config import Config
from hub.events import Event, encode_event
from hub.exceptions import InvalidEvent, Unavailable
from hub.matcher import TypeFilter
from hub.store.base import AppendResult, Backend, CommitListener, Page

logger = logging.getLogger("callhub.store")

#: Reader threads (history pages, catch-up); SQLite readers in WAL mode do not block the writer.
READER_THREADS = 4
#: Rows deleted per retention transaction, so retention never holds the write lock for long.
TRIM_CHUNK = 5000
#: Rows fetched per round trip while scanning history.
SCAN_CHUNK = 500
DB_FILE = "events.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq    INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    id     TEXT NOT NULL,
    type   TEXT NOT NULL,
    agent  TEXT,
    ts     INTEGER NOT NULL,   -- when the hub stored it, ms since the epoch (for retention by age)
    body   BLOB NOT NULL       -- the CloudEvent JSON, seq included, exactly as delivered
);
CREATE UNIQUE INDEX IF NOT EXISTS events_source_id ON events (source, id);
CREATE INDEX IF NOT EXISTS events_agent_seq ON events (agent, seq);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_STOP = object()
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


class _Append:
    __slots__ = ("event", "agent", "received", "future")

    def __init__(self, event: dict[str, Any], agent: str | None, received: float, future: asyncio.Future[AppendResult]):
        self.event = event
        self.agent = agent
        self.received = received
        self.future = future


class LocalBackend(Backend):
    def __init__(self, config: Config) -> None:
        self.path = Path(config.server.data_dir) / DB_FILE
        self.synchronous = config.backend.synchronous.upper()
        self.max_batch = config.backend.max_batch
        self.head = 0
        self.trimmed_through = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_commit: CommitListener | None = None
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="callhub-read")
        self._local = threading.local()
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
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
        self._readers.shutdown(wait=True)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        return conn

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
                cur = conn.execute(
                    "INSERT OR IGNORE INTO events (seq, source, id, type, agent, ts, body) VALUES (?,?,?,?,?,?,?)",
                    (seq, event["source"], event["id"], event["type"], item.agent, now_ms, body),
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

    async def read(
        self, after: int, *, limit: int, agent: str | None, types: TypeFilter, scan_limit: int
    ) -> Page:
        if self._closed or self._loop is None:
            raise Unavailable("the event store is closed")
        return await self._loop.run_in_executor(self._readers, self._read, after, limit, agent, types, scan_limit)

    async def find(self, *, path: str, value: str, agent: str | None, limit: int,
                   source: str | None = None) -> list[Event]:
        if self._closed or self._loop is None:
            raise Unavailable("the event store is closed")
        if not _DOTTED.fullmatch(path):
            raise ValueError(f"not a dotted path: {path!r}")
        return await self._loop.run_in_executor(self._readers, self._find, "$.data." + path, value, agent, limit,
                                                source)

    def _find(self, json_path: str, value: str, agent: str | None, limit: int, source: str | None) -> list[Event]:
        # SQLite's JSON functions read the stored body; the agent index narrows the scan.
        sql = "SELECT seq, type, agent, body FROM events WHERE json_extract(body, ?) = ?"
        args: list[Any] = [json_path, value]
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
        if self._closed or self._loop is None:
            raise Unavailable("the event store is closed")
        if limit < 1 or not types:
            raise ValueError("stored_between needs a positive limit and at least one type")
        return await self._loop.run_in_executor(
            self._readers, self._stored_between, since, until, sorted(types), source, after, limit
        )

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
