"""A Vbee result webhook -> a callhub event (the `Normalize` of the built-in `vbee` source).

    a status in `progress_statuses`, or no status  -> campaign.contact.updated
    any other status (the call attempt is over)    -> call.ended (outcome from `status_map`, else `unknown`)

The event id is the dedup key: the kind of event, then the `key` fields (by default campaign,
contact and call attempt), so Vbee redelivering the same report is one event while a second
call attempt to the same contact is another, and a progress report never hides the final one.

A body missing `campaign_id` or `contact_id` is still stored (lossless over strict, as for every
webhook source): its key is then the hash of the raw body, and `data.key` says so. Field values
of the wrong type read as missing; nothing in a JSON object makes this raise but a body that is
not a JSON object at all (422).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from handlers.vbee.config import VbeeConfig, VbeeMapping, status_key
from hub.plugin import EVENT_LIMITS, Delivery, InvalidEvent, call_party, lookup, normal_number, whole_seconds

__all__ = ["SOURCE", "CALL_ENDED", "CONTACT_UPDATED", "UNKNOWN_OUTCOME", "Normalizer"]

logger = logging.getLogger("callhub.vbee")

SOURCE = "vbee"
CALL_ENDED = "call.ended"
CONTACT_UPDATED = "campaign.contact.updated"
UNKNOWN_OUTCOME = "unknown"
#: Key fields without which a report cannot be told apart from another: the body hash stands in.
_REQUIRED_KEY_FIELDS = ("campaign_id", "contact_id")
#: Longest id value taken as is; longer keys are hashed (the event id is limited to 256 characters).
_MAX_KEY = 200
#: A mapping that misses the ids misses them on every delivery: warn on the first and every Nth.
KEYLESS_LOG_EVERY = 1000
_Scalar = str | int | float | bool


def _text(value: object) -> str | None:
    """An id-like value as text: strings and integers; anything else (objects, bools, floats) is missing."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, int):
        return str(value)
    return None


