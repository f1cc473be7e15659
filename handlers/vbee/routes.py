"""Vbee's HTTP surface on the hub: `POST /v1/campaigns/{campaign_id}/contacts` (admin).

Body `{"contacts": [{"phone_number": ..., "ho_ten": ..., <tag>: ...}, ...]}`. Each number is
checked with `hub.phone.parse_phone` (any form) and sent to Vbee as `[vbee] phone_format` writes
it (E.164 by default, `+84987654321`, the form Vbee answers with), in batches of
`[vbee] batch_size`, each batch once (adding is not idempotent).
The answer says, per contact (by its `index` in the request), what happened:

    200 {"added":    [{"index", "phone_number", "contact_id", "tags"}],
         "rejected": [{"index", "phone_number", "reason", ...}]}

Rejected locally: not an object, a bad number, a tag that is not a string/number/boolean, the
same number earlier in the request. Rejected by Vbee: a batch it refused (1402, 1403) or the
contacts of a batch it silently dropped. When Vbee cannot be reached, or refuses our
credentials, no further batch is sent and the rest are rejected as not sent; if nothing at all
was added the answer is that error (502) instead. Every added contact is recorded as a
`campaign.contact.added` event (its `phone_number` in the normal form, as in every event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from handlers.vbee.client import VbeeAuthError, VbeeClient, VbeeError, VbeeUnavailable
from handlers.vbee.normalize import SOURCE
from hub.plugin import (
    HubError,
    InvalidEvent,
    InvalidPhoneNumber,
    JSONResponse,
    NotFound,
    Phone,
    PhoneForm,
    PluginContext,
    Publish,
    described,
    hub_event,
    json_body,
    normal_number,
    ok,
    operation,
    parse_json,
    parse_phone,
    read_body,
    require_json,
)

logger = logging.getLogger("callhub.vbee")

__all__ = ["routes", "MAX_CONTACTS", "MAX_BODY"]

#: Most contacts in one request; more is a 422 (split the list).
MAX_CONTACTS = 10_000
#: Largest request body: 10,000 contacts with a few tags each.
MAX_BODY = 8 * 1024 * 1024
#: Longest campaign id accepted in the path.
MAX_CAMPAIGN_ID = 128
ADDED_EVENT = "campaign.contact.added"


@dataclass
class _Pending:
    index: int
    phone: Phone
    #: As sent to Vbee (`phone_format`).
    phone_number: str
    tags: dict[str, Any]


@dataclass
class _Outcome:
    added: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, index: int, phone_number: Any, reason: str, **extra: Any) -> None:
        self.rejected.append({"index": index, "phone_number": phone_number, "reason": reason, **extra})


def routes(client: VbeeClient | None, context: PluginContext, *, batch_size: int,
           phone_format: PhoneForm) -> list[Route]:
    authenticate, publish = context.authenticate, context.publish

    async def add_contacts(request: Request) -> Response:
        authenticate(request).require("admin")
        if client is None:
            raise NotFound("the Vbee API is not configured: set [vbee] api_key and api_secret")
        campaign_id = request.path_params["campaign_id"]
        if not campaign_id or len(campaign_id) > MAX_CAMPAIGN_ID:
            raise InvalidEvent(f"campaign id must be 1-{MAX_CAMPAIGN_ID} characters", field="campaign_id")
        require_json(request)
        body = parse_json(await read_body(request, MAX_BODY))
        contacts = body.get("contacts") if isinstance(body, dict) else None
        if not isinstance(contacts, list) or not contacts:
            raise InvalidEvent('send {"contacts": [{"phone_number": ..., "ho_ten": ...}, ...]}', field="contacts")
        if len(contacts) > MAX_CONTACTS:
            raise InvalidEvent(f"at most {MAX_CONTACTS} contacts per request, not {len(contacts)}", field="contacts")
        outcome = _Outcome()
        pending = _validate(contacts, outcome, phone_format)
        batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
        stopped: VbeeError | None = None
        for batch in batches:
            if stopped is not None:
                for p in batch:
                    outcome.reject(p.index, p.phone_number, f"not sent: {stopped.message}")
                continue
            try:
                result = await client.add_contacts(campaign_id, [{"phone_number": p.phone_number, **p.tags} for p in batch])
            except (VbeeAuthError, VbeeUnavailable) as exc:
                # Every later batch would fail alike (or pile up timeouts): stop here.
                stopped = exc
                maybe = isinstance(exc, VbeeUnavailable) and exc.maybe_sent
                for p in batch:
                    outcome.reject(p.index, p.phone_number, exc.message, vendor_code=exc.vendor_code,
                                   **({"maybe_added": True} if maybe else {}))
                continue
            except VbeeError as exc:
                for p in batch:
                    outcome.reject(p.index, p.phone_number, exc.message, vendor_code=exc.vendor_code)
                continue
            added = _match(batch, result, outcome)
            await _record(publish, campaign_id, added)
            outcome.added.extend(added)
        if stopped is not None and not outcome.added:
            raise stopped
        outcome.rejected.sort(key=lambda r: r["index"])
        return JSONResponse({"added": outcome.added, "rejected": outcome.rejected})

    return [described(Route("/v1/campaigns/{campaign_id}/contacts", add_contacts, methods=["POST"]), post=ADD_CONTACTS)]


ADD_CONTACTS = operation(
    "Add contacts to a Vbee campaign", tag="vbee", errors=[400, 404, 413, 415, 422, 502],
    description="Each contact's number is checked and sent to Vbee in batches; the answer says which were added "
                "(each also stored as `campaign.contact.added`) and which refused, by their index. docs/VBEE.md.",
    body=json_body({"type": "object", "required": ["contacts"], "properties": {"contacts": {
        "type": "array", "minItems": 1, "maxItems": MAX_CONTACTS,
        "items": {"type": "object", "required": ["phone_number"], "properties": {"phone_number": {"type": "string"}},
                  "additionalProperties": {"description": "a personalization tag, e.g. ho_ten"}}}}}),
    responses={200: ok({"type": "object", "required": ["added", "rejected"], "properties": {
        "added": {"type": "array", "items": {"type": "object", "required": ["contact_id"]}},
        "rejected": {"type": "array", "items": {"type": "object", "required": ["index", "reason"]}}}},
        "What Vbee added and what was refused")},
)


def _validate(contacts: list[Any], outcome: _Outcome, phone_format: PhoneForm) -> list[_Pending]:
    pending: list[_Pending] = []
    seen: dict[str, int] = {}
    for index, contact in enumerate(contacts):
        if not isinstance(contact, dict):
            outcome.reject(index, None, "a contact is an object with a phone_number")
            continue
        raw = contact.get("phone_number")
        try:
            phone = parse_phone(raw, field="phone_number")
        except InvalidPhoneNumber as exc:
            outcome.reject(index, raw, exc.message)
            continue
        tags = {k: v for k, v in contact.items() if k != "phone_number"}
        bad = [k for k, v in tags.items() if not isinstance(v, (str, int, float, bool)) and v is not None]
        if bad:
            outcome.reject(index, raw, f"tag {bad[0]!r} must be a string, number or boolean")
            continue
        if phone.e164 in seen:
            # Vbee would add (and call) the number twice.
            outcome.reject(index, raw, f"the same number as contact {seen[phone.e164]} of this request")
            continue
        seen[phone.e164] = index
        pending.append(_Pending(index, phone, phone.formatted(phone_format), tags))
    return pending


def _vendor_phone(item: dict[str, Any]) -> str | None:
    for key in ("so_dien_thoai", "phone_number"):
        value = item.get(key)
        if isinstance(value, str):
            try:
                return parse_phone(value).e164
            except InvalidPhoneNumber:
                return value
    return None


def _match(batch: Sequence[_Pending], result: list[dict[str, Any]], outcome: _Outcome) -> list[dict[str, Any]]:
    """Pair Vbee's answer with what was sent (by number), so each contact gets its contact_id or a reason."""
    by_phone = {p.phone.e164: p for p in batch}
    added: list[dict[str, Any]] = []
    unmatched: list[dict[str, Any]] = []
    for item in result:
        contact_id = item.get("contact_id")
        sent = by_phone.pop(_vendor_phone(item) or "", None)
        if sent is None or not isinstance(contact_id, (str, int)):
            unmatched.append(item)
            continue
        added.append({"index": sent.index, "phone_number": sent.phone_number, "contact_id": str(contact_id),
                      "tags": sent.tags})
    if unmatched:
        # Vbee answered contacts we cannot pair by number: report them as it sent them, not lose them.
        logger.warning("vbee answered %d contacts that match no number sent", len(unmatched))
        for item in unmatched:
            contact_id = item.get("contact_id")
            if isinstance(contact_id, (str, int)):
                added.append({"index": None, "phone_number": _vendor_phone(item), "contact_id": str(contact_id),
                              "tags": {k: v for k, v in item.items() if k not in ("contact_id", "so_dien_thoai",
                                                                                  "phone_number")}})
    for p in by_phone.values():
        outcome.reject(p.index, p.phone_number, "Vbee did not add this contact (it found the number invalid)")
    return added


async def _record(publish: Publish, campaign_id: str, added: list[dict[str, Any]]) -> None:
    """One `campaign.contact.added` per contact, published together so they commit as one group."""

    async def one(item: dict[str, Any]) -> None:
        number = item["phone_number"]
        data = {"campaign_id": campaign_id, "contact_id": item["contact_id"],
                "phone_number": normal_number(number) or number, "tags": item["tags"]}
        event = hub_event(ADDED_EVENT, data, subject=item["contact_id"])
        event["source"] = SOURCE
        event["id"] = f"added:{campaign_id}:{item['contact_id']}"
        try:
            await publish(event, default_source=SOURCE)
        except HubError as exc:
            logger.warning("campaign.contact.added not recorded for %s: %s", item["contact_id"], exc.message)

    await asyncio.gather(*(one(item) for item in added))
