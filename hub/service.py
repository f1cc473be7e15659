"""The running hub: `build` wires every part from the config, `Hub` starts and stops them as one.

    build(config) ─▶ metrics, credentials, store (log + journal + outbox), publisher, fan-out,
                     upstreams, webhook sender, deliveries, action runner (+ webhook.post), plugins (handlers register), webhook sources,
                     rules (loaded once), reactions, call figures  ─▶  Hub (complete: nothing is added after start)

Each part receives what it uses (a publish function, `Tasks.spawn`, the store, its metrics), not
the hub. `callhub check` calls `build` exactly as `serve` does, so the two never disagree about a
config; only the secrets the hub would generate into its data directory are left unwritten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from hub.auth import Authenticator, Principal, ensure_admin_key, ensure_jwt_secret, ensure_signing_secret
from hub.config import ApiKey, Config
from hub.events import HUB_SOURCE, Event, Published, agent_of, prepare_event
from hub.exceptions import Forbidden, HubError, Unavailable
from hub.live.fanout import Fanout
from hub.ops.calls import CallFigures
from hub.ops.metrics import KNOWN_TYPES, OTHER, LabelSet, Metrics
from hub.ops.upstreams import Upstreams
from hub.outbound.guard import EgressPolicy
from hub.plugin import OnlineCheck, PluginContext, Registry, Service, load_plugins
from hub.rules.actions import ActionRunner
from hub.rules.engine import Rules, RulesInvalid
from hub.rules.reactions import Reactions
from hub.store import open_backend
from hub.store.base import Backend, Lease
from hub.store.retention import retain
from hub.tasks import Tasks
from hub.webhooks.delivery import Deliveries
from hub.webhooks.inbound import Source, sources_of
from hub.webhooks.post import webhook_post_spec
from hub.webhooks.sender import WebhookSender

logger = logging.getLogger("callhub")

__all__ = ["Hub", "Publisher", "Credentials", "CheckResult", "build", "CLIENT_SOURCE", "AGENT_SOURCE_PREFIX"]

#: The source of client events that name none.
CLIENT_SOURCE = "api"
#: Agent-scoped publishers publish under `agents/<agent>`, and only they do.
AGENT_SOURCE_PREFIX = "agents/"
#: How long `/readyz` waits for the store to start a write transaction.
READY_TIMEOUT = 2.0
#: A throwaway Standard Webhooks secret for `callhub check`, which writes no secret files.
_CHECK_SECRET = "whsec_Y2FsbGh1Yi1jaGVjay1vbmx5LW5vdC1hLXJlYWwtc2VjcmV0"


class Publisher:
    """The one way an event gets in: validated, stored durably, counted. Clients come through
    `publish_from`, which also checks what they may publish; the hub's parts and the handlers
    through `publish`."""

    def __init__(self, store: Backend, metrics: Metrics, *, event_types: Collection[str] = ()) -> None:
        self._store = store
        self._m_stored = metrics.events_ingested.labels("stored")
        self._m_duplicate = metrics.events_ingested.labels("duplicate")
        self._m_committed = metrics.events_committed
        self._m_commit_latency = metrics.store_commit_latency
        self._metrics = metrics
        self._m_errors = metrics.store_errors
        self._types = LabelSet(KNOWN_TYPES | set(event_types))
        #: (source label, type label) -> its counter: bounded, as both labels are.
        self._committed: dict[tuple[str, str], Any] = {}
        #: Sources clients may not publish under: the hub's own, every webhook source's, every vendor's.
        self.reserved: frozenset[str] = frozenset({HUB_SOURCE})
        #: Set when the hub starts shutting down: nothing more is accepted.
        self.closing = False

    def reserve(self, names: set[str]) -> None:
        self.reserved = self.reserved | names

    async def publish(self, obj: Any, *, default_source: str = CLIENT_SOURCE,
                      received: float | None = None) -> Published:
        """Validate, store durably and fan out one event; the result says its seq and if it was a duplicate."""
        return await self._append(prepare_event(obj, default_source=default_source), received)

    async def publish_from(self, principal: Principal, obj: Any, *, received: float | None = None) -> Published:
        """`publish` for an event a client sent: its source must not be one the hub reserves (its own,
        a webhook source's, a vendor's), and an agent-scoped credential publishes only for its agent,
        under a source of its own (`agents/<agent>`), so it cannot pre-empt another publisher's ids."""
        own = None if principal.agent is None else f"{AGENT_SOURCE_PREFIX}{principal.agent}"
        event = prepare_event(obj, default_source=own or CLIENT_SOURCE)
        source = event["source"]
        if source in self.reserved or (own is None and source.startswith(AGENT_SOURCE_PREFIX)):
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
        return await self._append(event, received)

    async def _append(self, event: dict[str, Any], received: float | None) -> Published:
        if self.closing:
            raise Unavailable("the hub is shutting down")
        received = time.perf_counter() if received is None else received
        started = time.perf_counter()
        try:
            result = await self._store.append(event, agent=agent_of(event), received=received)
        except Unavailable:
            self._m_errors.inc()
            self._metrics.store_is_writable(False)
            raise
        self._m_commit_latency.observe(time.perf_counter() - started)
        self._metrics.store_is_writable(True)
        if result.duplicate:
            self._m_duplicate.inc()
        else:
            self._m_stored.inc()
            self._count(event["source"], event["type"])
        return Published(event["id"], result.seq, result.duplicate)

    def _count(self, source: str, type_: str) -> None:
        """`callhub_events_committed_total`: sources the hub knows (its own, webhook sources, vendors,
        `api`, `agents` for every agent's), the documented and configured types; the rest is `other`."""
        if source in self.reserved or source == CLIENT_SOURCE:
            source_label = source
        elif source.startswith(AGENT_SOURCE_PREFIX):
            source_label = "agents"
        else:
            source_label = OTHER
        key = (source_label, self._types(type_))
        counter = self._committed.get(key)
        if counter is None:
            counter = self._committed[key] = self._m_committed.labels(*key)
        counter.inc()


