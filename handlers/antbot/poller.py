"""The AntBot poller: CDR rows become `call.ended`, campaign status changes `campaign.status`.

Every `poll_interval` the poller reads

- `GET /rest-api/cdr/?from_date=..&to_date=..` for the window from `lookback` before where the last
  complete poll ended up to now (all pages), and publishes each row as one `call.ended`
  (`cdr_event`); after an outage longer than `max_window` it catches up one `max_window` at a
  time, poll after poll without waiting. The event id is `cdr-<row id>`, and the hub's store drops an event whose
  (source, id) it already holds, so a row seen by several polls is published once; the ids of the
  rows seen within the window are also kept (`seen`) so overlapping polls do not even try again;
- `GET /rest-api/campaigns/` and compares each campaign's `status` with the one it recorded:
  a change is one `campaign.status` event (id `campaign-<id>-<n>`, the n-th change seen). The first
  read only records (no flood of events at first start).

Where it stands (the CDR window's end, the rows seen, the campaigns' statuses) is kept in the
hub's store through `PluginContext.state` (namespace `antbot`), written after each complete
read, so it survives restarts. A failed read (AntBot down, a 5xx, a page missing) moves nothing:
the next poll reads the whole window again from the same place, so an outage delays events but
loses none. The poller reports itself as the `antbot` upstream (`/readyz`, metrics, console):
up after each complete poll, down with the reason after a failed one.

The poller is one hub service (`antbot-poll`): with several hub processes each would poll (the
store still publishes each row once); a later lease (Redis) can wrap this one service.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from handlers.antbot.client import CAMPAIGNS_PATH, CDR_PATH, AntBotClient
from handlers.antbot.config import AntBotConfig, status_key
from hub.plugin import (
    EVENT_LIMITS,
    HubError,
    InvalidEvent,
    PluginState,
    Publish,
    Upstream,
    call_party,
    lookup,
    whole_seconds,
)

__all__ = ["Poller", "cdr_event", "parse_time", "CAMPAIGN_STATUSES", "SOURCE", "NAMESPACE", "UPSTREAM"]

logger = logging.getLogger("callhub.antbot")

SOURCE = "antbot"
UPSTREAM = "antbot"
#: The poller's keys in the hub's store (`PluginContext.state`).
NAMESPACE = "antbot"
CDR_KEY = "cdr"
CAMPAIGNS_KEY = "campaigns"
#: The document's campaign statuses.
CAMPAIGN_STATUSES = {1: "started", 2: "waiting", 3: "paused", 4: "ended", 5: "completed"}
#: Row ids kept beyond the window, for clocks that disagree a little.
SEEN_MARGIN = 300.0
#: Most row ids kept (a window holding more only costs duplicate publishes the store drops).
MAX_SEEN = 50_000
#: After an unexpected failure of a poll, wait at least this long before the next.
ERROR_PAUSE = 1.0
_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def parse_time(value: object, zone: ZoneInfo) -> datetime | None:
    """A date AntBot wrote (ISO 8601, or `YYYY-MM-DD HH:MM[:SS]`); without an offset it is in `zone`."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    except ValueError:
        for fmt in _DATE_FORMATS:
            try:
                parsed = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        if parsed is None:
            return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone)



def _flag(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)):
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "t", "y"):
            return True
        if text in ("0", "false", "no", "f", "n", ""):
            return False
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, str)):
        text = str(value).strip()
        return text or None
    return None


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row_id(row: Mapping[str, Any], fields: list[str]) -> str | None:
    for name in fields:
        value = _text(lookup(row, name))
        if value:
            return value
    return None


def outcome_of(row: Mapping[str, Any], outcomes: Mapping[str, str], billing: int | None) -> str:
    """The disposition's outcome, else the hangup cause's; else answered if billed, failed if not."""
    for name in ("disposition", "hangup_cause", "endpoint_disposition"):
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            found = outcomes.get(status_key(value))
            if found is not None:
                return found
    return "answered" if billing else "failed"


