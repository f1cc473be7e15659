"""`[antbot]`: AntBuddy's voice-bot dialer ("Alice"): credentials, the CDR and campaign poll, how
dispositions map to outcomes, and the calendar objects reminder calls are created in.

The vendor's document leaves most bodies blank; what this section assumes about them (and can
change) is listed in docs/ANTBOT.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from hub.plugin import HttpUrl, PhoneForm, TimeZoneName, parse_duration

__all__ = ["AntBotConfig", "RemindersConfig", "Outcome", "DEFAULT_OUTCOMES", "DEFAULT_BASE_URL", "status_key"]

Duration = Annotated[float, BeforeValidator(parse_duration)]
Outcome = Literal["answered", "busy", "no_answer", "cancelled", "failed"]

#: The host: the document's paths (`/get-token/`, `/rest-api/...`) are relative to it.
DEFAULT_BASE_URL = "https://alice.antbuddy.com"


def status_key(value: str) -> str:
    """Dispositions and hangup causes compare case-insensitively, `-` and spaces as `_`."""
    return value.strip().lower().replace("-", "_").replace(" ", "_")


#: `disposition` (FreeSWITCH/Newfies-Dialer vocabulary: ANSWER, BUSY, NOANSWER, CANCEL, CONGESTION,
#: CHANUNAVAIL, ...) and `hangup_cause` (Q.850 names: NORMAL_CLEARING, USER_BUSY, NO_ANSWER, ...)
#: -> outcome. The disposition is looked up first, then the hangup cause (see docs/ANTBOT.md).
DEFAULT_OUTCOMES: dict[str, Outcome] = {
    "answer": "answered",
    "answered": "answered",
    "normal_clearing": "answered",
    "busy": "busy",
    "user_busy": "busy",
    "noanswer": "no_answer",
    "no_answer": "no_answer",
    "no_user_response": "no_answer",
    "allotted_timeout": "no_answer",
    "recovery_on_timer_expire": "no_answer",
    "cancel": "cancelled",
    "cancelled": "cancelled",
    "originator_cancel": "cancelled",
    "failed": "failed",
    "congestion": "failed",
    "chanunavail": "failed",
    "dontcall": "failed",
    "torture": "failed",
    "invalidargs": "failed",
    "call_rejected": "failed",
    "unallocated_number": "failed",
    "invalid_number_format": "failed",
    "normal_temporary_failure": "failed",
    "network_out_of_order": "failed",
    "destination_out_of_order": "failed",
    "subscriber_absent": "failed",
}


#: The document's CDR report filters a poll may add (`from_date` / `to_date` are the poller's own).
CDR_FILTERS = frozenset({"callid", "callerid", "phone_number", "duration", "billsec", "disposition", "hangup_cause",
                         "sip_term_status", "sip_term_cause", "endpoint_disposition", "campaign", "alarm", "otp"})


class RemindersConfig(BaseModel):
    """`[antbot.reminders]`: the calendar objects `antbot.reminder_call` creates its events in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The calendar (`/rest-api/calendar/`) and calendar user (`/rest-api/calendar-user/`) ids.
    calendar: int | str | None = None
    creator: int | str | None = None
    #: The event's `end` is its `start` plus this.
    event_length: Duration = 300.0
    #: The event's title when the action gives none.
    title: str = "callhub reminder"
    #: Extra alarm fields sent as they are (Newfies-Dialer's `method`, `maxretry`, `retry_delay`, ...).
    alarm_fields: dict[str, Any] = Field(default_factory=dict)


class AntBotConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    base_url: HttpUrl = DEFAULT_BASE_URL
    username: str = Field(min_length=1)
    password: str = Field(min_length=1, repr=False)
    #: Seconds between two polls of the CDR report and the campaign list.
    poll_interval: Duration = 60.0
    #: The account's zone: dates AntBot writes without an offset are read in it, and the
    #: `from_date`/`to_date` filters are written in it.
    time_zone: TimeZoneName = "Asia/Ho_Chi_Minh"
    #: Each poll reads again from this far behind where the last one ended: longer than the
    #: longest call plus the delay before its CDR row shows (rows are filtered by their start).
    lookback: Duration = 900.0
    #: More CDR filters on every poll, from the document's (`campaign`, `alarm`, `otp`, `disposition`, ...).
    cdr_filters: dict[str, str | int | bool] = Field(default_factory=dict)
    #: The longest stretch one poll reads past `lookback`: after a long outage the poller catches
    #: up one such slice at a time, without waiting between them.
    max_window: Duration = 3600.0
    #: Publish campaign status changes (`GET /rest-api/campaigns/`) as `campaign.status`.
    campaigns: bool = True
    request_timeout: Duration = 10.0
    #: Rows asked per page (`page_size`); the next pages are followed through `next`.
    page_size: int = Field(100, ge=1, le=1000)
    #: Most pages one poll reads; a window with more is an error (the cursor does not move).
    max_pages: int = Field(200, ge=1)
    #: Token request and answer: the paths of the access token in the answer, tried in order.
    token_path: str = "/get-token/"
    token_fields: list[str] = Field(default_factory=lambda: ["access", "token", "access_token"], min_length=1)
    #: How `from_date` / `to_date` are written (strftime, in `time_zone`).
    date_format: str = "%Y-%m-%d %H:%M:%S"
    #: How numbers are written to AntBot (contacts, alarms): `national` (0912345678), `84`, `e164`.
    phone_format: PhoneForm = "national"
    #: The CDR row's id (the event id derives from it): the first field with a value.
    id_fields: list[str] = Field(default_factory=lambda: ["id", "callid", "uuid"], min_length=1)
    #: Disposition / hangup cause -> outcome (replace it whole to change it).
    outcomes: dict[str, Outcome] = Field(default_factory=lambda: dict(DEFAULT_OUTCOMES))
    #: Only these DNC lists are honoured (empty: every DNC contact the account can see).
    dnc_lists: list[int | str] = Field(default_factory=list)
    #: The `/rest-api/campaigns/{id}/status/` body field.
    status_field: str = "status"
    reminders: RemindersConfig = RemindersConfig()

    @field_validator("cdr_filters")
    @classmethod
    def _documented_filters(cls, value: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        unknown = sorted(set(value) - CDR_FILTERS)
        if unknown:
            raise ValueError(f"not a CDR filter: {', '.join(unknown)} (one of {', '.join(sorted(CDR_FILTERS))})")
        return {k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in value.items()}

    @field_validator("outcomes")
    @classmethod
    def _outcome_keys(cls, value: dict[str, Outcome]) -> dict[str, Outcome]:
        return {status_key(k): v for k, v in value.items()}

    @field_validator("base_url")
    @classmethod
    def _host_root(cls, value: str) -> str:
        # The vendor notes give the base as `.../rest-api`; the document's paths carry it themselves.
        value = value.rstrip("/")
        return value[: -len("/rest-api")] if value.endswith("/rest-api") else value

    @field_validator("poll_interval", "request_timeout", "max_window")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("lookback")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value
