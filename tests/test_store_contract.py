"""The store contract (`hub.store.base`), tested once for every backend.

Every test here runs against each backend `SCHEMES` names (`BACKENDS`): a new backend module is
tested by this same suite, unchanged. What is particular to one backend (its files, its writer
thread) is tested beside it (`tests/test_store_local.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from hub.config import BackendConfig
from hub.events import Event, agent_of, prepare_event
from hub.exceptions import Unavailable
from hub.matcher import MATCH_ALL, TypeFilter
from hub.store import SCHEMES, open_backend
from hub.store.base import Attempt, Backend, JournalEntry, OutboxChanges, Page, Pending
from tests.helpers import TICK

T = TypeVar("T")
#: Every backend the suite runs against (`rediss` is `redis` over TLS: the same module).
BACKENDS = sorted(set(SCHEMES) - {"rediss"})
#: Options that keep each backend fast under test (durability tests ask for more).
FAST: dict[str, dict[str, Any]] = {"local": {"synchronous": "normal"}}
DURABLE: dict[str, dict[str, Any]] = {"local": {"synchronous": "full"}}
#: The URL each backend is opened with ("redis" is filled in by the `kind` fixture).
URLS: dict[str, str] = {"local": "local"}


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "redis":
        URLS["redis"] = request.getfixturevalue("redis_server").url
    return name


def backend_config(kind: str, data_dir: Path, *, durable: bool = False) -> BackendConfig:
    """The config that opens `kind`'s backend for one test: Redis keys under a prefix of the
    test's own (its data directory), so tests never see each other's keys."""
    options = dict((DURABLE if durable else FAST).get(kind, {}))
    if kind == "redis":
        options["prefix"] = f"t{abs(hash(str(data_dir))):x}:"
    return BackendConfig(url=URLS[kind], **options)


class Store:
    """A started backend plus everything it reported through `on_commit`."""

    def __init__(self, kind: str, data_dir: Path, *, durable: bool = False) -> None:
        self.backend: Backend = open_backend(backend_config(kind, data_dir, durable=durable), data_dir)
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

    async def read(self, after: int = 0, *, limit: int = 1000, agent: str | None = None,
                   types: TypeFilter = MATCH_ALL) -> Page:
        return await self.backend.read(after, limit=limit, agent=agent, types=types)

    async def seqs(self, after: int = 0, **kwargs: Any) -> list[int]:
        return [e.seq for e in (await self.read(after, **kwargs)).events]


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def ids(events: list[Event]) -> list[str]:
    return [orjson.loads(e.body)["id"] for e in events]


# -- appends, seqs, duplicates, durability ---------------------------------------------------


def test_concurrent_appends_get_distinct_increasing_seqs(kind: str, data_dir: Path) -> None:
    """Many concurrent appends each get their own seq; seqs rise in commit order with no reuse."""

    async def main() -> tuple[list[int], list[list[int]], list[int]]:
        async with Store(kind, data_dir) as store:
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


def test_on_commit_runs_before_the_append_returns(kind: str, data_dir: Path) -> None:
    """By the time `append` returns, on_commit has already been told about that seq."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            for i in range(5):
                seq = await store.append(n=i)
                assert store.committed[-1] == seq
                assert store.backend.head == seq

    run(main)


def test_stored_body_carries_seq_and_attributes(kind: str, data_dir: Path) -> None:
    """The stored JSON is the CloudEvent with its seq, served as-is by read()."""

    async def main() -> Page:
        async with Store(kind, data_dir) as store:
            await store.append("call.answered", id="b-1", source="pbx", data={"agent": "alice", "k": [1]})
            return await store.read()

    page = run(main)
    (ev,) = page.events
    body = orjson.loads(ev.body)
    assert body["seq"] == ev.seq == 1
    assert body["id"] == "b-1" and body["source"] == "pbx" and body["type"] == "call.answered"
    assert body["data"] == {"agent": "alice", "k": [1]}
    assert ev.type == "call.answered" and ev.agent == "alice"


def test_duplicates_across_batches_return_the_original_seq(kind: str, data_dir: Path) -> None:
    """A duplicate appended later gets the original seq, is not stored and is not reported."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
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


def test_same_id_from_another_source_is_not_a_duplicate(kind: str, data_dir: Path) -> None:
    """Dedup is on (source, id): the same id from another source is stored."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            a = await store.append_result(id="same", source="one")
            b = await store.append_result(id="same", source="two")
            assert not a[1] and not b[1] and a[0] != b[0]

    run(main)


