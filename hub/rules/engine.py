"""Rules: when an event matches, act. This module parses, validates, indexes and evaluates them.

    [[rules]]
    name = "missed-inbound-callback"
    on = ["call.ended"]
    when = { "data.direction" = "inbound", "data.outcome" = ["no_answer", "cancelled"], "data.duration_s" = { gte = 3 } }
    schedule = { days = ["mon-sat"], hours = ["08:00-18:00"], outside = true }
    cooldown = { key = "{data.from.number}", for = "10m" }
    [[rules.actions]]
    type = "antcrm.create_ticket"
    title = "Missed call from {data.from.number}"

Rules come from `[[rules]]` in the config file and from the file `rules_file` names. Each is
checked at load time (conditions, schedule, templates, action types), and every problem is
reported with its file, rule name and key. Rules are indexed by the event types they name, so
an event only meets the rules that can match it. Evaluation runs after commit, off the
fan-out path; executing actions is the job of the action runners vendors register.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from hub.config import ConfigError
from hub.matcher import Condition, ConditionError, TypeFilter, flatten_conditions, parse_patterns
from hub.rules.schedule import Schedule
from hub.rules.templates import MissingField, Template, TemplateError, compile_params, render_params
from hub.units import parse_duration

logger = logging.getLogger("callhub.rules")

__all__ = ["Rules", "RulesInvalid", "RuleSet", "Rule", "RuleProblem", "load_rules", "Firing", "chain_depth", "MAX_ACTION_CHAIN"]

Duration = Annotated[float, BeforeValidator(parse_duration)]
#: An action's outcome (`action.*`) may trigger rules whose outcomes may trigger rules...: the
#: chain stops at this depth, so two rules reacting to each other's failures cannot loop forever.
MAX_ACTION_CHAIN = 3
#: Event types whose candidate rules are remembered (as `hub.matcher` bounds its filters' caches).
MAX_CACHED_TYPES = 4096
#: Cooldowns held before expired ones are swept out.
COOLDOWN_SWEEP_MIN = 1024


def chain_depth(event: Mapping[str, Any]) -> int:
    """How many rule actions led to `event` (0 for anything that is not the hub's own `action.*`)."""
    if event.get("source") != "hub" or not str(event.get("type", "")).startswith("action."):
        return 0
    data = event.get("data")
    depth = data.get("chain", 1) if isinstance(data, dict) else 1
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else 1


class CooldownSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    key: str
    for_: Duration = Field(alias="for", gt=0)


class RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: str = Field(min_length=1, max_length=128)
    on: list[str] = Field(min_length=1)
    when: dict[str, Any] = {}
    schedule: Schedule | None = None
    cooldown: CooldownSpec | None = None
    enabled: bool = True
    actions: list[dict[str, Any]] = Field(min_length=1)


@dataclass(frozen=True)
class RuleProblem:
    file: str
    rule: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: rule {self.rule!r}: {self.key}: {self.message}"


@dataclass
class Counters:
    matched: int = 0
    actions_ok: int = 0
    actions_failed: int = 0
    last_fired: float | None = None


@dataclass
class Rule:
    spec: RuleSpec
    origin: str
    types: TypeFilter
    conditions: list[Condition]
    cooldown_key: Template | None
    actions: list[dict[str, Any]]
    counters: Counters = field(default_factory=Counters)

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict[str, Any]:
        c = self.counters
        return {
            "name": self.name,
            "file": self.origin,
            "on": list(self.spec.on),
            "enabled": self.spec.enabled,
            "actions": [a["type"] for a in self.spec.actions],
            "matched": c.matched,
            "actions_ok": c.actions_ok,
            "actions_failed": c.actions_failed,
            "last_fired": None if c.last_fired is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.last_fired)),
        }


@dataclass
class Firing:
    """A rule that fires for an event, with its actions' parameters rendered (or why one could not be)."""

    rule: Rule
    requests: list[dict[str, Any]]
    errors: list[str]
    #: (rule, rendered key, until) when the rule has a cooldown: kept with the actions' journal entry.
    cooldown: tuple[str, str, float] | None = None


