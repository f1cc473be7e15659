"""Gap reconciliation: calls that ended while the socket was down, read back from call history.

After every reconnect (and every `reconcile_interval` while connected) the reconciler reads
`/oapi/v1/call/histories` for the window that may hold missed calls and sets each record beside
the calls the store already holds:

    record matches a call that ended        -> nothing (it was seen live, or reconciled before)
    record matches a call left open         -> one `call.ended` for that call's `call_id`
      (ringing or answered when the socket dropped)
    record matches nothing                  -> one reconciled `call.ended`, a call of its own

Reconciled events carry `data.reconciled = true` and the id `history:<call_id>`. The answer comes
from the store (`Backend.stored_between`), never from memory, so it holds across hub restarts; the
ids depend only on the record and the stored calls, so a window read twice (reconciliations
overlap by `reconcile_lookback`) publishes duplicates the store drops.

**Matching without a call id.** The documented record has none (`caller`, `callee`, `class`,
`did_number`, `direction`, `status_detail`, `duration_seconds`, `unix_timestamp`,
`billing_seconds`, `recording`), so a record is matched to a stored call by what both have:

- the direction (`one_one` is internal, `from_ab` outbound, `to_ab` inbound);
- the external party (the side that is not a `user`), in the normal form, must be a party of the
  call (`84912345678`, `0912345678` and `01693608879`'s new number are one number);
- the start: `unix_timestamp` must lie within `tolerance` (`reconcile_tolerance`) of the call's
  span from its first signal to its answer, since a record may start at ring time or at answer.
  A call never seen answered spans its ring plus the record's own ringing time
  (`duration_seconds - billing_seconds`). The tolerance covers the two clocks (the switch's
  `Timestamp`, the history's `unix_timestamp`) and whole-second rounding;
- the internal party (a `user` side: its `number`, the extension or device name, and
  `username`, mapped to the configured agents) ranks the candidates: a call whose agent or
  extension agrees comes first. It excludes a call only for internal calls (which have no external
  number), and only when both sides name agents or extensions and none agree: in a queue, a ring
  group or a transfer the agent the socket saw ringing is not always the one the record names,
  and a wrong exclusion would publish the call twice;
- then the smallest distance in time, then the closest duration, then ids (deterministic).

Pairs are taken best first, one-to-one: a stored call takes at most one record, a record at most
one call. With `history_id_field` set (accounts whose records carry the socket's call id), a record
holding that field is matched by it instead.

Assumptions where the vendor is silent: `unix_timestamp` is when the call started (ring or
answer), in seconds (a value above 10^12 is read as milliseconds), and it ended
`duration_seconds` later; `billing_seconds` is the talk time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from handlers.antring.client import AntRingClient
from handlers.antring.config import AntRingConfig
from handlers.antring.normalize import AgentIndex, did_number
from hub.plugin import EventStore, HubError, Publish, Upstream, call_party, event_time, number_key

logger = logging.getLogger("callhub.antring")

__all__ = ["Reconciler", "HistoryCall", "StoredCall", "history_event", "match_records", "stored_calls"]

SOURCE = "antring"
#: Extra seconds on both sides of a reconciliation window (clocks differ, records lag).
WINDOW_MARGIN = 120.0
#: Stored events are read from this much before the window too: a call may ring, or wait in a
#: queue, this long before a record that starts at its answer.
RING_ALLOWANCE = 600.0
#: Stored events read per page; beyond `MAX_STORED_EVENTS` a reconciliation stops rather than
#: decide on part of what the store holds (which would publish seen calls again).
STORE_PAGE = 1000
MAX_STORED_EVENTS = 500_000
#: The stored events that tell which calls the hub saw, and how far each got.
CALL_TYPES = ("call.ringing", "call.answered", "call.bridged", "call.held", "call.resumed", "call.ended")

_OUTCOMES = {"SUCCESS": "answered", "BUSY": "busy", "CANCELLED": "cancelled", "IVR": "no_answer",
             "UNSUCCESS": "failed", "ERROR": "failed"}


def _int(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) else 0


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _is_user(side: Any) -> bool:
    return isinstance(side, dict) and side.get("type") == "user"


@dataclass
class HistoryCall:
    """One history record, read once: what matching and the reconciled event need from it."""

    record: dict[str, Any]
    index: int
    direction: str
    #: Normal forms (`number_key`) of the sides that are not users.
    external: frozenset[str]
    #: `number` and `username` of the user sides, as sent.
    identities: frozenset[str]
    #: The configured agents those name.
    agents: frozenset[str]
    #: The agent the call belongs to (the user side facing the customer), configured name if known.
    agent: str | None
    start: float
    duration: int
    ring_s: int
    #: Stable over repeated reads of the same record: its own call id when it matches nothing.
    fingerprint: str

    @classmethod
    def of(cls, record: dict[str, Any], index: int, agents: AgentIndex, agent_names: frozenset[str]) -> HistoryCall:
        caller, callee = record.get("caller"), record.get("callee")
        if record.get("class") == "one_one":
            direction = "internal"
        else:
            direction = "outbound" if record.get("direction") == "from_ab" else "inbound"
        external, identities, named = set(), set(), set()
        for side in (caller, callee):
            if not isinstance(side, dict):
                continue
            if _is_user(side):
                names = {n for n in (_text(side.get("number")), _text(side.get("username"))) if n}
                identities |= names
                named |= {a for n in names for a in _agents_named(n, agents, agent_names)}
            else:
                key = number_key(side.get("number"))
                if key is not None:
                    external.add(key)
        own = callee if direction == "inbound" else caller
        agent = None
        if _is_user(own):
            assert isinstance(own, dict)
            candidates = [_text(own.get("username")), _text(own.get("number"))]
            resolved = [a for n in candidates if n for a in _agents_named(n, agents, agent_names)]
            agent = resolved[0] if resolved else _text(own.get("username"))
        duration = max(0, _int(record.get("duration_seconds")))
        parts = [record.get("direction"), _sent(caller), _sent(callee), record.get("unix_timestamp"), duration]
        fingerprint = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:20]
        start = float(_int(record.get("unix_timestamp")))
        if start > 1e12:  # milliseconds, though the document shows seconds
            start /= 1000.0
        return cls(record, index, direction, frozenset(external), frozenset(identities), frozenset(named), agent,
                   start, duration,
                   max(0, duration - _int(record.get("billing_seconds"))), fingerprint)


def _sent(side: Any) -> Any:
    return side.get("number") if isinstance(side, dict) else None


def _agents_named(name: str, agents: AgentIndex, agent_names: frozenset[str]) -> set[str]:
    """The configured agents a record's user name, device name or extension stands for."""
    found = {name} if name in agent_names else set()
    for index in (agents.by_sip_user, agents.by_extension):
        if name in index:
            found.add(index[name])
    return found


