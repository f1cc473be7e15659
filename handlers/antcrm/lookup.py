"""Screen-pop: who is calling, from AntCRM, within a deadline or not at all.

`CustomerLookup.lookup(phone)` answers a compact customer (`client.compact_customer`) or None.
It never raises and never takes much longer than `timeout`: AntCRM being slow or down means
the agent's screen shows no CRM data, not that anything else waits.

- Found customers are cached for `ttl`, "no such customer" for `negative_ttl` (0: not cached).
  Failures (timeouts, errors) are not cached: the next ring asks again.
- The cache holds at most `max_entries` numbers, least recently used dropped first.
- Concurrent lookups of the same number share one request; a caller that gives up (cancelled)
  does not cancel it for the others. In-flight requests belong to the lookup: `aclose()`
  cancels them.
- Numbers are keyed in E.164, so 0912345678 and +84912345678 are one entry. A caller id that is
  not a phone number (anonymous, an extension) is None at once, without asking AntCRM.
- AntCRM matches a number as it was saved, so a number is asked in each stored form in turn
  (`AntCRMClient.find_contact`) before it is "unknown", all within `timeout`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handlers.antcrm.client import AntCRMClient, AntCRMError, compact_customer
from hub.plugin import InvalidPhoneNumber, parse_phone

__all__ = ["CustomerLookup", "DEFAULT_MAX_ENTRIES"]

logger = logging.getLogger("callhub.antcrm")

DEFAULT_MAX_ENTRIES = 10_000


@dataclass(slots=True)
class _Entry:
    customer: dict[str, Any] | None
    expires_at: float


class CustomerLookup:
    """Cached, deadline-bounded customer lookups by phone number (see the module docstring)."""

    def __init__(self, client: AntCRMClient, *, timeout: float, ttl: float, negative_ttl: float,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if timeout <= 0 or ttl <= 0 or negative_ttl < 0 or max_entries < 1:
            raise ValueError("timeout and ttl must be positive, negative_ttl not negative, max_entries at least 1")
        self._client = client
        self.timeout = timeout
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[dict[str, Any] | None]] = {}
        #: Counters for metrics and tests: requests sent, answered from cache, failed or too late.
        self.requests = 0
        self.cache_hits = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"CustomerLookup(cached={len(self._cache)}, in_flight={len(self._inflight)})"

    async def lookup(self, phone: str) -> dict[str, Any] | None:
        """The customer calling from `phone`, or None (unknown, not a number, or no answer within `timeout`)."""
        try:
            key = parse_phone(phone).e164
        except InvalidPhoneNumber:
            return None
        entry = self._cache.get(key)
        if entry is not None:
            if self._clock() < entry.expires_at:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return copy.deepcopy(entry.customer)
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(key), name=f"antcrm-lookup-{key}")
            self._inflight[key] = task
        # The fetch bounds itself by `timeout` and never raises; shielded, so one caller giving
        # up does not take the answer away from the others waiting on it.
        return copy.deepcopy(await asyncio.shield(task))

    async def aclose(self) -> None:
        """Cancel the lookups in flight (callers waiting on them are cancelled too)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

    async def _fetch(self, key: str) -> dict[str, Any] | None:
        self.requests += 1
        try:
            async with asyncio.timeout(self.timeout):
                contact = await self._client.find_contact(parse_phone(key), timeout=self.timeout)
        except (AntCRMError, TimeoutError) as exc:
            self.failures += 1
            logger.info("antcrm lookup gave up: %s", exc if isinstance(exc, AntCRMError) else "timed out")
            return None
        except Exception:  # the screen-pop must never raise: log it and show no CRM data
            self.failures += 1
            logger.exception("antcrm lookup failed")
            return None
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]
        customer = compact_customer(contact) if contact is not None else None
        ttl = self.ttl if customer is not None else self.negative_ttl
        if ttl > 0:
            self._cache[key] = _Entry(customer, self._clock() + ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return customer
