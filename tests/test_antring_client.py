"""The AntRing client against the AntRing HTTP simulator on a loopback port."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from handlers.antring.client import (
    FALLBACK_TOKEN_TTL,
    HISTORY_MAX_WINDOW,
    AntRingAuthError,
    AntRingClient,
    AntRingError,
    AntRingUnavailable,
    DeviceOffline,
    InvalidNumber,
    TokenManager,
    VoiceToken,
    format_time,
    history_windows,
    parse_expire,
)
from handlers.antring.config import AntRingConfig
from handlers.antring.signing import app_hash, histories_hash
from handlers.antring.simulator import Device, SimState, build_app
from hub.outbound.retry import RetryPolicy
from tests.helpers import TICK, WAIT, AppServer, SwappableApp, free_port

pytestmark = pytest.mark.anyio

APP_ID = "app-6544646543674"
SECRET = "s3cret-app-value"
SIP_USER = "dev101"
SIP_PASSWORD = "sip-pass-101"
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, deadline=WAIT)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def state() -> SimState:
    return SimState(
        app_id=APP_ID,
        app_secret=SECRET,
        devices={
            SIP_USER: Device(SIP_PASSWORD, online=True, username="alice"),
            "dev102": Device("sip-pass-102", online=False, username="bob"),
        },
    )


@pytest.fixture
def server(state: SimState, sim_server: tuple[AppServer, SwappableApp]) -> AppServer:
    s, swappable = sim_server
    swappable.app = build_app(state)
    return s


def make_client(server: AppServer, *, secret: str = SECRET, app_id: str = APP_ID,
                retry: RetryPolicy = FAST, timeout: float = WAIT) -> AntRingClient:
    return AntRingClient(server.url, app_id, secret, timeout=timeout, retry=retry)


def api_requests(state: SimState, path: str) -> list[dict[str, Any]]:
    return [r for r in state.requests if r["path"].startswith(path)]


# -- voice token ---------------------------------------------------------------------------


async def test_voice_token_is_issued_for_signed_headers(state: SimState, server: AppServer) -> None:
    """auth_token with x-auth-app-id/x-auth-app-hash and the SIP credentials yields a token the simulator accepts."""
    async with make_client(server) as client:
        token = await client.voice_token(SIP_USER, SIP_PASSWORD)
    assert state.is_token_valid(token.value)
    assert token.expires_at == pytest.approx(state.clock() + state.token_ttl, abs=5)
    assert [r["method"] for r in api_requests(state, "/oapi/v1/voice/auth_token")] == ["POST"]


async def test_wrong_secret_is_an_auth_error_naming_hash_not_match(server: AppServer) -> None:
    """A wrong app secret gives AntRingAuthError carrying HASH_NOT_MATCH, and the secret appears nowhere."""
    wrong = "not-the-secret-xyz"
    async with make_client(server, secret=wrong) as client:
        with pytest.raises(AntRingAuthError) as info:
            await client.voice_token(SIP_USER, SIP_PASSWORD)
    assert info.value.vendor_message == "HASH_NOT_MATCH" and info.value.status == 400
    assert info.value.path == "/oapi/v1/voice/auth_token"
    text = f"{info.value} {info.value!r} {info.value.to_dict()}"
    assert wrong not in text and SIP_PASSWORD not in text


async def test_unknown_app_id_is_an_auth_error(server: AppServer) -> None:
    """An app id the vendor does not know gives AntRingAuthError with APPID_NOT_FOUND."""
    async with make_client(server, app_id="someone-else") as client:
        with pytest.raises(AntRingAuthError) as info:
            await client.voice_token(SIP_USER, SIP_PASSWORD)
    assert info.value.vendor_message == "APPID_NOT_FOUND"


async def test_refused_tokens_are_an_auth_error(state: SimState, server: AppServer) -> None:
    """A simulator told to refuse tokens (401) makes voice_token raise AntRingAuthError."""
    state.refuse_tokens = True
    async with make_client(server) as client:
        with pytest.raises(AntRingAuthError) as info:
            await client.voice_token(SIP_USER, SIP_PASSWORD)
    assert info.value.status == 401


async def test_wrong_sip_password_gets_no_token(server: AppServer) -> None:
    """A wrong SIP password is refused (400) and the password is not in the error."""
    async with make_client(server) as client:
        with pytest.raises(AntRingError) as info:
            await client.voice_token(SIP_USER, "wrong-sip-pass")
    assert info.value.status == 400 and "wrong-sip-pass" not in str(info.value)


async def test_expired_tokens_are_no_longer_valid(state: SimState, server: AppServer) -> None:
    """expire_tokens() makes every issued token invalid at once."""
    async with make_client(server) as client:
        token = await client.voice_token(SIP_USER, SIP_PASSWORD)
    state.expire_tokens()
    assert not state.is_token_valid(token.value)
    assert not state.is_token_valid("never-issued")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1_900_000_000, 1_900_000_000.0),
        (1_900_000_000_500, 1_900_000_000.5),
        ("1900000000", 1_900_000_000.0),
        ("2030-03-17T17:46:40.000Z", 1_900_000_000.0),
        ("2030-03-18T00:46:40", 1_900_000_000.0),  # no offset: the account's time, Asia/Ho_Chi_Minh (UTC+7)
        ("2030-03-18T00:46:40+07:00", 1_900_000_000.0),
        (3600, 1_000_000_000.0 + 3600),
        (None, 1_000_000_000.0 + FALLBACK_TOKEN_TTL),
    ],
)
def test_expire_formats_are_understood(raw: object, expected: float) -> None:
    """expire may be unix seconds, unix ms, ISO-8601, or seconds from now (with a fallback when absent)."""
    assert parse_expire(raw, now=1_000_000_000.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw", "expire_format", "expected"),
    [
        (1_900_000_000_500, "unix_ms", 1_900_000_000.5),
        (999_999_999_000, "unix_ms", 999_999_999.0),  # "auto" would read this as unix seconds
        (1_900_000_000, "unix", 1_900_000_000.0),
        (5, "unix", 5.0),  # "auto" would read this as a lifetime
        ("1900000000", "ttl_s", 1_000_000_000.0 + 1_900_000_000),
        ("2030-03-18T00:46:40", "iso", 1_900_000_000.0),
    ],
)
def test_a_fixed_expire_format_is_read_as_configured(raw: object, expire_format: str, expected: float) -> None:
    """With `expire_format` set, the value is read in that format whatever it looks like."""
    assert parse_expire(raw, now=1_000_000_000.0, expire_format=expire_format) == pytest.approx(expected)  # type: ignore[arg-type]


def test_iso_expire_without_offset_is_read_in_the_configured_time_zone() -> None:
    """`time_zone` decides what an ISO time without an offset means."""
    assert parse_expire("2030-03-17T17:46:40", now=0.0, time_zone=UTC) == pytest.approx(1_900_000_000.0)


@pytest.mark.parametrize(("raw", "expire_format"), [(1_900_000_000, "iso"), ("soon", "unix"), ("x", "ttl_s")])
def test_expire_of_the_wrong_kind_for_a_fixed_format_is_refused(raw: object, expire_format: str) -> None:
    """A number where ISO is configured (or text where a number is) raises ValueError."""
    with pytest.raises(ValueError):
        parse_expire(raw, now=0.0, expire_format=expire_format)  # type: ignore[arg-type]


@pytest.mark.parametrize("sim_format", ["unix", "unix_ms", "iso_utc", "iso_local", "ttl_s"])
async def test_voice_token_expiry_is_read_in_every_format_the_vendor_may_use(
        state: SimState, server: AppServer, sim_format: str) -> None:
    """Whichever way AntRing writes `expire`, `auto` reads the token's real expiry (an hour from now)."""
    state.expire_format = sim_format  # type: ignore[assignment]
    async with make_client(server) as client:
        token = await client.voice_token(SIP_USER, SIP_PASSWORD)
    assert token.expires_at == pytest.approx(state.tokens[token.value], abs=1.0)


