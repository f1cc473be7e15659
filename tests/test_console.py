"""The agent console at `/`, in a real headless Chromium, against the hub and the AntRing, AntCRM
and Vbee simulators on loopback.

One world (simulators, hub, browser) serves the whole module; each test opens its own browser
context (its own sessionStorage) and signs in. Screenshots of the main states land in
`test-artifacts/console/`.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from handlers.antcrm.simulator.app import DEFAULT_API_KEY
from handlers.antcrm.simulator.app import SimState as CrmState
from handlers.antcrm.simulator.app import build_app as build_crm_app
from handlers.antring.simulator.calls import ScriptedCall, inbound_answered, inbound_missed
from handlers.vbee.simulator import CampaignRunner, RunnerConfig
from handlers.vbee.simulator import SimState as VbeeState
from handlers.vbee.simulator import build_app as build_vbee_app
from hub.auth import issue_token
from hub.http.console import ASSETS
from tests.antring_env import ACCOUNT, ALICE, BOB, AntRingWorld, antring_world
from tests.browser import DESKTOP, PHONE, PageErrors, chromium, horizontal_overflow, screenshot
from tests.helpers import (
    ADMIN_KEY,
    JWT_SECRET,
    PUBLISHER,
    WAIT,
    AppServer,
    HubProcess,
    ServerThread,
    free_port,
    raw_config,
    write_config,
)
from tests.vbee_env import WEBHOOK_TOKEN, vbee_section
from tests.vbee_env import sim_state as vbee_sim_state

#: Playwright's waits, in milliseconds.
WAIT_MS = WAIT * 1000
CAMPAIGN = "camp-callback"
HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RULE: dict[str, Any] = {
    "name": "missed-inbound-callback",
    "on": ["call.ended"],
    "when": {"data.direction": "inbound", "data.outcome": ["no_answer", "cancelled"], "data.agent": "bob"},
    "cooldown": {"key": "{data.from.number}", "for": "10m"},
    "actions": [
        {"type": "antcrm.create_ticket", "title": "Missed call from {data.from.number}", "SLA": "SLA-4H",
         "contact": {"name": "Caller {data.from.number}", "phones": [{"type": "Work", "value": "{data.from.number}"}]}},
        {"type": "antring.click_to_call", "agent": "alice", "number": "{data.from.number}"},
        {"type": "vbee.add_contacts", "campaign_id": CAMPAIGN, "phone_number": "{data.from.number}"},
        # Bob's phone is offline in the simulator: this one fails, in red.
        {"type": "antring.click_to_call", "agent": "bob", "number": "{data.from.number}"},
    ],
}
ALICE_TOKEN = issue_token(JWT_SECRET, sub="alice-softphone", ttl=3600, agent="alice")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def vbee() -> VbeeState:
    return vbee_sim_state()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, vbee: VbeeState) -> Iterator[AntRingWorld]:
    crm = CrmState()
    crm.add_contact("Nguyễn Văn An", phones=["0903555777"], contact_type="customer", tags=["VIP", "Gold"],
                    stage="Customer", responsibleStaff="alice@example.com")
    with AppServer(build_crm_app(crm)) as crm_api, AppServer(build_vbee_app(vbee)) as vbee_api:
        # A webhook subscription whose endpoint is down (the discard port refuses): the supervisor sees it.
        hook = {"id": "dw", "url": "http://127.0.0.1:9/callhub", "secret": HOOK_SECRET, "types": ["call.*"],
                "description": "Data warehouse"}
        extra = {"antcrm": {"base_url": crm_api.url, "api_key": DEFAULT_API_KEY},
                 "vbee": vbee_section(vbee_api.url), "rules": [RULE],
                 "webhooks": {"allow_hosts": ["127.0.0.1"], "subscriptions": [hook]}}
        with antring_world(tmp_path_factory.mktemp("console") / "data", "blackhole", extra_config=extra) as w:
            w.wait_connected()
            original = w.hub
            try:
                yield w
            finally:
                if w.hub is not original:  # restarted by a test: the world only knows the first one
                    w.hub.stop()


@contextmanager
def console(browser: Browser, world: AntRingWorld, token: str, *, viewport: dict[str, int] = DESKTOP) -> Iterator[Page]:
    """A fresh browser context signed in through `?token=`; fails on any JavaScript or CSP error."""
    context = browser.new_context(viewport=viewport, locale="en-GB")
    page = context.new_page()
    errors = PageErrors(page)
    try:
        page.goto(f"{world.hub.url}/?token={token}")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        yield page
        assert errors.messages == []
    finally:
        context.close()


def emit(world: AntRingWorld, call: ScriptedCall, start: int, stop: int | None = None) -> None:
    for sent in call.signals[start:stop]:
        world.signals.emit_threadsafe(sent.name, sent.payload)


def card(page: Page, call_id: str, where: str = "") -> Any:
    return page.locator(f'{where} li.call[data-call="{call_id}"]'.strip())


def call_event(type_: str, call_id: str, number: str, **data: Any) -> dict[str, Any]:
    """A call event as any PBX integration would publish it through the API."""
    return {"type": type_, "id": f"{call_id}:{type_}", "source": "test-pbx",
            "data": {"call_id": call_id, "leg_id": call_id, "direction": "inbound", "agent": "alice",
                     "from": {"number": number}, "to": {"number": "101"}, **data}}


def restart(world: AntRingWorld) -> None:
    """Stop the hub (every stream it serves ends) and start it again on the same port and data."""
    old = world.hub
    old.stop()
    world.hub = ServerThread(old.config, port=old.port).start()
    world.wait_connected()


def test_page_and_assets_are_served_small_with_a_strict_policy(world: AntRingWorld) -> None:
    """`/` and its two files: right types, a CSP without inline code, revalidation by ETag, < 45 KB in all."""
    total = 0
    with httpx.Client(base_url=world.hub.url, timeout=WAIT) as client:
        for name, media_type in ASSETS.items():
            r = client.get("/" if name == "index.html" else f"/console/{name}")
            assert r.status_code == 200 and r.headers["content-type"] == media_type
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert client.get(r.url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
            total += len(r.content)
        assert client.get("/console/missing.js").status_code == 404
        assert client.get("/v1/events", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    assert total < 48_000  # docs/CONSOLE.md: why not the 40 KB first aimed at
    script = (Path(__file__).parent.parent / "hub" / "http" / "console" / "console.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script


def test_sign_in_by_pasting_a_token_or_once_through_the_address(browser: Browser, world: AntRingWorld) -> None:
    """A refused token says so; `?token=` signs in, leaves the address bar and survives a reload."""
    context = browser.new_context(viewport=DESKTOP, locale="en-GB")
    page = context.new_page()
    errors = PageErrors(page)
    try:
        page.goto(world.hub.url + "/")
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#conn-text")).to_have_text("Not connected")
        screenshot(page, "01-sign-in")
        page.get_by_label("Agent token or API key").fill("not-a-real-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#signin-error")).to_contain_text("refused")
        page.get_by_label("Agent token or API key").fill(ADMIN_KEY)
        page.keyboard.press("Enter")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(page.locator("#who")).to_contain_text("admin")

        page.goto(f"{world.hub.url}/?token={ALICE_TOKEN}&lang=x")
        expect(page.locator("#who")).to_contain_text("agent alice")
        assert "token" not in page.url and page.url.endswith("/?lang=x")
        assert page.evaluate("sessionStorage.getItem('callhub.token')") == ALICE_TOKEN
        page.reload()
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(page.locator("#who")).to_contain_text("agent alice")
        expect(page.locator("#tabs")).to_be_hidden()

        page.get_by_role("button", name="Sign out").click()
        expect(page.locator("#signin")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('callhub.token')") is None
        assert errors.messages == []
    finally:
        context.close()


def test_inbound_call_rings_with_the_crm_customer_then_is_answered_then_ends(browser: Browser, world: AntRingWorld) -> None:
    """Ringing with the screen-pop, answered with a ticking duration, then ended into recent calls with its recording."""
    call = inbound_answered(ALICE, "+84903555777", account_id=ACCOUNT)
    world.state.recordings.add(call.record["recording"])
    with console(browser, world, ADMIN_KEY) as page:
        emit(world, call, 0, 2)
        live = card(page, call.call_id, "#active")
        expect(live).to_have_attribute("data-state", "ringing")
        expect(live.locator(".num")).to_have_text("0903 555 777")
        expect(live.locator(".crm-name")).to_have_text("Nguyễn Văn An", timeout=WAIT_MS)
        expect(live.locator(".crm-detail")).to_have_text("Customer · Stage: Customer · Owner: alice@example.com")
        expect(live.locator(".tags li")).to_have_text(["VIP", "Gold"])
        expect(live.locator(".meta")).to_contain_text("Agent: alice")
        screenshot(page, "02-ringing-screen-pop")

        emit(world, call, 2, 5)
        expect(live).to_have_attribute("data-state", "answered")
        expect(live.locator(".badge")).to_have_text("Answered")
        expect(live.locator(".dur")).to_have_text(re.compile(r"0:0[1-9]"), timeout=WAIT_MS)  # it ticks
        screenshot(page, "03-answered")

        emit(world, call, 5)
        expect(live).to_have_attribute("data-state", "ended")
        past = card(page, call.call_id, "#recent")
        expect(past).to_be_visible(timeout=WAIT_MS)
        expect(card(page, call.call_id)).to_have_count(1)
        expect(page.locator("#active-empty")).to_be_visible()
        expect(past.locator(".badge")).to_have_text("Answered")
        recording = past.get_by_role("link", name="Recording")
        href = recording.get_attribute("href")
        assert href is not None and href.startswith("/v1/recordings/call_recording_")
        screenshot(page, "04-ended-recent")
    r = httpx.get(world.hub.url + href, timeout=WAIT, follow_redirects=True)  # the link's token is enough
    assert r.status_code == 200 and r.content.startswith(b"ID3") and r.history[0].status_code == 307


def test_click_to_call_from_the_page_reaches_antring_and_shows_each_outcome(browser: Browser, world: AntRingWorld) -> None:
    """An agent dials: ringing (the simulator got it), invalid number; a missed call's "Call back" rings too."""
    with console(browser, world, ALICE_TOKEN) as page:
        expect(page.locator("#dial-agent-label")).to_be_hidden()
        page.get_by_label("Number").fill("0903 555 999")
        page.get_by_role("button", name="Call", exact=True).click()
        out = page.locator("#dial-out")
        expect(out).to_have_attribute("data-outcome", "ringing")
        expect(out).to_have_text("Ringing alice's phone: answer it to call 0903 555 999.")
        assert world.state.clicks[-1]["number"] == "0903555999" and world.state.clicks[-1]["sip_user"] == "alice-101"

        page.get_by_label("Number").fill("12ab")
        page.get_by_label("Number").press("Enter")
        expect(out).to_have_attribute("data-outcome", "invalid_phone_number")
        expect(out).to_have_text("Not a valid phone number.")

        missed = inbound_missed(ALICE, "0987654321", account_id=ACCOUNT)
        emit(world, missed, 0)
        row = card(page, missed.call_id, "#recent")
        expect(row.locator(".badge")).to_have_text("Missed", timeout=WAIT_MS)
        clicks = len(world.state.clicks)
        row.get_by_role("button", name="Call back").click()
        expect(row.locator(".result")).to_have_attribute("data-outcome", "ringing")
        assert len(world.state.clicks) == clicks + 1 and world.state.clicks[-1]["number"] == "0987654321"
        screenshot(page, "05-agent-click-to-call")


