"""The hub's own metrics (hub/ops/metrics.py): bounded labels, store latency and writability, the process."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from hub.http.app import create_app
from tests.helpers import PUBLISHER, make_config, raw_config

ALICE_PUBLISHER = "alice-publisher-key-0123456789"


def sample(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_events_are_counted_by_known_source_and_type_only(data_dir: Path) -> None:
    """Sources and types outside the known and configured sets are counted as `other`; an agent's source as `agents`."""
    keys = [*raw_config(data_dir)["auth"]["keys"], {"key": ALICE_PUBLISHER, "role": "publisher", "agent": "alice"}]
    config = make_config(data_dir, stats={"event_types": ["crm.note.added"]}, auth={"keys": keys})
    with TestClient(create_app(config)) as client:
        for ev in ({"type": "call.ringing"}, {"type": "crm.note.added"}, {"type": "x.0912345678", "source": "pbx-7"}):
            assert client.post("/v1/events", json={**ev, "data": {}}, headers=PUBLISHER).status_code == 202
        alice = {"Authorization": f"Bearer {ALICE_PUBLISHER}"}
        assert client.post("/v1/events", json={"type": "call.held", "data": {}}, headers=alice).status_code == 202
        text = client.get("/metrics").text
        assert 'callhub_events_committed_total{source="agents",type="call.held"} 1.0' in text
        assert 'callhub_events_committed_total{source="api",type="call.ringing"} 1.0' in text
        assert 'callhub_events_committed_total{source="api",type="crm.note.added"} 1.0' in text
        assert 'callhub_events_committed_total{source="other",type="other"} 1.0' in text
        assert "0912345678" not in text and "pbx-7" not in text


def test_store_commit_latency_is_observed_per_stored_event(client: TestClient) -> None:
    """Each append to the store is timed in callhub_store_commit_seconds."""
    for i in range(3):
        client.post("/v1/events", json={"type": "call.ringing", "id": f"lat-{i}", "data": {}}, headers=PUBLISHER)
    assert sample(client, "callhub_store_commit_seconds_count") == 3


def test_store_writable_follows_readiness(client: TestClient) -> None:
    """A store that cannot start a write sets callhub_store_writable to 0; the next good check to 1."""
    assert sample(client, "callhub_store_writable") == 1
    store = client.app.hub.store  # type: ignore[attr-defined]
    store._closed = True  # check_writable refuses as it does for a store that cannot write
    try:
        assert client.get("/readyz").status_code == 503
        assert sample(client, "callhub_store_writable") == 0
    finally:
        store._closed = False
    assert client.get("/readyz").status_code == 200
    assert sample(client, "callhub_store_writable") == 1


def test_process_metrics_are_exported(client: TestClient) -> None:
    """The process collector's CPU, memory and descriptors are on the hub's registry."""
    text = client.get("/metrics").text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert f"\n{name}" in text, name
