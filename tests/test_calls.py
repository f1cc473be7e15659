"""The call figures (hub/ops/calls.py): the projection of call events, and `GET /v1/stats/calls`."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from hub.config import StatsConfig
from hub.events import Event
from hub.http.app import create_app
from hub.ops.calls import CallFigures
from hub.ops.metrics import Metrics
from tests.helpers import ADMIN, ALICE_KEY, PUBLISHER, SUBSCRIBER_KEY, make_config

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def call(type_: str, call_id: str, at: float, *, source: str = "pbx", **data: Any) -> dict[str, Any]:
    return {"type": type_, "source": source, "time": iso(at), "data": {"call_id": call_id, **data}}


def figures(**stats: Any) -> tuple[CallFigures, Metrics, Clock]:
    clock = Clock(T0 + 100)
    metrics = Metrics()
    projection = CallFigures(StatsConfig(**stats), metrics, clock=clock)
    projection._live = True
    return projection, metrics, clock


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_inbound_call_answered_in_threshold() -> None:
    """Ringing, answered after 12 s, ended after 60 s of talk: answered within the 20 s threshold."""
    calls, m, clock = figures()
    calls.apply(call("call.ringing", "c1", T0, direction="inbound", agent="alice"))
    assert sample(m, "callhub_calls_in_progress", direction="inbound", state="ringing") == 1
    calls.apply(call("call.answered", "c1", T0 + 12, direction="inbound"))
    assert sample(m, "callhub_calls_in_progress", direction="inbound", state="ringing") == 0
    assert sample(m, "callhub_calls_in_progress", direction="inbound", state="answered") == 1
    clock.now = T0 + 80
    calls.apply(call("call.ended", "c1", T0 + 72, direction="inbound", outcome="answered"))
    assert sample(m, "callhub_calls_in_progress", direction="inbound", state="answered") == 0
    assert sample(m, "callhub_calls_ended_total", direction="inbound", outcome="answered") == 1
    assert sample(m, "callhub_calls_answered_within_threshold_total") == 1
    assert sample(m, "callhub_call_answer_seconds_sum", direction="inbound") == 12
    assert sample(m, "callhub_call_talk_seconds_sum", direction="inbound") == 60
    today = calls.snapshot()["today"]
    assert today["service_level"] == 1.0 and today["average_answer_s"] == 12.0 and today["average_talk_s"] == 60.0


def test_abandoned_while_ringing() -> None:
    """An inbound call that ends while ringing is abandoned and lowers the service level."""
    calls, m, clock = figures()
    calls.apply(call("call.ringing", "a", T0, direction="inbound"))
    calls.apply(call("call.answered", "a", T0 + 30, direction="inbound"))
    calls.apply(call("call.ended", "a", T0 + 40, direction="inbound"))
    calls.apply(call("call.ringing", "b", T0, direction="inbound"))
    calls.apply(call("call.ended", "b", T0 + 9, direction="inbound", outcome="cancelled"))
    assert sample(m, "callhub_calls_abandoned_total") == 1
    assert sample(m, "callhub_calls_answered_within_threshold_total") == 0
    today = calls.snapshot()["today"]
    assert today["inbound"] == 2 and today["abandoned"] == 1 and today["service_level"] == 0.0
    assert today["by_outcome"]["answered"] == 1 and today["by_outcome"]["cancelled"] == 1


def test_ended_without_earlier_events_is_a_whole_call() -> None:
    """A CDR's `call.ended` alone (AntBot) counts: outcome and talk time come from the event itself."""
    calls, m, _ = figures()
    calls.apply(call("call.ended", "cdr-1", T0, source="antbot", direction="outbound", outcome="answered",
                     duration_s=95, billing_s=80))
    calls.apply(call("call.ended", "cdr-2", T0, source="antbot", direction="outbound", outcome="no_answer",
                     duration_s=30, billing_s=0))
    assert sample(m, "callhub_calls_ended_total", direction="outbound", outcome="answered") == 1
    assert sample(m, "callhub_calls_ended_total", direction="outbound", outcome="no_answer") == 1
    assert sample(m, "callhub_call_talk_seconds_sum", direction="outbound") == 80
    assert sample(m, "callhub_calls_abandoned_total") == 0
    assert calls.in_progress()["total"] == 0


