"""Gap reconciliation: calls that ended while the socket was down, read back from call history.

After every reconnect (and every `reconcile_interval` while connected) the reconciler reads
`/oapi/v1/call/histories` for the window that may hold missed calls, and for each record whose
call has no `call.ended` in the store, publishes one: `data.reconciled = true`, built from the
record. That covers both calls never seen live and calls left open (ringing or answered, then
the socket dropped before their end).

Whether a call was seen is asked of the store (`Backend.find` on `data.call_id`), not of memory,
so it holds across hub restarts. A reconciled event's id is `history:<record id>`, so two
overlapping reconciliations publish it once.

Assumptions where the vendor is silent:
- A history record carries the id of the call as the socket names it (the customer leg's
  Call-ID), in the field `history_id_field` (default `call_id`); without one, the call is
  matched by a fingerprint of direction, numbers and start time, which cannot match a live
  call, so it is emitted unless reconciled before.
- `unix_timestamp` is when the call started; it ended `duration_seconds` later.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from handlers.antring.client import AntRingClient
from handlers.antring.config import AntRingConfig
from handlers.antring.normalize import did_number
from hub.core import Hub
from hub.exceptions import HubError
from hub.phone import call_party

logger = logging.getLogger("callhub.antring")

__all__ = ["Reconciler", "history_event"]

SOURCE = "antring"
#: Events looked at per call when asking the store whether its end was seen.
SEEN_LOOKUP_LIMIT = 50
#: Extra seconds on both sides of a reconciliation window (clocks differ, records lag).
WINDOW_MARGIN = 120.0

_OUTCOMES = {"SUCCESS": "answered", "BUSY": "busy", "CANCELLED": "cancelled", "IVR": "no_answer",
             "UNSUCCESS": "failed", "ERROR": "failed"}


def _party(side: Any) -> dict[str, Any]:
    if not isinstance(side, dict):
        return call_party(None)
    return call_party(side.get("number"), side.get("username"))


def _user(side: Any) -> str | None:
    if isinstance(side, dict) and side.get("type") == "user" and isinstance(side.get("username"), str):
        return str(side["username"])
    return None


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def record_call_id(record: dict[str, Any], id_field: str) -> str:
    value = record.get(id_field)
    if isinstance(value, (str, int)) and str(value):
        return str(value)
    caller, callee = _party(record.get("caller")), _party(record.get("callee"))
    fingerprint = f"{record.get('direction')}|{caller['as_sent']}|{callee['as_sent']}|{record.get('unix_timestamp')}"
    return "hist-" + hashlib.sha256(fingerprint.encode()).hexdigest()[:20]


def history_event(record: dict[str, Any], *, id_field: str) -> dict[str, Any]:
    """The `call.ended` event a history record stands for."""
    call_id = record_call_id(record, id_field)
    caller, callee = record.get("caller"), record.get("callee")
    if record.get("class") == "one_one":
        direction = "internal"
    else:
        direction = "outbound" if record.get("direction") == "from_ab" else "inbound"
    user = _user(callee) if direction == "inbound" else _user(caller)
    duration = _int(record.get("duration_seconds"))
    started = _int(record.get("unix_timestamp")) or int(time.time())
    ended = datetime.fromtimestamp(started + duration, UTC)
    status = str(record.get("status_detail") or "").upper()
    return {
        "type": "call.ended",
        "source": SOURCE,
        "id": f"history:{call_id}",
        "subject": call_id,
        "time": ended.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": {
            "call_id": call_id,
            "leg_id": None,
            "direction": direction,
            "from": _party(caller),
            "to": _party(callee),
            "agent": user,
            "did_number": did_number(record.get("did_number")),
            "outcome": _OUTCOMES.get(status, "unknown"),
            "hangup_cause": None,
            "duration_s": duration,
            "billing_s": _int(record.get("billing_seconds")),
            "recording": record.get("recording") or None,
            "reconciled": True,
            "raw": record,
        },
    }


class Reconciler:
    def __init__(self, hub: Hub, client: AntRingClient, config: AntRingConfig) -> None:
        self.hub = hub
        self.client = client
        self.config = config
        #: End of the last window reconciled (unix seconds).
        self.reconciled_until: float | None = None

    async def after_reconnect(self, down_since: float, up_at: float) -> int:
        """Fill the gap a connection outage left (from `down_since`, minus the look-back)."""
        return await self.reconcile(down_since - self.config.reconcile_lookback, up_at)

    async def periodic(self) -> int:
        now = time.time()
        since = (self.reconciled_until or now) - self.config.reconcile_lookback
        return await self.reconcile(since, now)

    async def reconcile(self, since: float, until: float) -> int:
        """Publish `call.ended` for every call in history started in the window whose end the store lacks."""
        if not self.config.reconcile:
            return 0
        start = datetime.fromtimestamp(since - WINDOW_MARGIN, UTC)
        stop = datetime.fromtimestamp(until + WINDOW_MARGIN, UTC)
        published = 0
        try:
            async for record in self.client.histories(start, stop):
                if await self._publish_if_unseen(record):
                    published += 1
        except HubError as exc:
            logger.warning("antring reconciliation stopped: %s", exc.message)
            return published
        self.reconciled_until = max(self.reconciled_until or 0.0, until)
        if published:
            self.hub.metrics.upstream_reconciled.labels(SOURCE).inc(published)
            logger.info("antring reconciliation published %d missed call(s)", published)
        return published

    async def _publish_if_unseen(self, record: dict[str, Any]) -> bool:
        if not isinstance(record, dict):
            return False
        call_id = record_call_id(record, self.config.history_id_field)
        seen = await self.hub.backend.find(path="call_id", value=call_id, agent=None, limit=SEEN_LOOKUP_LIMIT)
        if any(event.type == "call.ended" for event in seen):
            return False
        result = await self.hub.publish(
            history_event(record, id_field=self.config.history_id_field), default_source=SOURCE
        )
        return not result.duplicate
