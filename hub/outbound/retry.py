"""Calling other services: one retry policy and one retrying sender, for every vendor client and
the webhook sender. Answers are read within a limit (`read_limited`).

Only idempotent requests are retried (GETs, or POSTs the vendor deduplicates): a request that
may have side effects twice (ringing a phone) is sent once, whatever happens.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

__all__ = ["RetryPolicy", "NO_RETRY", "retry_until", "send_with_retry", "send_unsent_retry", "maybe_sent",
           "NOT_SENT", "retrying", "read_limited",
           "retry_after_seconds", "stable_key", "ResponseTooLarge", "MAX_RESPONSE_BYTES", "ACCEPT_ENCODING"]

R = TypeVar("R")

#: Most bytes of an answer read (decoded): a vendor's answer, or a webhook receiver's, is never
#: read whole into memory whatever it sends. Larger answers are an error (`ResponseTooLarge`)
#: unless the caller only wants their beginning (`truncate`).
MAX_RESPONSE_BYTES = 1024 * 1024
#: What answers may be encoded with: what `read_limited` can decode within its limit.
ACCEPT_ENCODING = "gzip, deflate"
#: Headers that describe the body as it came over the wire, not as it is kept (decoded, maybe cut).
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class ResponseTooLarge(httpx.HTTPError):
    """The answer's body is larger than the reader's limit; it was not read past the limit."""
#: Statuses worth another try: the server failed, or asked us to slow down.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: Tries in all, the first included.
    attempts: int = 4
    #: First back-off; doubles per try, with full jitter, up to `max_delay`.
    base_delay: float = 0.5
    max_delay: float = 10.0
    #: Give up once this much time has passed since the first try (0 = no deadline).
    deadline: float = 30.0
    statuses: frozenset[int] = RETRY_STATUSES

    def backoff(self, attempt: int) -> float:
        """Delay before try number `attempt + 1` (attempt counts from 1), full jitter."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


NO_RETRY = RetryPolicy(attempts=1)
#: "No limit on tries": `retry_until` policies stop at their deadline instead.
_UNBOUNDED_ATTEMPTS = 1_000_000


def retry_until(deadline: float, *, base_delay: float = 0.5, max_delay: float = 10.0) -> RetryPolicy:
    """Retry an idempotent request until `deadline` seconds after the first try (back-off from `base_delay`)."""
    if deadline <= 0:
        raise ValueError("the retry deadline must be positive")
    return RetryPolicy(attempts=_UNBOUNDED_ATTEMPTS, base_delay=base_delay, max_delay=min(max_delay, deadline),
                       deadline=deadline)


def stable_key(*parts: str, prefix: str = "callhub") -> str:
    """A short idempotency key for a vendor (`ticketIdApiRing`, `webhook-id`): the same parts, the same key."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{prefix}-{digest}"


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A `Retry-After` header's delay in seconds (it holds seconds or an HTTP date), if it is one."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # delay-seconds = 1*DIGIT (RFC 9110); "1_000" or "inf" is not
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class _Inflate:
    """gzip or deflate, decoded at most `room` bytes at a time: a small compressed answer cannot
    expand into memory (httpx's own decoders inflate each network chunk whole)."""

    def __init__(self, encoding: str) -> None:
        # 16 + MAX_WBITS: gzip framing; 32 + MAX_WBITS: zlib or gzip, whichever the header says.
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in encoding else 32 + zlib.MAX_WBITS)

    def feed(self, data: bytes, room: int) -> tuple[bytes, bool]:
        """Up to `room` decoded bytes of `data`; True if more output was left undecoded."""
        out = self._z.decompress(data, room)
        return out, bool(self._z.unconsumed_tail)