def test_legs_of_one_call_count_once() -> None:
    """An agent leg ending does not end the call; the customer leg does, and a late end is ignored."""
    calls, m, _ = figures()
    calls.apply(call("call.ringing", "c", T0, direction="inbound", leg_id="c"))
    calls.apply(call("call.ringing", "c", T0 + 1, direction="inbound", leg_id="agent-leg"))
    calls.apply(call("call.bridged", "c", T0 + 5, direction="inbound", leg_id="agent-leg"))
    calls.apply(call("call.ended", "c", T0 + 50, direction="inbound", leg_id="agent-leg", outcome="answered"))
    assert calls.in_progress()["by_state"]["answered"] == 1
    calls.apply(call("call.ended", "c", T0 + 51, direction="inbound", leg_id="c", outcome="answered"))
    calls.apply(call("call.ended", "c", T0 + 52, direction="inbound", reconciled=True, outcome="answered"))
    assert calls.in_progress()["total"] == 0
    assert sample(m, "callhub_calls_ended_total", direction="inbound", outcome="answered") == 1


def test_held_and_resumed() -> None:
    """Hold moves a call to `held`, resume back to `answered`."""
    calls, m, _ = figures()
    calls.apply(call("call.answered", "h", T0, direction="outbound"))
    calls.apply(call("call.held", "h", T0 + 5, direction="outbound"))
    assert sample(m, "callhub_calls_in_progress", direction="outbound", state="held") == 1
    calls.apply(call("call.resumed", "h", T0 + 9, direction="outbound"))
    assert sample(m, "callhub_calls_in_progress", direction="outbound", state="answered") == 1
    assert sample(m, "callhub_calls_in_progress", direction="outbound", state="held") == 0


def test_stale_calls_expire() -> None:
    """A call silent for `stale_after` leaves the in-progress figures without counting as ended."""
    calls, m, clock = figures(stale_after=600)
    clock.now = T0
    calls.apply(call("call.ringing", "lost", T0 - 3600, direction="inbound"))  # a vendor clock an hour slow
    clock.now = T0 + 599
    assert calls.sweep() == 0
    clock.now = T0 + 601
    assert calls.sweep() == 1
    assert calls.in_progress()["total"] == 0
    assert sample(m, "callhub_calls_expired_total") == 1
    assert sample(m, "callhub_calls_ended_total", direction="inbound", outcome="unknown") == 0


def test_memory_is_bounded() -> None:
    """Past `max_calls` open calls the least recently active is dropped."""
    calls, m, _ = figures(max_calls=100)
    for i in range(150):
        calls.apply(call("call.ringing", f"x{i}", T0, direction="inbound"))
    assert calls.in_progress()["total"] == 100
    assert sample(m, "callhub_calls_expired_total") == 50


def test_labels_stay_bounded() -> None:
    """Directions, outcomes, agents and DIDs outside the known or configured lists are aggregated."""
    calls, m, _ = figures(agents=["alice"], dids=["02873019555"])
    calls.apply(call("call.ended", "1", T0, direction="sideways", outcome="exploded", agent="mallory",
                     did_number="0999"))
    calls.apply(call("call.ended", "2", T0, direction="inbound", outcome="busy", agent="alice",
                     did_number="02873019555"))
    assert sample(m, "callhub_calls_ended_total", direction="unknown", outcome="unknown") == 1
    assert sample(m, "callhub_calls_by_agent_total", agent="other", outcome="unknown") == 1
    assert sample(m, "callhub_calls_by_agent_total", agent="alice", outcome="busy") == 1
    assert sample(m, "callhub_calls_by_did_total", did="02873019555", outcome="busy") == 1
    # Label values only: a float elsewhere in the text (process CPU seconds) may contain "0999".
    labels = {value for family in text_string_to_metric_families(m.render().decode())
              for sample_ in family.samples for value in sample_.labels.values()}
    assert not labels & {"mallory", "sideways", "exploded", "0999"}


def test_only_call_events_are_read_and_never_inside_the_commit(caplog: pytest.LogCaptureFixture) -> None:
    """The commit listener looks only at the type: other events are never decoded; call events are applied next."""
    calls, _, _ = figures()

    async def commit() -> tuple[int, int]:
        calls.on_commit([Event(1, "campaign.contact.updated", None, b"not json at all"),
                         Event(2, "call.ringing", None, orjson.dumps(call("call.ringing", "n1", T0)))])
        during = calls.in_progress()["total"]
        await asyncio.sleep(0)
        return during, calls.in_progress()["total"]

    assert asyncio.run(commit()) == (0, 1)
    assert not [r for r in caplog.records if r.name == "callhub.calls"]  # the bad body was never decoded


