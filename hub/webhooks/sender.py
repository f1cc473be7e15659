"""The one way the hub POSTs to a URL its users chose: signed, SSRF-guarded, retried, bounded.

Every request carries the Standard Webhooks headers (https://www.standardwebhooks.com):
`webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,<base64 HMAC-SHA256 of
id.timestamp.body>`), signed afresh per try so the timestamp is current. The URL's host is
resolved and every address checked by the SSRF guard (`hub.outbound.guard`), the connection
pinned to the checked address, redirects never followed, proxies from the environment ignored,
and only the first few kilobytes of the answer read.
"""

from __future__ import annotations

import time

import httpx

from hub.exceptions import HubError
from hub.outbound.guard import EgressPolicy
from hub.outbound.retry import RetryPolicy, send_with_retry
from hub.webhooks.signatures import decode_whsec, standard_webhook_signature

__all__ = ["WebhookSigner", "WebhookSender", "WebhookFailed", "USER_AGENT", "MAX_ANSWER_BYTES"]

USER_AGENT = "callhub-webhooks/1"
#: How much of the receiver's answer is read (then the connection is let go).
MAX_ANSWER_BYTES = 4096


class WebhookFailed(HubError):
    """The receiver did not accept the webhook (after retries), or could not be reached."""

    status_code = 502
    code = "webhook_failed"


class WebhookSigner:
    """Standard Webhooks headers for a message, from a `whsec_…` secret."""

    def __init__(self, secret: str) -> None:
        self._key = decode_whsec(secret)

    def headers(self, msg_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
        timestamp = str(int(time.time() if now is None else now))
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": standard_webhook_signature(self._key, msg_id, timestamp, body),
        }


class WebhookSender:
    def __init__(self, policy: EgressPolicy, *, timeout: float) -> None:
        self.policy = policy
        self._http = httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False)

    async def post(self, url: str, body: bytes, *, msg_id: str, signer: WebhookSigner, headers: dict[str, str],
                   retry: RetryPolicy) -> httpx.Response:
        """POST `body` to `url`, signed; the last answer (its body cut to `MAX_ANSWER_BYTES`).

        Raises `EgressRefused` (422) for a URL the guard refuses, `WebhookFailed` if no answer came.
        """
        target = await self.policy.resolve(url)
        base = {"User-Agent": USER_AGENT, **headers}

        def build() -> httpx.Request:  # signed afresh per try: the timestamp must be current
            return target.pinned_request("POST", headers={**base, **signer.headers(msg_id, body)}, content=body)

        try:
            return await send_with_retry(self._http, build, retry, max_response=MAX_ANSWER_BYTES, truncate=True)
        except httpx.HTTPError as exc:
            raise WebhookFailed(f"{target.host} could not be reached: {type(exc).__name__}",
                                webhook_id=msg_id) from None

    async def aclose(self) -> None:
        await self._http.aclose()