def _url(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None



class Normalizer:
    """Turns deliveries into events per one `[vbee]` config; callable as a `hub.webhooks_in.Normalize`."""

    def __init__(self, config: VbeeConfig) -> None:
        self.config = config
        self.mapping = config.mapping
        self._status_map = config.status_map
        self._progress = frozenset(config.progress_statuses)
        self._not_tags = _not_tags(config.mapping)
        self.keyless = 0

    def __call__(self, delivery: Delivery) -> dict[str, Any]:
        return self.event(delivery.payload, delivery.body_hash())

    def first(self, body: dict[str, Any], paths: list[str]) -> object:
        for path in paths:
            value = lookup(body, path)
            if value is not None and value != "":
                return value
        return None

    def tags(self, body: dict[str, Any]) -> dict[str, _Scalar]:
        """Personalization tags: members of the tag objects, then top-level ones (which win)."""
        tags: dict[str, _Scalar] = {}
        for path in self.mapping.tags:
            holder = lookup(body, path)
            if isinstance(holder, dict):
                tags.update(_scalars(holder, self._not_tags))
        if self.mapping.top_level_tags:
            tags.update(_scalars(body, self._not_tags))
        return tags

    def event(self, body: object, body_hash: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidEvent(f"a Vbee webhook body must be a JSON object, not {type(body).__name__}")
        m = self.mapping
        fields: dict[str, str | None] = {
            "campaign_id": _text(self.first(body, m.campaign_id)),
            "contact_id": _text(self.first(body, m.contact_id)),
            "call_id": _text(self.first(body, m.call_id)),
            "attempt": _text(self.first(body, m.attempt)),
            "phone_number": _text(self.first(body, m.phone_number)),
        }
        raw_status = self.first(body, m.status)
        status = raw_status.strip() if isinstance(raw_status, str) and raw_status.strip() else None
        if status is None and isinstance(raw_status, int) and not isinstance(raw_status, bool):
            status = str(raw_status)
        fields["status"] = status
        finished = status is not None and status_key(status) not in self._progress
        kind = "ended" if finished else f"status:{status_key(status) if status else '-'}"
        key, key_source = self.key(kind, fields, body, body_hash)
        tags = self.tags(body)
        campaign_id, contact_id = fields["campaign_id"], fields["contact_id"]
        data: dict[str, Any]
        subject: str | None
        if finished:
            assert status is not None
            call_id = fields["call_id"] or _synthetic_call_id(campaign_id, contact_id, fields["attempt"]) or key
            name = self.first(body, m.name)
            data = {
                "call_id": call_id,
                "direction": "outbound",
                "agent": None,
                # The caller is the campaign's own number, which Vbee's API never names.
                "from": call_party(None),
                "to": call_party(fields["phone_number"], name),
                "campaign_id": campaign_id,
                "contact_id": contact_id,
                "status": status,
                "outcome": self._status_map.get(status_key(status), UNKNOWN_OUTCOME),
                "duration_s": whole_seconds(self.first(body, m.duration)),
                "recording": _url(self.first(body, m.recording)),
                "tags": tags,
            }
            subject = call_id
        else:
            data = {
                "campaign_id": campaign_id,
                "contact_id": contact_id,
                "phone_number": normal_number(fields["phone_number"]) or fields["phone_number"],
                "status": status,
                "tags": tags,
            }
            subject = contact_id
        if key_source != "fields":
            data["key"] = key_source
        data["raw"] = body
        event: dict[str, Any] = {
            "type": CALL_ENDED if finished else CONTACT_UPDATED,
            "id": key,
            "source": SOURCE,
            "data": data,
        }
        if subject and len(subject) <= EVENT_LIMITS["subject"]:
            event["subject"] = subject
        return event

    def key(self, kind: str, fields: dict[str, str | None], body: dict[str, Any],
            body_hash: str) -> tuple[str, str]:
        """The event id, and where it came from: `fields`, or `body-hash` when a required field is missing."""
        parts: list[str] = []
        missing: list[str] = []
        for item in self.config.key:
            value = _text(lookup(body, item[2:])) if item.startswith("$.") else fields.get(item)
            if value is None:
                if item in _REQUIRED_KEY_FIELDS:
                    missing.append(item)
                continue
            parts.append(value)
        if missing or not parts:
            if self.keyless % KEYLESS_LOG_EVERY == 0:
                logger.warning("vbee webhook without %s: deduplicated by its body hash (%d so far; see docs/VBEE.md)",
                               " and ".join(missing) or "any key field", self.keyless + 1)
            self.keyless += 1
            return f"{kind}:sha256:{body_hash}", "body-hash"
        key = kind + ":" + ":".join(parts)
        if len(key) > _MAX_KEY:
            key = f"{kind}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
        return key, "fields"


def _synthetic_call_id(campaign_id: str | None, contact_id: str | None, attempt: str | None) -> str | None:
    if campaign_id is None or contact_id is None:
        return None
    return f"{campaign_id}:{contact_id}" + (f":{attempt}" if attempt else "")


def _not_tags(mapping: VbeeMapping) -> frozenset[str]:
    """Member names that hold mapped fields or tag objects, and `not_tags`; the name (`ho_ten`) stays a tag."""
    names = set(mapping.not_tags)
    for paths in (mapping.campaign_id, mapping.contact_id, mapping.phone_number, mapping.status,
                  mapping.duration, mapping.recording, mapping.call_id, mapping.attempt):
        names.update(p.rsplit(".", 1)[-1] for p in paths)
    names.update(p.split(".", 1)[0] for p in mapping.tags)
    names.update(p.rsplit(".", 1)[-1] for p in mapping.tags)
    return frozenset(names)


def _scalars(obj: dict[str, Any], skip: frozenset[str]) -> dict[str, _Scalar]:
    return {k: v for k, v in obj.items() if k not in skip and isinstance(v, (str, int, float, bool))}