def _problem(origin: str, name: str, key: str, message: str) -> RuleProblem:
    return RuleProblem(origin, name, key, message)


def compile_rule(raw: Any, origin: str, index: int, known_actions: Mapping[str, Sequence[str]],
                 shared: dict[tuple[str, str], Condition] | None = None) -> tuple[Rule | None, list[RuleProblem]]:
    """One rule, or its problems. `shared` interns conditions: rules that test the same thing hold
    the same `Condition`, so evaluation tests it once per event however many rules use it."""
    shared = {} if shared is None else shared
    name: str = raw["name"] if isinstance(raw, dict) and isinstance(raw.get("name"), str) else f"#{index + 1}"
    problems: list[RuleProblem] = []
    try:
        spec = RuleSpec.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(rule)"
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            problems.append(_problem(origin, name, key, message))
        return None, problems
    try:
        types = TypeFilter(parse_patterns(spec.on, field="on"))
    except Exception as exc:
        problems.append(_problem(origin, name, "on", str(exc)))
        types = TypeFilter(("__invalid__",))
    conditions = []
    try:
        flat = flatten_conditions(spec.when)
    except ConditionError as exc:
        problems.append(_problem(origin, name, f"when.{exc.path}", exc.message))
        flat = {}
    for path, condition in flat.items():
        try:
            same = (path, repr(condition))
            if same not in shared:
                shared[same] = Condition(path, condition)
            conditions.append(shared[same])
        except ConditionError as exc:
            problems.append(_problem(origin, name, f"when.{exc.path}", exc.message))
    cooldown_key = None
    if spec.cooldown is not None:
        try:
            cooldown_key = Template(spec.cooldown.key)
        except TemplateError as exc:
            problems.append(_problem(origin, name, "cooldown.key", str(exc)))
    known = known_actions  # type -> its required parameters
    actions = []
    for i, action in enumerate(spec.actions):
        kind = action.get("type")
        if not isinstance(kind, str) or kind not in known:
            hint = f"known: {', '.join(sorted(known))}" if known else "no action types are registered"
            problems.append(_problem(origin, name, f"actions[{i}].type", f"unknown action type {kind!r}; {hint}"))
            continue
        missing = [p for p in known[kind] if p not in action]
        if missing:
            problems.append(_problem(origin, name, f"actions[{i}]", f"{kind} needs {', '.join(missing)}"))
            continue
        try:
            actions.append(compile_params({k: v for k, v in action.items() if k != "type"}) | {"type": kind})
        except TemplateError as exc:
            problems.append(_problem(origin, name, f"actions[{i}].{exc}".split(": ", 1)[0], str(exc).split(": ", 1)[-1]))
    if problems:
        return None, problems
    return Rule(spec, origin, types, conditions, cooldown_key, actions), []


def load_rules(
    inline: list[Any], rules_file: str | None, known_actions: Mapping[str, Sequence[str]], *, base: Path | None = None
) -> tuple[RuleSet | None, list[RuleProblem]]:
    """All rules from the config's `[[rules]]` and from `rules_file`; None and the problems if any is broken.

    `known_actions` maps each action type rules may use to its required parameters.
    """
    known = dict(known_actions)
    sources: list[tuple[str, list[Any]]] = [("config", inline)]
    problems: list[RuleProblem] = []
    if rules_file:
        path = Path(rules_file) if base is None or Path(rules_file).is_absolute() else base / rules_file
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
            rules = document.get("rules", [])
            if not isinstance(rules, list):
                problems.append(_problem(str(path), "-", "rules", "must be an array of tables ([[rules]])"))
            else:
                sources.append((str(path), rules))
        except FileNotFoundError:
            problems.append(_problem(str(path), "-", "(file)", "not found"))
        except tomllib.TOMLDecodeError as exc:
            problems.append(_problem(str(path), "-", "(file)", f"not valid TOML: {exc}"))
    compiled: list[Rule] = []
    shared: dict[tuple[str, str], Condition] = {}
    seen: set[str] = set()
    for origin, raws in sources:
        for i, raw in enumerate(raws):
            rule, found = compile_rule(raw, origin, i, known, shared)
            problems += found
            if rule is not None:
                if rule.name in seen:
                    problems.append(_problem(origin, rule.name, "name", "another rule has this name"))
                seen.add(rule.name)
                compiled.append(rule)
    if problems:
        return None, problems
    return RuleSet(compiled), []


