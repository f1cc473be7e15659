"""A faithful Vbee AICall on loopback: the campaign API, and a runner that calls the contacts and
reports the results to the hub's webhook the way a real sender does, awkward cases included.

The API (`POST /api/v1/public-api/campaign`) checks what the vendor documents, in this order:
a Bearer token that is a JWT (401), whose `apiKey` names a known app (1201), signed HS256 with
that app's secret (401); then the contacts: invalid numbers are dropped, and if none is left
the answer is 1403. Added contacts answer `{"result": [{"contact_id", "so_dien_thoai", <tags>}],
"status": 1}`; errors `{"status": 0, "code", "message"}`.

What the vendor leaves undocumented, and what this simulator does (each an assumption):
- HTTP status of errors: 401 for 401, 500 for 500, 400 for the others (`SimState.errors_as_200`
  answers every error with 200 instead, as some vendors do).
- The app knows its campaigns (`SimState.campaigns_known`, none by default): a body without a
  `campaign_id` or a `contacts` list, or naming a campaign the app does not have, is 1402
  (import failed), the documented code nearest to it. `campaigns_known = None` accepts any id,
  which the vendor would not: only for load tests that make up campaign ids.
- `iat` is recorded but not required (three of the four vendor samples omit it).
- Valid numbers are Vietnamese mobiles and landlines written exactly in one form,
  `SimState.phone_format`: `e164` (`+84987654321`, default, the form of the vendor's example),
  `84` (`84987654321`) or `national` (`0987654321`); no separators, no other form. The answer
  holds them in E.164 as `so_dien_thoai`, as in the vendor's example.
- The webhook body (Vbee does not publish it) is the one docs/VBEE.md assumes; see `RunnerConfig`.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import jwt
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.simulation import misbehave

__all__ = ["SimState", "build_app", "API_PREFIX", "RunnerConfig", "CampaignRunner", "SentWebhook", "RunReport", "vbee_phone"]

API_PREFIX = "/api/v1/public-api"
PhoneFormat = Literal["e164", "84", "national"]
#: A Vietnamese number after the country code or trunk 0: a mobile (9 digits) or a landline (10).
_SUBSCRIBER = r"([35789]\d{8}|2\d{9})"
_FORMS: dict[str, re.Pattern[str]] = {
    "e164": re.compile(r"\+84" + _SUBSCRIBER),
    "84": re.compile(r"84" + _SUBSCRIBER),
    "national": re.compile(r"0" + _SUBSCRIBER),
}
_MESSAGES = {
    401: "Unauthorized",
    500: "Internal server error",
    1201: "Application is not found",
    1402: "Import contacts failed",
    1403: "All contacts is invalid",
}


def vbee_phone(value: object, form: PhoneFormat = "e164") -> str | None:
    """The number in E.164 if Vbee would call it (a Vietnamese number written exactly in `form`), else None."""
    if not isinstance(value, str):
        return None
    match = _FORMS[form].fullmatch(value)
    return "+84" + match.group(1) if match else None


@dataclass
class SimState:
    """Everything the simulated Vbee knows, and the knobs that make it misbehave.

    Mutate it freely from tests (the server reads it per request); `contacts` is guarded by `lock`.
    """

    #: API_KEY -> API_SECRET of every AICall app. The default secret is 32+ bytes (PyJWT warns below).
    apps: dict[str, str] = field(default_factory=lambda: {"sim-api-key": "sim-api-secret-0123456789abcdef-vbee"})
    #: The campaigns this app has (others: 1402). None accepts any id (not the vendor's behaviour).
    campaigns_known: set[str] | None = field(default_factory=set)
    #: The one form of number accepted (`e164`, `84`, `national`); others are dropped as invalid.
    phone_format: PhoneFormat = "e164"
    #: Every contact added: {"campaign_id", "contact_id", "phone_number" (E.164), "tags", "ran"}.
    contacts: list[dict[str, Any]] = field(default_factory=list)
    #: Every API request: {"path", "claims" (unverified JWT claims or None), "body"}.
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Name of the number in the answer (`so_dien_thoai` as in the vendor's example, or `phone_number`).
    phone_field: str = "so_dien_thoai"
    # -- misbehaviour --
    #: Answer the next N API requests 500 (after reading them, without adding anything)...
    fail_next: int = 0
    #: ...once this many more requests have been served normally.
    fail_skip: int = 0
    #: Add the contacts of the next N requests, then answer 500 anyway (the answer is lost).
    fail_after_adding: int = 0
    #: Seconds to wait before answering each API request.
    delay: float = 0.0
    #: Answer errors with HTTP 200 (the body still says `"status": 0`).
    errors_as_200: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def api_key(self) -> str:
        return next(iter(self.apps))

    @property
    def api_secret(self) -> str:
        return self.apps[self.api_key]

    def pending(self, campaign_id: str | None = None) -> list[dict[str, Any]]:
        """Contacts not yet called (of one campaign, or all), marked as called."""
        with self.lock:
            chosen = [c for c in self.contacts if not c["ran"] and campaign_id in (None, c["campaign_id"])]
            for c in chosen:
                c["ran"] = True
        return chosen

    def error(self, code: int) -> JSONResponse:
        status = 200 if self.errors_as_200 else code if code in (401, 500) else 400
        return JSONResponse({"status": 0, "code": code, "message": _MESSAGES[code]}, status_code=status)


def build_app(state: SimState) -> Starlette:
    """The simulated AICall public API over `state` (mount it anywhere; the base URL ends in `API_PREFIX`)."""

    async def campaign(request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        token = _bearer(request)
        claims = _unverified_claims(token)
        state.requests.append({"path": request.url.path, "claims": claims, "body": body})
        if await misbehave(state):
            return state.error(500)
        if token is None or claims is None:
            return state.error(401)
        api_key = claims.get("apiKey")
        secret = state.apps.get(api_key) if isinstance(api_key, str) else None
        if secret is None:
            return state.error(1201)
        try:
            jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["apiKey"]})
        except jwt.InvalidTokenError:
            return state.error(401)
        if not isinstance(body, dict) or not isinstance(body.get("campaign_id"), str) \
                or not isinstance(body.get("contacts"), list):
            return state.error(1402)
        campaign_id = body["campaign_id"]
        if state.campaigns_known is not None and campaign_id not in state.campaigns_known:
            return state.error(1402)
        result = []
        added = []
        for contact in body["contacts"]:
            phone = vbee_phone(contact.get("phone_number"), state.phone_format) if isinstance(contact, dict) else None
            if phone is None:
                continue
            assert isinstance(contact, dict)
            tags = {k: v for k, v in contact.items() if k != "phone_number"}
            contact_id = str(uuid.uuid4())
            added.append({"campaign_id": campaign_id, "contact_id": contact_id, "phone_number": phone,
                          "tags": tags, "ran": False})
            result.append({"contact_id": contact_id, state.phone_field: phone, **tags})
        if not result:
            return state.error(1403)
        with state.lock:
            state.contacts.extend(added)
        if state.fail_after_adding > 0:
            state.fail_after_adding -= 1
            return state.error(500)
        return JSONResponse({"result": result, "status": 1})

    return Starlette(routes=[Route(API_PREFIX + "/campaign", campaign, methods=["POST"])])


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _unverified_claims(token: str | None) -> dict[str, Any] | None:
    if token is None:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    return claims if isinstance(claims, dict) else None


# -- the campaign runner ---------------------------------------------------------------------------


@dataclass
class RunnerConfig:
    """How the simulated campaign calls its contacts and reports to the hub."""

    #: The hub's webhook, token included: `{hub}/v1/webhooks/vbee?token=...`.
    webhook_url: str
    #: Final call statuses and their weights.
    outcomes: dict[str, float] = field(
        default_factory=lambda: {"answered": 6.0, "busy": 1.5, "no_answer": 2.0, "failed": 0.5}
    )
    #: The progress report sent before the final one (None: no progress report).
    progress_status: str | None = "calling"
    #: Call a contact again after an unanswered attempt, up to this many more times (a new call id each).
    redial: int = 0
    #: Body shape: the status field's name, where the tags go, and whether a call id is sent.
    status_field: str = "call_status"
    tags_at: Literal["top", "tags", "contact"] = "top"
    with_call_id: bool = True
    # -- awkward senders --
    #: Fraction of reports sent twice, back to back, byte for byte.
    duplicate_rate: float = 0.0
    #: Fraction of calls whose final report is sent before the progress report.
    out_of_order_rate: float = 0.0
    #: Fraction of reports whose first try gives up after `short_timeout` (the hub may have stored it).
    timeout_rate: float = 0.0
    short_timeout: float = 0.002
    #: Reports in flight at once (calls to different contacts run in parallel): 64+ is a burst.
    concurrency: int = 4
    #: Tries per report: a 5xx, a timeout or no connection is retried with doubling back-off.
    max_attempts: int = 5
    backoff: float = 0.05
    max_backoff: float = 1.0
    request_timeout: float = 10.0
    seed: int | None = None


@dataclass
class SentWebhook:
    """One report and what became of it."""

    body: dict[str, Any]
    kind: Literal["progress", "final"]
    short_first: bool = False
    attempts: int = 0
    #: The last HTTP status (None if no answer ever came) and the hub's JSON answer on 2xx.
    status: int | None = None
    answer: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class RunReport:
    #: Every call attempt: {"campaign_id", "contact_id", "call_id", "attempt", "status"}.
    calls: list[dict[str, Any]] = field(default_factory=list)
    webhooks: list[SentWebhook] = field(default_factory=list)

    @property
    def undelivered(self) -> list[SentWebhook]:
        return [w for w in self.webhooks if not w.delivered]

    @property
    def retried(self) -> list[SentWebhook]:
        return [w for w in self.webhooks if w.attempts > 1]


class CampaignRunner:
    """Calls every contact not yet called and POSTs the results to the hub.

    `await runner.run()` from async code, or `runner.run_sync()` from a test thread (its own
    event loop). Each contact's reports go in order (unless out of order on purpose); contacts
    run in parallel up to `concurrency`.
    """

    def __init__(self, state: SimState, config: RunnerConfig) -> None:
        self.state = state
        self.config = config
        self.rng = random.Random(config.seed)

    def run_sync(self, campaign_id: str | None = None) -> RunReport:
        return asyncio.run(self.run(campaign_id))

    async def run(self, campaign_id: str | None = None) -> RunReport:
        report = RunReport()
        scripts = [self._script(contact, report) for contact in self.state.pending(campaign_id)]
        gate = asyncio.Semaphore(self.config.concurrency)
        # aiohttp, not httpx: httpx's connection pool does work quadratic in the requests in flight
        # and tops out near 100 requests/s at 64 concurrent here; a burst must be a burst.
        connector = aiohttp.TCPConnector(limit=self.config.concurrency)
        async with aiohttp.ClientSession(connector=connector) as client:

            async def play(script: list[SentWebhook]) -> None:
                for webhook in script:
                    async with gate:
                        await self._deliver(client, webhook)

            await asyncio.gather(*(play(s) for s in scripts))
        return report

    def _final_status(self) -> str:
        statuses = list(self.config.outcomes)
        return self.rng.choices(statuses, weights=[self.config.outcomes[s] for s in statuses])[0]

    def _script(self, contact: dict[str, Any], report: RunReport) -> list[SentWebhook]:
        c = self.config
        script: list[SentWebhook] = []
        for attempt in range(1, c.redial + 2):
            status = self._final_status()
            call_id = str(uuid.uuid4())
            call_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            report.calls.append({"campaign_id": contact["campaign_id"], "contact_id": contact["contact_id"],
                                 "call_id": call_id, "attempt": attempt, "status": status})
            answered = status == "answered"
            final = self._body(contact, call_id, attempt, call_at, status)
            final["duration"] = self.rng.randint(5, 180) if answered else 0
            final["recording_url"] = f"https://aicall.vbee.ai/recordings/{call_id}.mp3" if answered else None
            final["ended_at"] = call_at
            pair = [SentWebhook(final, "final")]
            if c.progress_status is not None:
                progress = SentWebhook(self._body(contact, call_id, attempt, call_at, c.progress_status), "progress")
                pair = [*pair, progress] if self.rng.random() < c.out_of_order_rate else [progress, *pair]
            for webhook in pair:
                webhook.short_first = self.rng.random() < c.timeout_rate
                script.append(webhook)
                if self.rng.random() < c.duplicate_rate:
                    script.append(SentWebhook(webhook.body, webhook.kind))
            if answered:
                break
        report.webhooks.extend(script)
        return script

    def _body(self, contact: dict[str, Any], call_id: str, attempt: int, call_at: str, status: str) -> dict[str, Any]:
        c = self.config
        body: dict[str, Any] = {
            "campaign_id": contact["campaign_id"],
            "contact_id": contact["contact_id"],
            "phone_number": contact["phone_number"],
            c.status_field: status,
            "attempt": attempt,
            "call_at": call_at,
        }
        if c.with_call_id:
            body["call_id"] = call_id
        tags = dict(contact["tags"])
        if c.tags_at == "top":
            body.update({k: v for k, v in tags.items() if k not in body})
        elif c.tags_at == "tags":
            body["tags"] = tags
        else:
            body["contact"] = {"contact_id": contact["contact_id"], "phone_number": contact["phone_number"], **tags}
        return body

    async def _deliver(self, client: aiohttp.ClientSession, webhook: SentWebhook) -> None:
        c = self.config
        content = orjson.dumps(webhook.body)
        for attempt in range(1, c.max_attempts + 1):
            webhook.attempts = attempt
            timeout = c.short_timeout if attempt == 1 and webhook.short_first else c.request_timeout
            try:
                async with client.post(c.webhook_url, data=content, timeout=aiohttp.ClientTimeout(total=timeout),
                                       headers={"Content-Type": "application/json"}) as response:
                    answer = await response.read()
                    webhook.status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                webhook.errors.append(type(exc).__name__)
            else:
                if 200 <= response.status < 300:
                    webhook.answer = orjson.loads(answer)
                    return
                webhook.errors.append(str(response.status))
                if response.status < 500 and response.status not in (408, 429):
                    return  # the hub refused the report itself: sending it again changes nothing
            if attempt < c.max_attempts:
                await asyncio.sleep(min(c.max_backoff, c.backoff * 2 ** (attempt - 1)))
