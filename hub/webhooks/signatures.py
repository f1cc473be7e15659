"""Webhook signatures: verifying what senders sign, while the body streams in (and signing what the hub sends).

Verification runs in two steps, so that a request without valid credentials is refused before
its body is read, and a signed body is hashed as it arrives rather than after it is buffered:

    check = begin_…(headers…)   # 401 now if the credentials are missing, malformed or stale
    check.update(chunk) …       # for each chunk of the body
    check.finish()              # 401 if the signature does not match the body

Three schemes, each constant-time:

- shared token: `?token=` or `Authorization: Bearer`;
- HMAC-SHA256 of the raw body (or of `<timestamp>.<body>`, see `SourceConfig.signed`), hex or
  base64, in a configurable header; an optional `sha256=` style prefix is ignored;
- Standard Webhooks (https://www.standardwebhooks.com): headers `webhook-id`,
  `webhook-timestamp`, `webhook-signature` (`v1,<base64>` entries, space separated), the
  signature an HMAC-SHA256 of `id.timestamp.body` keyed with the base64 part of a `whsec_`
  secret; timestamps more than `tolerance` seconds away from now are refused.

Token and HMAC sources may also name a timestamp header (unix seconds), refused outside the
same tolerance: a replay window for senders that send one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from typing import Protocol

from hub.exceptions import Unauthorized

__all__ = [
    "SignatureError",
    "BodyCheck",
    "NO_BODY_CHECK",
    "begin_token",
    "begin_hmac_sha256",
    "begin_standard_webhook",
    "check_timestamp",
    "standard_webhook_signature",
    "decode_whsec",
    "STANDARD_WEBHOOKS_TOLERANCE",
]

#: Standard Webhooks' recommended tolerance for `webhook-timestamp`.
STANDARD_WEBHOOKS_TOLERANCE = 300.0
#: A signature header longer than this is refused before any parsing.
MAX_SIGNATURE_HEADER = 4096
#: Signatures compared per request (Standard Webhooks allows several, space separated).
MAX_SIGNATURES = 16
#: `sha256=`, `v1=`: a scheme label in front of the signature value.
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,15}=(?=[^=])")


class SignatureError(Unauthorized):
    """The request is not signed by whom it claims; `reason` is safe to count and log."""

    code = "bad_signature"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BodyCheck(Protocol):
    """What verifies a body as it streams in: `update` per chunk, then `finish` (raises `SignatureError`)."""

    def update(self, chunk: bytes) -> None: ...

    def finish(self) -> None: ...


class _NoBodyCheck:
    """Schemes that sign nothing in the body (a token): all was checked before the body."""

    def update(self, chunk: bytes) -> None:
        pass

    def finish(self) -> None:
        pass


NO_BODY_CHECK: BodyCheck = _NoBodyCheck()


class _HmacBodyCheck:
    """HMAC-SHA256 over `prefix + body`, compared with every signature the sender gave."""

    __slots__ = ("_mac", "_candidates")

    def __init__(self, key: bytes, prefix: bytes, candidates: list[bytes]) -> None:
        self._mac = hmac.new(key, prefix, hashlib.sha256)
        self._candidates = candidates

    def update(self, chunk: bytes) -> None:
        self._mac.update(chunk)

    def finish(self) -> None:
        expected = self._mac.digest()
        matched = False
        for candidate in self._candidates:  # no early exit: every candidate is compared
            matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise SignatureError("signature does not match the body", reason="mismatch")


def check_timestamp(value: str | None, tolerance: float, *, now: float | None = None, header: str = "timestamp") -> str:
    """`value` as sent, if it is a unix time within `tolerance` seconds of now; `SignatureError` otherwise."""
    if not value:
        raise SignatureError(f"missing {header}", reason="missing")
    try:
        sent = int(value)
    except ValueError:
        raise SignatureError(f"{header} is not a unix time in seconds", reason="malformed") from None
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance:
        raise SignatureError(f"{header} is outside the tolerance (stale or replayed)", reason="stale")
    return value


def begin_token(presented: str | None, secret: str) -> BodyCheck:
    if not presented:
        raise SignatureError("missing token: send ?token= or Authorization: Bearer", reason="missing")
    if not hmac.compare_digest(presented.encode(), secret.encode()):
        raise SignatureError("wrong token", reason="mismatch")
    return NO_BODY_CHECK


def _decodings(value: str) -> list[bytes]:
    """A signature as the bytes it may stand for: hex, and base64 (standard or URL-safe alphabet)."""
    found: list[bytes] = []
    try:
        found.append(bytes.fromhex(value))
    except ValueError:
        pass
    for alphabet in (None, b"-_"):
        try:
            found.append(base64.b64decode(value, altchars=alphabet, validate=True))
        except (binascii.Error, ValueError):
            pass
    return found


def begin_hmac_sha256(header_value: str | None, secret: str, *, prefix: bytes = b"") -> BodyCheck:
    """Check the signature header's shape now; the body (after `prefix`) is hashed as it arrives."""
    if not header_value:
        raise SignatureError("missing signature header", reason="missing")
    if len(header_value) > MAX_SIGNATURE_HEADER:
        raise SignatureError("signature header too long", reason="malformed")
    value = header_value.strip()
    label = _LABEL.match(value)
    if label:  # `sha256=<hex or base64>`; base64's own `=` only ever pads its end
        value = value[label.end():]
    candidates = _decodings(value)
    if not candidates:
        raise SignatureError("signature is neither hex nor base64", reason="malformed")
    return _HmacBodyCheck(secret.encode(), prefix, candidates)


def decode_whsec(secret: str) -> bytes:
    """The key bytes of a Standard Webhooks secret (`whsec_<base64>`)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def standard_webhook_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def begin_standard_webhook(
    *,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    key: bytes,
    tolerance: float = STANDARD_WEBHOOKS_TOLERANCE,
    now: float | None = None,
) -> BodyCheck:
    if not msg_id or not timestamp or not signature:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature", reason="missing")
    if len(signature) > MAX_SIGNATURE_HEADER or len(msg_id) > MAX_SIGNATURE_HEADER:
        raise SignatureError("signature header too long", reason="malformed")
    check_timestamp(timestamp, tolerance, now=now, header="webhook-timestamp")
    candidates: list[bytes] = []
    for entry in signature.split()[:MAX_SIGNATURES]:
        version, _, value = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidates.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not candidates:
        raise SignatureError("no v1 entry in webhook-signature", reason="malformed")
    return _HmacBodyCheck(key, f"{msg_id}.{timestamp}.".encode(), candidates)
