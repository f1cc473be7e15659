"""The `webhook.post` rule action: signed (checked with the `standardwebhooks` package), retried with one
webhook-id, and refused for internal addresses unless allowed (SSRF guard)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.config import Config, config_from_dict
from hub.outbound.guard import EgressPolicy, EgressRefused, GuardedResolver, is_public
from hub.outbound.retry import NO_RETRY, ResponseTooLarge, send_with_retry
from hub.rules.engine import load_rules
from hub.webhooks.post import CORE_ACTIONS
from tests.helpers import ADMIN, WAIT, AppServer, ServerThread, raw_config, wait_until

SECRET = "whsec_" + base64.b64encode(b"callhub-test-signing-secret-0123").decode()


@dataclass
class Receiver:
    """A customer's webhook endpoint: records what arrives, answers the statuses it is told to."""

    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    #: The raw path and query of each request, as sent.
    paths: list[str] = field(default_factory=list)
    #: Seconds to wait before answering (after recording the request).
    delay: float = 0.0

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            if self.delay:
                await asyncio.sleep(self.delay)
            self.received.append({"headers": dict(request.headers), "body": body})
            echo = {"you_sent": dict(request.headers)}  # receivers that echo their request exist
            raw = request.scope["raw_path"].decode() + ("?" + request.scope["query_string"].decode()
                                                         if request.scope["query_string"] else "")
            self.paths.append(raw)
            status = self.statuses.pop(0) if self.statuses else 200
            return JSONResponse({"ok": status < 300, **echo}, status_code=status)

        return Starlette(routes=[Route("/hook{rest:path}", hook, methods=["POST"])])


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, AppServer]]:
    state = Receiver()
    with AppServer(state.app()) as server:
        yield state, server


def rule(url: str, **action: Any) -> dict[str, Any]:
    return {"name": "notify", "on": ["call.ended"], "when": {"data.outcome": "no_answer"},
            "actions": [{"type": "webhook.post", "url": url, **action}]}


def hub_config(data_dir: Path, rules: list[dict[str, Any]], *, allow: list[str] | None = None,
               retry_for: str = "3s") -> Config:
    actions = {"allow_private": ["127.0.0.1/32"] if allow is None else allow,
               "webhook": {"secret": SECRET, "retry_for": retry_for}}
    raw = raw_config(data_dir, actions=actions)
    raw["rules"] = rules
    return config_from_dict(raw, env={})


def missed(event_id: str = "c-1", number: str = "0903555777") -> dict[str, Any]:
    return {"type": "call.ended", "id": event_id, "source": "pbx",
            "data": {"outcome": "no_answer", "call_id": event_id, "from": {"number": number}}}


def outcomes(hub: ServerThread) -> list[dict[str, Any]]:
    r = httpx.get(f"{hub.url}/v1/events?types=action.*", headers=ADMIN, timeout=WAIT)
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def one_outcome(hub: ServerThread) -> dict[str, Any]:
    wait_until(lambda: bool(outcomes(hub)), what="the action's outcome")
    (report,) = outcomes(hub)
    return report


def test_posts_a_rendered_template_signed_the_standard_webhooks_way(
    data_dir: Path, receiver: tuple[Receiver, AppServer]
) -> None:
    state, server = receiver
    config = hub_config(data_dir, [rule(f"{server.url}/hook", body={"text": "Missed call from {data.from.number}",
                                                                   "call": "{data.call_id}"},
                                       headers={"X-Team": "support"})])
    with ServerThread(config) as hub:
        hub.publish(missed())
        report = one_outcome(hub)
    assert report["type"] == "action.succeeded", report
    (request,) = state.received
    payload = Webhook(SECRET).verify(request["body"], request["headers"])  # raises unless the signature holds
    assert payload == {"text": "Missed call from 0903555777", "call": "c-1"}
    assert request["headers"]["x-team"] == "support"
    assert request["headers"]["content-type"] == "application/json"
    assert report["data"]["result"]["webhook_id"] == request["headers"]["webhook-id"]
    assert report["data"]["result"]["status"] == 200


