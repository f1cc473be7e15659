"""Rules over time: what they remember across restarts (the cursor, running cooldowns), and the limits
that keep them from running away (action chains, pending actions).

The receiver is a `webhook.post` endpoint on loopback, so every side effect is a request we can count.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.rules.engine import MAX_ACTION_CHAIN
from tests.helpers import ADMIN, TICK, WAIT, AppServer, ServerThread, wait_until
from tests.test_webhook_post import Receiver, hub_config, missed, outcomes, rule

JOURNAL = "actions.db"


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, AppServer]]:
    state = Receiver()
    with AppServer(state.app()) as server:
        yield state, server


def answered(event_id: str, *, at: str | None = None) -> dict[str, Any]:
    event = {"type": "call.ended", "id": event_id, "source": "pbx", "data": {"outcome": "answered", "call_id": event_id}}
    if at is not None:
        event["time"] = at
    return event


def on_answered(url: str) -> dict[str, Any]:
    return {"name": "answered", "on": ["call.ended"], "when": {"data.outcome": "answered"},
            "actions": [{"type": "webhook.post", "url": url, "body": "answered {data.call_id}"}]}


def rewind_cursor(data_dir: Path, to: int = 0) -> None:
    """What a crash between commit and evaluation leaves: a cursor behind the log."""
    with sqlite3.connect(data_dir / JOURNAL) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'rules_cursor'", (to,))


def bodies(state: Receiver) -> list[bytes]:
    return [r["body"] for r in state.received]


def settle() -> None:
    time.sleep(10 * TICK)  # long enough for an action that was (wrongly) started to reach the receiver


def test_events_not_evaluated_before_a_crash_are_evaluated_on_restart_and_nothing_runs_twice(
    data_dir: Path, receiver: tuple[Receiver, AppServer]
) -> None:
    state, server = receiver
    url = f"{server.url}/hook"
    with ServerThread(hub_config(data_dir, [rule(url, body="missed {data.call_id}")])) as hub:
        hub.publish(missed("c-1"), answered("c-2"))
        wait_until(lambda: len(state.received) == 1, what="the first webhook")
    rewind_cursor(data_dir)
    # After the "crash", c-1 and c-2 are after the cursor. c-1's action is in the journal: not again.
    # c-2 meets a rule it never met (the evaluation the crash lost): it fires now, once.
    with ServerThread(hub_config(data_dir, [rule(url, body="missed {data.call_id}"), on_answered(url)])) as hub:
        wait_until(lambda: len(state.received) == 2, what="the caught-up webhook")
        settle()
    assert bodies(state) == [b"missed c-1", b"answered c-2"]


def test_catching_up_skips_events_older_than_catchup_max_age(data_dir: Path, receiver: tuple[Receiver, AppServer]) -> None:
    state, server = receiver
    url = f"{server.url}/hook"
    two_hours_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7200))
    with ServerThread(hub_config(data_dir, [])) as hub:
        hub.publish(answered("old", at=two_hours_ago), answered("recent"))
        settle()  # the lazy cursor write
    rewind_cursor(data_dir)
    with ServerThread(hub_config(data_dir, [on_answered(url)])):
        wait_until(lambda: len(state.received) == 1, what="the recent event's webhook")
        settle()
    assert bodies(state) == [b"answered recent"]


def test_a_new_journal_does_not_act_on_history(data_dir: Path, receiver: tuple[Receiver, AppServer]) -> None:
    state, server = receiver
    with ServerThread(hub_config(data_dir, [])) as hub:
        hub.publish(answered("before-rules"))
    (data_dir / JOURNAL).unlink()
    with ServerThread(hub_config(data_dir, [on_answered(f"{server.url}/hook")])) as hub:
        settle()
        hub.publish(answered("after-rules"))
        wait_until(lambda: len(state.received) == 1, what="the new event's webhook")
        settle()
    assert bodies(state) == [b"answered after-rules"]


def test_a_cooldown_holds_across_a_restart_and_a_reload(data_dir: Path, receiver: tuple[Receiver, AppServer]) -> None:
    """At most one webhook per caller per 10 minutes, even when the hub restarts or reloads its rules."""
    state, server = receiver
    limited = {**rule(f"{server.url}/hook", body="{data.call_id}"),
               "cooldown": {"key": "{data.from.number}", "for": "10m"}}
    config = hub_config(data_dir, [limited])
    with ServerThread(config) as hub:
        hub.publish(missed("c-1", "0903000001"))
        wait_until(lambda: len(state.received) == 1, what="the first webhook")
    with ServerThread(config) as hub:
        hub.publish(missed("c-2", "0903000001"))  # same caller, within 10 minutes: nothing
        r = httpx.post(f"{hub.url}/v1/rules/reload", headers=ADMIN, timeout=WAIT)
        assert r.status_code == 200
        hub.publish(missed("c-3", "0903000001"), missed("c-4", "0903000002"))  # another caller: sent
        wait_until(lambda: len(state.received) == 2, what="the other caller's webhook")
        settle()
    assert bodies(state) == [b"c-1", b"c-4"]


def test_rules_reacting_to_action_failures_cannot_loop_forever(data_dir: Path) -> None:
    """A rule on `action.failed` whose own action fails would trigger itself without end: the chain
    stops at MAX_ACTION_CHAIN."""
    failing = "http://127.0.0.1:9/never"  # refused by the SSRF guard (nothing allowed): fails at once
    rules = [rule(failing), {"name": "on-failure", "on": ["action.failed"],
                             "actions": [{"type": "webhook.post", "url": failing}]}]
    with ServerThread(hub_config(data_dir, rules, allow=[])) as hub:
        hub.publish(missed("c-1"))
        wait_until(lambda: len(outcomes(hub)) == MAX_ACTION_CHAIN, what="the chain of failures")
        settle()
        chain = [(e["data"]["rule"], e["data"]["chain"]) for e in outcomes(hub)]
    assert chain == [("notify", 1)] + [("on-failure", depth) for depth in range(2, MAX_ACTION_CHAIN + 1)]


def test_beyond_max_pending_new_actions_fail_at_once_instead_of_piling_up(
    data_dir: Path, receiver: tuple[Receiver, AppServer]
) -> None:
    state, server = receiver
    state.delay = 20 * TICK  # a slow receiver: the first actions are still running when the rest arrive
    config = hub_config(data_dir, [rule(f"{server.url}/hook")])
    config = config.model_copy(update={"actions": config.actions.model_copy(update={"max_pending": 2})})
    with ServerThread(config) as hub:
        hub.publish(*(missed(f"c-{i}") for i in range(5)))
        wait_until(lambda: len(outcomes(hub)) == 5, what="five outcomes")
        reports = outcomes(hub)
    succeeded = [r for r in reports if r["type"] == "action.succeeded"]
    overloaded = [r for r in reports if "overloaded" in r["data"].get("error", "")]
    assert len(succeeded) == 2 and len(overloaded) == 3
    assert len(state.received) == 2