def test_rule_actions_show_live_and_a_call_back_to_an_offline_phone_says_so(
    browser: Browser, world: AntRingWorld, vbee: VbeeState
) -> None:
    """A missed call to Bob: ticket, call-back rung, Vbee campaign, a failure in red; the Vbee call-back arrives."""
    missed = inbound_missed(BOB, "0903555888", account_id=ACCOUNT)
    with console(browser, world, ADMIN_KEY) as page:
        emit(world, missed, 0)
        feed = page.locator("#activity")
        expect(feed.locator("li.good", has_text=re.compile(r"Ticket #\d+ created in AntCRM"))).to_have_count(1, timeout=WAIT_MS)
        expect(feed.locator("li.good", has_text="Call-back rung: alice → 0903 555 888")).to_have_count(1)
        expect(feed.locator("li.good", has_text=f"Added to Vbee campaign {CAMPAIGN}")).to_have_count(1)
        expect(feed.locator("li.bad", has_text="antring.click_to_call failed")).to_have_count(1)

        row = card(page, missed.call_id, "#recent")
        expect(row.locator(".badge")).to_have_text("Missed", timeout=WAIT_MS)
        row.get_by_role("button", name="Call back").click()  # rings the call's agent: Bob, who is offline
        expect(row.locator(".result")).to_have_attribute("data-outcome", "device_offline")
        expect(row.locator(".result")).to_have_text("bob's phone is offline (not registered).")

        runner = CampaignRunner(vbee, RunnerConfig(
            webhook_url=f"{world.hub.url}/v1/webhooks/vbee?token={WEBHOOK_TOKEN}",
            outcomes={"answered": 1.0}, progress_status=None, seed=1))
        # Its own event loop, in its own thread: sync Playwright holds one in this thread.
        with ThreadPoolExecutor(1) as pool:
            assert not pool.submit(runner.run_sync, CAMPAIGN).result(WAIT).undelivered
        vbee_call = page.locator("#recent li.call[data-dir=outbound]", has_text="0903 555 888")
        expect(vbee_call.locator(".badge")).to_have_text("Answered", timeout=WAIT_MS)
        screenshot(page, "06-rule-actions", full_page=True)

        page.locator("#f-agent").select_option("alice")
        expect(row).to_be_hidden()
        page.locator("#f-dir").select_option("outbound")
        expect(page.locator("#recent li.call:visible")).to_have_count(0)
        page.locator("#f-type").select_option("action")
        expect(page.locator("#s-recent")).to_be_hidden()


