"""AntBot (Alice): the client against the simulator, the CDR and campaign poller inside a real hub,
the actions through their admin endpoints, and DNC refusals."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from handlers.antbot.client import AntBotAuthError, AntBotClient, AntBotError, AntBotUnavailable
from handlers.antbot.simulator import SimState, build_app
from hub.config import ConfigError
from tests.antbot_env import PASSWORD, USER, antbot_hub
from tests.helpers import ADMIN, TICK, WAIT, AppServer, ServerThread, SwappableApp, wait_until


@pytest.fixture
def sim(sim_server: tuple[AppServer, SwappableApp]) -> Iterator[tuple[SimState, str]]:
    """A fresh simulated AntBot per test, with a phonebook (id 1) ready."""
    server, swappable = sim_server
    state = SimState()
    state.add_phonebook("callbacks")
    swappable.app = build_app(state)
    yield state, server.url
    swappable.app = Starlette()


def history(hub: ServerThread, types: str = "*") -> list[dict[str, Any]]:
    r = httpx.get(f"{hub.url}/v1/events", params={"after": 0, "limit": 1000, "types": types}, headers=ADMIN,
                  timeout=WAIT)
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def calls(hub: ServerThread) -> list[dict[str, Any]]:
    return [e for e in history(hub, "call.ended") if e["source"] == "antbot"]


def upstream(hub: ServerThread) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{hub.url}/readyz", timeout=WAIT).json()["upstreams"]["antbot"]
    return state


def skipped_rows(hub: ServerThread) -> float:
    """`callhub_upstream_signals_total{upstream="antbot", name="cdr_invalid"}` from /metrics."""
    for line in httpx.get(f"{hub.url}/metrics", timeout=WAIT).text.splitlines():
        if line.startswith("callhub_upstream_signals_total{") and 'upstream="antbot"' in line \
                and 'name="cdr_invalid"' in line:
            return float(line.rpartition(" ")[2])
    return 0.0


def writes(state: SimState) -> list[str]:
    """The paths AntBot was asked to change something at (the token aside)."""
    return [path for method, path, _ in state.requests if method == "POST" and path != "/get-token/"]


def polls(state: SimState) -> int:
    return sum(1 for method, path, _ in state.requests if path == "/rest-api/cdr/")


def wait_polls(state: SimState, more: int = 2) -> None:
    """Wait until the hub has polled the CDR report `more` more times."""
    start = polls(state)
    wait_until(lambda: polls(state) >= start + more, what=f"{more} more CDR polls")


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def client_for(url: str, **kwargs: Any) -> AntBotClient:
    return AntBotClient(url, USER, kwargs.pop("password", PASSWORD), timeout=40 * TICK, **kwargs)


# -- the client ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_token_is_fetched_once_and_refreshed_only_when_refused(sim: tuple[SimState, str]) -> None:
    """One token serves many requests; after AntBot expires it, the next request fetches one new token."""
    state, url = sim
    async with client_for(url) as client:
        await client.list("/rest-api/campaigns/")
        await client.list("/rest-api/campaigns/")
        assert state.token_requests == 1
        state.expire_tokens()
        await client.list("/rest-api/campaigns/")
        assert state.token_requests == 2
        assert [m for m, p, _ in state.requests if p == "/rest-api/campaigns/"] == ["GET"] * 4  # one refused


@pytest.mark.anyio
async def test_wrong_password_is_an_auth_error_that_never_shows_the_secrets(
        sim: tuple[SimState, str], caplog: pytest.LogCaptureFixture) -> None:
    """Refused credentials: AntBotAuthError naming the config keys; neither password nor token in it or the logs."""
    state, url = sim
    caplog.set_level(logging.DEBUG)
    async with client_for(url, password="wrong-password-123") as client:
        with pytest.raises(AntBotAuthError) as info:
            await client.list("/rest-api/cdr/")
    text = str(info.value.to_dict()) + repr(client) + caplog.text
    assert "[antbot] username and password" in info.value.message
    assert "wrong-password-123" not in text
    async with client_for(url) as client:
        await client.list("/rest-api/cdr/")
    token = next(iter(state.tokens))
    assert token not in caplog.text and PASSWORD not in caplog.text


@pytest.mark.anyio
async def test_lists_are_read_page_by_page_but_never_off_the_host(sim: tuple[SimState, str]) -> None:
    """All pages of a DRF list are read through `next`; a `next` on another host is refused."""
    state, url = sim
    for i in range(25):
        state.add_dnc(f"09000000{i:02d}")
    async with client_for(url) as client:
        rows = await client.list("/rest-api/dnc-contact/")
        assert [r["phone_number"] for r in rows] == [f"09000000{i:02d}" for i in range(25)]
        state.next_host = "https://127.0.0.1"  # a proxy's view of itself: the configured scheme and port are kept
        assert len(await client.list("/rest-api/dnc-contact/")) == 25
        state.next_host = "http://203.0.113.9:8080"
        with pytest.raises(AntBotError, match="another host"):
            await client.list("/rest-api/dnc-contact/")


@pytest.mark.anyio
async def test_a_lost_creation_answer_is_unavailable_maybe_sent_and_not_repeated(sim: tuple[SimState, str]) -> None:
    """AntBot adds the contact and its answer is lost: one contact, an error saying it may have been sent."""
    state, url = sim
    state.lose_answer = 1
    async with client_for(url) as client:
        with pytest.raises(AntBotUnavailable) as info:
            await client.create("/rest-api/contact/", {"phonebook": 1, "contact": "0912345678"})
    assert info.value.maybe_sent and len(state.contacts) == 1


@pytest.mark.anyio
async def test_nothing_listening_is_unavailable_and_certainly_not_sent() -> None:
    """A closed port: AntBotUnavailable with maybe_sent false."""
    async with client_for("http://127.0.0.1:9") as client:
        with pytest.raises(AntBotUnavailable) as info:
            await client.create("/rest-api/contact/", {"phonebook": 1, "contact": "0912345678"})
    assert info.value.maybe_sent is False


# -- the CDR poll -------------------------------------------------------------------------------------------


def test_cdr_rows_become_call_ended_events_with_the_common_call_fields(sim: tuple[SimState, str], data_dir: Path) -> None:
    """Each row is one call.ended (source antbot, outbound, no agent) with outcome, durations, flags and raw."""
    state, url = sim
    cid = state.add_campaign("renewals", status=1)
    started = ago(120).replace(microsecond=0)
    answered = state.add_call("84912345678", started=started, duration=42, billsec=37, campaign=cid)
    busy = state.add_call("0903123456", started=ago(60), disposition="BUSY", hangup_cause="USER_BUSY", duration=3)
    reminder = state.add_call("0868111222", started=ago(30), disposition="NOANSWER", hangup_cause="NO_ANSWER",
                              duration=0, alarm=True)
    with antbot_hub(data_dir, url) as hub:
        wait_until(lambda: len(calls(hub)) == 3, what="three calls")
        by_id = {e["id"]: e for e in calls(hub)}
    first = by_id[f"cdr-{answered['id']}"]
    assert first["subject"] == answered["callid"]
    data = first["data"]
    assert (data["direction"], data["agent"], data["outcome"], data["duration_s"], data["billing_s"]) == \
        ("outbound", None, "answered", 42, 37)
    assert data["to"]["number"] == "0912345678" and data["to"]["as_sent"] == "84912345678"
    assert data["campaign_id"] == cid and data["alarm"] is False and data["otp"] is False
    # Written without an offset, in Asia/Ho_Chi_Minh: read as such.
    assert data["started_at"] == started.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert data["raw"] == answered
    assert by_id[f"cdr-{busy['id']}"]["data"]["outcome"] == "busy"
    assert by_id[f"cdr-{reminder['id']}"]["data"]["outcome"] == "no_answer"
    assert by_id[f"cdr-{reminder['id']}"]["data"]["alarm"] is True


def test_configured_cdr_filters_narrow_what_is_published(sim: tuple[SimState, str], data_dir: Path) -> None:
    """`cdr_filters = {alarm = true}`: only reminder calls become events; an undocumented filter is refused."""
    state, url = sim
    state.add_call("0912345678", started=ago(20))
    reminder = state.add_call("0912345679", started=ago(10), alarm=True)
    with antbot_hub(data_dir, url, cdr_filters={"alarm": True}) as hub:
        wait_polls(state, 2)
        assert [e["id"] for e in calls(hub)] == [f"cdr-{reminder['id']}"]
    with pytest.raises(ConfigError, match="not a CDR filter: colour"):
        antbot_hub(data_dir, url, cdr_filters={"colour": "red"})


def test_unreadable_rows_are_skipped_and_counted_and_the_rest_published(sim: tuple[SimState, str], data_dir: Path) -> None:
    """Rows that are not objects or have no id are skipped (counted in the upstream metrics); good rows go on."""
    state, url = sim
    state.bad_rows = 2
    state.add_call("0912345678", started=ago(10))
    with antbot_hub(data_dir, url) as hub:
        wait_until(lambda: len(calls(hub)) == 1, what="the good call")
        wait_until(lambda: skipped_rows(hub) >= 2, what="skipped rows counted")
        assert upstream(hub)["connected"] is True


def test_a_call_is_published_once_however_many_polls_and_restarts_see_it(sim: tuple[SimState, str],
                                                                         data_dir: Path) -> None:
    """Overlapping polls and a restart read the same rows again: still one event per row."""
    state, url = sim
    rows = [state.add_call(f"09123456{i:02d}", started=ago(100 - i)) for i in range(15)]  # two pages
    with antbot_hub(data_dir, url) as hub:
        wait_until(lambda: len(calls(hub)) == 15, what="15 calls")
        wait_polls(state, 3)
    with antbot_hub(data_dir, url) as hub:
        wait_polls(state, 3)
        late = state.add_call("0987654321", started=ago(5))
        wait_until(lambda: len(calls(hub)) == 16, what="the new call")
        wait_polls(state, 2)
        ids = [e["id"] for e in calls(hub)]
    assert sorted(ids) == sorted(f"cdr-{r['id']}" for r in [*rows, late])


def test_the_poll_cursor_survives_a_restart(sim: tuple[SimState, str], data_dir: Path) -> None:
    """A call that started while the hub was down, longer ago than `lookback`, is still read after the restart
    (the gap read in slices of `max_window`)."""
    state, url = sim
    with antbot_hub(data_dir, url, lookback="1s") as hub:
        wait_polls(state, 2)
    missed = state.add_call("0912000111", started=datetime.now(UTC))
    time.sleep(2.5)  # dates have whole seconds: the hub is down for more than lookback + 1 s
    before = len(state.requests)
    with antbot_hub(data_dir, url, lookback="1s", max_window="1s", poll_interval="1h") as hub:
        wait_until(lambda: [e["id"] for e in calls(hub)] == [f"cdr-{missed['id']}"], what="the missed call")
        # The gap is read in slices of max_window, back to back (the next poll is an hour away).
        wait_until(lambda: sum(p == "/rest-api/cdr/" for _, p, _ in state.requests[before:]) >= 2,
                   what="a second slice")


def test_an_outage_delays_events_but_loses_none(sim: tuple[SimState, str], data_dir: Path) -> None:
    """While AntBot is down the upstream shows down; afterwards every call of the outage is published."""
    state, url = sim
    state.add_call("0912345001", started=ago(50))
    with antbot_hub(data_dir, url) as hub:
        wait_until(lambda: len(calls(hub)) == 1, what="the first call")
        state.down = True
        wait_until(lambda: upstream(hub)["connected"] is False, what="upstream down")
        assert "503" in upstream(hub)["last_error"]
        during = [state.add_call(f"09123450{i:02d}", started=ago(5)) for i in range(2, 5)]
        wait_polls(state, 2)
        assert len(calls(hub)) == 1
        state.down = False
        wait_until(lambda: len(calls(hub)) == 4, what="the outage's calls")
        assert upstream(hub)["connected"] is True
        assert {f"cdr-{r['id']}" for r in during} <= {e["id"] for e in calls(hub)}
        downs = [e for e in history(hub, "hub.upstream.*") if e["data"]["upstream"] == "antbot"]
        assert [e["type"] for e in downs] == ["hub.upstream.connected", "hub.upstream.disconnected",
                                              "hub.upstream.connected"]


def test_campaign_status_changes_become_events_but_the_first_read_only_records(
        sim: tuple[SimState, str], data_dir: Path) -> None:
    """No events for the statuses found at first start; a change later is one campaign.status."""
    state, url = sim
    cid = state.add_campaign("renewals", status=2)
    state.add_campaign("survey", status=1)
    with antbot_hub(data_dir, url) as hub:
        wait_polls(state, 2)
        state.campaigns[cid]["status"] = 1
        wait_until(lambda: len(history(hub, "campaign.status")) == 1, what="one campaign.status")
        wait_polls(state, 2)
        (event,) = history(hub, "campaign.status")
    assert event["source"] == "antbot" and event["subject"] == cid
    assert {k: event["data"][k] for k in ("campaign_id", "name", "status", "status_code", "previous")} == \
        {"campaign_id": cid, "name": "renewals", "status": "started", "status_code": 1, "previous": "waiting"}


def test_campaign_statuses_are_remembered_across_a_restart(sim: tuple[SimState, str], data_dir: Path) -> None:
    """After a restart nothing is published for unchanged campaigns; a change made while down is published once."""
    state, url = sim
    cid = state.add_campaign("renewals", status=1)
    with antbot_hub(data_dir, url) as hub:
        wait_polls(state, 2)
    state.campaigns[cid]["status"] = 3
    with antbot_hub(data_dir, url) as hub:
        wait_until(lambda: len(history(hub, "campaign.status")) == 1, what="the change made while down")
        wait_polls(state, 2)
        (event,) = history(hub, "campaign.status")
    assert (event["data"]["status"], event["data"]["previous"]) == ("paused", "started")


def test_the_poller_fetches_a_new_token_when_antbot_expires_it(sim: tuple[SimState, str], data_dir: Path) -> None:
    """Tokens expired at AntBot: the next poll logs in again once and goes on publishing."""
    state, url = sim
    with antbot_hub(data_dir, url) as hub:
        wait_polls(state, 2)
        assert state.token_requests == 1
        state.expire_tokens()
        row = state.add_call("0912345678", started=ago(5))
        wait_until(lambda: [e["id"] for e in calls(hub)] == [f"cdr-{row['id']}"], what="the call")
        wait_polls(state, 2)
        assert state.token_requests == 2 and upstream(hub)["connected"] is True


# -- actions through the admin endpoints --------------------------------------------------------------------


@pytest.fixture
def hub(sim: tuple[SimState, str], data_dir: Path) -> Iterator[ServerThread]:
    with antbot_hub(data_dir, sim[1], poll_interval="1h") as h:
        wait_until(lambda: upstream(h)["connected"], what="the first poll")  # its requests are over
        yield h


def test_a_caught_up_poller_waits_its_interval(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """With `poll_interval = 1h`: one poll at start, then none (catching up never becomes a busy loop)."""
    state, _ = sim
    time.sleep(20 * TICK)
    assert polls(state) == 1


def post(hub: ServerThread, path: str, body: Any, headers: dict[str, str] = ADMIN) -> httpx.Response:
    return httpx.post(hub.url + path, json=body, headers=headers, timeout=WAIT)


def test_add_contact_adds_one_number_in_the_configured_form(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """A number in any form is added to the phonebook as a national number, with its name; action.succeeded."""
    state, _ = sim
    r = post(hub, "/v1/antbot/contacts", {"phonebook": 1, "phone_number": "+84 912 345 678", "first_name": "An"})
    assert r.status_code == 200, r.text
    assert r.json()["added"] == ["0912345678"]
    assert [(c["phonebook"], c["contact"], c["first_name"]) for c in state.contacts] == [(1, "0912345678", "An")]
    (report,) = history(hub, "action.succeeded")
    assert report["data"]["action"] == "antbot.add_contact"


def test_a_dnc_number_is_never_added_and_the_refusal_says_so(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """A number on a DNC list (in another form) is refused: 409, nothing added, action.failed do_not_call."""
    state, _ = sim
    state.add_dnc("84903123456")
    r = post(hub, "/v1/antbot/contacts", {"phonebook": 1, "phone_number": "0903 123 456"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "do_not_call"
    assert "do-not-call" in r.json()["error"]["message"]
    assert state.contacts == [] and state.dnc_violations == 0
    (failed,) = history(hub, "action.failed")
    assert failed["data"]["result"]["code"] == "do_not_call" and "do-not-call" in failed["data"]["error"]


def test_a_bulk_add_adds_the_allowed_numbers_and_lists_the_refused(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """Bulk: allowed numbers go in one bulkcontact request; DNC numbers are listed as refused."""
    state, _ = sim
    state.add_dnc("0903123456")
    r = post(hub, "/v1/antbot/contacts",
             {"phonebook": 1, "phone_numbers": ["0912345678", "+84903123456", "0868111222", "84912345678"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == ["0912345678", "0868111222"]
    assert body["refused"] == [{"phone_number": "0903123456", "reason": "on a do-not-call list"}]
    assert sorted(c["contact"] for c in state.contacts) == ["0868111222", "0912345678"]
    assert state.dnc_violations == 0


def test_bad_contact_input_is_a_422_and_nothing_is_sent(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """A bad number, a bad phonebook id or a non-object body: 422; nothing is sent to AntBot."""
    state, _ = sim
    for body in ({"phonebook": 1, "phone_number": "12"}, {"phonebook": "../x", "phone_number": "0912345678"},
                 {"phonebook": 1, "phone_numbers": []}, ["not", "an", "object"]):
        r = post(hub, "/v1/antbot/contacts", body)
        assert r.status_code == 422, r.text
    assert writes(state) == []


def test_add_contact_failures_are_clear(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """A phonebook AntBot does not have: 502 with its answer; AntBot down: 503; both action.failed."""
    state, _ = sim
    r = post(hub, "/v1/antbot/contacts", {"phonebook": 99, "phone_number": "0912345678"})
    assert r.status_code == 502 and "phonebook" in r.json()["error"]["message"]
    state.down = True
    r = post(hub, "/v1/antbot/contacts", {"phonebook": 1, "phone_number": "0912345678"})
    assert r.status_code == 503 and state.contacts == []
    assert [e["data"]["action"] for e in history(hub, "action.failed")] == ["antbot.add_contact"] * 2


def test_campaign_status_changes_the_campaign(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """`pause` is sent as 2 (the document's PAUSE) and the campaign is paused."""
    state, _ = sim
    cid = state.add_campaign("renewals", status=1)
    r = post(hub, f"/v1/antbot/campaigns/{cid}/status", {"status": "pause"})
    assert r.status_code == 200, r.text
    assert r.json()["status_code"] == 2 and state.status_changes == [(cid, 2)]
    assert state.campaigns[cid]["status"] == 3


def test_campaign_status_failures_are_clear(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """An unknown status is 422 before sending; a campaign AntBot does not have is 404 with its answer."""
    state, _ = sim
    assert post(hub, "/v1/antbot/campaigns/5/status", {"status": "fly"}).status_code == 422
    r = post(hub, "/v1/antbot/campaigns/999/status", {"status": "start"})
    assert r.status_code == 404 and "404" in r.json()["error"]["message"]
    (failed,) = history(hub, "action.failed")
    assert failed["data"]["action"] == "antbot.campaign_status"


def test_reminder_call_creates_the_event_and_its_alarm(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """A reminder at a local time: an event in the configured calendar, an alarm calling the number then."""
    state, _ = sim
    day = f"{datetime.now(UTC) + timedelta(days=30):%Y-%m-%d}"
    r = post(hub, "/v1/antbot/reminders", {"phone_number": "+84912345678", "at": f"{day} 09:30",
                                           "title": "Hẹn gọi lại"})
    assert r.status_code == 200, r.text
    (event,) = state.events
    (alarm,) = state.alarms
    assert (event["title"], event["calendar"], event["creator"]) == ("Hẹn gọi lại", 1, 1)
    assert event["start"] == f"{day}T09:30:00+07:00" and event["end"] == f"{day}T09:35:00+07:00"
    assert (alarm["alarm_phonenumber"], alarm["event"]) == ("0912345678", event["id"])
    assert alarm["date_start_notice"] == f"{day}T09:30:00+07:00"
    assert r.json()["alarm_id"] == alarm["id"]


def test_reminder_call_failures_say_what_was_created(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """AntBot failing the alarm after the event: 503, maybe_sent, and the created event named."""
    state, _ = sim
    state.fail_skip, state.fail_next = 1, 1  # the event: fine; the alarm: 500 (the token is cached)
    r = post(hub, "/v1/antbot/reminders", {"phone_number": "0912345678", "delay": "10m"})
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["maybe_sent"] is True and error["event_id"] == state.events[0]["id"]
    assert "its alarm was not" in error["message"] and state.alarms == []
    for bad in ({"at": "soon"}, {"at": "0001-01-01T00:00:00+14:00"}, {"at": "9999-12-31T00:00:00"},
                {"delay": "-5m"}, {"delay": True}, {"title": 5}, {"phonenumber_transfer": "12"}):
        r = post(hub, "/v1/antbot/reminders", {"phone_number": "0912345678", **bad})
        assert r.status_code == 422, (bad, r.text)
    assert len(state.alarms) == 0


def test_admin_endpoints_need_the_admin_role(sim: tuple[SimState, str], hub: ServerThread) -> None:
    """A publisher key may not add contacts (403); nothing reaches AntBot."""
    from tests.helpers import PUBLISHER
    state, _ = sim
    r = post(hub, "/v1/antbot/contacts", {"phonebook": 1, "phone_number": "0912345678"}, headers=PUBLISHER)
    assert r.status_code == 403 and writes(state) == []
