"""From KAZOO call events (what AntRing's call-signal socket sends) to callhub's call events.

    CHANNEL_CREATE  -> call.ringing        CHANNEL_BRIDGE -> call.bridged
    CHANNEL_ANSWER  -> call.answered       CHANNEL_HOLD   -> call.held
    CHANNEL_DESTROY -> call.ended          CHANNEL_UNHOLD -> call.resumed
    anything else (PARK_*, whatever an operator binds) -> call.signal

KAZOO reports each *leg* of a call (the customer's and the agent's) separately; the two legs
name each other in `Other-Leg-Call-ID`. `CallCorrelator` gives both legs one `call_id`, and
lends a leg the agent known from the other leg. Event ids are `<leg id>:<KAZOO event name>`
(with the other leg and the time for signals that can repeat), so a signal seen twice (a
resubscribe replays, a reconnect overlaps) is one event.

A signal callhub does not map is not thrown away: it becomes `call.signal` with the vendor's
event name in `data.signal`, the call (and its agent) when the payload names a leg, and the raw
payload, so a rule or subscriber can use it.

Assumptions where the vendor is silent (docs/ANTRING.md keeps the list):
- A number of at most `internal_max_digits` digits is an extension, a longer one a phone
  number: a call between two extensions is `internal`, one from a phone number `inbound`,
  one from an extension to a phone number `outbound`.
- The agent owning a leg is found by `Custom-Channel-Vars.Owner-ID` (matched against an
  agent's `owner_id`) or `Custom-Channel-Vars.Username` / the extension (matched against an
  agent's `sip_user` / `extension`).
- `Timestamp` is KAZOO's Gregorian seconds (or Unix seconds if small enough); without it, now.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from hub.plugin import call_party, normal_number, now_rfc3339

__all__ = ["EVENT_TYPES", "SIGNAL_TYPE", "AgentIndex", "CallCorrelator", "Normalizer", "outcome_of"]

SOURCE = "antring"
EVENT_TYPES = {
    "CHANNEL_CREATE": "call.ringing",
    "CHANNEL_ANSWER": "call.answered",
    "CHANNEL_DESTROY": "call.ended",
    "CHANNEL_BRIDGE": "call.bridged",
    "CHANNEL_HOLD": "call.held",
    "CHANNEL_UNHOLD": "call.resumed",
}
#: The type of every signal that `EVENT_TYPES` does not map.
SIGNAL_TYPE = "call.signal"
#: Longest event id built from vendor values as they are; longer ones are hashed (the hub allows 256).
MAX_ID = 200
#: Legs remembered for correlation; old calls fall out first.
MAX_TRACKED_LEGS = 100_000
#: Seconds between year 0 (KAZOO's Gregorian epoch) and 1970.
GREGORIAN_OFFSET = 62_167_219_200

_NO_ANSWER = {"NO_ANSWER", "NO_USER_RESPONSE", "ALLOTTED_TIMEOUT", "PROGRESS_TIMEOUT", "RECOVERY_ON_TIMER_EXPIRE"}
_CANCELLED = {"ORIGINATOR_CANCEL", "LOSE_RACE", "PICKED_OFF"}
_BUSY = {"USER_BUSY", "CALL_REJECTED", "NORMAL_CIRCUIT_CONGESTION", "SWITCH_CONGESTION"}
_DIGITS = re.compile(r"\D")


def outcome_of(hangup_cause: str | None, *, billing_s: int, answered: bool) -> str:
    """`answered` | `busy` | `no_answer` | `cancelled` | `failed` from a KAZOO hangup."""
    cause = (hangup_cause or "").upper()
    if answered or billing_s > 0:
        return "answered"
    if cause in _BUSY:
        return "busy"
    if cause in _NO_ANSWER:
        return "no_answer"
    if cause in _CANCELLED:
        return "cancelled"
    if cause == "NORMAL_CLEARING":
        # Hung up before anyone answered, from the caller's side.
        return "cancelled"
    return "failed"


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class AgentIndex:
    """Who owns a leg: lookups from KAZOO owner ids, SIP usernames and extensions to agent names."""

    by_owner: Mapping[str, str] = field(default_factory=dict)
    by_sip_user: Mapping[str, str] = field(default_factory=dict)
    by_extension: Mapping[str, str] = field(default_factory=dict)

    def find(self, payload: Mapping[str, Any], numbers: tuple[str | None, ...]) -> str | None:
        ccv = payload.get("Custom-Channel-Vars")
        if isinstance(ccv, Mapping):
            owner = _str(ccv.get("Owner-ID"))
            if owner and owner in self.by_owner:
                return self.by_owner[owner]
            username = _str(ccv.get("Username"))
            if username and username in self.by_sip_user:
                return self.by_sip_user[username]
        for number in numbers:
            if number and number in self.by_extension:
                return self.by_extension[number]
        return None


class CallCorrelator:
    """Leg ids to call ids (both legs of a call share one), and what each call has shown so far."""

    def __init__(self, max_legs: int = MAX_TRACKED_LEGS) -> None:
        self.max_legs = max_legs
        self._call_of: OrderedDict[str, str] = OrderedDict()
        self._agent_of_call: dict[str, str] = {}
        self._answered: set[str] = set()

    def call_id(self, leg: str, other: str | None) -> str:
        known = self._call_of.get(leg)
        if known is None and other:
            known = self._call_of.get(other)
        call_id = known or other or leg
        self._remember(leg, call_id)
        if other:
            self._remember(other, call_id)
        return call_id

    def _remember(self, leg: str, call_id: str) -> None:
        self._call_of[leg] = call_id
        self._call_of.move_to_end(leg)
        while len(self._call_of) > self.max_legs:
            old_leg, old_call = self._call_of.popitem(last=False)
            self._answered.discard(old_leg)
            if old_call not in self._call_of.values():
                self._agent_of_call.pop(old_call, None)

    def agent(self, call_id: str, own: str | None) -> str | None:
        if own:
            self._agent_of_call.setdefault(call_id, own)
            return own
        return self._agent_of_call.get(call_id)

    def answered(self, leg: str) -> None:
        self._answered.add(leg)

    def was_answered(self, leg: str) -> bool:
        return leg in self._answered


@dataclass
class Normalizer:
    agents: AgentIndex = field(default_factory=AgentIndex)
    correlator: CallCorrelator = field(default_factory=CallCorrelator)
    internal_max_digits: int = 6

    def is_extension(self, number: str | None) -> bool:
        digits = _DIGITS.sub("", number or "")
        return 0 < len(digits) <= self.internal_max_digits

    def direction(self, caller: str | None, callee: str | None) -> str:
        if self.is_extension(caller) and (self.is_extension(callee) or not callee):
            return "internal"
        if self.is_extension(caller):
            return "outbound"
        return "inbound"

    def event(self, name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The callhub event for one KAZOO signal: a call event, or `call.signal` for any other."""
        type_ = EVENT_TYPES.get(name.upper())
        leg = _str(payload.get("Call-ID"))
        if type_ is None or leg is None:
            return self.signal(name, payload, leg)
        other = _str(payload.get("Other-Leg-Call-ID"))
        call_id = self.correlator.call_id(leg, other)
        caller = _str(payload.get("Caller-ID-Number"))
        callee = _str(payload.get("Callee-ID-Number")) or _request_user(payload.get("Request"))
        agent = self.correlator.agent(call_id, self.agents.find(payload, (callee, caller)))
        ccv = payload.get("Custom-Channel-Vars")
        data: dict[str, Any] = {
            "call_id": call_id,
            "leg_id": leg,
            "direction": self.direction(caller, callee),
            "from": call_party(caller, _str(payload.get("Caller-ID-Name"))),
            "to": call_party(callee, _str(payload.get("Callee-ID-Name"))),
            "agent": agent,
            "did_number": did_number(ccv.get("DID-Number") if isinstance(ccv, Mapping) else None),
        }
        if type_ == "call.answered":
            self.correlator.answered(leg)
        if type_ == "call.ended":
            billing = _int(payload.get("Billing-Seconds"))
            cause = _str(payload.get("Hangup-Cause"))
            data.update(
                outcome=outcome_of(cause, billing_s=billing, answered=self.correlator.was_answered(leg)),
                hangup_cause=cause,
                hangup_code=_str(payload.get("Hangup-Code")),
                duration_s=_int(payload.get("Duration-Seconds")),
                billing_s=billing,
                ringing_s=_int(payload.get("Ringing-Seconds")),
                recording=_recording(payload),
            )
        data["raw"] = dict(payload)
        return {
            "type": type_,
            "source": SOURCE,
            "id": event_id(name.upper(), leg, payload),
            "subject": call_id,
            "time": _time(payload.get("Timestamp")),
            "data": data,
        }

    def signal(self, name: str, payload: Mapping[str, Any], leg: str | None) -> dict[str, Any]:
        """`call.signal` for a signal callhub does not map (or a call signal without a leg)."""
        call_id = self.correlator.call_id(leg, _str(payload.get("Other-Leg-Call-ID"))) if leg else None
        agent = self.agents.find(payload, ())
        if call_id is not None:
            agent = self.correlator.agent(call_id, agent)
        msg_id = _str(payload.get("Msg-ID"))
        # Without a message id, the payload itself tells a replay from a new signal.
        key = msg_id or hashlib.sha256(orjson.dumps(dict(payload), option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
        event_id = f"{leg}:{name.upper()}:{key}" if leg else f"signal:{name.upper()}:{key}"
        if len(event_id) > MAX_ID:
            event_id = "signal:" + hashlib.sha256(event_id.encode()).hexdigest()
        event: dict[str, Any] = {
            "type": SIGNAL_TYPE,
            "source": SOURCE,
            "id": event_id,
            "time": _time(payload.get("Timestamp")),
            "data": {"signal": name, "call_id": call_id, "leg_id": leg, "agent": agent, "raw": dict(payload)},
        }
        if call_id is not None:
            event["subject"] = call_id
        return event


#: Signals a leg sends once in its life; the others (bridge, hold, unhold) may repeat.
_ONCE_PER_LEG = {"CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_DESTROY"}


def event_id(name: str, leg: str, payload: Mapping[str, Any]) -> str:
    """Deterministic: the same signal seen twice has the same id, two different signals do not.

    KAZOO's `Msg-ID` names a message when present. Otherwise create/answer/destroy happen once
    per leg; bridge, hold and unhold may repeat, so the other leg and the timestamp tell them apart.
    """
    msg_id = _str(payload.get("Msg-ID"))
    if msg_id:
        return f"{leg}:{name}:{msg_id}"
    if name in _ONCE_PER_LEG:
        return f"{leg}:{name}"
    return f"{leg}:{name}:{payload.get('Other-Leg-Call-ID', '')}:{payload.get('Timestamp', '')}"


def did_number(value: Any) -> str | None:
    """The company number a call came in on, in the normal form when it is a phone number."""
    text = _str(value)
    return normal_number(text) or text if text else None


def _request_user(value: Any) -> str | None:
    """`1001@account.realm` -> `1001` (KAZOO's `Request`, when no Callee-ID is set)."""
    return _str(value.split("@", 1)[0]) if isinstance(value, str) else None


def _recording(payload: Mapping[str, Any]) -> str | None:
    for key in ("Recording", "Media-Recording", "Media-Name"):
        value = _str(payload.get(key))
        if value:
            return value
    ccv = payload.get("Custom-Channel-Vars")
    if isinstance(ccv, Mapping):
        return _str(ccv.get("Media-Recording")) or _str(ccv.get("Recording"))
    return None


def _time(value: Any) -> str:
    seconds = _int(value)
    if seconds <= 0:
        return now_rfc3339()
    if seconds > GREGORIAN_OFFSET:
        seconds -= GREGORIAN_OFFSET
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
