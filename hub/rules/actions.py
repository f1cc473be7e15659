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
hub, at most `[actions] concurrency` at once per group (a vendor), each under `[actions] timeout`;
none of this touches the fan-out.

The journal also keeps the rules cursor: how far the event log has been evaluated, so events
committed just before a crash are evaluated after the restart (see `ActionRunner`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hub.events import hub_event
from hub.exceptions import HubError
from hub.matcher import TypeFilter
from hub.rules.engine import chain_depth

if TYPE_CHECKING:
    from hub.config import ActionsConfig
    from hub.rules.engine import Firing
    from hub.service import Hub

logger = logging.getLogger("callhub.actions")

__all__ = ["ActionContext", "Executor", "ActionSpec", "ActionJournal", "ActionRunner", "Planned", "Describe",
           "public_params"]

JOURNAL_FILE = "actions.db"
#: How often the rules cursor is written when no rule fired (a lagging cursor only means a few
#: events are evaluated again after a crash, and the journal makes that harmless).
CURSOR_FLUSH_INTERVAL = 1.0


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
    #: Parameters every rule using it must give (checked when rules load).
    required: tuple[str, ...] = ()
    #: What `action.*` events may show of a request (`data.target`): every subscriber who sees
    #: them reads it, so never a header, a credential or an `${ENV}` value. None: nothing.
    describe: Describe | None = None


#: An action's parameters -> the parts of them fit to publish.
Describe = Callable[[Mapping[str, Any]], dict[str, Any]]


def public_params(*names: str) -> Describe:
    """A `describe` that shows these parameters (when they are scalars) and nothing else."""

    def describe(params: Mapping[str, Any]) -> dict[str, Any]:
        return {n: params[n] for n in names if isinstance(params.get(n), (str, int, float, bool))}

    return describe


@dataclass(frozen=True, slots=True)
class Planned:
    """One action of a rule that fired, on its way into the journal."""

    key: str
    rule: str
    type: str
    event: Mapping[str, Any]
    seq: int
    params: dict[str, Any]
    #: Why it cannot run (a template field missing from the event); it is journaled as failed.
    error: str | None = None


#: (key, rule, type, event id, seq, request) of an action the journal shows started, not finished.
Unfinished = tuple[str, str, str, str, int, bytes]


class ActionJournal:
    """Which actions were started and how they ended, and how far rules have evaluated the log.

    One SQLite file, one writer thread: writes happen in the order they were submitted, which is
    what lets the rules cursor be written lazily (see `ActionRunner`).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS actions (key TEXT PRIMARY KEY, rule TEXT, type TEXT, event_id TEXT,"
            " state TEXT NOT NULL, request BLOB, started REAL, finished REAL, result BLOB, seq INTEGER)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(actions)")}
        if "seq" not in columns:  # a journal from before the rules cursor
            self._db.execute("ALTER TABLE actions ADD COLUMN seq INTEGER")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS cooldowns (rule TEXT NOT NULL, key TEXT NOT NULL,"
                         " until REAL NOT NULL, PRIMARY KEY (rule, key))")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="callhub-journal")
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue `fn(*args)` on the journal's thread now (so in call order) and return its future."""
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def begin_many(self, planned: list[Planned], cursor: int | None,
                   cooldowns: Sequence[tuple[str, str, float]] = ()) -> list[bool]:
        """Record that these actions start (or failed before starting), the cooldowns they started, and
        move the cursor, in one commit.

        Returns, per action, whether it is new: an action already in the journal must not run again.
        """
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                fresh = []
                for p in planned:
                    state, result = ("failed", orjson.dumps({"error": p.error})) if p.error else ("started", None)
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO actions (key, rule, type, event_id, seq, state, request, started,"
                        " finished, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (p.key, p.rule, p.type, str(p.event.get("id")), p.seq, state,
                         orjson.dumps(p.params, default=str), now, now if p.error else None, result),
                    )
                    fresh.append(cur.rowcount == 1)
                if cooldowns:
                    self._db.executemany("INSERT INTO cooldowns (rule, key, until) VALUES (?, ?, ?) ON CONFLICT"
                                         " (rule, key) DO UPDATE SET until = excluded.until", cooldowns)
                if cursor is not None:
                    self._set_cursor(cursor)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return fresh

    async def begin(self, key: str, rule: str, type_: str, event_id: str, request: Mapping[str, Any]) -> bool:
        """Record that one action starts now; False if it was started before (then do not run it)."""
        planned = Planned(key, rule, type_, {"id": event_id}, 0, dict(request))
        result: list[bool] = await self.submit(self.begin_many, [planned], None)
        return result[0]

    def _finish(self, key: str, state: str, result: bytes) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE actions SET state = ?, finished = ?, result = ? WHERE key = ?", (state, time.time(), result, key)
            )

    async def finish(self, key: str, state: str, result: Any) -> None:
        await self.submit(self._finish, key, state, orjson.dumps(result, default=str))

    def _unfinished(self) -> list[Unfinished]:
        with self._lock:
            rows: list[Unfinished] = self._db.execute(
                "SELECT key, rule, type, event_id, COALESCE(seq, 0), request FROM actions WHERE state = 'started'"
            ).fetchall()
            return rows

    async def unfinished(self) -> list[Unfinished]:
        rows: list[Unfinished] = await self.submit(self._unfinished)
        return rows

    def _state(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM actions WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

    async def state(self, key: str) -> str | None:
        result: str | None = await self.submit(self._state, key)
        return result

    def _set_cursor(self, seq: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES ('rules_cursor', ?) ON CONFLICT(key) DO UPDATE"
                         " SET value = MAX(value, excluded.value)", (seq,))

    def set_cursor(self, seq: int) -> None:
        with self._lock:
            self._set_cursor(seq)

    def _cooldowns(self, now: float) -> list[tuple[str, str, float]]:
        with self._lock:
            self._db.execute("DELETE FROM cooldowns WHERE until <= ?", (now,))
            rows: list[tuple[str, str, float]] = self._db.execute("SELECT rule, key, until FROM cooldowns").fetchall()
            return rows

    async def cooldowns(self, now: float) -> list[tuple[str, str, float]]:
        """Cooldowns still running at `now` (expired ones are forgotten)."""
        rows: list[tuple[str, str, float]] = await self.submit(self._cooldowns, now)
        return rows

    def _cursor(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'rules_cursor'").fetchone()
            return None if row is None else int(row[0])

    async def cursor(self) -> int | None:
        """The highest seq whose rule firings are all journaled; None for a new journal."""
        result: int | None = await self.submit(self._cursor)
        return result

    def close(self, *, cursor: int | None = None) -> None:
        if cursor is not None:
            self._thread.submit(self.set_cursor, cursor)
        self._thread.shutdown(wait=True)
        self._db.close()


def action_key(rule: str, event: Mapping[str, Any], index: int) -> str:
    return f"{rule}|{event.get('source')}|{event.get('id')}|{index}"


class ActionRunner:
    """Journals, runs and reports the actions of rules that fired; keeps the rules cursor.

    The cursor is the highest seq whose firings are all in the journal. Firings are journaled
    in the same commit as the cursor moves past their event; events that fire nothing move it
    lazily (every `CURSOR_FLUSH_INTERVAL`). After a crash, the hub evaluates again the events
    after the cursor: actions already journaled are not run again, the others run now.
    """

    def __init__(self, hub: Hub, specs: Mapping[str, ActionSpec], config: ActionsConfig) -> None:
        self.hub = hub
        self.specs = dict(specs)
        self.config = config
        self.journal = ActionJournal(hub.config.data_dir / JOURNAL_FILE)
        self._limits = {spec.group: asyncio.Semaphore(config.concurrency) for spec in self.specs.values()}
        self._cursor_pending = 0
        self._cursor_written = 0
        #: Actions accepted and not finished (waiting for their vendor's turn, or running).
        self.pending = 0
        hub.metrics.actions_pending.set_function(lambda: self.pending)

    def timeout_for(self, type_: str) -> float:
        return self.config.timeouts.get(type_, self.config.timeout)

    async def start(self) -> int | None:
        """Recover unfinished actions; the cursor to evaluate from (None: a new journal, nothing to catch up)."""
        await self.recover()
        cursor = await self.journal.cursor()
        self.hub.spawn(self._flush_cursor_loop(), name="actions:cursor")
        return cursor

    async def recover(self) -> None:
        """After a restart: re-run idempotent actions left unfinished; report the others unknown."""
        for key, rule, type_, event_id, seq, request in await self.journal.unfinished():
            spec = self.specs.get(type_)
            params = orjson.loads(request)
            event = await self._stored_event(seq) or {"id": event_id, "source": key.split("|")[1]}
            if spec is not None and spec.idempotent:
                self.pending += 1
                self.hub.spawn(self._execute(spec, params, ActionContext(key, rule, event), resumed=True),
                               name=f"action:{type_}")
                continue
            reason = "the hub stopped while this action ran; it was not repeated, its outcome is unknown"
            await self.journal.finish(key, "unknown", {"reason": reason})
            await self._report(rule, type_, event, "unknown", error=reason)

    async def _stored_event(self, seq: int) -> dict[str, Any] | None:
        """The triggering event as stored (an executor may need more of it than its id)."""
        if seq <= 0:
            return None
        try:
            page = await self.hub.backend.read(seq - 1, limit=1, agent=None, types=TypeFilter(()), scan_limit=1)
        except HubError:
            return None
        if page.events and page.events[0].seq == seq:
            event: dict[str, Any] = orjson.loads(page.events[0].body)
            return event
        return None  # trimmed by retention since

    def note_evaluated(self, seq: int) -> None:
        """Events up to `seq` fired nothing that is not journaled yet: the cursor may move there."""
        self._cursor_pending = max(self._cursor_pending, seq)

    def submit(self, firings: Sequence[tuple[Firing, Mapping[str, Any], int]], cursor: int) -> None:
        """Journal the actions of rules that fired (with the cursor, one commit), then run them. Never waits.

        The journal write is queued before this returns, so journal order is evaluation order.
        """
        planned: list[Planned] = []
        cooldowns = [firing.cooldown for firing, _, _ in firings if firing.cooldown is not None]
        for firing, event, seq in firings:
            name = firing.rule.name
            for index, request in enumerate(firing.requests):
                type_ = request["type"]
                params = {k: v for k, v in request.items() if k != "type"}
                error = None if type_ in self.specs else "no executor for this action type"
                if error is None and self.pending >= self.config.max_pending:
                    error = f"overloaded: {self.pending} actions already pending ([actions] max_pending)"
                if error is None:
                    self.pending += 1  # given back when it finishes, or if it turns out to be a repeat
                planned.append(Planned(action_key(name, event, index), name, type_, event, seq, params, error))
            for offset, error in enumerate(firing.errors):
                type_ = error.split(":", 1)[0]
                key = action_key(name, event, len(firing.requests) + offset) + "|error"
                planned.append(Planned(key, name, type_, event, seq, {}, error))
        if not planned:
            self.note_evaluated(cursor)
            return
        begun = self.journal.submit(self.journal.begin_many, planned, cursor, cooldowns)  # moves the cursor too
        self.hub.spawn(self._run_begun(begun, planned), name="actions:begin")

    async def _run_begun(self, begun: asyncio.Future[list[bool]], planned: list[Planned]) -> None:
        try:
            fresh = await begun
        except Exception:
            self.pending -= sum(1 for p in planned if p.error is None)
            logger.exception("could not journal %d action(s); they were not run", len(planned))
            return
        for p, new in zip(planned, fresh, strict=True):
            if not new:
                if p.error is None:
                    self.pending -= 1
                continue  # journaled before (evaluated again after a restart): at most once
            context = ActionContext(p.key, p.rule, p.event)
            if p.error is not None:
                self._count(p.rule, "failed")
                self.hub.spawn(self._report(p.rule, p.type, p.event, "failed", error=p.error, request=p.params),
                               name="action:report")
            else:
                self.hub.spawn(self._execute(self.specs[p.type], p.params, context), name=f"action:{p.type}")

    async def _flush_cursor_loop(self) -> None:
        while True:
            await asyncio.sleep(CURSOR_FLUSH_INTERVAL)
            pending = self._cursor_pending
            if pending > self._cursor_written:
                await self.journal.submit(self.journal.set_cursor, pending)
                self._cursor_written = pending

    def _count(self, rule_name: str, state: str) -> None:
        rule = next((r for r in (self.hub.rules.rules if self.hub.rules else []) if r.name == rule_name), None)
        if rule is not None:
            if state == "succeeded":
                rule.counters.actions_ok += 1
            else:
                rule.counters.actions_failed += 1

    async def _execute(self, spec: ActionSpec, params: dict[str, Any], context: ActionContext,
                       *, resumed: bool = False) -> None:
        state: str
        result: Any = None
        error: str | None = None
        timeout = self.timeout_for(spec.type)
        metrics = self.hub.metrics
        async with self._limits[spec.group]:
            started = time.perf_counter()
            running = metrics.actions_running.labels(spec.group)
            running.inc()
            try:
                answer = await asyncio.wait_for(spec.run(params, context), timeout)
            except TimeoutError:
                state, error = "failed", f"no answer within {timeout:g}s"
            except HubError as exc:
                state, error = "failed", exc.message
                result = {"code": exc.code, **{k: v for k, v in exc.details.items() if v is not None}}
            except Exception as exc:  # an executor bug must not kill the runner
                logger.exception("action %s failed unexpectedly", spec.type)
                state, error = "failed", f"internal error: {type(exc).__name__}"
            else:
                state, result = "succeeded", answer
            finally:
                running.dec()
            metrics.action_duration.labels(spec.type).observe(time.perf_counter() - started)
        self.pending -= 1
        await self.journal.finish(context.key, state, result if error is None else {"error": error, "details": result})
        self._count(context.rule, state)
        await self._report(context.rule, spec.type, context.event, state, result=result, error=error,
                           request=params, resumed=resumed)

    async def _report(self, rule: str, type_: str, event: Mapping[str, Any], status: str, *, result: Any = None,
                      error: str | None = None, request: Mapping[str, Any] | None = None,
                      resumed: bool = False) -> None:
        self.hub.metrics.actions.labels(type_, status).inc()
        data: dict[str, Any] = {
            "rule": rule,
            "action": type_,
            "status": status,
            "event_id": event.get("id"),
            "event_source": event.get("source"),
            "agent": (event.get("data") or {}).get("agent") if isinstance(event.get("data"), dict) else None,
            "chain": chain_depth(event) + 1,
        }
        spec = self.specs.get(type_)
        if request is not None and spec is not None and spec.describe is not None:
            try:
                data["target"] = spec.describe(request)
            except Exception:  # a describe bug must not lose the outcome
                logger.exception("describing a %s request failed", type_)
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
        pending = self._cursor_pending
        self.journal.close(cursor=pending if pending > self._cursor_written else None)
