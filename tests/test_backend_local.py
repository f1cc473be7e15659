"""The SQLite backend (`hub.backends.local.LocalBackend`) used directly, without the HTTP app."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from hub.events import Event, agent_of, prepare_event
from hub.exceptions import Unavailable
from hub.matcher import MATCH_ALL, TypeFilter
from hub.store.base import Page
from hub.store.local import DB_FILE, LocalBackend
from tests.helpers import TICK, make_config

T = TypeVar("T")


class Store:
    """A started LocalBackend plus everything it reported through `on_commit`."""

    def __init__(self, data_dir: Path, *, synchronous: str = "normal") -> None:
        # `normal` (no fsync per commit) keeps the tests fast; durability tests use `full`.
        self.backend = LocalBackend(make_config(data_dir, backend={"synchronous": synchronous}))
        self.commits: list[list[int]] = []

    def on_commit(self, events: list[Event]) -> None:
        self.commits.append([e.seq for e in events])

    @property
    def committed(self) -> list[int]:
        return [seq for batch in self.commits for seq in batch]

    async def __aenter__(self) -> Store:
        await self.backend.start(self.on_commit)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.backend.close()

    async def append(self, type_: str = "call.ringing", **attrs: Any) -> int:
        result = await self.append_result(type_, **attrs)
        return result[0]

    async def append_result(self, type_: str = "call.ringing", **attrs: Any) -> tuple[int, bool]:
        event = prepare_event({"type": type_, **attrs})
        result = await self.backend.append(event, agent=agent_of(event), received=0.0)
        return result.seq, result.duplicate

    async def read(
        self, after: int = 0, *, limit: int = 1000, agent: str | None = None, types: TypeFilter = MATCH_ALL,
        scan_limit: int = 100_000,
    ) -> Page:
        return await self.backend.read(after, limit=limit, agent=agent, types=types, scan_limit=scan_limit)

    async def seqs(self, after: int = 0, **kwargs: Any) -> list[int]:
        return [e.seq for e in (await self.read(after, **kwargs)).events]


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def rows_on_disk(data_dir: Path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT seq, source, id FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


# -- appends and seq ----------------------------------------------------------------------------


def test_concurrent_appends_get_distinct_increasing_seqs(data_dir: Path) -> None:
    """Many concurrent appends each get their own seq; seqs rise in commit order with no reuse."""

    async def main() -> tuple[list[int], list[list[int]], list[int]]:
        async with Store(data_dir) as store:
            results = await asyncio.gather(*(store.append(n=i) for i in range(400)))
            return results, store.commits, await store.seqs()

    results, commits, stored = run(main)
    assert len(set(results)) == 400
    flat = [seq for batch in commits for seq in batch]
    assert flat == sorted(flat)  # on_commit reports in seq order
    assert len(flat) == len(set(flat)) == 400  # exactly once each
    assert set(flat) == set(results) == set(stored)
    assert all(batch == sorted(batch) and batch for batch in commits)
    assert stored == sorted(stored)


def test_on_commit_runs_before_the_append_returns(data_dir: Path) -> None:
    """By the time `append` returns, on_commit has already been told about that seq."""

    async def main() -> None:
        async with Store(data_dir) as store:
            for i in range(5):
                seq = await store.append(n=i)
                assert store.committed[-1] == seq
                assert store.backend.head == seq

    run(main)


def test_append_returns_after_the_row_is_on_disk(data_dir: Path) -> None:
    """When `append` returns, another connection already sees the event in the SQLite file."""

    async def main() -> None:
        async with Store(data_dir, synchronous="full") as store:
            seq = await store.append(id="on-disk", source="pbx")
            assert (seq, "pbx", "on-disk") in rows_on_disk(data_dir)

    run(main)


def test_stored_body_carries_seq_and_attributes(data_dir: Path) -> None:
    """The stored JSON is the CloudEvent with its seq, served as-is by read()."""

    async def main() -> Page:
        async with Store(data_dir) as store:
            await store.append("call.answered", id="b-1", source="pbx", data={"agent": "alice", "k": [1]})
            return await store.read()

    page = run(main)
    (ev,) = page.events
    body = orjson.loads(ev.body)
    assert body["seq"] == ev.seq == 1
    assert body["id"] == "b-1" and body["source"] == "pbx" and body["type"] == "call.answered"
    assert body["data"] == {"agent": "alice", "k": [1]}
    assert ev.type == "call.answered" and ev.agent == "alice"


# -- duplicates ---------------------------------------------------------------------------------


def test_duplicates_within_one_batch_return_the_original_seq(data_dir: Path) -> None:
    """Duplicates committed in the same transaction as their original get the original's seq."""

    async def main() -> None:
        async with Store(data_dir) as store:
            # Hold the write lock so that the appends below pile up into one group commit.
            blocker = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
            try:
                blocker.execute("BEGIN IMMEDIATE")
                first = asyncio.ensure_future(store.append(id="warm-up"))
                await asyncio.sleep(0)
                # The writer has taken the warm-up and is now waiting for the lock.
                deadline = asyncio.get_running_loop().time() + 200 * TICK
                while not store.backend._queue.empty():
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