def test_concurrent_duplicates_store_one_event(kind: str, data_dir: Path) -> None:
    """Many concurrent appends of the same event store it once and all get its seq."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            results = await asyncio.gather(*(store.append_result(id="storm", source="pbx") for _ in range(50)))
            seqs = {seq for seq, _ in results}
            assert len(seqs) == 1
            assert sum(1 for _, dup in results if not dup) == 1
            assert len(store.committed) == 1

    run(main)


def test_data_survives_close_and_reopen(kind: str, data_dir: Path) -> None:
    """Events, their seqs and dedup survive closing and reopening the store."""

    async def write() -> list[bytes]:
        async with Store(kind, data_dir, durable=True) as store:
            for i in range(10):
                await store.append(id=f"e{i}", data={"agent": "alice" if i % 2 else "bob", "i": i})
            return [e.body for e in (await store.read()).events]

    async def reopen() -> None:
        async with Store(kind, data_dir, durable=True) as store:
            assert store.backend.head == 10
            page = await store.read()
            assert [e.body for e in page.events] == before
            assert [e.seq for e in page.events] == list(range(1, 11))
            assert await store.append_result(id="e3") == (4, True)
            assert await store.append(id="new") == 11

    before = run(write)
    run(reopen)


def test_closed_store_refuses_appends(kind: str, data_dir: Path) -> None:
    """After close, append and read answer Unavailable instead of hanging."""

    async def main() -> None:
        store = Store(kind, data_dir)
        async with store:
            await store.append()
        with pytest.raises(Unavailable):
            await store.append()
        with pytest.raises(Unavailable):
            await store.read()

    run(main)


# -- retention --------------------------------------------------------------------------------


def test_trim_by_count_removes_the_oldest(kind: str, data_dir: Path) -> None:
    """Trimming to a count keeps the newest events and advances trimmed_through."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            for i in range(10):
                await store.append(n=i)
            removed = await store.backend.trim(max_age=0, max_count=3)
            assert removed == 7
            page = await store.read()
            assert [e.seq for e in page.events] == [8, 9, 10]
            assert page.trimmed_through == 7
            # Trimming again to the same count removes nothing and keeps the mark.
            assert await store.backend.trim(max_age=0, max_count=3) == 0
            assert (await store.read()).trimmed_through == 7

    run(main)


def test_trim_by_age_removes_the_oldest(kind: str, data_dir: Path) -> None:
    """Trimming by age removes events older than the age, keeps the newer ones."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            old = [await store.append(n=i) for i in range(3)]
            await asyncio.sleep(6 * TICK)
            new = [await store.append(n=i) for i in range(2)]
            removed = await store.backend.trim(max_age=3 * TICK, max_count=0)
            assert removed == 3
            page = await store.read()
            assert [e.seq for e in page.events] == new
            assert page.trimmed_through == old[-1]

    run(main)


def test_trim_with_no_limits_removes_nothing(kind: str, data_dir: Path) -> None:
    """With age 0 and count 0 (keep forever), trim removes nothing."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            for _ in range(4):
                await store.append()
            assert await store.backend.trim(max_age=0, max_count=0) == 0
            assert await store.seqs() == [1, 2, 3, 4]
            assert (await store.read()).trimmed_through == 0

    run(main)


def test_read_after_trimmed_range_reports_it(kind: str, data_dir: Path) -> None:
    """A read starting inside the trimmed range returns what is left and the trim mark."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            for _ in range(6):
                await store.append()
            await store.backend.trim(max_age=0, max_count=2)
            page = await store.read(after=1)
            assert [e.seq for e in page.events] == [5, 6]
            assert page.trimmed_through == 4

    run(main)


def test_trimmed_through_never_goes_back(kind: str, data_dir: Path) -> None:
    """A smaller trim after a larger one does not lower trimmed_through."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            for _ in range(10):
                await store.append()
            await store.backend.trim(max_age=0, max_count=2)
            await store.backend.trim(max_age=0, max_count=5)
            page = await store.read()
            assert page.trimmed_through == 8
            assert [e.seq for e in page.events] == [9, 10]

    run(main)


# -- reads ------------------------------------------------------------------------------------


