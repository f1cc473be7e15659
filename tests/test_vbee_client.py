"""The Vbee client against the Vbee campaign-API simulator on a loopback port."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from handlers.vbee.client import (
    VbeeAppNotFound,
    VbeeAuthError,
    VbeeClient,
    VbeeContactsInvalid,
    VbeeError,
    VbeeImportFailed,
    VbeeUnavailable,
    access_token,
)
from handlers.vbee.simulator import API_PREFIX, SimState, build_app, vbee_phone
from hub.exceptions import HubError
from hub.outbound.retry import RetryPolicy
from tests.helpers import TICK, WAIT, AppServer, SwappableApp, free_port
from tests.vbee_env import API_KEY, API_SECRET, sim_state

pytestmark = pytest.mark.anyio

CAMPAIGN = "camp-0001"
FAST = RetryPolicy(attempts=3, base_delay=TICK / 10, max_delay=TICK)


@pytest.fixture
def state() -> SimState:
    return sim_state()


@pytest.fixture
def base_url(state: SimState, sim_server: tuple[AppServer, SwappableApp]) -> str:
    server, swappable = sim_server
    swappable.app = build_app(state)
    return server.url + API_PREFIX


def client_for(base_url: str, *, key: str = API_KEY, secret: str = API_SECRET, timeout: float = WAIT,
               **kwargs: Any) -> VbeeClient:
    return VbeeClient(base_url, key, secret, timeout=timeout, retry=FAST, **kwargs)


async def test_add_contacts_answers_contact_ids(state: SimState, base_url: str) -> None:
    """Added contacts come back with Vbee's contact_id, the E.164 number and the tags."""
    async with client_for(base_url) as client:
        added = await client.add_contacts(CAMPAIGN, [{"phone_number": "+84987654321", "ho_ten": "David Thiêm",
                                                      "danh_xung": "Anh"}])
    assert len(added) == 1
    assert added[0]["so_dien_thoai"] == "+84987654321"
    assert added[0]["ho_ten"] == "David Thiêm" and added[0]["danh_xung"] == "Anh"
    assert added[0]["contact_id"] == state.contacts[0]["contact_id"]
    assert state.requests[0]["body"] == {"campaign_id": CAMPAIGN, "contacts": [
        {"phone_number": "+84987654321", "ho_ten": "David Thiêm", "danh_xung": "Anh"}]}


async def test_token_is_hs256_jwt_with_api_key_and_iat(state: SimState, base_url: str) -> None:
    """The Bearer token is an HS256 JWT of apiKey and iat, signed with the API secret."""
    async with client_for(base_url) as client:
        await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    claims = state.requests[0]["claims"]
    assert claims["apiKey"] == API_KEY and isinstance(claims["iat"], int)
    token = access_token(API_KEY, API_SECRET, now=1_700_000_000)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert jwt.decode(token, API_SECRET, algorithms=["HS256"]) == {"apiKey": API_KEY, "iat": 1_700_000_000}


async def test_invalid_numbers_are_dropped_by_the_vendor(state: SimState, base_url: str) -> None:
    """Vbee adds the valid contacts and silently drops the others."""
    async with client_for(base_url) as client:
        added = await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}, {"phone_number": "12"}])
    assert [a["so_dien_thoai"] for a in added] == ["+84912345678"]


async def test_wrong_secret_is_auth_error(base_url: str) -> None:
    """A token signed with the wrong secret is Vbee's 401: VbeeAuthError."""
    async with client_for(base_url, secret="not-the-secret-0123456789abcdef-0123") as client:
        with pytest.raises(VbeeAuthError) as info:
            await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    assert info.value.vendor_code == 401 and info.value.vendor_message == "Unauthorized"
    assert not isinstance(info.value, VbeeAppNotFound)


async def test_unknown_api_key_is_app_not_found(base_url: str) -> None:
    """An apiKey no app has is 1201: VbeeAppNotFound, telling to check api_key."""
    async with client_for(base_url, key="nobody") as client:
        with pytest.raises(VbeeAppNotFound) as info:
            await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    assert info.value.vendor_code == 1201 and "api_key" in info.value.message


async def test_unknown_campaign_is_import_failed(state: SimState, base_url: str) -> None:
    """The vendor's 1402 is VbeeImportFailed."""
    state.campaigns_known = {"other"}
    async with client_for(base_url) as client:
        with pytest.raises(VbeeImportFailed) as info:
            await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    assert info.value.vendor_code == 1402


async def test_all_invalid_is_contacts_invalid(base_url: str) -> None:
    """Every number invalid is 1403: VbeeContactsInvalid, telling to check phone_number."""
    async with client_for(base_url) as client:
        with pytest.raises(VbeeContactsInvalid) as info:
            await client.add_contacts(CAMPAIGN, [{"phone_number": "123"}, {"phone_number": "+1 555"}])
    assert info.value.vendor_code == 1403 and "phone_number" in info.value.message


async def test_errors_answered_with_http_200_are_still_errors(state: SimState, base_url: str) -> None:
    """A `"status": 0` body is an error whatever the HTTP status."""
    state.errors_as_200 = True
    async with client_for(base_url, key="nobody") as client:
        with pytest.raises(VbeeAppNotFound):
            await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])


