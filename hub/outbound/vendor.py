"""What every vendor's HTTP client shares: its lifecycle, its error, and reading vendors' answers."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import httpx

from hub.exceptions import HubError
from hub.outbound.retry import RetryPolicy

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
    then not closed here), the timeout and retry policy, closing, and `async with`."""

    def __init__(self, base_url: str, *, timeout: float, retry: RetryPolicy,
                 http: httpx.AsyncClient | None = None, limits: httpx.Limits | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self._own_http = http is None
        if http is None:
            http = httpx.AsyncClient(timeout=timeout, limits=limits) if limits else httpx.AsyncClient(timeout=timeout)
        self._http = http

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