def test_read_filters_by_agent_and_types(kind: str, data_dir: Path) -> None:
    """read() returns only the agent's events and only types matching the filter."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
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


def test_read_pages_with_limit_and_next(kind: str, data_dir: Path) -> None:
    """Following `next` with a small limit returns every matching event once, in order."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
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


def test_read_limit_is_respected(kind: str, data_dir: Path) -> None:
    """read() returns at most `limit` events, and `next` is the last one returned."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            for _ in range(12):
                await store.append()
            page = await store.read(limit=5)
            assert [e.seq for e in page.events] == [1, 2, 3, 4, 5]
            assert page.next == 5
            page = await store.read(10, limit=5)
            assert [e.seq for e in page.events] == [11, 12]
            assert page.next == 12

    run(main)


def test_check_writable_passes_on_open_store(kind: str, data_dir: Path) -> None:
    """check_writable succeeds on an open store and fails once it is closed."""

    async def main() -> None:
        store = Store(kind, data_dir)
        async with store:
            await store.backend.check_writable(200 * TICK)
        with pytest.raises(Unavailable):
            await store.backend.check_writable(200 * TICK)

    run(main)


def test_a_narrow_read_may_come_back_short_but_never_skips_a_match(kind: str, data_dir: Path) -> None:
    """With rare matches among many events, the backend's own scan budget may end a page early;
    following `next` still finds every match, once, in order."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            rare = {17, 2100, 2999}
            want = []
            for start in range(0, 3000, 500):
                seqs = await asyncio.gather(*(store.append("rare.event" if i in rare else "call.ringing", id=f"e{i}")
                                              for i in range(start, start + 500)))
                want += [seq for i, seq in zip(range(start, start + 500), seqs, strict=True) if i in rare]
            seen: list[int] = []
            after = 0
            for _ in range(1000):
                page = await store.read(after, limit=5, types=TypeFilter(("rare.*",)))
                seen.extend(e.seq for e in page.events)
                if page.next == after:
                    break
                assert page.next > after
                after = page.next
            assert seen == sorted(want)

    run(main)


def test_get_answers_one_stored_event_by_seq(kind: str, data_dir: Path) -> None:
    """`get(seq)`: the event as stored; None for a seq never used or trimmed away."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            first = await store.append(id="one")
            second = await store.append(id="two")
            got = await store.backend.get(second)
            assert got is not None and got.seq == second and orjson.loads(got.body)["id"] == "two"
            assert await store.backend.get(second + 5) is None
            await store.backend.trim(max_age=0, max_count=1)
            assert await store.backend.get(first) is None

    run(main)


def test_find_looks_up_the_indexed_fields_newest_first(kind: str, data_dir: Path) -> None:
    """`find("call_id" | "recording", value)`, narrowed by agent and source, newest first, at most `limit`."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            r1 = await store.append("call.ringing", source="antring", data={"call_id": "c1", "agent": "alice"})
            e1 = await store.append("call.ended", source="antring",
                                    data={"call_id": "c1", "agent": "alice", "recording": "r1.mp3"})
            await store.append("call.ended", source="pbx", data={"call_id": "c1", "recording": "r1.mp3"})
            await store.append("call.ended", source="antring", data={"call_id": "c2", "agent": "bob"})
            await store.append("x.other", data={"call_id": 42})  # not a string: not indexed

            by_call = await store.backend.find("call_id", "c1", agent=None, source="antring", limit=10)
            assert [e.seq for e in by_call] == [e1, r1]
            assert [e.seq for e in await store.backend.find("call_id", "c1", agent="alice", source=None, limit=1)] == [e1]
            recording = await store.backend.find("recording", "r1.mp3", agent="alice", source="antring", limit=10)
            assert [e.seq for e in recording] == [e1]
            assert await store.backend.find("recording", "r1.mp3", agent="bob", source=None, limit=10) == []
            assert await store.backend.find("call_id", "42", agent=None, source=None, limit=10) == []
            with pytest.raises(ValueError):
                await store.backend.find("data.anything", "x", agent=None, source=None, limit=1)  # type: ignore[arg-type]

    run(main)


