"""What is particular to the Redis backend (`hub/store/redis_streams.py`): several processes
appending to one log, each told of every commit once, and a Redis that forgot its scripts.

The contract every backend keeps is in `tests/test_store_contract.py`; processes on one Redis
in `tests/test_redis_cluster.py`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from redis import asyncio as aioredis

from hub.config import BackendConfig
from hub.events import Event, agent_of, prepare_event
from hub.exceptions import Unavailable
from hub.matcher import MATCH_ALL
from hub.store import open_backend
from hub.store.base import Backend
from tests.redis_server import RedisServer


class Process:
    """One hub process's view of the log: a backend on the shared keys and what it was told."""

    def __init__(self, url: str, prefix: str, data_dir: Path) -> None:
        self.backend: Backend = open_backend(BackendConfig(url=url, prefix=prefix), data_dir)
        self.told: list[tuple[int, bytes]] = []

    def on_commit(self, events: list[Event]) -> None:
        self.told.extend((event.seq, event.body) for event in events)

    async def append(self, n: int, agent: str | None = None) -> int:
        event = prepare_event({"type": "call.ringing", "source": "pbx", "data": {"n": n, "agent": agent}})
        return (await self.backend.append(event, agent=agent_of(event), received=0.0)).seq


def test_processes_appending_at_once_are_each_told_every_commit_once_in_seq_order_as_stored(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Each process reports its own appends without reading them back, unless another process's
    commits come before or between them: then those are read first. Either way every process is
    told every commit once, in seq order, with exactly the bytes the log holds."""

    async def main() -> tuple[list[Process], list[tuple[int, bytes]]]:
        processes = [Process(redis_server.url, "interleave:", tmp_path / str(i)) for i in range(3)]
        for process in processes:
            await process.backend.start(process.on_commit)
        try:
            for round_ in range(20):  # bursts from all three at once: batches interleave in Redis
                await asyncio.gather(*(p.append(round_ * 100 + i, agent=f"a{i % 4}")
                                       for i in range(30) for p in processes))
            await asyncio.sleep(0.3)  # the followers catch up with the last burst
            page = await processes[0].backend.read(0, limit=5000, agent=None, types=MATCH_ALL)
            return processes, [(e.seq, e.body) for e in page.events]
        finally:
            for process in processes:
                await process.backend.close()

    processes, stored = asyncio.run(main())
    assert [seq for seq, _ in stored] == list(range(1, 20 * 30 * 3 + 1))
    for process in processes:
        assert process.told == stored
    assert orjson.loads(stored[0][1])["seq"] == 1


def test_an_append_after_redis_forgot_its_scripts_is_stored_once(redis_server: RedisServer, tmp_path: Path) -> None:
    """`SCRIPT FLUSH` (or a Redis restarted without its cache) makes the next appends answer
    NOSCRIPT: the backend loads the script again and stores each of them once."""

    async def main() -> tuple[list[int], list[int], list[int]]:
        process = Process(redis_server.url, "flushed:", tmp_path)
        await process.backend.start(process.on_commit)
        admin = aioredis.Redis.from_url(redis_server.url)
        try:
            first = [await process.append(i) for i in range(3)]
            await admin.script_flush()
            alone = await process.append(9)  # a batch of one
            await admin.script_flush()
            after = list(await asyncio.gather(*(process.append(10 + i) for i in range(5))))  # one pipeline
            page = await process.backend.read(0, limit=100, agent=None, types=MATCH_ALL)
            return [*first, alone, *after], [e.seq for e in page.events], [seq for seq, _ in process.told]
        finally:
            await admin.aclose()
            await process.backend.close()

    seqs, stored, told = asyncio.run(main())
    assert sorted(seqs) == stored == told == list(range(1, 10))


def test_an_append_that_must_read_back_is_answered_when_the_store_closes_meanwhile(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A graceful shutdown waits for the writer; an append whose seq follows another process's
    commit this process has not reported yet reads the log back first, and is still answered
    (it once hung forever: the read went through the closed store's door)."""

    async def main() -> tuple[int, list[int]]:
        process = Process(redis_server.url, "closing:", tmp_path / "a")
        other = Process(redis_server.url, "closing:", tmp_path / "b")
        await process.backend.start(process.on_commit)
        await other.backend.start(other.on_commit)
        try:
            follower = process.backend._follower  # type: ignore[attr-defined]
            follower.cancel()  # this process will not hear of the other's commit by itself
            await asyncio.gather(follower, return_exceptions=True)
            await other.append(0)
            appending = asyncio.create_task(process.append(1))
            await asyncio.sleep(0)  # queued; the writer starts
            await process.backend.close()
            seq = await asyncio.wait_for(appending, 2.0)
            return seq, [s for s, _ in process.told]
        finally:
            await other.backend.close()

    seq, told = asyncio.run(main())
    assert seq == 2
    assert told == [1, 2]


def test_after_redis_restarts_the_first_reads_and_journal_reads_succeed(tmp_path: Path) -> None:
    """Pooled connections opened before Redis was killed are dead once it is back: the first
    reads given to them must not fail (they did, one per dead connection, with 503s on history
    and `/v1/subscriptions` until each had failed once)."""
    server = RedisServer(tmp_path / "redis").start()

    async def main() -> list[str]:
        process = Process(server.url, "restart:", tmp_path / "a")
        await process.backend.start(process.on_commit)
        journal = process.backend.journal()
        await journal.start()
        try:
            for i in range(3):
                await process.append(i)
            # Several connections in each pool, idle afterwards.
            await asyncio.gather(*(process.backend.read(0, limit=10, agent=None, types=MATCH_ALL) for _ in range(6)))
            await asyncio.gather(*(journal.cursor() for _ in range(4)))
            server.kill()
            await asyncio.to_thread(server.start)
            await asyncio.sleep(1.5)  # the follower finds Redis again
            outcomes = []
            for _ in range(6):
                try:
                    page = await process.backend.read(0, limit=10, agent=None, types=MATCH_ALL)
                    outcomes.append(f"read {len(page.events)}")
                except Unavailable as exc:
                    outcomes.append(f"read failed: {exc}")
            for _ in range(4):
                try:
                    outcomes.append(f"cursor {await journal.cursor()}")
                except Unavailable as exc:
                    outcomes.append(f"cursor failed: {exc}")
            return outcomes
        finally:
            await journal.close()
            await process.backend.close()

    try:
        outcomes = asyncio.run(main())
    finally:
        server.stop()
    assert outcomes == ["read 3"] * 6 + ["cursor None"] * 4