def test_today_starts_at_midnight_in_the_centre_time_zone() -> None:
    """A call ended before local midnight is in the last 15 minutes' figures but not today's."""
    calls, _, clock = figures()
    midnight = datetime(2026, 11, 25, 0, 0, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")).timestamp()
    clock.now = midnight + 120
    calls.apply(call("call.ended", "late", midnight - 60, direction="inbound", outcome="no_answer"))
    calls.apply(call("call.ended", "early", midnight + 60, direction="inbound", outcome="answered", ringing_s=3))
    snap = calls.snapshot()
    assert snap["today"]["ended"] == 1 and snap["last_15m"]["ended"] == 2
    assert snap["today"]["since"] == "2026-11-25T00:00:00+07:00"


# -- through the hub -----------------------------------------------------------------------------


def publish(client: TestClient, *events: dict[str, Any]) -> None:
    for ev in events:
        r = client.post("/v1/events", json=ev, headers=PUBLISHER)
        assert r.status_code == 202, r.text


def stats(client: TestClient, headers: dict[str, str] = ADMIN) -> dict[str, Any]:
    r = client.get("/v1/stats/calls", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_for(client: TestClient, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        body = stats(client)
        if check(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.01)


def test_stats_endpoint_answers_now_recent_and_today(client: TestClient) -> None:
    """Published call events show in `GET /v1/stats/calls`: in progress, last 15 minutes, today."""
    now = time.time()
    publish(client, call("call.ringing", "s1", now - 10, direction="inbound"),
            call("call.ringing", "s2", now - 10, direction="inbound"),
            call("call.answered", "s2", now - 5, direction="inbound"),
            call("call.ended", "s2", now - 1, direction="inbound", outcome="answered"))
    body = wait_for(client, lambda b: b["today"]["ended"] == 1)
    assert body["now"]["in_progress"] == {"total": 1, "by_state": {"ringing": 1, "answered": 0, "held": 0},
                                          "by_direction": {"inbound": 1, "outbound": 0, "internal": 0, "unknown": 0}}
    assert body["last_15m"]["service_level"] == 1.0 and body["today"]["answered"] == 1
    assert body["time_zone"] == "Asia/Ho_Chi_Minh" and body["service_level_threshold_s"] == 20.0


def test_stats_need_a_credential_for_every_agent(client: TestClient) -> None:
    """No credential: 401; an agent's: 403 (JSON); an unscoped subscriber (a supervisor's): 200."""
    assert client.get("/v1/stats/calls").status_code == 401
    r = client.get("/v1/stats/calls", headers={"Authorization": f"Bearer {ALICE_KEY}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "scope"
    assert stats(client, {"Authorization": f"Bearer {SUBSCRIBER_KEY}"})["now"]["in_progress"]["total"] == 0


def test_figures_survive_a_restart(data_dir: Path) -> None:
    """At start the projection is rebuilt from the store: calls in progress and today's figures."""
    now = time.time()
    config = make_config(data_dir)
    with TestClient(create_app(config)) as client:
        publish(client, call("call.ringing", "r1", now - 30, direction="outbound"),
                call("call.ringing", "r2", now - 30, direction="inbound"),
                call("call.ended", "r2", now - 20, direction="inbound", outcome="no_answer"))
        wait_for(client, lambda b: b["today"]["ended"] == 1)
    with TestClient(create_app(config)) as client:
        body = stats(client)
        assert body["now"]["in_progress"]["by_direction"]["outbound"] == 1
        assert body["today"]["abandoned"] == 1
        metrics = client.get("/metrics").text
        assert 'callhub_calls_in_progress{direction="outbound",state="ringing"} 1.0' in metrics
        assert "callhub_calls_abandoned_total 0.0" in metrics  # counters count only what happens live


@pytest.mark.parametrize("stats_section", [{"time_zone": "Mars/Olympus"}, {"service_level_threshold": "0s"}])
def test_bad_stats_config_is_refused(data_dir: Path, stats_section: dict[str, Any]) -> None:
    """A bad `[stats]` value is a config error naming its key."""
    from hub.config import ConfigError

    with pytest.raises(ConfigError, match=r"stats\."):
        make_config(data_dir, stats=stats_section)
