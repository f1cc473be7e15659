"""Prometheus metrics, on a registry per hub instance (several hubs can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

#: Fan-out latency buckets (seconds): the interesting range is 100 µs to a few hundred ms.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
        for state in ("active", "paused", "disabled"):
            self.webhook_backlog.labels(state)
            self.webhook_subscriptions.labels(state)
        for outcome in ("delivered", "failed", "expired"):
            self.webhook_deliveries.labels(outcome)
        for transport in ("ws", "sse"):
            self.subscribers.labels(transport)
            self.events_delivered.labels(transport)

    def render(self) -> bytes:
        return generate_latest(self.registry)