def test_duplicates_across_batches_return_the_original_seq(data_dir: Path) -> None:
    """A duplicate appended later gets the original seq, is not stored and is not reported."""

    async def main() -> None:
        async with Store(data_dir) as store:
            original = await store.append_result(id="x", source="pbx", data={"v": 1})
            other = await store.append(id="y", source="pbx")
            again = await store.append_result(id="x", source="pbx", data={"v": 2})
            assert original[1] is False
            assert again == (original[0], True)
            assert store.committed == [original[0], other]
            next_seq = await store.append(id="z")
            assert next_seq > other
            assert len((await store.read()).events) == 3

    run(main)


def test_same_id_from_another_source_is_not_a_duplicate(data_dir: Path) -> None:
    """Dedup is on (source, id): the same id from another source is stored."""

    async def main() -> None:
        async with Store(data_dir) as store:
            a = await store.append_result(id="same", source="one")
            b = await store.append_result(id="same", source="two")
            assert not a[1] and not b[1] and a[0] != b[0]

    run(main)


def test_concurrent_duplicates_store_one_event(data_dir: Path) -> None:
    """Many concurrent appends of the same event store it once and all get its seq."""

    async def main() -> None:
        async with Store(data_dir) as store:
            results = await asyncio.gather(*(store.append_result(id="storm", source="pbx") for _ in range(50)))
            seqs = {seq for seq, _ in results}
            assert len(seqs) == 1
            assert sum(1 for _, dup in results if not dup) == 1
            assert len(store.committed) == 1

    run(main)


# -- durability ---------------------------------------------------------------------------------


def test_data_survives_close_and_reopen(data_dir: Path) -> None:
    """Events, their seqs and dedup survive closing and reopening the store."""

    async def write() -> list[bytes]:
        async with Store(data_dir, synchronous="full") as store:
            for i in range(10):
                await store.append(id=f"e{i}", data={"agent": "alice" if i % 2 else "bob", "i": i})
            return [e.body for e in (await store.read()).events]

    async def reopen() -> None:
        async with Store(data_dir, synchronous="full") as store:
            assert store.backend.head == 10
            page = await store.read()
            assert [e.body for e in page.events] == before
            assert [e.seq for e in page.events] == list(range(1, 11))
            assert await store.append_result(id="e3") == (4, True)
            assert await store.append(id="new") == 11

    before = run(write)
    run(reopen)


def test_closed_store_refuses_appends(data_dir: Path) -> None:
    """After close, append and read answer Unavailable instead of hanging."""

    async def main() -> None:
        store = Store(data_dir)
        async with store:
            await store.append()
        with pytest.raises(Unavailable):
            await store.append()
        with pytest.raises(Unavailable):
            await store.read()

    run(main)


# -- retention ----------------------------------------------------------------------------------


