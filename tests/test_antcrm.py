"""The AntCRM client, the screen-pop lookup and the AntCRM simulator, on a loopback port."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from handlers.antcrm import AntCRMConfig, build, stable_key
from handlers.antcrm.client import (
    AntCRMAuthError,
    AntCRMClient,
    AntCRMRejected,
    AntCRMUnavailable,
    creation_retry,
)
from handlers.antcrm.lookup import CustomerLookup
from handlers.antcrm.simulator import DEFAULT_API_KEY, SimState, build_app
from hub.config import config_from_dict
from hub.phone import InvalidPhoneNumber, parse_phone
from hub.plugin import handler_sections
from hub.service import build as hub_build
from tests.helpers import TICK, WAIT, AppServer, SwappableApp, make_config, raw_config

pytestmark = pytest.mark.anyio

FAST = creation_retry(WAIT, base_delay=TICK / 10, max_delay=TICK)
CONTACT = {"name": "Caller 0912345678", "phones": [{"type": "Work", "value": "0912345678"}]}


@pytest.fixture
def state() -> SimState:
    return SimState()


@pytest.fixture
def base_url(state: SimState, sim_server: tuple[AppServer, SwappableApp]) -> str:
    server, swappable = sim_server
    swappable.app = build_app(state)
    return server.url


def client_for(base_url: str, *, key: str = DEFAULT_API_KEY, timeout: float = WAIT, **kwargs: Any) -> AntCRMClient:
    kwargs.setdefault("retry", FAST)
    return AntCRMClient(base_url, key, timeout=timeout, **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lookup_for(client: AntCRMClient, clock: Clock | None = None, *, timeout: float = WAIT) -> CustomerLookup:
    return CustomerLookup(client, timeout=timeout, ttl=300, negative_ttl=60, clock=clock or Clock())


# -- apikey -------------------------------------------------------------------------------------------


async def test_missing_apikey_is_refused_in_the_vendor_error_shape(base_url: str) -> None:
    """No apikey header: 401 with `{"success": 0, "message"}`."""
    async with httpx.AsyncClient() as http:
        response = await http.get(base_url + "/contacts", params={"phone": "0912345678"})
    assert response.status_code == 401
    assert response.json() == {"success": 0, "message": "apikey is required"}


async def test_wrong_apikey_is_auth_error_without_the_key(state: SimState, base_url: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A wrong apikey is AntCRMAuthError with the vendor's message, sent once; the key is in no log or error."""
    caplog.set_level(logging.DEBUG)
    secret = "not-the-key-but-still-a-secret-7f3a"
    async with client_for(base_url, key=secret) as client:
        with pytest.raises(AntCRMAuthError) as info:
            await client.create_ticket("Missed call", "SLA-4H", CONTACT, ticket_id_apiring="k1")
        assert secret not in repr(client)
    assert info.value.vendor_message == "apikey is invalid" and info.value.status == 401
    assert isinstance(info.value, AntCRMRejected)
    assert len(state.requests) == 1 and state.requests[0]["apikey"] == "wrong" and state.tickets == []
    assert secret not in str(info.value.to_dict()) and secret not in caplog.text


# -- tickets ------------------------------------------------------------------------------------------


async def test_ticket_is_created_with_the_vendor_fields(state: SimState, base_url: str) -> None:
    """create_ticket sends title, SLA, contact, ticketIdApiRing and cusFields; answers success and TicketId."""
    async with client_for(base_url) as client:
        answer = await client.create_ticket("Missed call from 0912345678", "SLA-4H", CONTACT,
                                            ticket_id_apiring="rule-1:evt-1", summary="3 s ringing",
                                            cus_fields={"Source": "callhub"}, category="Missed call")
    assert answer == {"success": 1, "TicketId": 9457}
    sent = state.requests[0]
    assert sent["method"] == "POST" and sent["path"] == "/tickets" and sent["apikey"] == "ok"
    assert sent["body"] == {"title": "Missed call from 0912345678", "SLA": "SLA-4H", "contact": CONTACT,
                            "ticketIdApiRing": "rule-1:evt-1", "summary": "3 s ringing",
                            "cusFields": [{"name": "Source", "value": "callhub"}], "category": "Missed call"}
    (ticket,) = state.tickets
    assert ticket["TicketId"] == 9457 and ticket["priority"] == "Medium" and ticket["category"] == "Missed call"