@dataclass(frozen=True)
class Credentials:
    """The admin key and JWT secret in force, and whether the admin key was generated just now."""

    admin_key: ApiKey | None
    admin_key_created: bool
    admin_key_path: Any
    jwt_secret: str


@dataclass
class Hub:
    """Every part of a running hub, built complete by `build`; started and stopped as one."""

    config: Config
    metrics: Metrics
    credentials: Credentials
    auth: Authenticator
    store: Backend
    tasks: Tasks
    publisher: Publisher
    fanout: Fanout
    upstreams: Upstreams
    actions: ActionRunner
    rules: Rules
    reactions: Reactions
    sender: WebhookSender
    deliveries: Deliveries
    calls: CallFigures
    sources: dict[str, Source]
    routes: list[BaseRoute]
    #: (lease, service): services of one lease run together, in the process that holds it.
    services: list[tuple[str, Service]]
    cleanups: list[Callable[[], Awaitable[None]]]
    #: The vendors' `callhub check --online` checks (`Registry.add_check`).
    checks: list[tuple[str, OnlineCheck]] = field(default_factory=list)
    started: bool = field(default=False, init=False)
    #: Lease name -> the fencing token this process holds it with (absent: another process holds it).
    leases: dict[str, int] = field(default_factory=dict, init=False)

    # -- what the HTTP layer uses ---------------------------------------------------------------

    def authenticate(self, conn: HTTPConnection, *, allow_query: bool = False) -> Principal:
        return self.auth.request(conn, allow_query=allow_query)

    async def check_ready(self) -> None:
        if self.publisher.closing:
            raise Unavailable("the hub is shutting down")
        try:
            await self.store.check_writable(READY_TIMEOUT)
        except Unavailable:
            self.metrics.store_is_writable(False)
            raise
        self.metrics.store_is_writable(True)

    # -- lifecycle ------------------------------------------------------------------------------

    def _on_commit(self, events: list[Event]) -> None:
        self.fanout.publish(events)  # subscribers first: reactions never delay delivery
        self.deliveries.on_commit(events)
        self.reactions.on_commit(events)
        self.calls.on_commit(events)

    async def start(self) -> None:
        await self.store.start(self._on_commit)
        ttl = self.config.server.lease_ttl
        # This process's journal is alive while this lease is held: before it begins any action,
        # so no other process takes what it runs for a gone process's.
        alive = self.store.lease(f"process:{self.actions.journal.owner}", ttl)
        await alive.acquire()
        await self.calls.start(self.store, self.store.head)
        await self.reactions.open()
        await self.deliveries.start()
        self.fanout.start()
        self.tasks.spawn(self.calls.sweep_periodically(), name="call-figures")
        self.tasks.spawn(hold(alive, _forever, {}), name="alive")
        # Each subscription is delivered by one process at a time: the one holding `deliveries`
        # (always this one, locally); the others keep the documents for the API.
        self.tasks.spawn(hold(self.store.lease("deliveries", ttl), self.deliveries.run, self.leases), name="deliveries")
        # The rules run in one process at a time among those sharing the store (always this one, locally).
        rules = partial(self.reactions.run, lambda: self.store.head, self._is_dead)
        self.tasks.spawn(hold(self.store.lease("rules", ttl), rules, self.leases), name="rules")
        retention = self.config.retention
        if retention.age > 0 or retention.count > 0:
            work = partial(retain, self.store, retention, self.metrics.retention_removed.inc)
            self.tasks.spawn(hold(self.store.lease("retention", ttl), work, self.leases), name="retention")
        groups: dict[str, list[Service]] = {}
        for lease, service in self.services:
            groups.setdefault(lease, []).append(service)
        for lease, services in groups.items():
            # Each lease's services (an upstream socket, a poller) run in one process among those sharing the store.
            self.tasks.spawn(hold(self.store.lease(f"service:{lease}", ttl), partial(_together, services), self.leases),
                             name=lease)
        self.started = True

    async def _is_dead(self, owner: str) -> bool:
        """Whether the process whose journal is `owner` is gone: its liveness lease can be taken."""
        lease = self.store.lease(f"process:{owner}", self.config.server.lease_ttl)
        if await lease.acquire() is None:
            return False
        await lease.release()
        return True

    async def drain(self) -> None:
        """First step of shutdown: accept no more events, close every subscriber (WS 1012, SSE end)."""
        self.publisher.closing = True
        await self.fanout.shutdown(self.config.server.shutdown_grace)

    async def stop(self) -> None:
        await self.drain()
        await self.tasks.stop(self.config.server.shutdown_grace)
        await self.deliveries.close()
        await self.reactions.close()
        await self.store.close()
        await self.release()
        self.started = False

    async def check_online(self, timeout: float) -> list[CheckResult]:
        """Run every vendor's online check at once, each within `timeout`; one result per check."""

        async def one(name: str, check: OnlineCheck) -> CheckResult:
            try:
                return CheckResult(name, True, await asyncio.wait_for(check(), timeout))
            except TimeoutError:
                return CheckResult(name, False, f"no answer within {timeout:g}s")
            except HubError as exc:
                return CheckResult(name, False, exc.message)
            except Exception as exc:  # a check's own bug must not hide the other vendors' results
                logger.exception("online check %s failed unexpectedly", name)
                return CheckResult(name, False, f"check failed: {type(exc).__name__}")

        return list(await asyncio.gather(*(one(name, check) for name, check in self.checks)))

    async def release(self) -> None:
        """Close what the hub's parts and the handlers opened (HTTP clients); also for a hub never started."""
        await self.sender.aclose()
        for cleanup in self.cleanups:
            try:
                await cleanup()
            except Exception:
                logger.exception("cleanup failed")


