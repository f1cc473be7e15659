"""`Backend.stored_between`: the events of given types the store committed within a time window, paged."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from hub.events import Event, agent_of, prepare_event
from hub.store.local import LocalBackend
from tests.helpers import TICK, make_config

pytestmark = pytest.mark.anyio


async def append(backend: LocalBackend, type_: str, id_: str, source: str = "antring") -> None:
    event = prepare_event({"type": type_, "id": id_, "source": source})
    await backend.append(event, agent=agent_of(event), received=0.0)


def ids(events: list[Event]) -> list[str]:
    return [orjson.loads(e.body)["id"] for e in events]


async def started(data_dir: Path) -> LocalBackend:
    backend = LocalBackend(make_config(data_dir, backend={"synchronous": "normal"}))
    await backend.start(lambda events: None)
    return backend


async def test_only_events_stored_inside_the_window_of_the_given_types_and_source(data_dir: Path) -> None:
    """Before and after the window, other types and other sources are left out; oldest first."""
    backend = await started(data_dir)
    try:
        await append(backend, "call.ended", "before")
        await asyncio.sleep(TICK)
        since = time.time()
        await append(backend, "call.ringing", "in-1")
        await append(backend, "call.held", "other-type")
        await append(backend, "call.ended", "other-source", source="vbee")
        await append(backend, "call.ended", "in-2")
        until = time.time()
        await asyncio.sleep(TICK)
        await append(backend, "call.ended", "after")
        found = await backend.stored_between(since=since, until=until, types={"call.ringing", "call.ended"},
                                             source="antring", after=0, limit=100)
        assert ids(found) == ["in-1", "in-2"]
        anyone = await backend.stored_between(since=since, until=until, types={"call.ended"}, source=None,
                                              after=0, limit=100)
        assert ids(anyone) == ["other-source", "in-2"]
    finally:
        await backend.close()


async def test_pages_continue_after_the_last_seq(data_dir: Path) -> None:
    """`limit` bounds a page; `after` = the last seq answered reads the next one, until none is left."""
    backend = await started(data_dir)
    try:
        since = time.time()
        for n in range(5):
            await append(backend, "call.ended", f"e{n}")
        until = time.time()
        pages: list[list[str]] = []
        after = 0
        while True:
            page = await backend.stored_between(since=since, until=until, types={"call.ended"}, source="antring",
                                                after=after, limit=2)
            if not page:
                break
            pages.append(ids(page))
            after = page[-1].seq
        assert pages == [["e0", "e1"], ["e2", "e3"], ["e4"]]
    finally:
        await backend.close()


async def test_a_window_with_nothing_stored_is_empty(data_dir: Path) -> None:
    """A window after everything stored (or an empty store) answers no events."""
    backend = await started(data_dir)
    try:
        assert await backend.stored_between(since=0, until=time.time(), types={"call.ended"}, source=None,
                                            after=0, limit=10) == []
        await append(backend, "call.ended", "old")
        later = time.time() + 60
        assert await backend.stored_between(since=later, until=later + 60, types={"call.ended"}, source=None,
                                            after=0, limit=10) == []
    finally:
        await backend.close()
