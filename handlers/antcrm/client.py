"""The AntCRM (apiring) client: open tickets, find contacts by phone, create leads.

Every request carries the pre-agreed secret in the `apikey` header. The key is never logged and
never appears in an error, a repr or a URL.

Errors (every one a `hub.exceptions.HubError`, carrying the HTTP `status`, the vendor's
`vendor_message` and the request `path`; never the key or a query string):

    AntCRMError                  502 an answer this client cannot read (a 200 without TicketId)
    ├── AntCRMRejected           502 AntCRM said no: a 4xx, or a 2xx saying `"success": 0`
    │   └── AntCRMAuthError      502 401/403: the apikey is missing or wrong (check [antcrm] api_key)
    └── AntCRMUnavailable        503 5xx or 429 after the retries, no connection, no answer in time

Retries (all through `hub.outbound.send_with_retry`):
- `create_ticket` is retried on 5xx, 429, timeouts and connection errors, with jittered back-off,
  until `retry.deadline` (`[antcrm] retry_for`) has passed since the first try. That is safe only
  because every ticket carries `ticketIdApiRing`, a key the caller derives from what the ticket
  is for (rule and event, see `stable_key`): a retry after a lost answer sends the same key, and
  AntCRM answers the ticket it already has instead of opening a second one. The vendor's doc
  does not say AntCRM deduplicates on `ticketIdApiRing`; we assume it does (see docs/ANTCRM.md).
- `upsert_contact` creates with a stable `customerIdApiRing` and is retried the same way.
- `find_contacts` is tried once: it sits on the screen-pop path, where an answer after the
  deadline is worth nothing. `find_contact` asks in each stored form of the number in turn
  (`lookup_forms`), since AntCRM matches the number as it was saved.

The give-up time is checked after each failed try, so a failing creation ends at most one
back-off (`retry.max_delay`) and one request timeout after `retry_for`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from handlers.antcrm.config import DEFAULT_BASE_URL, ContactType
from hub.plugin import (
    NO_RETRY,
    InvalidPhoneNumber,
    Phone,
    PhoneForm,
    RetryPolicy,
    Unavailable,
    VendorClient,
    VendorError,
    json_or_none,
    parse_phone,
    retry_until,
    send_with_retry,
    stable_key,
    vendor_text,
)

__all__ = [
    "AntCRMClient",
    "AntCRMError",
    "AntCRMRejected",
    "AntCRMAuthError",
    "AntCRMUnavailable",
    "CusFields",
    "DEFAULT_RETRY_FOR",
    "TICKET_EXTRA_FIELDS",
    "CONTACT_EXTRA_FIELDS",
    "creation_retry",
    "compact_customer",
    "contacts_of",
    "has_number",
    "pick_contact",
    "stable_key",
]

logger = logging.getLogger("callhub.antcrm")

TICKETS_PATH = "/tickets"
CONTACTS_PATH = "/contacts"
#: Default give-up time for ticket and lead creation, in seconds (`[antcrm] retry_for`).
DEFAULT_RETRY_FOR = 60.0
#: Optional ticket fields the vendor documents beyond the named parameters of `create_ticket`.
TICKET_EXTRA_FIELDS = frozenset({"deal", "group", "category", "status", "resolutionTypeOb", "files"})
#: Optional contact fields the vendor documents beyond the named parameters of `upsert_contact`.
CONTACT_EXTRA_FIELDS = frozenset({
    "type", "dateOfBirth", "gender", "addresses", "emails", "industry", "bgInfo", "stage", "tags",
    "sourceContact", "responsibleStaff",
})
#: Where a list of contacts may sit if AntCRM wraps it (the doc shows a bare list).
_ENVELOPE_KEYS = ("data", "contacts", "docs", "results", "items")

#: AntCRM custom fields: `{"name": "value"}`, or the vendor's own `[{"name", "value"}]`.
CusFields = Mapping[str, Any] | Sequence[Mapping[str, Any]]
#: The forms a number may be saved in, in the order they are tried after the configured one.
PHONE_FORMS: tuple[PhoneForm, ...] = ("national", "84", "e164")


class AntCRMError(VendorError):
    """AntCRM answered something this client cannot read (base of every AntCRM error)."""

    code = "antcrm_error"
    vendor = "antcrm"


class AntCRMRejected(AntCRMError):
    """AntCRM refused the request (4xx, or `"success": 0`): its message says why. Not retried."""

    code = "antcrm_rejected"


class AntCRMAuthError(AntCRMRejected):
    """AntCRM refused the `apikey` (401/403): check `[antcrm] api_key`."""

    code = "antcrm_auth_error"


class AntCRMUnavailable(AntCRMError, Unavailable):
    """AntCRM failed (5xx, 429), could not be reached, or did not answer in time, through the retries."""

    status_code = 503
    code = "antcrm_unavailable"


def creation_retry(retry_for: float = DEFAULT_RETRY_FOR, *, base_delay: float = 0.5,
                   max_delay: float = 10.0) -> RetryPolicy:
    """Retry creations until `retry_for` seconds after the first try (they are deduplicated by key)."""
    return retry_until(retry_for, base_delay=base_delay, max_delay=max_delay)


def contacts_of(body: object) -> list[dict[str, Any]]:
    """The contacts of a `GET /contacts` answer: a bare list (the doc), or one under `data`, `contacts`, ...

    Raises `ValueError` on anything else: "no contacts" must not be confused with "unreadable".
    """
    if isinstance(body, list):
        return [c for c in body if isinstance(c, dict)]
    if isinstance(body, dict):
        for key in _ENVELOPE_KEYS:
            value = body.get(key)
            if isinstance(value, list):
                return [c for c in value if isinstance(c, dict)]
    raise ValueError("no list of contacts in the answer")


def has_number(contact: Mapping[str, Any], number: Phone) -> bool | None:
    """Whether the contact's `phones` (`[{type, value}]`, or plain strings) hold `number`.

    None when it cannot be told: no phones shown, or one that is not a readable number.
    """
    phones = contact.get("phones")
    unreadable = not isinstance(phones, list) or not phones
    for entry in phones if isinstance(phones, list) else ():
        value = entry.get("value") if isinstance(entry, Mapping) else entry
        try:
            if parse_phone(value).e164 == number.e164:
                return True
        except InvalidPhoneNumber:
            unreadable = True
    return None if unreadable else False


def pick_contact(contacts: Sequence[Mapping[str, Any]], number: Phone) -> dict[str, Any] | None:
    """The contact a call from `number` is most likely from, or None.

    AntCRM's phone search may match loosely, so contacts that hold the number come first, then
    those whose phones cannot be read; contacts whose phones are all other numbers are dropped.
    Among equals a customer (contact or account) wins over a lead, then AntCRM's order.
    """
    matches = [(c, has_number(c, number)) for c in contacts]
    candidates = [c for c, m in matches if m is True] or [c for c, m in matches if m is None]
    if not candidates:
        return None
    customers = [c for c in candidates if c.get("contactType") == "customer"]
    return dict((customers or candidates)[0])


def compact_customer(contact: Mapping[str, Any]) -> dict[str, Any]:
    """What a screen-pop shows: `{name, contactType, leadId, customerId, tags, stage, responsibleStaff,
    scoreRank, rankName, id}` (the member rank, so rules can route VIPs).

    Blank strings become None; `tags` is always a list of strings; `id` is AntCRM's object id
    (`id` or `_id`), the one `create_ticket` takes as `contact.id`.
    """
    tags = contact.get("tags")
    if isinstance(tags, str):
        tags = [tags] if tags else []
    return {
        "name": _blank_none(contact.get("name")),
        "contactType": _blank_none(contact.get("contactType")),
        "leadId": _blank_none(contact.get("leadId")),
        "customerId": _blank_none(contact.get("customerId")),
        "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
        "stage": _blank_none(contact.get("stage")),
        "responsibleStaff": _blank_none(contact.get("responsibleStaff")),
        "scoreRank": _blank_none(contact.get("scoreRank")),
        "rankName": _blank_none(contact.get("rankName")),
        "id": _blank_none(contact.get("id", contact.get("_id"))),
    }


def _blank_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def cus_fields_list(fields: CusFields) -> list[dict[str, Any]]:
    """`cusFields` as AntCRM takes them: `[{"name", "value"}]`."""
    if isinstance(fields, Mapping):
        return [{"name": str(name), "value": value} for name, value in fields.items()]
    return [dict(field) for field in fields]


class AntCRMClient(VendorClient):
    """One AntCRM organisation (its `apikey`) over HTTP. Close it, or use it as an async context manager.

    `timeout` bounds every request; `retry` applies to ticket and lead creation (default:
    `creation_retry()`); at most `max_concurrency` requests are in flight (the connection pool's
    size), others wait for a connection within their timeout. `http` lets the owner share a
    client (it is then not closed here, and its own limits apply).
    """

    vendor = "antcrm"

    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str = "", *, timeout: float,
                 retry: RetryPolicy | None = None, max_concurrency: int = 8,
                 phone_format: PhoneForm = "national", lookup_forms: Sequence[PhoneForm] | None = None,
                 lookup_contact_types: Sequence[ContactType] = (), http: httpx.AsyncClient | None = None) -> None:
        if not api_key:
            raise ValueError("AntCRM needs an api_key")
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        super().__init__(base_url, timeout=timeout, retry=retry if retry is not None else creation_retry(),
                         http=http, limits=limits)
        self._api_key = api_key
        self.phone_format: PhoneForm = phone_format
        self.lookup_forms: tuple[PhoneForm, ...] = tuple(lookup_forms) if lookup_forms else (
            phone_format, *(form for form in PHONE_FORMS if form != phone_format))
        self.lookup_contact_types = tuple(lookup_contact_types)

    def __repr__(self) -> str:
        return f"AntCRMClient(base_url={self.base_url!r})"


    def format_phone(self, phone: Phone) -> str:
        """A number as this client writes it to AntCRM (`phone_format`)."""
        return phone.formatted(self.phone_format)

    def contact_with_phones_formatted(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """`contact` with each readable number in `phones` written as `phone_format` (others as given)."""
        phones = contact.get("phones")
        if not isinstance(phones, list):
            return dict(contact)
        written = []
        for entry in phones:
            value = entry.get("value") if isinstance(entry, Mapping) else None
            try:
                written.append({**entry, "value": self.format_phone(parse_phone(value))})
            except InvalidPhoneNumber:
                written.append(entry)
        return {**contact, "phones": written}

    # -- tickets --------------------------------------------------------------------------------

    async def create_ticket(self, title: str, sla: str, contact: Mapping[str, Any], *, ticket_id_apiring: str,
                            priority: str | None = None, summary: str | None = None,
                            cus_fields: CusFields | None = None, **extra: Any) -> dict[str, Any]:
        """Open a ticket (`POST /tickets`); AntCRM's answer, `{"success": 1, "TicketId": N}`.

        `contact` is `{"id": ...}` (an AntCRM contact) or `{"name", "phones": [{type, value}],
        "emails": [...]}`. `ticket_id_apiring` is the idempotency key: the same key must mean
        the same ticket (it makes the retries safe). `extra` takes the vendor's other fields by
        their names (`TICKET_EXTRA_FIELDS`). What AntCRM requires is checked by AntCRM: a
        refusal is `AntCRMRejected` with its message.
        """
        if not isinstance(ticket_id_apiring, str) or not ticket_id_apiring:
            raise ValueError("ticket_id_apiring must be a non-empty string (the ticket's idempotency key)")
        _check_extra(extra, TICKET_EXTRA_FIELDS, "ticket")
        body: dict[str, Any] = {"title": title, "SLA": sla, "contact": self.contact_with_phones_formatted(contact),
                                "ticketIdApiRing": ticket_id_apiring}
        if priority is not None:
            body["priority"] = priority
        if summary is not None:
            body["summary"] = summary
        if cus_fields is not None:
            body["cusFields"] = cus_fields_list(cus_fields)
        body.update({k: v for k, v in extra.items() if v is not None})
        answer = await self._call("POST", TICKETS_PATH, self.retry, json=body)
        ticket_id = answer.get("TicketId") if isinstance(answer, dict) else None
        if ticket_id is None or isinstance(ticket_id, bool) or ticket_id == "":
            raise AntCRMError("AntCRM's answer to POST /tickets has no TicketId", status=200, path=TICKETS_PATH)
        assert isinstance(answer, dict)
        return answer

    # -- contacts -------------------------------------------------------------------------------

    async def find_contacts(self, phone: str, *, contact_type: ContactType | None = None, form: PhoneForm | None = None,
                            timeout: float | None = None) -> list[dict[str, Any]]:
        """Contacts (leads, contacts, accounts) with this phone number, as AntCRM holds them. One try.

        `phone` may be in any form `hub.phone` reads; it is sent as `form` (default
        `phone_format`). Raises `hub.phone.InvalidPhoneNumber` before sending anything if it is
        not a phone number. `timeout` overrides the client's for this request.
        """
        number = parse_phone(phone, field="phone")
        params = {"phone": number.formatted(form or self.phone_format)}
        if contact_type is not None:
            params["contactType"] = contact_type
        body = await self._call("GET", CONTACTS_PATH, NO_RETRY, params=params, timeout=timeout)
        try:
            return contacts_of(body)
        except ValueError as exc:
            raise AntCRMError(f"unreadable answer to GET /contacts: {exc}", status=200, path=CONTACTS_PATH) from exc

    async def upsert_contact(self, phone: str, *, name: str, customer_id_apiring: str | None = None,
                             contact_type: ContactType = "lead", cus_fields: CusFields | None = None,
                             **extra: Any) -> dict[str, Any]:
        """Make sure AntCRM knows this caller: create a lead (`POST /contacts`) unless a contact has the number.

        An existing contact is left as it is (its data belongs to the agents). Answers
        `{"created", "customerIdApiRing", "leadId", "customerId", "answer"}` where `answer` is
        AntCRM's answer to the creation, or the contact found. `customer_id_apiring` (the
        vendor's required "customer's code") defaults to `callhub-<E.164 digits>`, stable per
        number, so retries and concurrent callers cannot create the caller twice at a careful CRM.
        `extra` takes the vendor's other fields by their names (`CONTACT_EXTRA_FIELDS`).
        """
        number = parse_phone(phone, field="phone")
        _check_extra(extra, CONTACT_EXTRA_FIELDS, "contact")
        key = customer_id_apiring or f"callhub-{number.e164.lstrip('+')}"
        existing = await self._existing(number)
        if existing is not None:
            return _found(existing, key)
        body: dict[str, Any] = {
            "name": name,
            "customerIdApiRing": key,
            "contactType": contact_type,
            "phones": [{"type": "Work", "value": self.format_phone(number)}],
        }
        if cus_fields is not None:
            body["cusFields"] = cus_fields_list(cus_fields)
        body.update({k: v for k, v in extra.items() if v is not None})
        try:
            answer = await self._call("POST", CONTACTS_PATH, self.retry, json=body)
        except AntCRMAuthError:
            raise
        except AntCRMRejected:
            # Another caller (or our own lost first try) may have created it meanwhile and the CRM
            # refuses duplicates instead of answering the one it has: look once more.
            existing = await self._existing(number)
            if existing is None:
                raise
            return _found(existing, key)
        if not isinstance(answer, dict) or (answer.get("leadId") is None and answer.get("customerId") is None):
            raise AntCRMError("AntCRM's answer to POST /contacts has no leadId or customerId", status=200,
                              path=CONTACTS_PATH)
        return {"created": True, "customerIdApiRing": key, "leadId": answer.get("leadId"),
                "customerId": answer.get("customerId"), "answer": answer}

    async def find_contact(self, number: Phone, *, timeout: float | None = None) -> dict[str, Any] | None:
        """The contact a call from `number` is most likely from (`pick_contact`), or None.

        AntCRM matches the number as it was saved, so it is asked in each of `lookup_forms` (and
        for each of `lookup_contact_types`) in turn, until one answer holds a contact: one request
        for a contact saved in the first form, every form for an unknown number. Each request is
        tried once; an error ends the search (it raises).
        """
        asked: set[tuple[str, str | None]] = set()
        for form in self.lookup_forms:
            written = number.formatted(form)
            for contact_type in self.lookup_contact_types or (None,):
                if (written, contact_type) in asked:
                    continue  # a foreign number reads the same in several forms
                asked.add((written, contact_type))
                contacts = await self.find_contacts(number.e164, contact_type=contact_type, form=form, timeout=timeout)
                contact = pick_contact(contacts, number)
                if contact is not None:
                    return contact
        return None

    async def _existing(self, number: Phone) -> dict[str, Any] | None:
        return await self.find_contact(number)

    # -- plumbing -------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, policy: RetryPolicy, *, params: dict[str, str] | None = None,
                    json: Any = None, timeout: float | None = None) -> Any:
        url = self.base_url + path
        headers = {"apikey": self._api_key}
        request_timeout = self.timeout if timeout is None else timeout

        def build() -> httpx.Request:
            return self._http.build_request(method, url, headers=headers, params=params, json=json,
                                            timeout=request_timeout)

        try:
            response = await send_with_retry(self._http, build, policy)
        except httpx.HTTPError as exc:
            raise AntCRMUnavailable(f"AntCRM unreachable ({type(exc).__name__})", path=path) from exc
        status = response.status_code
        logger.debug("AntCRM %s %s -> %s", method, path, status)
        body = json_or_none(response)
        message = _vendor_message(body)
        said = f": {message}" if message else ""
        if 200 <= status < 300:
            if isinstance(body, dict) and body.get("success") in (0, False):
                raise AntCRMRejected(f"AntCRM refused {method} {path}{said}", status=status,
                                     vendor_message=message, path=path)
            return body
        if status in policy.statuses or status >= 500:
            raise AntCRMUnavailable(f"AntCRM answered {status} to {method} {path}{said}", status=status,
                                    vendor_message=message, path=path)
        if status in (401, 403):
            raise AntCRMAuthError(f"AntCRM refused the apikey ({status}){said}", status=status,
                                  vendor_message=message, path=path)
        raise AntCRMRejected(f"AntCRM refused {method} {path} ({status}){said}", status=status,
                             vendor_message=message, path=path)


def _check_extra(extra: Mapping[str, Any], known: frozenset[str], what: str) -> None:
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ValueError(f"unknown {what} fields {', '.join(unknown)}; AntCRM documents {', '.join(sorted(known))}")


def _found(contact: dict[str, Any], key: str) -> dict[str, Any]:
    return {"created": False, "customerIdApiRing": contact.get("customerIdApiRing") or key,
            "leadId": contact.get("leadId") or None, "customerId": contact.get("customerId") or None,
            "answer": contact}


def _vendor_message(body: Any) -> str | None:
    """The message of an error answer: `message` (as AntBuddy's other APIs), else `msg` or `error`."""
    if not isinstance(body, dict):
        return None
    for key in ("message", "msg", "error"):
        value = body.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        text = vendor_text(value)
        if text:
            return text
    return None
