"""Gap reconciliation: calls that ended while the socket was down come back from call history, once.

The end-to-end tests run twice: against history records exactly as the vendor documents them (no
call id: matched by direction, parties and time) and with an id field (`history_id_field`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.antring.normalize import AgentIndex, Normalizer
from handlers.antring.reconcile import HistoryCall, history_event, match_records, stored_calls
from handlers.antring.simulator.calls import (
    ScriptedCall,
    inbound_answered,
    inbound_missed,
    internal_call,
    outbound_busy,
)
from tests.antring_env import ACCOUNT, ALICE, BOB, AntRingWorld, antring_world
from tests.helpers import TICK, wait_until

MODES = [pytest.param(None, id="documented-records"), pytest.param("call_id", id="records-with-ids")]
AGENTS = AgentIndex(by_owner={"u-alice": "alice", "u-bob": "bob"}, by_sip_user={"alice-101": "alice"},
                    by_extension={"101": "alice", "102": "bob"})
TOLERANCE = 30.0
T0 = 1_760_000_000


@pytest.fixture(params=MODES)
def world(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[AntRingWorld]:
    with antring_world(data_dir, "blackhole", id_field=request.param) as w:
        w.wait_connected()
        yield w


def ended_for(events: list[dict[str, Any]], call_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "call.ended" and e["data"]["call_id"] == call_id]


def reconciled(world: AntRingWorld) -> list[dict[str, Any]]:
    return [e for e in world.history("call.ended") if e["data"].get("reconciled")]


def history_reads(world: AntRingWorld) -> int:
    return sum(r["path"] == "/oapi/v1/call/histories" for r in world.state.requests)


def wait_history_read(world: AntRingWorld, reads: int) -> None:
    """Wait until the hub read call history again (a reconciliation began), then long enough for it to publish."""
    wait_until(lambda: history_reads(world) > reads, what="a reconciliation")
    time.sleep(10 * TICK)


def outage(world: AntRingWorld, *missed: ScriptedCall) -> None:
    """The socket drops and stays down while `missed` calls happen; then it comes back and history is read."""
    connects, reads = world.upstream()["connects"], history_reads(world)
    world.state.refuse_tokens = True  # keep the hub off the socket for a while
    world.state.expire_tokens()
    world.signals.drop_all_threadsafe()
    wait_until(lambda: not world.upstream()["connected"], what="upstream down")
    world.record(*missed)
    world.state.refuse_tokens = False
    world.wait_connected(connects=connects + 1)
    wait_history_read(world, reads)


def play_live(world: AntRingWorld, call: ScriptedCall, *, upto: int | None = None) -> None:
    """Play a call (or its first `upto` signals) on the socket and wait until the hub stored them all."""
    signals = call.signals[:upto] if upto is not None else call.signals
    world.play_partly(call, upto=len(signals))
    wait_until(lambda: sum(e["data"]["call_id"] == call.call_id for e in world.history("call.*")) >= len(signals),
               what="the live signals stored")


# -- against the simulator, in both record modes ----------------------------------------------------


def test_reconciliation_fills_exactly_the_calls_missed_during_an_outage(world: AntRingWorld) -> None:
    """After an outage, each call that ended unseen gets one reconciled call.ended; seen calls get none."""
    seen = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT)
    play_live(world, seen)
    world.record(seen)
    left_open = inbound_answered(BOB, "0987654321", account_id=ACCOUNT)
    play_live(world, left_open, upto=4)  # ringing and answered seen, then the socket drops
    missed = [inbound_missed(ALICE, "0903000001", account_id=ACCOUNT),
              outbound_busy(BOB, "0903000002", account_id=ACCOUNT),
              internal_call(ALICE, BOB, account_id=ACCOUNT)]
    outage(world, *missed, left_open)

    wait_until(lambda: len(reconciled(world)) == 4, what="four reconciled calls")
    events = world.history("call.*")
    assert all(not e["data"].get("reconciled") for e in ended_for(events, seen.call_id))
    (closed,) = ended_for(reconciled(world), left_open.call_id)
    assert closed["data"]["outcome"] == "answered" and closed["data"]["agent"] == "bob"
    others = [e["data"] for e in reconciled(world) if e["data"]["call_id"] != left_open.call_id]
    by_number = {d["from"]["number"] if d["direction"] == "inbound" else d["to"]["number"]: d for d in others}
    assert by_number["0903000001"]["outcome"] == "cancelled" and by_number["0903000001"]["agent"] == "alice"
    assert by_number["0903000002"]["outcome"] == "busy" and by_number["0903000002"]["direction"] == "outbound"
    assert by_number["102"]["direction"] == "internal"
    assert world.hub.metric("callhub_upstream_reconciled_total", upstream="antring") == 4
    assert world.hub.metric("callhub_upstream_reconciliations_total", upstream="antring", outcome="complete") >= 1
    # The vendor calls are counted by route template, never by a URL with its query or ids.
    assert world.hub.metric("callhub_vendor_requests_total", vendor="antring", endpoint="/oapi/v1/call/histories",
                            status="200") >= 1


def test_a_second_reconciliation_over_the_same_window_publishes_nothing(world: AntRingWorld) -> None:
    """Overlapping windows: the calls reconciled once are duplicates the second time."""
    missed = inbound_missed(ALICE, "0903000011", account_id=ACCOUNT)
    outage(world, missed)
    wait_until(lambda: len(reconciled(world)) == 1, what="the missed call")
    count = len(world.history("call.ended"))
    outage(world)
    assert len(world.history("call.ended")) == count
    assert world.hub.metric("callhub_upstream_reconciled_total", upstream="antring") == 1


def test_a_call_seen_live_is_never_published_again(world: AntRingWorld) -> None:
    """A call whose signals the hub saw end to end gets no reconciled event, however often history is read."""
    seen = inbound_answered(ALICE, "0912000111", account_id=ACCOUNT)
    play_live(world, seen)
    outage(world, seen)
    outage(world)
    assert reconciled(world) == []


def test_two_calls_between_the_same_numbers_minutes_apart_stay_two_calls(world: AntRingWorld) -> None:
    """Within five minutes, one call seen live and one missed in an outage: one reconciled event, the missed one."""
    now = int(time.time())
    first = inbound_answered(ALICE, "0912000222", account_id=ACCOUNT, started=now - 240)
    play_live(world, first)
    world.record(first)
    second = inbound_missed(ALICE, "0912000222", account_id=ACCOUNT, started=now - 30)
    outage(world, second)
    (event,) = reconciled(world)
    assert event["data"]["call_id"] != first.call_id and event["data"]["outcome"] == "cancelled"
    assert event["data"]["raw"]["unix_timestamp"] == now - 30


def test_reconciliation_holds_across_a_hub_restart(world: AntRingWorld) -> None:
    """After a restart, history already reconciled or seen live is not published again: the store decides."""
    seen = inbound_answered(ALICE, "0912000333", account_id=ACCOUNT)
    play_live(world, seen)
    world.record(seen)
    missed = inbound_missed(BOB, "0912000444", account_id=ACCOUNT)
    outage(world, missed)
    wait_until(lambda: len(reconciled(world)) == 1, what="the missed call")
    reads = history_reads(world)
    world.restart_hub()
    world.wait_connected()
    wait_history_read(world, reads)
    assert len(reconciled(world)) == 1 and ended_for(reconciled(world), seen.call_id) == []
    assert world.hub.metric("callhub_upstream_reconciled_total", upstream="antring") == 0


@pytest.mark.parametrize("id_field", [p.values[0] for p in MODES], ids=[p.id for p in MODES])
def test_reconciliation_can_be_turned_off(data_dir: Path, id_field: str | None) -> None:
    """With `reconcile = false`, calls missed during an outage are not recovered from history."""
    with antring_world(data_dir, "blackhole", reconcile=False, id_field=id_field) as world:
        world.wait_connected()
        world.record(inbound_missed(ALICE, "0903000009", account_id=ACCOUNT))
        world.signals.drop_all_threadsafe()
        world.wait_connected(connects=2)
        time.sleep(10 * TICK)  # what the enabled case needs to publish (see `wait_history_read`)
        assert reconciled(world) == [] and history_reads(world) == 0


# -- the record and the matching rule, one record and one stored call at a time ------------------


RECORD = {"caller": {"number": "01693608879", "type": "realnumber"},
          "callee": {"number": "thutranhtkbee", "type": "user", "username": "thutran"}, "class": "trunking",
          "did_number": "02873019555", "direction": "to_ab", "status_detail": "SUCCESS",
          "duration_seconds": 50, "billing_seconds": 43, "unix_timestamp": 1519639917,
          "recording": "call_recording_dl5m5j5hfh4n8njj1oor.mp3"}


def history(record: dict[str, Any], index: int = 0) -> HistoryCall:
    return HistoryCall.of(record, index, AGENTS, frozenset({"alice", "bob"}))


def live(call: ScriptedCall, *, upto: int | None = None) -> list[dict[str, Any]]:
    """The events the hub stores for the call's signals (the real normaliser)."""
    normalizer = Normalizer(agents=AGENTS)
    events = [normalizer.event(s.name, s.payload) for s in call.signals[:upto]]
    return [e for e in events if e is not None]