def test_without_a_body_the_triggering_event_is_posted(data_dir: Path, receiver: tuple[Receiver, AppServer]) -> None:
    state, server = receiver
    with ServerThread(hub_config(data_dir, [rule(f"{server.url}/hook")])) as hub:
        (seq,) = hub.publish(missed("c-2"))
        assert one_outcome(hub)["type"] == "action.succeeded"
    event = Webhook(SECRET).verify(state.received[0]["body"], state.received[0]["headers"])
    assert event["id"] == "c-2" and event["type"] == "call.ended" and event["seq"] == seq
    assert event["data"]["from"]["number"] == "0903555777"


def test_5xx_is_retried_with_the_same_webhook_id_so_the_receiver_can_deduplicate(
    data_dir: Path, receiver: tuple[Receiver, AppServer]
) -> None:
    state, server = receiver
    state.statuses = [503, 500]
    with ServerThread(hub_config(data_dir, [rule(f"{server.url}/hook")])) as hub:
        hub.publish(missed())
        report = one_outcome(hub)
    assert report["type"] == "action.succeeded"
    assert len(state.received) == 3
    assert len({r["headers"]["webhook-id"] for r in state.received}) == 1
    for request in state.received:  # each try is signed afresh, and each signature holds
        Webhook(SECRET).verify(request["body"], request["headers"])


def test_a_receiver_that_keeps_failing_gives_action_failed_with_its_status(
    data_dir: Path, receiver: tuple[Receiver, AppServer]
) -> None:
    state, server = receiver
    state.statuses = [500] * 100
    with ServerThread(hub_config(data_dir, [rule(f"{server.url}/hook")], retry_for="1s")) as hub:
        hub.publish(missed())
        report = one_outcome(hub)
        rules = httpx.get(f"{hub.url}/v1/rules", headers=ADMIN, timeout=WAIT).json()["rules"]
        failed = hub.metric("callhub_actions_total", type="webhook.post", status="failed")
    assert report["type"] == "action.failed" and failed == 1
    assert report["data"]["error"].endswith("answered 500")
    assert report["data"]["result"]["status"] == 500
    assert len(state.received) >= 2, "retried before giving up"
    assert rules[0]["actions_failed"] == 1


def test_an_internal_address_is_refused_unless_allowed(data_dir: Path, receiver: tuple[Receiver, AppServer]) -> None:
    """The SSRF guard: with nothing allowed, 127.0.0.1 (and `localhost`) are not called at all."""
    state, server = receiver
    port = server.url.rsplit(":", 1)[1]
    rules = [rule(f"{server.url}/hook"), {**rule(f"http://localhost:{port}/hook"), "name": "by-name"}]
    with ServerThread(hub_config(data_dir, rules, allow=[])) as hub:
        hub.publish(missed())
        wait_until(lambda: len(outcomes(hub)) == 2, what="both outcomes")
        reports = outcomes(hub)
    assert {r["type"] for r in reports} == {"action.failed"}
    assert all("internal address" in r["data"]["error"] for r in reports), reports
    assert state.received == []
    # What `localhost` resolves to is the operator's business: it goes to the log, not to subscribers.
    (by_name,) = [r for r in reports if r["data"]["rule"] == "by-name"]
    assert "127.0.0.1" not in by_name["data"]["error"] and "::1" not in by_name["data"]["error"]


