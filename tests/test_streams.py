"""The live endpoints under a real uvicorn: SSE and WebSocket format, resume, filters, auth, control messages."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.sync.client import connect
from websockets.uri import parse_uri

from hub.auth import issue_token
from tests.helpers import (
    ADMIN_KEY,
    ALICE_KEY,
    JWT_SECRET,
    TICK,
    WAIT,
    ServerThread,
    SSEReader,
    event,
    iter_ws_json,
    make_config,
)


@contextlib.contextmanager
def sse(server: ServerThread, query: str = "", headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
    """An open SSE stream (admin token unless `query` names another)."""
    token = "" if "token=" in query else f"token={ADMIN_KEY}&"
    with httpx.Client(timeout=WAIT) as client:
        with client.stream("GET", f"{server.url}/v1/stream?{token}{query}", headers=headers) as response:
            yield response


@pytest.fixture
def fast_server(data_dir: Path) -> Iterator[ServerThread]:
    """A hub with short heartbeat and ping intervals and a tiny catch-up page (many pages per resume)."""
    config = make_config(
        data_dir,
        streams={"sse_heartbeat": 2 * TICK, "ws_ping_interval": 2 * TICK, "catchup_page": 7, "buffer": 50},
    )
    with ServerThread(config) as s:
        yield s


# -- SSE ----------------------------------------------------------------------------------------


def test_sse_writes_id_event_and_one_line_of_cloudevent_json(server: ServerThread) -> None:
    """Each SSE record carries `id: <seq>`, `event: <type>` and the CloudEvent JSON on one `data:` line."""
    with sse(server) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SSEReader(response)
        server.wait_subscribers(1)
        (seq,) = server.publish(event("call.ringing", agent="bob", number="0912345678"))
        got = reader.next()
        assert got.id == str(seq) and got.event == "call.ringing"
        body = got.json
        assert body["seq"] == seq and body["specversion"] == "1.0" and body["data"]["number"] == "0912345678"
        assert reader.retry == 3000


def test_sse_reconnect_with_last_event_id_gets_missed_events_once(server: ServerThread) -> None:
    """A client reconnecting with Last-Event-ID gets every event it missed, then live ones, none twice."""
    first = server.publish(*[event("call.ringing", n=i) for i in range(3)])
    with sse(server, "after=0") as response:
        seen = [int(e.id or 0) for e in SSEReader(response).take(3)]
    assert seen == first
    missed = server.publish(*[event("call.answered", n=i) for i in range(5)])
    with sse(server, "after=0", headers={"Last-Event-ID": str(seen[-1])}) as response:
        reader = SSEReader(response)
        got = [int(e.id or 0) for e in reader.take(5)]
        assert got == missed
        server.wait_subscribers(1)
        (live,) = server.publish(event("call.ended"))
        assert int(reader.next().id or 0) == live


def test_sse_types_filter_uses_glob_patterns(server: ServerThread) -> None:
    """`types=call.*,campaign.*` passes only the matching types."""
    seqs = server.publish(event("call.ringing"), event("agent.login"), event("campaign.contact.updated"), event("call.ended"))
    with sse(server, "after=0&types=call.*,campaign.*") as response:
        got = SSEReader(response).take(3)
    assert [e.event for e in got] == ["call.ringing", "campaign.contact.updated", "call.ended"]
    assert [int(e.id or 0) for e in got] == [seqs[0], seqs[2], seqs[3]]


def test_sse_sends_heartbeat_comments(fast_server: ServerThread) -> None:
    """An idle SSE stream gets a comment line at the heartbeat interval, so proxies keep it open."""
    with sse(fast_server) as response:
        reader = SSEReader(response)
        fast_server.wait_subscribers(1)
        (seq,) = fast_server.publish(event("call.ringing"))
        time.sleep(3 * TICK)
        fast_server.publish(event("call.ended"))
        reader.take(2)
        assert "keepalive" in reader.comments


def test_sse_heartbeat_as_an_event_for_pages_that_must_notice_a_dead_stream(fast_server: ServerThread) -> None:
    """`heartbeat=event`: a named event an EventSource page can see, without an id (Last-Event-ID stays)."""
    with sse(fast_server, "heartbeat=event&types=call.*") as response:
        reader = SSEReader(response)
        fast_server.wait_subscribers(1)
        (seq,) = fast_server.publish(event("call.ringing"))
        got = [reader.next() for _ in range(4)]  # heartbeats every 2 ticks, the event among them
    (ringing,) = [e for e in got if e.event == "call.ringing"]
    beats = [e for e in got if e.event == "heartbeat"]
    assert ringing.id == str(seq) and len(beats) == 3
    beat = beats[0]
    assert beat.id is None
    assert orjson.loads(beat.data)["interval"] > 0
    assert "keepalive" not in reader.comments


def test_sse_refuses_an_unknown_heartbeat_style(server: ServerThread) -> None:
    r = httpx.get(f"{server.url}/v1/stream?token={ADMIN_KEY}&heartbeat=loud", timeout=WAIT)
    assert r.status_code == 400 and "heartbeat" in r.json()["error"]["message"]


def test_sse_without_credentials_is_401_json(server: ServerThread) -> None:
    """No token: a JSON 401, not a stream."""
    r = httpx.get(f"{server.url}/v1/stream", timeout=WAIT)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_credentials"


def test_sse_bad_after_is_400(server: ServerThread) -> None:
    """`after` must be a non-negative integer."""
    r = httpx.get(f"{server.url}/v1/stream?token={ADMIN_KEY}&after=-3", timeout=WAIT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
    r = httpx.get(f"{server.url}/v1/stream?token={ADMIN_KEY}&types=call.{{x}}", timeout=WAIT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_filter"


# -- WebSocket ----------------------------------------------------------------------------------


def test_ws_sends_one_text_frame_per_event(server: ServerThread) -> None:
    """Each event arrives as one text frame holding the CloudEvent JSON."""
    with connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}") as ws:
        server.wait_subscribers(1)
        seqs = server.publish(event("call.ringing", agent="alice"), event("call.answered", agent="alice"))
        frames = [ws.recv(timeout=WAIT) for _ in seqs]
    assert all(isinstance(f, str) for f in frames)
    assert [orjson.loads(f)["seq"] for f in frames] == seqs


def test_ws_resume_while_events_keep_coming_has_no_gap_and_no_duplicate(fast_server: ServerThread) -> None:
    """Resuming from seq 0 during a steady stream of publishes yields every seq once, in order."""
    fast_server.publish(*[event("call.ringing", n=i) for i in range(40)])
    total = 200
    published: list[int] = []
    stop = threading.Event()

    def publish() -> None:
        with httpx.Client(base_url=fast_server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=WAIT) as c:
            for i in range(total - 40):
                if stop.is_set():
                    return
                published.append(c.post("/v1/events", json=event("call.answered", n=i)).json()["seq"])

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        time.sleep(TICK)
        with connect(f"{fast_server.ws_url}/v1/ws?token={ADMIN_KEY}&after=0") as ws:
            seqs = [e["seq"] for e in iter_ws_json(ws, total)]
    finally:
        stop.set()
        thread.join(WAIT)
    assert seqs == sorted(set(seqs)), "out of order or duplicated"
    assert seqs == list(range(1, total + 1)), "gap"


def test_ws_subscribe_op_changes_filter_and_replays_from_after(server: ServerThread) -> None:
    """`{"op": "subscribe", "types": [...], "after": N}` re-filters and replays from N."""
    seqs = server.publish(event("call.ringing"), event("campaign.contact.updated"), event("call.ended"))
    with connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}&types=call.*") as ws:
        server.wait_subscribers(1)
        ws.send(orjson.dumps({"op": "subscribe", "types": ["campaign.*"], "after": 0}).decode())
        ack = orjson.loads(ws.recv(timeout=WAIT))
        assert ack["op"] == "subscribed" and ack["types"] == ["campaign.*"]
        replay = orjson.loads(ws.recv(timeout=WAIT))
        assert replay["seq"] == seqs[1] and replay["type"] == "campaign.contact.updated"
        server.wait_subscribers(1)
        live = server.publish(event("call.ringing"), event("campaign.finished"))
        assert orjson.loads(ws.recv(timeout=WAIT))["seq"] == live[1]


def test_ws_bad_client_messages_get_error_frames_and_the_connection_stays(server: ServerThread) -> None:
    """Garbage, unknown ops and bad filters are answered with error frames; delivery continues."""
    with connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}") as ws:
        server.wait_subscribers(1)
        for bad in ["not json", "[1,2]", '{"op":"dance"}', '{"op":"subscribe","types":["bad pattern!"]}',
                    '{"op":"subscribe","after":-1}', '{"op":"subscribe","surprise":1}']:
            ws.send(bad)
            reply = orjson.loads(ws.recv(timeout=WAIT))
            assert reply["op"] == "error" and reply["error"]["code"] and reply["error"]["message"], bad
        ws.send('{"op":"ping"}')
        assert orjson.loads(ws.recv(timeout=WAIT))["op"] == "pong"
        (seq,) = server.publish(event("call.ringing"))
        assert orjson.loads(ws.recv(timeout=WAIT))["seq"] == seq


def test_ws_server_pings_at_the_configured_interval(fast_server: ServerThread) -> None:
    """The hub pings an idle WebSocket client at `streams.ws_ping_interval`."""
    protocol = ClientProtocol(parse_uri(f"{fast_server.ws_url}/v1/ws?token={ADMIN_KEY}"))
    with socket.create_connection(("127.0.0.1", fast_server.port), timeout=WAIT) as sock:
        protocol.send_request(protocol.connect())
        sock.sendall(b"".join(protocol.data_to_send()))
        pings = 0
        deadline = time.monotonic() + 40 * TICK
        while pings < 2 and time.monotonic() < deadline:
            protocol.receive_data(sock.recv(65536))
            for received in protocol.events_received():
                if getattr(received, "opcode", None) is Opcode.PING:
                    pings += 1
            sock.sendall(b"".join(protocol.data_to_send()))  # the pongs
    assert pings >= 2


def test_ws_handshake_without_valid_credentials_is_refused_with_json(server: ServerThread) -> None:
    """A bad token is refused at the handshake with a 401 and a JSON body saying why."""
    with pytest.raises(InvalidStatus) as info:
        with connect(f"{server.ws_url}/v1/ws?token=nope-nope-nope-nope"):
            pass
    assert info.value.response.status_code == 401
    assert orjson.loads(info.value.response.body)["error"]["code"] == "bad_credentials"


def test_expired_token_is_refused_at_connect(server: ServerThread) -> None:
    """A JWT past its `exp` cannot open a stream."""
    token = issue_token(JWT_SECRET, sub="alice", ttl=1, agent="alice")
    time.sleep(1.1)
    with pytest.raises(InvalidStatus) as info:
        with connect(f"{server.ws_url}/v1/ws?token={token}"):
            pass
    assert orjson.loads(info.value.response.body)["error"]["code"] == "token_expired"
    r = httpx.get(f"{server.url}/v1/stream?token={token}", timeout=WAIT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"


def test_live_streams_close_when_their_token_expires(server: ServerThread) -> None:
    """A WebSocket whose token expires is closed with 1008; an SSE stream ends."""
    token = issue_token(JWT_SECRET, sub="alice", ttl=2, agent="alice")
    with connect(f"{server.ws_url}/v1/ws?token={token}") as ws, sse(server, f"token={token}") as stream:
        reader = SSEReader(stream)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=WAIT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        with pytest.raises(EOFError):
            reader.next()
    assert server.metric("callhub_subscribers_dropped_total", transport="ws", reason="token_expired") == 1


def test_agent_scoped_credentials_see_only_their_agent(server: ServerThread) -> None:
    """An agent key or token sees only events whose data.agent is that agent, on WS, SSE and history."""
    alice_token = issue_token(JWT_SECRET, sub="alice-ui", ttl=600, agent="alice")
    with connect(f"{server.ws_url}/v1/ws?token={ALICE_KEY}") as ws, \
            sse(server, f"token={alice_token}") as stream:
        reader = SSEReader(stream)
        server.wait_subscribers(2)
        seqs = server.publish(
            event("call.ringing", agent="bob"), event("call.ringing", agent="alice"), event("call.ringing"),
            event("call.answered", agent="alice"),
        )
        ws_got = [e["seq"] for e in iter_ws_json(ws, 2)]
        sse_got = [int(e.id or 0) for e in reader.take(2)]
    assert ws_got == sse_got == [seqs[1], seqs[3]]
    history = httpx.get(f"{server.url}/v1/events", headers={"Authorization": f"Bearer {alice_token}"}, timeout=WAIT)
    assert [e["data"]["agent"] for e in history.json()["events"]] == ["alice", "alice"]


def test_types_claim_narrows_what_a_token_sees(server: ServerThread) -> None:
    """A token with `types: ["call.*"]` never receives other types, even when it asks for them."""
    token = issue_token(JWT_SECRET, sub="wallboard", ttl=600, types=("call.*",))
    with connect(f"{server.ws_url}/v1/ws?token={token}&types=*") as ws:
        server.wait_subscribers(1)
        seqs = server.publish(event("agent.login"), event("call.ringing"), event("hub.secret"))
        got = orjson.loads(ws.recv(timeout=WAIT))
        assert got["seq"] == seqs[1]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=5 * TICK)


def test_cross_origin_eventsource_is_allowed_only_for_configured_origins(data_dir: Path) -> None:
    """With `server.cors_origins`, pages from those origins may open streams and call the API; others may not."""
    config = make_config(data_dir, server={"cors_origins": ["https://softphone.example"]})
    with ServerThread(config) as server:
        allowed = {"Origin": "https://softphone.example"}
        with sse(server, headers=allowed) as response:
            assert response.headers["access-control-allow-origin"] == "https://softphone.example"
        with sse(server, headers={"Origin": "https://evil.example"}) as response:
            assert "access-control-allow-origin" not in response.headers
        preflight = httpx.options(
            f"{server.url}/v1/events",
            headers={**allowed, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"},
            timeout=WAIT,
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://softphone.example"