def matches(record: dict[str, Any], *calls: ScriptedCall) -> str | None:
    stored = stored_calls([e for c in calls for e in live(c)], Normalizer().is_extension)
    found = match_records([history(record)], list(stored.values()), TOLERANCE)
    return found[0].call_id if 0 in found else None


@pytest.mark.parametrize("record", [RECORD, {"call_id": "c-9", **RECORD}], ids=["documented-record", "record-with-id"])
def test_the_vendors_example_record_maps_to_a_call_ended_event(record: dict[str, Any]) -> None:
    """The document's record becomes call.ended with direction, parties in normal form, agent, outcome, durations."""
    event = history_event(history(record), call_id="c-9")
    data = event["data"]
    assert event["id"] == "history:c-9" and event["type"] == "call.ended" and event["subject"] == "c-9"
    assert event["time"] == "2018-02-26T10:12:47.000Z"  # 1519639917 + 50 s
    assert (data["direction"], data["agent"], data["outcome"]) == ("inbound", "thutran", "answered")
    assert data["from"] == {"number": "0393608879", "as_sent": "01693608879", "name": None}
    assert data["to"] == {"number": "thutranhtkbee", "as_sent": "thutranhtkbee", "name": "thutran"}
    assert (data["duration_s"], data["billing_s"], data["did_number"]) == (50, 43, "02873019555")
    assert data["reconciled"] is True and data["raw"] == record