def test_outcome_events_show_the_target_host_never_headers_or_url_secrets(
    data_dir: Path, receiver: tuple[Receiver, AppServer]
) -> None:
    """A rule's `Authorization` header and a key in its URL never reach the action.* event subscribers see."""
    state, server = receiver
    state.statuses = [200, 404]
    secret_header, secret_query = "Bearer s3cr3t-header-value", "s3cr3t-query-value"
    rules = [rule(f"{server.url}/hook?key={secret_query}", headers={"Authorization": secret_header}),
             {**rule(f"{server.url}/hook?key={secret_query}", headers={"Authorization": secret_header}),
              "name": "second"}]
    with ServerThread(hub_config(data_dir, rules, retry_for="0s")) as hub:
        hub.publish(missed())
        wait_until(lambda: len(outcomes(hub)) == 2, what="both outcomes")
        raw = httpx.get(f"{hub.url}/v1/events?types=action.*", headers=ADMIN, timeout=WAIT).text
        reports = outcomes(hub)
    assert {r["type"] for r in reports} == {"action.succeeded", "action.failed"}
    assert secret_header not in raw and "s3cr3t" not in raw  # the receiver echoes what it got: not kept
    assert all(r["data"]["target"] == {"host": "127.0.0.1"} for r in reports), reports
    assert all(r["headers"]["authorization"] == secret_header for r in state.received)  # it was sent, only not shown


def test_an_event_value_in_a_url_cannot_change_the_host_or_the_path(
    data_dir: Path, receiver: tuple[Receiver, AppServer]
) -> None:
    """`{data.tenant}` placeholders in a URL are percent-encoded: `evil.com/` stays one path segment."""
    state, server = receiver
    with ServerThread(hub_config(data_dir, [rule(f"{server.url}/hook/{{data.tenant}}?t={{data.tenant}}"),
                                            {**rule(f"{server.url}/hook/{{data.up}}"), "name": "dots"}])) as hub:
        hub.publish({**missed(), "data": {**missed()["data"], "tenant": "evil.com/../x?y=1&z", "up": ".."}})
        wait_until(lambda: len(outcomes(hub)) == 2, what="both outcomes")
    assert sorted(state.paths) == ["/hook/%2E%2E",  # a dot segment would have climbed to `/`
                                   "/hook/evil%2Ecom%2F%2E%2E%2Fx%3Fy%3D1%26z?t=evil%2Ecom%2F%2E%2E%2Fx%3Fy%3D1%26z"]


def test_a_compressed_answer_cannot_expand_past_the_reading_limit() -> None:
    """256 KB of gzip that inflates to 256 MB: reading stops at the limit instead of inflating each
    network chunk whole (httpx's own decoders turn one 64 KB chunk of it into 64 MB)."""
    import resource
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * 2**20
    bomb = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while b"\r\n\r\n" not in conn.recv(65536):
                pass
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(bomb))
            try:
                conn.sendall(bomb)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def fetch() -> None:
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
            await send_with_retry(http, lambda: http.build_request("GET", url), NO_RETRY)

    with pytest.raises(ResponseTooLarge):
        asyncio.run(fetch())
    listener.close()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 24, f"peak memory grew by {grown_mib:.0f} MiB"


