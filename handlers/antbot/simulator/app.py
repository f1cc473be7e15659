"""A faithful AntBot (Alice) on loopback: token auth and the resources the hub uses, checking
what the vendor's document says, and misbehaving on demand.

What it checks (the document): `POST /get-token/` with `username`/`password`; every
`/rest-api/` request carries `Authorization: Bearer <access token>` (401 otherwise, or when the
token has been expired with `expire_tokens`); campaign status changes are 1-4 (START, PAUSE,
ABORT, END) and campaign statuses 1-5; an alarm needs `alarm_phonenumber` and an existing `event`;
an event needs `title`, `start`, `end`, `creator`, `calendar`; a DNC contact has `phone_number`
and `dnc`; the CDR report filters by `callid`, `callerid`, `phone_number`, `from_date`,
`to_date`, `disposition`, `hangup_cause`, `campaign`, `alarm`, `otp`.

What it assumes where the document is blank (docs/ANTBOT.md lists the same):
- answers and errors the Django REST framework way: `{"refresh", "access"}` tokens (SimpleJWT),
  `{"detail": ...}` or `{field: [messages]}` errors, lists paged as `{count, next, previous,
  results}` with `?page=` and `?page_size=` (default `page_size` 10, at most 100);
- CDR rows are Newfies-Dialer `VoIPCall`s (`id`, `callid`, `callerid`, `phone_number`,
  `starting_date`, `duration`, `billsec`, `disposition`, `hangup_cause`, `campaign`) plus
  `alarm` and `otp` booleans; `starting_date` is written without an offset, in the account's zone
  (`zone`), and `from_date`/`to_date` are read in it (`YYYY-MM-DD HH:MM:SS` or ISO 8601);
- a contact is `{"phonebook", "contact", ...}`, a bulk add `{"phonebook_id", "phoneno_list":
  "n1,n2"}` (Newfies-Dialer's), answering `{"count": n}`; the campaign status body `{"status": n}`.
Leniencies: numbers are stored as sent (no format is enforced); DNC is not enforced by the
simulator itself (the hub must honour it: `dnc_violations` counts contacts added anyway).

Misbehaviour: `down` (every request 503), `delay`, `fail_next`/`fail_skip` (500 for chosen
requests, doing nothing), `lose_answer` (do the write, then answer 500), `next_host` (page links
on another host), `bad_rows` (unreadable CDR rows mixed in).
"""

from __future__ import annotations

import itertools
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.simulation import misbehave

__all__ = ["SimState", "build_app", "LOCAL_FORMAT"]