@dataclass
class StoredCall:
    """What the store holds about one call (`call_id`), from its events."""

    call_id: str
    #: Seen on the socket (not only through an earlier reconciliation).
    live: bool = False
    started: float = math.inf
    answered: float | None = None
    directions: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)
    extensions: set[str] = field(default_factory=set)
    agents: set[str] = field(default_factory=set)
    #: Every leg seen, and whether it ended.
    legs: dict[str, bool] = field(default_factory=dict)
    own_leg_ended: bool = False
    reconciled_end: bool = False
    duration: int | None = None

    @property
    def ended(self) -> bool:
        """Its end is stored: the call's own leg ended, every leg seen ended, or a reconciliation closed it."""
        return self.reconciled_end or self.own_leg_ended or (bool(self.legs) and all(self.legs.values()))


def stored_calls(events: Iterable[dict[str, Any]], is_extension: Callable[[str | None], bool]) -> dict[str, StoredCall]:
    """The calls that call events (as stored) describe, by `call_id`."""
    calls: dict[str, StoredCall] = {}
    for event in events:
        data = event.get("data")
        call_id = data.get("call_id") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(call_id, str) or not call_id:
            continue
        call = calls.setdefault(call_id, StoredCall(call_id))
        type_ = event.get("type")
        if data.get("reconciled") is True:
            call.reconciled_end = call.reconciled_end or type_ == "call.ended"
            continue
        call.live = True
        at = event_time(event, default=math.inf)
        call.started = min(call.started, at)
        if type_ in ("call.answered", "call.bridged") and at < (call.answered or math.inf):
            call.answered = at
        if isinstance(data.get("direction"), str):
            call.directions.add(data["direction"])
        if isinstance(data.get("agent"), str):
            call.agents.add(data["agent"])
        for side in ("from", "to"):
            party = data.get(side)
            if not isinstance(party, dict):
                continue
            sent = party.get("as_sent") if isinstance(party.get("as_sent"), str) else party.get("number")
            if not isinstance(sent, str) or not sent.strip():
                continue
            if is_extension(sent):
                call.extensions.add(sent.strip())
            else:
                key = number_key(party.get("number"))
                if key is not None:
                    call.external.add(key)
        leg = data["leg_id"] if isinstance(data.get("leg_id"), str) else call_id
        ended = type_ == "call.ended"
        call.legs[leg] = call.legs.get(leg, False) or ended
        if ended:
            call.own_leg_ended = call.own_leg_ended or leg == call_id
            duration = data.get("duration_s")
            if isinstance(duration, int) and not isinstance(duration, bool):
                call.duration = max(call.duration or 0, duration)
    return calls