@pytest.mark.parametrize("raw", ["next tuesday", True, [1], float("nan")])
def test_unreadable_expire_is_refused(raw: object) -> None:
    """An expire that is no time at all raises ValueError rather than guessing."""
    with pytest.raises(ValueError):
        parse_expire(raw, now=1_000_000_000.0)


def test_voice_token_repr_hides_the_value() -> None:
    """repr(VoiceToken) shows the expiry, never the token."""
    token = VoiceToken("tok-very-secret-value", 1_900_000_000.0)
    assert "tok-very-secret-value" not in repr(token) and "1900000000" in repr(token)


# -- click-to-call -------------------------------------------------------------------------


async def test_click_to_call_rings_an_online_device_once(state: SimState, server: AppServer) -> None:
    """An online device rings: 200, and the simulator logs exactly one click for that number."""
    async with make_client(server) as client:
        result = await client.click_to_call("+84912345678", SIP_USER, SIP_PASSWORD)
    assert result == {"success": True}
    assert [(c["number"], c["sip_user"]) for c in state.clicks] == [("+84912345678", SIP_USER)]


async def test_click_to_call_offline_device_is_not_retried(state: SimState, server: AppServer) -> None:
    """An offline device gives DeviceOffline with the vendor's message after exactly one request."""
    async with make_client(server) as client:
        with pytest.raises(DeviceOffline) as info:
            await client.click_to_call("0912345678", "dev102", "sip-pass-102")
    assert info.value.vendor_message == "DEVICE_OFFLINE" and "DEVICE_OFFLINE" in str(info.value)
    assert info.value.status_code == 409
    assert len(api_requests(state, "/oapi/v1/call/click-to-call/")) == 1 and state.clicks == []


