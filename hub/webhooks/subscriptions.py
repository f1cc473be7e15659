"""Outbound webhook subscriptions: what one asks for, its secrets, its state, and its stored document.

A subscription is kept as one JSON document in the outbox (`Outbox.save`):

    {"id", "spec": {url, types, filter, …}, "managed": "api" | "config",
     "secrets": [{"secret": "whsec_…", "expires": null | unix}], "paused_reason": …,
     "disabled": null | {"at", "reason"}, "failing_since": null | unix, "created", "updated"}

`spec` is a `SubscriptionSpec` (hub/config.py), validated the same way whether it came from the
API or from `[[webhooks.subscriptions]]`. Its state is derived: `active`; `paused` (the
subscriber set `enabled = false`); `disabled` (the hub stopped it: the endpoint answered 410, or
failed without a success for `[webhooks] disable_after`). The newest secret is first; an older
one stays in the list, signing beside it, until it expires (`[webhooks] secret_overlap`).
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from hub.config import SubscriptionConfig, SubscriptionSpec
from hub.events import HUB_SOURCE, Event
from hub.exceptions import HubError
from hub.matcher import OPERATORS, Condition, Glob, TypeFilter, compile_conditions, lookup_parts
from hub.webhooks.sender import WebhookSigner

__all__ = ["Subscription", "InvalidSubscription", "new_secret", "new_id", "spec_from", "from_config",
           "HUB_DELIVERY_TYPES", "STATES", "CHANGED"]

#: Published when a subscription changed through the API, so every process sharing the store
#: reloads it (its id and what changed, never a secret); only with a shared store (Redis).
CHANGED = "hub.subscription.changed"
#: The events the delivery engine publishes about a subscription; never delivered to that subscription.
HUB_DELIVERY_TYPES = ("hub.delivery.exhausted", "hub.subscription.disabled", CHANGED)
STATES = ("active", "paused", "disabled")


class InvalidSubscription(HubError):
    status_code = 422
    code = "invalid_subscription"


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_id() -> str:
    return "sub_" + secrets.token_hex(8)


def spec_from(raw: Any) -> SubscriptionSpec:
    """A `SubscriptionSpec` from a client's JSON, or `InvalidSubscription` naming every field at fault."""
    if not isinstance(raw, dict):
        raise InvalidSubscription("a subscription is a JSON object")
    conditions = raw.get("filter")
    if isinstance(conditions, dict):  # JSON keys are dotted paths: every object in it is a table of operators
        for path, test in conditions.items():
            unknown = [k for k in test if k not in OPERATORS] if isinstance(test, dict) else []
            if unknown:
                where = f"filter.{path}.{unknown[0]}"[:200]
                message = f"unknown operator; use one of {', '.join(OPERATORS)} (and a dotted path as the key)"
                raise InvalidSubscription(f"{where}: {message}", problems=[{"field": where, "message": message}])
    try:
        return SubscriptionSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(subscription)"
            message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            problems.append({"field": where, "message": message})
        first = problems[0]
        raise InvalidSubscription(f"{first['field']}: {first['message']}", problems=problems) from None


def from_config(entry: SubscriptionConfig, now: float) -> dict[str, Any]:
    """The document of a subscription declared in `[[webhooks.subscriptions]]`."""
    spec = SubscriptionSpec.model_validate(entry.model_dump(exclude={"id", "secret"}))
    return {"id": entry.id, "spec": spec.model_dump(), "managed": "config",
            "secrets": [{"secret": entry.secret, "expires": None}], "disabled": None, "failing_since": None,
            "created": now, "updated": now}