def test_seqs_are_never_reused_after_trimming_everything(kind: str, data_dir: Path) -> None:
    """After every event is trimmed and the store reopened, the next seq is above all used."""

    async def fill() -> int:
        async with Store(kind, data_dir) as store:
            seqs = [await store.append(id=f"e{i}") for i in range(5)]
            await asyncio.sleep(4 * TICK)
            assert await store.backend.trim(max_age=TICK, max_count=0) == 5
            page = await store.read()
            assert page.events == [] and page.trimmed_through == 5
            later = await store.append(id="after-trim")  # without a restart too, the next seq keeps rising
            assert later == 6
            await asyncio.sleep(4 * TICK)
            assert await store.backend.trim(max_age=TICK, max_count=0) == 1
            return max(seqs + [later])

    async def reopen(highest: int) -> None:
        async with Store(kind, data_dir) as store:
            assert store.backend.head >= highest
            page = await store.read()
            assert page.events == [] and page.trimmed_through == highest and page.next >= highest
            seq = await store.append(id="fresh")
            assert seq > highest
            assert store.committed == [seq]

    highest = run(fill)
    run(lambda: reopen(highest))


# -- what was stored in a window (reconciliation) -----------------------------------------------------------


async def _append(store: Store, type_: str, id_: str, source: str = "antring") -> None:
    await store.append(type_, id=id_, source=source)


def test_only_events_stored_inside_the_window_of_the_given_types_and_source(kind: str, data_dir: Path) -> None:
    """Before and after the window, other types and other sources are left out; oldest first."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            await _append(store, "call.ended", "before")
            await asyncio.sleep(TICK)
            since = time.time()
            await _append(store, "call.ringing", "in-1")
            await _append(store, "call.held", "other-type")
            await _append(store, "call.ended", "other-source", source="vbee")
            await _append(store, "call.ended", "in-2")
            until = time.time()
            await asyncio.sleep(TICK)
            await _append(store, "call.ended", "after")
            found = await store.backend.stored_between(since=since, until=until, types={"call.ringing", "call.ended"},
                                                       source="antring", after=0, limit=100)
            assert ids(found) == ["in-1", "in-2"]
            anyone = await store.backend.stored_between(since=since, until=until, types={"call.ended"}, source=None,
                                                        after=0, limit=100)
            assert ids(anyone) == ["other-source", "in-2"]

    run(main)


def test_a_window_pages_on_after_the_last_seq(kind: str, data_dir: Path) -> None:
    """`limit` bounds a page; `after` = the last seq answered reads the next one, until none is left."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            since = time.time()
            for n in range(5):
                await _append(store, "call.ended", f"e{n}")
            until = time.time()
            pages: list[list[str]] = []
            after = 0
            while True:
                page = await store.backend.stored_between(since=since, until=until, types={"call.ended"},
                                                          source="antring", after=after, limit=2)
                if not page:
                    break
                pages.append(ids(page))
                after = page[-1].seq
            assert pages == [["e0", "e1"], ["e2", "e3"], ["e4"]]

    run(main)


def test_a_window_with_nothing_stored_is_empty(kind: str, data_dir: Path) -> None:
    """A window after everything stored (or an empty store) answers no events."""

    async def main() -> None:
        async with Store(kind, data_dir) as store:
            assert await store.backend.stored_between(since=0, until=time.time(), types={"call.ended"}, source=None,
                                                      after=0, limit=10) == []
            await _append(store, "call.ended", "old")
            later = time.time() + 60
            assert await store.backend.stored_between(since=later, until=later + 60, types={"call.ended"},
                                                      source=None, after=0, limit=10) == []

    run(main)


# -- leases --------------------------------------------------------------------------------------------------


def test_a_lease_has_one_holder_at_a_time_and_each_new_holder_a_higher_fencing_token(
        kind: str, data_dir: Path) -> None:
    """Two users of one store (two processes, on Redis) compete for a lease: one holds it until
    it lapses or is released; whoever takes it next gets a higher token."""

    async def main() -> None:
        async with Store(kind, data_dir) as a, Store(kind, data_dir) as b:
            first, second = a.backend.lease("antring", 0.3), b.backend.lease("antring", 0.3)
            token = await first.acquire()
            assert token is not None
            assert await second.acquire() is None
            assert await first.acquire() == token  # asking again while holding keeps the token
            assert await first.renew()
            assert await b.backend.lease("another", 0.3).acquire() is not None  # names are independent
            await asyncio.sleep(0.45)  # lapsed: not renewed within its ttl
            taken = await second.acquire()
            assert taken is not None and taken > token
            assert not await first.renew() and await first.acquire() is None
            await second.release()
            again = await first.acquire()
            assert again is not None and again > taken

    run(main)


