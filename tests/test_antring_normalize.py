"""KAZOO call signals become callhub call events: types, legs correlated into one call, outcomes."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.antring.normalize import AgentIndex, Normalizer, outcome_of
from hub.events import prepare_event


def leg(call_id: str, other: str | None = None, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "Call-ID": call_id,
        "Caller-ID-Number": "0912345678",
        "Caller-ID-Name": "Nguyen Van A",
        "Callee-ID-Number": "101",
        "Callee-ID-Name": "Alice",
        "Call-Direction": "inbound",
        "Custom-Channel-Vars": {"Account-ID": "acc1"},
    }
    if other:
        payload["Other-Leg-Call-ID"] = other
    payload.update(extra)
    return payload


def normalizer() -> Normalizer:
    return Normalizer(agents=AgentIndex(by_owner={"u-alice": "alice"}, by_extension={"101": "alice", "102": "bob"}))


def test_each_binding_maps_to_its_call_event_type() -> None:
    """CHANNEL_CREATE/ANSWER/DESTROY/BRIDGE/HOLD/UNHOLD become ringing/answered/ended/bridged/held/resumed."""
    n = normalizer()
    names = ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_HOLD", "CHANNEL_UNHOLD", "CHANNEL_DESTROY"]
    types = [n.event(name, leg("a1"))["type"] for name in names]  # type: ignore[index]
    assert types == ["call.ringing", "call.answered", "call.bridged", "call.held", "call.resumed", "call.ended"]


def test_an_unmapped_signal_is_a_call_signal_with_its_name_call_and_payload() -> None:
    """PARK_PARKED (or anything else bound) is call.signal: vendor name, the call it belongs to, raw payload."""
    n = normalizer()
    n.event("CHANNEL_CREATE", leg("cust-leg"))
    payload = leg("agent-leg", other="cust-leg", **{"Custom-Channel-Vars": {"Owner-ID": "u-alice"}})
    event = n.event("PARK_PARKED", payload)
    assert event["type"] == "call.signal" and event["subject"] == "cust-leg"
    assert event["data"] == {"signal": "PARK_PARKED", "call_id": "cust-leg", "leg_id": "agent-leg", "agent": "alice",
                             "raw": payload}
    assert prepare_event(event)["type"] == "call.signal"


def test_signal_ids_tell_replays_from_new_signals() -> None:
    """The same signal twice has one id; a different payload, or one without a leg, has its own."""
    n = normalizer()
    first = n.event("PARK_PARKED", leg("a1", Timestamp=63_900_000_000))
    assert n.event("PARK_PARKED", leg("a1", Timestamp=63_900_000_000))["id"] == first["id"]
    assert n.event("PARK_PARKED", leg("a1", Timestamp=63_900_000_001))["id"] != first["id"]
    assert n.event("PARK_RETRIEVED", leg("a1", **{"Msg-ID": "m-1"}))["id"] == "a1:PARK_RETRIEVED:m-1"
    no_leg = n.event("CHANNEL_CREATE", {"Caller-ID-Number": "1"})
    assert no_leg["type"] == "call.signal" and no_leg["id"].startswith("signal:CHANNEL_CREATE:")
    assert no_leg["data"]["call_id"] is None and "subject" not in no_leg


def test_event_is_a_valid_hub_event_with_deterministic_id_and_raw_payload() -> None:
    """The event passes the hub's validation; its id depends only on leg and signal; raw payload kept."""
    payload = leg("a1")
    first = normalizer().event("CHANNEL_CREATE", payload)
    again = normalizer().event("CHANNEL_CREATE", dict(payload))
    assert first is not None and again is not None
    assert first["id"] == again["id"] == "a1:CHANNEL_CREATE" and first["source"] == "antring"
    assert first["data"]["raw"] == payload
    assert prepare_event(first)["type"] == "call.ringing"


def test_two_legs_share_one_call_id_whatever_order_they_arrive_in() -> None:
    """The customer's and the agent's legs, linked by Other-Leg-Call-ID, carry the same call_id."""
    n = normalizer()
    a = n.event("CHANNEL_CREATE", leg("cust-leg"))
    b = n.event("CHANNEL_CREATE", leg("agent-leg", other="cust-leg"))
    a_end = n.event("CHANNEL_DESTROY", leg("cust-leg", other="agent-leg"))
    assert a and b and a_end
    assert a["data"]["call_id"] == b["data"]["call_id"] == a_end["data"]["call_id"] == "cust-leg"
    assert {a["data"]["leg_id"], b["data"]["leg_id"]} == {"cust-leg", "agent-leg"}
    n2 = normalizer()
    b2 = n2.event("CHANNEL_CREATE", leg("agent-leg", other="cust-leg"))
    a2 = n2.event("CHANNEL_CREATE", leg("cust-leg"))
    assert b2 and a2 and b2["data"]["call_id"] == a2["data"]["call_id"]


