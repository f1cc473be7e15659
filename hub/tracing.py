"""Request ids: one id ties together every log line of a request and every vendor call made for it.

The id lives in a context variable, set where a request enters the hub (`hub.http.app`) and read
where a log line is written (`hub.ops.logs`) and where a vendor is called (`hub.outbound.vendor`,
which sends it on as `X-Request-Id`). Tasks started during a request inherit it (asyncio copies
the context); work that no request started (a socket consumer, a retry later) has none, and a
vendor call there gets a fresh id of its own.
"""

from __future__ import annotations

import itertools
import re
import uuid
from contextvars import ContextVar

__all__ = ["REQUEST_ID_HEADER", "MAX_REQUEST_ID", "request_id", "new_request_id", "accept_request_id"]

REQUEST_ID_HEADER = "X-Request-Id"
#: Longest client-sent id the hub adopts; a longer one, or one with other characters, is replaced.
MAX_REQUEST_ID = 64
#: What a client-sent id may hold: nothing that could break a log line, a header or a terminal.
_SAFE = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID}}}")

request_id: ContextVar[str | None] = ContextVar("callhub_request_id", default=None)


#: Request ids are this process's random prefix and a counter: unique across processes and restarts
#: without a system call per request (uuid4 reads the kernel's random source each time, a few
#: per cent of the ingest path's CPU).
_PREFIX = uuid.uuid4().hex[:16]
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_PREFIX}{next(_COUNTER):016x}"  # 32 hex digits, as a uuid4 hex


def accept_request_id(sent: str | None) -> str:
    """The client's id when it is short and safe, else a new one."""
    if sent is not None and _SAFE.fullmatch(sent):
        return sent
    return new_request_id()