async def test_click_to_call_is_not_retried_on_503(state: SimState, server: AppServer) -> None:
    """A 503 on click-to-call is reported, not retried: one request, no ring."""
    state.fail_next = 1
    async with make_client(server) as client:
        with pytest.raises(AntRingUnavailable):
            await client.click_to_call("0912345678", SIP_USER, SIP_PASSWORD)
    assert len(api_requests(state, "/oapi/v1/call/click-to-call/")) == 1 and state.clicks == []


@pytest.mark.parametrize("number", ["09-123", "0912 345", "12/../../histories", "", "abc"])
async def test_click_to_call_refuses_an_invalid_number_without_calling_out(
        state: SimState, server: AppServer, number: str) -> None:
    """A number that is not digits (with an optional +) raises InvalidNumber before any request."""
    async with make_client(server) as client:
        with pytest.raises(InvalidNumber):
            await client.click_to_call(number, SIP_USER, SIP_PASSWORD)
    assert state.requests == []


async def test_simulator_rejects_an_invalid_number(state: SimState, server: AppServer) -> None:
    """The simulated vendor answers 400 INVALID_NUMBER to a non-numeric number and rings nobody."""
    headers = {"x-auth-app-id": APP_ID, "x-auth-app-hash": app_hash(APP_ID, SECRET)}
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
        r = await http.post("/oapi/v1/call/click-to-call/09ab12", headers=headers,
                            json={"sipUser": SIP_USER, "sipPassword": SIP_PASSWORD})
    assert r.status_code == 400 and r.json() == {"success": False, "message": "INVALID_NUMBER"}
    assert state.clicks == []


async def test_click_to_call_with_a_bad_sip_password_is_refused(state: SimState, server: AppServer) -> None:
    """A wrong SIP password is a 400 and rings nothing."""
    async with make_client(server) as client:
        with pytest.raises(AntRingError) as info:
            await client.click_to_call("0912345678", SIP_USER, "nope")
    assert info.value.status == 400 and state.clicks == []


# -- histories ---------------------------------------------------------------------------------


def test_history_windows_are_at_most_30_days_and_1_ms_apart() -> None:
    """70 days become three inclusive windows of at most 30 days (a day inside the vendor's 31), 1 ms apart."""
    assert HISTORY_MAX_WINDOW == timedelta(days=30)
    windows = history_windows(T0, T0 + timedelta(days=70))
    assert len(windows) == 3
    assert windows[0] == (T0, T0 + HISTORY_MAX_WINDOW)
    for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
        assert start - end == timedelta(milliseconds=1)
    assert all(b - a <= HISTORY_MAX_WINDOW for a, b in windows) and windows[-1][1] == T0 + timedelta(days=70)
    assert history_windows(T0, T0) == [(T0, T0)] and history_windows(T0, T0 - timedelta(seconds=1)) == []


