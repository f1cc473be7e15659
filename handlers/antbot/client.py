"""The AntBot (Alice) REST client: a bearer token from `/get-token/`, paged lists, and the few
writes the actions need.

Auth: `POST /get-token/ {"username", "password"}` answers a token (Django REST framework's
SimpleJWT answers `{"refresh", "access"}`; the field is configurable, `[antbot] token_fields`).
The token is cached and fetched again only when a request is refused with 401, once per request.
Neither the password nor the token is ever logged, put in an error, a repr or a URL.

Lists page the DRF way, `{"count", "next", "previous", "results"}`: `next` is followed only while
it stays on the configured host, always with the configured scheme and port (a bare list is read
as one page).

Errors (every one a `hub.exceptions.HubError`, with the HTTP `status`, the vendor's message and
the request `path`, never a secret):

    AntBotError                  502 an answer this client cannot read
    ├── AntBotRejected           502 a 4xx: AntBot refused the request (its message says why)
    │   └── AntBotAuthError      502 401/403 even with a fresh token, or the token request refused
    └── AntBotUnavailable        503 5xx or 429 after the retries, no connection, no answer in time
                                     (`maybe_sent`: False only if the request never left)

Retries: reads (GET) and status changes (setting a status twice sets it once) go through
`send_with_retry` with `retry`; creations (contacts, events, alarms) are sent once
(`send_unsent_retry`: only a connection that failed to open is tried again).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from hub.plugin import (
    NO_RETRY,
    RetryPolicy,
    Unavailable,
    VendorClient,
    VendorError,
    json_or_none,
    lookup,
    maybe_sent,
    vendor_text,
)

__all__ = [
    "AntBotClient",
    "AntBotError",
    "AntBotRejected",
    "AntBotAuthError",
    "AntBotUnavailable",
    "DEFAULT_RETRY",
    "CDR_PATH",
    "CAMPAIGNS_PATH",
    "CONTACT_PATH",
    "BULK_CONTACT_PATH",
    "DNC_CONTACT_PATH",
    "EVENT_PATH",
    "ALARM_PATH",
]

logger = logging.getLogger("callhub.antbot")

CDR_PATH = "/rest-api/cdr/"
CAMPAIGNS_PATH = "/rest-api/campaigns/"
CONTACT_PATH = "/rest-api/contact/"
BULK_CONTACT_PATH = "/rest-api/bulkcontact/"
DNC_CONTACT_PATH = "/rest-api/dnc-contact/"
EVENT_PATH = "/rest-api/event/"
ALARM_PATH = "/rest-api/alarm/"
#: Reads and status changes: a few quick tries (a poll tries again at its next interval anyway).
DEFAULT_RETRY = RetryPolicy(attempts=3, base_delay=0.2, max_delay=2.0, deadline=20.0)


class AntBotError(VendorError):
    """AntBot answered something this client cannot read (base of every AntBot error)."""

    code = "antbot_error"
    vendor = "antbot"


class AntBotRejected(AntBotError):
    """AntBot refused the request (4xx): its message says why. Not retried."""

    code = "antbot_rejected"


class AntBotAuthError(AntBotRejected):
    """AntBot refused the credentials or the token (401/403): check `[antbot] username` and `password`."""

    code = "antbot_auth_error"


class AntBotUnavailable(AntBotError, Unavailable):
    """AntBot failed (5xx, 429), could not be reached, or did not answer in time."""

    status_code = 503
    code = "antbot_unavailable"

    def __init__(self, message: str, *, maybe_sent: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        #: False only when the request certainly never reached AntBot (the connection failed).
        self.maybe_sent = maybe_sent
        self.details["maybe_sent"] = maybe_sent


class AntBotClient(VendorClient):
    """One AntBot account over HTTP. Close it, or use it as an async context manager."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float,
                 token_path: str = "/get-token/", token_fields: tuple[str, ...] = ("access", "token", "access_token"),
                 retry: RetryPolicy = DEFAULT_RETRY, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, timeout=timeout, retry=retry, http=http)
        self.username = username
        self._password = password
        self.token_path = token_path
        self.token_fields = token_fields
        self._token: str | None = None
        self._token_lock = asyncio.Lock()
        #: Tokens fetched so far (the first one included).
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"AntBotClient(base_url={self.base_url!r}, username={self.username!r})"

    # -- reads --------------------------------------------------------------------------------------

    async def list(self, path: str, params: Mapping[str, Any] | None = None, *, max_pages: int = 200) -> list[Any]:
        """Every item of a paged list (`results` of each page, following `next` on the same host)."""
        items: list[Any] = []
        url: str | None = self.base_url + path
        query: Mapping[str, Any] | None = params
        for _ in range(max_pages):
            assert url is not None
            body = await self._call("GET", url, self.retry, params=query, path=path)
            if isinstance(body, list):
                return items + body
            if not isinstance(body, dict) or not isinstance(body.get("results"), list):
                raise AntBotError("AntBot's answer is neither a list nor a page of results", status=200, path=path)
            items.extend(body["results"])
            following = body.get("next")
            if not isinstance(following, str) or not following:
                return items
            url = self._same_host(urljoin(url, following), path)
            query = None  # `next` carries the query
        raise AntBotError(f"more than {max_pages} pages; not read to the end", status=200, path=path)

    def _same_host(self, url: str, path: str) -> str:
        """`next` on the configured host, always with the configured scheme and port: Django behind a
        TLS proxy often writes `http://` links, and the token must not go out in clear text."""
        link, base = urlsplit(url), urlsplit(self.base_url)
        if (link.hostname or "").lower() != (base.hostname or "").lower():
            raise AntBotError("AntBot's next page is on another host; not followed", status=200, path=path)
        return urlunsplit((base.scheme, base.netloc, link.path, link.query, ""))

    # -- writes -------------------------------------------------------------------------------------

    async def check(self) -> str:
        """For `callhub check --online`: a token, and one small authenticated read."""
        path = "/rest-api/campaigns/"
        answer = await self._call("GET", self.base_url + path, self.retry, params={"page_size": 1}, path=path)
        count = answer.get("count") if isinstance(answer, dict) else len(answer) if isinstance(answer, list) else None
        return f"credentials accepted (token issued; {count if count is not None else 'some'} campaign(s))"

    async def create(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST a creation once (contacts, events, alarms): a lost answer is not sent again."""
        return await self._call("POST", self.base_url + path, NO_RETRY, json=dict(body), path=path)

    async def set_status(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST a status change, retried: the same status set twice is set once."""
        return await self._call("POST", self.base_url + path, self.retry, json=dict(body), path=path)

    # -- plumbing -----------------------------------------------------------------------------------

    async def _fresh_token(self, stale: str | None) -> str:
        """A token: the cached one unless it is `stale` (refused), else a new one (one request for all waiting)."""
        async with self._token_lock:
            if self._token is not None and self._token != stale:
                return self._token
            try:
                status, answer = await self._exchange("POST", self.base_url + self.token_path, self.retry, token=None,
                                                      json={"username": self.username, "password": self._password},
                                                      path=self.token_path)
            except AntBotUnavailable:
                self.token_refreshed(False)
                raise
            if not 200 <= status < 300:
                self.token_refreshed(False)
            if status in (400, 401, 403):
                raise AntBotAuthError("AntBot refused the username or password (check [antbot] username and password)",
                                      status=status, vendor_message=_message(answer), path=self.token_path)
            _raise_for(status, answer, self.token_path)
            token = next((t for f in self.token_fields if isinstance(t := lookup(answer, f), str) and t), None)
            if token is None:
                raise AntBotError("AntBot's token answer has none of the fields " + ", ".join(self.token_fields),
                                  status=status, path=self.token_path)
            self._token = token
            self.tokens_fetched += 1
            self.token_refreshed(True)
            logger.info("antbot token fetched for %s", self.username)
            return token

    async def _call(self, method: str, url: str, policy: RetryPolicy, *, path: str,
                    params: Mapping[str, Any] | None = None, json: Any = None) -> Any:
        token = await self._fresh_token(None)
        status, body = await self._exchange(method, url, policy, token=token, params=params, json=json, path=path)
        if status == 401:  # expired or revoked: one new token, one more try
            token = await self._fresh_token(token)
            status, body = await self._exchange(method, url, policy, token=token, params=params, json=json, path=path)
            if status == 401:
                raise AntBotAuthError("AntBot refused a fresh token", status=status,
                                      vendor_message=_message(body), path=path)
        _raise_for(status, body, path)
        return body

    async def _exchange(self, method: str, url: str, policy: RetryPolicy, *, token: str | None, path: str,
                        params: Mapping[str, Any] | None = None, json: Any = None) -> tuple[int, Any]:
        def build() -> httpx.Request:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return self._http.build_request(method, url, headers=headers, params=params, json=json,
                                            timeout=self.timeout)

        try:
            # Reported under the path with its ids replaced (a metric label must stay bounded).
            response = await self._send(_ID_SEGMENT.sub("/:id", path), build, policy, unsent=self.retry)
        except httpx.HTTPError as exc:
            sent = maybe_sent(exc)
            note = "; the request may have reached AntBot" if sent else ""
            raise AntBotUnavailable(f"AntBot unreachable ({type(exc).__name__}{note})", maybe_sent=sent,
                                    path=path) from exc
        logger.debug("antbot %s %s -> %s", method, path, response.status_code)
        return response.status_code, json_or_none(response)


_ID_SEGMENT = re.compile(r"/[^/]*\d[^/]*(?=/|$)")


def _message(body: Any) -> str | None:
    """DRF's error text: `detail`, `message`, `error`, or the first field error."""
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            text = vendor_text(body.get(key))
            if text:
                return text
        for key, value in body.items():
            if isinstance(value, list) and value and isinstance(value[0], str):
                return vendor_text(f"{key}: {value[0]}")
    if isinstance(body, list) and body and isinstance(body[0], str):
        return vendor_text(body[0])
    return None


def _raise_for(status: int, body: Any, path: str) -> None:
    if 200 <= status < 300:
        return
    message = _message(body)
    suffix = f": {message}" if message else ""
    if status in (401, 403):
        raise AntBotAuthError(f"AntBot refused the request ({status}){suffix}", status=status,
                              vendor_message=message, path=path)
    if status == 429 or status >= 500:
        raise AntBotUnavailable(f"AntBot failed ({status}){suffix}", status=status, vendor_message=message, path=path)
    raise AntBotRejected(f"AntBot refused the request ({status}){suffix}", status=status, vendor_message=message,
                         path=path)

