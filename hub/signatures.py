"""Webhook signatures: verifying what senders sign (and, later, signing what the hub sends).

Three schemes, each constant-time:

- shared token: `?token=` or `Authorization: Bearer`;
- HMAC-SHA256 of the raw body, hex or base64, in a configurable header (an optional
  `sha256=` style prefix is ignored);
- Standard Webhooks (https://www.standardwebhooks.com): headers `webhook-id`,
  `webhook-timestamp`, `webhook-signature` (`v1,<base64>` entries, space separated), the
  signature an HMAC-SHA256 of `id.timestamp.body` keyed with the base64 part of a `whsec_`
  secret; timestamps more than `tolerance` seconds away from now are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from hub.exceptions import Unauthorized

__all__ = [
    "SignatureError",
    "check_token",
    "check_hmac_sha256",
    "check_standard_webhook",
    "standard_webhook_signature",
    "decode_whsec",
    "STANDARD_WEBHOOKS_TOLERANCE",
]

#: Standard Webhooks' recommended tolerance for `webhook-timestamp`.
STANDARD_WEBHOOKS_TOLERANCE = 300.0
#: A signature header longer than this is refused before any parsing.
MAX_SIGNATURE_HEADER = 4096


class SignatureError(Unauthorized):
    """The request is not signed by whom it claims; `reason` is safe to count and log."""

    code = "bad_signature"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_token(presented: str | None, secret: str) -> None:
    if not presented:
        raise SignatureError("missing token: send ?token= or Authorization: Bearer", reason="missing")
    if not hmac.compare_digest(presented.encode(), secret.encode()):
        raise SignatureError("wrong token", reason="mismatch")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def check_hmac_sha256(body: bytes, header_value: str | None, secret: str) -> None:
    if not header_value:
        raise SignatureError("missing signature header", reason="missing")
    if len(header_value) > MAX_SIGNATURE_HEADER:
        raise SignatureError("signature header too long", reason="malformed")
    value = header_value.strip()
    if "=" in value[:12] and not value.endswith("="):
        value = value.split("=", 1)[1]  # `sha256=<hex>`
    expected = _hmac(secret.encode(), body)
    candidates = []
    try:
        candidates.append(bytes.fromhex(value))
    except ValueError:
        pass
    try:
        candidates.append(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        pass
    if not candidates:
        raise SignatureError("signature is neither hex nor base64", reason="malformed")
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("signature does not match the body", reason="mismatch")


def decode_whsec(secret: str) -> bytes:
    """The key bytes of a Standard Webhooks secret (`whsec_<base64>`)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def standard_webhook_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    mac = _hmac(key, f"{msg_id}.{timestamp}.".encode() + body)
    return "v1," + base64.b64encode(mac).decode()


def check_standard_webhook(
    body: bytes,
    *,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    key: bytes,
    tolerance: float = STANDARD_WEBHOOKS_TOLERANCE,
    now: float | None = None,
) -> None:
    if not msg_id or not timestamp or not signature:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature", reason="missing")
    if len(signature) > MAX_SIGNATURE_HEADER:
        raise SignatureError("signature header too long", reason="malformed")
    try:
        sent = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not a number", reason="malformed") from None
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance:
        raise SignatureError("webhook-timestamp is outside the tolerance (stale or replayed)", reason="stale")
    expected = standard_webhook_signature(key, msg_id, timestamp, body).split(",", 1)[1].encode()
    for entry in signature.split():
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value.encode()):
            return
    raise SignatureError("no webhook-signature entry matches", reason="mismatch")
