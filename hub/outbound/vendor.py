"""What every vendor's HTTP client shares: its lifecycle, its error, sending with retries while
reporting each call (`VendorCalls`: metrics by vendor, endpoint and status), reading vendors' answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

import httpx

from hub.exceptions import HubError
from hub.outbound.retry import RetryPolicy, send_unsent_retry, send_with_retry

__all__ = ["VendorClient", "VendorError", "VendorCalls", "json_or_none", "vendor_text", "MAX_VENDOR_MESSAGE"]

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


class VendorCalls(Protocol):
    """Where a vendor client reports its calls (the hub's metrics; `PluginContext.vendor_calls`).

    `endpoint` is a route template the client names (`/oapi/v1/call/click-to-call/:number`),
    never a URL with ids or numbers in it; `status` the final HTTP status, or `error` when no
    answer came (connection failed, timed out, cancelled).
    """

    def request(self, vendor: str, endpoint: str, status: str, seconds: float) -> None: ...

    def token_refresh(self, vendor: str, outcome: str) -> None: ...


class VendorClient:
    """What every vendor's HTTP client shares: an httpx client (its own, or the owner's, which is
    then not closed here), the timeout and retry policy, sending (`_send`, reported to the
    `VendorCalls` given to `report_to`), closing, and `async with`."""

    #: The vendor's name in metrics (each client names its own).
    vendor: ClassVar[str] = "vendor"

    def __init__(self, base_url: str, *, timeout: float, retry: RetryPolicy,
                 http: httpx.AsyncClient | None = None, limits: httpx.Limits | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self._own_http = http is None
        if http is None:
            http = httpx.AsyncClient(timeout=timeout, limits=limits) if limits else httpx.AsyncClient(timeout=timeout)
        self._http = http
        self._calls: VendorCalls | None = None

    def report_to(self, calls: VendorCalls) -> None:
        """Report every call from now on (the handler passes `PluginContext.vendor_calls`)."""
        self._calls = calls

    def token_refreshed(self, ok: bool) -> None:
        """An access token was fetched (`ok`) or could not be (for `callhub_token_refreshes_total`)."""
        if self._calls is not None:
            self._calls.token_refresh(self.vendor, "ok" if ok else "failed")

    async def _send(self, endpoint: str, build: Callable[[], httpx.Request], policy: RetryPolicy, *,
                    unsent: RetryPolicy | None = None) -> httpx.Response:
        """`send_with_retry` on this client's connection pool, timed and reported under `endpoint`
        (a route template: it becomes a metric label, so it must not carry ids). With `unsent`:
        `send_unsent_retry`, for a request that must not reach the vendor twice."""
        started = time.perf_counter()
        status = "error"
        try:
            if unsent is None:
                response = await send_with_retry(self._http, build, policy)
            else:
                response = await send_unsent_retry(self._http, build, policy, unsent=unsent)
            status = str(response.status_code)
            return response
        finally:
            if self._calls is not None:
                self._calls.request(self.vendor, endpoint, status, time.perf_counter() - started)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