def test_an_agent_token_never_shows_another_agents_calls(browser: Browser, world: AntRingWorld) -> None:
    """Alice's page: her call appears; Bob's, placed first, never does; no supervisor or filters."""
    bobs = inbound_answered(BOB, "0911222333", account_id=ACCOUNT)
    alices = inbound_answered(ALICE, "0911222444", account_id=ACCOUNT)
    with console(browser, world, ALICE_TOKEN) as page:
        expect(page.locator("#tabs")).to_be_hidden()
        expect(page.locator("#filters")).to_be_hidden()
        emit(world, bobs, 0, 2)
        emit(world, alices, 0, 2)
        expect(card(page, alices.call_id)).to_have_attribute("data-state", "ringing")
        emit(world, bobs, 2)
        emit(world, alices, 2)
        expect(card(page, alices.call_id, "#recent")).to_be_visible(timeout=WAIT_MS)
        assert card(page, bobs.call_id).count() == 0
        text = page.locator("body").inner_text()
        assert "0911 222 333" not in text and "bob" not in text.lower()


def test_supervisor_view_shows_subscribers_upstreams_rate_and_rules(browser: Browser, world: AntRingWorld) -> None:
    """Admin only: the page's own SSE subscription with its buffer, AntRing connected, events/s, rule counters,
    the call figures (in progress, service level, abandoned)."""
    with console(browser, world, ADMIN_KEY) as page:
        page.get_by_role("button", name="Supervisor").click()
        expect(page.locator("#tab-sup")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#subs tbody tr", has_text="test-admin").first).to_contain_text("sse")
        expect(page.locator("#subs meter").first).to_be_attached()
        expect(page.locator("#upstreams li.good")).to_contain_text("antring connected")
        expect(page.locator("#rules tbody tr", has_text="missed-inbound-callback")).to_be_visible()
        expect(page.locator("#st-rate")).to_have_text(re.compile(r"^\d+\.\d$"), timeout=WAIT_MS)
        hook = page.locator("#hooks tbody tr", has_text="Data warehouse (127.0.0.1:9)")
        expect(hook).to_contain_text("Active")
        emit(world, inbound_answered(ALICE, "0903111222", account_id=ACCOUNT), 0)  # call events to deliver
        expect(hook.locator("td").nth(3)).to_contain_text("could not be reached", timeout=WAIT_MS)
        # The call figures, from GET /v1/stats/calls: the answered call counts towards today's service level.
        expect(page.locator("#st-calls")).to_have_text(re.compile(r"^\d+$"), timeout=WAIT_MS)
        expect(page.locator("#st-sl")).to_have_text(re.compile(r"^(–|\d+%) / \d+%$"), timeout=WAIT_MS)
        expect(page.locator("#st-ab")).to_have_text(re.compile(r"^\d+ / \d+$"), timeout=WAIT_MS)
        screenshot(page, "07-supervisor")


def test_vietnamese_labels_and_national_numbers_fit_a_phone(browser: Browser, world: AntRingWorld) -> None:
    """At 390×844 in Vietnamese: the board, a ringing card with its customer, nothing wider than the screen."""
    call = inbound_answered(ALICE, "+84903555777", account_id=ACCOUNT)
    with console(browser, world, ADMIN_KEY, viewport=PHONE) as page:
        page.get_by_role("button", name="VI", exact=True).click()
        expect(page.locator("html")).to_have_attribute("lang", "vi")
        expect(page.locator("#active-h")).to_contain_text("Cuộc gọi đang diễn ra")
        expect(page.locator("#conn-text")).to_have_text("Trực tuyến")
        emit(world, call, 0, 2)
        live = card(page, call.call_id, "#active")
        expect(live.locator(".badge")).to_have_text("Đang đổ chuông")
        expect(live.locator(".num")).to_have_text("0903 555 777")
        expect(live.locator(".crm-name")).to_have_text("Nguyễn Văn An", timeout=WAIT_MS)
        assert horizontal_overflow(page) == 0
        screenshot(page, "08-vi-phone-ringing")
        emit(world, call, 2)
        expect(card(page, call.call_id, "#recent").locator(".badge")).to_have_text("Đã nghe", timeout=WAIT_MS)
        assert horizontal_overflow(page) == 0
        screenshot(page, "09-vi-phone-recent", full_page=True)
        page.get_by_role("button", name="Giám sát").click()
        expect(page.locator("#upstreams li.good")).to_contain_text("antring")
        assert horizontal_overflow(page) == 0
        screenshot(page, "10-vi-phone-supervisor", full_page=True)


def test_reconnects_after_a_hub_restart_and_shows_what_happened_meanwhile_once(
    browser: Browser, world: AntRingWorld
) -> None:
    """Restart the hub: the page says so, reconnects by itself from its last seq, no card lost or doubled; a gap is shown."""
    with console(browser, world, ADMIN_KEY) as page:
        world.hub.publish(call_event("call.ringing", "r-1", "0903000001"),
                          call_event("call.ringing", "r-2", "0903000002"), headers=PUBLISHER)
        expect(card(page, "r-2")).to_be_visible()

        # Hold the page's reconnects back until the hub has new events, so they can only come from the resume.
        page.route("**/v1/stream*", lambda route: route.abort())
        restart(world)
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
        expect(page.locator("#n-conn")).to_be_visible()
        screenshot(page, "11-reconnecting")
        world.hub.publish(call_event("call.ringing", "r-3", "0903000003"),
                          call_event("call.answered", "r-1", "0903000001"),
                          call_event("call.ended", "r-2", "0903000002", outcome="no_answer", duration_s=4),
                          headers=PUBLISHER)
        page.unroute("**/v1/stream*")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(card(page, "r-1")).to_have_attribute("data-state", "answered", timeout=WAIT_MS)
        expect(card(page, "r-3")).to_have_attribute("data-state", "ringing")
        expect(card(page, "r-2", "#recent").locator(".badge")).to_have_text("Missed", timeout=WAIT_MS)
        expect(page.locator("#n-conn")).to_be_hidden()
        for call_id in ("r-1", "r-2", "r-3"):
            expect(card(page, call_id)).to_have_count(1)

        # Again, but retention removes what the page has not seen before it can resume: a gap notice.
        page.route("**/v1/stream*", lambda route: route.abort())
        restart(world)
        world.hub.publish(*(call_event("call.ringing", f"g-{i}", f"090300001{i}") for i in range(3)), headers=PUBLISHER)
        removed = world.hub.run(world.hub.hub.store.trim(max_age=0, max_count=1))
        assert removed > 0
        page.unroute("**/v1/stream*")
        expect(page.locator("#n-gap")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#n-gap-text")).to_contain_text("removed by retention")
        expect(card(page, "g-2")).to_be_visible()
        assert card(page, "g-0").count() == 0
        screenshot(page, "12-gap-notice")


def test_a_silently_dead_stream_is_noticed_by_its_missing_heartbeats(browser: Browser, tmp_path: Path) -> None:
    """The hub freezes (SIGSTOP: its sockets stay open, nothing arrives, no error fires): after 2.5
    missed heartbeats the page says it is reconnecting, and once the hub thaws it is live again and
    shows what was published, once."""
    port = free_port()
    raw = raw_config(tmp_path / "data", server={"port": port}, streams={"sse_heartbeat": 0.3})
    hub = HubProcess(["--config", str(write_config(tmp_path / "hub.toml", raw))], port, tmp_path / "hub.log")
    hub.wait_healthy()
    context = browser.new_context(viewport=DESKTOP, locale="en-GB")
    page = context.new_page()
    try:
        page.goto(f"{hub.url}/?token={ADMIN_KEY}")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        os.kill(hub.proc.pid, signal.SIGSTOP)
        try:
            expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
        finally:
            os.kill(hub.proc.pid, signal.SIGCONT)
        hub.publish(call_event("call.ringing", "frozen-1", "0903000009"), headers=PUBLISHER)
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(card(page, "frozen-1")).to_have_count(1, timeout=WAIT_MS)
    finally:
        context.close()
        hub.stop()