# -- the rules journal ---------------------------------------------------------------------------------------


class Opened:
    """A backend's side store (`journal()`, `outbox()`), started and closed on its own."""

    def __init__(self, kind: str, data_dir: Path, part: str) -> None:
        self.part = getattr(open_backend(backend_config(kind, data_dir), data_dir), part)()

    async def __aenter__(self) -> Any:
        await self.part.start()
        return self.part

    async def __aexit__(self, *exc: Any) -> None:
        await self.part.close()


def Journaled(kind: str, data_dir: Path) -> Opened:  # noqa: N802 - reads as the context it makes
    return Opened(kind, data_dir, "journal")


def Outboxed(kind: str, data_dir: Path) -> Opened:  # noqa: N802
    return Opened(kind, data_dir, "outbox")


def entry(key: str, *, seq: int = 1, error: str | None = None) -> JournalEntry:
    return JournalEntry(key, "rule", "x.act", f"event-{key}", seq, {"to": key}, error)


def test_an_action_begins_at_most_once_per_key_across_restarts(kind: str, data_dir: Path) -> None:
    """`begin` says which entries are new; a key journaled before (even before a restart) is not."""

    async def first() -> None:
        async with Journaled(kind, data_dir) as journal:
            assert await journal.begin([entry("a"), entry("b")], None) == [True, True]
            assert await journal.begin([entry("a"), entry("c")], None) == [False, True]
            await journal.finish("a", "succeeded", {"ok": 1})

    async def again() -> None:
        async with Journaled(kind, data_dir) as journal:
            assert await journal.begin([entry("a"), entry("b"), entry("d")], None) == [False, False, True]

    run(first)
    run(again)


def test_unfinished_actions_are_those_begun_and_never_finished(kind: str, data_dir: Path) -> None:
    """After a restart: what began and never finished, with its request; finished and failed ones are not."""

    async def first() -> str:
        async with Journaled(kind, data_dir) as journal:
            await journal.begin([entry("done", seq=3), entry("open", seq=4), entry("bad", seq=5, error="no executor")],
                                None)
            await journal.finish("done", "succeeded", {})
            owner: str = journal.owner
            return owner

    async def again(before: str) -> None:
        async with Journaled(kind, data_dir) as journal:
            (open_,) = await journal.unfinished()
            assert (open_.key, open_.rule, open_.type, open_.event_id, open_.seq) == \
                ("open", "rule", "x.act", "event-open", 4)
            assert open_.request == {"to": "open"}
            # Which journal (process) began it: another than this one, so it may be recovered.
            assert open_.owner == before and before and journal.owner != before

    owner = run(first)
    run(lambda: again(owner))


def test_the_cursor_only_moves_forward_and_starts_unset(kind: str, data_dir: Path) -> None:
    """A new journal has no cursor; `set_cursor` and `begin(..., cursor)` move it, never back."""

    async def main() -> None:
        async with Journaled(kind, data_dir) as journal:
            assert await journal.cursor() is None
            await journal.set_cursor(10)
            await journal.begin([entry("k")], 7)
            assert await journal.cursor() == 10
            await journal.begin([entry("l")], 12)
            assert await journal.cursor() == 12

    async def again() -> None:
        async with Journaled(kind, data_dir) as journal:
            assert await journal.cursor() == 12

    run(main)
    run(again)


def test_handler_state_is_kept_per_namespace_across_restarts(kind: str, data_dir: Path) -> None:
    """`state_put` stores a JSON value under (namespace, key), replacing the old one; None forgets it."""

    async def first() -> None:
        async with Journaled(kind, data_dir) as journal:
            assert await journal.state_get("antbot", "cursor") is None
            await journal.state_put("antbot", "cursor", {"to": "2026-01-01T00:00:00Z", "seen": ["a"]})
            await journal.state_put("antbot", "cursor", {"to": "2026-01-02T00:00:00Z", "seen": ["b"]})
            await journal.state_put("other", "cursor", 7)
            await journal.state_put("antbot", "gone", [1])
            await journal.state_put("antbot", "gone", None)

    async def again() -> None:
        async with Journaled(kind, data_dir) as journal:
            assert await journal.state_get("antbot", "cursor") == {"to": "2026-01-02T00:00:00Z", "seen": ["b"]}
            assert await journal.state_get("other", "cursor") == 7
            assert await journal.state_get("antbot", "gone") is None

    run(first)
    run(again)


