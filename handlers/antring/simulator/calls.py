"""Scripted calls as AntRing's socket reports them: KAZOO signals per leg, and the history record.

Each script returns the signals in the order a KAZOO switch emits them (the customer's leg and
the agent's leg, linked by `Other-Leg-Call-ID`) with the delay before each, stamped (`Timestamp`)
with the moment the switch would send them, plus the record `/oapi/v1/call/histories` will later
show for the same call: exactly the documented fields, no call id (`SimState.add_history` adds
one when the simulator is switched to carry it). `started` (unix seconds, default now) places a
call in time, so a test can have two calls minutes apart without waiting minutes.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Signal", "ScriptedCall", "Party", "inbound_answered", "inbound_missed", "outbound_busy", "internal_call", "transferred"]

#: Seconds from 0001-01-01 (KAZOO's Gregorian epoch) to 1970-01-01.
GREGORIAN_OFFSET = 62_167_219_200


@dataclass(frozen=True)
class Party:
    """An agent as the switch knows them."""

    username: str
    extension: str
    owner_id: str


@dataclass(frozen=True)
class Signal:
    name: str
    payload: dict[str, Any]
    #: Seconds to wait before emitting it (scaled by the runner).
    delay: float = 0.0


@dataclass
class ScriptedCall:
    call_id: str
    signals: list[Signal]
    record: dict[str, Any]
    legs: list[str] = field(default_factory=list)


def _leg_id() -> str:
    return secrets.token_hex(10)


def _now() -> int:
    return int(time.time())


def _stamped(signals: list[Signal], started: int) -> list[Signal]:
    """Each signal carrying the KAZOO `Timestamp` of the moment it is sent: the start plus the delays so far."""
    stamped, elapsed = [], 0.0
    for signal in signals:
        elapsed += signal.delay
        payload = {**signal.payload, "Timestamp": started + int(elapsed) + GREGORIAN_OFFSET}
        stamped.append(Signal(signal.name, payload, signal.delay))
    return stamped


def _payload(
    leg: str, *, account_id: str, caller: str, callee: str, other: str | None = None, owner: Party | None = None,
    caller_name: str = "", callee_name: str = "", direction: str = "inbound", did: str | None = None,
) -> dict[str, Any]:
    ccv: dict[str, Any] = {"Account-ID": account_id}
    if did is not None:
        ccv["DID-Number"] = did
    if owner is not None:
        ccv.update({"Owner-ID": owner.owner_id, "Username": owner.username})
    payload: dict[str, Any] = {
        "Call-ID": leg,
        "Call-Direction": direction,
        "Caller-ID-Number": caller,
        "Caller-ID-Name": caller_name or caller,
        "Callee-ID-Number": callee,
        "Callee-ID-Name": callee_name or callee,
        "Custom-Channel-Vars": ccv,
    }
    if other:
        payload["Other-Leg-Call-ID"] = other
    return payload


def _destroy(base: dict[str, Any], cause: str, duration: int, billing: int, ringing: int, **extra: Any) -> dict[str, Any]:
    code = {"NORMAL_CLEARING": "sip:200", "USER_BUSY": "sip:486", "NO_ANSWER": "sip:480",
            "ORIGINATOR_CANCEL": "sip:487"}.get(cause, "sip:500")
    return {**base, "Hangup-Cause": cause, "Hangup-Code": code, "Duration-Seconds": str(duration),
            "Billing-Seconds": str(billing), "Ringing-Seconds": str(ringing), **extra}


def _record(*, caller: dict[str, Any], callee: dict[str, Any], cls: str, did: str | None,
            direction: str, status: str, duration: int, billing: int, recording: str, started: int) -> dict[str, Any]:
    """A history record with exactly the fields the vendor documents."""
    return {"caller": caller, "callee": callee, "class": cls, "did_number": did,
            "direction": direction, "status_detail": status, "duration_seconds": duration,
            "billing_seconds": billing, "unix_timestamp": started, "recording": recording}


def inbound_answered(agent: Party, customer: str, *, account_id: str, did: str = "02873019555",
                     ring_s: float = 2.0, talk_s: float = 5.0, started: int | None = None) -> ScriptedCall:
    """A customer calls the company's DID; the agent's phone rings, they answer and talk."""
    t0 = _now() if started is None else started
    a, b = _leg_id(), _leg_id()
    recording = f"call_recording_{a}.mp3"
    cust = _payload(a, account_id=account_id, caller=customer, callee=agent.extension, callee_name=agent.username,
                    did=did)
    agent_leg = _payload(b, account_id=account_id, caller=customer, callee=agent.extension, other=a, owner=agent,
                         direction="outbound")
    ring, talk = int(ring_s), int(talk_s)
    signals = [
        Signal("CHANNEL_CREATE", cust),
        Signal("CHANNEL_CREATE", agent_leg, 0.05),
        Signal("CHANNEL_ANSWER", agent_leg, ring_s),
        Signal("CHANNEL_ANSWER", {**cust, "Other-Leg-Call-ID": b}, 0.02),
        Signal("CHANNEL_BRIDGE", {**cust, "Other-Leg-Call-ID": b}, 0.02),
        Signal("CHANNEL_DESTROY", _destroy(agent_leg, "NORMAL_CLEARING", ring + talk, talk, ring), talk_s),
        Signal("CHANNEL_DESTROY", _destroy({**cust, "Other-Leg-Call-ID": b}, "NORMAL_CLEARING", ring + talk, talk,
                                           ring, **{"Media-Recording": recording}), 0.02),
    ]
    record = _record(caller={"number": customer, "type": "realnumber"},
                     callee={"number": agent.extension, "type": "user", "username": agent.username},
                     cls="trunking", did=did, direction="to_ab", status="SUCCESS", duration=ring + talk,
                     billing=talk, recording=recording, started=t0)
    return ScriptedCall(a, _stamped(signals, t0), record, [a, b])


def inbound_missed(agent: Party, customer: str, *, account_id: str, did: str = "02873019555",
                   ring_s: float = 3.0, started: int | None = None) -> ScriptedCall:
    """A customer calls; the agent's phone rings out; the customer hangs up."""
    t0 = _now() if started is None else started
    a, b = _leg_id(), _leg_id()
    cust = _payload(a, account_id=account_id, caller=customer, callee=agent.extension, did=did)
    agent_leg = _payload(b, account_id=account_id, caller=customer, callee=agent.extension, other=a, owner=agent,
                         direction="outbound")
    ring = int(ring_s)
    signals = [
        Signal("CHANNEL_CREATE", cust),
        Signal("CHANNEL_CREATE", agent_leg, 0.05),
        Signal("CHANNEL_DESTROY", _destroy(agent_leg, "NO_ANSWER", ring, 0, ring), ring_s),
        Signal("CHANNEL_DESTROY", _destroy({**cust, "Other-Leg-Call-ID": b}, "ORIGINATOR_CANCEL", ring, 0, ring), 0.02),
    ]
    record = _record(caller={"number": customer, "type": "realnumber"},
                     callee={"number": agent.extension, "type": "user", "username": agent.username},
                     cls="trunking", did=did, direction="to_ab", status="CANCELLED", duration=ring, billing=0,
                     recording="", started=t0)
    return ScriptedCall(a, _stamped(signals, t0), record, [a, b])


