"""The AntRing open-API client: voice token, click-to-call, call history, recordings.

Errors (every one a `hub.exceptions.HubError`, carrying `status`, the vendor's `message` and the
request path, never a query string, secret, SIP password or token):

    AntRingError                 502 the vendor said no, or answered something unreadable
    ├── AntRingAuthError         502 APPID_MISSING / APPID_NOT_FOUND / HASH_NOT_MATCH, 401, 403
    ├── AntRingUnavailable       503 5xx, 429 or 503 (rate limit) after the retries; no connection
    ├── DeviceOffline            409 click-to-call: the agent's SIP device is not registered
    └── InvalidNumber            400 click-to-call: not a dialable number (checked before calling out)

Retries go through `hub.outbound.send_with_retry`. The history, recording and token requests
are retried on 5xx/429/503 and connection errors (they have no side effect beyond issuing a
token); click-to-call is sent exactly once, since a retry could ring the phone twice.

Vendor behaviour the docs leave open, and what this client assumes:
- `expire` in the `auth_token` answer has no documented format: see `parse_expire` (and
  `[antring] expire_format`, `time_zone`).
- The `/histories` answer's envelope is not documented: see `history_records`.
- Times are sent as `2018-02-07T02:19:33.000Z` (UTC, milliseconds), the format of the vendor's
  example; a window is inclusive at both ends, so consecutive windows are 1 ms apart.
- A 200 whose body says `{"success": false, ...}` is treated as the error it describes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx

from handlers.antring.config import ExpireFormat
from handlers.antring.signing import app_hash, histories_hash, recording_hash
from hub.plugin import (
    EXTENSION_MIN_DIGITS,
    NO_RETRY,
    BadRequest,
    InvalidPhoneNumber,
    RetryPolicy,
    Unavailable,
    VendorClient,
    VendorError,
    json_or_none,
    parse_extension,
    parse_phone,
    send_with_retry,
    vendor_text,
)

__all__ = [
    "AntRingClient",
    "AntRingError",
    "AntRingAuthError",
    "AntRingUnavailable",
    "DeviceOffline",
    "InvalidNumber",
    "VoiceToken",
    "TokenManager",
    "HISTORY_MAX_WINDOW",
    "HISTORY_MAX_LIMIT",
    "DEFAULT_TIME_ZONE",
    "dial_number",
    "format_time",
    "history_windows",
    "parse_expire",
    "history_records",
]

logger = logging.getLogger("callhub.antring")

AUTH_TOKEN_PATH = "/oapi/v1/voice/auth_token"
CLICK_TO_CALL_PATH = "/oapi/v1/call/click-to-call/"
#: How errors and logs name the click-to-call path (the dialled number is kept out of both).
CLICK_TO_CALL_ROUTE = CLICK_TO_CALL_PATH + ":number"
HISTORIES_PATH = "/oapi/v1/call/histories"
PLAY_RECORDING_PATH = "/oapi/v1/call/play_recording"

#: The longest `created_from`..`created_to` span asked of `/histories`. The vendor's maximum is
#: 31 days; a day less stays clear of however it counts the edge (inclusive ends, its time zone).
HISTORY_MAX_WINDOW = timedelta(days=30)
#: The largest page `/histories` serves (vendor: default 20, maximum 100).
HISTORY_MAX_LIMIT = 100
#: Stop paging one window after this many pages: a vendor that ignored `page` would loop forever.
HISTORY_MAX_PAGES = 1000
#: Assumed lifetime of a token whose answer carries no `expire` (KAZOO's default token lifetime).
FALLBACK_TOKEN_TTL = 3600.0
#: The account's clock when AntRing writes a local time without an offset.
DEFAULT_TIME_ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
#: Retries for everything but click-to-call: hub.outbound's defaults.
DEFAULT_RETRY = RetryPolicy()
#: Vendor messages that mean our app credentials or signature are wrong.
AUTH_MESSAGES = frozenset({"APPID_MISSING", "APPID_NOT_FOUND", "HASH_NOT_MATCH"})

_NUMBER = re.compile(r"^\+?[0-9]{1,32}$")
_ENVELOPE_KEYS = ("data", "records", "histories", "result", "results", "items", "docs")


class AntRingError(VendorError):
    """AntRing refused a request or answered something this client cannot read."""

    code = "antring_error"
    vendor = "antring"


class AntRingAuthError(AntRingError):
    """The app id is missing or unknown, or the signature does not match (a config problem)."""

    code = "antring_auth_error"


class AntRingUnavailable(AntRingError, Unavailable):
    """AntRing is down, overloaded or rate limiting us, and stayed so through the retries."""

    status_code = 503
    code = "antring_unavailable"


class DeviceOffline(AntRingError):
    """Click-to-call refused: the SIP device is not registered with AntRing."""

    status_code = 409
    code = "device_offline"


class InvalidNumber(AntRingError, BadRequest):
    """Click-to-call: the number is not digits with an optional leading `+`."""

    status_code = 400
    code = "invalid_number"


@dataclass(frozen=True, slots=True)
class VoiceToken:
    """The `auth_token` for the call-signal socket, and when it expires (unix seconds)."""

    value: str = field(repr=False)
    expires_at: float

    def __repr__(self) -> str:
        return f"VoiceToken(value=<hidden>, expires_at={self.expires_at!r})"


def parse_expire(raw: object, *, now: float, expire_format: ExpireFormat = "auto",
                 time_zone: tzinfo = DEFAULT_TIME_ZONE) -> float:
    """Unix seconds from the `expire` of an `auth_token` answer, whose format AntRing does not document.

    `expire_format` fixes the format: `unix` (seconds), `unix_ms`, `ttl_s` (seconds from `now`),
    `iso` (ISO-8601). `auto` (the default) reads a number, or numeric string, above 1e12 as unix
    milliseconds, from 1e9 as unix seconds, below 1e9 as a lifetime in seconds (KAZOO answers
    lifetimes such as 3600), and any other string as ISO-8601. An ISO time without an offset is
    the account's local time, `time_zone` (AntBuddy is a Vietnamese service: Asia/Ho_Chi_Minh),
    not UTC. A missing, null or blank `expire` assumes `FALLBACK_TOKEN_TTL`; refreshing early is
    harmless, and a token the socket rejects is invalidated and refetched anyway. Raises
    `ValueError` on anything else, and on a value of the wrong kind for a fixed format.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return now + FALLBACK_TOKEN_TTL
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"expire has type {type(raw).__name__}")
    if expire_format == "iso" or (expire_format == "auto" and isinstance(raw, str) and not _numeric(raw)):
        if not isinstance(raw, str):
            raise ValueError("expire is not an ISO-8601 time")
        parsed = datetime.fromisoformat(raw.strip())  # ValueError on garbage
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=time_zone)
        return parsed.timestamp()
    number = float(raw)  # ValueError on garbage
    if not math.isfinite(number):
        raise ValueError("expire is not finite")
    if expire_format == "unix_ms" or (expire_format == "auto" and number > 1e12):
        return number / 1000.0
    if expire_format == "unix" or (expire_format == "auto" and number >= 1e9):
        return number
    return now + max(0.0, number)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def dial_number(value: object, *, max_extension_digits: int) -> str:
    """The `:number` click-to-call sends for a destination: an internal extension
    (`EXTENSION_MIN_DIGITS` to `max_extension_digits` digits) as it is, as the vendor's own
    `:number` takes one; any phone number in national format. `InvalidPhoneNumber` (422) otherwise.
    """
    extension = parse_extension(value, max_digits=max_extension_digits)
    if extension is not None:
        return extension
    try:
        return parse_phone(value).national
    except InvalidPhoneNumber:
        raise InvalidPhoneNumber(
            f"{value!r} is neither a phone number (+84912345678, 0912345678) nor an extension "
            f"({EXTENSION_MIN_DIGITS} to {max_extension_digits} digits)", field="number") from None