async def hold(lease: Lease, work: Callable[[], Awaitable[None]], held: dict[str, int]) -> None:
    """Run `work` while this process holds `lease`, among every process sharing the store.

    The lease is renewed every third of its ttl; when a renewal fails (another process took it
    after this one could not reach the store, say), the work is cancelled at once, and this
    process asks for the lease again. With the local store the lease is always this process's.
    """
    period = lease.ttl / 3
    try:
        await _hold(lease, work, held, period)
    except asyncio.CancelledError:  # the hub stops: let another process take over at once
        await _quietly(asyncio.wait_for(lease.release(), period), lease, "release")
        raise


async def _hold(lease: Lease, work: Callable[[], Awaitable[None]], held: dict[str, int], period: float) -> None:
    while True:
        token = await _quietly(lease.acquire(), lease, "take")
        if not token:
            await asyncio.sleep(period)
            continue
        held[lease.name] = token
        logger.info("this process holds %s (fencing token %d)", lease.name, token)
        task = asyncio.ensure_future(work())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=period)
                if done:
                    if not task.cancelled() and task.exception() is not None:
                        logger.error("%s stopped: %r", lease.name, task.exception())
                    await _quietly(lease.release(), lease, "release")
                    return
                if not await _quietly(asyncio.wait_for(lease.renew(), period / 2), lease, "renew"):
                    logger.warning("lost %s; stopping its work until this process holds it again", lease.name)
                    break
        finally:
            held.pop(lease.name, None)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(period)


async def _forever() -> None:
    await asyncio.Event().wait()