def outbound_busy(agent: Party, customer: str, *, account_id: str, ring_s: float = 1.0,
                  started: int | None = None) -> ScriptedCall:
    """The agent calls a customer whose line is busy."""
    t0 = _now() if started is None else started
    a, b = _leg_id(), _leg_id()
    agent_leg = _payload(a, account_id=account_id, caller=agent.extension, callee=customer, owner=agent)
    trunk = _payload(b, account_id=account_id, caller=agent.extension, callee=customer, other=a, direction="outbound")
    ring = int(ring_s)
    signals = [
        Signal("CHANNEL_CREATE", agent_leg),
        Signal("CHANNEL_CREATE", trunk, 0.05),
        Signal("CHANNEL_DESTROY", _destroy(trunk, "USER_BUSY", ring, 0, ring), ring_s),
        Signal("CHANNEL_DESTROY", _destroy({**agent_leg, "Other-Leg-Call-ID": b}, "USER_BUSY", ring, 0, ring), 0.02),
    ]
    record = _record(caller={"number": agent.extension, "type": "user", "username": agent.username},
                     callee={"number": customer, "type": "realnumber"}, cls="trunking", did=None,
                     direction="from_ab", status="BUSY", duration=ring, billing=0, recording="", started=t0)
    return ScriptedCall(a, _stamped(signals, t0), record, [a, b])


