"""The one way the hub POSTs to a URL its users chose (subscriptions, `webhook.post`): signed,
SSRF-guarded, bounded.

Every request carries the Standard Webhooks headers (https://www.standardwebhooks.com):
`webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,<base64 HMAC-SHA256 of
id.timestamp.body>`, one per secret in force: during a rotation, both), signed afresh per
attempt so the timestamp is current. The client (aiohttp, which costs a fraction of httpx's CPU
per request: deliveries are the hub's busiest outbound path) resolves through the SSRF guard's
`GuardedResolver`, so it only ever connects to checked addresses while `Host`, SNI and the
certificate check keep the name; redirects are not followed, proxies from the environment are
ignored, answers are neither decompressed nor read past their first `MAX_ANSWER_BYTES`.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from hub.exceptions import HubError
from hub.outbound.guard import EgressPolicy, GuardedResolver
from hub.outbound.retry import RetryPolicy, retrying
from hub.webhooks.signatures import decode_whsec, standard_webhook_signature

__all__ = ["WebhookSigner", "WebhookSender", "WebhookFailed", "WebhookUnreachable", "Answer", "USER_AGENT",
           "MAX_ANSWER_BYTES"]

USER_AGENT = "callhub-webhooks/1"
#: How much of the receiver's answer is read (then the connection is let go).
MAX_ANSWER_BYTES = 4096
#: Connections open at once, in all and to one host (a receiver).
MAX_CONNECTIONS = 512
MAX_PER_HOST = 64
#: How long a checked DNS answer is used before the name is resolved and checked again.
DNS_TTL = 60


class WebhookFailed(HubError):
    """The receiver did not accept the webhook (after retries), or could not be reached."""

    status_code = 502
    code = "webhook_failed"


class WebhookUnreachable(WebhookFailed):
    """No answer came: the connection failed, or the attempt timed out."""


class Answer(NamedTuple):
    status: int
    #: The `Retry-After` header, as sent.
    retry_after: str | None
    #: The first bytes of the body.
    head: bytes
    #: Seconds from sending to the answer's head.
    elapsed: float


#: What may stay as it is in a path or query: RFC 3986's unreserved and sub-delims, `:@/?`, and `%`
#: itself (escapes already there are kept, never decoded).
_KEEP = "/%:@!$&'()*+,;=-._~?"


def as_sent(url: str) -> URL:
    """`url` exactly as the request line will carry it: escapes kept (a `%2F` or `%2E%2E` that a
    template put in a path segment stays one segment; yarl would otherwise decode it and resolve
    the dot segments), characters a URL may not hold escaped, the host in IDNA."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host.encode("idna").decode("ascii") if not host.isascii() else host
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return URL(urlunsplit((parts.scheme, netloc, quote(parts.path or "/", safe=_KEEP),
                           quote(parts.query, safe=_KEEP), "")), encoded=True)


class WebhookSigner:
    """Standard Webhooks headers for a message, from one or more `whsec_…` secrets (all sign it)."""

    def __init__(self, *secrets: str) -> None:
        if not secrets:
            raise ValueError("a signer needs a secret")
        self._keys = [decode_whsec(s) for s in secrets]

    def headers(self, msg_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
        timestamp = str(int(time.time() if now is None else now))
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": " ".join(standard_webhook_signature(k, msg_id, timestamp, body) for k in self._keys),
        }


class WebhookSender:
    def __init__(self, policy: EgressPolicy, *, timeout: float) -> None:
        self.policy = policy
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use: it needs the running loop
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy), ttl_dns_cache=DNS_TTL,
                                             limit=MAX_CONNECTIONS, limit_per_host=MAX_PER_HOST)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False,
                                                  auto_decompress=False, headers={"User-Agent": USER_AGENT})
        return self._session

    async def attempt(self, url: str, body: bytes, *, msg_id: str, signer: WebhookSigner,
                      headers: dict[str, str], timeout: float | None = None) -> Answer:
        """One POST (within `timeout` seconds, else the sender's). Raises `EgressRefused` (422) for
        a URL the guard refuses, `WebhookUnreachable` when no answer came."""
        _, host, _ = self.policy.check_url(url)
        self.policy.check_literal(host)
        target = as_sent(url)
        sent = {**headers, **signer.headers(msg_id, body), "Accept-Encoding": "identity"}
        started = time.perf_counter()
        try:
            limit = self._timeout if timeout is None else aiohttp.ClientTimeout(total=timeout)
            async with self._client().post(target, data=body, headers=sent, allow_redirects=False,
                                           timeout=limit) as response:
                elapsed = time.perf_counter() - started
                head = await response.content.read(MAX_ANSWER_BYTES)
                return Answer(response.status, response.headers.get("Retry-After"), head, elapsed)
        except TimeoutError:
            raise WebhookUnreachable(f"{host} did not answer in time", webhook_id=msg_id) from None
        except aiohttp.ClientError as exc:
            reason = type(exc.__cause__ or exc).__name__ if isinstance(exc, aiohttp.ClientConnectorError) else \
                type(exc).__name__
            raise WebhookUnreachable(f"{host} could not be reached: {reason}", webhook_id=msg_id) from None

    async def post(self, url: str, body: bytes, *, msg_id: str, signer: WebhookSigner, headers: dict[str, str],
                   retry: RetryPolicy) -> Answer:
        """`attempt`, retried on no answer, 429 and 5xx per `retry` (the one retry loop)."""
        return await retrying(lambda: self.attempt(url, body, msg_id=msg_id, signer=signer, headers=headers),
                              retry, errors=(WebhookUnreachable,), status=lambda a: a.status,
                              retry_after=lambda a: a.retry_after)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)  # let the connector's transports close before the loop moves on

