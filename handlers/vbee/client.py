"""The Vbee AICall public-API client: add contacts to a campaign.

Every request carries `Authorization: Bearer <JWT>`, a fresh HS256 JWT of
`{"apiKey": API_KEY, "iat": now}` signed with API_SECRET (the vendor's Java sample adds `iat`;
the others omit it, and a receiver that ignores it is not hurt by it).

Errors (every one a `hub.exceptions.HubError` answering 502, carrying the vendor's numeric
`vendor_code`, its `vendor_message` and the HTTP `status`; never the key, secret or token):

    VbeeError                    anything else the vendor refused, or an unreadable answer
    ├── VbeeAuthError            401 the access token is refused (bad API_SECRET, clock, format)
    │   └── VbeeAppNotFound      1201 no application with this API_KEY
    ├── VbeeImportFailed         1402 the vendor failed to import the contacts
    ├── VbeeContactsInvalid      1403 every contact of the request is invalid (phone_number)
    └── VbeeUnavailable          500 or any 5xx, no connection, or no answer in time

Vbee answers errors as `{"status": 0, "code": ..., "message": ...}`; the HTTP status they come
with is not documented, so the body's `code` decides, and the HTTP status only when the body
says nothing.

Adding contacts is not idempotent at the vendor (the same number added twice is called twice),
so `add_contacts` goes through `hub.outbound.send_with_retry` with `NO_RETRY`: after a timeout
or a 5xx the contacts may or may not have been added (`VbeeUnavailable.maybe_sent`), and the
request is not repeated. Only a connection that failed to open (the request never left) is tried
again, per the client's `retry` policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import jwt

from hub.plugin import (
    NO_RETRY,
    RetryPolicy,
    VendorClient,
    VendorError,
    json_or_none,
    send_with_retry,
    vendor_text,
)

__all__ = [
    "VbeeClient",
    "VbeeError",
    "VbeeAuthError",
    "VbeeAppNotFound",
    "VbeeImportFailed",
    "VbeeContactsInvalid",
    "VbeeUnavailable",
    "access_token",
    "CAMPAIGN_PATH",
    "DEFAULT_RETRY",
]

logger = logging.getLogger("callhub.vbee")

CAMPAIGN_PATH = "/campaign"
#: Failures that happen before the request is written: retrying them cannot add contacts twice.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
#: Retries of connections that failed to open (nothing else is retried, see the module docstring).
DEFAULT_RETRY = RetryPolicy(attempts=3, base_delay=0.2, max_delay=2.0)
#: Vendor error codes (the `code` of a `status: 0` answer).
CODE_UNAUTHORIZED = 401
CODE_SYSTEM_ERROR = 500
CODE_APP_NOT_FOUND = 1201
CODE_IMPORT_FAILED = 1402
CODE_ALL_INVALID = 1403


class VbeeError(VendorError):
    """Vbee refused a request or answered something this client cannot read."""

    code = "vbee_error"
    vendor = "vbee"

    def __init__(self, message: str, *, vendor_code: int | None = None, vendor_message: str | None = None,
                 status: int | None = None, path: str = CAMPAIGN_PATH) -> None:
        super().__init__(message, status=status, vendor_message=vendor_message, path=path, vendor_code=vendor_code)
        self.vendor_code = vendor_code


class VbeeAuthError(VbeeError):
    """Vbee refused the access token (401): check `[vbee] api_secret`."""

    code = "vbee_auth_error"


class VbeeAppNotFound(VbeeAuthError):
    """No AICall application has this API key (1201): check `[vbee] api_key`."""

    code = "vbee_app_not_found"


class VbeeImportFailed(VbeeError):
    """Vbee failed to import the contacts (1402)."""

    code = "vbee_import_failed"


class VbeeContactsInvalid(VbeeError):
    """Every contact of the request is invalid (1403): check their `phone_number`."""

    code = "vbee_contacts_invalid"


class VbeeUnavailable(VbeeError):
    """Vbee failed (500, any 5xx), could not be reached, or did not answer in time."""

    code = "vbee_unavailable"

    def __init__(self, message: str, *, maybe_sent: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        #: False only when the request certainly never reached Vbee (the connection failed).
        self.maybe_sent = maybe_sent
        self.details["maybe_sent"] = maybe_sent


_BY_CODE: dict[int, tuple[type[VbeeError], str]] = {
    CODE_UNAUTHORIZED: (VbeeAuthError, "Vbee refused the access token (check [vbee] api_secret)"),
    CODE_APP_NOT_FOUND: (VbeeAppNotFound, "Vbee has no application with this API key (check [vbee] api_key)"),
    CODE_IMPORT_FAILED: (VbeeImportFailed, "Vbee failed to import the contacts"),
    CODE_ALL_INVALID: (VbeeContactsInvalid, "Vbee found every contact invalid (check phone_number)"),
    CODE_SYSTEM_ERROR: (VbeeUnavailable, "Vbee had a system error"),
}


def access_token(api_key: str, api_secret: str, *, now: float | None = None) -> str:
    """The Bearer token: HS256 JWT of `{"apiKey", "iat"}` signed with the API secret."""
    issued = int(time.time() if now is None else now)
    return jwt.encode({"apiKey": api_key, "iat": issued}, api_secret, algorithm="HS256")


class VbeeClient(VendorClient):
    """One AICall application (API_KEY/API_SECRET) over HTTP. Close it, or use it as an async context manager.

    `retry` (its `attempts` and back-off) applies only to connections that failed to open,
    which never reached Vbee; a request that may have reached it is never sent again. `http`
    lets the owner share a client (it is then not closed here).
    """

    vendor = "vbee"

    def __init__(self, base_url: str, api_key: str, api_secret: str, *, timeout: float,
                 retry: RetryPolicy = DEFAULT_RETRY, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, timeout=timeout, retry=retry, http=http)
        self.api_key = api_key
        self._api_secret = api_secret

    def __repr__(self) -> str:
        return f"VbeeClient(base_url={self.base_url!r}, api_key={self.api_key!r})"


    async def add_contacts(self, campaign_id: str, contacts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Add `contacts` (`{"phone_number", <tag>: value, ...}`) to a campaign; the ones Vbee added.

        Vbee drops invalid contacts silently and answers the others, each with its new
        `contact_id` (and the number as `so_dien_thoai`). Sent once, never retried.
        """
        body = await self._call("POST", CAMPAIGN_PATH, NO_RETRY,
                                json={"campaign_id": campaign_id, "contacts": [dict(c) for c in contacts]})
        result = body.get("result")
        if not isinstance(result, list):
            raise VbeeError("Vbee's answer has no result list", status=200)
        return [item for item in result if isinstance(item, dict)]

    # -- plumbing -----------------------------------------------------------------------------

    async def _call(self, method: str, path: str, policy: RetryPolicy, *, json: Any = None) -> dict[str, Any]:
        url = self.base_url + path

        def build() -> httpx.Request:
            # A fresh token per try: `iat` stays current, and nothing to cache or refresh.
            headers = {"Authorization": f"Bearer {access_token(self.api_key, self._api_secret)}"}
            return self._http.build_request(method, url, headers=headers, json=json, timeout=self.timeout)

        attempt = 0
        while True:
            attempt += 1
            try:
                response = await send_with_retry(self._http, build, policy)
                break
            except _NOT_SENT as exc:
                # The connection never opened, so Vbee never saw the request: safe to try again.
                if attempt < self.retry.attempts:
                    await asyncio.sleep(self.retry.backoff(attempt))
                    continue
                raise VbeeUnavailable(f"Vbee unreachable ({type(exc).__name__})", maybe_sent=False,
                                      path=path) from exc
            except httpx.HTTPError as exc:
                raise VbeeUnavailable(f"Vbee unreachable ({type(exc).__name__}; the request may have reached Vbee)",
                                      path=path) from exc
        logger.debug("Vbee %s %s -> %s", method, path, response.status_code)
        body = json_or_none(response)
        status = response.status_code
        if 200 <= status < 300 and isinstance(body, dict) and body.get("status") == 1:
            return body
        vendor_code, message = _vendor_error(body)
        if vendor_code is None and status >= 300:
            vendor_code = CODE_UNAUTHORIZED if status in (401, 403) else CODE_SYSTEM_ERROR if status >= 500 else None
        mapped = _BY_CODE.get(vendor_code) if vendor_code is not None else None
        if mapped is None and status >= 500:
            mapped = _BY_CODE[CODE_SYSTEM_ERROR]
        error, text = mapped or (VbeeError, f"Vbee answered {status}" + (f" code {vendor_code}" if vendor_code else ""))
        raise error(text + (f": {message}" if message else ""), vendor_code=vendor_code, vendor_message=message,
                    status=status, path=path)


def _vendor_error(body: Any) -> tuple[int | None, str | None]:
    """`(code, message)` of a `{"status": 0, "code", "message"}` answer (either may be missing)."""
    if not isinstance(body, dict):
        return None, None
    code = body.get("code")
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code)
    message = body.get("message")
    return (code if isinstance(code, int) and not isinstance(code, bool) else None,
            vendor_text(message))
