"""What happens to each committed batch after the fan-out: the handlers' listeners, then the rules.

    store commit ─▶ fan-out (subscribers first) ─call_soon─▶ Reactions.evaluate
                                                              ├─▶ listeners (screen-pop), live events only
                                                              └─▶ Rules.evaluate ─▶ ActionRunner.submit
                                                                   (journal first, then run)

Listeners act for the hub (a screen-pop publishes as AntCRM), so they only see events from the
hub's own sources (its webhook receivers and vendors), never a client's. After a restart,
events committed but never evaluated (after the journal's cursor) are evaluated before the hub
serves: rules only, with schedules and cooldowns at the event's own time, and none older than
`[actions] catchup_max_age`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

import orjson

from hub.config import ActionsConfig
from hub.events import Event, event_time
from hub.matcher import TypeFilter
from hub.ops.metrics import Metrics
from hub.rules.actions import ActionRunner
from hub.rules.engine import Firing, Rules
from hub.store.base import Backend

__all__ = ["Reactions", "EventListener", "CATCH_UP_PAGE"]

logger = logging.getLogger("callhub.rules")

#: Called with a committed event (its CloudEvent dict); must not block.
EventListener = Callable[[dict[str, Any]], None]
#: Events read per page when rules catch up after a restart.
CATCH_UP_PAGE = 500
#: How often the process evaluating the rules looks for actions a gone process left unfinished (s).
RECOVER_EVERY = 5.0


class Reactions:
    def __init__(self, rules: Rules, runner: ActionRunner, *, store: Backend,
                 listeners: Sequence[tuple[tuple[str, ...], EventListener]], trusted_sources: Collection[str],
                 config: ActionsConfig, metrics: Metrics) -> None:
        self.rules = rules
        self.runner = runner
        self._store = store
        self._listeners = [(TypeFilter(patterns), listener) for patterns, listener in listeners]
        self._trusted = frozenset(trusted_sources)
        self._config = config
        self._metrics = metrics
        runner.on_outcome = rules.outcome
        #: off (another process evaluates), starting (catching up: live batches held), on.
        self._state = "off"
        self._held: list[list[Event]] = []

    async def open(self) -> None:
        """Every process: the journal (routes run actions too)."""
        await self.runner.open()

    async def run(self, head: Callable[[], int], is_dead: Callable[[str], Awaitable[bool]]) -> None:
        """While this process evaluates the rules (it holds their lease: always, with one process):
        recover what a gone process left unfinished, restore cooldowns, evaluate what was committed
        since the journal's cursor, then every commit as it comes; forever, until cancelled."""
        self._state, self._held = "starting", []
        try:
            await self.runner.recover(is_dead)
            # "One call-back per caller per 10 minutes" holds across restarts and takeovers.
            self.rules.restore_cooldowns(await self.runner.journal.cooldowns(time.time()))
            cursor = await self.runner.journal.cursor()
            through = head()
            if cursor is None:  # a new journal: rules start with the events that arrive from now on
                self.runner.note_evaluated(through)
            else:
                await self._catch_up(cursor, through)
            held = [e for batch in self._held for e in batch if e.seq > through]
            self._state, self._held = "on", []
            if held:
                self.evaluate(held)
            while True:  # a process that dies while this one holds the rules leaves actions unfinished
                await asyncio.sleep(RECOVER_EVERY)
                await self.runner.recover(is_dead)
        finally:
            self._state, self._held = "off", []

    async def close(self) -> None:
        await self.runner.close()

    def on_commit(self, events: list[Event]) -> None:
        """Called right after the fan-out took a batch: evaluate it next, never inside the fan-out
        (held while catching up; dropped while another process evaluates the rules)."""
        if self._state == "on":
            asyncio.get_running_loop().call_soon(self.evaluate, events)
        elif self._state == "starting":
            self._held.append(events)

    def evaluate(self, events: list[Event], *, catching_up: bool = False) -> int:
        """Run listeners and rules on committed events; hand the firings to the action runner.

        Catching up, listeners are skipped (they are for live screens), schedules and cooldowns use
        the event's own time, and events older than `catchup_max_age` are skipped: the answer is
        how many were.
        """
        now = time.time()
        max_age = self._config.catchup_max_age if catching_up else 0.0
        too_old = 0
        firings: list[tuple[Firing, dict[str, Any], int]] = []
        for event in events:
            listeners = [] if catching_up else [listener for types, listener in self._listeners
                                                if types.matches(event.type)]
            if not listeners and not self.rules.candidates(event.type):
                continue
            try:
                body = orjson.loads(event.body)
                at = event_time(body, default=now) if catching_up else now
                if max_age and now - at > max_age:
                    too_old += 1
                    continue
                if listeners and body.get("source") in self._trusted:
                    for listener in listeners:
                        listener(body)
                for firing in self.rules.evaluate(body, now=at):
                    firings.append((firing, body, event.seq))
            except Exception:
                logger.exception("rule evaluation failed for seq %d", event.seq)
        if events:
            self.runner.submit(firings, cursor=events[-1].seq)
        return too_old

    async def _catch_up(self, cursor: int, head: int) -> None:
        """Evaluate the events committed after `cursor` (before a crash or a stop) and not yet evaluated."""
        evaluated = skipped = 0
        after = cursor
        while after < head:
            page = await self._store.read(after, limit=CATCH_UP_PAGE, agent=None, types=TypeFilter(()))
            batch = [e for e in page.events if e.seq <= head]
            if not batch:
                break
            too_old = self.evaluate(batch, catching_up=True)  # moves the cursor past the batch
            evaluated += len(batch) - too_old
            skipped += too_old
            after = batch[-1].seq
        self._metrics.rules_caught_up.labels("evaluated").inc(evaluated)
        self._metrics.rules_caught_up.labels("too_old").inc(skipped)
        if evaluated or skipped:
            logger.info("rules caught up on %d event(s) committed before the restart (%d older than %gs skipped)",
                        evaluated, skipped, self._config.catchup_max_age)
