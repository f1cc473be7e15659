"""Every event the hub serves is a CloudEvents 1.0 structured-mode JSON event, checked with the
`cloudevents` SDK, with `seq` an integer extension strictly increasing in commit order."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given
from hypothesis import strategies as st
from websockets.sync.client import connect

from hub.events import encode_event, encode_event_parts
from tests.helpers import ADMIN, ADMIN_KEY, PUBLISHER, WAIT, ServerThread, SSEReader, make_config

FORMAT = JSONFormat()
#: RFC 3339 `date-time` (the SDK's parser is more lenient than the spec).
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
CE_NAME = re.compile(r"^[a-z0-9]{1,20}$")
CE_INT = range(-(2**31), 2**31)
THREADS = 8
PER_THREAD = 20


def as_cloudevent(raw: bytes | dict[str, Any]) -> CloudEvent:
    """Parse one structured-mode JSON event with the SDK (it validates the v1.0 attributes)."""
    body = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    event = FORMAT.read(CloudEvent, body)
    assert isinstance(event, CloudEvent)
    return event


def assert_valid(raw: bytes | dict[str, Any]) -> CloudEvent:
    """`raw` is a valid CloudEvents 1.0 JSON event served by the hub, with an integer `seq`."""
    obj = orjson.loads(raw) if isinstance(raw, bytes) else raw
    ce = as_cloudevent(obj)
    assert ce.get_specversion() == "1.0"
    for name in ("id", "source", "type"):
        assert isinstance(obj[name], str) and obj[name]
    assert ce.get_datacontenttype() == "application/json"
    assert RFC3339.match(obj["time"]), obj["time"]
    time_ = ce.get_time()
    assert time_ is not None and time_.tzinfo is not None
    assert isinstance(obj["data"], dict)
    assert ce.get_data() == obj["data"]
    assert "data_base64" not in obj
    # Every attribute other than the core ones is a valid extension: name and CloudEvents type.
    core = {"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema", "data"}
    for name, value in obj.items():
        if name in core:
            continue
        assert CE_NAME.match(name), name
        assert isinstance(value, (str, bool, int)), (name, value)
        if isinstance(value, int) and not isinstance(value, bool):
            assert value in CE_INT, (name, value)
    seq = ce.get_extension("seq")
    assert isinstance(seq, int) and not isinstance(seq, bool)
    assert seq >= 1
    return ce


def history(server: ServerThread, **params: Any) -> list[dict[str, Any]]:
    """Every event in history, following `next`."""
    events: list[dict[str, Any]] = []
    after = 0
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=WAIT) as client:
        while True:
            r = client.get("/v1/events", params={"after": after, "limit": 50, **params})
            assert r.status_code == 200, r.text
            page = r.json()
            if not page["events"]:
                return events
            events.extend(page["events"])
            after = page["next"]


def sample_event(worker: int, i: int) -> dict[str, Any]:
    """A varied client event: optional subject, time, extensions and agent."""
    ev: dict[str, Any] = {
        "type": ("call.ringing", "call.leg.bridged", "campaign.started", "agent.status")[i % 4],
        "id": f"w{worker}-e{i}",
        "source": f"pbx-{worker}",
        "data": {"worker": worker, "i": i, "agent": ("alice", "bob", None)[i % 3], "note": "chào ☎"},
    }
    if i % 2:
        ev["subject"] = f"call/{worker}-{i}"
    if i % 5 == 0:
        ev["time"] = "2026-11-23T08:15:00.5+07:00"
    if i % 3 == 0:
        ev["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ev["priority"] = i
        ev["urgent"] = bool(i % 2)
    return ev


class Record:
    __slots__ = ("worker", "i", "sent", "acked", "seq", "status")

    def __init__(self, worker: int, i: int, sent: float, acked: float, seq: int, status: int) -> None:
        self.worker, self.i, self.sent, self.acked, self.seq, self.status = worker, i, sent, acked, seq, status


def publish_concurrently(server: ServerThread) -> list[Record]:
    """THREADS threads each publish PER_THREAD events one after another (plus one duplicate each)."""
    start = threading.Barrier(THREADS)

    def worker(w: int) -> list[Record]:
        records = []
        with httpx.Client(base_url=server.url, headers=PUBLISHER, timeout=WAIT) as client:
            start.wait(WAIT)
            for i in range(PER_THREAD):
                sent = time.monotonic()
                r = client.post("/v1/events", json=sample_event(w, i))
                acked = time.monotonic()
                assert r.status_code == 202, r.text
                records.append(Record(w, i, sent, acked, r.json()["seq"], r.status_code))
            # Re-sending an event already acknowledged creates nothing new.
            r = client.post("/v1/events", json=sample_event(w, 0))
            assert r.status_code == 200, r.text
            assert r.json()["seq"] == records[0].seq
        return records

    with ThreadPoolExecutor(THREADS) as pool:
        return [rec for batch in pool.map(worker, range(THREADS)) for rec in batch]


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerThread]:
    """The real hub under uvicorn, as conftest's `server`, tuned for speed: no fsync per commit, and
    TCP_NODELAY on the listening socket (inherited by accepted ones on Linux). uvicorn wraps a
    socket passed by `fd` as AF_UNIX and so never sets TCP_NODELAY itself, which costs ~40 ms of
    Nagle/delayed-ACK stall per keep-alive request."""
    hub = ServerThread(make_config(data_dir, backend={"synchronous": "normal"}))
    hub._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with hub as s:
        yield s


# -- tests --------------------------------------------------------------------------------------


def test_history_events_are_valid_cloudevents(server: ServerThread) -> None:
    """Every event in history parses as a valid CloudEvents 1.0 JSON event with an integer seq."""
    records = publish_concurrently(server)
    events = history(server)
    assert len(events) == THREADS * PER_THREAD
    for obj in events:
        ce = assert_valid(obj)
        worker, i = obj["data"]["worker"], obj["data"]["i"]
        sent = sample_event(worker, i)
        # What the publisher set is what the hub serves.
        for name, value in sent.items():
            assert obj[name] == value, name
        assert ce.get_id() == sent["id"] and ce.get_source() == sent["source"]
    assert sorted(e["seq"] for e in events) == sorted(r.seq for r in records)


def test_seqs_strictly_increase_in_commit_order(server: ServerThread) -> None:
    """Seqs are unique, history is in seq order, and an event acknowledged before another was sent has a lower seq."""
    records = publish_concurrently(server)
    seqs = [r.seq for r in records]
    assert len(set(seqs)) == len(seqs)
    served = [e["seq"] for e in history(server)]
    assert served == sorted(served)
    assert len(set(served)) == len(served)
    assert set(served) == set(seqs)
    # Within one publisher thread, each event was sent after the previous one's 202.
    for w in range(THREADS):
        mine = [r.seq for r in sorted((r for r in records if r.worker == w), key=lambda r: r.i)]
        assert mine == sorted(mine) and len(set(mine)) == len(mine)
    # Across threads: acknowledged before the other was sent means committed first.
    by_ack = sorted(records, key=lambda r: r.acked)
    for a in by_ack:
        for b in records:
            if a.acked < b.sent:
                assert a.seq < b.seq, (a.seq, b.seq)


def test_live_streams_serve_valid_cloudevents_in_seq_order(server: ServerThread) -> None:
    """WebSocket frames and SSE records are valid CloudEvents, in strictly increasing seq order."""
    with (
        connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}") as ws,
        httpx.Client(timeout=WAIT) as http,
        http.stream("GET", f"{server.url}/v1/stream", params={"token": ADMIN_KEY}) as response,
    ):
        assert response.status_code == 200
        sse = SSEReader(response)
        server.wait_subscribers(2)
        records = publish_concurrently(server)
        total = len(records)
        frames = [ws.recv(timeout=WAIT) for _ in range(total)]
        records_sse = sse.take(total)

    ws_seqs = []
    for frame in frames:
        assert isinstance(frame, str)
        ce = assert_valid(frame.encode())
        ws_seqs.append(ce.get_extension("seq"))
    assert all(a < b for a, b in zip(ws_seqs, ws_seqs[1:], strict=False))
    assert sorted(ws_seqs) == sorted(r.seq for r in records)

    sse_seqs = []
    for rec in records_sse:
        ce = assert_valid(rec.data.encode())
        assert rec.id == str(ce.get_extension("seq"))
        assert rec.event == ce.get_type()
        sse_seqs.append(ce.get_extension("seq"))
    assert sse_seqs == ws_seqs
    # The same bytes as history serves.
    by_seq = {e["seq"]: e for e in history(server)}
    for frame in frames:
        obj = orjson.loads(frame)
        assert by_seq[obj["seq"]] == obj


def test_gap_event_is_a_valid_cloudevent(server: ServerThread) -> None:
    """The hub.gap event that stands for trimmed history is itself a valid CloudEvent with a seq."""
    seqs = server.publish(*({"type": "call.ringing", "data": {"n": n}} for n in range(10)))
    trim = server.hub.store.trim(max_age=0, max_count=3)
    removed = asyncio.run_coroutine_threadsafe(trim, server.server_loop()).result(WAIT)
    assert removed == 7
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=WAIT) as client:
        page = client.get("/v1/events", params={"after": 0}).json()
    gap, *rest = page["events"]
    ce = assert_valid(gap)
    assert ce.get_type() == "hub.gap"
    assert ce.get_extension("seq") == seqs[6]
    assert gap["data"]["from"] == seqs[0] and gap["data"]["to"] == seqs[6]
    assert [e["seq"] for e in rest] == seqs[7:]
    for obj in rest:
        assert_valid(obj)


def test_sdk_written_event_is_accepted_and_served_back(server: ServerThread) -> None:
    """An event written by the CloudEvents SDK in structured mode is accepted and served back unchanged."""
    sent = CloudEvent(
        {
            "type": "call.ringing",
            "source": "https://pbx.example/antring",
            "id": "sdk-1",
            "subject": "call/7",
            "time": datetime(2026, 11, 23, 8, 15, 0, 250000, tzinfo=UTC),
            "datacontenttype": "application/json",
            "priority": 3,
        },
        {"agent": "alice", "caller": "+84900000000"},
    )
    body = FORMAT.write(sent)
    r = httpx.post(
        f"{server.url}/v1/events",
        content=body,
        headers={**PUBLISHER, "Content-Type": FORMAT.get_content_type()},
        timeout=WAIT,
    )
    assert r.status_code == 202, r.text
    seq = r.json()["seq"]
    (served,) = history(server)
    got = assert_valid(served)
    assert got.get_extension("seq") == seq
    attrs = dict(got.get_attributes())
    assert attrs.pop("seq") == seq
    assert attrs == sent.get_attributes()
    assert got.get_data() == sent.get_data()


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(data=_json, seq=st.integers(1, 2**53), extra=st.dictionaries(st.sampled_from(["subject", "time"]),
                                                                       st.text(max_size=12)))
def test_an_event_encoded_in_two_parts_around_its_seq_is_byte_identical(data: Any, seq: int,
                                                                        extra: dict[str, str]) -> None:
    """The Redis backend splices the seq into bytes the hub encoded before the seq was known:
    what subscribers receive must be exactly what the local backend would have stored."""
    event = {"specversion": "1.0", "id": "e-1", "source": "pbx", "type": "call.ringing", **extra, "data": data}
    prefix, suffix = encode_event_parts(event)
    assert prefix + str(seq).encode() + suffix == encode_event(event, seq)
