"""`[antring]`: AntRing credentials, the call-signal socket, and one SIP device per agent."""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from hub.plugin import HttpUrl, SocketUrl, parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
WsProtocol = Literal["socketio", "socketio-eio3", "socketio-0.9", "blackhole"]
#: How the voice token's `expire` is read: guessed from the value (`auto`), or one fixed format.
ExpireFormat = Literal["auto", "iso", "unix", "unix_ms", "ttl_s"]

#: The bindings AntBuddy's docs subscribe to, plus the KAZOO ones for bridge and hold.
DEFAULT_BINDINGS = [
    "call.CHANNEL_CREATE.*",
    "call.CHANNEL_ANSWER.*",
    "call.CHANNEL_DESTROY.*",
    "call.CHANNEL_BRIDGE.*",
    "call.CHANNEL_HOLD.*",
    "call.CHANNEL_UNHOLD.*",
]


class AgentDevice(BaseModel):
    """`[antring.agents.<username>]`: the agent's own SIP device (click-to-call rings it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sip_user: str = Field(min_length=1)
    sip_password: str = Field(min_length=1)
    #: The agent's extension, and KAZOO's user id for them, to recognise their legs on the socket.
    extension: str | None = None
    owner_id: str | None = None


class AntRingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    base_url: HttpUrl = "https://openapi.antbuddy.com"
    app_id: str = Field(min_length=1)
    app_secret: str = Field(min_length=1)
    account_id: str = Field(min_length=1)
    ws_url: SocketUrl = "https://ws.antbuddy.com:5557"
    ws_protocol: WsProtocol = "socketio"
    bindings: list[str] = Field(default_factory=lambda: list(DEFAULT_BINDINGS), min_length=1)
    #: The SIP device whose credentials obtain the voice token for the socket.
    sip_user: str = Field(min_length=1)
    sip_password: str = Field(min_length=1)
    agents: dict[str, AgentDevice] = {}
    #: Refresh the voice token this long before it expires.
    token_refresh_margin: Duration = 60.0
    #: Reconnect back-off: first delay, doubling with jitter up to the cap.
    reconnect_initial_delay: Duration = 0.5
    reconnect_max_delay: Duration = 30.0
    #: Fill gaps from call history after reconnects (and periodically); see docs/ANTRING.md.
    reconcile: bool = True
    #: Also reconcile with the call history this often while connected (0 = only after reconnects).
    reconcile_interval: Duration = 300.0
    #: How far back the first reconciliation after start looks.
    reconcile_lookback: Duration = 3600.0
    #: How far a history record's start may lie outside a stored call's ring-to-answer span and
    #: still be that call (the two clocks differ; see docs/ANTRING.md).
    reconcile_tolerance: Duration = Field(30.0, ge=0, le=300)
    request_timeout: Duration = 10.0
    #: The field of a call-history record that holds the call's id, for accounts whose records
    #: carry one. The documented record has none: None (the default) matches records to stored
    #: calls by direction, parties and time instead (docs/ANTRING.md).
    history_id_field: str | None = None
    #: How `expire` in the voice-token answer is written (undocumented): guessed (`auto`) or fixed.
    expire_format: ExpireFormat = "auto"
    #: The account's time zone (an IANA name): AntRing times written without an offset are read in it.
    time_zone: ZoneInfo = ZoneInfo("Asia/Ho_Chi_Minh")
    #: Numbers with at most this many digits are extensions (internal), longer ones phone numbers.
    internal_max_digits: int = Field(6, ge=1, le=15)
