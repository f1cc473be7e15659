"""Running rule actions: a durable journal, bounded concurrency, and result events.

Every action a rule fires for an event has a key, `<rule>|<event source>|<event id>|<index>`.
Before anything is sent, the key is written to the journal (`actions.db`, fsynced); a key that
is already there is never run again. So a side effect happens at most once per rule, event and
action, across crashes and restarts. After a restart, an action the journal shows started but
not finished is:

- run again if its executor is *idempotent* (the vendor deduplicates it, e.g. an AntCRM ticket
  keyed by `ticketIdApiRing`);
- otherwise reported `unknown` (an `action.failed` with `data.status = "unknown"`) and not
  repeated: ringing a phone twice is worse than not knowing whether it rang.

Each outcome is an event: `action.succeeded` or `action.failed`, with the rule, the action, the
triggering event's id and the vendor's answer or the error. Executors run in tasks owned by the
hub, at most `group_limit` at once per group (a vendor), each under a timeout; none of this
touches the fan-out.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hub.events import hub_event
from hub.exceptions import HubError

if TYPE_CHECKING:
    from hub.core import Hub
    from hub.rules import Firing

logger = logging.getLogger("callhub.actions")

__all__ = ["ActionContext", "Executor", "ActionSpec", "ActionJournal", "ActionRunner"]

#: Actions of one group (vendor) running at once.
GROUP_LIMIT = 8
#: How long one action may take before it is reported failed (its executor is cancelled).
ACTION_TIMEOUT = 30.0
JOURNAL_FILE = "actions.db"


@dataclass(frozen=True)
class ActionContext:
    """What an executor knows besides its parameters."""

    key: str
    rule: str
    event: Mapping[str, Any]


Executor = Callable[[dict[str, Any], ActionContext], Awaitable[Any]]


@dataclass(frozen=True)
class ActionSpec:
    type: str
    run: Executor
    #: Safe to send again after a crash (the vendor deduplicates it by a key we derive).
    idempotent: bool
    #: Concurrency group, usually the vendor's name.
    group: str


class ActionJournal:
    """Which actions were started and how they ended; one SQLite file, one writer thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS actions (key TEXT PRIMARY KEY, rule TEXT, type TEXT, event_id TEXT,"
            " state TEXT NOT NULL, request BLOB, started REAL, finished REAL, result BLOB)"
        )
        # One thread: journal writes happen in the order they were asked for.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="callhub-journal")
        self._lock = threading.Lock()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _begin(self, key: str, rule: str, type_: str, event_id: str, request: bytes) -> bool:
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO actions (key, rule, type, event_id, state, request, started)"
                " VALUES (?, ?, ?, ?, 'started', ?, ?)",
                (key, rule, type_, event_id, request, time.time()),
            )
            return cur.rowcount == 1

    async def begin(self, key: str, rule: str, type_: str, event_id: str, request: Mapping[str, Any]) -> bool:
        """Record that the action starts now; False if it was started before (then do not run it)."""
        result: bool = await self._run(self._begin, key, rule, type_, event_id, orjson.dumps(request))
        return result

    def _finish(self, key: str, state: str, result: bytes) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE actions SET state = ?, finished = ?, result = ? WHERE key = ?", (state, time.time(), result, key)
            )

    async def finish(self, key: str, state: str, result: Any) -> None:
        await self._run(self._finish, key, state, orjson.dumps(result, default=str))

    def _unfinished(self) -> list[tuple[str, str, str, str, bytes]]:
        with self._lock:
            rows: list[tuple[str, str, str, str, bytes]] = self._db.execute(
                "SELECT key, rule, type, event_id, request FROM actions WHERE state = 'started'"
            ).fetchall()
            return rows

    async def unfinished(self) -> list[tuple[str, str, str, str, bytes]]:
        rows: list[tuple[str, str, str, str, bytes]] = await self._run(self._unfinished)
        return rows

    def _state(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM actions WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

    async def state(self, key: str) -> str | None:
        result: str | None = await self._run(self._state, key)
        return result

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._db.close()


def action_key(rule: str, event: Mapping[str, Any], index: int) -> str:
    return f"{rule}|{event.get('source')}|{event.get('id')}|{index}"


class ActionRunner:
    def __init__(self, hub: Hub, specs: Mapping[str, ActionSpec], *, timeout: float = ACTION_TIMEOUT,
                 group_limit: int = GROUP_LIMIT) -> None:
        self.hub = hub
        self.specs = dict(specs)
        self.timeout = timeout
        self.journal = ActionJournal(hub.config.data_dir / JOURNAL_FILE)
        self._limits = {spec.group: asyncio.Semaphore(group_limit) for spec in self.specs.values()}

    async def recover(self) -> None:
        """After a restart: re-run idempotent actions left unfinished; report the others unknown."""
        for key, rule, type_, event_id, request in await self.journal.unfinished():
            spec = self.specs.get(type_)
            params = orjson.loads(request)
            event = {"id": event_id, "source": key.split("|")[1]}
            if spec is not None and spec.idempotent:
                self.hub.spawn(self._execute(spec, params, ActionContext(key, rule, event), resumed=True),
                               name=f"action:{type_}")
                continue
            await self.journal.finish(key, "unknown", {"reason": "the hub stopped while this action ran"})
            await self._report(rule, type_, event, "unknown", error="the hub stopped while this action ran; "
                               "it was not repeated, its outcome is unknown")

    def submit(self, firing: Firing, event: Mapping[str, Any]) -> None:
        """Start the actions of a rule that fired (never waits)."""
        for index, request in enumerate(firing.requests):
            spec = self.specs.get(request["type"])
            context = ActionContext(action_key(firing.rule.name, event, index), firing.rule.name, event)
            if spec is None:
                self.hub.spawn(self._report_async(firing.rule.name, request["type"], event, "failed",
                                                  error="no executor for this action type"), name="action:report")
                continue
            params = {k: v for k, v in request.items() if k != "type"}
            self.hub.spawn(self._start(spec, params, context), name=f"action:{spec.type}")
        for error in firing.errors:
            kind = error.split(":", 1)[0]
            self.hub.spawn(self._report_async(firing.rule.name, kind, event, "failed", error=error), name="action:report")

    async def _start(self, spec: ActionSpec, params: dict[str, Any], context: ActionContext) -> None:
        if not await self.journal.begin(context.key, context.rule, spec.type, str(context.event.get("id")), params):
            return  # already started once: at most once
        await self._execute(spec, params, context)

    async def _execute(self, spec: ActionSpec, params: dict[str, Any], context: ActionContext,
                       *, resumed: bool = False) -> None:
        rule = next((r for r in (self.hub.rules.rules if self.hub.rules else []) if r.name == context.rule), None)
        state: str
        result: Any = None
        error: str | None = None
        async with self._limits[spec.group]:
            try:
                answer = await asyncio.wait_for(spec.run(params, context), self.timeout)
            except TimeoutError:
                state, result, error = "failed", None, f"no answer within {self.timeout:g}s"
            except HubError as exc:
                state, result, error = "failed", None, exc.message
            except Exception as exc:  # an executor bug must not kill the runner
                logger.exception("action %s failed unexpectedly", spec.type)
                state, result, error = "failed", None, f"internal error: {type(exc).__name__}"
            else:
                state, result, error = "succeeded", answer, None
        await self.journal.finish(context.key, state, result if error is None else {"error": error})
        if rule is not None:
            if state == "succeeded":
                rule.counters.actions_ok += 1
            else:
                rule.counters.actions_failed += 1
        await self._report(context.rule, spec.type, context.event, state, result=result, error=error,
                           request=params, resumed=resumed)

    async def _report_async(self, rule: str, type_: str, event: Mapping[str, Any], status: str, *,
                            error: str) -> None:
        await self._report(rule, type_, event, status, error=error)

    async def _report(self, rule: str, type_: str, event: Mapping[str, Any], status: str, *, result: Any = None,
                      error: str | None = None, request: Mapping[str, Any] | None = None,
                      resumed: bool = False) -> None:
        data: dict[str, Any] = {
            "rule": rule,
            "action": type_,
            "status": status,
            "event_id": event.get("id"),
            "event_source": event.get("source"),
            "agent": (event.get("data") or {}).get("agent") if isinstance(event.get("data"), dict) else None,
        }
        if request is not None:
            data["request"] = dict(request)
        if result is not None:
            data["result"] = result
        if error is not None:
            data["error"] = error
        if resumed:
            data["resumed"] = True
        report = hub_event("action.succeeded" if status == "succeeded" else "action.failed", data, subject=rule)
        try:
            await self.hub.publish(report, default_source="hub")
        except HubError as exc:
            logger.warning("could not record the outcome of %s for rule %s: %s", type_, rule, exc.message)

    def close(self) -> None:
        self.journal.close()