@pytest.mark.parametrize(("body", "message"), [
    ({"SLA": "SLA-4H", "contact": CONTACT}, "title is required"),
    ({"title": "t", "contact": CONTACT}, "SLA is required"),
    ({"title": "t", "SLA": "SLA-4H"}, "contact is required"),
    ({"title": "t", "SLA": "SLA-4H", "contact": {"phones": CONTACT["phones"]}}, "contact.name is required"),
    ({"title": "t", "SLA": "SLA-4H", "contact": {"name": "x"}}, "contact.phones or contact.emails is required"),
    ({"title": "t", "SLA": "SLA-4H", "contact": {"id": "661ca720f70843211b05712a"}}, "contact not found"),
])
async def test_ticket_without_required_fields_is_refused(state: SimState, base_url: str, body: dict[str, Any],
                                                         message: str) -> None:
    """The simulator refuses a ticket missing title, SLA or a usable contact: 400 and a message."""
    async with httpx.AsyncClient() as http:
        response = await http.post(base_url + "/tickets", json=body, headers={"apikey": DEFAULT_API_KEY})
    assert response.status_code == 400 and response.json() == {"success": 0, "message": message}
    assert state.tickets == []


async def test_refused_ticket_is_rejected_with_the_vendor_message_and_not_retried(state: SimState,
                                                                                  base_url: str) -> None:
    """A 400 becomes AntCRMRejected carrying AntCRM's message, after one request."""
    async with client_for(base_url) as client:
        with pytest.raises(AntCRMRejected) as info:
            await client.create_ticket("t", "", CONTACT, ticket_id_apiring="k1")
    assert info.value.vendor_message == "SLA is required" and "SLA is required" in info.value.message
    assert info.value.status == 400 and len(state.requests) == 1


async def test_ticket_for_a_known_contact_id(state: SimState, base_url: str) -> None:
    """A ticket may name its contact by AntCRM id alone."""
    contact = state.add_contact("Nguyễn Văn An", phones=["0912345678"], contact_type="customer")
    async with client_for(base_url) as client:
        answer = await client.create_ticket("Call back", "SLA-4H", {"id": contact["id"]}, ticket_id_apiring="k1")
    assert state.tickets[0]["contact"] == {"id": contact["id"]} and answer["TicketId"] == 9457


async def test_same_ticket_key_twice_is_one_ticket(state: SimState, base_url: str) -> None:
    """A second create with the same ticketIdApiRing answers the same TicketId and creates nothing."""
    key = stable_key("missed-inbound-callback", "evt-42")
    async with client_for(base_url) as client:
        first = await client.create_ticket("Missed call", "SLA-4H", CONTACT, ticket_id_apiring=key)
        second = await client.create_ticket("Missed call", "SLA-4H", CONTACT, ticket_id_apiring=key)
        other = await client.create_ticket("Missed call", "SLA-4H", CONTACT, ticket_id_apiring=key + "x")
    assert first == second and other["TicketId"] != first["TicketId"]
    assert len(state.tickets) == 2 and state.deduplicated == 1


async def test_ticket_creation_retries_5xx_until_success(state: SimState, base_url: str) -> None:
    """503 twice, then success: three requests, one ticket."""
    state.fail_next = 2
    async with client_for(base_url) as client:
        answer = await client.create_ticket("Missed call", "SLA-4H", CONTACT, ticket_id_apiring="k1")
    assert answer["TicketId"] == 9457
    assert len(state.requests_to("POST", "/tickets")) == 3 and len(state.tickets) == 1


