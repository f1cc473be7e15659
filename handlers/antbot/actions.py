"""AntBot's rule actions, each also behind an admin endpoint (`routes.py`), one path for both:

    antbot.add_contact      (`phonebook`, `phone_number` or `phone_numbers`, optional contact fields)
    antbot.campaign_status  (`campaign_id`, `status`: start | pause | abort | end, or 1-4)
    antbot.reminder_call    (`phone_number`, `at` or `delay`, optional `title`, `phonenumber_transfer`)

Each action's parameters are read by one `parse_*` function, which the routes call first too, so
bad input is a 422 before anything runs. Adding contacts and creating reminders are not
idempotent (a second request adds a second contact, a second alarm calls twice): they are sent
once, and after a crash the runner reports them `unknown`. Changing a campaign's status is.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from handlers.antbot.client import (
    ALARM_PATH,
    BULK_CONTACT_PATH,
    CONTACT_PATH,
    DNC_CONTACT_PATH,
    EVENT_PATH,
    AntBotClient,
    AntBotError,
)
from handlers.antbot.config import AntBotConfig
from handlers.antbot.poller import parse_time
from hub.plugin import (
    ActionContext,
    Executor,
    HubError,
    InvalidEvent,
    Phone,
    lookup,
    normal_number,
    parse_duration,
    parse_phone,
)

__all__ = ["ADD_CONTACT", "CAMPAIGN_STATUS", "REMINDER_CALL", "REQUIRED", "CAMPAIGN_ACTIONS", "DoNotCall",
           "add_contact", "campaign_status", "reminder_call", "parse_contacts", "parse_campaign_status",
           "parse_reminder", "dnc_numbers", "MAX_BULK"]

ADD_CONTACT = "antbot.add_contact"
CAMPAIGN_STATUS = "antbot.campaign_status"
REMINDER_CALL = "antbot.reminder_call"
#: Parameters each action needs (checked when rules load).
REQUIRED: dict[str, tuple[str, ...]] = {
    ADD_CONTACT: ("phonebook",),
    CAMPAIGN_STATUS: ("campaign_id", "status"),
    REMINDER_CALL: ("phone_number",),
}
#: The document's campaign status changes (`POST /rest-api/campaigns/{id}/status/`).
CAMPAIGN_ACTIONS = {"start": 1, "pause": 2, "abort": 3, "end": 4}
#: Most numbers one bulk add takes.
MAX_BULK = 10_000
#: Contact fields passed through (Newfies-Dialer's contact serializer).
CONTACT_FIELDS = ("first_name", "last_name", "email", "description", "address", "city", "country",
                  "additional_vars", "status")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A reminder more than this far ahead is refused as a mistake; one in the past too (beyond a
#: minute of clock difference or delay on its way).
MAX_AHEAD = 366 * 86400.0
MAX_BEHIND = 60.0


class DoNotCall(HubError):
    """The number is on one of the account's do-not-call lists: it is never added."""

    status_code = 409
    code = "do_not_call"


def _object_id(value: object, name: str) -> str:
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not _ID.fullmatch(text):
        raise InvalidEvent(f"'{name}' must be an AntBot id (1-64 letters, digits, '-' or '_')", field=name)
    return text


# -- antbot.add_contact ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contacts:
    phonebook: str
    phones: list[Phone]
    bulk: bool
    fields: dict[str, Any]


def parse_contacts(params: dict[str, Any]) -> Contacts:
    phonebook = _object_id(params.get("phonebook"), "phonebook")
    many = params.get("phone_numbers")
    if many is not None:
        if isinstance(many, str):
            many = [n for n in many.split(",") if n.strip()]
        if not isinstance(many, list) or not many:
            raise InvalidEvent("'phone_numbers' must be a non-empty list of phone numbers", field="phone_numbers")
        if len(many) > MAX_BULK:
            raise InvalidEvent(f"at most {MAX_BULK} numbers at once, not {len(many)}", field="phone_numbers")
        phones: list[Phone] = []
        for i, value in enumerate(many):
            phone = parse_phone(value, field=f"phone_numbers.{i}")
            if phone not in phones:
                phones.append(phone)
        return Contacts(phonebook, phones, True, {})
    phone = parse_phone(params.get("phone_number"), field="phone_number")
    fields = {k: params[k] for k in CONTACT_FIELDS if params.get(k) is not None}
    return Contacts(phonebook, [phone], False, fields)


async def dnc_numbers(client: AntBotClient, config: AntBotConfig) -> set[str]:
    """The numbers on the account's DNC lists (`[antbot] dnc_lists`, or all), in the normal form."""
    rows: list[Any] = []
    if config.dnc_lists:
        for dnc in config.dnc_lists:
            rows += await client.list(DNC_CONTACT_PATH, {"dnc": dnc, "page_size": config.page_size},
                                      max_pages=config.max_pages)
    else:
        rows = await client.list(DNC_CONTACT_PATH, {"page_size": config.page_size}, max_pages=config.max_pages)
    numbers: set[str] = set()
    for row in rows:
        value = row.get("phone_number") if isinstance(row, dict) else row
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            numbers.add(normal_number(str(value)) or str(value).strip())
    return numbers