def test_trim_by_count_removes_the_oldest(data_dir: Path) -> None:
    """Trimming to a count keeps the newest events and advances trimmed_through."""

    async def main() -> None:
        async with Store(data_dir) as store:
            for i in range(10):
                await store.append(n=i)
            removed = await store.backend.trim(max_age=0, max_count=3)
            assert removed == 7
            page = await store.read()
            assert [e.seq for e in page.events] == [8, 9, 10]
            assert page.trimmed_through == 7
            assert store.backend.trimmed_through == 7
            # Trimming again to the same count removes nothing and keeps the mark.
            assert await store.backend.trim(max_age=0, max_count=3) == 0
            assert (await store.read()).trimmed_through == 7

    run(main)


def test_trim_by_age_removes_the_oldest(data_dir: Path) -> None:
    """Trimming by age removes events older than the age, keeps the newer ones."""

    async def main() -> None:
        async with Store(data_dir) as store:
            old = [await store.append(n=i) for i in range(3)]
            await asyncio.sleep(6 * TICK)
            new = [await store.append(n=i) for i in range(2)]
            removed = await store.backend.trim(max_age=3 * TICK, max_count=0)
            assert removed == 3
            page = await store.read()
            assert [e.seq for e in page.events] == new
            assert page.trimmed_through == old[-1]
            assert store.backend.trimmed_through == old[-1]

    run(main)


def test_trim_with_no_limits_removes_nothing(data_dir: Path) -> None:
    """With age 0 and count 0 (keep forever), trim removes nothing."""

    async def main() -> None:
        async with Store(data_dir) as store:
            for _ in range(4):
                await store.append()
            assert await store.backend.trim(max_age=0, max_count=0) == 0
            assert await store.seqs() == [1, 2, 3, 4]
            assert (await store.read()).trimmed_through == 0

    run(main)


def test_read_after_trimmed_range_reports_it(data_dir: Path) -> None:
    """A read starting inside the trimmed range returns what is left and the trim mark."""

    async def main() -> None:
        async with Store(data_dir) as store:
            for _ in range(6):
                await store.append()
            await store.backend.trim(max_age=0, max_count=2)
            page = await store.read(after=1)
            assert [e.seq for e in page.events] == [5, 6]
            assert page.trimmed_through == 4

    run(main)


def test_seqs_are_never_reused_after_trimming_everything(data_dir: Path) -> None:
    """After every event is trimmed and the store reopened, the next seq is above all used."""

    async def fill() -> int:
        async with Store(data_dir) as store:
            seqs = [await store.append(id=f"e{i}") for i in range(5)]
            await asyncio.sleep(4 * TICK)
            assert await store.backend.trim(max_age=TICK, max_count=0) == 5
            page = await store.read()
            assert page.events == [] and page.trimmed_through == 5
            # Without a restart too, the next seq keeps rising.
            later = await store.append(id="after-trim")
            assert later == 6
            await asyncio.sleep(4 * TICK)
            assert await store.backend.trim(max_age=TICK, max_count=0) == 1
            return max(seqs + [later])

    async def reopen(highest: int) -> None:
        async with Store(data_dir) as store:
            assert store.backend.trimmed_through == highest
            assert store.backend.head >= highest
            page = await store.read()
            assert page.events == [] and page.trimmed_through == highest and page.next >= highest
            seq = await store.append(id="fresh")
            assert seq > highest
            assert store.committed == [seq]

    highest = run(fill)
    assert rows_on_disk(data_dir) == []
    run(lambda: reopen(highest))


def test_trimmed_through_never_goes_back(data_dir: Path) -> None:
    """A smaller trim after a larger one does not lower trimmed_through."""

    async def main() -> None:
        async with Store(data_dir) as store:
            for _ in range(10):
                await store.append()
            await store.backend.trim(max_age=0, max_count=2)
            await store.backend.trim(max_age=0, max_count=5)
            page = await store.read()
            assert page.trimmed_through == 8
            assert [e.seq for e in page.events] == [9, 10]

    run(main)


# -- reads --------------------------------------------------------------------------------------


