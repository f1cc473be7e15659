"""What an attacker holding an ordinary credential tries against a hub on loopback, each refused.

Each test names the attack and what must hold instead: the hub keeps serving everyone else, and
a credential reaches no further than its scope. (The matcher's own guarantees are in
test_matcher.py, the SSRF guard's in test_webhook_post.py, log redaction in test_logs.py.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from hub.auth import issue_token
from hub.config import config_from_dict
from hub.events import MAX_JSON_DEPTH
from hub.http.app import create_app
from tests.helpers import (
    ADMIN,
    ADMIN_KEY,
    JWT_SECRET,
    PUBLISHER,
    PUBLISHER_KEY,
    TICK,
    WAIT,
    ServerThread,
    SSEReader,
    event,
    raw_config,
    wait_until,
)

HMAC_SECRET = "hm-secret-0123456789abcdef"
ALICE_PUBLISHER = "alice-publisher-key-0123456789"
JSON = {"Content-Type": "application/json"}


def _config(data_dir: Path, **sections: dict[str, Any]) -> Any:
    raw = raw_config(data_dir, **sections)
    raw["auth"]["keys"].append({"key": ALICE_PUBLISHER, "role": "publisher", "agent": "alice", "name": "alice-phone"})
    raw["sources"] = [{"name": "hm", "verify": "hmac-sha256", "secret": HMAC_SECRET, "type": "hm.call", "id": "id"}]
    return config_from_dict(raw, env={})


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_config(data_dir))) as c:
        yield c


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _ready(client: TestClient | httpx.Client) -> bool:
    return bool(client.get("/readyz").status_code == 200)


# -- requests that used to stop the hub ----------------------------------------------------------


def test_a_type_pattern_of_many_stars_answers_at_once_and_the_hub_stays_responsive(client: TestClient) -> None:
    """`?types=********************Z` against a 40-character type took 12.8 s of the event loop; now milliseconds."""
    client.post("/v1/events", json=event("a" * 40), headers=PUBLISHER)
    started = time.perf_counter()
    r = client.get("/v1/events", params={"types": "*" * 20 + "Z,*a*a*a*a*a*a*a*a*a*a*a*a*b"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["events"] == []
    assert time.perf_counter() - started < 1.0


def test_a_deeply_nested_body_is_422_and_the_writer_keeps_taking_events(client: TestClient) -> None:
    """300 levels of `data` was accepted, then killed the writer thread; now 422 before anything is queued."""
    body = json.dumps({"type": "x.deep", "data": {"v": _nested(300)}}).encode()
    assert len(body) < 2000
    r = client.post("/v1/events", content=body, headers={**PUBLISHER, **JSON})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_deep", r.text
    assert r.json()["error"]["limit"] == MAX_JSON_DEPTH
    assert client.post("/v1/events", json=event("call.ringing"), headers=PUBLISHER).status_code == 202
    assert _ready(client)


def test_a_deeply_nested_webhook_is_refused_and_counted_as_invalid(client: TestClient) -> None:
    """A 1.5 KB webhook nesting 300 levels: 422, counted per source, and the hub goes on storing."""
    body = json.dumps({"id": "deep-1", "v": _nested(300)}).encode()
    signature = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    r = client.post("/v1/webhooks/hm", content=body, headers={**JSON, "X-Signature": signature})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_deep"
    metrics = client.get("/metrics").text
    assert 'callhub_webhooks_rejected_total{reason="too_deep",source="hm"} 1.0' in metrics
    assert 'callhub_webhook_requests_total{outcome="invalid",source="hm"} 1.0' in metrics
    assert client.post("/v1/events", json=event("call.ringing"), headers=PUBLISHER).status_code == 202
    assert _ready(client)


def test_an_event_that_cannot_be_encoded_fails_alone_and_the_writer_goes_on(server: ServerThread) -> None:
    """An item the writer cannot encode (a vendor's integer past 64 bits) fails its caller; the others commit."""
    hub = server.hub

    async def three() -> list[Any]:
        import asyncio

        good = {"type": "t.good", "id": "g1", "source": "s", "data": {}}
        bad = {"type": "t.bad", "id": "b1", "source": "s", "data": {"n": 2**70}}
        also = {"type": "t.good", "id": "g2", "source": "s", "data": {}}
        return await asyncio.gather(*(hub.publisher.publish(e) for e in (good, bad, also)), return_exceptions=True)

    first, failed, third = server.run(three())
    assert not first.duplicate and not third.duplicate
    assert getattr(failed, "status_code", None) == 422
    assert server.publish(event("call.ringing"))
    assert httpx.get(f"{server.url}/readyz", timeout=WAIT).status_code == 200


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_ATTRIBUTE = st.sampled_from(["type", "id", "source", "time", "subject", "specversion", "datacontenttype", "data",
                              "dataschema", "data_base64", "seq", "ext1", "Bad-Name", "x" * 21])
_EVENTS = st.one_of(
    _JSON_VALUES,
    st.dictionaries(_ATTRIBUTE, _JSON_VALUES, max_size=6),
    st.builds(lambda d, t: {"type": t, "data": {"v": _nested(d)}}, st.integers(0, 400), st.sampled_from(["a.b", "x"])),
)


def test_any_json_a_client_sends_is_stored_or_refused_with_a_4xx(data_dir: Path) -> None:
    """Property: whatever JSON arrives, the answer is 202/200 or a 4xx with a JSON error; never a 500, never a stall."""
    with TestClient(create_app(_config(data_dir)), raise_server_exceptions=False) as client:

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(body=_EVENTS)
        def check(body: Any) -> None:
            r = client.post("/v1/events", content=json.dumps(body).encode(), headers={**PUBLISHER, **JSON})
            assert r.status_code in (200, 202) or (400 <= r.status_code < 500 and "error" in r.json()), (r, body)

        check()
        assert client.post("/v1/events", json=event("call.ringing"), headers=PUBLISHER).status_code == 202
        assert _ready(client)


# -- reaching past a scope -----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["hub", "hm"])
def test_clients_cannot_publish_as_the_hub_or_as_a_webhook_source(client: TestClient, source: str) -> None:
    """`source: "hub"` (an `action.failed` with `chain: -20`, a fake `hub.gap`) or a webhook source's name: 403."""
    forged = {"type": "action.failed", "source": source, "id": "f-1", "data": {"chain": -20, "rule": "loop"}}
    r = client.post("/v1/events", json=forged, headers=ADMIN)
    assert r.status_code == 403 and r.json()["error"]["code"] == "reserved_source"
    assert client.get("/v1/events", headers=ADMIN).json()["events"] == []


def test_a_clients_event_cannot_pre_empt_a_webhooks_id(client: TestClient) -> None:
    """A client posting `{"source": "hm", "id": "c-777"}` first no longer makes the genuine webhook a duplicate."""
    assert client.post("/v1/events", json={"source": "hm", "id": "c-777", "type": "x"}, headers=PUBLISHER).status_code == 403
    body = orjson.dumps({"id": "c-777", "status": "done"})
    signature = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    r = client.post("/v1/webhooks/hm", content=body, headers={**JSON, "X-Signature": signature})
    assert r.status_code == 200 and r.json()["duplicate"] is False


def test_an_agent_scoped_publisher_publishes_only_for_its_agent(client: TestClient) -> None:
    """alice's publisher key: `data.agent = "bob"` is 403; no agent means alice's; its source is its own."""
    key = {"Authorization": f"Bearer {ALICE_PUBLISHER}"}
    r = client.post("/v1/events", json=event("call.ringing", agent="bob"), headers=key)
    assert r.status_code == 403 and r.json()["error"]["code"] == "agent_scope"
    assert client.post("/v1/events", json=event("call.ringing", agent="alice"), headers=key).status_code == 202
    assert client.post("/v1/events", json=event("agent.status", state="ready"), headers=key).status_code == 202
    stored = client.get("/v1/events", headers=ADMIN).json()["events"]
    assert [e["data"]["agent"] for e in stored] == ["alice", "alice"]
    assert {e["source"] for e in stored} == {"agents/alice"}


def test_an_agent_scoped_publisher_cannot_pre_empt_another_publishers_ids(client: TestClient) -> None:
    """alice's key posting `{"source": "crm", "id": "crm-evt-1001"}` first used to make the CRM's own event a
    duplicate, lost to bob; now its events live under `agents/alice`, and nobody else may use that source."""
    key = {"Authorization": f"Bearer {ALICE_PUBLISHER}"}
    pre_empt = {"type": "crm.update", "source": "crm", "id": "crm-evt-1001", "data": {"agent": "alice"}}
    assert client.post("/v1/events", json=pre_empt, headers=key).json()["error"]["code"] == "agent_scope"
    genuine = {**pre_empt, "data": {"agent": "bob"}}
    r = client.post("/v1/events", json=genuine, headers=PUBLISHER)
    assert r.status_code == 202 and "duplicate" not in r.json()
    posing = {"type": "x", "source": "agents/alice", "id": "a-1"}
    assert client.post("/v1/events", json=posing, headers=PUBLISHER).json()["error"]["code"] == "reserved_source"


# -- WebSocket clients that misbehave -------------------------------------------------------------


@pytest.fixture
def tight_server(data_dir: Path) -> Iterator[ServerThread]:
    config = _config(data_dir, streams={"buffer": 20, "max_per_credential": 3},
                     server={"header_timeout": 10 * TICK, "body_timeout": 10 * TICK, "send_timeout": 10 * TICK})
    with ServerThread(config) as s:
        yield s


def test_bad_ops_get_a_short_error_and_a_client_that_keeps_sending_them_is_closed(tight_server: ServerThread) -> None:
    """A 60 KB bad op is not echoed back whole; ten bad messages in a row close the socket (1008)."""
    with connect(f"{tight_server.ws_url}/v1/ws?token={ADMIN_KEY}", max_size=2**20) as ws:
        ws.send(orjson.dumps({"op": "x" * 60_000}).decode())
        error = ws.recv(timeout=WAIT)
        assert len(error) < 1000 and orjson.loads(error)["op"] == "error"
        ws.send(orjson.dumps({"op": "ping"}).decode())  # a good message resets the count
        assert orjson.loads(ws.recv(timeout=WAIT))["op"] == "pong"
        for _ in range(10):
            ws.send("not json")
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(20):
                ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_answers_a_client_never_reads_count_against_its_buffer(tight_server: ServerThread) -> None:
    """A client that asks and never reads: its answers fill its buffer (20 events) once the kernel's are
    full, and it is dropped, instead of the hub's memory growing by every answer (16 KB each here)."""
    sock = socket.create_connection(("127.0.0.1", tight_server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    subscribe = orjson.dumps({"op": "subscribe", "types": [f"p{i:02d}." + "x" * 250 for i in range(64)]}).decode()

    def dropped() -> bool:
        return tight_server.metric("callhub_subscribers_dropped_total", transport="ws", reason="slow_consumer") == 1

    with connect(f"{tight_server.ws_url}/v1/ws?token={ADMIN_KEY}", sock=sock) as ws:
        try:
            for sent in range(1, 2001):  # 32 MB of answers, far more than the sockets' buffers hold
                ws.send(subscribe)
                if sent % 100 == 0 and dropped():
                    break
        except (ConnectionClosed, OSError):
            pass  # dropped while we were still sending
        wait_until(dropped, what="the client to be dropped as too slow")


def test_one_credential_holds_at_most_its_connection_limit(tight_server: ServerThread) -> None:
    """With `max_per_credential = 3` a fourth stream is 429 (SSE and WebSocket alike); another credential is not affected."""
    token = issue_token(JWT_SECRET, sub="wallboard", ttl=600)
    with httpx.Client(timeout=WAIT) as http:
        streams = [http.stream("GET", f"{tight_server.url}/v1/stream?token={token}") for _ in range(2)]
        opened = [s.__enter__() for s in streams]
        try:
            with connect(f"{tight_server.ws_url}/v1/ws?token={token}"):
                r = http.get(f"{tight_server.url}/v1/stream?token={token}")
                assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests"
                with pytest.raises(InvalidStatus) as refused:
                    connect(f"{tight_server.ws_url}/v1/ws?token={token}")
                assert refused.value.response.status_code == 429
                other = issue_token(JWT_SECRET, sub="someone-else", ttl=600)
                with connect(f"{tight_server.ws_url}/v1/ws?token={other}"):
                    pass
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    assert all(o.status_code == 200 for o in opened)
    wait_until(lambda: not tight_server.subscribers(), what="every stream to close")
    with connect(f"{tight_server.ws_url}/v1/ws?token={token}"):
        pass  # freed slots are usable again


def test_connections_opened_at_the_same_moment_cannot_slip_under_the_limit(tight_server: ServerThread) -> None:
    """Ten streams opened at once with a limit of 3: exactly three are served, seven get 429."""
    import asyncio

    token = issue_token(JWT_SECRET, sub="burst", ttl=600)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=WAIT) as http:
            async def one() -> int:
                try:
                    async with http.stream("GET", f"{tight_server.url}/v1/stream?token={token}") as r:
                        if r.status_code == 200:
                            await asyncio.sleep(20 * TICK)  # hold it while the others try
                        return r.status_code
                except httpx.HTTPError:
                    return -1

            return await asyncio.gather(*(one() for _ in range(10)))

    statuses = asyncio.run(burst())
    assert sorted(statuses) == [200] * 3 + [429] * 7, statuses


def test_a_ping_flood_is_cut_before_it_costs_the_hub(tight_server: ServerThread) -> None:
    """WebSocket pings, each answered by a pong the client never reads: past 20 a second the socket is cut
    (uvicorn would answer every one, and its pongs would pile up in the hub's memory)."""
    with connect(f"{tight_server.ws_url}/v1/ws?token={ADMIN_KEY}") as ws:
        with pytest.raises(ConnectionClosed):
            for i in range(2000):
                ws.ping(f"{i:0125d}")
        assert ws.protocol.close_code in (1008, 1006, None)
    assert httpx.get(f"{tight_server.url}/healthz", timeout=WAIT).status_code == 200


# -- slow clients ---------------------------------------------------------------------------------


def _raw_request(port: int, data: bytes, wait: float) -> tuple[bytes, float]:
    """Send `data`, then read until the server closes; what came back and how long it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer, time.monotonic() - started


def test_a_request_head_that_never_ends_is_cut(tight_server: ServerThread) -> None:
    """Half a request head, then silence: 408 and closed after `header_timeout`, not held open."""
    answer, took = _raw_request(tight_server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", WAIT)
    assert answer.startswith(b"HTTP/1.1 408") and took < WAIT / 2


def test_a_connection_that_sends_nothing_is_cut(tight_server: ServerThread) -> None:
    answer, took = _raw_request(tight_server.port, b"", WAIT)
    assert answer.startswith(b"HTTP/1.1 408") and took < WAIT / 2


def test_a_body_declared_and_never_sent_is_cut(tight_server: ServerThread) -> None:
    """A webhook that declares 100 bytes and sends 10: 408 and closed after `body_timeout`."""
    head = (b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + PUBLISHER_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    answer, took = _raw_request(tight_server.port, head + b'{"type": "', WAIT)
    assert answer.startswith(b"HTTP/1.1 408") and took < WAIT / 2
    assert httpx.get(f"{tight_server.url}/readyz", timeout=WAIT).status_code == 200


def test_a_webhook_without_credentials_is_refused_before_its_body_is_read(tight_server: ServerThread) -> None:
    """A wrong signature header and a body still to come: 401 at once; the hub does not wait for, or buffer, the body."""
    head = (b"POST /v1/webhooks/hm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Signature: zz\r\nContent-Length: 1000000\r\n\r\n")
    answer, took = _raw_request(tight_server.port, head, 5 * TICK)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_a_request_head_past_the_limit_is_431(tight_server: ServerThread) -> None:
    """One 100 KB header: 431 at once, instead of httptools buffering a header of any size."""
    answer, _ = _raw_request(tight_server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000
                             + b"\r\n\r\n", WAIT)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_requests_pipelined_past_the_limit_close_the_connection(tight_server: ServerThread) -> None:
    """Twenty requests sent in one write, answers never read in between: the connection is closed
    rather than twenty answers queued for a client that may never read them."""
    answer, took = _raw_request(tight_server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 20, WAIT)
    assert answer.count(b"HTTP/1.1 200") <= 10 and took < WAIT / 2


def test_an_answer_the_client_never_reads_does_not_hold_the_connection(tight_server: ServerThread) -> None:
    """A large history page to a client that does not read: its connection slot is freed after
    `send_timeout` (the hub lets go of the rest of the answer), not held for as long as the client likes."""
    big = "x" * 50_000
    with httpx.Client(base_url=tight_server.url, headers=PUBLISHER, timeout=WAIT) as http:
        for i in range(160):  # 8 MB of history: more than the sockets' buffers hold
            assert http.post("/v1/events", json=event("t.big", i=i, pad=big)).status_code == 202
    connections = tight_server.server.server_state.connections
    with socket.create_connection(("127.0.0.1", tight_server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /v1/events?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + ADMIN_KEY.encode() + b"\r\n\r\n")
        wait_until(lambda: len(connections) == 1, what="the request to be under way")
        wait_until(lambda: not connections, what="the stalled connection to be let go")


# -- leaks ------------------------------------------------------------------------------------------


def test_hub_gap_is_not_sent_to_a_token_whose_types_claim_excludes_it(server: ServerThread) -> None:
    """A `call.*` token resuming from before retention sees the calls, not a `hub.gap` it may not see."""
    seqs = server.publish(*[event("call.ringing", n=i) for i in range(6)])
    server.run(server.hub.store.trim(max_age=0, max_count=2))
    calls_only = issue_token(JWT_SECRET, sub="board", ttl=600, types=("call.*",))
    page = httpx.get(f"{server.url}/v1/events?after=0", headers={"Authorization": f"Bearer {calls_only}"},
                     timeout=WAIT).json()
    assert [e["seq"] for e in page["events"]] == seqs[4:]
    with httpx.Client(timeout=WAIT) as http, http.stream(
        "GET", f"{server.url}/v1/stream?token={calls_only}&after=0"
    ) as response:
        got = SSEReader(response).take(2)
    assert [e.event for e in got] == ["call.ringing", "call.ringing"]


def test_the_subscribed_reply_states_what_the_credential_will_really_get(server: ServerThread) -> None:
    """Asking for `*` with a `call.*` token is answered `call.*`, not an echo of `*`."""
    calls_only = issue_token(JWT_SECRET, sub="board", ttl=600, types=("call.*",))
    with connect(f"{server.ws_url}/v1/ws?token={calls_only}") as ws:
        ws.send(orjson.dumps({"op": "subscribe", "types": ["*", "sms.*"]}).decode())
        reply = orjson.loads(ws.recv(timeout=WAIT))
    assert reply["op"] == "subscribed" and reply["types"] == ["call.*"]


def test_hmac_signatures_in_base64_behind_a_sha256_label_are_accepted(client: TestClient) -> None:
    """`sha256=<base64>` was always refused (its own `=` padding hid the label)."""
    body = orjson.dumps({"id": "b64-1"})
    digest = base64.b64encode(hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    r = client.post("/v1/webhooks/hm", content=body, headers={**JSON, "X-Signature": "sha256=" + digest})
    assert r.status_code == 200, r.text
