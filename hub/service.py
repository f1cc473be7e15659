"""`Hub`: the running hub's parts wired together (config, auth, backend, fan-out, metrics).

The Starlette app (`hub.app`), the CLI and vendor handlers all talk to one `Hub`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import orjson
from starlette.requests import HTTPConnection

from hub.auth import Authenticator, Principal, ensure_admin_key, ensure_jwt_secret, ensure_signing_secret
from hub.config import ApiKey, Config, ConfigError
from hub.events import HUB_SOURCE, Event, agent_of, event_time, prepare_event
from hub.exceptions import Forbidden, HubError, Unavailable
from hub.live.fanout import Fanout
from hub.matcher import TypeFilter
from hub.ops.metrics import Metrics
from hub.ops.upstreams import Upstreams
from hub.outbound.guard import EgressPolicy
from hub.rules.actions import ActionRunner, ActionSpec
from hub.rules.engine import Firing, RuleProblem, RuleSet, load_rules
from hub.store import open_backend
from hub.store.base import Backend
from hub.webhooks.post import webhook_post_spec

if TYPE_CHECKING:
    from hub.plugin import EventListener

logger = logging.getLogger("callhub")

__all__ = ["Hub", "Published"]


class Published(NamedTuple):
    id: str
    seq: int
    duplicate: bool

#: The source of client events that name none.
CLIENT_SOURCE = "api"
#: Agent-scoped publishers publish under `agents/<agent>`, and only they do.
AGENT_SOURCE_PREFIX = "agents/"
#: How long `/readyz` waits for the store to start a write transaction.
READY_TIMEOUT = 2.0
#: Events read per page when rules catch up after a restart.
CATCH_UP_PAGE = 500


class Hub:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.admin_key, self.admin_key_created, self.admin_key_path = ensure_admin_key(config)
        keys: list[ApiKey] = list(config.auth.keys)
        if self.admin_key is not None:
            keys.append(self.admin_key)
        self.jwt_secret = ensure_jwt_secret(config) if config.server.auth else ""
        self.auth = Authenticator(
            enabled=config.server.auth, keys=keys, jwt_secret=self.jwt_secret, jwt_leeway=config.auth.jwt_leeway
        )
        self.backend: Backend = open_backend(config)
        streams = config.streams
        self.fanout = Fanout(
            self.backend,
            self.metrics,
            catchup_page=streams.catchup_page,
            close_timeout=streams.close_timeout,
            sse_heartbeat=streams.sse_heartbeat,
        )
        self.upstreams = Upstreams(self)
        #: Guards and sends requests to URLs rules name (`webhook.post`).
        self.egress = EgressPolicy(config.actions.allow_private)
        self._egress_http = httpx.AsyncClient(timeout=config.actions.webhook.request_timeout, trust_env=False,
                                              follow_redirects=False)
        self.rules: RuleSet | None = None
        self.action_specs: dict[str, ActionSpec] = {}
        self.listeners: list[tuple[TypeFilter, EventListener]] = []
        self.actions: ActionRunner | None = None
        self.rules_status: dict[str, Any] = {}
        self._m_stored = self.metrics.events_ingested.labels("stored")
        self._m_duplicate = self.metrics.events_ingested.labels("duplicate")
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = False
        #: Sources clients may not publish under (`publish_from`): the hub's own, then every
        #: webhook source and vendor the handlers claim.
        self.reserved_sources: frozenset[str] = frozenset({HUB_SOURCE})

    # -- lifecycle ---------------------------------------------------------------------------

    def use_actions(self, specs: Mapping[str, ActionSpec]) -> None:
        """The action executors the handlers registered (called before `start`), beside the core's own."""
        self.action_specs = {**self._core_actions(), **specs}

    def _core_actions(self) -> dict[str, ActionSpec]:
        webhook = webhook_post_spec(self.config.actions.webhook, self.egress, ensure_signing_secret(self.config),
                                    self._egress_http)
        return {webhook.type: webhook}

    def load_rules(self) -> list[RuleProblem]:
        """(Re)load the rules; on any problem keep the rules in force and return the problems.

        Only action types with an executor (its vendor configured) are accepted.
        """
        rules, problems = load_rules(self.config.rules, self.config.rules_file,
                                      {t: spec.required for t, spec in self.action_specs.items()})
        if rules is None:
            self.rules_status = {"ok": False, "at": time.time(), "problems": [str(p) for p in problems]}
            logger.error("rules not (re)loaded, %d problem(s); keeping %d rule(s) in force:\n  %s",
                         len(problems), len(self.rules.rules) if self.rules else 0,
                         "\n  ".join(str(p) for p in problems))
            return problems
        rules.carry_counters(self.rules)
        self.rules = rules
        self.rules_status = {"ok": True, "at": time.time(), "problems": []}
        logger.info("%d rule(s) loaded", len(rules.rules))
        return []

    def use_listeners(self, listeners: list[tuple[tuple[str, ...], EventListener]]) -> None:
        """Handlers' event listeners (called before `start`)."""
        self.listeners = [(TypeFilter(patterns), listener) for patterns, listener in listeners]

    def _on_commit(self, events: list[Event]) -> None:
        self.fanout.publish(events)
        if self.actions is not None or self.listeners:
            # After the fan-out, never inside it: rules and listeners must not slow delivery.
            asyncio.get_running_loop().call_soon(self._evaluate, self.rules, events)

    def _evaluate(self, rules: RuleSet | None, events: list[Event], *, catching_up: bool = False) -> int:
        """Run listeners and rules on committed events; hand the firings to the action runner.

        Catching up (events committed before a restart, never evaluated), listeners are skipped
        (they are for live screens), schedules and cooldowns use the event's own time, and events
        older than `[actions] catchup_max_age` are skipped: the answer is how many were.
        """
        now = time.time()
        max_age = self.config.actions.catchup_max_age if catching_up else 0.0
        too_old = 0
        firings: list[tuple[Firing, dict[str, Any], int]] = []
        for event in events:
            listeners = [] if catching_up else [listener for types, listener in self.listeners
                                                if types.matches(event.type)]
            if not listeners and (rules is None or not rules.candidates(event.type)):
                continue
            try:
                body = orjson.loads(event.body)
                at = event_time(body, default=now) if catching_up else now
                if max_age and now - at > max_age:
                    too_old += 1
                    continue
                if listeners and body.get("source") in self.reserved_sources:
                    # Listeners act for the hub (a screen-pop publishes as AntCRM): only on events
                    # from its own receivers and vendors, never on what a client made up.
                    for listener in listeners:
                        listener(body)
                if rules is None:
                    continue
                for firing in rules.evaluate(body, now=at):
                    firing.rule.counters.matched += 1
                    self.metrics.rules_matched.labels(firing.rule.name).inc()
                    firing.rule.counters.last_fired = now
                    firings.append((firing, body, event.seq))
            except Exception:
                logger.exception("rule evaluation failed for seq %d", event.seq)
        if self.actions is not None and events:
            self.actions.submit(firings, cursor=events[-1].seq)
        return too_old

    async def _catch_up(self, cursor: int) -> None:
        """Evaluate the events committed after `cursor` (before a crash or a stop) and not yet evaluated."""
        head, max_age = self.backend.head, self.config.actions.catchup_max_age
        evaluated = skipped = 0
        after = cursor
        while after < head:
            page = await self.backend.read(after, limit=CATCH_UP_PAGE, agent=None, types=TypeFilter(()),
                                           scan_limit=CATCH_UP_PAGE)
            batch = [e for e in page.events if e.seq <= head]
            if not batch:
                break
            too_old = self._evaluate(self.rules, batch, catching_up=True)  # moves the cursor past the batch
            evaluated += len(batch) - too_old
            skipped += too_old
            after = batch[-1].seq
        self.metrics.rules_caught_up.labels("evaluated").inc(evaluated)
        self.metrics.rules_caught_up.labels("too_old").inc(skipped)
        if evaluated or skipped:
            logger.info("rules caught up on %d event(s) committed before the restart (%d older than %gs skipped)",
                        evaluated, skipped, max_age)

    async def start(self) -> None:
        problems = self.load_rules()
        if problems:
            raise ConfigError([(f"rules ({p.file}: {p.rule})", f"{p.key}: {p.message}") for p in problems])
        await self.backend.start(self._on_commit)
        if self.action_specs:
            self.actions = ActionRunner(self, self.action_specs, self.config.actions)
            cursor = await self.actions.start()
            if self.rules is not None:  # "one call-back per caller per 10 minutes" holds across restarts
                self.rules.restore_cooldowns(await self.actions.journal.cooldowns(time.time()))
            if cursor is None:  # a new journal: rules start with the events that arrive from now on
                self.actions.note_evaluated(self.backend.head)
            else:
                await self._catch_up(cursor)
        self.fanout.start()
        if self.config.retention.age > 0 or self.config.retention.count > 0:
            self.spawn(self._retention_loop(), name="retention")
        self.started = True

    async def drain(self) -> None:
        """First step of shutdown: close every subscriber (WS 1012, SSE end of stream)."""
        await self.fanout.shutdown(self.config.server.shutdown_grace)

    async def stop(self) -> None:
        await self.drain()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.config.server.shutdown_grace)
        await self.backend.close()
        await self._egress_http.aclose()
        if self.actions is not None:
            self.actions.close()
        self.started = False

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        """Run a background task owned by the hub: cancelled and awaited on stop."""
        task = asyncio.get_running_loop().create_task(coro, name=f"callhub:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _retention_loop(self) -> None:
        retention = self.config.retention
        while True:
            try:
                removed = await self.backend.trim(max_age=retention.age, max_count=retention.count)
                if removed:
                    self.metrics.retention_removed.inc(removed)
                    logger.info("retention removed %d events", removed)
            except Unavailable:
                pass
            await asyncio.sleep(retention.interval)

    # -- operations used by the API and by vendor handlers ----------------------------------

    def authenticate(self, conn: HTTPConnection, *, allow_query: bool = False) -> Principal:
        credential: str | None = None
        header = conn.headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer":
                credential = value.strip()
        if credential is None and allow_query:
            credential = conn.query_params.get("token")
        try:
            return self.auth.authenticate(credential)
        except HubError as exc:
            self.metrics.auth_failures.labels(exc.code).inc()
            raise

    def reserve_sources(self, names: Iterable[str]) -> None:
        """Sources only the hub and its handlers may publish under (webhook sources, vendors)."""
        self.reserved_sources = self.reserved_sources | frozenset(names)

    async def publish(self, obj: Any, *, default_source: str = "api", received: float | None = None) -> Published:
        """Validate, store durably and fan out one event; the result says its seq and if it was a duplicate."""
        return await self._store(prepare_event(obj, default_source=default_source), received)

    async def publish_from(self, principal: Principal, obj: Any, *, received: float | None = None) -> Published:
        """`publish` for an event a client sent: its source must not be one the hub reserves (its own,
        a webhook source's, a vendor's), and an agent-scoped credential publishes only for its agent,
        under a source of its own (`agents/<agent>`), so it cannot pre-empt another publisher's ids."""
        own = None if principal.agent is None else f"{AGENT_SOURCE_PREFIX}{principal.agent}"
        event = prepare_event(obj, default_source=own or CLIENT_SOURCE)
        source = event["source"]
        if source in self.reserved_sources or (own is None and source.startswith(AGENT_SOURCE_PREFIX)):
            raise Forbidden(f"source {source[:64]!r} is reserved: only the hub and its own receivers publish under it",
                            code="reserved_source")
        if own is not None:
            if source != own:
                raise Forbidden(f"this credential publishes only under source {own!r}", code="agent_scope")
            data = event["data"]
            agent = data.get("agent")
            if agent is None:
                data["agent"] = principal.agent
            elif agent != principal.agent:
                raise Forbidden(f"this credential publishes only for agent {principal.agent!r}", code="agent_scope")
        return await self._store(event, received)

    async def _store(self, event: dict[str, Any], received: float | None) -> Published:
        if self.fanout.closing:
            raise Unavailable("the hub is shutting down")
        received = time.perf_counter() if received is None else received
        result = await self.backend.append(event, agent=agent_of(event), received=received)
        (self._m_duplicate if result.duplicate else self._m_stored).inc()
        return Published(event["id"], result.seq, result.duplicate)

    async def check_ready(self) -> None:
        if self.fanout.closing:
            raise Unavailable("the hub is shutting down")
        await self.backend.check_writable(READY_TIMEOUT)