def test_a_record_read_again_has_the_same_fingerprint_and_another_record_another() -> None:
    """The id of an unmatched record depends only on the record: read twice, it is one event."""
    assert history(dict(RECORD)).fingerprint == history(RECORD, index=7).fingerprint
    assert history({**RECORD, "unix_timestamp": 1519639918}).fingerprint != history(RECORD).fingerprint


def record_of(call: ScriptedCall, **changes: Any) -> dict[str, Any]:
    return {**call.record, **changes}


@pytest.mark.parametrize(("offset", "found"), [(-30, True), (-31, False), (0, True), (2, True)])
def test_record_starting_near_the_first_ring_matches_within_the_tolerance(offset: int, found: bool) -> None:
    """A record starting up to the tolerance (30 s) before the ring is that call; one second more is not."""
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT, started=T0, ring_s=2.0)
    record = record_of(call, unix_timestamp=T0 + offset)
    assert (matches(record, call) == call.call_id) is found


@pytest.mark.parametrize(("offset", "found"), [(30, True), (31, False)])
def test_record_starting_at_the_answer_matches_within_the_tolerance_after_it(offset: int, found: bool) -> None:
    """A record may start at the answer: up to the tolerance after the answer matches, one second more does not."""
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT, started=T0, ring_s=20.0)
    record = record_of(call, unix_timestamp=T0 + 20 + offset)  # the switch answered at T0 + 20
    assert (matches(record, call) == call.call_id) is found


@pytest.mark.parametrize(("offset", "found"), [(45 + 30, True), (45 + 31, False)])
def test_call_never_seen_answered_spans_the_records_own_ringing_time(offset: int, found: bool) -> None:
    """Seen only ringing: the record's duration minus billing (its ringing) plus the tolerance may pass."""
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT, started=T0)
    stored = stored_calls(live(call, upto=2), Normalizer().is_extension)  # ringing only
    record = record_of(call, unix_timestamp=T0 + offset, duration_seconds=60, billing_seconds=15)
    found_call = match_records([history(record)], list(stored.values()), TOLERANCE)
    assert (0 in found_call) is found


def test_a_start_in_milliseconds_is_read_as_seconds() -> None:
    """`unix_timestamp` in milliseconds (not what the document shows) still places the record in time."""
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT, started=T0)
    assert matches(record_of(call, unix_timestamp=T0 * 1000), call) == call.call_id


def test_numbers_match_in_any_form() -> None:
    """A record's pre-2018 number and the trunk's `84…` caller id are one number."""
    call = inbound_answered(ALICE, "84393608879", account_id=ACCOUNT, started=T0)
    caller = {"number": "01693608879", "type": "realnumber"}
    assert matches(record_of(call, caller=caller), call) == call.call_id
    assert matches(record_of(call, caller={**caller, "number": "0912345678"}), call) is None


def test_direction_must_agree() -> None:
    """An outbound record never matches an inbound call between the same parties."""
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT, started=T0)
    swapped = record_of(call, direction="from_ab", caller=call.record["callee"], callee=call.record["caller"])
    assert matches(swapped, call) is None


def test_a_stored_call_takes_one_record_the_closest() -> None:
    """Two records both within tolerance of one call: the closer one matches it, the other nothing."""
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT, started=T0)
    stored = stored_calls(live(call), Normalizer().is_extension)
    far, near = history(record_of(call, unix_timestamp=T0 + 20), 0), history(record_of(call, unix_timestamp=T0 + 1), 1)
    found = match_records([far, near], list(stored.values()), TOLERANCE)
    assert list(found) == [1] and found[1].call_id == call.call_id


def test_the_agreeing_agent_wins_between_simultaneous_calls_from_one_number() -> None:
    """A company trunk calls alice and bob at once: the record naming bob is bob's call."""
    to_alice = inbound_answered(ALICE, "02873019000", account_id=ACCOUNT, started=T0)
    to_bob = inbound_answered(BOB, "02873019000", account_id=ACCOUNT, started=T0 + 1)
    assert matches(to_bob.record, to_alice, to_bob) == to_bob.call_id
    assert matches(to_alice.record, to_alice, to_bob) == to_alice.call_id


def test_internal_calls_match_only_between_the_same_agents() -> None:
    """An internal record naming other extensions than the stored internal call is not that call."""
    call = internal_call(ALICE, BOB, account_id=ACCOUNT, started=T0)
    assert matches(call.record, call) == call.call_id
    other = {"number": "105", "type": "user", "username": "chi"}
    assert matches(record_of(call, callee=other, caller={**other, "number": "106"}), call) is None