def _party_rank(record: HistoryCall, call: StoredCall) -> int | None:
    """0: the internal party agrees; 1: cannot tell; None: it disagrees and that excludes the call."""
    if record.agents & call.agents or record.identities & call.extensions:
        return 0
    if record.direction == "internal":
        extensions = {i for i in record.identities if i.isdigit()}
        if (record.agents and call.agents) or (extensions and call.extensions):
            return None
    return 1


def match_records(records: list[HistoryCall], calls: list[StoredCall], tolerance: float) -> dict[int, StoredCall]:
    """Each record's stored call (by `HistoryCall.index`), one-to-one, best pairs first (module docstring)."""
    by_number: dict[str, list[StoredCall]] = {}
    internal: list[StoredCall] = []
    for call in calls:
        for key in call.external:
            by_number.setdefault(key, []).append(call)
        if "internal" in call.directions:
            internal.append(call)
    pairs: list[tuple[tuple[int, float, int, str, str], HistoryCall, StoredCall]] = []
    for record in records:
        if record.external:
            candidates = by_number.get(min(record.external), [])
        else:
            candidates = internal
        for call in candidates:
            if record.direction not in call.directions or not record.external <= call.external:
                continue
            rank = _party_rank(record, call)
            if rank is None:
                continue
            # The record starts somewhere from the first ring to the answer.
            until = call.answered if call.answered is not None else call.started + record.ring_s
            distance = max(0.0, call.started - record.start, record.start - max(until, call.started))
            if distance > tolerance:
                continue
            closeness = abs(call.duration - record.duration) if call.duration is not None else 0
            pairs.append(((rank, distance, closeness, call.call_id, record.fingerprint), record, call))
    pairs.sort(key=lambda pair: pair[0])
    matched: dict[int, StoredCall] = {}
    taken: set[str] = set()
    for _, record, call in pairs:
        if record.index not in matched and call.call_id not in taken:
            matched[record.index] = call
            taken.add(call.call_id)
    return matched


def history_event(history: HistoryCall, *, call_id: str, agent: str | None = None) -> dict[str, Any]:
    """The reconciled `call.ended` a history record stands for, as call `call_id` of `agent`."""
    record = history.record
    caller, callee = record.get("caller"), record.get("callee")
    ended = datetime.fromtimestamp((history.start or time.time()) + history.duration, UTC)
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
            "direction": history.direction,
            "from": _party(caller),
            "to": _party(callee),
            "agent": agent if agent is not None else history.agent,
            "did_number": did_number(record.get("did_number")),
            "outcome": _OUTCOMES.get(status, "unknown"),
            "hangup_cause": None,
            "duration_s": history.duration,
            "billing_s": max(0, _int(record.get("billing_seconds"))),
            "recording": record.get("recording") or None,
            "reconciled": True,
            "raw": record,
        },
    }


def _party(side: Any) -> dict[str, Any]:
    if not isinstance(side, dict):
        return call_party(None)
    return call_party(side.get("number"), side.get("username"))


class _TooMuchStored(Exception):
    pass