def test_agent_is_found_by_owner_or_extension_and_lent_to_the_other_leg() -> None:
    """A leg owned by an agent names them; the customer's leg of the same call carries that agent too."""
    n = normalizer()
    agent_leg = n.event("CHANNEL_CREATE", leg("b1", Caller_ID_Number="x", **{"Custom-Channel-Vars": {"Owner-ID": "u-alice"}}))
    customer_leg = n.event("CHANNEL_ANSWER", leg("a1", other="b1", **{"Callee-ID-Number": "0987654321"}))
    assert agent_leg and customer_leg
    assert agent_leg["data"]["agent"] == "alice"
    assert customer_leg["data"]["agent"] == "alice"


@pytest.mark.parametrize(
    ("caller", "callee", "direction"),
    [("0912345678", "101", "inbound"), ("101", "0912345678", "outbound"), ("101", "102", "internal"),
     ("+84912345678", "101", "inbound")],
)
def test_direction_from_who_called_whom(caller: str, callee: str, direction: str) -> None:
    """Phone number to extension is inbound, extension to phone number outbound, extension to extension internal."""
    event = normalizer().event("CHANNEL_CREATE", leg("a1", **{"Caller-ID-Number": caller, "Callee-ID-Number": callee}))
    assert event and event["data"]["direction"] == direction
    assert event["data"]["from"]["as_sent"] == caller and event["data"]["to"]["as_sent"] == callee


@pytest.mark.parametrize(
    ("caller", "number"),
    [("84912345678", "0912345678"), ("+84912345678", "0912345678"), ("01693608879", "0393608879"),
     ("anonymous", "anonymous"), ("101", "101")],
)
def test_parties_carry_the_normal_form_beside_what_the_trunk_sent(caller: str, number: str) -> None:
    """A caller id in any number form is the normal form in `number`, exactly as sent in `as_sent`; anonymous stays."""
    event = normalizer().event("CHANNEL_CREATE", leg("a1", **{"Caller-ID-Number": caller}))
    assert event is not None
    assert event["data"]["from"] == {"number": number, "as_sent": caller, "name": "Nguyen Van A"}


def test_ended_call_carries_outcome_cause_and_durations() -> None:
    """call.ended has outcome, hangup cause and code, duration, billing and ringing seconds, recording."""
    n = normalizer()
    n.event("CHANNEL_ANSWER", leg("a1"))
    ended = n.event("CHANNEL_DESTROY", leg(
        "a1", **{"Hangup-Cause": "NORMAL_CLEARING", "Hangup-Code": "sip:200", "Duration-Seconds": "65",
                 "Billing-Seconds": "50", "Ringing-Seconds": "15", "Custom-Channel-Vars": {"Media-Recording": "r1.mp3"}},
    ))
    assert ended is not None
    data = ended["data"]
    assert (data["outcome"], data["hangup_cause"], data["hangup_code"]) == ("answered", "NORMAL_CLEARING", "sip:200")
    assert (data["duration_s"], data["billing_s"], data["ringing_s"], data["recording"]) == (65, 50, 15, "r1.mp3")


@pytest.mark.parametrize(
    ("cause", "billing", "answered", "outcome"),
    [("NORMAL_CLEARING", 30, False, "answered"), ("USER_BUSY", 0, False, "busy"), ("CALL_REJECTED", 0, False, "busy"),
     ("NO_ANSWER", 0, False, "no_answer"), ("ORIGINATOR_CANCEL", 0, False, "cancelled"),
     ("NORMAL_CLEARING", 0, False, "cancelled"), ("UNALLOCATED_NUMBER", 0, False, "failed"),
     ("NORMAL_CLEARING", 0, True, "answered")],
)
def test_outcome_mapping(cause: str, billing: int, answered: bool, outcome: str) -> None:
    """Hangup causes map to answered, busy, no_answer, cancelled or failed."""
    assert outcome_of(cause, billing_s=billing, answered=answered) == outcome


def test_time_comes_from_kazoo_gregorian_timestamp() -> None:
    """KAZOO's Gregorian-seconds Timestamp becomes an RFC 3339 time."""
    event = normalizer().event("CHANNEL_CREATE", leg("a1", Timestamp=63_900_000_000))
    assert event and event["time"] == "2024-11-28T08:00:00.000Z"  # 63,900,000,000 - 62,167,219,200 = 1,732,780,800


def test_repeatable_signals_get_distinct_ids_but_a_replay_does_not() -> None:
    """Two holds on one leg are two events; the same hold seen twice is one id."""
    n = normalizer()
    first = n.event("CHANNEL_HOLD", leg("a1", other="b1", Timestamp=63_900_000_000))
    second = n.event("CHANNEL_HOLD", leg("a1", other="b1", Timestamp=63_900_000_030))
    replay = n.event("CHANNEL_HOLD", leg("a1", other="b1", Timestamp=63_900_000_000))
    assert first and second and replay
    assert first["id"] != second["id"] and first["id"] == replay["id"]
    with_msg = n.event("CHANNEL_BRIDGE", leg("a1", other="b1", **{"Msg-ID": "m-77"}))
    assert with_msg and with_msg["id"] == "a1:CHANNEL_BRIDGE:m-77"
