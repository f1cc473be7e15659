"""Webhooks the hub sends: Standard Webhooks signatures and the `webhook.post` rule action.

    [[rules.actions]]
    type = "webhook.post"
    url = "https://crm.example.com/hooks/callhub"
    # body: the triggering event (CloudEvents JSON) unless given; a table is sent as JSON,
    # a string as text. Templates render either.
    body = { text = "Missed call from {data.from.number}", call = "{data.call_id}" }
    headers = { "X-Team" = "support" }

Every request carries `webhook-id`, `webhook-timestamp` and `webhook-signature`
(https://www.standardwebhooks.com), signed with `[actions.webhook] secret` or the secret the
hub generates into `data_dir/webhook.secret`. `webhook-id` is derived from the rule, the event
and the action, so it is the same on every retry and after a restart: receivers deduplicate on
it, which is what makes the action safe to retry (5xx, 429, timeouts, refused connections,
until `retry_for`). Targets pass the SSRF guard in `hub.egress`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from hub.config import WebhookActionConfig
from hub.exceptions import HubError, InvalidEvent
from hub.outbound.guard import EgressPolicy
from hub.outbound.retry import NO_RETRY, RetryPolicy, retry_until, send_with_retry, stable_key
from hub.rules.actions import ActionContext, ActionSpec, Executor
from hub.webhooks.signatures import decode_whsec, standard_webhook_signature

__all__ = ["WebhookSigner", "WebhookFailed", "webhook_post_action", "webhook_post_spec", "WEBHOOK_POST", "CORE_ACTIONS"]

WEBHOOK_POST = "webhook.post"
#: The action types the core provides, with their required parameters.
CORE_ACTIONS: dict[str, tuple[str, ...]] = {WEBHOOK_POST: ("url",)}
#: Largest body the action sends (a rendered template or the event).
MAX_BODY = 1024 * 1024
#: How much of the receiver's answer is read (then the connection is let go).
MAX_ANSWER_BYTES = 4096
#: Headers a rule may not set: they are the signature's, or the transport's.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                              "webhook-id", "webhook-timestamp", "webhook-signature"})
USER_AGENT = "callhub-webhooks/1"


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


def _body(params: dict[str, Any], event: dict[str, Any]) -> tuple[bytes, str]:
    body = params.get("body", event)
    if isinstance(body, str):
        content, kind = body.encode(), "text/plain; charset=utf-8"
    else:
        content, kind = orjson.dumps(body), "application/json"
    if len(content) > MAX_BODY:
        raise InvalidEvent(f"webhook.post body is {len(content)} bytes; the limit is {MAX_BODY}")
    return content, params.get("content_type", kind)


def _headers(params: dict[str, Any]) -> dict[str, str]:
    headers = params.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise InvalidEvent("webhook.post headers must be a table of strings")
    reserved = sorted(k for k in headers if k.lower() in RESERVED_HEADERS)
    if reserved:
        raise InvalidEvent(f"webhook.post may not set {', '.join(reserved)}")
    return dict(headers)


def webhook_post_action(policy: EgressPolicy, signer: WebhookSigner, http: httpx.AsyncClient,
                        retry: RetryPolicy) -> Executor:
    """`webhook.post` (`url`, optional `body`, `headers`, `content_type`): POST, signed, retried."""

    async def run(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        url = params.get("url")
        if not isinstance(url, str):
            raise InvalidEvent("webhook.post needs url")
        content, content_type = _body(params, dict(context.event))
        headers = {"User-Agent": USER_AGENT, **_headers(params), "Content-Type": content_type}
        msg_id = stable_key(context.key, prefix="msg")
        target = await policy.resolve(url)

        def build() -> httpx.Request:  # signed afresh per try: the timestamp must be current
            return target.pinned_request("POST", headers={**headers, **signer.headers(msg_id, content)},
                                         content=content)

        try:
            # Only the status is kept: read no more of the answer than a few kilobytes.
            response = await send_with_retry(http, build, retry, max_response=MAX_ANSWER_BYTES, truncate=True)
        except httpx.HTTPError as exc:
            raise WebhookFailed(f"{target.host} could not be reached: {type(exc).__name__}",
                                webhook_id=msg_id) from None
        # The receiver's answer is not kept: action.* events go to every subscriber that sees them,
        # and a receiver may echo what it was sent (headers and their credentials included).
        if not response.is_success:
            raise WebhookFailed(f"{target.host} answered {response.status_code}", status=response.status_code,
                                webhook_id=msg_id)
        return {"status": response.status_code, "webhook_id": msg_id}

    return run


def webhook_post_spec(config: WebhookActionConfig, policy: EgressPolicy, secret: str,
                      http: httpx.AsyncClient) -> ActionSpec:
    retry = retry_until(config.retry_for) if config.retry_for > 0 else NO_RETRY
    return ActionSpec(WEBHOOK_POST, webhook_post_action(policy, WebhookSigner(secret), http, retry),
                      idempotent=True, group="webhook", required=CORE_ACTIONS[WEBHOOK_POST], describe=_target_host)


def _target_host(params: Mapping[str, Any]) -> dict[str, Any]:
    """Only the host: a webhook's URL may carry a token in its path or query, its headers a key."""
    url = params.get("url")
    try:
        host = urlsplit(url).hostname if isinstance(url, str) else None
    except ValueError:
        host = None
    return {"host": host}
