"""AntBot end to end: a missed AntRing call becomes an AntBot reminder call through a rule, and an
AntBot CDR row reaches an SSE subscriber as `call.ended`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from handlers.antbot.simulator import SimState, build_app
from handlers.antring.simulator.calls import inbound_missed
from tests.antbot_env import antbot_hub, antbot_section
from tests.antring_env import ACCOUNT, BOB, antring_world
from tests.helpers import ADMIN, SUBSCRIBER_KEY, WAIT, AppServer, SSEReader, wait_until

REMIND_RULE: dict[str, Any] = {
    "name": "missed-call-reminder",
    "on": ["call.ended"],
    "when": {"source": "antring", "data.direction": "inbound", "data.outcome": ["no_answer", "cancelled"],
             "data.leg_id": {"exists": True}},
    # Both legs of a missed call end (the caller's, the agent's): one reminder per caller.
    "cooldown": {"key": "{data.from.number}", "for": "10m"},
    "actions": [{"type": "antbot.reminder_call", "phone_number": "{data.from.number}", "delay": "5m",
                 "title": "Gọi lại {data.from.number}"}],
}


def antbot_sim() -> Iterator[tuple[SimState, AppServer]]:
    state = SimState()
    with AppServer(build_app(state)) as server:
        yield state, server


def test_a_missed_antring_call_becomes_an_antbot_reminder_alarm(data_dir: Path) -> None:
    """AntRing call.ended (missed inbound) -> rule -> antbot.reminder_call -> an alarm for the caller in AntBot."""
    for state, server in antbot_sim():
        extra = {"antbot": antbot_section(server.url, poll_interval="1h"), "rules": [REMIND_RULE]}
        with antring_world(data_dir, "blackhole", extra_config=extra) as world:
            world.wait_connected()
            world.play(inbound_missed(BOB, "0903555777", account_id=ACCOUNT))
            wait_until(lambda: len(world.history("call.ended")) == 2, what="both legs ended")
            wait_until(lambda: bool(world.history("action.succeeded")), what="the action's report")
            (report,) = world.history("action.succeeded")
        (alarm,) = state.alarms
        (event,) = state.events
        assert alarm["alarm_phonenumber"] == "0903555777" and alarm["event"] == event["id"]
        assert event["title"] == "Gọi lại 0903555777"
        assert report["data"]["rule"] == "missed-call-reminder" and report["data"]["event_source"] == "antring"
        # About five minutes after the call, in the account's zone.
        notice = datetime.fromisoformat(alarm["date_start_notice"])
        assert notice.utcoffset() is not None and 240 <= (notice - datetime.now(UTC)).total_seconds() <= 300


def test_an_antbot_cdr_row_reaches_an_sse_subscriber_as_call_ended(data_dir: Path) -> None:
    """A call the AntBot dialer made (an alarm it rang) is streamed live as call.ended from antbot."""
    for state, server in antbot_sim():
        with antbot_hub(data_dir, server.url) as hub, httpx.Client(timeout=WAIT) as client:
            wait_until(lambda: httpx.get(f"{hub.url}/readyz", timeout=WAIT).json()["upstreams"]["antbot"]["connected"],
                       what="the first poll")
            r = client.post(f"{hub.url}/v1/antbot/reminders", json={"phone_number": "0912345678"}, headers=ADMIN)
            assert r.status_code == 200, r.text
            with client.stream("GET", f"{hub.url}/v1/stream",
                               params={"token": SUBSCRIBER_KEY, "types": "call.ended"}) as stream:
                hub.wait_subscribers(1)
                (row,) = state.dial_due(datetime.now(UTC))
                event = SSEReader(stream).next().json
        assert (event["type"], event["source"], event["id"]) == ("call.ended", "antbot", f"cdr-{row['id']}")
        data = event["data"]
        assert data["to"]["number"] == "0912345678" and data["alarm"] is True and data["outcome"] == "answered"
        assert (data["direction"], data["duration_s"], data["billing_s"]) == ("outbound", 20, 20)