def _all_match(conditions: list[Condition], event: Mapping[str, Any], seen: dict[str, object],
               tested: dict[int, bool]) -> bool:
    for condition in conditions:
        result = tested.get(id(condition))
        if result is None:
            result = tested[id(condition)] = condition.matches(event, seen)
        if not result:
            return False
    return True


class RuleSet:
    """Rules indexed by event type: exact types in a dict, wildcard rules remembered per type."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._exact: dict[str, list[Rule]] = {}
        self._wild: list[Rule] = []
        for rule in rules:
            if not rule.spec.enabled:
                continue
            patterns = rule.types.patterns
            if patterns and not any("*" in p or "?" in p for p in patterns):
                for p in patterns:
                    self._exact.setdefault(p, []).append(rule)
            else:
                self._wild.append(rule)
        self._by_type: dict[str, list[Rule]] = {}
        self._cooldowns: dict[tuple[str, str], float] = {}
        self._cooldown_sweep_at = COOLDOWN_SWEEP_MIN

    def carry_counters(self, old: RuleSet | None) -> None:
        """Keep the counters and running cooldowns of rules that survive a reload (by name)."""
        if old is None:
            return
        previous = {r.name: r.counters for r in old.rules}
        for rule in self.rules:
            if rule.name in previous:
                rule.counters = previous[rule.name]
        self.restore_cooldowns((name, key, until) for (name, key), until in old._cooldowns.items())

    def restore_cooldowns(self, cooldowns: Iterable[tuple[str, str, float]]) -> None:
        """Cooldowns still running (from the journal after a restart, or the rules before a reload)."""
        names = {r.name for r in self.rules}
        for name, key, until in cooldowns:
            if name in names:
                self._cooldowns[(name, key)] = max(until, self._cooldowns.get((name, key), 0.0))

    def _remember_cooldown(self, key: tuple[str, str], until: float, now: float) -> None:
        cooldowns = self._cooldowns
        if len(cooldowns) >= self._cooldown_sweep_at:
            # One cooldown per rule and key (a caller's number): expired ones are forgotten, in one
            # sweep each time the map doubles, so keeping them bounded costs O(1) per firing.
            for stale in [k for k, t in cooldowns.items() if t <= now]:
                del cooldowns[stale]
            self._cooldown_sweep_at = max(COOLDOWN_SWEEP_MIN, 2 * len(cooldowns))
        cooldowns[key] = until

    def candidates(self, type_: str) -> list[Rule]:
        found = self._by_type.get(type_)
        if found is None:
            found = self._exact.get(type_, []) + [r for r in self._wild if r.types.matches(type_)]
            if len(self._by_type) >= MAX_CACHED_TYPES:
                self._by_type.clear()  # types are few in practice; a client inventing types must not grow it
            self._by_type[type_] = found
        return found

    def evaluate(self, event: Mapping[str, Any], *, now: float | None = None, dry_run: bool = False) -> list[Firing]:
        """The rules that fire for `event`; with `dry_run`, cooldowns are read but not consumed."""
        now = time.time() if now is None else now
        if chain_depth(event) >= MAX_ACTION_CHAIN:
            return []
        firings = []
        # Rules on one type tend to test the same things: each field is looked up, and each
        # (interned) condition tested, once per event.
        seen: dict[str, object] = {}
        tested: dict[int, bool] = {}
        for rule in self.candidates(str(event.get("type", ""))):
            if not _all_match(rule.conditions, event, seen, tested):
                continue
            if rule.spec.schedule is not None and not rule.spec.schedule.allows(datetime.fromtimestamp(now, UTC)):
                continue
            cooldown = None
            if rule.cooldown_key is not None and rule.spec.cooldown is not None:
                try:
                    key = (rule.name, str(rule.cooldown_key.render(event)))
                except MissingField:
                    key = (rule.name, "")
                if self._cooldowns.get(key, 0.0) > now:
                    continue
                cooldown = (rule.name, key[1], now + rule.spec.cooldown.for_)
                if not dry_run:
                    self._remember_cooldown(key, cooldown[2], now)
            requests, errors = [], []
            for action in rule.actions:
                try:
                    requests.append(render_params(action, event))
                except MissingField as exc:
                    errors.append(f"{action['type']}: {exc}")
            firings.append(Firing(rule, requests, errors, cooldown))
        return firings


class RulesInvalid(ConfigError):
    """The rules cannot be loaded; `rule_problems` says where, by file, rule and key."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        super().__init__([(f"rules ({p.file}: {p.rule})", f"{p.key}: {p.message}") for p in problems], "rules")
        self.rule_problems = problems