async def _together(services: list[Service]) -> None:
    """Run a lease's services side by side; when one ends or fails, the others go on (each logs its own end)."""
    results = await asyncio.gather(*(service() for service in services), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            logger.error("service stopped: %r", result)


async def _quietly(step: Awaitable[Any], lease: Lease, what: str) -> Any:
    """A lease operation; a store that does not answer counts as not holding it."""
    try:
        return await step
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.warning("could not %s %s: %s", what, lease.name, exc)
        return None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One vendor's answer to `callhub check --online`: ok, and what was found or why it failed."""

    name: str
    ok: bool
    detail: str


def load_credentials(config: Config, *, write: bool) -> Credentials:
    """The admin key and JWT secret: configured, or kept in the data directory (made there on first
    start). With `write = False` (`callhub check`) nothing is made."""
    if not write:
        return Credentials(None, False, config.data_dir, config.auth.jwt_secret or "")
    admin_key, created, path = ensure_admin_key(config)
    jwt_secret = ensure_jwt_secret(config) if config.server.auth else ""
    return Credentials(admin_key, created, path, jwt_secret)


def build(config: Config, *, plugins: str = "handlers", check_only: bool = False) -> Hub:
    """Every part of the hub from `config`, opening nothing (`Hub.start` does).

    Raises `ConfigError` listing what the config asks that cannot be built: a vendor section, the
    backend's options, the rules (against the action types actually registered), webhook sources.
    `check_only` (`callhub check`) writes no secret files; everything else is built the same.
    """
    metrics = Metrics()
    credentials = load_credentials(config, write=not check_only)
    keys = list(config.auth.keys) + ([credentials.admin_key] if credentials.admin_key else [])
    auth = Authenticator(enabled=config.server.auth, keys=keys, jwt_secret=credentials.jwt_secret,
                         jwt_leeway=config.auth.jwt_leeway, on_failure=lambda code: metrics.auth_failures.labels(code).inc())
    store = open_backend(config.backend, config.data_dir)
    tasks = Tasks()
    publisher = Publisher(store, metrics, event_types=config.stats.event_types)
    streams = config.streams
    fanout = Fanout(store, metrics, catchup_page=streams.catchup_page, close_timeout=streams.close_timeout,
                    sse_heartbeat=streams.sse_heartbeat)
    upstreams = Upstreams(publisher.publish, metrics)
    runner = ActionRunner(store.journal(), config.actions, publish=publisher.publish, spawn=tasks.spawn,
                          stored_event=store.get, metrics=metrics)
    # One sender (one SSRF guard, one connection pool) for subscriptions and the webhook.post action.
    policy = EgressPolicy([*config.actions.allow_private, *config.webhooks.allow_hosts])
    sender = WebhookSender(policy, timeout=config.actions.webhook.request_timeout)
    deliveries = Deliveries(store.outbox(), store, sender, config.webhooks, publish=publisher.publish,
                            spawn=tasks.spawn, metrics=metrics)
    secret = _CHECK_SECRET if check_only else ensure_signing_secret(config)
    runner.add(webhook_post_spec(config.actions.webhook, sender, secret))

    context = PluginContext(publish=publisher.publish, spawn=tasks.spawn, authenticate=auth.request, store=store,
                            run_action=runner.run, upstream=upstreams.register, state=store.journal(),
                            vendor_calls=metrics)
    registry = Registry(config.handlers, context, add_action=runner.add)
    load_plugins(registry, plugins)

    sources = sources_of(config.sources, registry.sources)
    publisher.reserve({*sources, *registry.claimed_sources})
    rules = Rules(config.rules, config.rules_file, {t: spec.required for t, spec in runner.specs.items()},
                  on_match=lambda rule: metrics.rules_matched.labels(rule).inc())
    problems = rules.load()
    if problems:
        raise RulesInvalid(problems)
    reactions = Reactions(rules, runner, store=store, listeners=registry.listeners,
                          trusted_sources=publisher.reserved, config=config.actions, metrics=metrics)
    return Hub(config=config, metrics=metrics, credentials=credentials, auth=auth, store=store, tasks=tasks,
               publisher=publisher, fanout=fanout, upstreams=upstreams, actions=runner, rules=rules,
               reactions=reactions, sender=sender, deliveries=deliveries, calls=CallFigures(config.stats, metrics),
               sources=sources, routes=registry.routes,
               services=registry.services, cleanups=registry.cleanups, checks=registry.checks)