def format_time(moment: datetime) -> str:
    """`2018-02-07T02:19:33.000Z`: the vendor's example format (UTC, milliseconds). Naive times are refused."""
    if moment.tzinfo is None:
        raise ValueError("history times must be timezone-aware")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def history_windows(created_from: datetime, created_to: datetime) -> list[tuple[datetime, datetime]]:
    """`[from, to]` cut into inclusive windows of at most `HISTORY_MAX_WINDOW`, 1 ms apart.

    Times are truncated to milliseconds first, the precision the vendor is sent.
    """
    start, end = _to_ms(created_from), _to_ms(created_to)
    windows: list[tuple[datetime, datetime]] = []
    while start <= end:
        stop = min(start + HISTORY_MAX_WINDOW, end)
        windows.append((start, stop))
        start = stop + timedelta(milliseconds=1)
    return windows


def _to_ms(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("history times must be timezone-aware")
    return moment.astimezone(UTC).replace(microsecond=moment.microsecond // 1000 * 1000)


def history_records(body: object) -> list[dict[str, Any]]:
    """The call records of one `/histories` page, whose envelope AntRing does not document.

    Accepted: a bare list; or an object holding the list under `data`, `records`, `histories`,
    `result`, `results`, `items` or `docs`, directly or one level down (`{"data": {"docs": [...]}}`).
    Anything else raises `ValueError`: returning nothing would silently skip calls.
    """
    if isinstance(body, list):
        return [r for r in body if isinstance(r, dict)]
    if isinstance(body, dict):
        for key in _ENVELOPE_KEYS:
            value = body.get(key)
            if isinstance(value, list):
                return [r for r in value if isinstance(r, dict)]
        for key in _ENVELOPE_KEYS:
            value = body.get(key)
            if isinstance(value, dict):
                for inner in _ENVELOPE_KEYS:
                    nested = value.get(inner)
                    if isinstance(nested, list):
                        return [r for r in nested if isinstance(r, dict)]
    raise ValueError("no list of call records in the answer")


class AntRingClient(VendorClient):
    """One AntRing app (`appId`/`appSecret`) over HTTP. Close it, or use it as an async context manager.

    `http` lets the owner share a client (it is then not closed here); `timeout` bounds every
    request; `retry` applies to everything but click-to-call.
    """

    vendor = "antring"

    def __init__(self, base_url: str, app_id: str, app_secret: str, *, timeout: float,
                 retry: RetryPolicy = DEFAULT_RETRY, http: httpx.AsyncClient | None = None,
                 expire_format: ExpireFormat = "auto", time_zone: tzinfo = DEFAULT_TIME_ZONE) -> None:
        super().__init__(base_url, timeout=timeout, retry=retry, http=http)
        self.app_id = app_id
        self._app_secret = app_secret
        self.expire_format: ExpireFormat = expire_format
        self.time_zone = time_zone

    def __repr__(self) -> str:
        return f"AntRingClient(base_url={self.base_url!r}, app_id={self.app_id!r})"


    # -- endpoints ----------------------------------------------------------------------------

    async def voice_token(self, sip_user: str, sip_password: str) -> VoiceToken:
        """A fresh `auth_token` for the call-signal socket, obtained with a SIP device's credentials."""
        body = await self._call("POST", AUTH_TOKEN_PATH, self.retry, headers=self._app_headers(),
                                json={"sipUser": sip_user, "sipPassword": sip_password})
        if not isinstance(body, dict) or not isinstance(body.get("value"), str) or not body["value"]:
            raise AntRingError("auth_token answer has no token value", path=AUTH_TOKEN_PATH)
        try:
            expires_at = parse_expire(body.get("expire"), now=time.time(), expire_format=self.expire_format,
                                      time_zone=self.time_zone)
        except ValueError as exc:
            raise AntRingError(f"auth_token answer has an unreadable expire: {exc}", path=AUTH_TOKEN_PATH) from exc
        return VoiceToken(body["value"], expires_at)

    async def click_to_call(self, number: str, sip_user: str, sip_password: str) -> dict[str, Any]:
        """Ring `sip_user`'s device, which then calls `number`. Sent once, never retried.

        Raises `InvalidNumber` before sending anything if `number` is not `+`/digits (it goes
        into the URL path), `DeviceOffline` on the vendor's 400 (device not registered).
        """
        if not _NUMBER.match(number):
            raise InvalidNumber("number must be digits, optionally with a leading +", path=CLICK_TO_CALL_ROUTE)
        path = CLICK_TO_CALL_PATH + quote(number, safe="+")
        body = await self._call("POST", path, NO_RETRY, headers=self._app_headers(),
                                json={"sipUser": sip_user, "sipPassword": sip_password}, route=CLICK_TO_CALL_ROUTE)
        return body if isinstance(body, dict) else {}

    async def histories(self, created_from: datetime, created_to: datetime, *,
                        limit: int = HISTORY_MAX_LIMIT) -> AsyncIterator[dict[str, Any]]:
        """Every call record created in `[created_from, created_to]`, window by window, page by page.

        The range is cut into windows of at most `HISTORY_MAX_WINDOW`; each window is read from
        page 1 until a page holds fewer than `limit` records. Records are yielded as the vendor
        sends them.
        """
        if not 1 <= limit <= HISTORY_MAX_LIMIT:
            raise ValueError(f"limit must be 1..{HISTORY_MAX_LIMIT}")
        for start, stop in history_windows(created_from, created_to):
            since, until = format_time(start), format_time(stop)
            previous: list[dict[str, Any]] | None = None
            for page in range(1, HISTORY_MAX_PAGES + 1):
                params = {
                    "appId": self.app_id,
                    "created_from": since,
                    "created_to": until,
                    "limit": str(limit),
                    "page": str(page),
                    "hash": histories_hash(self.app_id, self._app_secret, since, until, limit, page),
                }
                body = await self._call("GET", HISTORIES_PATH, self.retry, params=params)
                try:
                    records = history_records(body)
                except ValueError as exc:
                    raise AntRingError(f"unreadable history page: {exc}", path=HISTORIES_PATH) from exc
                if records and records == previous:
                    raise AntRingError("history paging returned the same page twice", path=HISTORIES_PATH)
                for record in records:
                    yield record
                if len(records) < limit:
                    break
                previous = records
            else:
                raise AntRingError(f"history window has more than {HISTORY_MAX_PAGES} pages", path=HISTORIES_PATH)

    async def play_recording(self, media: str) -> str:
        """A short-lived signed URL for the recording `media` (as named in a call record)."""
        params = {"appId": self.app_id, "media": media, "hash": recording_hash(self.app_id, media, self._app_secret)}
        body = await self._call("GET", PLAY_RECORDING_PATH, self.retry, params=params)
        url = body.get("media") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url:
            raise AntRingError("play_recording answer has no media URL", path=PLAY_RECORDING_PATH)
        return url

    # -- plumbing -----------------------------------------------------------------------------

    def _app_headers(self) -> dict[str, str]:
        return {"x-auth-app-id": self.app_id, "x-auth-app-hash": app_hash(self.app_id, self._app_secret)}

    async def _call(self, method: str, path: str, policy: RetryPolicy, *, headers: dict[str, str] | None = None,
                    params: dict[str, str] | None = None, json: dict[str, Any] | None = None,
                    route: str | None = None) -> Any:
        url = self.base_url + path
        click = route == CLICK_TO_CALL_ROUTE
        path = route or path

        def build() -> httpx.Request:
            return self._http.build_request(method, url, headers=headers, params=params, json=json,
                                            timeout=self.timeout)

        try:
            response = await send_with_retry(self._http, build, policy)
        except httpx.HTTPError as exc:
            detail = type(exc).__name__
            if click:
                detail += "; the phone may or may not have rung"
            raise AntRingUnavailable(f"AntRing unreachable ({detail})", path=path) from exc
        logger.debug("AntRing %s %s -> %s", method, path, response.status_code)
        body = json_or_none(response)
        message = _vendor_message(body)
        status = response.status_code
        if 200 <= status < 300 and not (isinstance(body, dict) and body.get("success") is False):
            return body if body is not None else {}
        if status in policy.statuses or status >= 500:
            raise AntRingUnavailable(f"AntRing answered {status}" + (f": {message}" if message else ""),
                                     status=status, vendor_message=message, path=path)
        if message in AUTH_MESSAGES or status in (401, 403):
            raise AntRingAuthError(f"AntRing rejected the app credentials: {message or status}",
                                   status=status, vendor_message=message, path=path)
        if click and status == 400:
            raise DeviceOffline(f"the SIP device is offline: {message or 'not registered'}",
                                status=status, vendor_message=message, path=path)
        raise AntRingError(f"AntRing answered {status}" + (f": {message}" if message else ""),
                           status=status, vendor_message=message, path=path)


def _vendor_message(body: Any) -> str | None:
    if isinstance(body, dict):
        return vendor_text(body.get("message"))
    return None


class TokenManager:
    """The voice token, cached and refreshed `refresh_margin` seconds before it expires.

    Concurrent `get()` calls share one fetch. A token whose whole lifetime is shorter than twice
    the margin is refreshed at half its lifetime instead, so a short-lived token is not refetched
    on every call. `invalidate()` (the socket said the token is bad) forces the next fetch.
    """

    def __init__(self, client: AntRingClient, sip_user: str, sip_password: str, *, refresh_margin: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._sip_user = sip_user
        self._sip_password = sip_password
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._token: VoiceToken | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        #: Completed fetches, and how the last one failed (shared with callers that waited on it).
        self._attempts = 0
        self._last_error: AntRingError | None = None

    def __repr__(self) -> str:
        return f"TokenManager(sip_user={self._sip_user!r}, expires_at={self.expires_at!r})"

    @property
    def expires_at(self) -> float | None:
        return self._token.expires_at if self._token is not None else None

    def seconds_until_refresh(self) -> float:
        """How long the cached token is still used as is (0 when there is none, or it is due)."""
        if self._token is None:
            return 0.0
        return max(0.0, self._refresh_at - self._clock())

    def _fresh(self) -> VoiceToken | None:
        token = self._token
        if token is not None and self._clock() < self._refresh_at:
            return token
        return None

    async def get(self) -> str:
        """The current token, fetching a new one first if there is none or it is due for refresh.

        Callers that queued behind a fetch share its outcome: its token, or its error (a failing
        vendor is asked once, not once per waiting caller).
        """
        token = self._fresh()
        if token is not None:
            return token.value
        attempts_seen = self._attempts
        async with self._lock:
            token = self._fresh()
            if token is not None:
                return token.value
            if self._attempts != attempts_seen and self._last_error is not None:
                raise self._last_error
            fetched_at = self._clock()
            try:
                token = await self._client.voice_token(self._sip_user, self._sip_password)
            except AntRingError as exc:
                self._attempts += 1
                self._last_error = exc
                raise
            self._attempts += 1
            self._last_error = None
            lifetime = max(0.0, token.expires_at - fetched_at)
            self._refresh_at = token.expires_at - min(self.refresh_margin, lifetime / 2)
            self._token = token
            return token.value

    def invalidate(self, value: str | None = None) -> None:
        """Drop the cached token. With `value`, only if that is still the cached one (a late report
        about an old token must not throw away a fresh one)."""
        if value is None or (self._token is not None and self._token.value == value):
            self._token = None
            self._refresh_at = 0.0
