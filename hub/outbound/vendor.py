"""What every vendor's HTTP client shares: its lifecycle, its error, reading vendors' answers, and
tracing: every request carries the current request id (`X-Request-Id`, `hub.tracing`; a fresh
one outside a request) and is logged, with that id, once answered."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any, Self

import httpx

from hub.exceptions import HubError
from hub.outbound.retry import RetryPolicy
from hub.tracing import REQUEST_ID_HEADER, new_request_id, request_id

logger = logging.getLogger("callhub.vendor")

__all__ = ["VendorClient", "VendorError", "json_or_none", "vendor_text", "MAX_VENDOR_MESSAGE"]

#: Longest vendor message kept in an exception (a vendor's body is not ours to trust).
MAX_VENDOR_MESSAGE = 200


def json_or_none(response: httpx.Response) -> Any:
    """A vendor's answer as JSON, or None when it is empty or not JSON (its status still tells)."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def vendor_text(value: object) -> str | None:
    """A message out of a vendor's answer, cut to `MAX_VENDOR_MESSAGE`; None unless a non-empty string."""
    return value[:MAX_VENDOR_MESSAGE] if isinstance(value, str) and value else None


class VendorError(HubError):
    """A vendor refused a request or answered something its client cannot read (502 to our callers).

    Subclasses name the `vendor`; `status`, `vendor_message` and `path` say what happened, never
    with a secret in them.
    """

    status_code = 502
    code = "vendor_error"
    vendor = "vendor"

    def __init__(self, message: str, *, status: int | None = None, vendor_message: str | None = None,
                 path: str | None = None, code: str | None = None, **details: Any) -> None:
        super().__init__(message, code=code, vendor=self.vendor, status=status, vendor_message=vendor_message,
                         path=path, **details)
        self.status = status
        self.vendor_message = vendor_message
        self.path = path


class VendorClient:
    """What every vendor's HTTP client shares: an httpx client (its own, or the owner's, which is
    then not closed here), the timeout and retry policy, closing, `async with`, and tracing."""

    #: The vendor's name in log lines (subclasses name theirs).
    vendor = "vendor"

    def __init__(self, base_url: str, *, timeout: float, retry: RetryPolicy,
                 http: httpx.AsyncClient | None = None, limits: httpx.Limits | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self._own_http = http is None
        if http is None:
            http = httpx.AsyncClient(timeout=timeout, limits=limits) if limits else httpx.AsyncClient(timeout=timeout)
        hooks = http.event_hooks
        http.event_hooks = {"request": [*hooks.get("request", []), self._on_request],
                            "response": [*hooks.get("response", []), self._on_response]}
        self._http = http

    async def _on_request(self, request: httpx.Request) -> None:
        request.headers[REQUEST_ID_HEADER] = request_id.get() or new_request_id()
        request.extensions["callhub_started"] = time.perf_counter()

    async def _on_response(self, response: httpx.Response) -> None:
        # The path only: a query string may hold a signature or a phone number.
        request = response.request
        started = request.extensions.get("callhub_started")
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1) if isinstance(started, float) else None
        logger.info("%s %s %s -> %d", self.vendor, request.method, request.url.path, response.status_code,
                    extra={"vendor": self.vendor, "status": response.status_code, "duration_ms": elapsed_ms,
                           "vendor_request_id": request.headers.get(REQUEST_ID_HEADER)})

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
