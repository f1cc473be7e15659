"""Vbee end to end: contacts added through the hub reach the simulated Vbee, whose campaign runner
reports the calls back to the hub's webhook, and subscribers see the calls end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from handlers.vbee.routes import MAX_CONTACTS
from tests.helpers import ADMIN_KEY, PUBLISHER, SUBSCRIBER_KEY, WAIT, SSEReader
from tests.vbee_env import API_SECRET, VbeeWorld, sim_state, vbee_hub, vbee_world

BATCH = 3
OUTCOMES = {"answered": "answered", "busy": "busy", "no_answer": "no_answer", "failed": "failed"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VbeeWorld]:
    """One simulator, hub and gateway for the module; tests use fresh campaign ids."""
    with vbee_world(tmp_path_factory.mktemp("vbee-e2e") / "data", batch_size=BATCH) as w:
        yield w


@pytest.fixture(autouse=True)
def _calm(world: VbeeWorld) -> Iterator[None]:
    """Each test starts with a well-behaved simulator and gateway."""
    yield
    state = world.state
    state.fail_next = state.fail_skip = state.fail_after_adding = 0
    state.phone_field = "so_dien_thoai"
    state.campaigns_known = set()
    state.apps = {next(iter(state.apps)): API_SECRET}
    world.gateway.fail_before = world.gateway.lose_answer = 0


def campaign(world: VbeeWorld) -> str:
    """A new campaign of the simulated app (Vbee refuses ids it does not have)."""
    campaign_id = "camp-" + uuid.uuid4().hex[:8]
    assert world.state.campaigns_known is not None
    world.state.campaigns_known.add(campaign_id)
    return campaign_id


def numbers(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"phone_number": f"09{start + i:08d}", "ho_ten": f"Khách {start + i}"} for i in range(n)]


def of(events: list[dict[str, Any]], campaign_id: str, type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_ and e["data"].get("campaign_id") == campaign_id]


# -- adding contacts -----------------------------------------------------------------------------


def test_add_contacts_answers_added_and_rejected(world: VbeeWorld) -> None:
    """Valid numbers are added with Vbee's contact_id; bad, duplicate and vendor-dropped ones are rejected with a reason."""
    cid = campaign(world)
    r = world.add_contacts(cid, [
        {"phone_number": "0912 345 678", "ho_ten": "An", "danh_xung": "Chị"},
        {"phone_number": "12345"},
        {"phone_number": "+84 98 765 4321", "ho_ten": "Bình"},
        {"phone_number": "+14155550100"},
        {"phone_number": "0912345678", "ho_ten": "An again"},
        5,
        {"phone_number": "0903123456", "ho_ten": {"nested": True}},
    ])
    assert r.status_code == 200, r.text
    body = r.json()
    contacts = {c["contact_id"]: c for c in world.state.contacts if c["campaign_id"] == cid}
    assert [(a["index"], a["phone_number"]) for a in body["added"]] == [(0, "+84912345678"), (2, "+84987654321")]
    assert all(a["contact_id"] in contacts for a in body["added"])
    assert body["added"][0]["tags"] == {"ho_ten": "An", "danh_xung": "Chị"}
    reasons = {x["index"]: x["reason"] for x in body["rejected"]}
    assert sorted(reasons) == [1, 3, 4, 5, 6]
    assert "not a phone number" in reasons[1]
    assert "Vbee did not add" in reasons[3]
    assert "same number as contact 0" in reasons[4]
    assert "object" in reasons[5] and "ho_ten" in reasons[6]
    added = of(world.history("campaign.*"), cid, "campaign.contact.added")
    assert [e["data"] for e in added] == [
        {"campaign_id": cid, "contact_id": a["contact_id"], "phone_number": normal, "tags": a["tags"]}
        for a, normal in zip(body["added"], ["0912345678", "0987654321"], strict=True)]
    assert all(e["source"] == "vbee" and e["subject"] == e["data"]["contact_id"] for e in added)


def test_contacts_go_in_batches_in_e164(world: VbeeWorld) -> None:
    """Seven contacts with batch_size 3 are three requests to Vbee, each number in E.164."""
    cid = campaign(world)
    before = len(world.state.requests)
    r = world.add_contacts(cid, numbers(7))
    assert r.status_code == 200 and len(r.json()["added"]) == 7
    sent = [q["body"]["contacts"] for q in world.state.requests[before:]]
    assert [len(b) for b in sent] == [3, 3, 1]
    assert sent[0][0] == {"phone_number": "+84900000000", "ho_ten": "Khách 0"}