def internal_call(caller: Party, callee: Party, *, account_id: str, talk_s: float = 2.0,
                  started: int | None = None) -> ScriptedCall:
    """One agent calls another's extension; they talk."""
    t0 = _now() if started is None else started
    a, b = _leg_id(), _leg_id()
    leg_a = _payload(a, account_id=account_id, caller=caller.extension, callee=callee.extension, owner=caller)
    leg_b = _payload(b, account_id=account_id, caller=caller.extension, callee=callee.extension, other=a, owner=callee,
                     direction="outbound")
    talk = int(talk_s)
    signals = [
        Signal("CHANNEL_CREATE", leg_a),
        Signal("CHANNEL_CREATE", leg_b, 0.05),
        Signal("CHANNEL_ANSWER", leg_b, 1.0),
        Signal("CHANNEL_ANSWER", {**leg_a, "Other-Leg-Call-ID": b}, 0.02),
        Signal("CHANNEL_DESTROY", _destroy(leg_b, "NORMAL_CLEARING", 1 + talk, talk, 1), talk_s),
        Signal("CHANNEL_DESTROY", _destroy({**leg_a, "Other-Leg-Call-ID": b}, "NORMAL_CLEARING", 1 + talk, talk, 1), 0.02),
    ]
    record = _record(caller={"number": caller.extension, "type": "user", "username": caller.username},
                     callee={"number": callee.extension, "type": "user", "username": callee.username},
                     cls="one_one", did=None, direction="from_ab", status="SUCCESS", duration=1 + talk,
                     billing=talk, recording="", started=t0)
    return ScriptedCall(a, _stamped(signals, t0), record, [a, b])


def transferred(first: Party, second: Party, customer: str, *, account_id: str, did: str = "02873019555",
                talk_s: float = 2.0, started: int | None = None) -> ScriptedCall:
    """A customer reaches one agent, who transfers them to another: three legs, one call."""
    call = inbound_answered(first, customer, account_id=account_id, did=did, talk_s=talk_s, started=started)
    a = call.call_id
    c = _leg_id()
    leg_c = _payload(c, account_id=account_id, caller=customer, callee=second.extension, other=a, owner=second,
                     direction="outbound")
    talk = int(talk_s)
    first_agent_end = call.signals[5]  # the first agent's leg ends: the transfer
    customer_end = call.signals[6]
    signals = [*call.signals[:5], first_agent_end,
               Signal("CHANNEL_CREATE", leg_c, 0.05),
               Signal("CHANNEL_ANSWER", leg_c, 1.0),
               Signal("CHANNEL_BRIDGE", {**customer_end.payload, "Other-Leg-Call-ID": c}, 0.02),
               Signal("CHANNEL_DESTROY", _destroy(leg_c, "NORMAL_CLEARING", 1 + talk, talk, 1), talk_s),
               Signal("CHANNEL_DESTROY", {**customer_end.payload, "Other-Leg-Call-ID": c}, 0.02)]
    return ScriptedCall(a, _stamped(signals, call.record["unix_timestamp"]), call.record, [*call.legs, c])