def add_contact(client: AntBotClient, config: AntBotConfig) -> Executor:
    """`antbot.add_contact`: refuses numbers on a DNC list (`do_not_call`); a bulk add adds the others."""

    async def run(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        contacts = parse_contacts(params)
        blocked = await dnc_numbers(client, config)
        refused = [p for p in contacts.phones if p.normal in blocked]
        allowed = [p for p in contacts.phones if p.normal not in blocked]
        refusals = [{"phone_number": p.normal, "reason": "on a do-not-call list"} for p in refused]
        if not allowed:
            which = refused[0].normal if len(refused) == 1 else f"all {len(refused)} numbers"
            raise DoNotCall(f"{which} on a do-not-call list: not added to phonebook {contacts.phonebook}",
                            phonebook=contacts.phonebook, refused=refusals)
        written = [p.formatted(config.phone_format) for p in allowed]
        if contacts.bulk:
            answer = await client.create(BULK_CONTACT_PATH, {"phonebook_id": contacts.phonebook,
                                                             "phoneno_list": ",".join(written)})
        else:
            answer = await client.create(CONTACT_PATH, {"phonebook": contacts.phonebook, "contact": written[0],
                                                        **contacts.fields})
        return {"phonebook": contacts.phonebook, "added": [p.normal for p in allowed], "refused": refusals,
                "vendor": answer}

    return run


# -- antbot.campaign_status ------------------------------------------------------------------------------


def parse_campaign_status(params: dict[str, Any]) -> tuple[str, str, int]:
    """(campaign id, action name, code) from `campaign_id` and `status` (a name or 1-4)."""
    campaign_id = _object_id(params.get("campaign_id"), "campaign_id")
    status = params.get("status")
    names = {v: k for k, v in CAMPAIGN_ACTIONS.items()}
    if isinstance(status, str) and status.strip().isdigit():
        status = int(status.strip())
    if isinstance(status, int) and not isinstance(status, bool) and status in names:
        return campaign_id, names[status], status
    if isinstance(status, str) and status.strip().lower() in CAMPAIGN_ACTIONS:
        name = status.strip().lower()
        return campaign_id, name, CAMPAIGN_ACTIONS[name]
    raise InvalidEvent("'status' must be start, pause, abort or end (or 1-4)", field="status")


def campaign_status(client: AntBotClient, config: AntBotConfig) -> Executor:
    """`antbot.campaign_status`: start, pause, abort or end a campaign."""

    async def run(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        campaign_id, name, code = parse_campaign_status(params)
        answer = await client.set_status(f"/rest-api/campaigns/{campaign_id}/status/", {config.status_field: code})
        return {"campaign_id": campaign_id, "status": name, "status_code": code, "vendor": answer}

    return run


# -- antbot.reminder_call --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reminder:
    phone: Phone
    at: datetime
    title: str
    transfer: Phone | None


def parse_reminder(params: dict[str, Any], config: AntBotConfig, *, now: float | None = None) -> Reminder:
    """The number and when: `at` (a date; without an offset in `[antbot] time_zone`) or `delay` (`10m`), else now."""
    zone = ZoneInfo(config.time_zone)
    phone = parse_phone(params.get("phone_number"), field="phone_number")
    current = datetime.fromtimestamp(time.time() if now is None else now, zone)
    at_value, delay = params.get("at"), params.get("delay")
    if at_value is not None and delay is not None:
        raise InvalidEvent("give 'at' or 'delay', not both", field="at")
    if at_value is not None:
        at = parse_time(at_value, zone)
        if at is None:
            raise InvalidEvent("'at' must be a date and time such as 2026-01-05T09:30:00+07:00", field="at")
    elif delay is not None:
        try:
            at = current + timedelta(seconds=parse_duration(delay))
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"'delay': {exc}", field="delay") from None
    else:
        at = current
    ahead = (at - current).total_seconds()
    if ahead > MAX_AHEAD:
        raise InvalidEvent("a reminder may be at most a year ahead", field="at")
    if ahead < -MAX_BEHIND:
        raise InvalidEvent("a reminder may not be in the past", field="at")
    title = params.get("title")
    if title is not None and (not isinstance(title, str) or not title.strip() or len(title) > 200):
        raise InvalidEvent("'title' must be a text of 1-200 characters", field="title")
    transfer = params.get("phonenumber_transfer")
    return Reminder(phone, at.astimezone(zone), title or config.reminders.title,
                    parse_phone(transfer, field="phonenumber_transfer") if transfer is not None else None)


def reminder_call(client: AntBotClient, config: AntBotConfig) -> Executor:
    """`antbot.reminder_call`: a calendar event, then an alarm on it that calls the number."""
    reminders = config.reminders

    async def run(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        reminder = parse_reminder(params, config)
        start = reminder.at.isoformat(timespec="seconds")
        end = (reminder.at + timedelta(seconds=reminders.event_length)).isoformat(timespec="seconds")
        event = await client.create(EVENT_PATH, {"title": reminder.title, "start": start, "end": end,
                                                 "creator": reminders.creator, "calendar": reminders.calendar})
        event_id = lookup(event, "id")
        if event_id is None or isinstance(event_id, (bool, dict, list)):
            raise AntBotError("AntBot's answer to the event has no id", status=200, path=EVENT_PATH)
        alarm_body: dict[str, Any] = {**reminders.alarm_fields, "alarm_phonenumber":
                                      reminder.phone.formatted(config.phone_format), "event": event_id,
                                      "date_start_notice": start}
        if reminder.transfer is not None:
            alarm_body["phonenumber_transfer"] = reminder.transfer.formatted(config.phone_format)
        try:
            alarm = await client.create(ALARM_PATH, alarm_body)
        except AntBotError as exc:
            # The event exists without its alarm: say which, so an operator can finish or delete it.
            exc.details["event_id"] = event_id
            exc.message = f"{exc.message} (event {event_id} was created, its alarm was not)"
            raise
        return {"phone_number": reminder.phone.normal, "at": start, "event_id": event_id,
                "alarm_id": lookup(alarm, "id"), "vendor": alarm}

    return run

