"""A faithful AntCRM (apiring) on loopback: tickets and contacts, for the tests and the demo.

What it does as the vendor documents it:
- every request must carry the pre-agreed secret in the `apikey` header;
- `POST /tickets` requires `title`, `SLA` and `contact` (`{"id"}` of a known contact, or
  `{"name", "phones"/"emails": [{type, value}]}`), defaults `priority` to Medium, answers
  `{"success": 1, "TicketId": N}`; `GET /tickets` lists them (`TicketId`, `page`, `limit`);
- `POST /contacts` requires `name` and `customerIdApiRing`, defaults `contactType` to lead,
  `type` to "0" and `gender` to "2", answers `{"success": 1, "leadId": N}` (or `customerId`
  for a customer); `GET /contacts` filters by `contactType`, `type`, `phone`, `customerId`,
  `leadId`, `email`, pages by `page`/`limit` (at most 20 a page) and answers a bare list.

What the vendor leaves undocumented, and what this simulator does (each an assumption):
- Errors answer `{"success": 0, "message": ...}` (AntBuddy's AntRing API answers
  `{"success": false, "message"}`; AntCRM's successes say `"success": 1`): 401 for a missing
  or wrong `apikey`, 400 for bad input, with the messages below.
- De-duplication, "like a careful CRM": a second ticket with the same `ticketIdApiRing`, or a
  second contact with the same `customerIdApiRing`, creates nothing and answers the id of the
  first.
- Phone search is exact, as a plain database's: `?phone=` finds the contacts holding that very
  string (`0912345678` does not find a contact saved as `+84912345678`). The document does not
  say AntCRM normalises numbers, so the hub must ask in the form a contact was saved in; it tries
  each form (docs/ANTCRM.md).
- Contacts carry an object id `id` (the doc's other answers show one; tickets take it as
  `contact.id`); the doc's garbled social-network field ("in the") is left out.
- `PUT`/`DELETE` and the other resources (opportunities, products, points) are not simulated.

Misbehaviour on demand: `fail_next` (answer 5xx, creating nothing), `fail_after_create`
(create, then answer 500: the answer is lost), `delay` (seconds before every answer).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.simulation import misbehave

__all__ = ["SimState", "build_app", "DEFAULT_API_KEY", "MAX_PAGE_SIZE"]

DEFAULT_API_KEY = "sim-antcrm-apikey-0123456789abcdef"
#: "each page has a maximum of 20 customers" (the vendor's doc).
MAX_PAGE_SIZE = 20
_SEPARATORS = re.compile(r"[\s.\-()]")
#: The first ids handed out (the doc's examples are in this range).
FIRST_TICKET_ID = 9457
FIRST_LEAD_ID = 2964
FIRST_CUSTOMER_ID = 475


def _now_ms() -> int:
    return int(time.time() * 1000)


def _object_id() -> str:
    return secrets.token_hex(12)


class _Invalid(Exception):
    """Bad input: answered 400 with this message."""


@dataclass
class SimState:
    """Everything the simulated AntCRM knows, and the knobs that make it misbehave.

    Mutate it freely from tests (the server reads it per request); `tickets` and `contacts`
    are guarded by `lock`.
    """

    api_keys: set[str] = field(default_factory=lambda: {DEFAULT_API_KEY})
    #: Every ticket created, as `GET /tickets` answers it (plus `ticketIdApiRing`).
    tickets: list[dict[str, Any]] = field(default_factory=list)
    #: Every contact, as `GET /contacts` answers it (plus `customerIdApiRing`).
    contacts: list[dict[str, Any]] = field(default_factory=list)
    #: Every request: {"method", "path", "query", "body", "apikey": "ok" | "missing" | "wrong"}.
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Creations answered with the id of an earlier one (same ticketIdApiRing/customerIdApiRing).
    deduplicated: int = 0
    # -- misbehaviour --
    #: Answer the next N requests `fail_status` without doing anything...
    fail_next: int = 0
    fail_status: int = 503
    #: ...once this many more requests have been served normally.
    fail_skip: int = 0
    #: Create the ticket or contact of the next N creations, then answer 500 anyway.
    fail_after_create: int = 0
    #: Seconds to wait before answering each request.
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _next_ticket: int = FIRST_TICKET_ID
    _next_lead: int = FIRST_LEAD_ID
    _next_customer: int = FIRST_CUSTOMER_ID

    @property
    def api_key(self) -> str:
        return next(iter(self.api_keys))

    def requests_to(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def error(self, status: int, message: str) -> JSONResponse:
        return JSONResponse({"success": 0, "message": message}, status_code=status)

    # -- contacts ---------------------------------------------------------------------------------

    def add_contact(self, name: str, *, phones: list[str] | None = None, contact_type: str = "lead",
                    customer_id_apiring: str | None = None, **fields: Any) -> dict[str, Any]:
        """Seed a contact (phones given as plain numbers); the contact as `GET /contacts` shows it.

        `scoreAvailable`, `scoreRank` and `rankName` (points and member rank, which the CRM keeps
        itself and `POST /contacts` does not take) may be seeded too.
        """
        loyalty: dict[str, Any] = {k: fields.pop(k) for k in ("scoreAvailable", "scoreRank", "rankName") if k in fields}
        body: dict[str, Any] = {
            "name": name,
            "customerIdApiRing": customer_id_apiring or f"seed-{_object_id()}",
            "contactType": contact_type,
            "phones": [{"type": "Work", "value": p} for p in phones or []],
            **fields,
        }
        contact, _ = self.create_contact(body)
        with self.lock:
            contact.update(loyalty)
        return dict(contact)

    def create_contact(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Validate and store a `POST /contacts` body; (the contact, whether it is new)."""
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _Invalid("name is required")
        code = body.get("customerIdApiRing")
        if isinstance(code, int) and not isinstance(code, bool):
            code = str(code)
        if not isinstance(code, str) or not code.strip():
            raise _Invalid("customerIdApiRing is required")
        contact_type = body.get("contactType", "lead")
        if contact_type not in ("lead", "customer"):
            raise _Invalid("contactType must be lead or customer")
        kind = str(body.get("type", "0"))
        if kind not in ("0", "1"):
            raise _Invalid("type must be 0 (contact) or 1 (account)")
        gender = str(body.get("gender", "2"))
        if gender not in ("0", "1", "2"):
            raise _Invalid("gender must be 0, 1 or 2")
        phones = _entries(body.get("phones"), "phones")
        emails = _entries(body.get("emails"), "emails")
        tags = body.get("tags", [])
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise _Invalid("tags must be a list of strings")
        cus_fields = _cus_fields(body.get("cusFields"))
        with self.lock:
            for existing in self.contacts:
                if existing["customerIdApiRing"] == code:
                    self.deduplicated += 1
                    return existing, False
            now = _now_ms()
            contact: dict[str, Any] = {
                "id": _object_id(),
                "name": name,
                "contactType": contact_type,
                "type": kind,
                "leadId": "",
                "customerId": "",
                "customerIdApiRing": code,
                "dateOfBirth": str(body.get("dateOfBirth") or ""),
                "gender": gender,
                "addresses": list(body.get("addresses") or []),
                "phones": phones,
                "emails": emails,
                "industry": str(body.get("industry") or ""),
                "bgInfo": str(body.get("bgInfo") or ""),
                "stage": str(body.get("stage") or ""),
                "tags": tags,
                "sourceContact": str(body.get("sourceContact") or ""),
                "responsibleStaff": str(body.get("responsibleStaff") or ""),
                "cusFields": cus_fields,
                "scoreAvailable": 0,
                "scoreRank": 0,
                "rankName": "",
                "createdAt": now,
                "updatedAt": now,
            }
            if contact_type == "lead":
                contact["leadId"] = self._next_lead
                self._next_lead += 1
            else:
                contact["customerId"] = self._next_customer
                self._next_customer += 1
            self.contacts.append(contact)
        return contact, True

    def find_contacts(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """The contacts matching every filter of a `GET /contacts` query (unknown filters are ignored)."""
        phone = query.get("phone")
        email = query.get("email", "").strip().lower()
        with self.lock:
            found = []
            for c in self.contacts:
                if "contactType" in query and c["contactType"] != query["contactType"]:
                    continue
                if "type" in query and c["type"] != query["type"]:
                    continue
                if "customerId" in query and str(c["customerId"]) != query["customerId"]:
                    continue
                if "leadId" in query and str(c["leadId"]) != query["leadId"]:
                    continue
                if phone is not None and not any(p["value"] == phone for p in c["phones"]):
                    continue
                if email and not any(e["value"].strip().lower() == email for e in c["emails"]):
                    continue
                found.append(c)
            return [dict(c) for c in found]

    # -- tickets ----------------------------------------------------------------------------------

    def create_ticket(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Validate and store a `POST /tickets` body; (the ticket, whether it is new)."""
        for name in ("title", "SLA"):
            value = body.get(name)
            if not isinstance(value, str) or not value.strip():
                raise _Invalid(f"{name} is required")
        contact = self._ticket_contact(body.get("contact"))
        key = body.get("ticketIdApiRing")
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if key is not None and not isinstance(key, str):
            raise _Invalid("ticketIdApiRing must be a string")
        for name in ("summary", "priority", "group", "category", "status", "resolutionTypeOb"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise _Invalid(f"{name} must be a string")
        if body.get("deal") is not None and not isinstance(body["deal"], dict):
            raise _Invalid("deal must be an object")
        if body.get("files") is not None and not isinstance(body["files"], list):
            raise _Invalid("files must be an array")
        cus_fields = _cus_fields(body.get("cusFields"))
        with self.lock:
            if key:
                for existing in self.tickets:
                    if existing["ticketIdApiRing"] == key:
                        self.deduplicated += 1
                        return existing, False
            now = _now_ms()
            ticket: dict[str, Any] = {
                "SLA": body["SLA"],
                "TicketId": self._next_ticket,
                "ticketIdApiRing": key or "",
                "assignedTo": "",
                "group": body.get("group") or "",
                "category": body.get("category") or "",
                "resolutionTypeOb": body.get("resolutionTypeOb") or "",
                "contact": contact,
                "cusFields": cus_fields,
                "deal": body.get("deal") or {},
                "files": body.get("files") or [],
                "priority": body.get("priority") or "Medium",
                "status": body.get("status") or "New",
                "summary": body.get("summary") or "",
                "title": body["title"],
                "createdAt": now,
                "updatedAt": now,
            }
            self._next_ticket += 1
            self.tickets.append(ticket)
        return ticket, True

    def _ticket_contact(self, contact: object) -> dict[str, Any]:
        if not isinstance(contact, dict) or not contact:
            raise _Invalid("contact is required")
        contact_id = contact.get("id")
        if contact_id is not None:
            with self.lock:
                known = any(c["id"] == contact_id for c in self.contacts)
            if not known:
                raise _Invalid("contact not found")
            return dict(contact)
        name = contact.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _Invalid("contact.name is required")
        phones = _entries(contact.get("phones"), "contact.phones")
        emails = _entries(contact.get("emails"), "contact.emails")
        if not phones and not emails:
            raise _Invalid("contact.phones or contact.emails is required")
        return {**contact, "phones": phones, "emails": emails}


def _entries(value: object, name: str) -> list[dict[str, Any]]:
    """`[{type, value}]` lists (phones, emails), validated."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(e, dict) and isinstance(e.get("value"), str) and e["value"].strip() for e in value
    ):
        raise _Invalid(f"{name} must be an array of {{type, value}}")
    return [{"type": str(e.get("type") or "Work"), "value": e["value"]} for e in value]


def _cus_fields(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in value):
        raise _Invalid("cusFields must be an array of {name, value}")
    return [{"name": f["name"], "value": f.get("value")} for f in value]


def _page(query: dict[str, str]) -> tuple[int, int]:
    try:
        page = int(query.get("page", "1"))
        limit = int(query.get("limit", str(MAX_PAGE_SIZE)))
    except ValueError as exc:
        raise _Invalid("page and limit must be numbers") from exc
    if page < 1 or limit < 1:
        raise _Invalid("page and limit must be positive")
    return page, min(limit, MAX_PAGE_SIZE)


def build_app(state: SimState) -> Starlette:
    """The simulated AntCRM API over `state` (its base URL is wherever it is mounted)."""

    async def gate(request: Request) -> tuple[Any, Response | None]:
        """Log, delay, misbehave, check the apikey: (the JSON body, or the answer to send instead)."""
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = ...
        key = request.headers.get("apikey")
        state.requests.append({
            "method": request.method,
            "path": request.url.path,
            "query": dict(request.query_params),
            "body": None if body is ... else body,
            "apikey": "missing" if not key else "ok" if key in state.api_keys else "wrong",
        })
        if await misbehave(state):
            return body, state.error(state.fail_status, "Service temporarily unavailable")
        if not key:
            return body, state.error(401, "apikey is required")
        if key not in state.api_keys:
            return body, state.error(401, "apikey is invalid")
        if request.method == "POST" and not isinstance(body, dict):
            return body, state.error(400, "body must be a JSON object")
        return body, None

    def created(answer: dict[str, Any], new: bool) -> Response:
        if new and state.fail_after_create > 0:
            state.fail_after_create -= 1
            return state.error(500, "Internal server error")
        return JSONResponse({"success": 1, **answer})

    async def tickets(request: Request) -> Response:
        body, refusal = await gate(request)
        if refusal is not None:
            return refusal
        try:
            if request.method == "POST":
                ticket, new = state.create_ticket(body)
                return created({"TicketId": ticket["TicketId"]}, new)
            query = dict(request.query_params)
            page, limit = _page(query)
        except _Invalid as exc:
            return state.error(400, str(exc))
        with state.lock:
            found = [t for t in state.tickets if "TicketId" not in query or str(t["TicketId"]) == query["TicketId"]]
        return JSONResponse(found[(page - 1) * limit : page * limit])

    async def contacts(request: Request) -> Response:
        body, refusal = await gate(request)
        if refusal is not None:
            return refusal
        try:
            if request.method == "POST":
                contact, new = state.create_contact(body)
                kind = "leadId" if contact["contactType"] == "lead" else "customerId"
                return created({kind: contact[kind]}, new)
            query = dict(request.query_params)
            page, limit = _page(query)
        except _Invalid as exc:
            return state.error(400, str(exc))
        found = state.find_contacts(query)
        return JSONResponse(found[(page - 1) * limit : page * limit])

    return Starlette(routes=[
        Route("/tickets", tickets, methods=["GET", "POST"]),
        Route("/contacts", contacts, methods=["GET", "POST"]),
    ])
