"""The calls themselves: a small live projection of every vendor's `call.*` events.

    store commit ─▶ fan-out ─call_soon─▶ CallFigures.apply   (O(1) per event: one dict look-up,
                                            │                  one JSON decode for call.* only)
                                            ├─▶ calls in progress (direction × state), gauges
                                            ├─▶ on an end: counters, histograms, the minute bucket
                                            └─▶ snapshot(): now, last 15 minutes, today (GET /v1/stats/calls)

A call is keyed by its `source` and `data.call_id`. It is **in progress** from its first event
until it ends: its customer leg ends (the leg whose id is the call's, or an end without a leg),
a reconciled end arrives, or every leg seen has ended. A call silent for `[stats] stale_after`
is taken as over (its end was lost) and leaves the figures without being counted as ended.

Definitions (OPERATIONS.md, DECISIONS.md):

- **answered**: an answer (`call.answered` / `call.bridged`) was seen on any leg, or the end says
  `outcome = answered`.
- **time to answer**: from the call's first event to its first answer (event times), or the end's
  `ringing_s` when the hub saw neither.
- **talk time**: from the first answer to the end, or the end's `billing_s` (else `duration_s` less
  `ringing_s`, else `duration_s`) when the hub did not see the answer.
- **abandoned**: an inbound call that ended unanswered.
- **service level**: inbound calls answered within `[stats] service_level_threshold` (default 20 s)
  over inbound calls that ended, both counted when the call ends.

A `call.ended` with no earlier event of its call (a CDR poller's, say) is a whole call by itself:
its outcome and durations come from the event. At start the projection is rebuilt from the store
(the events since the earlier of today's midnight and `stale_after` ago), so the in-progress
figures and today's survive a restart; counters and histograms start from zero, as Prometheus
expects of a restarted process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import orjson

from hub.config import StatsConfig
from hub.events import Event, event_time
from hub.matcher import TypeFilter
from hub.ops.metrics import LabelSet, Metrics

__all__ = ["CallFigures", "CALL_TYPES", "DIRECTIONS", "OUTCOMES", "STATES", "RECENT_WINDOW"]

logger = logging.getLogger("callhub.calls")

#: The events the projection reads; every other type costs one set look-up.
CALL_TYPES = frozenset({"call.ringing", "call.answered", "call.bridged", "call.held", "call.resumed", "call.ended"})
DIRECTIONS = ("inbound", "outbound", "internal", "unknown")
OUTCOMES = ("answered", "busy", "no_answer", "cancelled", "failed", "unknown")
STATES = ("ringing", "answered", "held")
#: "The last 15 minutes" of the stats endpoint, counted in whole minutes (the current one included).
RECENT_WINDOW = 15 * 60
#: Minute buckets of ended calls kept: a day and an hour, enough for "today" in any time zone.
BUCKET_MINUTES = 25 * 60
#: Calls that ended remembered, so that a late leg or a second end of the same call is not counted again.
ENDED_MEMORY = 20_000
#: Events read per page when the projection is rebuilt at start.
REBUILD_PAGE = 1000
#: How often calls silent for `stale_after` are looked for.
SWEEP_INTERVAL = 60.0
_ANSWER_TYPES = frozenset({"call.answered", "call.bridged"})
_KNOWN_DIRECTIONS = frozenset(DIRECTIONS[:3])
_OUTCOMES = frozenset(OUTCOMES)


class _Log(Protocol):
    """What the rebuild reads: the store's `seq_at` and `read` (hub.store.base.Backend)."""

    async def seq_at(self, when: float) -> int: ...

    async def read(self, after: int, *, limit: int, agent: str | None, types: TypeFilter) -> Any: ...


class _Call:
    __slots__ = ("direction", "state", "started", "answered_at", "answered", "agent", "did", "legs", "seen")

    def __init__(self, direction: str, started: float) -> None:
        self.direction = direction
        self.state = "ringing"
        self.started = started
        self.answered_at: float | None = None
        self.answered = False
        self.agent: Any = None
        self.did: Any = None
        self.legs: set[str] = set()
        self.seen = started