@dataclass
class Subscription:
    """A subscription's document, with what delivering needs compiled from it."""

    document: dict[str, Any]
    spec: SubscriptionSpec = field(init=False)
    types: TypeFilter = field(init=False)
    conditions: list[Condition] = field(init=False)
    max_ages: list[tuple[Glob, float]] = field(init=False)
    #: The filter in one canonical form: subscriptions with the same one decide an event once.
    filter_key: str = field(init=False)

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Compile the document again (after it changed)."""
        self.spec = SubscriptionSpec.model_validate(self.document["spec"])
        self.types = TypeFilter(tuple(self.spec.types))
        self.conditions = compile_conditions(self.spec.filter)
        self.filter_key = orjson.dumps(self.spec.filter, option=orjson.OPT_SORT_KEYS).decode()
        # The most specific pattern decides: the longest one that matches.
        self.max_ages = [(Glob([p]), s) for p, s in sorted(self.spec.max_age_s.items(), key=lambda i: -len(i[0]))]

    @property
    def id(self) -> str:
        return str(self.document["id"])

    @property
    def managed_by_config(self) -> bool:
        return bool(self.document.get("managed") == "config")

    @property
    def state(self) -> str:
        if self.document.get("disabled"):
            return "disabled"
        return "active" if self.spec.enabled else "paused"

    @property
    def ordered(self) -> bool:
        return self.spec.ordering == "per_call"

    def wants(self, event: Event, body: dict[str, Any], decided: dict[str, bool] | None = None,
              seen: dict[str, object] | None = None) -> bool:
        """Whether the event (already known to match `types`) passes the filter; never the hub's
        own reports about this subscription (a dead endpoint would feed itself). `decided` and
        `seen` memoise, for one event, filter results by `filter_key` and looked-up paths."""
        if event.type in HUB_DELIVERY_TYPES and body.get("source") == HUB_SOURCE:
            data = body.get("data")
            if isinstance(data, dict) and data.get("subscription") == self.id:
                return False
        if not self.conditions:
            return True
        if decided is None:
            return all(c.matches(body, {}) for c in self.conditions)
        result = decided.get(self.filter_key)
        if result is None:
            if seen is None:
                seen = {}
            result = decided[self.filter_key] = all(c.matches(body, seen) for c in self.conditions)
        return result

    def max_age(self, type_: str) -> float | None:
        for glob, seconds in self.max_ages:
            if glob.matches(type_):
                return seconds
        return None

    @staticmethod
    def key_of(body: dict[str, Any]) -> str | None:
        """The ordering key: the event's call."""
        value = lookup_parts(body, ("data", "call_id"))
        return value if isinstance(value, str) and value else None

    # -- secrets ----------------------------------------------------------------------------------

    def signer(self, now: float) -> WebhookSigner:
        """Signs with every secret still in force (during a rotation: the new and the old)."""
        live = [s["secret"] for s in self.document["secrets"] if s["expires"] is None or s["expires"] > now]
        return WebhookSigner(*live)

    def rotate(self, overlap: float, now: float) -> str:
        """A new secret first; the ones in force keep signing for `overlap` seconds more."""
        secret = new_secret()
        until = now + overlap
        kept = [{"secret": s["secret"], "expires": until if s["expires"] is None else min(s["expires"], until)}
                for s in self.document["secrets"] if overlap > 0 and (s["expires"] is None or s["expires"] > now)]
        self.document["secrets"] = [{"secret": secret, "expires": None}, *kept]
        self.document["updated"] = now
        return secret

    # -- what the API shows --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The subscription as the API shows it: never a secret."""
        d = self.document
        out: dict[str, Any] = {"id": self.id, **self.spec.model_dump(), "state": self.state,
                               "managed_by": d.get("managed", "api"),
                               "created": _iso(d["created"]), "updated": _iso(d["updated"])}
        disabled = d.get("disabled")
        out["disabled"] = None if not disabled else {"at": _iso(disabled["at"]), "reason": disabled["reason"]}
        out["failing_since"] = _iso(d["failing_since"]) if d.get("failing_since") else None
        now = time.time()
        out["secret_rotation_ends"] = max((_iso(s["expires"]) for s in d["secrets"][1:]
                                           if s["expires"] is not None and s["expires"] > now), default=None)
        return out


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
