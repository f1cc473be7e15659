"""The one typed configuration object, loaded from one TOML file.

`load_config(path)` reads the file, substitutes `${NAME}` references from the environment
(write `$${` for a literal `${`), and validates everything at once, so `callhub check`
can print every problem with its key path rather than the first one.
Nothing here reads the environment at import time.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from hub.exceptions import HubError
from hub.matcher import ConditionError, compile_conditions, flatten_conditions, parse_patterns
from hub.units import parse_duration, parse_size

__all__ = ["Config", "ConfigError", "HttpUrl", "SocketUrl", "load_config", "config_from_dict", "validate_section", "is_loopback_host"]

SectionT = TypeVar("SectionT", bound=BaseModel)


def _service_url(schemes: tuple[str, ...], *, keep_path_slash: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"{value!r} is not a {' or '.join(s + '://' for s in schemes)} URL")
        if keep_path_slash and value.count("/") > 3:
            return value  # a WebSocket path is used as given (a mounted endpoint may need its slash)
        return value.rstrip("/")

    return check


#: A vendor's base URL; a trailing slash is dropped (paths are appended to it).
HttpUrl = Annotated[str, AfterValidator(_service_url(("http", "https"), keep_path_slash=False))]
#: A vendor's socket URL: http(s) for Socket.IO, ws(s) for plain WebSockets; its path is kept.
SocketUrl = Annotated[str, AfterValidator(_service_url(("http", "https", "ws", "wss"), keep_path_slash=True))]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Role = Literal["admin", "publisher", "subscriber"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]

#: Default place for the event log, the generated admin key and the generated JWT secret.
DEFAULT_DATA_DIR = "./callhub-data"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: Turning auth off is allowed only on a loopback host, for local trials.
    auth: bool = True
    data_dir: str = DEFAULT_DATA_DIR
    #: Largest request body accepted by `POST /v1/events` and the webhook receivers.
    max_body: Size = 1024 * 1024
    #: A request's head must arrive within this (slow-header clients are cut: 408, closed).
    header_timeout: Duration = Field(10.0, ge=0)
    #: A request's body must arrive within this of its head (a body declared and never sent: 408).
    body_timeout: Duration = Field(10.0, ge=0)
    #: An answer the client does not read may keep the connection's send buffer full this long;
    #: then the connection is cut (a client that asks and never reads would hold it forever).
    send_timeout: Duration = Field(30.0, ge=0)
    #: Largest request head (request line and headers); 431 past it.
    max_head: Size = Field(64 * 1024, ge=1024)
    #: Connections and requests in progress at once, streams included; past it new ones get 503.
    #: 0: no limit but the process's file descriptors.
    max_connections: int = Field(20_000, ge=0)
    #: How long shutdown waits for subscribers to be closed before giving up on them.
    shutdown_grace: Duration = 5.0
    #: How long a process holds an exclusive piece of work (an upstream connection, retention) before
    #: renewing; when it dies, another process sharing the store takes over within this time.
    lease_ttl: Duration = Field(10.0, ge=0.5, le=600)
    #: Older spellings of `[log] level` and `[log] access`, still read when `[log]` does not set them.
    log_level: LogLevel = "info"
    access_log: bool = False
    #: Origins whose pages may call the API and open EventSource streams (CORS); `["*"]` for any.
    #: Empty: only pages served by the hub itself.
    cors_origins: list[str] = []
    #: Serve the agent console at `/` (docs/CONSOLE.md); the API works the same without it.
    console: bool = True


class LogConfig(_Section):
    """`[log]`: what the hub writes to stderr, and how."""

    #: Unset: `server.log_level` (itself "info" by default).
    level: LogLevel = "info"
    #: `text` for a person at a terminal; `json`: one JSON object per line (time, level, logger,
    #: message, request_id and any ids the line carries), for a log collector.
    format: Literal["text", "json"] = "text"
    #: One line per HTTP request (uvicorn's access log). Unset: `server.access_log`.
    access: bool = False
    #: `masked`: a phone number in a log line keeps only its last 3 digits; `full`: left as it is.
    phone_numbers: Literal["masked", "full"] = "masked"


class BackendConfig(BaseModel):
    """`[backend]`: `url` picks the backend (by scheme); every other key is that backend's own
    option, validated by it (`hub.store.open_backend`), e.g. the local backend's `synchronous`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    #: `local` = SQLite (WAL) in `server.data_dir` with in-process fan-out.
    url: str = "local"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RetentionConfig(_Section):
    #: Events older than this are deleted (0 = keep forever).
    age: Duration = 7 * 86400.0
    #: At most this many events are kept (0 = no limit).
    count: int = Field(1_000_000, ge=0)
    #: How often retention runs.
    interval: Duration = 60.0