def test_a_huge_answer_is_read_no_further_than_what_the_action_keeps(data_dir: Path) -> None:
    """A receiver answering an endless body costs the hub a few kilobytes, not its memory: the hub
    stops reading and hangs up, so the receiver cannot push more than the sockets' buffers hold."""
    sent = [0]
    listener = socket.create_server(("127.0.0.1", 0))

    def endless_receiver() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            try:
                for _ in range(100_000):  # 6.4 GB if it were all read
                    conn.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass  # the hub hung up

    thread = threading.Thread(target=endless_receiver, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    with ServerThread(hub_config(data_dir, [rule(url)])) as hub:
        hub.publish(missed())
        report = one_outcome(hub)
        thread.join(WAIT)
    listener.close()
    assert report["type"] == "action.succeeded" and report["data"]["result"]["status"] == 200
    assert not thread.is_alive() and sent[0] < 64 * 2**20, f"the receiver pushed {sent[0]} bytes"


def test_a_host_name_keeps_its_host_header_while_the_checked_address_is_called(
    data_dir: Path, receiver: tuple[Receiver, AppServer]
) -> None:
    state, server = receiver
    port = server.url.rsplit(":", 1)[1]
    config = hub_config(data_dir, [rule(f"http://localhost:{port}/hook")], allow=["127.0.0.0/8", "::1/128"])
    with ServerThread(config) as hub:
        hub.publish(missed())
        assert one_outcome(hub)["type"] == "action.succeeded"
    assert state.received[0]["headers"]["host"] == f"localhost:{port}"


def test_reserved_headers_and_bad_urls_fail_the_action_without_a_request(
    data_dir: Path, receiver: tuple[Receiver, AppServer]
) -> None:
    state, server = receiver
    rules = [rule(f"{server.url}/hook", headers={"webhook-signature": "v1,forged"}),
             {**rule("ftp://example.com/x"), "name": "ftp"}]
    with ServerThread(hub_config(data_dir, rules)) as hub:
        hub.publish(missed())
        wait_until(lambda: len(outcomes(hub)) == 2, what="both outcomes")
        errors = sorted(r["data"]["error"] for r in outcomes(hub))
    assert "may not set webhook-signature" in errors[1] and "only http:// and https://" in errors[0]
    assert state.received == []


def test_a_rule_without_url_is_refused_at_load_time() -> None:
    bad = {"name": "no-url", "on": ["call.ended"], "actions": [{"type": "webhook.post", "body": "x"}]}
    _, problems = load_rules([bad], None, CORE_ACTIONS)
    assert [(p.rule, p.key, p.message) for p in problems] == [("no-url", "actions[0]", "webhook.post needs url")]


# -- the guard itself ----------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fc00::1",
                                     "::ffff:127.0.0.1", "::ffff:10.0.0.1",
                                     # IPv4 inside IPv6: compatible, NAT64, local NAT64, 6to4; and site-local
                                     "::127.0.0.1", "::169.254.169.254", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
                                     "64:ff9b:1::808:808", "2002:7f00:1::1", "2002:a00:1::", "fec0::1",
                                     "::ffff:0:7f00:1", "192.0.0.9", "192.0.0.10"])
def test_internal_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    with pytest.raises(EgressRefused):
        asyncio.run(EgressPolicy().check(f"http://[{address}]/x" if ":" in address else f"http://{address}/x"))


@pytest.mark.parametrize("address", ["8.8.8.8", "203.113.1.1", "2001:4860:4860::8888", "64:ff9b::808:808",
                                     "2002:808:808::1"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))
    assert [str(a) for a in asyncio.run(EgressPolicy().addresses(address, 443))] == [address]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://x/", "http:///nohost", "https://user:pw@example.com/",
                                 "http://example.com:99999/"])
def test_only_plain_http_urls_are_called(url: str) -> None:
    with pytest.raises(EgressRefused):
        EgressPolicy().check_url(url)


def test_an_allowed_network_or_host_name_passes() -> None:
    assert [str(a) for a in asyncio.run(EgressPolicy(["10.0.0.0/8"]).addresses("10.2.3.4", 80))] == ["10.2.3.4"]
    with pytest.raises(EgressRefused):
        asyncio.run(EgressPolicy(["10.0.0.0/8"]).check("http://192.168.0.1/x"))
    assert all(a.is_loopback for a in asyncio.run(EgressPolicy(["localhost"]).addresses("localhost", 8000)))


def test_the_client_connects_only_to_addresses_the_guard_checked() -> None:
    """aiohttp resolves through the guard: it gets the checked addresses under the name (so Host, SNI and
    the certificate check use the name), and a name resolving inside is refused before any connection."""
    answers = asyncio.run(GuardedResolver(EgressPolicy(["localhost"])).resolve("localhost", 8443))
    assert answers and all(a["hostname"] == "localhost" and ipaddress.ip_address(a["host"]).is_loopback
                           and a["port"] == 8443 for a in answers)
    with pytest.raises(EgressRefused):
        asyncio.run(GuardedResolver(EgressPolicy()).resolve("localhost", 80))