def test_batch_vbee_finds_all_invalid_is_rejected(world: VbeeWorld) -> None:
    """A batch Vbee refuses with 1403 has all its contacts rejected with its message; other batches are added."""
    cid = campaign(world)
    foreign = [{"phone_number": f"+1415555010{i}"} for i in range(3)]
    r = world.add_contacts(cid, foreign + numbers(2))
    body = r.json()
    assert r.status_code == 200 and len(body["added"]) == 2
    assert [x["index"] for x in body["rejected"]] == [0, 1, 2]
    assert all(x["vendor_code"] == 1403 and "phone_number" in x["reason"] for x in body["rejected"])


def test_import_failed_batches_are_rejected(world: VbeeWorld) -> None:
    """A campaign the app does not have: Vbee's 1402 rejects the batch with its reason, and the answer is still 200."""
    r = world.add_contacts("camp-the-app-does-not-have", numbers(2))
    assert r.status_code == 200
    assert r.json()["added"] == [] and {x["vendor_code"] for x in r.json()["rejected"]} == {1402}


def test_vbee_down_is_502_after_one_request(world: VbeeWorld) -> None:
    """Vbee failing: 502 vbee_unavailable, and no later batch is sent after the first failure."""
    world.state.fail_next = 10
    before = len(world.state.requests)
    r = world.add_contacts(campaign(world), numbers(7))
    assert r.status_code == 502 and r.json()["error"]["code"] == "vbee_unavailable"
    assert len(world.state.requests) == before + 1
    assert world.hub.metric("callhub_vendor_requests_total", vendor="vbee", endpoint="/campaign", status="500") >= 1


def test_failure_after_some_batches_keeps_what_was_added(world: VbeeWorld) -> None:
    """Vbee failing on the second batch: 200 with the first batch added, the second maybe added, the rest not sent."""
    world.state.fail_skip, world.state.fail_next = 1, 5
    before = len(world.state.requests)
    r = world.add_contacts(campaign(world), numbers(7))
    body = r.json()
    assert r.status_code == 200 and [a["index"] for a in body["added"]] == [0, 1, 2]
    rejected = {x["index"]: x for x in body["rejected"]}
    assert all(rejected[i]["maybe_added"] is True for i in (3, 4, 5))
    assert rejected[6]["reason"].startswith("not sent:") and "maybe_added" not in rejected[6]
    assert len(world.state.requests) == before + 2


def test_answer_naming_the_number_phone_number_is_matched(world: VbeeWorld) -> None:
    """Vbee answering `phone_number` instead of `so_dien_thoai` still pairs each contact with its id."""
    world.state.phone_field = "phone_number"
    r = world.add_contacts(campaign(world), numbers(2))
    assert [a["index"] for a in r.json()["added"]] == [0, 1] and r.json()["rejected"] == []


def test_bad_credentials_are_502(world: VbeeWorld) -> None:
    """Vbee refusing our token is a 502 naming the config to check."""
    world.state.apps = {next(iter(world.state.apps)): "rotated-secret-0123456789abcdef-0123"}
    r = world.add_contacts(campaign(world), numbers(1))
    assert r.status_code == 502 and r.json()["error"]["code"] == "vbee_auth_error"
    assert "api_secret" in r.json()["error"]["message"]


@pytest.mark.parametrize(("payload", "status"), [
    ({"contacts": []}, 422),
    ({"contacts": "0912345678"}, 422),
    ({"people": [{"phone_number": "0912345678"}]}, 422),
    ({"contacts": [{"phone_number": "0912345678"}] * (MAX_CONTACTS + 1)}, 422),
])
def test_bad_requests_are_refused(world: VbeeWorld, payload: dict[str, Any], status: int) -> None:
    """No contacts, not a list, or more than MAX_CONTACTS: refused before calling Vbee."""
    before = len(world.state.requests)
    r = httpx.post(f"{world.hub.url}/v1/campaigns/{campaign(world)}/contacts", json=payload,
                   headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=WAIT)
    assert r.status_code == status, r.text
    assert len(world.state.requests) == before


def test_only_admins_add_contacts(world: VbeeWorld) -> None:
    """A publisher key is 403; no key is 401."""
    assert world.add_contacts(campaign(world), numbers(1), headers=PUBLISHER).status_code == 403
    assert world.add_contacts(campaign(world), numbers(1), headers={}).status_code == 401


@pytest.mark.parametrize(("phone_format", "sent"), [("national", "0912345678"), ("84", "84912345678"),
                                                    ("e164", "+84912345678")])
def test_numbers_go_to_vbee_in_the_configured_form(tmp_path: Path, phone_format: str, sent: str) -> None:
    """`[vbee] phone_format` writes the number the way the Vbee account takes it, whatever form it came in."""
    state = sim_state(phone_format=phone_format)
    with vbee_world(tmp_path / "data", state, phone_format=phone_format) as world:
        r = world.add_contacts("camp-0001", [{"phone_number": "+84 912 345 678"}])
    assert r.status_code == 200 and [a["phone_number"] for a in r.json()["added"]] == [sent]
    assert state.requests[-1]["body"]["contacts"] == [{"phone_number": sent}]