class StreamsConfig(_Section):
    #: Events one subscriber may have queued in the hub before it is disconnected as too slow.
    buffer: int = Field(1000, ge=1, le=1_000_000)
    #: Bytes one subscriber may have queued (events and answers to its own messages) before it
    #: is disconnected: `buffer` counts events, and events may be large.
    buffer_bytes: Size = Field(16 * 1024 * 1024, ge=64 * 1024)
    #: WebSocket pings and pongs one client may send per second; past it the socket is closed (1008).
    max_control_per_s: int = Field(20, ge=1)
    sse_heartbeat: Duration = 15.0
    #: The `retry:` hint sent to EventSource clients.
    sse_retry: Duration = 3.0
    ws_ping_interval: Duration = 20.0
    ws_ping_timeout: Duration = 20.0
    #: Largest client->server WebSocket message.
    ws_max_message: Size = 64 * 1024
    #: How long a slow or closing subscriber is given to take its close frame before the socket is aborted.
    close_timeout: Duration = 5.0
    #: Rows read from the store per page while a subscriber catches up.
    catchup_page: int = Field(500, ge=1, le=10_000)
    #: Live connections (SSE and WebSocket together) one credential may hold; 0: no limit.
    #: A JWT counts per subject (`sub`), an API key per key.
    max_per_credential: int = Field(50, ge=0)
    #: WebSocket client messages in a row that may be refused (bad JSON, unknown op) before the
    #: connection is closed (1008): a client that keeps sending garbage is a broken or hostile one.
    max_bad_messages: int = Field(10, ge=1)


class ApiKey(_Section):
    key: str = Field(min_length=16)
    role: Role
    agent: str | None = None
    #: Shown in `/v1/subscribers` and logs instead of the key.
    name: str | None = None


class AuthConfig(_Section):
    #: HS256 secret for subscriber JWTs. Empty: generated into `server.data_dir/jwt.secret`.
    jwt_secret: str | None = Field(None, min_length=32)
    #: Clock skew tolerated on `exp`.
    jwt_leeway: Duration = 0.0
    keys: list[ApiKey] = []


