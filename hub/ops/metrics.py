"""Prometheus metrics, on a registry per hub instance (several hubs can live in one test process)."""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import (
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "KNOWN_TYPES", "OTHER", "LabelSet"]

#: The label value everything outside a bounded label set is counted under.
OTHER = "other"
#: Event types the hub and its vendors are documented to emit (EVENTS.md): the `type` label of
#: `callhub_events_committed_total` takes these, the types `[stats] event_types` names, or `other`.
KNOWN_TYPES = frozenset({
    "call.ringing", "call.answered", "call.bridged", "call.held", "call.resumed", "call.ended", "call.signal",
    "call.enriched", "campaign.contact.updated", "campaign.contact.added",
    "action.succeeded", "action.failed", "action.unknown",
    "hub.upstream.connected", "hub.upstream.disconnected", "hub.delivery.exhausted", "hub.subscription.disabled",
    "hub.subscription.changed",
})

#: Fan-out latency buckets (seconds): the interesting range is 100 µs to a few hundred ms.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
)


class LabelSet:
    """A bounded set of label values: what is in it is kept, anything else is `other`.

    Labels come from outside (an event's source and type, an agent's name); Prometheus keeps a
    series per distinct value forever, so only values the operator or the hub named become one.
    """

    __slots__ = ("_known",)

    def __init__(self, known: Collection[str]) -> None:
        self._known = frozenset(known)

    def __call__(self, value: object) -> str:
        return value if isinstance(value, str) and value in self._known else OTHER

    def __contains__(self, value: object) -> bool:
        return value in self._known


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_* (CPU, memory, descriptors, start time) and python_info, on this hub's registry.
        ProcessCollector(registry=r)
        r.register(PLATFORM_COLLECTOR)
        self.events_committed = Counter(
            "callhub_events_committed",
            "Events stored (not duplicates), by source and type (known values only, else 'other')",
            ["source", "type"], registry=r,
        )
        self.store_commit_latency = Histogram(
            "callhub_store_commit_seconds",
            "From handing an event to the store to its commit being durable (queueing and group commit included)",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.store_writable = Gauge(
            "callhub_store_writable",
            "1 while the store takes writes, 0 after a write or readiness check failed (until one succeeds)",
            registry=r,
        )
        self.store_writable.set(1)
        self._writable = True
        self.store_errors = Counter(
            "callhub_store_write_errors", "Writes the store could not commit (the publisher was told to retry)",
            registry=r,
        )
        self.vendor_requests = Counter(
            "callhub_vendor_requests",
            "Vendor API calls finished, by vendor, endpoint (a route template) and HTTP status ('error': no answer)",
            ["vendor", "endpoint", "status"], registry=r,
        )
        self.vendor_latency = Histogram(
            "callhub_vendor_request_seconds", "Vendor API call duration, retries included, by vendor and endpoint",
            ["vendor", "endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=r,
        )
        self.token_refreshes = Counter(
            "callhub_token_refreshes", "Vendor access tokens fetched, by vendor and outcome (ok, failed)",
            ["vendor", "outcome"], registry=r,
        )
        self.upstream_reconciliations = Counter(
            "callhub_upstream_reconciliations",
            "Reconciliation runs against an upstream's history, by outcome (complete, partial, failed, skipped)",
            ["upstream", "outcome"], registry=r,
        )
        self.events_ingested = Counter(
            "callhub_events_ingested", "Events accepted, by outcome (stored or duplicate)", ["outcome"], registry=r
        )
        self.events_rejected = Counter(
            "callhub_events_rejected", "Publish requests refused, by HTTP status", ["status"], registry=r
        )
        self.subscribers = Gauge("callhub_subscribers", "Subscribers connected now", ["transport"], registry=r)
        self.events_delivered = Counter(
            "callhub_events_delivered", "Events written to subscribers", ["transport"], registry=r
        )
        self.subscribers_dropped = Counter(
            "callhub_subscribers_dropped", "Subscribers disconnected by the hub", ["transport", "reason"], registry=r
        )
        self.fanout_latency = Histogram(
            "callhub_fanout_latency_seconds",
            "From the hub accepting an event to its bytes being written to every live subscriber",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "callhub_auth_failures", "Requests refused for missing, bad or expired credentials", ["reason"], registry=r
        )
        self.upstream_connected = Gauge(
            "callhub_upstream_connected", "1 while the upstream connection is up", ["upstream"], registry=r
        )
        self.upstream_connects = Counter(
            "callhub_upstream_connects", "Successful upstream (re)connections", ["upstream"], registry=r
        )
        self.upstream_signals = Counter(
            "callhub_upstream_signals", "Signals received from an upstream, by name", ["upstream", "name"], registry=r
        )
        self.upstream_reconciled = Counter(
            "callhub_upstream_reconciled",
            "Events recovered from an upstream's history after a gap",
            ["upstream"],
            registry=r,
        )
        self.webhooks_received = Counter(
            "callhub_webhooks_received", "Webhooks accepted, by source and outcome", ["source", "outcome"], registry=r
        )
        self.webhooks_rejected = Counter(
            "callhub_webhooks_rejected",
            "Webhooks refused, by source and reason (verification failures included)",
            ["source", "reason"],
            registry=r,
        )
        self.webhook_requests = Counter(
            "callhub_webhook_requests",
            "Inbound webhook requests, by source and outcome (accepted, duplicate, unauthorized, invalid, failed)",
            ["source", "outcome"], registry=r,
        )
        self.rules_matched = Counter("callhub_rules_matched", "Rule firings, by rule", ["rule"], registry=r)
        self.actions = Counter(
            "callhub_actions", "Rule actions finished, by type and status (succeeded, failed, unknown)",
            ["type", "status"], registry=r,
        )
        self.action_duration = Histogram(
            "callhub_action_duration_seconds", "How long rule actions took, retries included", ["type"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0), registry=r,
        )
        self.actions_pending = Gauge("callhub_actions_pending", "Rule actions accepted and not finished", registry=r)
        self.actions_running = Gauge("callhub_actions_running", "Rule actions running now, by group", ["group"],
                                     registry=r)
        self.rules_caught_up = Counter(
            "callhub_rules_caught_up", "Events evaluated after a restart, by outcome (evaluated, too_old)",
            ["outcome"], registry=r,
        )
        self.retention_removed = Counter(
            "callhub_retention_removed", "Events removed by retention", registry=r
        )
        self.webhook_deliveries = Counter(
            "callhub_webhook_deliveries", "Outbound webhook deliveries settled, by outcome (delivered, failed, expired)",
            ["outcome"], registry=r,
        )
        self.webhook_attempts = Counter(
            "callhub_webhook_delivery_attempts",
            "Outbound webhook attempts, by result (delivered, retry, failed: the answer or error decided it)",
            ["result"], registry=r,
        )
        self.webhook_latency = Histogram(
            "callhub_webhook_delivery_seconds", "From sending a delivery to the endpoint's answer",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=r,
        )
        self.webhook_backlog = Gauge(
            "callhub_webhook_backlog", "Events not yet delivered (waiting, retrying or unread), by subscription state",
            ["state"], registry=r,
        )
        self.webhook_subscriptions = Gauge(
            "callhub_webhook_subscriptions", "Outbound webhook subscriptions, by state (active, paused, disabled)",
            ["state"], registry=r,
        )
        # -- the calls themselves (hub.ops.calls: a projection of call.* events) --------------------
        self.calls_in_progress = Gauge(
            "callhub_calls_in_progress", "Calls not yet ended, by direction and state (ringing, answered, held)",
            ["direction", "state"], registry=r,
        )
        self.calls_ended = Counter(
            "callhub_calls_ended", "Calls ended, by direction and outcome (answered, busy, no_answer, cancelled, "
            "failed, unknown)", ["direction", "outcome"], registry=r,
        )
        self.calls_abandoned = Counter(
            "callhub_calls_abandoned", "Inbound calls that ended without being answered", registry=r,
        )
        self.calls_in_threshold = Counter(
            "callhub_calls_answered_within_threshold",
            "Inbound calls answered within the service-level threshold, counted when they end", registry=r,
        )
        self.calls_expired = Counter(
            "callhub_calls_expired", "Calls dropped from the in-progress figures after [stats] stale_after "
            "without an event (their end was lost)", registry=r,
        )
        self.call_answer_time = Histogram(
            "callhub_call_answer_seconds", "From a call ringing to its answer, by direction", ["direction"],
            buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300), registry=r,
        )
        self.call_talk_time = Histogram(
            "callhub_call_talk_seconds", "From a call's answer to its end, by direction", ["direction"],
            buckets=(5, 15, 30, 60, 120, 180, 300, 600, 900, 1800, 3600, 7200), registry=r,
        )
        self.calls_threshold = Gauge(
            "callhub_calls_service_level_threshold_seconds",
            "The service-level threshold in force ([stats] service_level_threshold)", registry=r,
        )
        self.calls_target = Gauge(
            "callhub_calls_service_level_target_ratio",
            "The service level the centre aims for ([stats] service_level_target; the alert compares with it)",
            registry=r,
        )
        self.calls_by_agent = Counter(
            "callhub_calls_by_agent", "Calls ended, by agent ([stats] agents, else 'other') and outcome",
            ["agent", "outcome"], registry=r,
        )
        self.calls_by_did = Counter(
            "callhub_calls_by_did", "Inbound calls ended, by DID ([stats] dids, else 'other') and outcome",
            ["did", "outcome"], registry=r,
        )
        for state in ("active", "paused", "disabled"):
            self.webhook_backlog.labels(state)
            self.webhook_subscriptions.labels(state)
        for outcome in ("delivered", "failed", "expired"):
            self.webhook_deliveries.labels(outcome)
        for transport in ("ws", "sse"):
            self.subscribers.labels(transport)
            self.events_delivered.labels(transport)

    def store_is_writable(self, ok: bool) -> None:
        """`callhub_store_writable`, set only on a change (every publish reports; a gauge's set takes a lock)."""
        if ok != self._writable:
            self._writable = ok
            self.store_writable.set(1 if ok else 0)

    # -- what vendor clients report (hub.outbound.vendor.VendorCalls) ------------------------------

    def request(self, vendor: str, endpoint: str, status: str, seconds: float) -> None:
        self.vendor_requests.labels(vendor, endpoint, status).inc()
        self.vendor_latency.labels(vendor, endpoint).observe(seconds)

    def token_refresh(self, vendor: str, outcome: str) -> None:
        self.token_refreshes.labels(vendor, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