async def test_lost_answer_is_retried_without_a_second_ticket(state: SimState, base_url: str) -> None:
    """Ticket created but the answer a 500: the retry carries the same key and gets the same TicketId."""
    state.fail_after_create = 1
    async with client_for(base_url) as client:
        answer = await client.create_ticket("Missed call", "SLA-4H", CONTACT, ticket_id_apiring="k1")
    assert answer["TicketId"] == state.tickets[0]["TicketId"]
    assert len(state.requests_to("POST", "/tickets")) == 2 and len(state.tickets) == 1


async def test_ticket_timeouts_are_retried(state: SimState, base_url: str) -> None:
    """A request that gets no answer in time is sent again, with the same key: still one ticket."""
    state.delay = 4 * TICK
    async with client_for(base_url, timeout=2 * TICK) as client:
        task = asyncio.create_task(client.create_ticket("Missed call", "SLA-4H", CONTACT, ticket_id_apiring="k1"))
        while len(state.requests) < 2:
            await asyncio.sleep(TICK / 5)
        state.delay = 0
        answer = await task
    assert answer["TicketId"] == 9457 and len(state.tickets) == 1


async def test_ticket_creation_gives_up_after_retry_for(state: SimState, base_url: str) -> None:
    """AntCRM failing for longer than retry_for: AntCRMUnavailable, soon after retry_for."""
    state.fail_next = 1_000_000
    retry_for = 4 * TICK
    async with client_for(base_url, retry=creation_retry(retry_for, base_delay=TICK / 10, max_delay=TICK)) as client:
        started = time.monotonic()
        with pytest.raises(AntCRMUnavailable) as info:
            await client.create_ticket("Missed call", "SLA-4H", CONTACT, ticket_id_apiring="k1")
        elapsed = time.monotonic() - started
    assert retry_for <= elapsed < retry_for + 6 * TICK
    assert info.value.status == 503 and info.value.vendor_message == "Service temporarily unavailable"
    assert len(state.requests) > 2 and state.tickets == []


async def test_ticket_needs_an_idempotency_key(base_url: str) -> None:
    """Without ticket_id_apiring there is no safe retry: refused before sending."""
    async with client_for(base_url) as client:
        with pytest.raises(ValueError, match="idempotency"):
            await client.create_ticket("t", "SLA-4H", CONTACT, ticket_id_apiring="")
        with pytest.raises(ValueError, match="unknown ticket fields"):
            await client.create_ticket("t", "SLA-4H", CONTACT, ticket_id_apiring="k", colour="red")


# -- contacts -----------------------------------------------------------------------------------------


async def test_find_contacts_asks_in_the_configured_form_and_antcrm_matches_it_exactly(
        state: SimState, base_url: str) -> None:
    """`find_contacts` sends `phone_format` (national by default); the simulator, like a database, matches as saved."""
    an = state.add_contact("Nguyễn Văn An", phones=["0912345678"], contact_type="customer")
    state.add_contact("Trần Bình", phones=["+84987654321"])
    async with client_for(base_url) as client:
        assert [c["id"] for c in await client.find_contacts("+84912345678")] == [an["id"]]
        assert await client.find_contacts("0987654321") == []
    assert [r["query"] for r in state.requests] == [{"phone": "0912345678"}, {"phone": "0987654321"}]


@pytest.mark.parametrize(("phone_format", "sent"), [("e164", "+84912345678"), ("84", "84912345678"),
                                                    ("national", "0912345678")])
async def test_contacts_can_be_asked_in_each_form(state: SimState, base_url: str, phone_format: str, sent: str) -> None:
    """phone_format e164, 84 or national writes the number that way."""
    state.add_contact("Nguyễn Văn An", phones=[sent])
    async with client_for(base_url, phone_format=phone_format) as client:
        assert len(await client.find_contacts("0912 345 678")) == 1
    assert state.requests[0]["query"] == {"phone": sent}