class SourceConfig(_Section):
    """`[[sources]]`: one webhook sender, received at `POST /v1/webhooks/{name}`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    #: `none` must be written out: a source is never unverified by default.
    verify: Literal["token", "hmac-sha256", "standard-webhooks", "none"]
    secret: str | None = None
    #: Header holding the HMAC (hmac-sha256).
    header: str = "X-Signature"
    #: What the HMAC covers (hmac-sha256): the body, or the body behind the timestamp header's
    #: value (`"{timestamp}.{body}"`, `"v0:{timestamp}:{body}"`); `{body}` comes last.
    signed: str = "{body}"
    #: A header holding the send time in unix seconds (token, hmac-sha256): deliveries outside
    #: `tolerance` are refused, a replay window. Unset: no window (Standard Webhooks has its own).
    timestamp_header: str | None = None
    #: Timestamp tolerance (Standard Webhooks, and `timestamp_header`).
    tolerance: Duration = 300.0
    #: Idempotency key: `header:<Name>`, a dotted JSON path, or a list of paths joined; default: body hash.
    id: str | list[str] | None = None
    #: Event type: fixed (`stringee.call`) or `$.dotted.path` into the body.
    type: str
    #: data field -> dotted path into the body (e.g. `agent = "user.username"`).
    fields: dict[str, str] = {}
    #: `raw`: accept any body and keep it as text; `json`: the body must be JSON.
    format: Literal["json", "raw"] = "json"

    @model_validator(mode="after")
    def _secret_matches_scheme(self) -> SourceConfig:
        if self.verify != "none" and not self.secret:
            raise ValueError(f"verify = {self.verify!r} needs a secret")
        if self.verify == "standard-webhooks" and self.secret:
            _check_whsec(self.secret)
        return self

    @model_validator(mode="after")
    def _replay_safe(self) -> SourceConfig:
        rest = self.signed.replace("{timestamp}", "")
        if not self.signed.endswith("{body}") or "{" in rest[:-len("{body}")] or rest.count("{body}") != 1:
            raise _LocatedError(("signed",), 'must end with {body} and may hold {timestamp}, e.g. "{timestamp}.{body}"')
        if "{timestamp}" in self.signed and not self.timestamp_header:
            raise _LocatedError(("timestamp_header",), "signed names {timestamp}: say which header holds it")
        if self.verify == "hmac-sha256" and isinstance(self.id, str) and self.id.lower().startswith("header:"):
            # The HMAC covers the body, not this header: a captured delivery with the header changed
            # would pass verification and be stored again as a new event.
            raise _LocatedError(("id",), "unsafe with hmac-sha256: the header is not signed, so a replayed delivery "
                                         "with a changed header would be a new event; key on a body path "
                                         "(or leave id unset for the body hash)")
        return self


def _check_whsec(secret: str) -> str:
    try:
        if not secret.startswith("whsec_") or not base64.b64decode(secret[6:], validate=True):
            raise ValueError
    except (ValueError, binascii.Error):
        raise ValueError("a Standard Webhooks secret looks like whsec_<base64>") from None
    return secret


def _check_allow_entry(entry: str) -> str:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", entry):
            raise ValueError(f"{entry!r} is neither a network (CIDR) nor a host name") from None
    return entry


class WebhookActionConfig(_Section):
    """`[actions.webhook]`: how the `webhook.post` rule action signs and retries."""

    #: Standard Webhooks signing secret (`whsec_<base64>`). Unset: generated into `data_dir/webhook.secret`.
    secret: Annotated[str, AfterValidator(_check_whsec)] | None = None
    #: One HTTP attempt's limit.
    request_timeout: Duration = Field(10.0, gt=0)
    #: Retries (5xx, 429, timeouts, refused connections) stop this long after the first try.
    retry_for: Duration = Field(20.0, ge=0)


class ActionsConfig(_Section):
    """`[actions]`: how rule actions run (docs/RULES.md)."""

    #: Longest one action may take, retries included, before it is reported failed.
    timeout: Duration = Field(30.0, gt=0)
    #: Per action type, overriding `timeout` (e.g. `{ "antcrm.create_ticket" = "2m" }`).
    timeouts: dict[str, Duration] = {}
    #: Actions of one vendor running at once (the rest wait their turn).
    concurrency: int = Field(8, ge=1, le=256)
    #: Actions running or waiting, all vendors together; beyond this, new ones fail at once
    #: (`action.failed`, "overloaded") instead of piling up in memory behind a slow vendor.
    max_pending: int = Field(10_000, ge=1)
    #: After a restart, events committed but not yet evaluated are evaluated if younger than this (0: all).
    catchup_max_age: Duration = Field(3600.0, ge=0)
    #: Networks (CIDR) or host names `webhook.post` may call although they are internal (SSRF guard).
    allow_private: list[Annotated[str, AfterValidator(_check_allow_entry)]] = []
    webhook: WebhookActionConfig = WebhookActionConfig()


#: The default retry schedule, Svix's: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_RETRY_SCHEDULE = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
#: A subscription id: what the API and `[[webhooks.subscriptions]]` name it by.
SUBSCRIPTION_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"


def _check_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL are not allowed (the request is signed instead)")
    if parts.fragment:
        raise ValueError("a URL fragment is never sent; remove it")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ValueError("the host is not a valid host name") from None
    return value


def _check_types(value: list[str]) -> list[str]:
    try:
        return list(parse_patterns(value))
    except HubError as exc:
        raise ValueError(exc.message) from None


def _check_filter(value: dict[str, Any]) -> dict[str, Any]:
    try:
        flat = flatten_conditions(value)
        compile_conditions(flat)
    except ConditionError as exc:
        raise ValueError(str(exc)) from None
    return flat


def _check_max_age(value: dict[str, float]) -> dict[str, float]:
    if len(value) > MAX_AGE_PATTERNS:
        raise ValueError(f"at most {MAX_AGE_PATTERNS} patterns")
    for pattern, seconds in value.items():
        _check_types([pattern])
        if seconds <= 0:
            raise ValueError(f"{pattern}: must be a positive number of seconds")
    return value


#: Type patterns `max_age_s` may list.
MAX_AGE_PATTERNS = 64


class SubscriptionSpec(_Section):
    """What a subscription asks for: the body of `POST /v1/subscriptions`, and (with an `id` and a
    `secret`) a `[[webhooks.subscriptions]]` table."""

    url: Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_check_url)]
    #: Event-type patterns; none: every event.
    types: Annotated[list[str], AfterValidator(_check_types)] = []
    #: Conditions on the event, with the rules' operators (`{"data.direction": "inbound"}`).
    filter: Annotated[dict[str, Any], AfterValidator(_check_filter)] = {}
    description: str = Field("", max_length=500)
    rate_limit_per_s: float | None = Field(None, gt=0, le=10_000)
    ordering: Literal["per_call", "none"] = "per_call"
    #: Type pattern -> how old (by the event's `time`) an event may be and still be worth delivering.
    max_age_s: Annotated[dict[str, Duration], AfterValidator(_check_max_age)] = {}
    enabled: StrictBool = True


class SubscriptionConfig(SubscriptionSpec):
    """`[[webhooks.subscriptions]]`: a subscription managed as code (read-only through the API)."""

    id: str = Field(pattern=SUBSCRIPTION_ID)
    #: Its `whsec_…` signing secret (`${ENV}` it): as-code subscriptions bring their own.
    secret: Annotated[str, AfterValidator(_check_whsec)]


class WebhooksConfig(_Section):
    """`[webhooks]`: outbound webhook subscriptions (docs/WEBHOOKS_OUT.md)."""

    #: Seconds before each attempt, the first one included (jittered); then the delivery has failed.
    retry_schedule: Annotated[list[Duration], Field(min_length=1, max_length=32)] = DEFAULT_RETRY_SCHEDULE
    #: Networks (CIDR) or host names deliveries (and `webhook.post`) may reach although internal.
    allow_hosts: list[Annotated[str, AfterValidator(_check_allow_entry)]] = []
    #: One attempt's limit.
    request_timeout: Duration = Field(10.0, gt=0)
    #: A subscription failing without a success for this long is disabled.
    disable_after: Duration = Field(5 * 86400.0, gt=0)
    #: After a rotation, the old secret still signs (beside the new one) this long.
    secret_overlap: Duration = Field(86400.0, ge=0)
    #: Deliveries one subscription has in flight at once (different calls in parallel).
    concurrency: int = Field(16, ge=1, le=256)
    #: Undelivered events one subscription may hold in memory; past it they are read back from the store.
    max_queue: int = Field(10_000, ge=100)
    #: How long the delivery log keeps attempts.
    log_retention: Duration = Field(7 * 86400.0, gt=0)
    #: Subscriptions the hub keeps (each has a task, a queue and a connection pool share).
    max_subscriptions: int = Field(200, ge=1, le=10_000)
    subscriptions: list[SubscriptionConfig] = []

    @field_validator("retry_schedule")
    @classmethod
    def _sane_schedule(cls, value: list[float]) -> list[float]:
        if any(v > 7 * 86400 for v in value):
            raise ValueError("a retry may wait at most 7 days")
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> WebhooksConfig:
        ids = [s.id for s in self.subscriptions]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise _LocatedError(("subscriptions",), f"subscription ids must be unique: {', '.join(duplicated)}")
        return self


def _check_time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known time zone (an IANA name such as 'Asia/Ho_Chi_Minh')") from None
    return value


#: An IANA time zone name, checked when the config loads (`[stats]`, and vendors' sections through hub.plugin).
TimeZoneName = Annotated[str, AfterValidator(_check_time_zone)]


class StatsConfig(_Section):
    """The call figures (`GET /v1/stats/calls`, `callhub_calls_*` metrics, the console's supervisor view)."""

    #: An inbound call answered within this long after it started ringing counts towards the service level.
    service_level_threshold: Duration = Field(20.0, gt=0, le=3600)
    #: The service level the centre aims for (the `CallhubServiceLevelLow` alert's default target).
    service_level_target: float = Field(0.8, ge=0, le=1)
    #: Where "today" starts and ends.
    time_zone: TimeZoneName = "Asia/Ho_Chi_Minh"
    #: A call without any event for this long is taken as over (its end was lost) and leaves the
    #: in-progress figures.
    stale_after: Duration = Field(4 * 3600.0, ge=60)
    #: Calls kept in progress at most; past it the least recently active call is dropped first.
    max_calls: int = Field(50_000, ge=100, le=10_000_000)
    #: Agents and DIDs (company numbers, normal form) that get metric labels of their own; every
    #: other agent or DID is counted as 'other'. Empty: no per-agent or per-DID series.
    agents: Annotated[list[str], Field(max_length=1000)] = []
    dids: Annotated[list[str], Field(max_length=1000)] = []
    #: Event types counted by name in `callhub_events_committed_total` beside the documented ones.
    event_types: Annotated[list[str], Field(max_length=200)] = []


class Config(_Section):
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    backend: BackendConfig = BackendConfig()
    retention: RetentionConfig = RetentionConfig()
    streams: StreamsConfig = StreamsConfig()
    auth: AuthConfig = AuthConfig()
    sources: list[SourceConfig] = []
    actions: ActionsConfig = ActionsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    stats: StatsConfig = StatsConfig()
    #: `[[rules]]` tables, validated by `hub.rules` (which reports file, rule and key).
    rules: list[dict[str, Any]] = []
    #: A TOML file of more `[[rules]]`, relative to the working directory; reloadable.
    rules_file: str | None = None
    #: Vendor sections (`[antring]`, `[vbee]`, …) are validated by their handlers.
    handlers: dict[str, Any] = {}

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> Config:
        if not self.server.auth and not is_loopback_host(self.server.host):
            raise _LocatedError(("server", "auth"), _auth_off_message(self.server.host))
        return self

    @model_validator(mode="after")
    def _unique_source_names(self) -> Config:
        names = [s.name for s in self.sources]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise _LocatedError(("sources",), f"source names must be unique: {', '.join(duplicated)}")
        return self

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def log_level(self) -> LogLevel:
        """`[log] level`, else the older `server.log_level`."""
        return self.log.level if "level" in self.log.model_fields_set else self.server.log_level

    @property
    def access_log(self) -> bool:
        """`[log] access`, else the older `server.access_log`."""
        return self.log.access if "access" in self.log.model_fields_set else self.server.access_log


class _LocatedError(ValueError):
    """A cross-field problem that belongs to a specific key."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class ConfigError(Exception):
    """The configuration is invalid; `problems` holds `(key path, message)` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  {path or '(top)'}: {message}" for path, message in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECTIONS = set(Config.model_fields) - {"handlers"}


def _format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _substitute_env(
    value: Any, env: dict[str, str], path: tuple[Any, ...], problems: list[tuple[str, str]]
) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "${"
            if name not in env:
                problems.append((_format_path(path), f"environment variable {name} is not set"))
                return ""
            return env[name]

        return _ENV_REF.sub(replace, value)
    if isinstance(value, dict):
        return {k: _substitute_env(v, env, (*path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, env, (*path, i), problems) for i, v in enumerate(value)]
    return value


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(
    raw: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    source: str = "config",
    overrides: dict[str, Any] | None = None,
    handler_sections: Mapping[str, type[BaseModel]] | None = None,
) -> Config:
    """Validate a parsed TOML document; raise `ConfigError` listing every problem.

    `overrides` (from command-line flags) are merged over the file. With `handler_sections`
    (vendor section name -> its pydantic model) given, vendor sections are validated too and
    kept in `Config.handlers` as model instances, and a top-level table that is neither a
    core section nor a vendor's is a problem.
    """
    problems: list[tuple[str, str]] = []
    if overrides:
        raw = _merge(raw, overrides)
    if handler_sections is not None:
        for key in raw:
            if key not in _SECTIONS and key not in handler_sections:
                known = ", ".join(sorted(_SECTIONS | set(handler_sections)))
                problems.append((key, f"unknown section; known: {known}"))
    data = _substitute_env(raw, dict(os.environ) if env is None else env, (), problems)
    missing_env = {path for path, _ in problems}
    problems.extend(_cross_field_problems(data))
    core = {k: v for k, v in data.items() if k in _SECTIONS}
    vendor: dict[str, Any] = {k: v for k, v in data.items() if k not in _SECTIONS}
    for name, model in (handler_sections or {}).items():
        if name in vendor:
            try:
                vendor[name] = model.model_validate(vendor[name])
            except ValidationError as exc:
                problems.extend(_problems(exc, (name,), missing_env))
    core["handlers"] = vendor
    config: Config | None = None
    try:
        config = Config.model_validate(core)
    except ValidationError as exc:
        problems.extend(_problems(exc, (), missing_env))
    if problems or config is None:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    return config


def validate_section(name: str, value: Any, model: type[SectionT]) -> SectionT:
    """A vendor section as its model: already validated by `config_from_dict`, or validated now."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, (name,), set()), name) from None


#: What to write instead of a key people look for where it is not.
_HINTS = {
    "server.broker": ': the event store, Redis included, is chosen by [backend] url = "redis://host:port/db"'
                     " (docs/SCALING.md)",
}


def _problems(exc: ValidationError, prefix: tuple[str, ...], missing_env: set[str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        ctx_error = err.get("ctx", {}).get("error")
        if isinstance(ctx_error, _LocatedError):
            problems.append((_format_path(prefix + tuple(err["loc"]) + ctx_error.loc), str(ctx_error)))
            continue
        path = _format_path(prefix + tuple(err["loc"]))
        if path in missing_env:
            continue  # already reported as the unset variable it came from
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key" + _HINTS.get(path, "")
        problems.append((path, message))
    return problems


def _cross_field_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Checks that span keys, run on the raw data so they are reported beside every other problem
    (a pydantic after-validator runs only once everything else is valid)."""
    server = data.get("server")
    if not isinstance(server, dict):
        return []
    host = server.get("host", ServerConfig.model_fields["host"].default)
    if server.get("auth", True) is False and isinstance(host, str) and not is_loopback_host(host):
        return [("server.auth", _auth_off_message(host))]
    return []


def _auth_off_message(host: str) -> str:
    return f"auth = false is allowed only on a loopback host, not {host!r}"


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    handler_sections: Mapping[str, type[BaseModel]] | None = None,
) -> Config:
    """Load `path` (or the embedded defaults when `path` is None)."""
    kwargs: dict[str, Any] = {"env": env, "overrides": overrides, "handler_sections": handler_sections}
    if path is None:
        return config_from_dict({}, source="defaults", **kwargs)
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([("", "file not found")], source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"not valid TOML: {exc}")], source) from None
    return config_from_dict(raw, source=source, **kwargs)
