"""Inbound webhooks: every verification scheme, deduplication, bad input, bursts, durability."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.testclient import TestClient

from hub.config import ConfigError, config_from_dict
from hub.http.app import create_app
from tests.helpers import (
    ADMIN,
    WAIT,
    HubProcess,
    free_port,
    raw_config,
    write_config,
)

TOKEN = "hook-token-0123456789abcdef"
HMAC_SECRET = "hmac-secret-0123456789abcdef"
WHSEC = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-32-bytes!").decode()
SOURCES: list[dict[str, Any]] = [
    {"name": "tok", "verify": "token", "secret": TOKEN, "id": "call_id", "type": "pbx.call",
     "fields": {"agent": "user.name", "number": "from.number"}},
    {"name": "mac", "verify": "hmac-sha256", "secret": HMAC_SECRET, "header": "X-Signature", "type": "$.event",
     "id": ["call_id", "status"]},
    {"name": "std", "verify": "standard-webhooks", "secret": WHSEC, "id": "header:webhook-id", "type": "crm.update"},
    {"name": "open", "verify": "none", "type": "open.thing"},
    {"name": "rawsrc", "verify": "token", "secret": TOKEN, "type": "raw.thing", "format": "raw"},
]


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_config(data_dir))) as c:
        yield c


def _config(data_dir: Path, **server: Any) -> Any:
    raw = raw_config(data_dir, server={"max_body": 4096, **server})
    raw["sources"] = SOURCES
    return config_from_dict(raw, env={})


def post(client: TestClient | httpx.Client, source: str, body: Any, *, headers: dict[str, str] | None = None,
         query: str = "") -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(f"/v1/webhooks/{source}{query}", content=content,
                       headers={"Content-Type": "application/json", **(headers or {})})


def stored(client: TestClient, types: str = "*") -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = client.get(f"/v1/events?types={types}&limit=1000", headers=ADMIN).json()["events"]
    return events


def mac(body: bytes, *, b64: bool = False) -> str:
    digest = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode() if b64 else digest.hex()


def std_headers(body: bytes, msg_id: str, when: datetime | None = None) -> dict[str, str]:
    when = when or datetime.now(UTC)
    signature = Webhook(WHSEC).sign(msg_id, when, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": signature}


# -- verification ------------------------------------------------------------------------------------


def test_token_in_query_or_bearer_is_accepted_and_a_wrong_one_refused(client: TestClient) -> None:
    """`token` sources take `?token=` or `Authorization: Bearer`; wrong or missing is 401, counted."""
    body = {"call_id": "c1", "user": {"name": "alice"}, "from": {"number": "0912345678"}}
    assert post(client, "tok", body, query=f"?token={TOKEN}").status_code == 200
    assert post(client, "tok", {**body, "call_id": "c2"}, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    for bad in ({"query": "?token=nope"}, {"headers": {"Authorization": "Bearer nope"}}, {}):
        r = post(client, "tok", {**body, "call_id": "c3"}, **bad)  # type: ignore[arg-type]
        assert r.status_code == 401 and r.json()["error"]["code"] == "bad_signature"
    metrics = client.get("/metrics").text
    assert 'callhub_webhooks_rejected_total{reason="mismatch",source="tok"} 2.0' in metrics
    assert 'callhub_webhook_requests_total{outcome="unauthorized",source="tok"} 3.0' in metrics
    assert 'callhub_webhook_requests_total{outcome="accepted",source="tok"} 2.0' in metrics
    assert 'callhub_webhooks_rejected_total{reason="missing",source="tok"} 1.0' in metrics
    assert TOKEN not in metrics


def test_hmac_accepts_hex_base64_and_prefixed_signatures_only_of_the_exact_body(client: TestClient) -> None:
    """HMAC-SHA256 of the raw body, hex, base64 or `sha256=hex`; one changed byte is 401."""
    body = orjson.dumps({"event": "call.ended", "call_id": "m1", "status": "done"})
    for i, signature in enumerate([mac(body), mac(body, b64=True), "sha256=" + mac(body)]):
        variant = body.replace(b"done", f"done{i}".encode())
        sig = signature.replace(mac(body), mac(variant)).replace(mac(body, b64=True), mac(variant, b64=True))
        r = post(client, "mac", variant, headers={"X-Signature": sig})
        assert r.status_code == 200, r.text
    tampered = body.replace(b"m1", b"m2")
    assert post(client, "mac", tampered, headers={"X-Signature": mac(body)}).status_code == 401
    assert post(client, "mac", body).status_code == 401
    assert post(client, "mac", body, headers={"X-Signature": "zz-not-a-signature"}).status_code == 401


def test_standard_webhooks_signed_by_the_reference_library_are_accepted(client: TestClient) -> None:
    """A request signed with the `standardwebhooks` package verifies; the id is the idempotency key."""
    body = orjson.dumps({"contact": "x", "stage": "won"})
    r = post(client, "std", body, headers=std_headers(body, "msg_1"))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "msg_1" and r.json()["duplicate"] is False


def test_standard_webhooks_refuses_wrong_missing_stale_and_replayed_old_signatures(client: TestClient) -> None:
    """Wrong key, missing headers, a timestamp over 5 minutes old or ahead: 401. A replay inside the window: duplicate."""
    body = orjson.dumps({"contact": "y"})
    other = Webhook("whsec_" + base64.b64encode(b"another-key-of-32-bytes-long!!!!").decode())
    now = datetime.now(UTC)
    wrong = {"webhook-id": "m2", "webhook-timestamp": str(int(now.timestamp())),
             "webhook-signature": other.sign("m2", now, body.decode())}
    assert post(client, "std", body, headers=wrong).status_code == 401
    assert post(client, "std", body).status_code == 401
    stale = std_headers(body, "m3", now - timedelta(minutes=6))
    assert post(client, "std", body, headers=stale).status_code == 401
    future = std_headers(body, "m4", now + timedelta(minutes=6))
    assert post(client, "std", body, headers=future).status_code == 401
    fresh = std_headers(body, "m5")
    first = post(client, "std", body, headers=fresh)
    replay = post(client, "std", body, headers=fresh)
    assert first.status_code == replay.status_code == 200
    assert replay.json() == {**first.json(), "duplicate": True}
    tampered = post(client, "std", body + b" ", headers=std_headers(body, "m6"))
    assert tampered.status_code == 401


def test_verify_none_must_be_written_and_then_accepts_anything(client: TestClient, data_dir: Path) -> None:
    """A source without `verify` is a config error; `verify = "none"` accepts unsigned deliveries."""
    assert post(client, "open", {"a": 1}).status_code == 200
    with pytest.raises(ConfigError) as info:
        config_from_dict({"sources": [{"name": "x", "type": "t"}]}, env={})
    assert ("sources[0].verify", "Field required") in info.value.problems
    with pytest.raises(ConfigError) as info:
        config_from_dict({"sources": [{"name": "x", "verify": "token", "type": "t"}]}, env={})
    assert info.value.problems[0][0] == "sources[0]" and "secret" in info.value.problems[0][1]
    with pytest.raises(ConfigError):
        config_from_dict({"sources": [{"name": "x", "verify": "standard-webhooks", "secret": "plain", "type": "t"}]},
                         env={})


# -- deduplication and mapping -----------------------------------------------------------------------


def test_redelivery_gets_the_same_answer_and_creates_nothing(client: TestClient) -> None:
    """The same call_id again: 200 with the original seq, `duplicate: true`, one event stored."""
    body = {"call_id": "dup-1", "user": {"name": "bob"}, "from": {"number": "0987654321"}}
    first = post(client, "tok", body, query=f"?token={TOKEN}").json()
    again = post(client, "tok", {**body, "extra": "retry"}, query=f"?token={TOKEN}").json()
    assert again == {**first, "duplicate": True}
    assert len([e for e in stored(client, "pbx.*") if e["id"] == "dup-1"]) == 1


def test_mapping_type_from_path_fields_and_agent_scoping(client: TestClient) -> None:
    """`type = "$.event"` takes the type from the body; `fields` copy values into data, agent included."""
    body = orjson.dumps({"event": "call.ringing", "call_id": "t1", "status": "ringing"})
    assert post(client, "mac", body, headers={"X-Signature": mac(body)}).status_code == 200
    (event,) = [e for e in stored(client) if e["source"] == "mac"]
    assert event["type"] == "call.ringing" and event["id"] == "t1:ringing" and event["data"]["raw"]["status"] == "ringing"
    post(client, "tok", {"call_id": "t2", "user": {"name": "alice"}, "from": {"number": "1"}}, query=f"?token={TOKEN}")
    (mapped,) = [e for e in stored(client, "pbx.*") if e["id"] == "t2"]
    assert mapped["data"]["agent"] == "alice" and mapped["data"]["number"] == "1"
    no_type = orjson.dumps({"call_id": "t3", "status": "x"})
    r = post(client, "mac", no_type, headers={"X-Signature": mac(no_type)})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_event"


def test_missing_key_falls_back_to_the_body_hash(client: TestClient) -> None:
    """A delivery without its id field is still stored, keyed by its content; the same body again is a duplicate."""
    body = {"user": {"name": "chi"}}
    first = post(client, "tok", body, query=f"?token={TOKEN}").json()
    again = post(client, "tok", body, query=f"?token={TOKEN}").json()
    assert first["id"].startswith("sha256:") and again["duplicate"] is True and again["seq"] == first["seq"]


def test_raw_source_keeps_any_body_as_text(client: TestClient) -> None:
    """`format = "raw"` stores a non-JSON body as text with its content type."""
    r = client.post(f"/v1/webhooks/rawsrc?token={TOKEN}", content=b"caller=0912345678&status=missed",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    (event,) = stored(client, "raw.*")
    assert event["data"]["raw"] == "caller=0912345678&status=missed"
    assert event["data"]["content_type"] == "application/x-www-form-urlencoded"


# -- bad input -------------------------------------------------------------------------------------


def test_bad_input_gets_clear_4xx_and_never_500(client: TestClient) -> None:
    """Unknown source 404, GET 405, oversized 413, non-JSON 400, JSON that is not an object still stored."""
    assert post(client, "nope", {}).status_code == 404
    assert post(client, "nope", {}).json()["error"]["code"] == "not_found"
    assert client.get(f"/v1/webhooks/tok?token={TOKEN}").status_code == 405
    big = post(client, "tok", {"pad": "x" * 5000}, query=f"?token={TOKEN}")
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    garbage = post(client, "tok", b"{not json", query=f"?token={TOKEN}")
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "invalid_json"
    for odd in (b"[1,2,3]", b'"text"', b"null", b"42", b'{"call_id": {"nested": true}}', "ü".encode() * 10):
        r = post(client, "tok", odd, query=f"?token={TOKEN}")
        assert r.status_code in (200, 400, 422), (odd, r.text)
    assert client.get("/healthz").status_code == 200


# -- real server: bursts and durability ---------------------------------------------------------


def test_a_burst_of_1000_parallel_webhooks_gives_exactly_1000_events(tmp_path: Path) -> None:
    """1,000 distinct webhooks, 64 in flight at once, to a hub process: 1,000 answers 200, 1,000 events."""
    port = free_port()
    raw = raw_config(tmp_path / "data", server={"port": port})
    raw["sources"] = SOURCES[:1]
    hub = HubProcess(["--config", str(write_config(tmp_path / "hub.toml", raw))], port, tmp_path / "hub.log")
    try:
        hub.wait_healthy()

        async def burst() -> list[int]:
            # aiohttp, not httpx: httpx's connection pool costs milliseconds per request under
            # this much concurrency, and the test would measure the client.
            connector = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(hub.url, connector=connector) as session:
                async def send(i: int) -> int:
                    body = orjson.dumps({"call_id": f"burst-{i}", "user": {"name": "a"}, "from": {"number": "1"}})
                    async with session.post(f"/v1/webhooks/tok?token={TOKEN}", data=body,
                                            headers={"Content-Type": "application/json"}) as r:
                        return r.status

                return list(await asyncio.gather(*(send(i) for i in range(1000))))

        statuses = asyncio.run(burst())
        ids = [e["id"] for e in hub.history() if e["type"] == "pbx.call"]
    finally:
        hub.stop()
    assert statuses == [200] * 1000
    assert len(ids) == 1000 and len(set(ids)) == 1000


def test_kill_9_right_after_a_2xx_loses_nothing(tmp_path: Path) -> None:
    """Every webhook answered 2xx is in the store after the hub is killed with SIGKILL and restarted."""
    port = free_port()
    raw = raw_config(tmp_path / "data", server={"port": port})
    raw["sources"] = SOURCES[:1]
    config = write_config(tmp_path / "hub.toml", raw)
    hub = HubProcess(["--config", str(config)], port, tmp_path / "hub.log").wait_healthy()
    acked: list[str] = []
    try:
        with httpx.Client(base_url=hub.url, timeout=WAIT) as c:
            for i in range(50):
                r = post(c, "tok", {"call_id": f"k-{i}", "user": {"name": "a"}, "from": {"number": "1"}},
                         query=f"?token={TOKEN}")
                if r.status_code == 200:
                    acked.append(r.json()["id"])
        hub.kill9()
        again = HubProcess(["--config", str(config)], port, tmp_path / "hub2.log").wait_healthy()
        try:
            kept = {e["id"] for e in again.history()}
        finally:
            again.stop()
    finally:
        hub.stop()
    assert len(acked) == 50 and set(acked) <= kept
    assert TOKEN not in (tmp_path / "hub.log").read_text()


# -- replay windows and replay-safe keys ---------------------------------------------------------------


def _window_client(data_dir: Path) -> TestClient:
    raw = raw_config(data_dir)
    raw["sources"] = [
        {"name": "slack", "verify": "hmac-sha256", "secret": HMAC_SECRET, "header": "X-Slack-Signature",
         "timestamp_header": "X-Slack-Request-Timestamp", "signed": "v0:{timestamp}:{body}", "type": "slack.event"},
        {"name": "tokts", "verify": "token", "secret": TOKEN, "timestamp_header": "X-Timestamp", "type": "t.event",
         "tolerance": "60s"},
    ]
    return TestClient(create_app(config_from_dict(raw, env={})))


def test_an_hmac_source_with_a_timestamp_header_signs_it_and_refuses_stale_deliveries(data_dir: Path) -> None:
    """`signed = "v0:{timestamp}:{body}"`: the timestamp is signed, and one outside `tolerance` is 401 (stale)."""
    body = orjson.dumps({"event": "x"})

    def headers(at: float, stamp: str | None = None) -> dict[str, str]:
        sent = str(int(at))
        digest = hmac.new(HMAC_SECRET.encode(), f"v0:{sent}:".encode() + body, hashlib.sha256).hexdigest()
        return {"X-Slack-Signature": "v0=" + digest, "X-Slack-Request-Timestamp": stamp or sent}

    now = datetime.now(UTC).timestamp()
    with _window_client(data_dir) as client:
        assert post(client, "slack", body, headers=headers(now)).status_code == 200
        stale = post(client, "slack", body, headers=headers(now - 600))
        assert stale.status_code == 401 and "tolerance" in stale.json()["error"]["message"]
        moved = post(client, "slack", body, headers=headers(now - 600, stamp=str(int(now))))  # re-dated replay
        assert moved.status_code == 401
        assert post(client, "slack", body, headers={"X-Slack-Signature": headers(now)["X-Slack-Signature"]}).status_code == 401
        metrics = client.get("/metrics").text
    assert 'callhub_webhooks_rejected_total{reason="stale",source="slack"} 1.0' in metrics


def test_a_token_source_with_a_timestamp_header_refuses_old_deliveries(data_dir: Path) -> None:
    now = int(datetime.now(UTC).timestamp())
    with _window_client(data_dir) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert post(client, "tokts", {"a": 1}, headers={**auth, "X-Timestamp": str(now)}).status_code == 200
        assert post(client, "tokts", {"a": 2}, headers={**auth, "X-Timestamp": str(now - 120)}).status_code == 401
        assert post(client, "tokts", {"a": 3}, headers=auth).status_code == 401


def test_an_hmac_source_keyed_on_an_unsigned_header_is_refused_as_unsafe() -> None:
    """`id = "header:X"` with an HMAC over the body: a replay with the header changed would be a new event."""
    raw = {"sources": [{"name": "x", "verify": "hmac-sha256", "secret": HMAC_SECRET, "type": "t", "id": "header:X-Id"}]}
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, env={})
    ((where, message),) = info.value.problems
    assert where == "sources[0].id" and "unsafe" in message
    standard = {"sources": [{"name": "s", "verify": "standard-webhooks", "secret": WHSEC, "type": "t",
                             "id": "header:webhook-id"}]}
    config_from_dict(standard, env={})  # webhook-id is signed: fine