def test_read_filters_by_agent_and_types(data_dir: Path) -> None:
    """read() returns only the agent's events and only types matching the filter."""

    async def main() -> None:
        async with Store(data_dir) as store:
            s = {}
            s["a_ring"] = await store.append("call.ringing", data={"agent": "alice"})
            s["b_ring"] = await store.append("call.ringing", data={"agent": "bob"})
            s["a_camp"] = await store.append("campaign.started", data={"agent": "alice"})
            s["none"] = await store.append("call.ended")
            s["a_leg"] = await store.append("call.leg.bridged", data={"agent": "alice"})
            s["a_stat"] = await store.append("agent.status", data={"agent": "alice"})

            assert await store.seqs(agent="alice") == [s["a_ring"], s["a_camp"], s["a_leg"], s["a_stat"]]
            calls = TypeFilter(("call.*",))
            assert await store.seqs(types=calls) == [s["a_ring"], s["b_ring"], s["none"], s["a_leg"]]
            assert await store.seqs(agent="alice", types=calls) == [s["a_ring"], s["a_leg"]]
            assert await store.seqs(agent="alice", types=TypeFilter(("call.*", "agent.*"))) == [
                s["a_ring"], s["a_leg"], s["a_stat"],
            ]
            # `allowed` (a token's types claim) narrows what was asked for.
            narrowed = TypeFilter(("call.*", "campaign.*"), ("campaign.*",))
            assert await store.seqs(types=narrowed) == [s["a_camp"]]
            assert await store.seqs(agent="carol") == []
            assert await store.seqs(types=TypeFilter(("call.ringing",))) == [s["a_ring"], s["b_ring"]]

    run(main)


def test_read_pages_with_limit_and_next(data_dir: Path) -> None:
    """Following `next` with a small limit returns every matching event once, in order."""

    async def main() -> None:
        async with Store(data_dir) as store:
            want = []
            for i in range(40):
                agent = "alice" if i % 3 == 0 else "bob"
                seq = await store.append("call.ringing" if i % 2 else "agent.status", data={"agent": agent})
                if agent == "alice" and i % 2:
                    want.append(seq)
            seen: list[int] = []
            after = 0
            for _ in range(100):
                page = await store.read(after, limit=2, agent="alice", types=TypeFilter(("call.*",)))
                assert len(page.events) <= 2
                if not page.events:
                    break
                seen.extend(e.seq for e in page.events)
                assert page.next >= page.events[-1].seq
                after = page.next
            assert seen == want
            assert page.head == 40

    run(main)


def test_read_with_small_scan_limit_loses_nothing(data_dir: Path) -> None:
    """A narrow filter with a bounded scan may return short pages, but `next` never skips a match."""

    async def main() -> None:
        async with Store(data_dir) as store:
            want = []
            for i in range(30):
                seq = await store.append("rare.event" if i in (11, 12, 29) else "call.ringing")
                if i in (11, 12, 29):
                    want.append(seq)
            seen: list[int] = []
            after = 0
            for _ in range(100):
                page = await store.read(after, limit=5, types=TypeFilter(("rare.*",)), scan_limit=4)
                seen.extend(e.seq for e in page.events)
                if page.next == after:
                    break
                assert page.next > after
                after = page.next
            assert seen == want

    run(main)


def test_read_limit_is_respected(data_dir: Path) -> None:
    """read() returns at most `limit` events, and `next` is the last one returned."""

    async def main() -> None:
        async with Store(data_dir) as store:
            for _ in range(12):
                await store.append()
            page = await store.read(limit=5)
            assert [e.seq for e in page.events] == [1, 2, 3, 4, 5]
            assert page.next == 5
            page = await store.read(10, limit=5)
            assert [e.seq for e in page.events] == [11, 12]
            assert page.next == 12

    run(main)


def test_check_writable_passes_on_open_store(data_dir: Path) -> None:
    """check_writable succeeds on an open store and fails once it is closed."""

    async def main() -> None:
        store = Store(data_dir)
        async with store:
            await store.backend.check_writable(200 * TICK)
        with pytest.raises(Unavailable):
            await store.backend.check_writable(200 * TICK)

    run(main)
