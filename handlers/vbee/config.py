"""`[vbee]`: the inbound result webhook (token, field mapping, status mapping, dedup key) and
the outbound AICall public API (base URL, app key and secret, batching).

Vbee does not publish its webhook body, so every field the normaliser reads is a list of dotted
paths tried in order (`[vbee.mapping]`), with defaults from the names its API answers use
(`campaign_id`, `contact_id`, `phone_number`/`so_dien_thoai`, personalization tags such as
`ho_ten`). See docs/VBEE.md for the assumed format.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from hub.plugin import HttpUrl, PhoneForm, parse_duration

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_STATUS_MAP",
    "DEFAULT_PROGRESS_STATUSES",
    "Outcome",
    "VbeeConfig",
    "VbeeMapping",
    "status_key",
]

Duration = Annotated[float, BeforeValidator(parse_duration)]
Outcome = Literal["answered", "busy", "no_answer", "cancelled", "failed"]

DEFAULT_BASE_URL = "https://aicall.vbee.ai/api/v1/public-api"
#: The most contacts one `POST /campaign` carries (Vbee documents no limit; this is our guess).
MAX_BATCH_SIZE = 1000


def status_key(value: str) -> str:
    """Statuses compare case-insensitively, with `-` and spaces as `_`: `No-Answer` == `no_answer`."""
    return value.strip().lower().replace("-", "_").replace(" ", "_")


def _paths(value: object) -> object:
    """A mapping entry may be one dotted path or a list of them (tried in order)."""
    return [value] if isinstance(value, str) else value


Paths = Annotated[list[str], BeforeValidator(_paths), Field(min_length=1)]
OptionalPaths = Annotated[list[str], BeforeValidator(_paths)]

#: Vendor call statuses -> callhub outcomes (keys compared with `status_key`). A guess from the
#: retry settings Vbee's campaign API exposes (`is_busy`, `is_failed`, `is_no_answer`,
#: `is_voice_mail`) and common dialer vocabulary; a voicemail counts as not answered.
DEFAULT_STATUS_MAP: dict[str, Outcome] = {
    "answered": "answered",
    "answer": "answered",
    "success": "answered",
    "successful": "answered",
    "completed": "answered",
    "complete": "answered",
    "done": "answered",
    "busy": "busy",
    "user_busy": "busy",
    "no_answer": "no_answer",
    "noanswer": "no_answer",
    "not_answered": "no_answer",
    "unanswered": "no_answer",
    "missed": "no_answer",
    "timeout": "no_answer",
    "voice_mail": "no_answer",
    "voicemail": "no_answer",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "cancel": "cancelled",
    "stopped": "cancelled",
    "failed": "failed",
    "fail": "failed",
    "failure": "failed",
    "error": "failed",
    "rejected": "failed",
    "unreachable": "failed",
    "invalid_number": "failed",
}

#: Statuses that say a call is still on its way: they become `campaign.contact.updated`.
#: Every other status (mapped or not) means the call attempt is over: `call.ended`.
DEFAULT_PROGRESS_STATUSES = [
    "new", "pending", "queued", "waiting", "scheduled", "init", "initiated", "processing",
    "calling", "dialing", "ringing", "in_progress", "inprogress", "connecting", "started",
    "retrying", "retry",
]


class VbeeMapping(BaseModel):
    """`[vbee.mapping]`: where each field is in the webhook body; the first path that holds a value wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign_id: Paths = ["campaign_id", "campaign.id", "campaign.campaign_id"]
    contact_id: Paths = ["contact_id", "contact.contact_id", "contact.id"]
    phone_number: Paths = ["phone_number", "so_dien_thoai", "contact.phone_number", "contact.so_dien_thoai"]
    status: Paths = ["call_status", "status", "call.status"]
    duration: Paths = ["duration", "call_duration", "duration_s", "call.duration"]
    recording: Paths = ["recording_url", "record_url", "recording", "call.recording_url"]
    #: Vbee's id for one call attempt, if it sends one.
    call_id: Paths = ["call_id", "call.id", "call.call_id"]
    #: What tells two call attempts to the same contact apart when there is no call id.
    attempt: Paths = ["call_id", "call.id", "attempt", "call_at", "called_at", "start_time", "started_at"]
    #: The callee's name (a personalization tag).
    name: Paths = ["ho_ten", "tags.ho_ten", "contact.ho_ten"]
    #: Objects whose members are personalization tags (besides the top-level ones, see `top_level_tags`).
    tags: OptionalPaths = ["tags", "contact.tags", "contact"]
    #: Also take top-level scalar members that are no mapped field (and not in `not_tags`) as tags.
    top_level_tags: bool = True
    #: Member names that are never tags (call metadata), compared case-sensitively.
    not_tags: list[str] = [
        "event", "event_type", "type", "timestamp", "time", "created_at", "updated_at", "ended_at",
        "end_time", "hangup_cause", "end_reason", "reason", "message", "app_id", "campaign_name",
        "scenario_id", "retry", "retries", "attempts", "id", "so_dien_thoai", "phone_number",
    ]


class VbeeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("status_map")
    @classmethod
    def _status_keys(cls, value: dict[str, Outcome]) -> dict[str, Outcome]:
        return {status_key(k): v for k, v in value.items()}

    @field_validator("progress_statuses")
    @classmethod
    def _progress_keys(cls, value: list[str]) -> list[str]:
        return [status_key(v) for v in value]

    @model_validator(mode="after")
    def _credentials_together(self) -> VbeeConfig:
        if bool(self.api_key) != bool(self.api_secret):
            raise ValueError("api_key and api_secret go together: set both (to add contacts) or neither")
        overlap = sorted(set(self.progress_statuses) & set(self.status_map))
        if overlap:
            raise ValueError(f"statuses both in progress_statuses and status_map: {', '.join(overlap)}")
        return self

    enabled: bool = True
    #: Shared secret Vbee presents on the result webhook (`?token=` or `Authorization: Bearer`).
    webhook_token: str = Field(min_length=16)
    base_url: HttpUrl = DEFAULT_BASE_URL
    #: The AICall app's API_KEY and API_SECRET; without them `POST /v1/campaigns/{id}/contacts` is off.
    api_key: str | None = None
    api_secret: str | None = None
    #: Contacts per `POST /campaign` call.
    batch_size: int = Field(100, ge=1, le=MAX_BATCH_SIZE)
    #: How numbers are written to Vbee: `e164` (+84987654321, the form Vbee's own answer shows),
    #: `84` (84987654321) or `national` (0987654321). Vbee documents none.
    phone_format: PhoneForm = "e164"
    request_timeout: Duration = 10.0
    mapping: VbeeMapping = VbeeMapping()
    #: Vendor status -> outcome for `call.ended` (merged over nothing: replace it whole to change it).
    status_map: dict[str, Outcome] = Field(default_factory=lambda: dict(DEFAULT_STATUS_MAP))
    progress_statuses: list[str] = Field(default_factory=lambda: list(DEFAULT_PROGRESS_STATUSES))
    #: The event id (dedup key): mapping field names (`campaign_id`, `contact_id`, `attempt`,
    #: `call_id`, `phone_number`, `status`) or `$.dotted.path`s into the body. Fields without a
    #: value are left out, except `campaign_id` and `contact_id` (see docs/VBEE.md).
    key: list[str] = Field(default_factory=lambda: ["campaign_id", "contact_id", "attempt"], min_length=1)

    @field_validator("key")
    @classmethod
    def _key_fields(cls, value: list[str]) -> list[str]:
        known = {"campaign_id", "contact_id", "attempt", "call_id", "phone_number", "status"}
        for item in value:
            if item not in known and not (item.startswith("$.") and len(item) > 2):
                raise ValueError(f"{item!r} is neither a mapping field ({', '.join(sorted(known))}) nor a $.path")
        return value