def test_times_are_formatted_like_the_vendor_example() -> None:
    """Times go out as UTC with milliseconds and a Z; naive times are refused."""
    hanoi = timezone(timedelta(hours=7))
    assert format_time(datetime(2018, 2, 7, 9, 19, 33, 123999, tzinfo=hanoi)) == "2018-02-07T02:19:33.123Z"
    assert format_time(datetime(2018, 2, 7, 9, 19, 33).replace(tzinfo=UTC)) == "2018-02-07T09:19:33.000Z"
    with pytest.raises(ValueError):
        format_time(datetime(2018, 2, 7))


async def test_histories_over_70_days_reads_every_window_and_page_once(state: SimState, server: AppServer) -> None:
    """70 days: 3 windows of <= 30 days, every page at limit=100, every record exactly once."""
    state.id_field = "call_id"  # to tell the records apart
    start, end = T0, T0 + timedelta(days=70)
    span = int((end - start).total_seconds())
    expected = set()
    for i in range(330):
        expected.add(state.add_call(at=start.timestamp() + i * span // 330)["call_id"])
    # On the window boundaries and the range ends, and just outside the range.
    for moment in (start, start + HISTORY_MAX_WINDOW, start + 2 * HISTORY_MAX_WINDOW, end):
        expected.add(state.add_call(at=moment.timestamp())["call_id"])
    state.add_call(at=start.timestamp() - 1)
    state.add_call(at=end.timestamp() + 1)

    async with make_client(server) as client:
        seen = [record["call_id"] async for record in client.histories(start, end)]

    assert len(seen) == len(expected) and set(seen) == expected
    requests = api_requests(state, "/oapi/v1/call/histories")
    assert {r["params"]["limit"] for r in requests} == {"100"}
    windows: dict[tuple[str, str], list[int]] = {}
    for r in requests:
        windows.setdefault((r["params"]["created_from"], r["params"]["created_to"]), []).append(int(r["params"]["page"]))
    assert len(windows) == 3
    for (since, until), pages in windows.items():
        assert pages == list(range(1, len(pages) + 1))
        span_w = datetime.fromisoformat(until) - datetime.fromisoformat(since)
        assert span_w <= HISTORY_MAX_WINDOW
    assert sum(len(p) for p in windows.values()) == len(requests) >= 5


@pytest.mark.parametrize("envelope", ["data", "list", "records", "histories", "result"])
async def test_histories_accepts_the_possible_envelopes(state: SimState, server: AppServer, envelope: str) -> None:
    """Records arrive whether the answer is a bare list or an object holding them under a known key."""
    state.history_envelope = envelope
    state.id_field = "call_id"  # to tell the records apart
    ids = {state.add_call(at=T0.timestamp() + i)["call_id"] for i in range(3)}
    async with make_client(server) as client:
        seen = {r["call_id"] async for r in client.histories(T0, T0 + timedelta(hours=1))}
    assert seen == ids


async def test_histories_unknown_envelope_is_an_error(state: SimState, server: AppServer) -> None:
    """An answer without a recognisable list of records raises rather than silently yielding nothing."""
    state.history_envelope = "weird"
    async with make_client(server) as client:
        with pytest.raises(AntRingError):
            async for _ in client.histories(T0, T0 + timedelta(hours=1)):
                pass


@pytest.mark.parametrize("status", [503, 500])
async def test_histories_retries_server_errors(state: SimState, server: AppServer, status: int) -> None:
    """Two 503s (or 500s) then a 200: the GET succeeds after retries, and the simulator saw 3 requests."""
    state.fail_status, state.fail_next = status, 2
    record = state.add_call(at=T0.timestamp() + 60)
    async with make_client(server) as client:
        seen = [r async for r in client.histories(T0, T0 + timedelta(hours=1))]
    assert seen == [record]
    assert len(api_requests(state, "/oapi/v1/call/histories")) == 3


async def test_persistent_503_is_unavailable_after_the_policys_attempts(state: SimState, server: AppServer) -> None:
    """503 forever: AntRingUnavailable after exactly `attempts` requests."""
    state.fail_next = 1_000
    async with make_client(server) as client:
        with pytest.raises(AntRingUnavailable) as info:
            async for _ in client.histories(T0, T0 + timedelta(hours=1)):
                pass
    assert info.value.status == 503 and info.value.vendor_message == "RATE_LIMITED"
    assert len(api_requests(state, "/oapi/v1/call/histories")) == FAST.attempts


async def test_unreachable_vendor_is_unavailable() -> None:
    """Nothing listening: AntRingUnavailable (converted from the httpx error) after the retries."""
    client = AntRingClient(f"http://127.0.0.1:{free_port()}", APP_ID, SECRET, timeout=WAIT, retry=FAST)
    async with client:
        with pytest.raises(AntRingUnavailable) as info:
            await client.play_recording("x.mp3")
    assert isinstance(info.value.__cause__, httpx.HTTPError) and SECRET not in str(info.value)


async def test_slow_vendor_times_out_as_unavailable(state: SimState, server: AppServer) -> None:
    """A vendor slower than the timeout is AntRingUnavailable, retried per the policy."""
    state.delay = 4 * TICK
    async with make_client(server, timeout=TICK, retry=RetryPolicy(attempts=2, base_delay=0.01)) as client:
        with pytest.raises(AntRingUnavailable):
            await client.voice_token(SIP_USER, SIP_PASSWORD)
    assert len(api_requests(state, "/oapi/v1/voice/auth_token")) == 2


async def test_success_false_in_a_200_is_an_error() -> None:
    """A 200 whose body says success: false is the error it names."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"success": False, "message": "HASH_NOT_MATCH"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with http, AntRingClient("http://antring.test", APP_ID, SECRET, timeout=WAIT, http=http) as client:
        with pytest.raises(AntRingAuthError):
            await client.play_recording("x.mp3")


# -- the simulator's own checks ------------------------------------------------------------


def signed_history_params(since: str, until: str, **extra: str) -> dict[str, str]:
    params = {"appId": APP_ID, "created_from": since, "created_to": until, **extra}
    params["hash"] = histories_hash(APP_ID, SECRET, since, until, extra.get("limit"), extra.get("page"))
    return params


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (signed_history_params(format_time(T0), format_time(T0 + timedelta(days=31, seconds=1))), "TIME_RANGE_EXCEEDED"),
        (signed_history_params(format_time(T0), format_time(T0 + timedelta(days=1)), limit="101"), "INVALID_LIMIT"),
        (signed_history_params("", format_time(T0)), "CREATED_FROM_MISSING"),
        ({"created_from": format_time(T0), "created_to": format_time(T0)}, "APPID_MISSING"),
        ({**signed_history_params(format_time(T0), format_time(T0)), "appId": "other"}, "APPID_NOT_FOUND"),
        ({**signed_history_params(format_time(T0), format_time(T0)), "hash": "0" * 64}, "HASH_NOT_MATCH"),
        ({**signed_history_params(format_time(T0), format_time(T0)), "limit": "5"}, "HASH_NOT_MATCH"),
    ],
)
async def test_simulator_history_checks(server: AppServer, params: dict[str, str], message: str) -> None:
    """The simulated /histories rejects what the vendor rejects, with the vendor's error shape."""
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
        r = await http.get("/oapi/v1/call/histories", params=params)
    assert r.status_code == 400 and r.json() == {"success": False, "message": message}


async def test_simulator_checks_the_hash_as_the_documents_worked_example_does(sim_server: tuple[AppServer, SwappableApp]) -> None:
    """The document's example request and digest pass; the other language version's order does not."""
    server, swappable = sim_server
    swappable.app = build_app(SimState(app_id="6544646543674", app_secret="123456"))
    example = {"appId": "6544646543674", "created_from": "2018-02-07T02:19:33.000Z",
               "created_to": "2018-02-07T07:04:22.000Z",
               "hash": "9b11b9ff77dbba70fe059acf84c02cfe6af90de9122e4d3bd6ec69c9d637f9ed"}
    other_order = "2018-02-07T02:19:33.000Z2018-02-07T07:04:22.000Z6544646543674123456"
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
        ok = await http.get("/oapi/v1/call/histories", params=example)
        wrong = await http.get("/oapi/v1/call/histories",
                               params={**example, "hash": hashlib.sha256(other_order.encode()).hexdigest()})
    assert ok.status_code == 200 and ok.json() == {"success": True, "data": []}
    assert wrong.json() == {"success": False, "message": "HASH_NOT_MATCH"}


async def test_simulator_history_records_carry_exactly_the_documented_fields(state: SimState, server: AppServer) -> None:
    """By default a record has the ten documented fields and no call id; the switch adds one."""
    state.add_call(at=T0.timestamp())
    state.id_field = "call_id"
    state.add_call(at=T0.timestamp() + 1, call_id="c-2")
    async with make_client(server) as client:
        records = [r async for r in client.histories(T0, T0 + timedelta(hours=1))]
    documented = {"caller", "callee", "class", "did_number", "direction", "status_detail", "duration_seconds",
                  "unix_timestamp", "billing_seconds", "recording"}
    assert [set(r) for r in records] == [documented | {"call_id"}, documented]
    assert records[0]["call_id"] == "c-2"


async def test_simulator_accepts_the_documents_31_day_maximum(server: AppServer) -> None:
    """Exactly 31 days is allowed (the client asks for at most 30); a second more is TIME_RANGE_EXCEEDED."""
    params = signed_history_params(format_time(T0), format_time(T0 + timedelta(days=31)))
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
        r = await http.get("/oapi/v1/call/histories", params=params)
    assert r.status_code == 200


async def test_simulator_history_defaults_to_20_per_page(state: SimState, server: AppServer) -> None:
    """Without limit and page the simulator serves the first 20 records, newest first."""
    for i in range(25):
        state.add_call(at=T0.timestamp() + i)
    params = signed_history_params(format_time(T0), format_time(T0 + timedelta(hours=1)))
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
        r = await http.get("/oapi/v1/call/histories", params=params)
    records = r.json()["data"]
    assert len(records) == 20 and records[0]["unix_timestamp"] == int(T0.timestamp()) + 24


async def test_simulator_wrong_method_is_method_not_support(server: AppServer) -> None:
    """GET on a POST endpoint answers METHOD_NOT_SUPPORT."""
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
        r = await http.get("/oapi/v1/voice/auth_token")
    assert r.status_code == 400 and r.json()["message"] == "METHOD_NOT_SUPPORT"


async def test_simulator_missing_app_header_is_appid_missing(server: AppServer) -> None:
    """auth_token without x-auth-app-id answers APPID_MISSING."""
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
        r = await http.post("/oapi/v1/voice/auth_token", json={"sipUser": SIP_USER, "sipPassword": SIP_PASSWORD})
    assert r.status_code == 400 and r.json() == {"success": False, "message": "APPID_MISSING"}


# -- recordings ----------------------------------------------------------------------------


async def test_play_recording_returns_a_url_the_simulator_serves(state: SimState, server: AppServer) -> None:
    """The signed URL serves audio; a tampered signature or an expired URL is 403."""
    media = state.add_call(at=T0.timestamp())["recording"]
    async with make_client(server) as client:
        url = await client.play_recording(media)
    async with httpx.AsyncClient(timeout=WAIT) as http:
        ok = await http.get(url)
        assert ok.status_code == 200 and ok.headers["content-type"] == "audio/mpeg" and ok.content[:3] == b"ID3"
        tampered = await http.get(url.replace("Signature=", "Signature=AA"))
        assert tampered.status_code == 403
        real_clock = state.clock
        state.clock = lambda: real_clock() + state.recording_url_ttl + 5
        assert (await http.get(url)).status_code == 403


async def test_play_recording_of_unknown_media_is_an_error(server: AppServer) -> None:
    """Unknown media is the vendor's 400, not a URL."""
    async with make_client(server) as client:
        with pytest.raises(AntRingError) as info:
            await client.play_recording("call_recording_nope.mp3")
    assert info.value.status == 400 and not isinstance(info.value, AntRingAuthError)


# -- token manager -------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_token_manager_refreshes_before_expiry(state: SimState, server: AppServer) -> None:
    """The cached token is reused until `refresh_margin` before expiry, then replaced."""
    clock = FakeClock()
    state.clock, state.token_ttl = clock, 600.0
    async with make_client(server) as client:
        tokens = TokenManager(client, SIP_USER, SIP_PASSWORD, refresh_margin=60.0, clock=clock)
        assert tokens.seconds_until_refresh() == 0.0 and tokens.expires_at is None
        first = await tokens.get()
        assert tokens.expires_at == pytest.approx(clock.now + 600)
        assert tokens.seconds_until_refresh() == pytest.approx(540)
        clock.now += 539
        assert await tokens.get() == first
        clock.now += 1
        second = await tokens.get()
    assert second != first and state.is_token_valid(second)
    assert len(api_requests(state, "/oapi/v1/voice/auth_token")) == 2
    assert first not in repr(tokens) and SIP_PASSWORD not in repr(tokens)


async def test_token_manager_shares_one_fetch_among_concurrent_callers(state: SimState, server: AppServer) -> None:
    """Ten concurrent get() calls make one auth_token request and all receive the same token."""
    state.delay = 2 * TICK
    async with make_client(server) as client:
        tokens = TokenManager(client, SIP_USER, SIP_PASSWORD, refresh_margin=60.0)
        values = await asyncio.gather(*(tokens.get() for _ in range(10)))
    assert len(set(values)) == 1
    assert len(api_requests(state, "/oapi/v1/voice/auth_token")) == 1


async def test_token_manager_callers_share_a_failed_fetch(state: SimState, server: AppServer) -> None:
    """When the shared fetch fails, every waiting caller gets that error and the vendor is asked once."""
    state.refuse_tokens, state.delay = True, 2 * TICK
    async with make_client(server) as client:
        tokens = TokenManager(client, SIP_USER, SIP_PASSWORD, refresh_margin=60.0)
        results = await asyncio.gather(*(tokens.get() for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, AntRingAuthError) for r in results)
        assert len(api_requests(state, "/oapi/v1/voice/auth_token")) == 1
        state.refuse_tokens = False
        assert state.is_token_valid(await tokens.get())


async def test_token_manager_refetches_after_invalidate(state: SimState, server: AppServer) -> None:
    """invalidate() forces a new token; invalidating a stale value keeps the fresh one."""
    async with make_client(server) as client:
        tokens = TokenManager(client, SIP_USER, SIP_PASSWORD, refresh_margin=60.0)
        first = await tokens.get()
        state.expire_tokens()
        tokens.invalidate()
        second = await tokens.get()
        tokens.invalidate(first)
        assert await tokens.get() == second
    assert second != first and state.is_token_valid(second)
    assert len(api_requests(state, "/oapi/v1/voice/auth_token")) == 2


async def test_token_manager_short_lived_token_is_not_refetched_every_call(state: SimState, server: AppServer) -> None:
    """A token living less than the margin is refreshed at half its life, not on every get()."""
    clock = FakeClock()
    state.clock, state.token_ttl = clock, 30.0
    async with make_client(server) as client:
        tokens = TokenManager(client, SIP_USER, SIP_PASSWORD, refresh_margin=60.0, clock=clock)
        first = await tokens.get()
        assert await tokens.get() == first
        clock.now += 15
        assert await tokens.get() != first
    assert len(api_requests(state, "/oapi/v1/voice/auth_token")) == 2


# -- config --------------------------------------------------------------------------------


def test_config_defaults_follow_the_document_and_refuse_unknown_time_zones() -> None:
    """No history id field, 30 s tolerance, `auto` expiry in Asia/Ho_Chi_Minh by default; a bad zone is refused."""
    required = {"app_id": "a", "app_secret": "s", "account_id": "acc", "sip_user": "u", "sip_password": "p"}
    config = AntRingConfig.model_validate(required)
    assert config.history_id_field is None and config.reconcile_tolerance == 30.0
    assert (config.expire_format, str(config.time_zone)) == ("auto", "Asia/Ho_Chi_Minh")
    assert str(AntRingConfig.model_validate({**required, "time_zone": "Europe/Paris"}).time_zone) == "Europe/Paris"
    with pytest.raises(ValueError, match="time_zone"):
        AntRingConfig.model_validate({**required, "time_zone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="expire_format"):
        AntRingConfig.model_validate({**required, "expire_format": "hex"})