@pytest.mark.parametrize("saved", ["0912345678", "84912345678", "+84912345678"])
async def test_find_contact_tries_every_stored_form_before_giving_up(state: SimState, base_url: str, saved: str) -> None:
    """A contact saved as 09…, 84… or +84… is found, asking national, then 84…, then +84…, and no further."""
    an = state.add_contact("Nguyễn Văn An", phones=[saved])
    async with client_for(base_url) as client:
        found = await client.find_contact(parse_phone("84 912 345 678"))
        unknown = await client.find_contact(parse_phone("0903123456"))
    asked = [r["query"]["phone"] for r in state.requests]
    order = ["0912345678", "84912345678", "+84912345678"]
    assert found is not None and found["id"] == an["id"] and unknown is None
    assert asked == order[: order.index(saved) + 1] + ["0903123456", "84903123456", "+84903123456"]


async def test_contact_types_are_asked_in_the_configured_order(state: SimState, base_url: str) -> None:
    """`lookup_contact_types` adds contactType to each request, customers first when so configured."""
    state.add_contact("Lead An", phones=["0912345678"])
    async with client_for(base_url, lookup_contact_types=["customer", "lead"]) as client:
        found = await client.find_contact(parse_phone("0912345678"))
    assert found is not None and found["name"] == "Lead An"
    assert [r["query"] for r in state.requests] == [{"phone": "0912345678", "contactType": "customer"},
                                                    {"phone": "0912345678", "contactType": "lead"}]


async def test_a_foreign_number_is_asked_once_per_distinct_form(state: SimState, base_url: str) -> None:
    """+1… reads the same nationally and in E.164: it is asked as +1… and as 1…, not three times."""
    async with client_for(base_url) as client:
        assert await client.find_contact(parse_phone("+14155550123")) is None
    assert [r["query"]["phone"] for r in state.requests] == ["+14155550123", "14155550123"]


async def test_ticket_contact_phones_are_written_in_phone_format(state: SimState, base_url: str) -> None:
    """A rule's `{data.from.number}` in a ticket's contact phones reaches AntCRM as `phone_format` writes it."""
    contact = {"name": "Caller", "phones": [{"type": "Work", "value": "84912345678"}, {"type": "Ext", "value": "101"}]}
    async with client_for(base_url, phone_format="e164") as client:
        await client.create_ticket("t", "SLA-4H", contact, ticket_id_apiring="k-phones")
    assert state.tickets[0]["contact"]["phones"] == [{"type": "Work", "value": "+84912345678"},
                                                     {"type": "Ext", "value": "101"}]


async def test_find_contacts_refuses_a_non_number_without_asking(state: SimState, base_url: str) -> None:
    """An extension or garbage is InvalidPhoneNumber, and AntCRM is not asked."""
    async with client_for(base_url) as client:
        with pytest.raises(InvalidPhoneNumber):
            await client.find_contacts("101")
    assert state.requests == []


async def test_find_contacts_is_tried_once(state: SimState, base_url: str) -> None:
    """A 503 on the screen-pop path is AntCRMUnavailable at once, not retried."""
    state.fail_next = 1
    async with client_for(base_url) as client:
        with pytest.raises(AntCRMUnavailable):
            await client.find_contacts("0912345678")
    assert len(state.requests) == 1


async def test_upsert_contact_creates_a_lead_once(state: SimState, base_url: str) -> None:
    """An unknown caller becomes a lead with a stable customerIdApiRing; the next upsert finds it."""
    async with client_for(base_url) as client:
        created = await client.upsert_contact("+84911222333", name="Caller 0911222333", tags=["Missed call"])
        again = await client.upsert_contact("0911 222 333", name="Caller 0911222333")
        found = await client.find_contacts("0911222333")
    assert created["created"] is True and created["leadId"] == 2964 and created["customerId"] is None
    assert created["answer"] == {"success": 1, "leadId": 2964}
    (lead,) = state.contacts
    assert lead["contactType"] == "lead" and lead["customerIdApiRing"] == "callhub-84911222333"
    assert lead["phones"] == [{"type": "Work", "value": "0911222333"}] and lead["tags"] == ["Missed call"]
    assert again["created"] is False and again["leadId"] == 2964 and found[0]["id"] == lead["id"]
    assert len(state.requests_to("POST", "/contacts")) == 1


