"""A faithful AntRing open API on loopback, for the tests and the demo.

The four documented endpoints make exactly the checks the vendor documents, in this order:
method (`METHOD_NOT_SUPPORT`), app id present (`APPID_MISSING`) and known (`APPID_NOT_FOUND`),
hash (`HASH_NOT_MATCH`), then the endpoint's own input rules. Every error answers
`{"success": false, "message": ...}`.

What the vendor leaves undocumented, and what this simulator does (each an assumption):
- HTTP status of the four documented errors: 400, the status the docs give for bad input.
- Messages for other bad input are ours: `SIP_AUTH_FAILED`, `DEVICE_OFFLINE`,
  `INVALID_NUMBER`, `CREATED_FROM_MISSING`, `CREATED_TO_MISSING`, `INVALID_DATE`,
  `TIME_RANGE_EXCEEDED`, `INVALID_LIMIT`, `INVALID_PAGE`, `MEDIA_MISSING`, `MEDIA_NOT_FOUND`,
  `TOKEN_REFUSED`, `RATE_LIMITED`, `INTERNAL_ERROR`.
- `auth_token` checks the SIP credentials but not that the device is online; `expire` is unix
  seconds (`SimState.expire_format` switches to unix ms, ISO-8601 in UTC or without an offset
  in local time, or a lifetime in seconds: the document gives no format).
- `/histories` answers `{"success": true, "data": [...]}` (`SimState.history_envelope` switches
  to a bare list or another key), newest first; `created_from`/`created_to` are ISO-8601 and
  inclusive. A record has exactly the documented fields and no call id, as the document shows;
  `SimState.id_field` adds one, for accounts whose records do carry it.
- `play_recording` answers `{"media": <URL>}`; the URL is served by this app, signed like S3's
  query-string auth (base64 HMAC-SHA1, `Expires`), valid `recording_url_ttl` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.simulation import misbehave

__all__ = ["Device", "SimState", "build_app"]

#: The longest history window and the largest page the vendor serves.
MAX_WINDOW_SECONDS = 31 * 86400
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
_NUMBER = re.compile(r"^\+?[0-9]+$")
#: The parameters each endpoint's `hash` covers, in the document's order ("Lưu ý thứ tự của các
#: tham số của từng API": mind each API's parameter order); the app secret comes last.
HISTORIES_HASHED = ("appId", "created_from", "created_to", "limit", "page")
RECORDING_HASHED = ("appId", "media")
ExpireFormat = Literal["unix", "unix_ms", "iso_utc", "iso_local", "ttl_s"]
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
#: A few bytes that start like an MP3 file (an ID3 tag, then an MPEG audio frame header).
FAKE_MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(413)


@dataclass
class Device:
    """A SIP device (`sipUser` is its key in `SimState.devices`); `online` = registered."""

    password: str
    online: bool = True
    username: str | None = None


@dataclass
class SimState:
    """Everything the simulated AntRing knows, and the knobs that make it misbehave.

    Mutate it freely from tests (the server reads it per request).
    """

    app_id: str = "sim-app-id"
    app_secret: str = "sim-app-secret"
    devices: dict[str, Device] = field(default_factory=dict)
    #: Lifetime of an issued voice token, seconds.
    token_ttl: float = 3600.0
    #: Issued voice tokens: value -> expiry (unix seconds).
    tokens: dict[str, float] = field(default_factory=dict)
    #: Call records in the vendor's shape (see `add_call`).
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Recording file names `play_recording` knows.
    recordings: set[str] = field(default_factory=set)
    #: Every click-to-call that rang a device: {number, sip_user, at}.
    clicks: list[dict[str, Any]] = field(default_factory=list)
    #: Every request to the API (not to the recording files): {method, path, params}.
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: The docs show no id field in a history record: None (the default) adds none; a name adds
    #: the call's id under it (`add_history`), as some accounts' records may.
    id_field: str | None = None
    #: How `auth_token` writes `expire` (undocumented): unix seconds, unix ms, ISO-8601 in UTC,
    #: ISO-8601 without an offset in `time_zone`, or the lifetime in seconds.
    expire_format: ExpireFormat = "unix"
    time_zone: str = "Asia/Ho_Chi_Minh"
    #: Where `/histories` puts its records: a key of the answer object, or "list" for a bare list.
    history_envelope: str = "data"
    #: How long a signed recording URL stays valid, seconds.
    recording_url_ttl: float = 300.0
    # -- misbehaviour --
    #: Answer the next N API requests with `fail_status` and `Retry-After: 0`.
    fail_next: int = 0
    fail_status: int = 503
    #: ...once this many more requests have been served normally.
    fail_skip: int = 0
    #: Seconds to wait before answering each API request.
    delay: float = 0.0
    #: `auth_token` answers `refuse_status` with `TOKEN_REFUSED`.
    refuse_tokens: bool = False
    refuse_status: int = 401
    clock: Callable[[], float] = field(default=time.time)

    def is_token_valid(self, value: str) -> bool:
        """Whether `value` is a voice token this AntRing issued and that has not expired."""
        expires_at = self.tokens.get(value)
        return expires_at is not None and self.clock() < expires_at

    def expire_tokens(self) -> None:
        """Every token issued so far expires now."""
        now = self.clock()
        for value in list(self.tokens):
            self.tokens[value] = min(self.tokens[value], now)

    def issue_token(self) -> tuple[str, float]:
        value = secrets.token_urlsafe(32)
        expires_at = self.clock() + self.token_ttl
        self.tokens[value] = expires_at
        return value, expires_at

    def add_call(
        self,
        *,
        direction: str = "inbound",
        number: str = "0912345678",
        agent: str = "alice",
        extension: str = "101",
        status: str = "SUCCESS",
        duration: int = 50,
        billing: int | None = None,
        at: float | None = None,
        did_number: str = "02873019555",
        recording: bool | str = True,
        call_id: str | None = None,
    ) -> dict[str, Any]:
        """Append a realistic call record and return it.

        `direction` is `inbound` (customer `number` calls the company's `did_number`, `agent`
        answers), `outbound` (`agent` calls `number`) or `internal` (`agent` calls extension
        `number`). `billing` defaults to 80 % of `duration` for SUCCESS and 0 otherwise; a
        recording exists only for SUCCESS (`recording` may name it).
        """
        if direction not in ("inbound", "outbound", "internal"):
            raise ValueError("direction is inbound, outbound or internal")
        user = {"number": extension, "type": "user", "username": agent}
        if direction == "internal":
            other: dict[str, Any] = {"number": number, "type": "user", "username": f"user{number}"}
        else:
            other = {"number": number, "type": "realnumber"}
        answered = status == "SUCCESS"
        media = ""
        if answered and recording:
            media = recording if isinstance(recording, str) else f"call_recording_{_random_id()}.mp3"
            self.recordings.add(media)
        record: dict[str, Any] = {
            "caller": other if direction == "inbound" else user,
            "callee": user if direction == "inbound" else other,
            "class": "one_one" if direction == "internal" else "trunking",
            "did_number": did_number if direction == "inbound" else None,
            "direction": "to_ab" if direction == "inbound" else "from_ab",
            "status_detail": status,
            "duration_seconds": duration,
            "billing_seconds": (billing if billing is not None else int(duration * 0.8)) if answered else 0,
            "unix_timestamp": int(self.clock() if at is None else at),
            "recording": media,
        }
        return self.add_history(record, call_id=call_id or _random_id())

    def add_history(self, record: dict[str, Any], *, call_id: str) -> dict[str, Any]:
        """Append a history record (the documented fields); with `id_field` set, `call_id` under that name."""
        stored = {self.id_field: call_id, **record} if self.id_field else dict(record)
        self.history.append(stored)
        return stored

    def expire_value(self, expires_at: float) -> int | str:
        """`expire` of an `auth_token` answer, written as `expire_format` says."""
        if self.expire_format == "unix_ms":
            return int(expires_at * 1000)
        if self.expire_format == "iso_utc":
            return datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if self.expire_format == "iso_local":
            local = datetime.fromtimestamp(expires_at, ZoneInfo(self.time_zone))
            return local.replace(tzinfo=None).isoformat(timespec="seconds")
        if self.expire_format == "ttl_s":
            return int(expires_at - self.clock())
        return int(expires_at)

    def sign_recording(self, media: str, expires: int) -> str:
        mac = hmac.new(self.app_secret.encode(), f"GET\n{media}\n{expires}".encode(), hashlib.sha1)
        return base64.b64encode(mac.digest()).decode()


def _document_hash(values: list[str], app_secret: str) -> str:
    """sha256 (hex, UTF-8) of the values joined with nothing between them, then the app secret:
    the document's `checksum` sample (`crypto.createHash('sha256').update(str, 'utf8')`)."""
    return hashlib.sha256(("".join(values) + app_secret).encode("utf-8")).hexdigest()


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def _random_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(20))