class Rules:
    """The rules in force: loaded once when the hub is built, reloaded on demand (SIGHUP,
    `POST /v1/rules/reload`) keeping the rules in force when the new ones have problems. The one
    place their counters change: matches here, actions' outcomes through `outcome`.
    """

    def __init__(self, inline: list[Any], rules_file: str | None, actions: Mapping[str, Sequence[str]],
                 on_match: Callable[[str], None] = lambda rule: None) -> None:
        self._inline = inline
        self._file = rules_file
        #: Action types rules may use, with their required parameters.
        self._actions = dict(actions)
        self._on_match = on_match
        self.current = RuleSet([])
        self.status: dict[str, Any] = {}

    def load(self) -> list[RuleProblem]:
        """(Re)load the rules; on any problem keep the rules in force and return the problems."""
        rules, problems = load_rules(self._inline, self._file, self._actions)
        if rules is None:
            self.status = {"ok": False, "at": time.time(), "problems": [str(p) for p in problems]}
            logger.error("rules not (re)loaded, %d problem(s); keeping %d rule(s) in force:\n  %s",
                         len(problems), len(self.current.rules), "\n  ".join(str(p) for p in problems))
            return problems
        rules.carry_counters(self.current)
        self.current = rules
        self.status = {"ok": True, "at": time.time(), "problems": []}
        logger.info("%d rule(s) loaded", len(rules.rules))
        return []

    def candidates(self, type_: str) -> list[Rule]:
        return self.current.candidates(type_)

    def evaluate(self, event: Mapping[str, Any], *, now: float) -> list[Firing]:
        """The rules that fire for `event` (cooldowns consumed), counted as matches."""
        firings = self.current.evaluate(event, now=now)
        wall = time.time()
        for firing in firings:
            counters = firing.rule.counters
            counters.matched += 1
            counters.last_fired = wall
            self._on_match(firing.rule.name)
        return firings

    def dry_run(self, event: Mapping[str, Any]) -> list[Firing]:
        """What would fire for `event`, changing nothing (cooldowns read, not consumed)."""
        return self.current.evaluate(event, dry_run=True)

    def outcome(self, rule_name: str, state: str) -> None:
        """An action of `rule_name` ended in `state`."""
        rule = next((r for r in self.current.rules if r.name == rule_name), None)
        if rule is not None:
            if state == "succeeded":
                rule.counters.actions_ok += 1
            else:
                rule.counters.actions_failed += 1

    def restore_cooldowns(self, cooldowns: Iterable[tuple[str, str, float]]) -> None:
        self.current.restore_cooldowns(cooldowns)

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.current.rules]
