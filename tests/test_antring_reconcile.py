"""Gap reconciliation: calls that ended while the socket was down come back from call history, once."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from handlers.antring.reconcile import history_event
from handlers.antring.simulator.calls import inbound_answered, inbound_missed, internal_call, outbound_busy
from tests.antring_env import ACCOUNT, ALICE, BOB, antring_world
from tests.helpers import TICK, WAIT, wait_until


def ended_for(events: list[dict[str, object]], call_id: str) -> list[dict[str, object]]:
    return [e for e in events if e["type"] == "call.ended" and e["data"]["call_id"] == call_id]  # type: ignore[index]


def test_reconciliation_fills_exactly_the_calls_missed_during_an_outage(data_dir: Path) -> None:
    """After an outage, each call that ended unseen gets one reconciled call.ended; seen calls get none."""
    with antring_world(data_dir, "blackhole") as world:
        world.wait_connected()
        seen = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT)
        world.play(seen)
        world.state.history.append(seen.record)
        left_open = inbound_answered(BOB, "0987654321", account_id=ACCOUNT)
        world.play_partly(left_open, upto=4)  # ringing and answered seen, then the socket drops
        wait_until(lambda: len(ended_for(world.history("call.*"), seen.call_id)) == 2, what="the live call")

        world.state.refuse_tokens = True  # keep the hub off the socket for a while
        world.state.expire_tokens()
        world.signals.drop_all_threadsafe()
        wait_until(lambda: not world.upstream()["connected"], what="upstream down")
        missed = [inbound_missed(ALICE, "0903000001", account_id=ACCOUNT),
                  outbound_busy(BOB, "0903000002", account_id=ACCOUNT),
                  internal_call(ALICE, BOB, account_id=ACCOUNT)]
        world.state.history.extend(call.record for call in [*missed, left_open])
        world.state.refuse_tokens = False
        world.wait_connected(connects=2)

        def reconciled() -> list[dict[str, object]]:
            return [e for e in world.history("call.ended") if e["data"].get("reconciled")]  # type: ignore[union-attr]

        wait_until(lambda: len(reconciled()) == 4, what="four reconciled calls")
        events = world.history("call.*")
        assert {e["data"]["call_id"] for e in reconciled()} == {c.call_id for c in [*missed, left_open]}  # type: ignore[index]
        assert all(not e["data"].get("reconciled") for e in ended_for(events, seen.call_id))  # type: ignore[union-attr]
        by_call = {e["data"]["call_id"]: e["data"] for e in reconciled()}  # type: ignore[index]
        assert by_call[missed[0].call_id]["outcome"] == "cancelled"
        assert by_call[missed[1].call_id]["outcome"] == "busy" and by_call[missed[1].call_id]["direction"] == "outbound"
        assert by_call[missed[2].call_id]["direction"] == "internal"
        assert by_call[left_open.call_id]["outcome"] == "answered" and by_call[left_open.call_id]["agent"] == "bob"

        # A second reconciliation over the same window publishes nothing new.
        world.signals.drop_all_threadsafe()
        world.wait_connected(connects=3)
        count = len(world.history("call.ended"))
        metrics = httpx.get(f"{world.hub.url}/metrics", timeout=WAIT).text
        assert 'callhub_upstream_reconciled_total{upstream="antring"} 4.0' in metrics
        assert len(reconciled()) == 4 and len(world.history("call.ended")) == count


def test_history_record_maps_to_a_call_ended_event() -> None:
    """A vendor history record becomes call.ended with direction, parties, agent, outcome and durations."""
    record = {"call_id": "c-9", "caller": {"number": "0912345678", "type": "realnumber"},
              "callee": {"number": "101", "type": "user", "username": "alice"}, "class": "trunking",
              "did_number": "02873019555", "direction": "to_ab", "status_detail": "SUCCESS",
              "duration_seconds": 50, "billing_seconds": 43, "unix_timestamp": 1519639917,
              "recording": "call_recording_x.mp3"}
    event = history_event(record, id_field="call_id")
    data = event["data"]
    assert event["id"] == "history:c-9" and event["type"] == "call.ended"
    assert event["time"] == "2018-02-26T10:12:47.000Z"  # 1519639917 + 50 s
    assert (data["direction"], data["agent"], data["outcome"]) == ("inbound", "alice", "answered")
    assert (data["duration_s"], data["billing_s"], data["recording"]) == (50, 43, "call_recording_x.mp3")
    assert data["reconciled"] is True and data["raw"] == record
    no_id = history_event({**record, "call_id": None}, id_field="call_id")
    assert no_id["data"]["call_id"].startswith("hist-") and no_id["id"] == history_event(dict(no_id["data"]["raw"]), id_field="call_id")["id"]


def test_reconciliation_can_be_turned_off(data_dir: Path) -> None:
    """With `reconcile = false`, calls missed during an outage are not recovered from history."""
    with antring_world(data_dir, "blackhole", reconcile=False) as world:
        world.wait_connected()
        call = inbound_missed(ALICE, "0903000009", account_id=ACCOUNT)
        world.state.history.append(call.record)
        world.signals.drop_all_threadsafe()
        world.wait_connected(connects=2)
        time.sleep(10 * TICK)  # what the enabled case needs to publish (see the test above)
        assert not [e for e in world.history("call.ended") if e["data"].get("reconciled")]