class Reconciler:
    def __init__(self, client: AntRingClient, config: AntRingConfig, *, agents: AgentIndex,
                 is_extension: Callable[[str | None], bool], publish: Publish, store: EventStore,
                 upstream: Upstream) -> None:
        self._publish = publish
        self._store = store
        self._upstream = upstream
        self.client = client
        self.config = config
        self.agents = agents
        self.agent_names = frozenset(config.agents)
        self.is_extension = is_extension
        #: End of the last window reconciled (unix seconds).
        self.reconciled_until: float | None = None
        # A reconnect and the periodic run may fall together; one at a time reads the store once each.
        self._lock = asyncio.Lock()

    async def after_reconnect(self, down_since: float, up_at: float) -> int:
        """Fill the gap a connection outage left (from `down_since`, minus the look-back)."""
        return await self.reconcile(down_since - self.config.reconcile_lookback, up_at)

    async def periodic(self) -> int:
        now = time.time()
        since = (self.reconciled_until or now) - self.config.reconcile_lookback
        return await self.reconcile(since, now)

    async def reconcile(self, since: float, until: float) -> int:
        """Publish what the history records of calls started in the window say the store lacks."""
        if not self.config.reconcile:
            return 0
        async with self._lock:
            records, complete = await self._records(since - WINDOW_MARGIN, until + WINDOW_MARGIN)
            if not records:
                if complete:
                    self.reconciled_until = max(self.reconciled_until or 0.0, until)
                self._upstream.reconciled("complete" if complete else "failed")
                return 0
            history = [HistoryCall.of(r, i, self.agents, self.agent_names) for i, r in enumerate(records)]
            try:
                calls = await self._stored_calls(min(h.start for h in history) - self.config.reconcile_tolerance
                                                 - RING_ALLOWANCE - WINDOW_MARGIN)
            except _TooMuchStored:
                logger.warning("antring reconciliation skipped: more than %d stored call events to compare with",
                               MAX_STORED_EVENTS)
                self._upstream.reconciled("skipped")
                return 0
            except HubError as exc:
                logger.warning("antring reconciliation stopped: the store did not answer: %s", exc.message)
                self._upstream.reconciled("failed")
                return 0
            published = 0
            for event in self.plan(history, calls):
                try:
                    result = await self._publish(event, default_source=SOURCE)
                except HubError as exc:
                    logger.warning("antring reconciled call not stored: %s", exc.message)
                    complete = False
                    continue
                published += not result.duplicate
            if complete:
                self.reconciled_until = max(self.reconciled_until or 0.0, until)
            self._upstream.reconciled("complete" if complete else "partial")
        if published:
            self._upstream.recovered(published)
            logger.info("antring reconciliation published %d missed call(s)", published)
        return published

    def plan(self, history: list[HistoryCall], calls: dict[str, StoredCall]) -> list[dict[str, Any]]:
        """The events the records call for, given the stored calls (see the module docstring)."""
        events: list[dict[str, Any]] = []
        by_id_field: set[str] = set()
        unmatched: list[HistoryCall] = []
        id_field = self.config.history_id_field
        for h in history:
            raw_id = h.record.get(id_field) if id_field else None
            record_id = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else ""
            if not record_id:
                unmatched.append(h)
                continue
            by_id_field.add(record_id)
            call = calls.get(record_id)
            if call is None or not call.ended:
                events.append(self._closing(h, call) if call else history_event(h, call_id=record_id))
        candidates = [c for c in calls.values() if c.live and c.call_id not in by_id_field]
        matched = match_records(unmatched, candidates, self.config.reconcile_tolerance)
        for h in unmatched:
            call = matched.get(h.index)
            if call is None:
                events.append(history_event(h, call_id="hist-" + h.fingerprint))
            elif not call.ended:
                events.append(self._closing(h, call))
        return events

    def _closing(self, history: HistoryCall, call: StoredCall) -> dict[str, Any]:
        """The end of a call the socket left open, as its record tells it, under the call's own id."""
        agent = history.agent if history.agent in call.agents or not call.agents else min(call.agents)
        return history_event(history, call_id=call.call_id, agent=agent)

    async def _records(self, start: float, stop: float) -> tuple[list[dict[str, Any]], bool]:
        """The window's history records, and whether all of them were read (False: the vendor failed midway)."""
        records: list[dict[str, Any]] = []
        try:
            async for record in self.client.histories(datetime.fromtimestamp(start, UTC),
                                                      datetime.fromtimestamp(stop, UTC)):
                if isinstance(record, dict):
                    records.append(record)
        except HubError as exc:
            logger.warning("antring reconciliation read only part of the history: %s", exc.message)
            return records, False
        return records, True

    async def _stored_calls(self, since: float) -> dict[str, StoredCall]:
        events: list[dict[str, Any]] = []
        until = time.time() + WINDOW_MARGIN
        after = 0
        while True:
            page = await self._store.stored_between(since=since, until=until, types=CALL_TYPES, source=SOURCE,
                                                         after=after, limit=STORE_PAGE)
            events.extend(orjson.loads(event.body) for event in page)
            if len(page) < STORE_PAGE:
                return stored_calls(events, self.is_extension)
            if len(events) >= MAX_STORED_EVENTS:
                raise _TooMuchStored
            after = page[-1].seq
