"""`[antcrm]`: the AntCRM (apiring) API: where it is, its key, and the limits of the two ways the
hub uses it, ticket and lead creation (retried, slow is fine) and screen-pop lookups (one quick
try, cached, answered within a deadline or not at all).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from hub.plugin import HttpUrl, PhoneForm, parse_duration

__all__ = ["AntCRMConfig", "ContactType", "DEFAULT_BASE_URL"]

Duration = Annotated[float, BeforeValidator(parse_duration)]
#: AntCRM's kinds of contact: leads, and customers (contacts and accounts).
ContactType = Literal["lead", "customer"]

DEFAULT_BASE_URL = "https://apiring.antbuddy.com"


class AntCRMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    base_url: HttpUrl = DEFAULT_BASE_URL
    #: The pre-agreed secret sent as the `apikey` header (never logged).
    api_key: str = Field(min_length=1, repr=False)
    #: Bounds one request (connect, write, read, and the wait for a free connection).
    request_timeout: Duration = Field(10.0, gt=0)
    #: Ticket and lead creation are retried on 5xx, 429 and timeouts until this long after the
    #: first try, then fail (`AntCRMUnavailable`).
    retry_for: Duration = Field(60.0, gt=0)
    #: Screen-pop: a caller not found in AntCRM within this long is shown without CRM data.
    lookup_timeout: Duration = Field(0.4, gt=0)
    #: Screen-pop: publish `call.enriched` for these event types (empty: no screen-pop).
    screen_pop_types: list[str] = ["call.ringing"]
    #: Screen-pop cache: how long a found customer is reused without asking AntCRM again.
    cache_ttl: Duration = Field(300.0, gt=0)
    #: ... and how long "no such customer" is (0 = ask every time).
    negative_cache_ttl: Duration = Field(60.0, ge=0)
    #: Most numbers the screen-pop cache holds (least recently used go first).
    cache_max_entries: int = Field(10_000, ge=1)
    #: Most requests in flight to AntCRM at once (the connection pool's size); others wait for
    #: a connection within their own timeout.
    max_concurrency: int = Field(8, ge=1, le=256)
    #: How phone numbers are written to AntCRM (created leads, ticket contacts) and asked first:
    #: `national` (0912345678, as the vendor's examples write them), `e164` (+84912345678) or
    #: `84` (84912345678).
    phone_format: PhoneForm = "national"
    #: Screen-pop: the forms a number is asked in, in order, until a contact is found (AntCRM
    #: matches the string as saved). Default: `phone_format`, then the other two.
    lookup_forms: list[PhoneForm] | None = Field(None, min_length=1)
    #: Screen-pop: `contactType`s asked for, in order (each form once per type); empty: one
    #: request without `contactType` (any kind of contact).
    lookup_contact_types: list[ContactType] = []

    @field_validator("lookup_forms", "lookup_contact_types")
    @classmethod
    def _each_once(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("list each entry once")
        return value