def test_writes_apply_in_the_order_they_were_made(kind: str, data_dir: Path) -> None:
    """A cursor written after a `begin`, without awaiting it, is never durable before that `begin`."""

    async def main() -> None:
        async with Journaled(kind, data_dir) as journal:
            begun = journal.begin([entry(f"k{i}", seq=i) for i in range(200)], 200)
            moved = journal.set_cursor(150)  # queued behind: the cursor stays 200
            await asyncio.gather(begun, moved)
            assert await journal.cursor() == 200

    run(main)


def test_cooldowns_are_kept_until_they_end(kind: str, data_dir: Path) -> None:
    """Cooldowns written with a `begin` are read back while running; expired ones are forgotten."""
    now = time.time()

    async def first() -> None:
        async with Journaled(kind, data_dir) as journal:
            await journal.begin([entry("k")], None, [("r1", "0912", now + 600), ("r2", "0913", now - 1)])
            await journal.begin([], None, [("r1", "0912", now + 900)])  # a later firing extends it

    async def again() -> None:
        async with Journaled(kind, data_dir) as journal:
            assert await journal.cooldowns(now) == [("r1", "0912", now + 900)]

    run(first)
    run(again)


def test_seq_at_gives_the_last_seq_stored_before_a_time(kind: str, data_dir: Path) -> None:
    async def main() -> None:
        async with Store(kind, data_dir) as s:
            assert await s.backend.seq_at(time.time()) == 0
            first = await s.append(id="a")
            time.sleep(0.02)
            between = time.time()
            time.sleep(0.02)
            await s.append(id="b")
            assert await s.backend.seq_at(between) == first
            assert await s.backend.seq_at(time.time() + 1) == first + 1
            assert await s.backend.seq_at(0) == 0

    run(main)


# -- the outbox (outbound webhook subscriptions) ------------------------------------------------------------


def attempt(sub: str, seq: int, outcome: str, *, at: float = 1000.0) -> Attempt:
    return Attempt(0, sub, seq, f"event-{seq}", f"msg-{seq}", at, 1, outcome, 200, 1.5, None, "ok")


def test_subscriptions_keep_their_document_and_cursor_across_restarts(kind: str, data_dir: Path) -> None:
    async def first() -> None:
        async with Outboxed(kind, data_dir) as outbox:
            assert await outbox.subscriptions() == []
            await outbox.save({"id": "a", "spec": {"url": "https://x"}}, cursor=5)
            await outbox.save({"id": "b", "spec": {}})
            await outbox.save({"id": "a", "spec": {"url": "https://y"}})  # the cursor stays

    async def again() -> None:
        async with Outboxed(kind, data_dir) as outbox:
            assert await outbox.subscriptions() == [({"id": "a", "spec": {"url": "https://y"}}, 5),
                                                    ({"id": "b", "spec": {}}, None)]

    run(first)
    run(again)


def test_apply_moves_cursors_forward_only_and_save_sets_one_back(kind: str, data_dir: Path) -> None:
    async def main() -> None:
        async with Outboxed(kind, data_dir) as outbox:
            await outbox.save({"id": "a"}, cursor=10)
            await outbox.apply(OutboxChanges(cursors={"a": 7}))
            assert (await outbox.subscriptions())[0][1] == 10
            await outbox.apply(OutboxChanges(cursors={"a": 12}))
            assert (await outbox.subscriptions())[0][1] == 12
            await outbox.save({"id": "a"}, cursor=3)  # a replay
            assert (await outbox.subscriptions())[0][1] == 3

    run(main)