async def test_contact_creation_is_deduplicated_by_customer_code(state: SimState, base_url: str) -> None:
    """Two POST /contacts with one customerIdApiRing: one contact, the same leadId."""
    body = {"name": "An", "customerIdApiRing": "crm-1", "phones": [{"type": "Work", "value": "0912345678"}]}
    async with httpx.AsyncClient(headers={"apikey": DEFAULT_API_KEY}) as http:
        first = (await http.post(base_url + "/contacts", json=body)).json()
        second = (await http.post(base_url + "/contacts", json=body)).json()
        missing = await http.post(base_url + "/contacts", json={"name": "An"})
    assert first == second == {"success": 1, "leadId": 2964} and len(state.contacts) == 1
    assert missing.status_code == 400 and missing.json()["message"] == "customerIdApiRing is required"


# -- screen-pop lookup --------------------------------------------------------------------------------


async def test_lookup_hit_is_compact_and_cached_for_ttl(state: SimState, base_url: str) -> None:
    """A known caller answers the compact customer; asked again within ttl, AntCRM is not asked."""
    an = state.add_contact("Nguyễn Văn An", phones=["0912345678"], contact_type="customer", tags=["VIP"],
                           stage="Customer", responsibleStaff="alice@example.com")
    clock = Clock()
    async with client_for(base_url) as client:
        lookup = lookup_for(client, clock)
        customer = await lookup.lookup("+84912345678")
        assert await lookup.lookup("0912345678") == customer
        assert len(state.requests) == 1
        clock.now += 301
        assert await lookup.lookup("0912345678") == customer
    assert customer == {"name": "Nguyễn Văn An", "contactType": "customer", "leadId": None,
                        "customerId": an["customerId"], "tags": ["VIP"], "stage": "Customer",
                        "responsibleStaff": "alice@example.com", "scoreRank": 0, "rankName": None, "id": an["id"]}
    assert len(state.requests) == 2


async def test_lookup_miss_is_negatively_cached(state: SimState, base_url: str) -> None:
    """An unknown caller is None; asked again within negative_ttl, AntCRM is not asked."""
    clock = Clock()
    async with client_for(base_url) as client:
        lookup = lookup_for(client, clock)
        assert await lookup.lookup("0903123456") is None
        assert await lookup.lookup("0903123456") is None
        assert len(state.requests) == 3  # each stored form asked once
        state.add_contact("Lê Chi", phones=["0903123456"])
        clock.now += 61
        customer = await lookup.lookup("0903123456")
    assert customer is not None and customer["name"] == "Lê Chi" and len(state.requests) == 4


async def test_lookup_timeout_is_none_within_the_timeout(state: SimState, base_url: str) -> None:
    """AntCRM slower than the lookup timeout: None after about the timeout, and not cached."""
    state.add_contact("Nguyễn Văn An", phones=["0912345678"])
    state.delay = 6 * TICK
    async with client_for(base_url) as client:
        lookup = lookup_for(client, timeout=TICK)
        started = time.monotonic()
        assert await lookup.lookup("0912345678") is None
        elapsed = time.monotonic() - started
        state.delay = 0
        assert (await lookup.lookup("0912345678") or {}).get("name") == "Nguyễn Văn An"
    assert TICK * 0.9 <= elapsed < 3 * TICK and lookup.failures == 1


