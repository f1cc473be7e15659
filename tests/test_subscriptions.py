"""Outbound webhook subscriptions, against real receivers on loopback that verify every delivery
with the `standardwebhooks` package, fail, hang, answer 410 or 429, and a hub killed with -9."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.config import ConfigError, config_from_dict
from tests.helpers import (
    ADMIN,
    PUBLISHER,
    TICK,
    WAIT,
    AppServer,
    HubProcess,
    ServerThread,
    free_port,
    raw_config,
    wait_until,
    write_config,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: A fast schedule for tests: four attempts a few ticks apart.
FAST = [0, 4 * TICK, 4 * TICK, 4 * TICK]


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        import orjson
        loaded: dict[str, Any] = orjson.loads(self.body)
        return loaded


@dataclass
class Endpoint:
    """A customer's endpoint. `answer(event, attempt)` decides each status (default 200); it may
    also hang (`hang` seconds before answering). Every request is recorded, verified or not."""

    secret: str | None = None
    received: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    failing_calls: dict[str, int] = field(default_factory=dict)
    failing_types: dict[str, int] = field(default_factory=dict)
    always: int | None = None
    hang: float = 0.0
    retry_after: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            delivery = Delivery(dict(request.headers), body, time.monotonic())
            with self.lock:
                self.received.append(delivery)
            if self.hang:
                await asyncio.sleep(self.hang)
            status = self.status_for(delivery)
            headers = {"Retry-After": self.retry_after} if status == 429 and self.retry_after else None
            return JSONResponse({"ok": status < 300}, status_code=status, headers=headers)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def status_for(self, delivery: Delivery) -> int:
        if self.always is not None:
            return self.always
        call = (delivery.event.get("data") or {}).get("call_id")
        type_ = delivery.event.get("type")
        with self.lock:
            if call in self.failing_calls and self.failing_calls[call] > 0:
                self.failing_calls[call] -= 1
                return 503
            if type_ in self.failing_types and self.failing_types[type_] > 0:
                self.failing_types[type_] -= 1
                return 503
            if self.answers:
                return self.answers.pop(0)
        return 200

    def verified(self) -> list[dict[str, Any]]:
        """Every delivery, verified with the `standardwebhooks` package (raises if one does not verify)."""
        assert self.secret is not None
        hook = Webhook(self.secret)
        with self.lock:
            received = list(self.received)
        return [hook.verify(d.body, d.headers) for d in received]

    def ids(self) -> list[str]:
        with self.lock:
            return [d.event["id"] for d in self.received]


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, AppServer]]:
    state = Endpoint()
    with AppServer(state.app()) as server:
        yield state, server


def hub_config(data_dir: Path, *, allow: bool = True, **webhooks: Any) -> Any:
    section: dict[str, Any] = {"retry_schedule": FAST, **webhooks}
    if allow:
        section.setdefault("allow_hosts", ["127.0.0.1"])
    return config_from_dict(raw_config(data_dir, webhooks=section), env={})


def call(type_: str, call_id: str, **data: Any) -> dict[str, Any]:
    return {"type": type_, "data": {"call_id": call_id, **data}}


def api(hub: ServerThread, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", ADMIN)
    return httpx.request(method, f"{hub.url}{path}", headers=headers, timeout=WAIT, **kwargs)


def subscribe(hub: ServerThread, url: str, **spec: Any) -> dict[str, Any]:
    r = api(hub, "POST", "/v1/subscriptions", json={"url": url, **spec})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def log(hub: ServerThread, sub: str, **params: Any) -> list[dict[str, Any]]:
    r = api(hub, "GET", f"/v1/subscriptions/{sub}/deliveries", params=params)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["deliveries"]
    return rows


def hub_events(hub: ServerThread, types: str) -> list[dict[str, Any]]:
    r = api(hub, "GET", "/v1/events", params={"types": types})
    events: list[dict[str, Any]] = r.json()["events"]
    return events


# -- the basics: signed, verified, the CloudEvent as stored ---------------------------------------------


def test_a_subscription_delivers_signed_cloudevents_that_standardwebhooks_verifies(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    with ServerThread(hub_config(data_dir)) as hub:
        created = subscribe(hub, f"{server.url}/hook", types=["call.*"], description="CRM")
        assert created["secret"].startswith("whsec_") and created["state"] == "active"
        state.secret = created["secret"]
        seqs = hub.publish(call("call.ringing", "c-1"), call("call.answered", "c-1"), {"type": "agent.login"})
        wait_until(lambda: len(state.received) == 2, what="two deliveries")
        shown = api(hub, "GET", f"/v1/subscriptions/{created['id']}").json()
        listed = api(hub, "GET", "/v1/subscriptions").json()
    events = state.verified()  # raises unless every signature holds
    assert [e["seq"] for e in events] == seqs[:2] and [e["type"] for e in events] == ["call.ringing", "call.answered"]
    first = state.received[0]
    assert first.headers["content-type"] == "application/cloudevents+json"
    assert first.headers["webhook-id"] != state.received[1].headers["webhook-id"]
    assert abs(int(first.headers["webhook-timestamp"]) - time.time()) < 60
    assert "secret" not in shown and created["secret"] not in str(listed)
    assert shown["description"] == "CRM" and shown["backlog"] == 0 and shown["last_success"]
    assert listed["count"] == 1


def test_filters_use_the_rules_operators(data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    with ServerThread(hub_config(data_dir)) as hub:
        subscribe(hub, f"{server.url}/hook", types=["call.ended"],
                  filter={"data.direction": "inbound", "data.duration": {"gte": 30}})
        hub.publish(call("call.ended", "a", direction="inbound", duration=45),
                    call("call.ended", "b", direction="outbound", duration=45),
                    call("call.ended", "c", direction="inbound", duration=5),
                    call("call.ended", "d", direction="inbound", duration=31))
        wait_until(lambda: len(state.received) == 2, what="two deliveries")
        time.sleep(10 * TICK)
    assert sorted(d.event["data"]["call_id"] for d in state.received) == ["a", "d"]


def test_subscriptions_sharing_a_filter_each_get_their_events_and_a_type_change_applies_at_once(
        data_dir: Path) -> None:
    """The commit hook remembers which subscriptions listen to a type and decides a shared filter
    once per event: neither may leak an event to the wrong endpoint or keep an old type."""
    a, b, c = Endpoint(), Endpoint(), Endpoint()
    inbound = {"data.direction": "inbound"}
    with AppServer(a.app()) as sa, AppServer(b.app()) as sb, AppServer(c.app()) as sc, \
            ServerThread(hub_config(data_dir)) as hub:
        first = subscribe(hub, f"{sa.url}/hook", types=["call.ended"], filter=inbound)
        subscribe(hub, f"{sb.url}/hook", types=["call.*"], filter=inbound)
        subscribe(hub, f"{sc.url}/hook", types=["call.ended"], filter={"data.direction": "outbound"})
        hub.publish(call("call.ended", "in-1", direction="inbound"), call("call.ended", "out-1", direction="outbound"))
        wait_until(lambda: len(a.received) + len(b.received) + len(c.received) == 3, what="three deliveries")
        r = api(hub, "PATCH", f"/v1/subscriptions/{first['id']}", json={"types": ["call.ringing"]})
        assert r.status_code == 200, r.text
        hub.publish(call("call.ended", "in-2", direction="inbound"), call("call.ringing", "in-3", direction="inbound"))
        wait_until(lambda: len(a.received) + len(b.received) == 5, what="the events after the change")
        time.sleep(10 * TICK)

    def calls(endpoint: Endpoint) -> list[str]:
        return sorted(d.event["data"]["call_id"] for d in endpoint.received)

    assert calls(a) == ["in-1", "in-3"]
    assert calls(b) == ["in-1", "in-2", "in-3"]
    assert calls(c) == ["out-1"]


def test_retries_carry_one_webhook_id_and_the_log_shows_every_attempt(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    state.answers = [500, 503]
    with ServerThread(hub_config(data_dir)) as hub:
        created = subscribe(hub, f"{server.url}/hook")
        state.secret = created["secret"]
        hub.publish(call("call.ringing", "c-1"))
        wait_until(lambda: len(state.received) == 3, what="three attempts")
        wait_until(lambda: len(log(hub, created["id"])) == 3, what="the log")
        rows = log(hub, created["id"])
        failed_only = log(hub, created["id"], status="retrying")
    state.verified()
    assert len({d.headers["webhook-id"] for d in state.received}) == 1
    assert [r["outcome"] for r in rows] == ["retrying", "retrying", "delivered"]
    assert [r["status"] for r in rows] == [500, 503, 200] and [r["attempt"] for r in rows] == [1, 2, 3]
    assert rows[2]["response"] == '{"ok":true}' and rows[2]["latency_ms"] > 0
    assert rows[0]["webhook_id"] == state.received[0].headers["webhook-id"]
    assert len(failed_only) == 2


# -- per call ordering ------------------------------------------------------------------------------


def test_a_failing_event_holds_back_only_the_later_events_of_its_call(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    state.failing_calls = {"A": 2}  # A's first event fails twice, then goes
    with ServerThread(hub_config(data_dir, retry_schedule=[0, 10 * TICK, 10 * TICK])) as hub:
        subscribe(hub, f"{server.url}/hook")
        hub.publish(call("call.ringing", "A"), call("call.ringing", "B"), call("call.answered", "A"),
                    call("call.answered", "B"), call("call.ended", "A"), call("call.ended", "B"))
        wait_until(lambda: len(state.received) == 8, what="every event, A's first three times")
    order = [(d.event["data"]["call_id"], d.event["type"]) for d in state.received]
    a_events = [t for c, t in order if c == "A"]
    assert a_events == ["call.ringing"] * 3 + ["call.answered", "call.ended"]
    # B went on while A's first event was retried: all of B before A's second attempt.
    second_a = [i for i, (c, _) in enumerate(order) if c == "A"][1]
    assert [t for c, t in order[:second_a] if c == "B"] == ["call.ringing", "call.answered", "call.ended"]


def test_ordering_none_lets_a_call_s_later_events_pass_a_failing_one(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    state.failing_types = {"call.ringing": 1}
    with ServerThread(hub_config(data_dir, retry_schedule=[0, 20 * TICK])) as hub:
        subscribe(hub, f"{server.url}/hook", ordering="none")
        hub.publish(call("call.ringing", "A"), call("call.answered", "A"))
        wait_until(lambda: len(state.received) == 3, what="three requests")
    types = [d.event["type"] for d in state.received]
    # The answered went while the ringing waited for its retry (in parallel with its first attempt).
    assert sorted(types[:2]) == ["call.answered", "call.ringing"] and types[2] == "call.ringing"


# -- final failures, retry of one delivery, expiry -------------------------------------------------------


def test_a_4xx_is_final_and_one_delivery_can_be_retried(data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    state.answers = [400]
    with ServerThread(hub_config(data_dir)) as hub:
        created = subscribe(hub, f"{server.url}/hook")
        (seq,) = hub.publish(call("call.ringing", "c-1"))
        wait_until(lambda: bool(log(hub, created["id"], status="failed")), what="the failure")
        (row,) = log(hub, created["id"])
        wait_until(lambda: bool(hub_events(hub, "hub.delivery.exhausted")), what="hub.delivery.exhausted")
        (report,) = hub_events(hub, "hub.delivery.exhausted")
        assert len(state.received) == 1  # not retried
        r = api(hub, "POST", f"/v1/deliveries/{row['delivery']}/retry")
        assert r.status_code == 202, r.text
        wait_until(lambda: len(state.received) == 2, what="the retry")
        wait_until(lambda: [x["outcome"] for x in log(hub, created["id"])] == ["failed", "delivered"], what="logged")
        unknown = api(hub, "POST", f"/v1/deliveries/{created['id']}.999999/retry")
        malformed = api(hub, "POST", "/v1/deliveries/nothing/retry")
    assert row["delivery"] == f"{created['id']}.{seq}" and row["status"] == 400
    assert report["data"]["subscription"] == created["id"] and report["data"]["reason"] == "rejected"
    assert report["data"]["delivery"] == row["delivery"] and report["data"]["status"] == 400
    assert "url" not in report["data"] and created["secret"] not in str(report)
    assert state.received[0].headers["webhook-id"] == state.received[1].headers["webhook-id"]
    assert unknown.status_code == 404 and malformed.status_code == 404


def test_retries_run_out_into_failed_and_hub_delivery_exhausted(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    state.always = 502
    with ServerThread(hub_config(data_dir, retry_schedule=[0, 2 * TICK, 2 * TICK])) as hub:
        created = subscribe(hub, f"{server.url}/hook")
        hub.publish(call("call.ringing", "c-1"))
        wait_until(lambda: bool(hub_events(hub, "hub.delivery.exhausted")), what="exhausted")
        rows = log(hub, created["id"])
        # The hub's report about the subscription is not sent to that subscription.
        time.sleep(10 * TICK)
    assert [r["outcome"] for r in rows] == ["retrying", "retrying", "failed"]
    assert len(state.received) == 3
    assert all(d.event["type"] == "call.ringing" for d in state.received)


def test_an_event_past_its_max_age_is_expired_not_retried(data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    with ServerThread(hub_config(data_dir, retry_schedule=[0, 30 * TICK, 30 * TICK])) as hub:
        created = subscribe(hub, f"{server.url}/hook", max_age_s={"call.ringing": 20 * TICK, "call.*": 3600})
        ten_minutes_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
        hub.publish({**call("call.ringing", "old"), "time": ten_minutes_ago},
                    {**call("call.ended", "old"), "time": ten_minutes_ago})
        wait_until(lambda: len(log(hub, created["id"])) == 2, what="both settled")
        first = {r["seq"]: r["outcome"] for r in log(hub, created["id"])}
        # A fresh ringing that fails: by its retry it is too old, so it expires instead.
        state.answers = [503]
        hub.publish(call("call.ringing", "fresh"))
        wait_until(lambda: len(log(hub, created["id"])) == 3, what="expired after its failure")
        rows = log(hub, created["id"])
    assert sorted(first.values()) == ["delivered", "expired"]
    assert [d.event["type"] for d in state.received] == ["call.ended", "call.ringing"]
    # Its next attempt would have come past its age: expired at once (its call goes on), not retried.
    assert [(r["outcome"], r["status"]) for r in rows[2:]] == [("expired", 503)]
    assert "max_age_s" in rows[2]["error"]


# -- endpoint health: 410, continuous failure, 429, a hanging endpoint -----------------------------------


def test_410_disables_the_subscription_and_enable_brings_it_back(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    state.answers = [410]
    with ServerThread(hub_config(data_dir)) as hub:
        created = subscribe(hub, f"{server.url}/hook")
        hub.publish(call("call.ringing", "c-1"))
        wait_until(lambda: api(hub, "GET", f"/v1/subscriptions/{created['id']}").json()["state"] == "disabled",
                   what="disabled")
        shown = api(hub, "GET", f"/v1/subscriptions/{created['id']}").json()
        wait_until(lambda: bool(hub_events(hub, "hub.subscription.disabled")), what="hub.subscription.disabled")
        hub.publish(call("call.ended", "c-1"))
        time.sleep(10 * TICK)
        assert len(state.received) == 1  # nothing goes to a disabled subscription
        r = api(hub, "POST", f"/v1/subscriptions/{created['id']}/enable")
        assert r.status_code == 200 and r.json()["state"] == "active"
        wait_until(lambda: len(state.received) == 2, what="the backlog after enable")
    assert "410" in shown["disabled"]["reason"]
    assert state.received[1].event["type"] == "call.ended"


def test_a_subscription_failing_continuously_is_disabled(data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    state.always = 500
    config = hub_config(data_dir, retry_schedule=[0] + [4 * TICK] * 20, disable_after=f"{20 * TICK}s")
    with ServerThread(config) as hub:
        created = subscribe(hub, f"{server.url}/hook")
        hub.publish(call("call.ringing", "c-1"))
        wait_until(lambda: bool(hub_events(hub, "hub.subscription.disabled")), what="disabled")
        (report,) = hub_events(hub, "hub.subscription.disabled")
        shown = api(hub, "GET", f"/v1/subscriptions/{created['id']}").json()
        attempts = len(state.received)
        time.sleep(12 * TICK)
        assert len(state.received) == attempts  # no more attempts
    assert shown["state"] == "disabled" and "without a success" in shown["disabled"]["reason"]
    assert report["data"]["subscription"] == created["id"]


def test_429_retry_after_is_honoured(data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    state.answers = [429]
    state.retry_after = "1"
    with ServerThread(hub_config(data_dir, retry_schedule=[0, TICK])) as hub:
        subscribe(hub, f"{server.url}/hook")
        hub.publish(call("call.ringing", "c-1"))
        wait_until(lambda: len(state.received) == 2, what="the second attempt")
    assert state.received[1].at - state.received[0].at >= 0.95


def test_a_hanging_endpoint_times_out_and_never_delays_another(data_dir: Path) -> None:
    slow, fast = Endpoint(hang=120 * TICK), Endpoint()
    with AppServer(slow.app()) as slow_server, AppServer(fast.app()) as fast_server, \
            ServerThread(hub_config(data_dir, request_timeout=f"{30 * TICK}s",
                                    retry_schedule=[0, 200 * TICK])) as hub:
        stuck = subscribe(hub, f"{slow_server.url}/hook", ordering="none")
        subscribe(hub, f"{fast_server.url}/hook")
        started = time.monotonic()
        hub.publish(*[call("call.ringing", f"c-{i}") for i in range(20)])
        wait_until(lambda: len(fast.received) == 20, what="the healthy endpoint's deliveries")
        elapsed = time.monotonic() - started
        wait_until(lambda: len(log(hub, stuck["id"], status="retrying")) == 20, what="timeouts logged")
        rows = log(hub, stuck["id"])
    assert elapsed < 25 * TICK, f"the healthy endpoint waited {elapsed:.2f}s (the slow one times out after 30 ticks)"
    assert all("did not answer in time" in r["error"] for r in rows)
    # The concurrency bound ([webhooks] concurrency = 16): the 17th waited for a timeout.
    assert slow.received[16].at - slow.received[0].at >= 28 * TICK


def test_the_rate_limit_spaces_deliveries(data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    with ServerThread(hub_config(data_dir)) as hub:
        subscribe(hub, f"{server.url}/hook", rate_limit_per_s=10)
        hub.publish(*[call("call.ringing", f"c-{i}") for i in range(20)])
        wait_until(lambda: len(state.received) == 20, what="every delivery")
    spread = state.received[-1].at - state.received[0].at
    assert spread >= 0.9, f"20 deliveries at 10/s (burst 10) took only {spread:.2f}s"


# -- secrets: rotation with overlap ----------------------------------------------------------------------


def test_rotation_signs_with_both_secrets_during_the_overlap(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    with ServerThread(hub_config(data_dir, secret_overlap=f"{30 * TICK}s")) as hub:
        created = subscribe(hub, f"{server.url}/hook")
        old = created["secret"]
        r = api(hub, "POST", f"/v1/subscriptions/{created['id']}/rotate-secret")
        assert r.status_code == 200, r.text
        new = r.json()["secret"]
        assert new != old and r.json()["secret_rotation_ends"]
        hub.publish(call("call.ringing", "during"))
        wait_until(lambda: len(state.received) == 1, what="a delivery during the overlap")
        time.sleep(32 * TICK)
        hub.publish(call("call.ringing", "after"))
        wait_until(lambda: len(state.received) == 2, what="a delivery after it")
    during, after = state.received
    assert len(during.headers["webhook-signature"].split()) == 2
    for secret in (old, new):  # a receiver on either secret accepts it
        Webhook(secret).verify(during.body, during.headers)
    Webhook(new).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)


# -- replay -----------------------------------------------------------------------------------------------


def test_replay_resends_a_range_of_stored_events(data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    with ServerThread(hub_config(data_dir)) as hub:
        created = subscribe(hub, f"{server.url}/hook", max_age_s={"call.*": 1})
        seqs = hub.publish(*[call("call.ringing", f"c-{i}") for i in range(5)])
        wait_until(lambda: len(state.received) == 5, what="five deliveries")
        time.sleep(1.1)  # past their max age: a replay sends them anyway (an operator asked)
        r = api(hub, "POST", f"/v1/subscriptions/{created['id']}/replay", json={"after_seq": seqs[1]})
        assert r.status_code == 202, r.text
        assert r.json()["from_seq"] == seqs[1] + 1
        wait_until(lambda: len(state.received) == 8, what="three replayed")
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        r = api(hub, "POST", f"/v1/subscriptions/{created['id']}/replay", json={"since": since})
        assert r.status_code == 202, r.text
        wait_until(lambda: len(state.received) == 13, what="all five again")
        bad = [api(hub, "POST", f"/v1/subscriptions/{created['id']}/replay", json=body).status_code
               for body in ({}, {"after_seq": -1}, {"since": "yesterday"}, {"after_seq": 10**9},
                            {"after_seq": 1, "since": since}, {"from": 1})]
    # Different calls go in parallel: compare each round by seq.
    rounds = [sorted(state.received[a:b], key=lambda d: d.event["seq"]) for a, b in ((0, 5), (5, 8), (8, 13))]
    seqs_of = [[d.event["seq"] for d in r] for r in rounds]
    assert seqs_of == [seqs, seqs[2:], seqs]
    hooks = [[d.headers["webhook-id"] for d in r] for r in rounds]
    assert hooks[1] == hooks[0][2:] and hooks[2] == hooks[0]  # the same webhook-id: a receiver that has it ignores it
    assert bad == [400] * 6


# -- config-declared subscriptions -------------------------------------------------------------------------


def test_config_declared_subscriptions_deliver_and_are_read_only(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    state.secret = SECRET
    declared = {"id": "warehouse", "url": f"{server.url}/hook", "secret": SECRET, "types": ["call.ended"]}
    with ServerThread(hub_config(data_dir, subscriptions=[declared])) as hub:
        hub.publish(call("call.ended", "c-1"), call("call.ringing", "c-2"))
        wait_until(lambda: len(state.received) == 1, what="the delivery")
        shown = api(hub, "GET", "/v1/subscriptions/warehouse").json()
        refused = [api(hub, "PATCH", "/v1/subscriptions/warehouse", json={"types": []}),
                   api(hub, "DELETE", "/v1/subscriptions/warehouse"),
                   api(hub, "POST", "/v1/subscriptions/warehouse/rotate-secret")]
        replay = api(hub, "POST", "/v1/subscriptions/warehouse/replay", json={"after_seq": 0})
    assert state.verified()[0]["type"] == "call.ended"
    assert shown["managed_by"] == "config"
    assert [r.status_code for r in refused] == [409] * 3
    assert all(r.json()["error"]["code"] == "managed_by_config" for r in refused)
    assert replay.status_code == 202


def test_a_bad_retry_schedule_in_the_config_names_the_key(data_dir: Path) -> None:
    for schedule, words in (([], "at least 1"), (["soon"], "retry_schedule"), ([0, 30 * 86400], "7 days")):
        with pytest.raises(ConfigError) as err:
            config_from_dict(raw_config(data_dir, webhooks={"retry_schedule": schedule}), env={})
        assert "webhooks.retry_schedule" in str(err.value) and words in str(err.value), str(err.value)


# -- bad input and SSRF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field_", "words"), [
    ({"url": "not a url"}, "url", "http"),
    ({"url": "ftp://example.com/x"}, "url", "http"),
    ({"url": "https://user:pw@example.com/"}, "url", "credentials"),
    ({"url": "https://example.com/", "types": ["call.[x"]}, "types", "pattern"),
    ({"url": "https://example.com/", "filter": {"data.x": {"regex": "a", "eq": 1}}}, "filter", "unknown operator"),
    ({"url": "https://example.com/", "filter": {"data.x": {"gt": "ten"}}}, "filter", "number"),
    ({"url": "https://example.com/", "filter": {"data.x": {"regx": "a"}}}, "filter.data.x.regx", "unknown operator"),
    ({"url": "https://example.com/", "filter": {"bad path!": 1}}, "filter", "path"),
    ({"url": "https://example.com/", "ordering": "sometimes"}, "ordering", "per_call"),
    ({"url": "https://example.com/", "rate_limit_per_s": -1}, "rate_limit_per_s", "greater than 0"),
    ({"url": "https://example.com/", "max_age_s": {"call.*": -5}}, "max_age_s", "negative"),
    ({"url": "https://example.com/", "max_age_s": {"call.*": "9" * 400 + "s"}}, "max_age_s", "at most"),
    ({"url": "https://example.com/", "enabled": "yes"}, "enabled", "boolean"),
    ({"url": "https://example.com/", "colour": "blue"}, "colour", "unknown field"),
    ({}, "url", "required"),
])
def test_bad_input_gets_a_422_naming_the_field(data_dir: Path, body: dict[str, Any], field_: str, words: str) -> None:
    with ServerThread(hub_config(data_dir)) as hub:
        r = api(hub, "POST", "/v1/subscriptions", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_subscription"
    assert error["problems"][0]["field"].startswith(field_), error
    assert words in error["message"], error


def test_requests_that_are_not_subscriptions_get_clear_4xx(data_dir: Path) -> None:
    with ServerThread(hub_config(data_dir)) as hub:
        codes = {
            "not json": api(hub, "POST", "/v1/subscriptions", content=b"{", headers={**ADMIN,
                                                                                    "Content-Type": "application/json"}),
            "array": api(hub, "POST", "/v1/subscriptions", json=[1]),
            "publisher": api(hub, "POST", "/v1/subscriptions", json={"url": "https://example.com/"}, headers=PUBLISHER),
            "no credential": api(hub, "GET", "/v1/subscriptions", headers={}),
            "unknown": api(hub, "GET", "/v1/subscriptions/nope"),
            "bad status": api(hub, "GET", "/v1/subscriptions/nope/deliveries", params={"status": "x"}),
        }
    assert {k: r.status_code for k, r in codes.items()} == {
        "not json": 400, "array": 400, "publisher": 403, "no credential": 401, "unknown": 404, "bad status": 400}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "169.254.169.254", "10.1.2.3", "2130706433",
                                  "127.1", "0x7f.1", "a..b"])
def test_a_subscription_to_an_internal_address_is_refused_at_creation(data_dir: Path, host: str) -> None:
    with ServerThread(hub_config(data_dir, allow=False)) as hub:
        r = api(hub, "POST", "/v1/subscriptions", json={"url": f"http://{host}:9/hook"})
        listed = api(hub, "GET", "/v1/subscriptions").json()
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "url_refused" or error["code"] == "invalid_subscription", error
    assert error["code"] == "invalid_subscription" or any(
        words in error["message"] for words in ("allow_hosts", "numeric host", "not a valid host")), error
    assert listed["count"] == 0


def test_a_declared_subscription_to_a_refused_address_fails_without_a_request(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    declared = {"id": "internal", "url": f"http://localhost:{server.port}/hook", "secret": SECRET}
    with ServerThread(hub_config(data_dir, allow=False, subscriptions=[declared])) as hub:
        hub.publish(call("call.ringing", "c-1"))
        wait_until(lambda: bool(log(hub, "internal", status="failed")), what="the refusal")
        (row,) = log(hub, "internal")
    assert row["error"].startswith("refused:") and "allow_hosts" in row["error"]
    assert state.received == []


# -- durability: restart and kill -9 ------------------------------------------------------------------------


def test_pending_retries_survive_a_restart(data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    state.always = 503
    config = hub_config(data_dir, retry_schedule=[0, 20 * TICK, 20 * TICK])
    with ServerThread(config) as hub:
        created = subscribe(hub, f"{server.url}/hook")
        hub.publish(call("call.ringing", "A"), call("call.answered", "A"), call("call.ringing", "B"))
        wait_until(lambda: len(state.received) == 2, what="A's and B's first attempts")
        time.sleep(4 * TICK)  # written
    state.always = None
    with ServerThread(config) as hub:
        wait_until(lambda: len(state.received) == 5, what="all three after the restart")
        shown = api(hub, "GET", f"/v1/subscriptions/{created['id']}").json()
    after = [(d.event["data"]["call_id"], d.event["type"]) for d in state.received[2:]]
    assert sorted(after) == [("A", "call.answered"), ("A", "call.ringing"), ("B", "call.ringing")]
    assert after.index(("A", "call.ringing")) < after.index(("A", "call.answered"))
    assert shown["backlog"] == 0


def test_kill_9_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    """The hub is killed while deliveries are in flight: after a restart every stored event
    reaches the endpoint at least once."""
    state = Endpoint(secret=SECRET, hang=2 * TICK, failing_calls={"c-0": 2, "c-3": 1})  # pending retries too
    with AppServer(state.app()) as server:
        port = free_port()
        declared = {"id": "crm", "url": f"{server.url}/hook", "secret": SECRET}
        raw = raw_config(tmp_path / "data", server={"port": port},
                         webhooks={"allow_hosts": ["127.0.0.1"], "concurrency": 4, "subscriptions": [declared],
                                   "retry_schedule": [0, 10 * TICK, 10 * TICK]})
        config = write_config(tmp_path / "hub.toml", raw)
        hub = HubProcess(["--config", str(config)], port, tmp_path / "hub.log").wait_healthy()
        try:
            hub.publish(*[{"type": "call.ringing", "id": f"e-{i}", "data": {"call_id": f"c-{i % 7}"}}
                          for i in range(100)])
            wait_until(lambda: len(state.received) >= 20, what="deliveries under way")
            hub.kill9()
            assert len(set(state.ids())) < 100, "everything went before the kill: the test proves nothing"
            hub = HubProcess(["--config", str(config)], port, tmp_path / "hub.log").wait_healthy()
            wait_until(lambda: {f"e-{i}" for i in range(100)} <= set(state.ids()), timeout=2 * WAIT,
                       what="every event delivered")
        finally:
            hub.stop()
    events = state.verified()
    assert {e["id"] for e in events} == {f"e-{i}" for i in range(100)}


def test_changing_a_declared_secret_keeps_the_old_one_signing_for_the_overlap(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    new_secret = "whsec_" + "QmVuY2gtc2VjcmV0LXR3by0wMTIzNDU2Nzg5YWJjZA=="
    declared = {"id": "crm", "url": f"{server.url}/hook", "secret": SECRET}
    with ServerThread(hub_config(data_dir, subscriptions=[declared])):
        pass
    with ServerThread(hub_config(data_dir, subscriptions=[{**declared, "secret": new_secret}])) as hub:
        hub.publish(call("call.ringing", "c-1"))
        wait_until(lambda: len(state.received) == 1, what="the delivery")
    (delivery,) = state.received
    Webhook(SECRET).verify(delivery.body, delivery.headers)
    Webhook(new_secret).verify(delivery.body, delivery.headers)


# -- review findings: races and loops that must not come back --------------------------------------------


def test_a_backlog_read_back_while_unrelated_events_flow_loses_nothing(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    """A paused subscription with a backlog is enabled while other events keep committing: what it
    reads back from the log is all delivered (the cursor never jumps past a page being read)."""
    state, server = endpoint
    with ServerThread(hub_config(data_dir, max_queue=100)) as hub:
        created = subscribe(hub, f"{server.url}/hook", types=["call.ended"], enabled=False)
        wanted = [{"type": "call.ended", "id": f"w-{i}", "data": {"call_id": f"c-{i}"}} for i in range(300)]
        noise = [{"type": "agent.status", "data": {"n": i}} for i in range(3000)]
        hub.publish(*[e for i, w in enumerate(wanted) for e in (w, *noise[10 * i:10 * i + 10])])
        stop = threading.Event()

        def chatter() -> None:
            with httpx.Client(base_url=hub.url, headers=PUBLISHER, timeout=WAIT) as client:
                while not stop.is_set():
                    client.post("/v1/events", json={"type": "agent.status", "data": {}})

        background = threading.Thread(target=chatter, daemon=True)
        background.start()
        try:
            r = api(hub, "PATCH", f"/v1/subscriptions/{created['id']}", json={"enabled": True})
            assert r.status_code == 200 and r.json()["state"] == "active", r.text
            wait_until(lambda: {f"w-{i}" for i in range(300)} <= set(state.ids()), timeout=2 * WAIT,
                       what="the whole backlog")
        finally:
            stop.set()
            background.join(WAIT)


def test_two_retries_of_one_delivery_send_it_once_and_its_call_goes_on(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    state, server = endpoint
    state.answers = [400]
    with ServerThread(hub_config(data_dir)) as hub:
        created = subscribe(hub, f"{server.url}/hook")
        (seq,) = hub.publish(call("call.ringing", "A"))
        wait_until(lambda: bool(log(hub, created["id"], status="failed")), what="the failure")
        state.hang = 10 * TICK  # the first retry is still in flight when the others arrive
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: api(hub, "POST", f"/v1/deliveries/{created['id']}.{seq}/retry"),
                                    range(4)))
        assert [r.status_code for r in answers] == [202] * 4
        wait_until(lambda: len(state.received) >= 2, what="the retry")
        hub.publish(call("call.answered", "A"), call("call.ringing", "B"))
        wait_until(lambda: len(state.received) >= 4, what="the call goes on, and another call")
        time.sleep(10 * TICK)
    assert [d.event["seq"] for d in state.received].count(seq) == 2  # the failure, and one retry
    assert sorted(d.event["type"] + d.event["data"]["call_id"] for d in state.received[2:]) == [
        "call.answeredA", "call.ringingB"]


def test_failure_reports_do_not_bounce_between_dead_endpoints(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    """Two subscriptions to everything, both endpoints refusing: one report per failed delivery of
    the call event, and no report about a report (that would never end)."""
    state, server = endpoint
    state.always = 401
    with ServerThread(hub_config(data_dir)) as hub:
        first, second = subscribe(hub, f"{server.url}/hook"), subscribe(hub, f"{server.url}/hook")
        hub.publish(call("call.ringing", "A"))
        wait_until(lambda: len(hub_events(hub, "hub.delivery.exhausted")) >= 2, what="the two reports")
        time.sleep(20 * TICK)
        reports = hub_events(hub, "hub.delivery.exhausted")
    assert sorted(r["data"]["subscription"] for r in reports) == sorted([first["id"], second["id"]])
    assert all(r["data"]["event_type"] == "call.ringing" and r["data"]["error"] == "HTTP 401" for r in reports)
    # Each endpoint got the call event and the other subscription's report, never more.
    assert len(state.received) == 4


def test_a_replay_of_a_subscription_behind_it_never_skips_what_it_had_not_sent(
    data_dir: Path, endpoint: tuple[Endpoint, AppServer]
) -> None:
    """Paused with 1,200 events behind (more than it holds in memory), replayed from the 900th: once
    enabled it sends all 1,200, each once (a replay never moves a subscription forward)."""
    state, server = endpoint
    with ServerThread(hub_config(data_dir, max_queue=100)) as hub:
        created = subscribe(hub, f"{server.url}/hook", enabled=False)
        seqs = hub.publish(*[call("call.ringing", f"c-{i}") for i in range(1200)])
        r = api(hub, "POST", f"/v1/subscriptions/{created['id']}/replay", json={"after_seq": seqs[900]})
        assert r.status_code == 202, r.text
        api(hub, "PATCH", f"/v1/subscriptions/{created['id']}", json={"enabled": True})
        wait_until(lambda: len(state.received) >= 1200, timeout=2 * WAIT, what="the backlog")
        time.sleep(10 * TICK)
    assert sorted(d.event["seq"] for d in state.received) == seqs


def test_a_quiet_batch_during_a_read_of_the_log_never_moves_the_cursor_past_it(data_dir: Path) -> None:
    """The engine against a real store: while a worker reads its backlog from the log, a batch with
    nothing for it commits and progress is written; every event of the backlog is still taken."""
    from hub.config import BackendConfig, WebhooksConfig
    from hub.events import Event, agent_of, prepare_event
    from hub.ops.metrics import Metrics
    from hub.outbound.guard import EgressPolicy
    from hub.store import open_backend
    from hub.store.base import OutboxChanges
    from hub.webhooks.delivery import Deliveries, Worker
    from hub.webhooks.sender import WebhookSender
    from hub.webhooks.subscriptions import Subscription

    async def main() -> None:
        store = open_backend(BackendConfig(url="local"), data_dir)
        await store.start(lambda events: None)
        try:
            for i in range(50):
                event = prepare_event(call("call.ended", f"c-{i}"))
                await store.append(event, agent=agent_of(event), received=0.0)
            deliveries = Deliveries(store.outbox(), store, WebhookSender(EgressPolicy(), timeout=1.0),
                                    WebhooksConfig(), publish=None, spawn=None, metrics=Metrics())  # type: ignore[arg-type]
            doc = {"id": "s", "spec": {"url": "http://127.0.0.1:9/", "types": ["call.*"]}, "created": 0.0,
                   "updated": 0.0, "secrets": [{"secret": SECRET, "expires": None}]}
            worker = Worker(Subscription(doc), deliveries, 0)
            deliveries.workers["s"] = worker
            reading = asyncio.get_running_loop().create_task(worker.catch_up())
            await asyncio.sleep(0)  # the read of the log is in flight
            deliveries.on_commit([Event(1000, "agent.status", None, b"{}")])  # nothing for it
            worker.collect(OutboxChanges())  # a flush meanwhile
            await reading
            worker.take_incoming()
            assert len(worker.items) == 50
            assert worker.cursor() == 0  # none of them sent yet
        finally:
            await store.close()

    asyncio.run(main())


def test_patch_delete_and_enable_with_skip_backlog(data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    with ServerThread(hub_config(data_dir)) as hub:
        created = subscribe(hub, f"{server.url}/hook", types=["call.ended"])
        path = f"/v1/subscriptions/{created['id']}"
        r = api(hub, "PATCH", path, json={"types": ["call.ringing"], "description": "ringing only"})
        assert r.status_code == 200 and r.json()["types"] == ["call.ringing"], r.text
        bad = api(hub, "PATCH", path, json={"ordering": "random"})
        hub.publish(call("call.ended", "A"), call("call.ringing", "B"))
        wait_until(lambda: len(state.received) == 1, what="the ringing")
        assert api(hub, "PATCH", path, json={"enabled": False}).json()["state"] == "paused"
        hub.publish(call("call.ringing", "skipped"))
        r = api(hub, "POST", f"{path}/enable", json={"skip_backlog": True})
        assert r.status_code == 200 and r.json()["state"] == "active"
        hub.publish(call("call.ringing", "after"))
        wait_until(lambda: len(state.received) == 2, what="the event after enabling")
        assert api(hub, "DELETE", path).status_code == 204
        gone = [api(hub, "GET", path).status_code, api(hub, "GET", f"{path}/deliveries").status_code]
        hub.publish(call("call.ringing", "deleted"))
        time.sleep(10 * TICK)
    assert bad.status_code == 422 and bad.json()["error"]["problems"][0]["field"] == "ordering"
    assert [d.event["data"]["call_id"] for d in state.received] == ["B", "after"]
    assert gone == [404, 404]


def test_alone_on_its_store_the_hub_holds_the_deliveries_lease_and_publishes_no_change_events(
        data_dir: Path, endpoint: tuple[Endpoint, AppServer]) -> None:
    state, server = endpoint
    with ServerThread(hub_config(data_dir)) as hub:
        wait_until(lambda: "deliveries" in api(hub, "GET", "/readyz").json()["leases"], what="the lease")
        created = subscribe(hub, f"{server.url}/hook", types=["call.*"])
        api(hub, "PATCH", f"/v1/subscriptions/{created['id']}", json={"description": "changed"})
        hub.publish(call("call.ringing", "A"))
        wait_until(lambda: len(state.received) == 1, what="the delivery")
        changes = hub_events(hub, "hub.subscription.changed")
    assert changes == []  # one process: nobody to tell


def test_a_change_noticed_while_a_new_holder_loads_holds_its_worker_until_the_change_is_loaded(
        data_dir: Path) -> None:
    """The engine against a real store that it takes as shared: a process taking the `deliveries`
    lease reads the outbox; a change another process made arrives meanwhile; once loaded, that
    subscription's worker takes nothing from the log until the change is loaded too."""
    import orjson

    from hub.config import BackendConfig, WebhooksConfig
    from hub.events import Event, hub_event
    from hub.ops.metrics import Metrics
    from hub.outbound.guard import EgressPolicy
    from hub.store import open_backend
    from hub.tasks import Tasks
    from hub.webhooks.delivery import Deliveries
    from hub.webhooks.sender import WebhookSender
    from hub.webhooks.subscriptions import CHANGED

    async def main() -> None:
        store = open_backend(BackendConfig(url="local"), data_dir)
        await store.start(lambda events: None)
        tasks = Tasks()
        deliveries = Deliveries(store.outbox(), store, WebhookSender(EgressPolicy(), timeout=1.0), WebhooksConfig(),
                                publish=None, spawn=tasks.spawn, metrics=Metrics())  # type: ignore[arg-type]
        deliveries.shared = True
        try:
            await deliveries.start()
            outbox = deliveries.outbox
            await outbox.save({"id": "s", "spec": {"url": "http://127.0.0.1:9/", "types": ["call.*"]},
                               "created": 0.0, "updated": 0.0, "secrets": [{"secret": SECRET, "expires": None}]},
                              cursor=0)
            first, second = asyncio.Event(), asyncio.Event()
            gates = [first, second]  # the holder's read, then the change's
            read = outbox.subscriptions

            async def gated() -> list[tuple[dict[str, Any], int | None]]:
                rows = await read()
                if gates:
                    await gates.pop(0).wait()
                return rows

            outbox.subscriptions = gated  # type: ignore[method-assign]
            running = asyncio.get_running_loop().create_task(deliveries.run())
            await asyncio.sleep(0.05)  # the new holder is reading the outbox
            body = {**hub_event(CHANGED, {"subscription": "s", "change": "updated", "origin": "elsewhere"}), "seq": 1}
            deliveries.on_commit([Event(1, CHANGED, None, orjson.dumps(body))])
            first.set()  # the holder has loaded
            await asyncio.sleep(0.05)
            held_while_loading = deliveries.on and deliveries.workers["s"].held
            second.set()  # the change is loaded
            await asyncio.sleep(0.05)
            held_after = deliveries.workers["s"].held
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        finally:
            await tasks.stop(1.0)
            await deliveries.close()
            await store.close()
        assert held_while_loading == 1 and held_after == 0

    asyncio.run(main())
