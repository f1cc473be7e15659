"""Running actions: journaled before they start, bounded, timed out, and reported as events.

An action runs because a rule fired for an event, or because a route asked for it (the
click-to-call button): both go through `ActionRunner`, so both are journaled, limited and reported
the same way. Every action has a key: `<rule>|<event source>|<event id>|<index>` for a rule's,
`api|<request id>|0` for a route's. Before anything is sent, the key is written to the journal
(`hub.store.base.Journal`, fsynced); a key already there never runs again. So a side effect
happens at most once per rule, event and action, across crashes and restarts. After a restart,
an action the journal shows started but not finished is:

- run again if its executor is *idempotent* (the vendor deduplicates it, e.g. an AntCRM ticket
  keyed by `ticketIdApiRing`);
- otherwise reported `unknown` (an `action.failed` with `data.status = "unknown"`) and not
  repeated: ringing a phone twice is worse than not knowing whether it rang.

Each outcome is an event: `action.succeeded` or `action.failed`, with the rule (null for a
route's), the action, the triggering event's id, the `target` the action type declares fit to
publish, and the vendor's answer or the error. Executors run in tasks the hub owns, at most
`[actions] concurrency` at once per group (a vendor), each under `[actions] timeout`; none of
this touches the fan-out.

The runner also keeps the rules cursor: how far the event log has been evaluated, so events
committed just before a crash are evaluated after the restart (see `ActionRunner.submit`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from hub.config import ActionsConfig
from hub.events import HUB_SOURCE, Event, Publish, hub_event
from hub.exceptions import HubError, NotFound
from hub.ops.metrics import Metrics
from hub.rules.engine import Firing, chain_depth
from hub.store.base import Journal, JournalEntry, Unfinished
from hub.tasks import Spawn

logger = logging.getLogger("callhub.actions")

__all__ = ["ActionContext", "Executor", "ActionSpec", "ActionRunner", "Outcome", "Describe", "public_params",
           "OutcomeListener"]

#: How often the rules cursor is written when no rule fired (a lagging cursor only means a few
#: events are evaluated again after a crash, and the journal makes that harmless).
CURSOR_FLUSH_INTERVAL = 1.0
#: The `rule` journaled for an action a route asked for.
ROUTE = "api"


@dataclass(frozen=True)
class ActionContext:
    """What an executor knows besides its parameters."""

    key: str
    #: The rule that fired (None: a route asked for the action).
    rule: str | None
    #: The triggering event (for a route's action: who asked and for which agent).
    event: Mapping[str, Any]


Executor = Callable[[dict[str, Any], ActionContext], Awaitable[Any]]
#: An action's parameters -> the parts of them fit to publish.
Describe = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ActionSpec:
    type: str
    run: Executor
    #: Safe to send again after a crash (the vendor deduplicates it by a key we derive).
    idempotent: bool
    #: Concurrency group, usually the vendor's name.
    group: str
    #: Parameters every rule using it must give (checked when rules load).
    required: tuple[str, ...] = ()
    #: What `action.*` events may show of a request (`data.target`): every subscriber who sees
    #: them reads it, so never a header, a credential or an `${ENV}` value. None: nothing.
    describe: Describe | None = None


def public_params(*names: str) -> Describe:
    """A `describe` that shows these parameters (when they are scalars) and nothing else."""

    def describe(params: Mapping[str, Any]) -> dict[str, Any]:
        return {n: params[n] for n in names if isinstance(params.get(n), (str, int, float, bool))}

    return describe


class Outcome(NamedTuple):
    """How an action ended: `succeeded`, `failed` or `unknown`; the answer, or the error and its code."""

    state: str
    result: Any = None
    error: str | None = None
    code: str | None = None


#: Told how each rule's action ended: (rule, state); the rules keep their counters with it.
OutcomeListener = Callable[[str, str], None]


def action_key(rule: str, event: Mapping[str, Any], index: int) -> str:
    return f"{rule}|{event.get('source')}|{event.get('id')}|{index}"


class ActionRunner:
    """Journals, runs and reports actions; keeps the rules cursor.

    The cursor is the highest seq whose firings are all in the journal. Firings are journaled
    in the same write that moves the cursor past their event; events that fire nothing move it
    lazily (every `CURSOR_FLUSH_INTERVAL`). After a crash, the hub evaluates again the events
    after the cursor: actions already journaled are not run again, the others run now.
    """

    def __init__(self, journal: Journal, config: ActionsConfig, *, publish: Publish, spawn: Spawn,
                 stored_event: Callable[[int], Awaitable[Event | None]], metrics: Metrics) -> None:
        self.journal = journal
        self.config = config
        self._publish = publish
        self._spawn = spawn
        self._stored_event = stored_event
        self._metrics = metrics
        #: Executors by action type: the hub's own and the vendors' (`add`, before start).
        self.specs: dict[str, ActionSpec] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._cursor_pending = 0
        self._cursor_written = 0
        #: Actions accepted and not finished (waiting for their vendor's turn, or running).
        self.pending = 0
        #: Keys of a gone process's idempotent actions this one is running again.
        self._resumed: set[str] = set()
        self.on_outcome: OutcomeListener = lambda rule, state: None
        metrics.actions_pending.set_function(lambda: self.pending)

    def add(self, spec: ActionSpec) -> None:
        """An action type rules and routes may use."""
        if spec.type in self.specs:
            raise ValueError(f"action type {spec.type!r} is registered twice")
        self.specs[spec.type] = spec
        self._limits.setdefault(spec.group, asyncio.Semaphore(self.config.concurrency))

    def timeout_for(self, type_: str) -> float:
        return self.config.timeouts.get(type_, self.config.timeout)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the journal (every process: routes run actions too) and keep the cursor written."""
        await self.journal.start()
        self._spawn(self._flush_cursor_loop(), name="actions:cursor")

    async def recover(self, is_dead: Callable[[str], Awaitable[bool]]) -> None:
        """Recover the unfinished actions of journals whose process is gone (`is_dead(owner)`):
        re-run idempotent ones, report the others unknown. This process's own are running."""
        dead: dict[str, bool] = {}
        for item in await self.journal.unfinished():
            owner = item.owner
            if owner == self.journal.owner:
                continue
            if owner not in dead:
                dead[owner] = not owner or await is_dead(owner)
            if dead[owner]:
                await self._recover_one(item)

    async def close(self) -> None:
        pending = self._cursor_pending
        if pending > self._cursor_written:
            await self.journal.set_cursor(pending)
        await self.journal.close()

    async def _recover_one(self, item: Unfinished) -> None:
        key, rule, type_, event_id, seq, params, _ = item
        spec = self.specs.get(type_)
        stored = await self._stored_event(seq) if seq > 0 else None
        event: Mapping[str, Any] = (orjson.loads(stored.body) if stored is not None
                                    else {"id": event_id, "source": key.split("|")[1]})
        rule_name = None if rule in ("", ROUTE) else rule
        if spec is not None and spec.idempotent:
            if key in self._resumed:  # already running again here (recovery runs every few seconds)
                return
            self._resumed.add(key)
            self.pending += 1

            async def resume() -> None:
                try:
                    await self._execute(spec, params, ActionContext(key, rule_name, event), resumed=True)
                finally:
                    self._resumed.discard(key)

            self._spawn(resume(), name=f"action:{type_}")
            return
        reason = "the hub stopped while this action ran; it was not repeated, its outcome is unknown"
        await self.journal.finish(key, "unknown", {"reason": reason})
        await self._report(rule_name, type_, event, Outcome("unknown", error=reason))

    # -- rules' actions ------------------------------------------------------------------------

    def note_evaluated(self, seq: int) -> None:
        """Events up to `seq` fired nothing that is not journaled yet: the cursor may move there."""
        self._cursor_pending = max(self._cursor_pending, seq)

    def submit(self, firings: Sequence[tuple[Firing, Mapping[str, Any], int]], cursor: int) -> None:
        """Journal the actions of rules that fired (with the cursor, one write), then run them. Never waits.

        The journal write is queued before this returns, so journal order is evaluation order.
        """
        entries: list[JournalEntry] = []
        planned: list[tuple[JournalEntry, Mapping[str, Any], dict[str, Any]]] = []
        cooldowns = [firing.cooldown for firing, _, _ in firings if firing.cooldown is not None]
        for firing, event, seq in firings:
            name = firing.rule.name
            event_id = str(event.get("id"))
            for index, request in enumerate(firing.requests):
                type_ = request["type"]
                params = {k: v for k, v in request.items() if k != "type"}
                error = None if type_ in self.specs else "no executor for this action type"
                if error is None and self.pending >= self.config.max_pending:
                    error = f"overloaded: {self.pending} actions already pending ([actions] max_pending)"
                if error is None:
                    self.pending += 1  # given back when it finishes, or if it turns out to be a repeat
                entry = JournalEntry(action_key(name, event, index), name, type_, event_id, seq, params, error)
                planned.append((entry, event, params))
            for offset, error in enumerate(firing.errors):
                type_ = error.split(":", 1)[0]
                key = action_key(name, event, len(firing.requests) + offset) + "|error"
                planned.append((JournalEntry(key, name, type_, event_id, seq, {}, error), event, {}))
        if not planned:
            self.note_evaluated(cursor)
            return
        entries = [entry for entry, _, _ in planned]
        begun = self.journal.begin(entries, cursor, cooldowns)  # moves the cursor too
        self._spawn(self._run_begun(begun, planned), name="actions:begin")

    async def _run_begun(self, begun: asyncio.Future[list[bool]],
                         planned: list[tuple[JournalEntry, Mapping[str, Any], dict[str, Any]]]) -> None:
        try:
            fresh = await begun
        except Exception:
            self.pending -= sum(1 for entry, _, _ in planned if entry.error is None)
            logger.exception("could not journal %d action(s); they were not run", len(planned))
            return
        for (entry, event, params), new in zip(planned, fresh, strict=True):
            if not new:
                if entry.error is None:
                    self.pending -= 1
                continue  # journaled before (evaluated again after a restart): at most once
            if entry.error is not None:
                self.on_outcome(entry.rule, "failed")
                self._spawn(self._report(entry.rule, entry.type, event, Outcome("failed", error=entry.error),
                                         request=params), name="action:report")
            else:
                context = ActionContext(entry.key, entry.rule, event)
                self._spawn(self._execute(self.specs[entry.type], params, context), name=f"action:{entry.type}")

    async def _flush_cursor_loop(self) -> None:
        while True:
            await asyncio.sleep(CURSOR_FLUSH_INTERVAL)
            pending = self._cursor_pending
            if pending > self._cursor_written:
                await self.journal.set_cursor(pending)
                self._cursor_written = pending

    # -- a route's action ----------------------------------------------------------------------

    async def run(self, type_: str, params: dict[str, Any], *, requested_by: str,
                  agent: str | None = None) -> Outcome:
        """Run one action now for a route (the click-to-call button), journaled and reported like a
        rule's, and answer how it ended. Never retried: the caller decides what to tell its client."""
        spec = self.specs.get(type_)
        if spec is None:
            raise NotFound(f"no executor for {type_!r}: its vendor is not configured")
        request_id = str(uuid.uuid4())
        origin = {"id": request_id, "source": ROUTE, "requested_by": requested_by, "data": {"agent": agent}}
        key = f"{ROUTE}|{request_id}|0"
        await self.journal.begin([JournalEntry(key, ROUTE, type_, request_id, 0, params)], None)
        self.pending += 1
        return await self._execute(spec, params, ActionContext(key, None, origin))

    # -- running and reporting -----------------------------------------------------------------

    async def _execute(self, spec: ActionSpec, params: dict[str, Any], context: ActionContext,
                       *, resumed: bool = False) -> Outcome:
        timeout = self.timeout_for(spec.type)
        metrics = self._metrics
        async with self._limits[spec.group]:
            started = time.perf_counter()
            running = metrics.actions_running.labels(spec.group)
            running.inc()
            try:
                outcome = Outcome("succeeded", await asyncio.wait_for(spec.run(params, context), timeout))
            except TimeoutError:
                outcome = Outcome("failed", error=f"no answer within {timeout:g}s", code="timeout")
            except HubError as exc:
                details = {"code": exc.code, **{k: v for k, v in exc.details.items() if v is not None}}
                outcome = Outcome("failed", details, exc.message, exc.code)
            except Exception as exc:  # an executor bug must not kill the runner
                logger.exception("action %s failed unexpectedly", spec.type)
                outcome = Outcome("failed", error=f"internal error: {type(exc).__name__}", code="internal_error")
            finally:
                running.dec()
            metrics.action_duration.labels(spec.type).observe(time.perf_counter() - started)
        self.pending -= 1
        journaled = outcome.result if outcome.error is None else {"error": outcome.error, "details": outcome.result}
        await self.journal.finish(context.key, outcome.state, journaled)
        if context.rule is not None:
            self.on_outcome(context.rule, outcome.state)
        await self._report(context.rule, spec.type, context.event, outcome, request=params, resumed=resumed)
        return outcome

    async def _report(self, rule: str | None, type_: str, event: Mapping[str, Any], outcome: Outcome, *,
                      request: Mapping[str, Any] | None = None, resumed: bool = False) -> None:
        self._metrics.actions.labels(type_, outcome.state).inc()
        data: dict[str, Any] = {
            "rule": rule,
            "action": type_,
            "status": outcome.state,
            "event_id": event.get("id"),
            "event_source": event.get("source"),
            "agent": (event.get("data") or {}).get("agent") if isinstance(event.get("data"), dict) else None,
            "chain": chain_depth(event) + 1,
        }
        if rule is None and isinstance(event.get("requested_by"), str):
            data["requested_by"] = event["requested_by"]
        spec = self.specs.get(type_)
        if request is not None and spec is not None and spec.describe is not None:
            try:
                data["target"] = spec.describe(request)
            except Exception:  # a describe bug must not lose the outcome
                logger.exception("describing a %s request failed", type_)
        if outcome.result is not None:
            data["result"] = outcome.result
        if outcome.error is not None:
            data["error"] = outcome.error
        if resumed:
            data["resumed"] = True
        kind = "action.succeeded" if outcome.state == "succeeded" else "action.failed"
        report = hub_event(kind, data, subject=rule if rule is not None else type_)
        try:
            await self._publish(report, default_source=HUB_SOURCE)
        except HubError as exc:
            logger.warning("could not record the outcome of %s for rule %s: %s", type_, rule, exc.message)
