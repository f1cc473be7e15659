"""AntRing request signatures: the `hash` every open-API request carries.

The vendor's rule: `hash` is the sha256 (hex) of the request's parameters, those present only,
in the order the endpoint documents, followed by the app secret. The two language versions of
the docs disagree on the `/histories` order; the vendor's worked example (appId first) is the
one that verifies, so that order is used here.

Pure functions for the client. The simulator checks hashes with code of its own, written from
the document, so that a mistake here cannot pass because the simulator shares it.
"""

from __future__ import annotations

import hashlib

__all__ = ["app_hash", "histories_hash", "recording_hash"]


def _sha256_hex(*parts: str) -> str:
    return hashlib.sha256("".join(parts).encode("utf-8")).hexdigest()


def app_hash(app_id: str, app_secret: str) -> str:
    """`x-auth-app-hash` for `auth_token` and `click-to-call`: sha256(appId + appSecret)."""
    return _sha256_hex(app_id, app_secret)


def histories_hash(
    app_id: str,
    app_secret: str,
    created_from: str,
    created_to: str,
    limit: int | str | None = None,
    page: int | str | None = None,
) -> str:
    """`hash` for `/call/histories`: sha256(appId + created_from + created_to [+ limit] [+ page] + appSecret).

    `limit` and `page` take part only when the request carries them (None = absent), in their
    textual form exactly as sent in the query string.
    """
    parts = [app_id, created_from, created_to]
    parts += [str(value) for value in (limit, page) if value is not None]
    return _sha256_hex(*parts, app_secret)


def recording_hash(app_id: str, media: str, app_secret: str) -> str:
    """`hash` for `/call/play_recording`: sha256(appId + media + appSecret)."""
    return _sha256_hex(app_id, media, app_secret)