def test_update_sets_only_the_fields_it_is_given_and_never_brings_a_deleted_subscription_back(
        kind: str, data_dir: Path) -> None:
    async def main() -> None:
        async with Outboxed(kind, data_dir) as outbox:
            await outbox.save({"id": "a", "spec": {"url": "https://x", "types": []}, "failing_since": None}, cursor=4)
            await outbox.update("a", {"failing_since": 12.5})  # one process (delivering)
            await outbox.update("a", {"spec": {"url": "https://y", "types": []}})  # another (the API)
            assert await outbox.subscriptions() == [
                ({"id": "a", "spec": {"url": "https://y", "types": []}, "failing_since": 12.5}, 4)]
            await outbox.update("a", {"failing_since": None}, cursor=2)  # a replay sets the cursor back
            assert (await outbox.subscriptions())[0] == (
                {"id": "a", "spec": {"url": "https://y", "types": []}, "failing_since": None}, 2)
            await outbox.delete("a")
            await outbox.update("a", {"failing_since": 1.0})
            await outbox.apply(OutboxChanges(pending=[Pending("a", 3, None, 1, 0.0, "retry")], cursors={"a": 5}))
            assert await outbox.subscriptions() == []
            if kind != "local":  # shared: another process may still flush for it; locally the one process forgot it first
                assert await outbox.pending("a") == []

    run(main)


def test_pending_deliveries_are_added_changed_and_settled_in_one_write(kind: str, data_dir: Path) -> None:
    async def first() -> None:
        async with Outboxed(kind, data_dir) as outbox:
            await outbox.save({"id": "a"}, cursor=0)
            await outbox.apply(OutboxChanges(
                cursors={"a": 9},
                pending=[Pending("a", 4, "call-1", 1, 50.0, "retry"), Pending("a", 6, "call-1", 0, 0.0, "waiting"),
                         Pending("a", 8, None, 2, 70.0, "retry")],
                attempts=[attempt("a", 4, "retrying"), attempt("a", 5, "delivered")]))
            await outbox.apply(OutboxChanges(pending=[Pending("a", 4, "call-1", 2, 90.0, "retry")],
                                             settled=[("a", 8)], attempts=[attempt("a", 8, "failed")]))

    async def again() -> None:
        async with Outboxed(kind, data_dir) as outbox:
            assert await outbox.pending("a") == [Pending("a", 4, "call-1", 2, 90.0, "retry"),
                                                 Pending("a", 6, "call-1", 0, 0.0, "waiting")]
            assert await outbox.pending("b") == []
            assert (await outbox.subscriptions())[0][1] == 9

    run(first)
    run(again)


def test_the_delivery_log_pages_filters_and_prunes(kind: str, data_dir: Path) -> None:
    async def main() -> None:
        async with Outboxed(kind, data_dir) as outbox:
            await outbox.save({"id": "a"}, cursor=0)
            await outbox.apply(OutboxChanges(attempts=[
                attempt("a", 1, "retrying", at=100.0), attempt("a", 1, "delivered", at=200.0),
                attempt("a", 2, "failed", at=300.0), attempt("b", 2, "delivered", at=300.0)]))
            rows = await outbox.attempts("a", outcome=None, after=0, limit=10)
            assert [(r.seq, r.outcome, r.at, r.message_id) for r in rows] == [
                (1, "retrying", 100.0, "msg-1"), (1, "delivered", 200.0, "msg-1"), (2, "failed", 300.0, "msg-2")]
            assert rows[0].id < rows[1].id < rows[2].id
            page = await outbox.attempts("a", outcome=None, after=rows[0].id, limit=1)
            assert [r.id for r in page] == [rows[1].id]
            assert [r.seq for r in await outbox.attempts("a", outcome="failed", after=0, limit=10)] == [2]
            assert await outbox.prune(250.0) == 2
            assert [r.outcome for r in await outbox.attempts("a", outcome=None, after=0, limit=10)] == ["failed"]

    run(main)


def test_deleting_a_subscription_forgets_its_rows(kind: str, data_dir: Path) -> None:
    async def main() -> None:
        async with Outboxed(kind, data_dir) as outbox:
            await outbox.save({"id": "a"}, cursor=0)
            await outbox.save({"id": "b"}, cursor=0)
            await outbox.apply(OutboxChanges(pending=[Pending("a", 1, None, 1, 5.0, "retry"),
                                                      Pending("b", 1, None, 1, 5.0, "retry")],
                                             attempts=[attempt("a", 1, "retrying"), attempt("b", 1, "retrying")]))
            await outbox.delete("a")
            assert [doc["id"] for doc, _ in await outbox.subscriptions()] == ["b"]
            assert await outbox.pending("a") == [] and len(await outbox.pending("b")) == 1
            assert await outbox.attempts("a", outcome=None, after=0, limit=10) == []

    run(main)