async def read_limited(response: httpx.Response, limit: int = MAX_RESPONSE_BYTES, *,
                       truncate: bool = False) -> httpx.Response:
    """A streamed response with its body read, up to `limit` bytes (decoded), and closed.

    Past `limit`: `ResponseTooLarge`, or with `truncate` the first `limit` bytes. The answer is a
    complete `httpx.Response` (`.content`, `.text`, `.json()` work). Only identity, gzip and
    deflate are read (what `send_with_retry` asks for), and decoding stops at the limit.
    """
    if response.is_stream_consumed:  # read already (a transport that answers from memory): only cut it
        body = response.content
        await response.aclose()
        if len(body) > limit and not truncate:
            raise ResponseTooLarge(f"the answer is larger than {limit} bytes")
        return _complete(response, body[:limit])
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        await response.aclose()
        raise ResponseTooLarge(f"the answer is in an encoding the hub did not ask for ({encoding[:32]})")
    inflate = _Inflate(encoding) if encoding not in ("", "identity") else None
    chunks: list[bytes] = []
    size = 0
    try:
        async for raw in response.aiter_raw():
            chunk, more = inflate.feed(raw, limit - size + 1) if inflate is not None else (raw, False)
            if more or size + len(chunk) > limit:
                if not truncate:
                    raise ResponseTooLarge(f"the answer is larger than {limit} bytes")
                chunks.append(chunk[: limit - size])
                break
            size += len(chunk)
            chunks.append(chunk)
    except zlib.error as exc:
        raise ResponseTooLarge(f"the answer's {encoding} encoding is broken: {exc}") from None
    finally:
        await response.aclose()
    return _complete(response, b"".join(chunks))


def _complete(response: httpx.Response, body: bytes) -> httpx.Response:
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request,
                          extensions=response.extensions)


async def send_with_retry(
    client: httpx.AsyncClient,
    build: Callable[[], httpx.Request],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], object] = asyncio.sleep,
    max_response: int = MAX_RESPONSE_BYTES,
    truncate: bool = False,
) -> httpx.Response:
    """Send `build()` and retry on connection errors, timeouts and `policy.statuses` (`retrying`),
    each answer's body read up to `max_response` bytes (`read_limited`)."""

    async def once() -> httpx.Response:
        request = build()
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        return await read_limited(await client.send(request, stream=True), max_response, truncate=truncate)

    return await retrying(once, policy, errors=(httpx.TransportError, httpx.TimeoutException),
                          status=lambda r: r.status_code, retry_after=lambda r: r.headers.get("retry-after"),
                          sleep=sleep)


#: Failures that happen before a request is written: trying again cannot do anything twice.
NOT_SENT: tuple[type[httpx.HTTPError], ...] = (httpx.ConnectError, httpx.ConnectTimeout)


def maybe_sent(exc: BaseException) -> bool:
    """Whether a request that failed with `exc` may have reached the other side (False only when it never left)."""
    return not isinstance(exc, NOT_SENT)


async def send_unsent_retry(
    client: httpx.AsyncClient,
    build: Callable[[], httpx.Request],
    policy: RetryPolicy,
    *,
    unsent: RetryPolicy,
    sleep: Callable[[float], object] = asyncio.sleep,
) -> httpx.Response:
    """`send_with_retry(policy)` for a request that must not reach the vendor twice (`NO_RETRY`):
    a connection that failed to open (`NOT_SENT`, the vendor never saw it) is tried again per
    `unsent`; any other failure is raised at once (`maybe_sent(exc)` tells the caller it may have arrived)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await send_with_retry(client, build, policy, sleep=sleep)
        except NOT_SENT:
            if attempt >= unsent.attempts:
                raise
            await _sleep(sleep, unsent.backoff(attempt))


async def retrying(call: Callable[[], Awaitable[R]], policy: RetryPolicy, *, errors: tuple[type[BaseException], ...],
                   status: Callable[[R], int], retry_after: Callable[[R], str | None],
                   sleep: Callable[[float], object] = asyncio.sleep) -> R:
    """The one retry loop: `call()` again on `errors` and on answers whose status is in
    `policy.statuses`, while tries and the deadline last, after the policy's back-off or the
    answer's `Retry-After` (capped by `policy.max_delay`).

    Returns the last answer (a retryable status included, once tries run out); re-raises the
    last error if no answer ever came.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            result = await call()
        except errors:
            if attempt >= policy.attempts or _past(policy, started):
                raise
            await _sleep(sleep, policy.backoff(attempt))
            continue
        if status(result) not in policy.statuses or attempt >= policy.attempts or _past(policy, started):
            return result
        hinted = retry_after_seconds(retry_after(result))
        delay = policy.backoff(attempt) if hinted is None else min(hinted, policy.max_delay)
        await _sleep(sleep, delay)


def _past(policy: RetryPolicy, started: float) -> bool:
    return policy.deadline > 0 and time.monotonic() - started >= policy.deadline


async def _sleep(sleep: Callable[[float], object], delay: float) -> None:
    result = sleep(delay)
    if asyncio.iscoroutine(result):
        await result
