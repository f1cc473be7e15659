"""Who is asking: API keys from the config, and subscriber JWTs (HS256).

A credential arrives as `Authorization: Bearer <credential>`, or as `?token=` on the stream
endpoints (browsers cannot set headers on EventSource or WebSocket). API keys are compared
in constant time; a credential is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from starlette.requests import HTTPConnection

from hub.config import ApiKey, Config
from hub.exceptions import Forbidden, HubError, Unauthorized
from hub.matcher import parse_patterns
from hub.requests import bearer

__all__ = ["Principal", "Authenticator", "issue_token", "ensure_admin_key", "ensure_jwt_secret", "ensure_signing_secret"]

Role = Literal["admin", "publisher", "subscriber"]
ADMIN_KEY_FILE = "admin.key"
JWT_SECRET_FILE = "jwt.secret"
SIGNING_SECRET_FILE = "webhook.secret"
#: Longest accepted credential; anything longer is refused before any hashing or decoding.
MAX_CREDENTIAL_LENGTH = 8192
JWT_ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role
    agent: str | None = None
    #: Type patterns this credential may see (empty: all).
    types: tuple[str, ...] = ()
    #: Unix time after which the credential is no longer valid (JWTs).
    expires_at: float | None = None
    #: Which credential this is, for limits per credential (`key:<digest>`, `sub:<subject>`);
    #: never the credential itself.
    id: str = ""

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            raise Forbidden(f"this needs the {' or '.join(roles)} role; the credential has {self.role}")


ANONYMOUS_ADMIN = Principal(name="anonymous (auth off)", role="admin", id="anonymous")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class Authenticator:
    def __init__(self, *, enabled: bool, keys: list[ApiKey], jwt_secret: str, jwt_leeway: float = 0.0,
                 on_failure: Callable[[str], None] = lambda code: None) -> None:
        self.enabled = enabled
        self._keys = [(_digest(k.key), k) for k in keys]
        self._jwt_secret = jwt_secret
        self._leeway = jwt_leeway
        #: Told the code of every refusal (counted in `callhub_auth_failures_total{reason}`).
        self._on_failure = on_failure

    def request(self, conn: HTTPConnection, *, allow_query: bool = False) -> Principal:
        """Who a request is: `Authorization: Bearer …`, or (streams, links) `?token=` with `allow_query`."""
        try:
            return self.authenticate(bearer(conn, allow_query=allow_query))
        except HubError as exc:
            self._on_failure(exc.code)
            raise

    def authenticate(self, credential: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS_ADMIN
        if not credential:
            raise Unauthorized("credentials required: send 'Authorization: Bearer <key or token>'", code="missing_credentials")
        if len(credential) > MAX_CREDENTIAL_LENGTH:
            raise Unauthorized("credential too long", code="bad_credentials")
        if credential.count(".") == 2:
            return self._from_jwt(credential)
        presented = _digest(credential)
        found: ApiKey | None = None
        found_digest = b""
        for digest, key in self._keys:
            # No early exit: every key is compared, in constant time.
            if hmac.compare_digest(digest, presented):
                found, found_digest = key, digest
        if found is None:
            raise Unauthorized("unknown API key", code="bad_credentials")
        return Principal(name=found.name or f"key:{found.role}", role=found.role, agent=found.agent,
                         id="key:" + found_digest[:8].hex())

    def _from_jwt(self, token: str) -> Principal:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._jwt_secret,
                algorithms=[JWT_ALGORITHM],
                options={"require": ["exp", "sub"]},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired", code="token_expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks the '{exc.claim}' claim", code="bad_token") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token", code="bad_token") from None
        agent = claims.get("agent")
        if agent is not None and not isinstance(agent, str):
            raise Unauthorized("token 'agent' claim must be a string", code="bad_token")
        types_claim = claims.get("types")
        try:
            types = parse_patterns(types_claim, field="types claim") if types_claim is not None else ()
        except Exception:
            raise Unauthorized("token 'types' claim is not a list of type patterns", code="bad_token") from None
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise Unauthorized("token 'sub' claim must be a string", code="bad_token")
        return Principal(name=sub, role="subscriber", agent=agent, types=types, expires_at=float(claims["exp"]),
                         id="sub:" + sub)


def issue_token(
    secret: str, *, sub: str, ttl: float, agent: str | None = None, types: tuple[str, ...] = ()
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl)}
    if agent is not None:
        claims["agent"] = agent
    if types:
        claims["types"] = list(types)
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def _read_or_create(path: Path, make: str) -> tuple[str, bool]:
    """The secret stored at `path`, creating it (mode 0600) if missing; True if created now."""
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
            f.write(make + "\n")
    except FileExistsError:  # another process won the race
        return path.read_text().strip(), False
    return make, True


def ensure_admin_key(config: Config) -> tuple[ApiKey | None, bool, Path]:
    """With auth on and no admin key configured, the admin key kept in the data directory."""
    path = config.data_dir / ADMIN_KEY_FILE
    if not config.server.auth or any(k.role == "admin" for k in config.auth.keys):
        return None, False, path
    value, created = _read_or_create(path, "chk_" + secrets.token_urlsafe(32))
    return ApiKey(key=value, role="admin", name="admin (generated)"), created, path


def ensure_jwt_secret(config: Config) -> str:
    if config.auth.jwt_secret:
        return config.auth.jwt_secret
    value, _ = _read_or_create(config.data_dir / JWT_SECRET_FILE, secrets.token_urlsafe(48))
    return value


def ensure_signing_secret(config: Config) -> str:
    """The Standard Webhooks secret (`whsec_…`) the hub signs outgoing webhooks with."""
    if config.actions.webhook.secret:
        return config.actions.webhook.secret
    made = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    value, _ = _read_or_create(config.data_dir / SIGNING_SECRET_FILE, made)
    return value