def _error(message: str, status: int = 400, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code=status, headers=headers)


def _parse_time(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


Handler = Callable[[Request, SimState], Awaitable[Response]]


def build_app(state: SimState) -> Starlette:
    """The simulated AntRing open API (and the recording files it links to) over `state`."""

    def api(handler: Handler, method: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            state.requests.append({"method": request.method, "path": request.url.path,
                                   "params": dict(request.query_params)})
            if await misbehave(state):
                message = "RATE_LIMITED" if state.fail_status == 503 else "INTERNAL_ERROR"
                return _error(message, state.fail_status, {"Retry-After": "0"})
            if request.method != method:
                return _error("METHOD_NOT_SUPPORT")
            return await handler(request, state)

        return endpoint

    routes = [
        Route("/oapi/v1/voice/auth_token", api(_auth_token, "POST"), methods=_ALL_METHODS),
        Route("/oapi/v1/call/click-to-call/{number:path}", api(_click_to_call, "POST"), methods=_ALL_METHODS),
        Route("/oapi/v1/call/histories", api(_histories, "GET"), methods=_ALL_METHODS),
        Route("/oapi/v1/call/play_recording", api(_play_recording, "GET"), methods=_ALL_METHODS),
        Route("/recordings/{media:path}", _recording_file(state), methods=["GET"]),
    ]
    return Starlette(routes=routes)


def _check_app_headers(request: Request, state: SimState) -> Response | None:
    app_id = request.headers.get("x-auth-app-id")
    if not app_id:
        return _error("APPID_MISSING")
    if not _same(app_id, state.app_id):
        return _error("APPID_NOT_FOUND")
    given = request.headers.get("x-auth-app-hash", "")
    if not _same(_document_hash([state.app_id], state.app_secret), given):
        return _error("HASH_NOT_MATCH")
    return None


def _check_app_param(request: Request, state: SimState, hashed: tuple[str, ...]) -> Response | None:
    """appId present and known, and `hash` over the `hashed` parameters the request carries, in order."""
    q = request.query_params
    app_id = q.get("appId")
    if not app_id:
        return _error("APPID_MISSING")
    if not _same(app_id, state.app_id):
        return _error("APPID_NOT_FOUND")
    if not _same(_document_hash([q[name] for name in hashed if name in q], state.app_secret), q.get("hash", "")):
        return _error("HASH_NOT_MATCH")
    return None


async def _sip_credentials(request: Request, state: SimState) -> tuple[str, Device] | Response:
    try:
        body = await request.json()
    except ValueError:
        return _error("INVALID_BODY")
    if not isinstance(body, dict):
        return _error("INVALID_BODY")
    sip_user, sip_password = body.get("sipUser"), body.get("sipPassword")
    if not isinstance(sip_user, str) or not isinstance(sip_password, str) or not sip_user:
        return _error("SIP_AUTH_FAILED")
    device = state.devices.get(sip_user)
    if device is None or not hmac.compare_digest(device.password.encode(), sip_password.encode()):
        return _error("SIP_AUTH_FAILED")
    return sip_user, device


async def _auth_token(request: Request, state: SimState) -> Response:
    refused = _check_app_headers(request, state)
    if refused is not None:
        return refused
    if state.refuse_tokens:
        return _error("TOKEN_REFUSED", state.refuse_status)
    credentials = await _sip_credentials(request, state)
    if isinstance(credentials, Response):
        return credentials
    value, expires_at = state.issue_token()
    return JSONResponse({"value": value, "expire": state.expire_value(expires_at)})


async def _click_to_call(request: Request, state: SimState) -> Response:
    refused = _check_app_headers(request, state)
    if refused is not None:
        return refused
    number = request.path_params["number"]
    if not _NUMBER.match(number):
        return _error("INVALID_NUMBER")
    credentials = await _sip_credentials(request, state)
    if isinstance(credentials, Response):
        return credentials
    sip_user, device = credentials
    if not device.online:
        return _error("DEVICE_OFFLINE")
    state.clicks.append({"number": number, "sip_user": sip_user, "at": state.clock()})
    return JSONResponse({"success": True})


async def _histories(request: Request, state: SimState) -> Response:
    q = request.query_params
    refused = _check_app_param(request, state, HISTORIES_HASHED)
    if refused is not None:
        return refused
    if not q.get("created_from"):
        return _error("CREATED_FROM_MISSING")
    if not q.get("created_to"):
        return _error("CREATED_TO_MISSING")
    since, until = _parse_time(q["created_from"]), _parse_time(q["created_to"])
    if since is None or until is None or since > until:
        return _error("INVALID_DATE")
    if until - since > MAX_WINDOW_SECONDS:
        return _error("TIME_RANGE_EXCEEDED")
    try:
        limit = int(q.get("limit", DEFAULT_LIMIT))
    except ValueError:
        return _error("INVALID_LIMIT")
    if not 1 <= limit <= MAX_LIMIT:
        return _error("INVALID_LIMIT")
    try:
        page = int(q.get("page", 1))
    except ValueError:
        return _error("INVALID_PAGE")
    if page < 1:
        return _error("INVALID_PAGE")
    matching = [r for r in state.history if since <= r["unix_timestamp"] <= until]
    matching.sort(key=lambda r: r["unix_timestamp"], reverse=True)
    records = matching[(page - 1) * limit : page * limit]
    if state.history_envelope == "list":
        return JSONResponse(records)
    return JSONResponse({"success": True, state.history_envelope: records})


async def _play_recording(request: Request, state: SimState) -> Response:
    media = request.query_params.get("media", "")
    refused = _check_app_param(request, state, RECORDING_HASHED)
    if refused is not None:
        return refused
    if not media:
        return _error("MEDIA_MISSING")
    if media not in state.recordings:
        return _error("MEDIA_NOT_FOUND")
    expires = int(state.clock() + state.recording_url_ttl)
    query = urlencode({"Expires": expires, "Signature": state.sign_recording(media, expires)})
    return JSONResponse({"media": f"{str(request.base_url).rstrip('/')}/recordings/{quote(media)}?{query}"})


def _recording_file(state: SimState) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        media = request.path_params["media"]
        try:
            expires = int(request.query_params.get("Expires", ""))
        except ValueError:
            return Response("Forbidden", status_code=403)
        expected = state.sign_recording(media, expires)
        if not _same(expected, request.query_params.get("Signature", "")) or state.clock() > expires:
            return Response("Forbidden", status_code=403)
        if media not in state.recordings:
            return Response("Not Found", status_code=404)
        return Response(FAKE_MP3, media_type="audio/mpeg")

    return serve
