"""The `webhook.post` rule action: the triggering event, or a template, POSTed by the one sender.

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
until `retry_for`). Targets pass the SSRF guard (`hub.outbound.guard`) in `hub.webhooks.sender`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from hub.config import WebhookActionConfig
from hub.exceptions import InvalidEvent
from hub.outbound.retry import NO_RETRY, retry_until, stable_key
from hub.rules.actions import ActionContext, ActionSpec, Executor
from hub.webhooks.sender import WebhookFailed, WebhookSender, WebhookSigner

__all__ = ["webhook_post_spec", "WEBHOOK_POST", "CORE_ACTIONS"]

WEBHOOK_POST = "webhook.post"
#: The action types the core provides, with their required parameters.
CORE_ACTIONS: dict[str, tuple[str, ...]] = {WEBHOOK_POST: ("url",)}
#: Largest body the action sends (a rendered template or the event).
MAX_BODY = 1024 * 1024
#: Headers a rule may not set: they are the signature's, or the transport's.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                              "webhook-id", "webhook-timestamp", "webhook-signature"})


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


def webhook_post_spec(config: WebhookActionConfig, sender: WebhookSender, secret: str) -> ActionSpec:
    """`webhook.post` (`url`, optional `body`, `headers`, `content_type`): POSTed by the one signed,
    SSRF-guarded sender, retried until `retry_for`, with a `webhook-id` derived from the action's key
    (the same on every try and after a restart, so receivers deduplicate on it)."""
    retry = retry_until(config.retry_for) if config.retry_for > 0 else NO_RETRY
    signer = WebhookSigner(secret)

    async def run(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        url = params.get("url")
        if not isinstance(url, str):
            raise InvalidEvent("webhook.post needs url")
        content, content_type = _body(params, dict(context.event))
        msg_id = stable_key(context.key, prefix="msg")
        answer = await sender.post(url, content, msg_id=msg_id, signer=signer, retry=retry,
                                   headers={**_headers(params), "Content-Type": content_type})
        # The receiver's answer is not kept: action.* events go to every subscriber that sees them,
        # and a receiver may echo what it was sent (headers and their credentials included).
        if not 200 <= answer.status < 300:
            host = urlsplit(url).hostname
            raise WebhookFailed(f"{host} answered {answer.status}", status=answer.status, webhook_id=msg_id)
        return {"status": answer.status, "webhook_id": msg_id}

    executor: Executor = run
    return ActionSpec(WEBHOOK_POST, executor, idempotent=True, group="webhook", required=CORE_ACTIONS[WEBHOOK_POST],
                      describe=_target_host)


def _target_host(params: Mapping[str, Any]) -> dict[str, Any]:
    """Only the host: a webhook's URL may carry a token in its path or query, its headers a key."""
    url = params.get("url")
    try:
        host = urlsplit(url).hostname if isinstance(url, str) else None
    except ValueError:
        host = None
    return {"host": host}
