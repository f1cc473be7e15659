"""What every vendor's HTTP client shares: its lifecycle, its error, sending with retries while
reporting each call (`VendorCalls`: metrics by vendor, endpoint and status), reading vendors'
answers, and tracing: every request carries the current request id (`X-Request-Id`,
`hub.tracing`; a fresh one outside a request) and is logged, with that id, once answered."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

import httpx

from hub.exceptions import HubError
from hub.outbound.retry import RetryPolicy, send_unsent_retry, send_with_retry
from hub.tracing import REQUEST_ID_HEADER, new_request_id, request_id

logger = logging.getLogger("callhub.vendor")

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
    `VendorCalls` given to `report_to`), closing, `async with`, and tracing."""

    #: The vendor's name in metrics and log lines (each client names its own).
    vendor: ClassVar[str] = "vendor"

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
