"""The local backend (SQLite, one writer thread, group commit): what is particular to it.

What every backend must do is tested by `tests/test_store_contract.py`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import orjson
import pytest

from hub.config import BackendConfig, ConfigError
from hub.store import open_backend
from hub.store.local import DB_FILE, LocalBackend
from tests.helpers import TICK
from tests.test_store_contract import Store

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def rows_on_disk(data_dir: Path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT seq, source, id FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


def test_append_returns_after_the_row_is_on_disk(data_dir: Path) -> None:
    """When `append` returns, another connection already sees the event in the SQLite file."""

    async def main() -> None:
        async with Store("local", data_dir, durable=True) as store:
            seq = await store.append(id="on-disk", source="pbx")
            assert (seq, "pbx", "on-disk") in rows_on_disk(data_dir)

    run(main)


def test_duplicates_within_one_batch_return_the_original_seq(data_dir: Path) -> None:
    """Duplicates committed in the same transaction as their original get the original's seq."""

    async def main() -> None:
        async with Store("local", data_dir) as store:
            # Hold the write lock so that the appends below pile up into one group commit.
            backend = store.backend
            assert isinstance(backend, LocalBackend)
            blocker = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
            try:
                blocker.execute("BEGIN IMMEDIATE")
                first = asyncio.ensure_future(store.append(id="warm-up"))
                await asyncio.sleep(0)
                # The writer has taken the warm-up and is now waiting for the lock.
                deadline = asyncio.get_running_loop().time() + 200 * TICK
                while not backend._queue.empty():
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(TICK / 10)
                batch = asyncio.gather(
                    store.append_result(id="a", data={"n": 1}),
                    store.append_result(id="a", data={"n": 2}),
                    store.append_result(id="b"),
                    store.append_result(id="a", data={"n": 3}),
                    store.append_result(id="b"),
                )
                await asyncio.sleep(0)
                blocker.execute("COMMIT")
            finally:
                blocker.close()
            await first
            (a1, a2, b1, a3, b2) = await batch
            assert a1[1] is False and b1[1] is False
            assert a2 == (a1[0], True) and a3 == (a1[0], True)
            assert b2 == (b1[0], True)
            # One transaction for the batch: a and b are reported together, once each.
            assert [a1[0], b1[0]] in store.commits
            assert store.committed.count(a1[0]) == 1
            page = await store.read()
            assert [orjson.loads(e.body)["id"] for e in page.events] == ["warm-up", "a", "b"]
            assert orjson.loads(page.events[1].body)["data"] == {"n": 1}

    run(main)


def test_its_options_are_its_own_and_checked_with_their_keys(data_dir: Path) -> None:
    """`[backend] synchronous`/`max_batch` belong to the local backend; a bad one names its key."""
    backend = open_backend(BackendConfig(url="local", synchronous="full", max_batch=64), data_dir)
    assert isinstance(backend, LocalBackend) and backend.synchronous == "FULL" and backend.max_batch == 64
    with pytest.raises(ConfigError) as info:
        open_backend(BackendConfig(url="local", synchronous="sometimes", colour="red"), data_dir)
    assert {path for path, _ in info.value.problems} == {"backend.synchronous", "backend.colour"}
    with pytest.raises(ConfigError) as info:
        open_backend(BackendConfig(url="postgres://db"), data_dir)
    assert info.value.problems[0][0] == "backend.url"


def test_a_log_from_before_the_indexed_fields_is_indexed_when_opened(data_dir: Path) -> None:
    """An events.db written before `call_id`/`recording` were columns: opening it fills them in, once."""
    data_dir.mkdir(parents=True)
    old = sqlite3.connect(data_dir / DB_FILE)
    old.executescript("""
        CREATE TABLE events (seq INTEGER PRIMARY KEY, source TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
                             agent TEXT, ts INTEGER NOT NULL, body BLOB NOT NULL);
        CREATE UNIQUE INDEX events_source_id ON events (source, id);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """)
    body = {"id": "e1", "source": "antring", "type": "call.ended", "seq": 1,
            "data": {"call_id": "c9", "recording": "r9.mp3", "agent": "alice"}}
    old.execute("INSERT INTO events VALUES (1, 'antring', 'e1', 'call.ended', 'alice', 0, ?)",
                (json.dumps(body).encode(),))
    old.commit()
    old.close()

    async def main() -> None:
        async with Store("local", data_dir) as store:
            found = await store.backend.find("recording", "r9.mp3", agent="alice", source="antring", limit=5)
            assert [e.seq for e in found] == [1]
            assert [e.seq for e in await store.backend.find("call_id", "c9", agent=None, source=None, limit=5)] == [1]
            assert await store.append(id="e2") == 2

    run(main)
    run(main)  # opened again: nothing to migrate, the same answers


def test_the_journal_is_a_file_of_its_own_beside_the_log(data_dir: Path) -> None:
    """actions.db beside events.db: the journal's fsyncs never wait behind the log's."""

    async def main() -> None:
        backend = open_backend(BackendConfig(url="local"), data_dir)
        journal = backend.journal()
        await journal.start()
        await journal.set_cursor(3)
        await journal.close()

    run(main)
    assert (data_dir / "actions.db").exists() and not (data_dir / DB_FILE).exists()