@dataclass(slots=True)
class _Bucket:
    """Calls that ended in one minute, summed."""

    ended: int = 0
    inbound: int = 0
    answered: int = 0
    abandoned: int = 0
    in_threshold: int = 0
    answer_sum: float = 0.0
    answer_count: int = 0
    talk_sum: float = 0.0
    talk_count: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    directions: dict[str, int] = field(default_factory=dict)

    def add(self, other: _Bucket) -> None:
        self.ended += other.ended
        self.inbound += other.inbound
        self.answered += other.answered
        self.abandoned += other.abandoned
        self.in_threshold += other.in_threshold
        self.answer_sum += other.answer_sum
        self.answer_count += other.answer_count
        self.talk_sum += other.talk_sum
        self.talk_count += other.talk_count
        for name, n in other.outcomes.items():
            self.outcomes[name] = self.outcomes.get(name, 0) + n
        for name, n in other.directions.items():
            self.directions[name] = self.directions.get(name, 0) + n

    def describe(self) -> dict[str, Any]:
        return {
            "ended": self.ended,
            "inbound": self.inbound,
            "answered": self.answered,
            "abandoned": self.abandoned,
            "answered_within_threshold": self.in_threshold,
            "service_level": round(self.in_threshold / self.inbound, 4) if self.inbound else None,
            "abandon_rate": round(self.abandoned / self.inbound, 4) if self.inbound else None,
            "average_answer_s": round(self.answer_sum / self.answer_count, 1) if self.answer_count else None,
            "average_talk_s": round(self.talk_sum / self.talk_count, 1) if self.talk_count else None,
            "by_outcome": {name: self.outcomes.get(name, 0) for name in OUTCOMES},
            "by_direction": {name: self.directions.get(name, 0) for name in DIRECTIONS},
        }


def _direction(value: Any) -> str:
    return value if isinstance(value, str) and value in _KNOWN_DIRECTIONS else "unknown"