def cdr_event(row: object, config: AntBotConfig, zone: ZoneInfo) -> dict[str, Any]:
    """One CDR row as a `call.ended` event; ValueError when the row cannot be one (not an object, no id)."""
    if not isinstance(row, dict):
        raise ValueError(f"a CDR row must be an object, not {type(row).__name__}")
    rid = row_id(row, config.id_fields)
    if rid is None:
        raise ValueError("a CDR row without an id (" + ", ".join(config.id_fields) + ")")
    event_id = f"cdr-{rid}"
    if len(event_id) > EVENT_LIMITS["id"]:
        raise ValueError("a CDR row id that is too long")
    started = parse_time(row.get("starting_date") or row.get("start_uepoch") or row.get("created_date"), zone)
    duration = whole_seconds(row.get("duration"))
    billing = whole_seconds(row.get("billsec"))
    call_id = _text(row.get("callid")) or f"antbot-{rid}"
    campaign = row.get("campaign")
    if isinstance(campaign, dict):
        campaign = campaign.get("id")
    campaign_id = _text(campaign if campaign is not None else row.get("campaign_id"))
    data: dict[str, Any] = {
        "call_id": call_id,
        "direction": "outbound",
        "agent": None,
        "from": call_party(_text(row.get("callerid"))),
        "to": call_party(_text(row.get("phone_number"))),
        "campaign_id": campaign_id,
        "outcome": outcome_of(row, config.outcomes, billing),
        "disposition": _text(row.get("disposition")),
        "hangup_cause": _text(row.get("hangup_cause")),
        "duration_s": duration,
        "billing_s": billing,
        "started_at": _rfc3339(started) if started else None,
        "alarm": _flag(row.get("alarm")),
        "otp": _flag(row.get("otp")),
        "recording": None,
        "raw": row,
    }
    event: dict[str, Any] = {"type": "call.ended", "id": event_id, "source": SOURCE, "data": data}
    if started is not None:
        event["time"] = _rfc3339(started + timedelta(seconds=duration or 0))
    if len(call_id) <= EVENT_LIMITS["subject"]:
        event["subject"] = call_id
    return event


