"""Every error the hub raises on purpose, and how each maps to an HTTP answer.

    HubError                      status, code, message
    ├── BadRequest                400 (malformed JSON, bad query parameters)
    ├── Unauthorized              401 (no or bad credentials, expired token)
    ├── Forbidden                 403 (credentials valid, role or scope not allowed)
    ├── NotFound                  404
    ├── MethodNotAllowed          405
    ├── PayloadTooLarge           413
    ├── UnsupportedMediaType      415
    ├── InvalidEvent              422 (JSON is fine, the event is not)
    ├── UpgradeRequired           426 (plain HTTP to the WebSocket endpoint)
    ├── TooManyRequests           429 (a per-credential limit is reached)
    └── Unavailable               503 (store not writable, hub shutting down)

Handlers raise these; `hub.app` turns them into `{"error": {"code", "message"}}` in one place.
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update(self.details)
        return {"error": error}


class BadRequest(HubError):
    status_code = 400
    code = "bad_request"


class Unauthorized(HubError):
    status_code = 401
    code = "unauthorized"


class Forbidden(HubError):
    status_code = 403
    code = "forbidden"


class NotFound(HubError):
    status_code = 404
    code = "not_found"


class MethodNotAllowed(HubError):
    status_code = 405
    code = "method_not_allowed"


class PayloadTooLarge(HubError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(HubError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidEvent(HubError):
    status_code = 422
    code = "invalid_event"


class UpgradeRequired(HubError):
    status_code = 426
    code = "upgrade_required"


class TooManyRequests(HubError):
    status_code = 429
    code = "too_many_requests"


class Unavailable(HubError):
    status_code = 503
    code = "unavailable"