#: How the simulated AntBot writes dates: no offset, the account's zone.
LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
_READ_FORMATS = (LOCAL_FORMAT, "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


@dataclass
class SimState:
    """Everything the simulated AntBot knows, and the knobs that make it misbehave (tests mutate it
    freely; writes from the server hold `lock`)."""

    users: dict[str, str] = field(default_factory=lambda: {"sim-user": "sim-password"})
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Ho_Chi_Minh"))
    #: Access tokens that are valid now.
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    phonebooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: list[dict[str, Any]] = field(default_factory=list)
    campaigns: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (campaign id, status code) of every status change asked.
    status_changes: list[tuple[str, int]] = field(default_factory=list)
    dnc_lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    dnc_contacts: list[dict[str, Any]] = field(default_factory=list)
    calendars: set[str] = field(default_factory=lambda: {"1"})
    calendar_users: set[str] = field(default_factory=lambda: {"1"})
    events: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    cdr: list[dict[str, Any]] = field(default_factory=list)
    #: Contacts added although their number is on a DNC list (the hub should never cause one).
    dnc_violations: int = 0
    #: Every request: (method, path, query string).
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    # -- misbehaviour --
    down: bool = False
    delay: float = 0.0
    fail_next: int = 0
    fail_skip: int = 0
    lose_answer: int = 0
    next_host: str | None = None
    bad_rows: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def next_id(self) -> int:
        return next(self._ids)

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (the next request answers 401)."""
        self.tokens.clear()

    def local(self, when: datetime) -> str:
        return when.astimezone(self.zone).strftime(LOCAL_FORMAT)

    def add_campaign(self, name: str, status: int = 2, phonebook: str | None = None) -> str:
        cid = str(self.next_id())
        self.campaigns[cid] = {"id": int(cid), "name": name, "status": status,
                               "phonebook": [int(phonebook)] if phonebook else []}
        return cid

    def add_phonebook(self, name: str) -> str:
        pid = str(self.next_id())
        self.phonebooks[pid] = {"id": int(pid), "name": name, "description": ""}
        return pid

    def add_dnc(self, number: str, list_name: str = "default") -> None:
        dnc = next((k for k, v in self.dnc_lists.items() if v["name"] == list_name), None)
        if dnc is None:
            dnc = str(self.next_id())
            self.dnc_lists[dnc] = {"id": int(dnc), "name": list_name, "description": ""}
        self.dnc_contacts.append({"id": self.next_id(), "dnc": int(dnc), "phone_number": number})

    def add_call(self, phone_number: str, *, started: datetime, disposition: str = "ANSWER",
                 hangup_cause: str = "NORMAL_CLEARING", duration: int = 30, billsec: int | None = None,
                 campaign: str | None = None, alarm: bool = False, otp: bool = False,
                 callerid: str = "02873000000") -> dict[str, Any]:
        """A CDR row, as AntBot would write it when a call ends."""
        rid = self.next_id()
        row = {
            "id": rid, "callid": f"sim-{rid:08d}", "callerid": callerid, "phone_number": phone_number,
            "starting_date": self.local(started), "duration": duration,
            "billsec": billsec if billsec is not None else (duration if disposition == "ANSWER" else 0),
            "disposition": disposition, "hangup_cause": hangup_cause, "hangup_cause_q850": "16",
            "leg_type": 1, "sip_term_status": "200", "sip_term_cause": "", "endpoint_disposition": disposition,
            "campaign": int(campaign) if campaign else None, "alarm": alarm, "otp": otp,
        }
        with self.lock:
            self.cdr.append(row)
        return row

    def dial_due(self, now: datetime, *, answer: bool = True, ahead: float = 0.0) -> list[dict[str, Any]]:
        """The dialer's round at `now`: call every alarm due within `ahead` seconds and every new
        contact of a started campaign's phonebooks; each call becomes a CDR row (the demo runs
        this on a timer)."""
        made = []
        for alarm in [a for a in self.alarms if not a["called"]]:
            due = _read_date(alarm.get("date_start_notice"), self.zone) or now
            if due <= now + timedelta(seconds=ahead):
                alarm["called"] = True
                alarm["status"] = 5 if answer else 3
                made.append(self.add_call(alarm["alarm_phonenumber"], started=now, alarm=True,
                                          disposition="ANSWER" if answer else "NOANSWER",
                                          hangup_cause="NORMAL_CLEARING" if answer else "NO_ANSWER",
                                          duration=20 if answer else 0))
        for cid, campaign in self.campaigns.items():
            if campaign["status"] != 1:
                continue
            books = {str(p) for p in campaign["phonebook"]}
            for contact in [c for c in self.contacts if str(c["phonebook"]) in books and not c.get("called")]:
                contact["called"] = True
                made.append(self.add_call(contact["contact"], started=now, campaign=cid,
                                          disposition="ANSWER" if answer else "BUSY",
                                          hangup_cause="NORMAL_CLEARING" if answer else "USER_BUSY",
                                          duration=45 if answer else 0))
        return made


def _read_date(value: object, zone: ZoneInfo) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        for fmt in _READ_FORMATS:
            try:
                parsed = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


def _bool(value: str) -> bool | None:
    return {"true": True, "1": True, "false": False, "0": False}.get(value.strip().lower())


def build_app(state: SimState) -> Starlette:
    """The simulated AntBot over `state` (mount it anywhere: the hub's `base_url` is the mount point)."""

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    async def gate(request: Request, *, auth: bool = True) -> Response | None:
        state.requests.append((request.method, request.url.path, request.url.query))
        if state.down:
            return error(503, "Service unavailable")
        if await misbehave(state):
            return error(500, "Internal server error")
        if auth:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or token not in state.tokens:
                return error(401, "Given token not valid for any token type")
        return None

    async def body_of(request: Request) -> dict[str, Any] | None:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    def written(answer: Any, status: int = 201) -> Response:
        if state.lose_answer > 0:
            state.lose_answer -= 1
            return error(500, "Internal server error")
        return JSONResponse(answer, status_code=status)

    def page(request: Request, items: list[Any]) -> Response:
        try:
            number = max(1, int(request.query_params.get("page", "1")))
            size = min(MAX_PAGE_SIZE, max(1, int(request.query_params.get("page_size", DEFAULT_PAGE_SIZE))))
        except ValueError:
            return error(404, "Invalid page.")
        chunk = items[(number - 1) * size : number * size]
        if number > 1 and not chunk:
            return error(404, "Invalid page.")
        base = str(request.url.replace(query=""))
        if state.next_host:
            base = base.replace(f"{request.url.scheme}://{request.url.netloc}", state.next_host, 1)
        params = dict(request.query_params)

        def link(n: int) -> str:
            return base + "?" + urlencode({**params, "page": n})

        return JSONResponse({
            "count": len(items),
            "next": link(number + 1) if number * size < len(items) else None,
            "previous": link(number - 1) if number > 1 else None,
            "results": chunk,
        })

    async def get_token(request: Request) -> Response:
        if (refused := await gate(request, auth=False)) is not None:
            return refused
        body = await body_of(request)
        if body is None or not isinstance(body.get("username"), str) or not isinstance(body.get("password"), str):
            return JSONResponse({"username": ["This field is required."], "password": ["This field is required."]},
                                status_code=400)
        if state.users.get(body["username"]) != body["password"]:
            return error(401, "No active account found with the given credentials")
        state.token_requests += 1
        access = secrets.token_urlsafe(24)
        state.tokens.add(access)
        return JSONResponse({"refresh": secrets.token_urlsafe(24), "access": access})

    async def cdr(request: Request) -> Response:
        if (refused := await gate(request)) is not None:
            return refused
        q = request.query_params
        rows = list(state.cdr)
        since, until = _read_date(q.get("from_date"), state.zone), _read_date(q.get("to_date"), state.zone)
        if (q.get("from_date") and since is None) or (q.get("to_date") and until is None):
            return JSONResponse({"from_date": ["Enter a valid date/time."]}, status_code=400)

        def start(row: dict[str, Any]) -> datetime:
            found = _read_date(row["starting_date"], state.zone)
            assert found is not None
            return found

        if since is not None:
            rows = [r for r in rows if start(r) >= since]
        if until is not None:
            rows = [r for r in rows if start(r) <= until]
        for name in ("callid", "callerid", "phone_number", "disposition", "hangup_cause", "campaign"):
            if q.get(name):
                rows = [r for r in rows if str(r.get(name)) == q[name]]
        for name in ("alarm", "otp"):
            if q.get(name):
                flag = _bool(q[name])
                if flag is None:
                    return JSONResponse({name: ["Must be a valid boolean."]}, status_code=400)
                rows = [r for r in rows if r[name] is flag]
        rows.sort(key=lambda r: (start(r), r["id"]))
        bad: list[Any] = ["not a row", {"disposition": "ANSWER"}][: state.bad_rows]
        return page(request, bad + rows)

    async def campaigns(request: Request) -> Response:
        if (refused := await gate(request)) is not None:
            return refused
        q = request.query_params
        items = list(state.campaigns.values())
        if q.get("status"):
            items = [c for c in items if str(c["status"]) == q["status"]]
        if q.get("name"):
            items = [c for c in items if q["name"].lower() in c["name"].lower()]
        return page(request, items)

    async def campaign_status(request: Request) -> Response:
        if (refused := await gate(request)) is not None:
            return refused
        cid = request.path_params["id"]
        campaign = state.campaigns.get(cid)
        if campaign is None:
            return error(404, "Not found.")
        body = await body_of(request)
        status = body.get("status") if body else None
        if isinstance(status, str) and status.isdigit():
            status = int(status)
        if status not in (1, 2, 3, 4) or isinstance(status, bool):
            return JSONResponse({"status": ["Choose 1 (start), 2 (pause), 3 (abort) or 4 (end)."]}, status_code=400)
        with state.lock:
            state.status_changes.append((cid, status))
            # START -> Started, PAUSE -> Paused, ABORT -> Ended, END -> Completed.
            campaign["status"] = {1: 1, 2: 3, 3: 4, 4: 5}[status]
        return written({"id": campaign["id"], "status": campaign["status"]}, 200)

    def is_dnc(number: str) -> bool:
        return any(d["phone_number"] == number for d in state.dnc_contacts)

    async def contact(request: Request) -> Response:
        if (refused := await gate(request)) is not None:
            return refused
        if request.method == "GET":
            items = state.contacts
            if request.query_params.get("phonebook"):
                items = [c for c in items if str(c["phonebook"]) == request.query_params["phonebook"]]
            return page(request, items)
        body = await body_of(request)
        if body is None or not body.get("contact") or str(body.get("phonebook")) not in state.phonebooks:
            return JSONResponse({"phonebook": ["A valid phonebook is required."],
                                 "contact": ["This field is required."]}, status_code=400)
        with state.lock:
            row = {**body, "id": state.next_id(), "phonebook": int(str(body["phonebook"]))}
            state.contacts.append(row)
            state.dnc_violations += is_dnc(str(body["contact"]))
        return written(row)

    async def bulk_contact(request: Request) -> Response:
        if (refused := await gate(request)) is not None:
            return refused
        body = await body_of(request)
        numbers = body.get("phoneno_list") if body else None
        book = str(body.get("phonebook_id")) if body else ""
        if not isinstance(numbers, str) or not numbers.strip() or book not in state.phonebooks:
            return JSONResponse({"detail": "phonebook_id and phoneno_list are required"}, status_code=400)
        added = [n.strip() for n in numbers.split(",") if n.strip()]
        with state.lock:
            for number in added:
                state.contacts.append({"id": state.next_id(), "phonebook": int(book), "contact": number})
                state.dnc_violations += is_dnc(number)
        return written({"count": len(added)})

    async def dnc_contact(request: Request) -> Response:
        if (refused := await gate(request)) is not None:
            return refused
        if request.method == "GET":
            items = state.dnc_contacts
            if request.query_params.get("dnc"):
                items = [d for d in items if str(d["dnc"]) == request.query_params["dnc"]]
            return page(request, items)
        body = await body_of(request)
        if body is None or not body.get("phone_number") or str(body.get("dnc")) not in state.dnc_lists:
            return JSONResponse({"phone_number": ["This field is required."], "dnc": ["A valid DNC list."]},
                                status_code=400)
        row = {"id": state.next_id(), "dnc": int(str(body["dnc"])), "phone_number": str(body["phone_number"])}
        with state.lock:
            state.dnc_contacts.append(row)
        return written(row)

    async def event(request: Request) -> Response:
        if (refused := await gate(request)) is not None:
            return refused
        body = await body_of(request) or {}
        missing = [k for k in ("title", "start", "end", "creator", "calendar") if body.get(k) in (None, "")]
        if missing:
            return JSONResponse({k: ["This field is required."] for k in missing}, status_code=400)
        if str(body["calendar"]) not in state.calendars or str(body["creator"]) not in state.calendar_users:
            return JSONResponse({"calendar": ["Invalid pk - object does not exist."]}, status_code=400)
        if _read_date(body["start"], state.zone) is None or _read_date(body["end"], state.zone) is None:
            return JSONResponse({"start": ["Datetime has wrong format."]}, status_code=400)
        row = {**body, "id": state.next_id()}
        with state.lock:
            state.events.append(row)
        return written(row)

    async def alarm(request: Request) -> Response:
        if (refused := await gate(request)) is not None:
            return refused
        body = await body_of(request) or {}
        if not body.get("alarm_phonenumber") or not any(e["id"] == body.get("event") for e in state.events):
            return JSONResponse({"alarm_phonenumber": ["This field is required."],
                                 "event": ["Invalid pk - object does not exist."]}, status_code=400)
        notice = body.get("date_start_notice")
        if notice is not None and _read_date(notice, state.zone) is None:
            return JSONResponse({"date_start_notice": ["Datetime has wrong format."]}, status_code=400)
        now = datetime.now(state.zone)
        row = {**body, "id": state.next_id(), "status": 1, "called": False,
               "date_start_notice": notice or (now + timedelta(seconds=0)).isoformat(timespec="seconds")}
        with state.lock:
            state.alarms.append(row)
        return written({k: v for k, v in row.items() if k != "called"})

    return Starlette(routes=[
        Route("/get-token/", get_token, methods=["POST"]),
        Route("/rest-api/cdr/", cdr, methods=["GET"]),
        Route("/rest-api/campaigns/", campaigns, methods=["GET"]),
        Route("/rest-api/campaigns/{id}/status/", campaign_status, methods=["POST"]),
        Route("/rest-api/contact/", contact, methods=["GET", "POST"]),
        Route("/rest-api/bulkcontact/", bulk_contact, methods=["POST"]),
        Route("/rest-api/dnc-contact/", dnc_contact, methods=["GET", "POST"]),
        Route("/rest-api/event/", event, methods=["POST"]),
        Route("/rest-api/alarm/", alarm, methods=["POST"]),
    ])