def test_a_form_the_vbee_account_does_not_take_is_refused_by_it(tmp_path: Path) -> None:
    """Vbee taking national numbers only, E.164 ones are all invalid (1403): the setting must match the account."""
    with vbee_world(tmp_path / "data", sim_state(phone_format="national")) as world:
        r = world.add_contacts("camp-0001", [{"phone_number": "0912345678"}])
    assert r.status_code == 200 and r.json()["added"] == []
    assert r.json()["rejected"][0]["vendor_code"] == 1403


def test_without_api_credentials_the_route_says_so(tmp_path: Path) -> None:
    """With only webhook_token configured, adding contacts is a 404 naming the missing settings."""
    with vbee_hub(tmp_path / "data", None) as hub:
        r = httpx.post(f"{hub.url}/v1/campaigns/c1/contacts", json={"contacts": numbers(1)},
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=WAIT)
    assert r.status_code == 404 and "api_key" in r.json()["error"]["message"]


# -- the campaign calls back ---------------------------------------------------------------------


def test_calls_reach_an_sse_subscriber_despite_duplicates_and_retries(world: VbeeWorld) -> None:
    """Add contacts -> Vbee calls them -> one call.ended per contact reaches the subscriber, through
    duplicates, out-of-order reports, a lost 5xx answer, a refused request and a timeout."""
    cid = campaign(world)
    params = {"token": SUBSCRIBER_KEY, "types": "call.*,campaign.*"}
    with httpx.stream("GET", f"{world.hub.url}/v1/stream", params=params, timeout=WAIT) as stream:
        world.hub.wait_subscribers(1)
        added = world.add_contacts(cid, numbers(5, start=100)).json()["added"]
        assert len(added) == 5
        world.gateway.lose_answer = 2
        world.gateway.fail_before = 2
        report = world.runner(seed=7, duplicate_rate=0.5, out_of_order_rate=0.5, timeout_rate=0.2).run_sync(cid)
        seen: dict[str, list[dict[str, Any]]] = {"campaign.contact.added": [], "call.ended": []}
        reader = SSEReader(stream)
        while len(seen["call.ended"]) < 5 or len(seen["campaign.contact.added"]) < 5:
            event = reader.next().json
            if event["data"].get("campaign_id") == cid and event["type"] in seen:
                seen[event["type"]].append(event)
    assert report.undelivered == [] and len(report.retried) >= 4 and world.gateway.failed == 4
    assert any(w.short_first for w in report.webhooks)
    assert sum(1 for w in report.webhooks if w.answer and w.answer["duplicate"]) >= 3
    ended = {e["data"]["contact_id"]: e for e in seen["call.ended"]}
    assert set(ended) == {a["contact_id"] for a in added}
    for call in report.calls:
        data = ended[call["contact_id"]]["data"]
        assert data["call_id"] == call["call_id"] and data["outcome"] == OUTCOMES[call["status"]]
        assert data["direction"] == "outbound" and data["to"]["name"].startswith("Khách")
    stored = world.history("call.*,campaign.*")
    assert len(of(stored, cid, "call.ended")) == 5
    assert len(of(stored, cid, "campaign.contact.updated")) == 5


def test_redialled_contacts_end_once_per_attempt(world: VbeeWorld) -> None:
    """A contact called three times (busy, busy, busy) is three call.ended events with distinct call ids."""
    cid = campaign(world)
    world.add_contacts(cid, numbers(2, start=200))
    report = world.runner(outcomes={"busy": 1.0}, redial=2, with_call_id=False, duplicate_rate=1.0).run_sync(cid)
    assert len(report.calls) == 6 and report.undelivered == []
    ended = of(world.history("call.ended"), cid, "call.ended")
    assert len(ended) == 6 and len({e["data"]["call_id"] for e in ended}) == 6
    assert {e["data"]["outcome"] for e in ended} == {"busy"}


def test_burst_of_reports_is_exactly_one_event_each(world: VbeeWorld) -> None:
    """300 contacts reported by 64 concurrent senders, a fifth of the reports twice: exactly 300 call.ended."""
    cid = campaign(world)
    r = world.add_contacts(cid, numbers(300, start=1000))
    assert len(r.json()["added"]) == 300
    report = world.runner(concurrency=64, duplicate_rate=0.2, seed=11).run_sync(cid)
    assert report.undelivered == [] and len(report.webhooks) > 600
    stored = world.history("call.*,campaign.*")
    ended = of(stored, cid, "call.ended")
    assert len(ended) == 300 and len({e["data"]["contact_id"] for e in ended}) == 300
    assert len(of(stored, cid, "campaign.contact.updated")) == 300