class Poller:
    """Reads AntBot's CDR report and campaign list on an interval (see the module docstring)."""

    def __init__(self, client: AntBotClient, config: AntBotConfig, *, publish: Publish, state: PluginState,
                 upstream: Upstream, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.config = config
        self.zone = ZoneInfo(config.time_zone)
        self._publish = publish
        self._state = state
        self._upstream = upstream
        self._clock = clock
        #: The last window read ended before now (`max_window`): the next poll follows at once.
        self.behind = False
        #: Rows published so far, rows skipped as unreadable (this process).
        self.published = 0
        self.skipped = 0

    async def run(self) -> None:
        """The service: poll, wait `poll_interval`, again, until cancelled (no wait while catching up)."""
        while True:
            started = time.monotonic()
            if await self.poll() and self.behind:
                await asyncio.sleep(0)
                continue
            await asyncio.sleep(max(0.0, self.config.poll_interval - (time.monotonic() - started)))

    async def poll(self) -> bool:
        """One poll of the CDR report (and the campaigns); True if it was read to the end."""
        try:
            await self.poll_cdr()
            if self.config.campaigns:
                await self.poll_campaigns()
        except HubError as exc:
            logger.warning("antbot poll failed: %s", exc.message)
            self._upstream.detail["last_error"] = exc.message
            await self._upstream.down(reason=exc.message)
            return False
        except Exception as exc:  # a bug here must not end the service: report it and go on
            logger.exception("antbot poll failed unexpectedly")
            await self._upstream.down(reason=f"internal error: {type(exc).__name__}")
            await asyncio.sleep(ERROR_PAUSE)
            return False
        self._upstream.detail["last_error"] = None
        await self._upstream.up()
        return True

    def _date(self, when: float) -> str:
        return datetime.fromtimestamp(when, self.zone).strftime(self.config.date_format)

    async def poll_cdr(self) -> int:
        """Read the window and publish its new rows; the cursor moves only after every page was read."""
        config = self.config
        now = self._clock()
        saved = await self._state.state_get(NAMESPACE, CDR_KEY)
        saved = saved if isinstance(saved, dict) else {}
        until = saved.get("until")
        seen_in = saved.get("seen")
        seen: dict[str, float] = dict(seen_in) if isinstance(seen_in, dict) else {}
        # A clock set back must not move the window backwards past what was read.
        since = (min(until, now) if isinstance(until, (int, float)) else now) - config.lookback
        # After a long outage, catch up in slices: each poll's pages stay bounded. The end is a whole
        # second, as `to_date` is written: the cursor is exactly where the filter stopped.
        limit = since + config.lookback + config.max_window
        end = float(math.floor(min(now, limit)))
        params = {**config.cdr_filters, "from_date": self._date(since), "to_date": self._date(end),
                  "page_size": config.page_size}
        rows = await self.client.list(CDR_PATH, params, max_pages=config.max_pages)
        new = 0
        for row in rows:
            try:
                event = cdr_event(row, config, self.zone)
            except ValueError as exc:
                self.skipped += 1
                self._upstream.signal("cdr_invalid")
                logger.warning("antbot CDR row skipped: %s", exc)
                continue
            if event["id"] in seen:
                continue
            try:
                result = await self._publish(event)
            except InvalidEvent as exc:  # the hub refuses it (too deep, too large): skip it, never stall
                self.skipped += 1
                self._upstream.signal("cdr_invalid")
                logger.warning("antbot CDR row %s skipped: %s", event["id"], exc.message)
                continue
            started = parse_time(event["data"]["started_at"], self.zone)
            seen[event["id"]] = started.timestamp() if started else now
            if not result.duplicate:
                new += 1
                self._upstream.signal("cdr")
        keep_from = end - config.lookback - SEEN_MARGIN
        kept = sorted(((k, t) for k, t in seen.items() if t >= keep_from), key=lambda kv: kv[1])[-MAX_SEEN:]
        await self._state.state_put(NAMESPACE, CDR_KEY, {"until": end, "seen": dict(kept)})
        self.behind = limit < now
        self.published += new
        detail = self._upstream.detail
        detail["cdr_until"] = _rfc3339(datetime.fromtimestamp(end, UTC))
        detail["calls_published"] = self.published
        detail["rows_skipped"] = self.skipped
        return new

    async def poll_campaigns(self) -> int:
        """Publish each campaign whose status changed since the last read; the first read only records."""
        campaigns = await self.client.list(CAMPAIGNS_PATH, {"page_size": self.config.page_size},
                                           max_pages=self.config.max_pages)
        saved = await self._state.state_get(NAMESPACE, CAMPAIGNS_KEY)
        first = not isinstance(saved, dict)
        known: dict[str, list[int]] = dict(saved) if isinstance(saved, dict) else {}
        changed = 0
        for campaign in campaigns:
            if not isinstance(campaign, dict):
                continue
            cid = _text(campaign.get("id"))
            status = whole_seconds(campaign.get("status"))
            if cid is None or status not in CAMPAIGN_STATUSES:
                continue
            before = known.get(cid)
            if before is not None and before[0] == status:
                continue
            changes = (before[1] if before else 0) + 1
            if not first:
                await self._publish({
                    "type": "campaign.status",
                    "id": f"campaign-{cid}-{changes}",
                    "source": SOURCE,
                    "subject": cid[: EVENT_LIMITS["subject"]],
                    "data": {
                        "campaign_id": cid,
                        "name": _text(campaign.get("name")),
                        "status": CAMPAIGN_STATUSES[status],
                        "status_code": status,
                        "previous": CAMPAIGN_STATUSES[before[0]] if before else None,
                        "raw": campaign,
                    },
                })
                changed += 1
                self._upstream.signal("campaign_status")
            known[cid] = [status, changes]
        await self._state.state_put(NAMESPACE, CAMPAIGNS_KEY, known)
        return changed
