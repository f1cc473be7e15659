"""Rule evaluation cost per event, with and without the index by event type.

    python -m bench.rules [--rules 1,200,2000] [--events 20000] [--repeat 5]

For each rule count it builds the rules of `bench.run_all.rules_toml` (a contact centre's rules
on call, campaign and action types, one on the bench's own type) and times, per event:

- `indexed`: `RuleSet.evaluate`, which only meets the rules whose patterns match the type;
- `scan`: the same rules checked one by one (type patterns, then conditions), what evaluation
  would cost without the index.

Events are `call.hangup`-like types no rule names (the common case: most events fire nothing)
and `call.ended` events that meet the conditions of the rules on `call.ended` but for one field.
Medians of `--repeat` runs, interleaved, in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tomllib
from typing import Any

from bench.run_all import rules_toml
from hub.rules.engine import RuleSet, load_rules
from hub.webhooks.post import CORE_ACTIONS


def events(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        if i % 2:
            out.append({"type": "call.hold", "id": f"e{i}", "source": "bench", "data": {"agent": "alice"}})
        else:
            out.append({"type": "call.ended", "id": f"e{i}", "source": "bench",
                        "data": {"direction": "inbound", "outcome": "no_answer", "duration_s": 1,
                                 "from": {"number": "0903555777"}}})
    return out


def build(count: int) -> RuleSet:
    rules, problems = load_rules(tomllib.loads(rules_toml(count))["rules"], None, CORE_ACTIONS)
    assert rules is not None, problems
    return rules


def indexed(rules: RuleSet, batch: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for event in batch:
        rules.evaluate(event, now=0.0)
    return (time.perf_counter() - started) / len(batch) * 1e6


def scan(rules: RuleSet, batch: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for event in batch:
        type_ = event["type"]
        for rule in rules.rules:
            if rule.types.matches(type_) and all(c.matches(event) for c in rule.conditions):
                pass
    return (time.perf_counter() - started) / len(batch) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default="1,200,2000", help="rule counts (comma-separated)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.rules.split(",")]
    batch = events(args.events)
    sets = {count: build(count) for count in counts}
    timings: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.repeat):
        for count, rules in sets.items():
            timings.setdefault((count, "indexed"), []).append(indexed(rules, batch))
            timings.setdefault((count, "scan"), []).append(scan(rules, batch))
    print(f"{'rules':>6} {'indexed µs/event':>17} {'scan µs/event':>14} {'scan / indexed':>15}")
    for count in counts:
        fast = statistics.median(timings[(count, "indexed")])
        slow = statistics.median(timings[(count, "scan")])
        print(f"{count:>6} {fast:>17.2f} {slow:>14.2f} {slow / fast:>14.1f}x")
    print(f"medians of {args.repeat} interleaved runs over {args.events} events (half call.ended, half call.hold)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