def _seconds(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e7:
        return float(value)
    return None


class CallFigures:
    """Calls in progress and ended, by direction, state and outcome; fed committed events."""

    def __init__(self, config: StatsConfig, metrics: Metrics, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.zone = ZoneInfo(config.time_zone)
        self.threshold = config.service_level_threshold
        self._clock = clock
        self._metrics = metrics
        self._calls: dict[tuple[str, str], _Call] = {}
        self._ended: dict[tuple[str, str], None] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._in_progress = {(d, s): 0 for d in DIRECTIONS for s in STATES}
        self._gauges = {(d, s): metrics.calls_in_progress.labels(d, s) for d in DIRECTIONS for s in STATES}
        self._agents = LabelSet(config.agents)
        self._dids = LabelSet(config.dids)
        #: False while rebuilding: counters and histograms only count what happens live.
        self._live = False
        #: Live events that arrived while rebuilding (applied after it, those above the rebuilt head).
        self._held: list[Event] | None = None
        metrics.calls_threshold.set(self.threshold)
        metrics.calls_target.set(config.service_level_target)
        for direction in DIRECTIONS:
            for outcome in OUTCOMES:
                metrics.calls_ended.labels(direction, outcome)
            metrics.call_answer_time.labels(direction)
            metrics.call_talk_time.labels(direction)

    # -- feeding ----------------------------------------------------------------------------------

    def on_commit(self, events: list[Event]) -> None:
        """The commit listener: the call events of a committed batch, applied next (never inside the fan-out)."""
        calls = [event for event in events if event.type in CALL_TYPES]
        if calls:
            asyncio.get_running_loop().call_soon(self._apply_live, calls)

    def _apply_live(self, events: list[Event]) -> None:
        if self._held is not None:
            self._held.extend(events)
            return
        for event in events:
            self._apply_event(event)

    async def start(self, log: _Log, head: int) -> None:
        """Rebuild from the store: the call events since the earlier of today's midnight and
        `stale_after` ago, up to `head` (what was committed before the hub serves)."""
        self._held = []
        now = self._clock()
        since = min(self._midnight(now), now - self.config.stale_after)
        after = await log.seq_at(since)
        types = TypeFilter(tuple(CALL_TYPES))
        rebuilt = 0
        try:
            while after < head:
                page = await log.read(after, limit=REBUILD_PAGE, agent=None, types=types)
                for event in page.events:
                    if event.seq <= head:
                        self._apply_event(event)
                        rebuilt += 1
                if page.next <= after:
                    break
                after = page.next
        finally:
            held, self._held = self._held, None
            self._live = True
            self.sweep()
            for event in held:
                if event.seq > head:
                    self._apply_event(event)
        if rebuilt:
            logger.info("call figures rebuilt from %d stored call event(s); %d call(s) in progress",
                        rebuilt, len(self._calls))

    def _apply_event(self, event: Event) -> None:
        try:
            body = orjson.loads(event.body)
            self.apply(body)
        except Exception:
            logger.exception("call figures could not apply seq %d", event.seq)

    def apply(self, body: dict[str, Any]) -> None:
        """One call event (its CloudEvent dict)."""
        type_ = body.get("type")
        data = body.get("data")
        if type_ not in CALL_TYPES or not isinstance(data, dict):
            return
        now = self._clock()
        at = min(event_time(body, default=now), now)
        call_id = data.get("call_id")
        if not isinstance(call_id, str):
            if type_ == "call.ended":
                self._end(None, _Call(_direction(data.get("direction")), at), data, at)
            return
        key = (str(body.get("source")), call_id)
        if key in self._ended:
            return
        call = self._calls.pop(key, None)  # re-inserted below: the dict stays in order of activity
        if call is None:
            call = _Call(_direction(data.get("direction")), at)
            call.agent, call.did = data.get("agent"), data.get("did_number")
            if type_ == "call.ended":
                self._end(key, call, data, at)
                return
            self._count(call, +1)
        elif call.direction == "unknown" and data.get("direction") is not None:
            self._count(call, -1)
            call.direction = _direction(data.get("direction"))
            self._count(call, +1)
        # Live, silence is measured on the hub's clock (a vendor's clock may be off); rebuilding,
        # the event's time is all there is.
        call.seen = now if self._live else max(call.seen, at)
        if call.agent is None:
            call.agent = data.get("agent")
        if call.did is None:
            call.did = data.get("did_number")
        leg = data.get("leg_id")
        if type_ == "call.ended":
            if isinstance(leg, str) and leg != call_id and not data.get("reconciled"):
                call.legs.discard(leg)
                if data.get("outcome") == "answered":
                    call.answered = True
                if call.legs:
                    self._calls[key] = call
                    return
            self._count(call, -1)
            self._end(key, call, data, at)
            return
        if isinstance(leg, str) and len(call.legs) < 16:
            call.legs.add(leg)
        state = call.state
        if type_ in _ANSWER_TYPES:
            call.answered = True
            if call.answered_at is None:
                call.answered_at = at
            state = "answered" if state == "ringing" else state
        elif type_ == "call.held":
            state = "held"
        elif type_ == "call.resumed" and state == "held":
            state = "answered"
        if state != call.state:
            self._count(call, -1)
            call.state = state
            self._count(call, +1)
        self._calls[key] = call
        if len(self._calls) > self.config.max_calls:
            self._expire(next(iter(self._calls)))

    def _count(self, call: _Call, delta: int) -> None:
        key = (call.direction, call.state)
        n = self._in_progress[key] = self._in_progress[key] + delta
        self._gauges[key].set(n)

    def _end(self, key: tuple[str, str] | None, call: _Call, data: dict[str, Any], at: float) -> None:
        if key is not None:
            self._ended[key] = None
            if len(self._ended) > ENDED_MEMORY:
                del self._ended[next(iter(self._ended))]
        outcome = data.get("outcome")
        answered = call.answered or outcome == "answered"
        if answered:
            outcome = "answered"
        elif outcome not in _OUTCOMES:
            outcome = "unknown"
        ringing_s, billing_s, duration_s = (_seconds(data.get(k)) for k in ("ringing_s", "billing_s", "duration_s"))
        answer_s = talk_s = None
        if answered:
            if call.answered_at is not None:
                if call.answered_at > call.started or ringing_s is None:
                    answer_s = call.answered_at - call.started
                else:
                    answer_s = ringing_s
                talk_s = max(0.0, at - call.answered_at)
            else:
                answer_s = ringing_s
                if billing_s is not None:
                    talk_s = billing_s
                elif duration_s is not None:
                    talk_s = max(0.0, duration_s - (ringing_s or 0.0))
        direction = call.direction
        inbound = direction == "inbound"
        abandoned = inbound and not answered
        in_threshold = inbound and answer_s is not None and answer_s <= self.threshold
        bucket = self._bucket(at)
        if bucket is not None:
            bucket.ended += 1
            bucket.inbound += inbound
            bucket.answered += answered
            bucket.abandoned += abandoned
            bucket.in_threshold += in_threshold
            bucket.outcomes[outcome] = bucket.outcomes.get(outcome, 0) + 1
            bucket.directions[direction] = bucket.directions.get(direction, 0) + 1
            if answer_s is not None:
                bucket.answer_sum += answer_s
                bucket.answer_count += 1
            if talk_s is not None:
                bucket.talk_sum += talk_s
                bucket.talk_count += 1
        if not self._live:
            return
        m = self._metrics
        m.calls_ended.labels(direction, outcome).inc()
        if abandoned:
            m.calls_abandoned.inc()
        if in_threshold:
            m.calls_in_threshold.inc()
        if answer_s is not None:
            m.call_answer_time.labels(direction).observe(answer_s)
        if talk_s is not None:
            m.call_talk_time.labels(direction).observe(talk_s)
        agent = data.get("agent", call.agent)
        if agent is not None and self.config.agents:
            m.calls_by_agent.labels(self._agents(agent), outcome).inc()
        did = data.get("did_number", call.did)
        if inbound and did is not None and self.config.dids:
            m.calls_by_did.labels(self._dids(did), outcome).inc()

    def _bucket(self, at: float) -> _Bucket | None:
        minute = int(at // 60)
        if minute * 60 < self._clock() - BUCKET_MINUTES * 60:
            return None
        bucket = self._buckets.get(minute)
        if bucket is None:
            bucket = self._buckets[minute] = _Bucket()
        return bucket

    # -- expiry -----------------------------------------------------------------------------------

    def _expire(self, key: tuple[str, str]) -> None:
        call = self._calls.pop(key)
        self._count(call, -1)
        if self._live:
            self._metrics.calls_expired.inc()

    def sweep(self) -> int:
        """Drop calls silent for `stale_after` and minute buckets older than a day and an hour; how many calls."""
        now = self._clock()
        limit = now - self.config.stale_after
        expired = [key for key, call in self._calls.items() if call.seen < limit]
        for key in expired:
            self._expire(key)
        oldest = int(now // 60) - BUCKET_MINUTES
        for minute in [m for m in self._buckets if m < oldest]:
            del self._buckets[minute]
        return len(expired)

    async def sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep()

    # -- reading ----------------------------------------------------------------------------------

    def _midnight(self, now: float) -> float:
        local = datetime.fromtimestamp(now, self.zone)
        return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

    def _since(self, since: float) -> _Bucket:
        total = _Bucket()
        first = int(since // 60)
        for minute, bucket in self._buckets.items():
            if minute >= first:
                total.add(bucket)
        return total

    def in_progress(self) -> dict[str, Any]:
        by_state = {s: sum(self._in_progress[d, s] for d in DIRECTIONS) for s in STATES}
        by_direction = {d: sum(self._in_progress[d, s] for s in STATES) for d in DIRECTIONS}
        return {"total": sum(by_state.values()), "by_state": by_state, "by_direction": by_direction}

    def snapshot(self) -> dict[str, Any]:
        """What `GET /v1/stats/calls` answers: now, the last 15 minutes, today in the centre's time zone."""
        now = self._clock()
        midnight = self._midnight(now)
        recent_from = (int(now // 60) * 60) - RECENT_WINDOW + 60

        def stamp(t: float) -> str:
            return datetime.fromtimestamp(t, self.zone).isoformat(timespec="seconds")

        return {
            "time_zone": self.config.time_zone,
            "service_level_threshold_s": self.threshold,
            "service_level_target": self.config.service_level_target,
            "at": stamp(now),
            "now": {"in_progress": self.in_progress()},
            "last_15m": {"since": stamp(recent_from), **self._since(recent_from).describe()},
            "today": {"since": stamp(midnight), **self._since(midnight).describe()},
        }