async def test_system_error_is_unavailable_and_not_retried(state: SimState, base_url: str) -> None:
    """Vbee's 500 is VbeeUnavailable, and the POST is sent once (adding is not idempotent)."""
    state.fail_next = 1
    async with client_for(base_url) as client:
        with pytest.raises(VbeeUnavailable) as info:
            await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    assert info.value.vendor_code == 500 and info.value.maybe_sent
    assert len(state.requests) == 1 and state.contacts == []


async def test_lost_answer_is_not_retried(state: SimState, base_url: str) -> None:
    """Contacts added but the answer a 500: one request, so nobody is added (and called) twice."""
    state.fail_after_adding = 1
    async with client_for(base_url) as client:
        with pytest.raises(VbeeUnavailable):
            await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    assert len(state.requests) == 1 and len(state.contacts) == 1


async def test_timeout_is_unavailable_maybe_sent_and_not_retried(state: SimState, base_url: str) -> None:
    """No answer in time: VbeeUnavailable saying the request may have reached Vbee, sent once."""
    state.delay = 10 * TICK
    async with client_for(base_url, timeout=TICK) as client:
        with pytest.raises(VbeeUnavailable) as info:
            await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    assert info.value.maybe_sent and "may have reached" in info.value.message
    assert len(state.requests) == 1


async def test_connection_refused_is_unavailable_not_sent() -> None:
    """Nothing listening: VbeeUnavailable with maybe_sent false."""
    async with client_for(f"http://127.0.0.1:{free_port()}{API_PREFIX}") as client:
        with pytest.raises(VbeeUnavailable) as info:
            await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    assert info.value.maybe_sent is False and info.value.to_dict()["error"]["maybe_sent"] is False


async def test_failed_connects_are_retried() -> None:
    """A connection that never opened is tried again: the request never reached Vbee."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"result": [{"contact_id": "c1", "so_dien_thoai": "+84912345678"}],
                                         "status": 1})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = client_for("http://vbee.test/api", http=http)
        added = await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    assert added[0]["contact_id"] == "c1" and len(calls) == 3
    assert str(calls[0].url) == "http://vbee.test/api/campaign"


@pytest.mark.parametrize(("status", "body", "error"), [
    (503, b"<html>down</html>", VbeeUnavailable),
    (401, b"", VbeeAuthError),
    (200, b"not json", VbeeError),
    (200, b'{"status": 1, "result": "nope"}', VbeeError),
    (400, b'{"status": 0, "code": 9999, "message": "Something new"}', VbeeError),
])
async def test_unreadable_or_unknown_answers(status: int, body: bytes, error: type[VbeeError]) -> None:
    """Answers outside the documented ones still map to a VbeeError (by HTTP status when the body says nothing)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = client_for("http://vbee.test/api", http=http)
        with pytest.raises(error) as info:
            await client.add_contacts(CAMPAIGN, [{"phone_number": "+84912345678"}])
    assert type(info.value) is error


def test_errors_are_hub_errors_answering_502() -> None:
    """Every Vbee error is a HubError answering 502 with the vendor's code, never a secret."""
    for cls in (VbeeError, VbeeAuthError, VbeeAppNotFound, VbeeImportFailed, VbeeContactsInvalid, VbeeUnavailable):
        exc = cls("x", vendor_code=1, vendor_message="m", status=400)
        assert isinstance(exc, HubError) and exc.status_code == 502
        assert exc.to_dict()["error"]["vendor_code"] == 1
    client = VbeeClient("http://x", API_KEY, API_SECRET, timeout=1)
    assert API_SECRET not in repr(client)


def test_simulator_refuses_missing_token_like_vbee() -> None:
    """Without a Bearer token the simulator answers exactly the vendor's documented 401 body."""
    with TestClient(build_app(sim_state())) as tc:
        r = tc.post(API_PREFIX + "/campaign", json={"campaign_id": CAMPAIGN, "contacts": []})
    assert r.status_code == 401
    assert r.json() == {"status": 0, "code": 401, "message": "Unauthorized"}


def test_simulator_phone_rules() -> None:
    """The simulated vendor calls Vietnamese numbers written exactly in its one form, answered in E.164."""
    assert vbee_phone("+84987654321") == "+84987654321" and vbee_phone("+842873019555") == "+842873019555"
    assert vbee_phone("0987654321") is None and vbee_phone("84987654321") is None
    assert vbee_phone("+84 987 654 321") is None
    assert vbee_phone("84987654321", "84") == "+84987654321" and vbee_phone("+84987654321", "84") is None
    assert vbee_phone("0987654321", "national") == "+84987654321"
    assert vbee_phone("+14155550100") is None and vbee_phone(None) is None


async def test_a_campaign_the_app_does_not_have_is_refused(base_url: str, state: SimState) -> None:
    """The simulator knows its campaigns: another id is Vbee's 1402, and nothing is added."""
    async with client_for(base_url) as client:
        with pytest.raises(VbeeImportFailed):
            await client.add_contacts("camp-nobody-made", [{"phone_number": "+84912345678"}])
    assert state.contacts == []