async def test_concurrent_lookups_share_one_request(state: SimState, base_url: str) -> None:
    """Five lookups of one number at once (in both formats) make one request and get one answer."""
    state.add_contact("Nguyễn Văn An", phones=["0912345678"])
    state.delay = 2 * TICK
    async with client_for(base_url) as client:
        lookup = lookup_for(client)
        answers = await asyncio.gather(*(lookup.lookup(n) for n in ["0912345678", "+84912345678"] * 2 + ["0912.345.678"]))
    assert all(a == answers[0] for a in answers) and answers[0] is not None
    assert len(state.requests) == 1 and lookup.requests == 1


async def test_lookup_errors_are_none_not_raised(state: SimState, base_url: str) -> None:
    """AntCRM down, a wrong key or a non-number: None, never an exception."""
    state.fail_next = 1
    async with client_for(base_url) as client:
        assert await lookup_for(client).lookup("0912345678") is None
    async with client_for(base_url, key="wrong-key-0123456789") as client:
        assert await lookup_for(client).lookup("0912345678") is None
        assert await lookup_for(client).lookup("anonymous") is None
    assert len(state.requests) == 2


async def test_lookup_shows_the_member_rank(state: SimState, base_url: str) -> None:
    """scoreRank and rankName come with the screen-pop customer, so rules can route VIPs."""
    state.add_contact("An", phones=["0912345678"], contact_type="customer", scoreRank=3, rankName="Kim cương")
    async with client_for(base_url) as client:
        customer = await lookup_for(client).lookup("0912345678")
    assert customer is not None and (customer["scoreRank"], customer["rankName"]) == (3, "Kim cương")


async def test_lookup_prefers_the_customer_holding_the_number(state: SimState, base_url: str) -> None:
    """A lead and a customer share the number: the customer is shown."""
    state.add_contact("Lead An", phones=["0912345678"])
    state.add_contact("Customer An", phones=["0912345678"], contact_type="customer")
    async with client_for(base_url) as client:
        customer = await lookup_for(client).lookup("0912345678")
    assert customer is not None and customer["name"] == "Customer An"


# -- config and registration --------------------------------------------------------------------------


def test_config_defaults_and_durations(tmp_path: Path) -> None:
    """[antcrm] takes durations in any unit, has the documented defaults, and refuses unknown keys."""
    raw = raw_config(tmp_path, antcrm={"api_key": "secret-apikey-42", "retry_for": "2m", "lookup_timeout": "300ms"})
    config = config_from_dict(raw, env={}, handler_sections=handler_sections()).handlers["antcrm"]
    assert isinstance(config, AntCRMConfig)
    assert config.base_url == "https://apiring.antbuddy.com" and config.retry_for == 120.0
    assert config.lookup_timeout == 0.3 and config.cache_ttl == 300.0 and config.negative_cache_ttl == 60.0
    assert config.max_concurrency == 8 and "secret-apikey-42" not in repr(config)
    with pytest.raises(ValueError, match="apikey"):
        AntCRMConfig.model_validate({"api_key": "k", "apikey": "k"})
    with pytest.raises(ValueError, match="cache_ttl"):
        AntCRMConfig.model_validate({"api_key": "k", "cache_ttl": 0})


async def test_register_builds_the_client_and_lookup(tmp_path: Path) -> None:
    """With [antcrm], the hub gets its two actions and its clean-up; without it, neither."""
    with_crm = hub_build(make_config(tmp_path / "a", antcrm={"api_key": "k", "lookup_timeout": 0.2}),
                         check_only=True)
    assert {"antcrm.create_ticket", "antcrm.upsert_contact"} <= set(with_crm.actions.specs)
    assert len(with_crm.cleanups) == 1
    await with_crm.release()
    without = hub_build(make_config(tmp_path / "b"), check_only=True)
    assert not any(t.startswith("antcrm.") for t in without.actions.specs) and without.cleanups == []
    await without.release()
    await build(AntCRMConfig(api_key="k")).aclose()
