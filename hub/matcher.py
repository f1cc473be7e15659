"""Event-type patterns and field conditions: the one matcher subscription filters and rules share.

A pattern is an event type in which `*` stands for any run of characters (dots included)
and `?` for exactly one: `call.*` matches `call.ringing` and `call.leg.bridged`; `*` matches
everything.

Patterns come from clients (`?types=`, the WebSocket `subscribe` op, a token's `types` claim)
and from rules, so matching must cost the same whatever a pattern holds: a backtracking
regular expression for `*a*a*a*…b` takes exponential time on a long run of `a`s. `Glob`
instead runs all the patterns of a filter as one nondeterministic automaton, its states kept
as the bits of one integer (the Shift-And method): each character of a type costs a shift,
two ANDs and an OR, so a match takes time linear in the type's length for any pattern.
Every filter also remembers its answer per type, so matching in the fan-out hot path is a
dict hit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from hub.exceptions import BadRequest

__all__ = ["TypeFilter", "Glob", "covers", "effective_patterns", "parse_patterns", "lookup", "Condition",
           "ConditionError", "MATCH_ALL", "OPERATORS", "flatten_conditions", "compile_conditions"]

#: Patterns per filter, and characters per pattern: a filter is built per subscriber request.
MAX_PATTERNS = 64
MAX_PATTERN_LENGTH = 256
#: Types remembered per filter; types are few in practice, the bound guards against abuse.
MAX_CACHED_TYPES = 4096
_PATTERN = re.compile(r"[A-Za-z0-9._:/@+*?-]+")


def parse_patterns(value: str | Iterable[str] | None, *, field: str = "types") -> tuple[str, ...]:
    """Patterns from `"call.*,campaign.*"` or a list; empty or None means everything."""
    if value is None:
        return ()
    items = value.split(",", MAX_PATTERNS * 4) if isinstance(value, str) else value
    patterns: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise BadRequest(f"'{field}' must hold strings", code="invalid_filter")
        item = item.strip()
        if not item:
            continue
        if len(item) > MAX_PATTERN_LENGTH or not _PATTERN.fullmatch(item):
            raise BadRequest(
                f"{item[:60]!r} is not a type pattern (letters, digits, . _ : / @ + - and the wildcards * ?)",
                code="invalid_filter",
            )
        patterns.append(item)
        if len(patterns) > MAX_PATTERNS:
            raise BadRequest(f"at most {MAX_PATTERNS} type patterns", code="invalid_filter")
    return tuple(sorted(set(patterns)))


class Glob:
    """Several glob patterns as one automaton, matched in time linear in the subject's length.

    State bit `i` of a pattern means "its first `i` non-`*` characters are matched". Bits are
    laid out pattern after pattern, each pattern's start bit right after the previous one's
    accepting bit, so one integer holds every pattern's states and a shift never carries one
    pattern's accepting state into the next one's start (start bits are in no character mask).
    """

    __slots__ = ("_step", "_any", "_loops", "_start", "_accept")

    def __init__(self, patterns: Iterable[str], *, star_stand_in: str | None = None) -> None:
        masks: dict[str, int] = {}
        any_char = loops = start = accept = 0
        bit = 0
        for pattern in patterns:
            start |= 1 << bit
            for ch in pattern:
                if ch == "*":
                    loops |= 1 << bit  # stay in this state on any character
                    continue
                bit += 1
                if ch == "?":
                    any_char |= 1 << bit
                else:
                    masks[ch] = masks.get(ch, 0) | 1 << bit
            accept |= 1 << bit
            bit += 1
        #: Per character: the states it may move into (its literal positions and every `?`).
        self._step = {ch: mask | any_char for ch, mask in masks.items()}
        if star_stand_in is not None:
            self._step[star_stand_in] = 0  # only a `*` consumes it (see `covers`)
        self._any = any_char
        self._loops = loops
        self._start = start
        self._accept = accept

    def matches(self, subject: str) -> bool:
        step, any_char, loops = self._step, self._any, self._loops
        states = self._start
        for ch in subject:
            states = ((states << 1) & step.get(ch, any_char)) | (states & loops)
            if not states:
                return False
        return bool(states & self._accept)


#: Stand-ins for a pattern's own wildcards when it is matched as a subject (`covers`): no pattern
#: or type holds these characters.
_STAR, _ONE = "\x00", "\x01"


def _as_subject(pattern: str) -> str:
    return pattern.replace("*", _STAR).replace("?", _ONE)


def covers(general: str, specific: str) -> bool:
    """Whether every type `specific` matches is also matched by `general` (sound, not complete:
    False may also mean "cannot tell"). `call.*` covers `call.ended` and `call.leg.*`."""
    return Glob((general,), star_stand_in=_STAR).matches(_as_subject(specific))


def effective_patterns(requested: tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The patterns a subscriber effectively gets: what it asked for, narrowed by what its
    credential may see (each side's patterns that the other side covers)."""
    if not allowed:
        return requested
    if not requested:
        return allowed
    kept = set(_covered(allowed, requested)) | set(_covered(requested, allowed))
    return tuple(sorted(kept))


def _covered(generals: tuple[str, ...], specifics: tuple[str, ...]) -> list[str]:
    """The `specifics` some pattern of `generals` covers (one automaton per general pattern)."""
    globs = [Glob((g,), star_stand_in=_STAR) for g in generals]
    return [s for s in specifics if any(glob.matches(_as_subject(s)) for glob in globs)]


def _compile(patterns: tuple[str, ...]) -> Glob | None:
    if not patterns or "*" in patterns:
        return None
    return Glob(patterns)


class TypeFilter:
    """Matches types against `patterns`, restricted to `allowed` (a token's `types` claim).

    An event passes when it matches one requested pattern and one allowed pattern; an empty
    tuple on either side means "everything".
    """

    __slots__ = ("patterns", "allowed", "_want", "_may", "_cache", "match_all")

    def __init__(self, patterns: tuple[str, ...] = (), allowed: tuple[str, ...] = ()) -> None:
        self.patterns = patterns
        self.allowed = allowed
        self._want = _compile(patterns)
        self._may = _compile(allowed)
        self.match_all = self._want is None and self._may is None
        self._cache: dict[str, bool] = {}

    @property
    def key(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (self.patterns, self.allowed)

    def matches(self, type_: str) -> bool:
        if self.match_all:
            return True
        hit = self._cache.get(type_)
        if hit is None:
            hit = (self._want is None or self._want.matches(type_)) and (
                self._may is None or self._may.matches(type_)
            )
            if len(self._cache) >= MAX_CACHED_TYPES:
                self._cache.clear()
            self._cache[type_] = hit
        return hit

    def allows(self, type_: str) -> bool:
        """Whether the credential's `allowed` patterns admit `type_` (what was requested aside)."""
        return self._may is None or self._may.matches(type_)

    @property
    def effective(self) -> tuple[str, ...]:
        """The requested patterns as narrowed by the allowed ones (`effective_patterns`)."""
        return effective_patterns(self.patterns, self.allowed)

    def __repr__(self) -> str:
        return f"TypeFilter(patterns={self.patterns!r}, allowed={self.allowed!r})"


MATCH_ALL = TypeFilter()


_MISSING = object()


def lookup(obj: object, path: str, default: object = None) -> object:
    """The value at dotted `path` in nested JSON (`data.from.number`, `items.0.id`), or `default`."""
    return lookup_parts(obj, path.split("."), default)


def lookup_parts(obj: object, parts: Sequence[str], default: object = None) -> object:
    """`lookup` with the path already split (rules split theirs once, at load time)."""
    current = obj
    for part in parts:
        if isinstance(current, dict):
            current = current.get(part, _MISSING)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return default
        if current is _MISSING:
            return default
    return current


# -- conditions on event fields (rules' `when`) -------------------------------------------------

#: Operators a condition table may hold.
OPERATORS = ("eq", "in", "gt", "gte", "lt", "lte", "prefix", "exists", "not")
#: Conditions one table may hold, and the shape of a path (`data.from.number`, `items.0.id`).
MAX_CONDITIONS = 64
_PATH = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,15}")


class ConditionError(ValueError):
    """A `when` entry that cannot be understood; `path` says where."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


class Condition:
    """One `when` entry: a dotted path and a test on the value found there.

    A plain value means equals, a list means any of, a table holds operators (`eq`, `in`,
    `gt`, `gte`, `lt`, `lte`, `prefix`, `exists`, `not`); all operators of a table must hold.
    """

    __slots__ = ("path", "spec", "_tests", "_parts")

    def __init__(self, path: str, spec: object) -> None:
        self.path = path
        self.spec = spec
        self._tests = self._compile(path, spec)
        self._parts = tuple(path.split("."))

    @staticmethod
    def _compile(path: str, spec: object) -> list[Callable[[object], bool]]:
        if isinstance(spec, list):
            return [_any_of(list(spec))]
        if not isinstance(spec, dict):
            return [_equals(spec)]
        tests: list[Callable[[object], bool]] = []
        for op, arg in spec.items():
            if op not in OPERATORS:
                raise ConditionError(f"{path}.{op}", f"unknown operator; use one of {', '.join(OPERATORS)}")
            if op == "eq":
                tests.append(_equals(arg))
            elif op == "in":
                if not isinstance(arg, list):
                    raise ConditionError(f"{path}.in", "takes a list")
                tests.append(_any_of(list(arg)))
            elif op in ("gt", "gte", "lt", "lte"):
                bound = _number(arg)
                if bound is None:
                    raise ConditionError(f"{path}.{op}", "takes a number")
                tests.append(_ordered(op, bound))
            elif op == "prefix":
                if not isinstance(arg, (str, list)):
                    raise ConditionError(f"{path}.prefix", "takes a string or a list of strings")
                tests.append(_prefix(tuple(arg) if isinstance(arg, list) else (arg,)))
            elif op == "exists":
                if not isinstance(arg, bool):
                    raise ConditionError(f"{path}.exists", "takes true or false")
                tests.append(_exists(arg))
            else:  # not
                tests.append(_negated(Condition(path, arg)))
        return tests

    def test(self, value: object) -> bool:
        for t in self._tests:
            if not t(value):
                return False
        return True

    def matches(self, event: object, seen: dict[str, object] | None = None) -> bool:
        """Whether `event` meets the condition; `seen` memoises looked-up paths across conditions of one event."""
        if seen is None:
            return self.test(lookup_parts(event, self._parts))
        value = seen.get(self.path, _MISSING)
        if value is _MISSING:
            value = seen[self.path] = lookup_parts(event, self._parts)
        return self.test(value)


def flatten_conditions(when: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{ "data.direction" = … }` and `{ data = { direction = … } }` (TOML's unquoted dotted keys)
    alike: a table whose keys are all operators is a test, any other table goes one path deeper.
    A table that mixes operators and field names is refused (a misspelt operator would otherwise
    silently become a field name)."""
    out: dict[str, Any] = {}
    for key, value in when.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and not all(k in OPERATORS for k in value):
            operators = [k for k in value if k in OPERATORS]
            if operators:
                others = [k for k in value if k not in OPERATORS]
                raise ConditionError(f"{path}.{others[0]}", f"unknown operator beside {operators[0]!r}; use one of "
                                     f"{', '.join(OPERATORS)}")
            out.update(flatten_conditions(value, path))
        else:
            out[path] = value
    return out


def compile_conditions(when: Mapping[str, Any]) -> list[Condition]:
    """The conditions of a flat table (dotted path -> value, list or operator table): every table
    is an operator table. Raises `ConditionError` naming the first path it cannot understand."""
    if len(when) > MAX_CONDITIONS:
        raise ConditionError("(filter)", f"at most {MAX_CONDITIONS} conditions")
    conditions = []
    for path, spec in when.items():
        if not isinstance(path, str) or not _PATH.fullmatch(path):
            raise ConditionError(str(path)[:80], "not a dotted field path (letters, digits, _ and -, joined by dots)")
        conditions.append(Condition(path, spec))
    return conditions


def _equals(expected: object) -> Callable[[object], bool]:
    return lambda value: value == expected


def _any_of(options: list[object]) -> Callable[[object], bool]:
    return lambda value: value in options


def _ordered(op: str, bound: float) -> Callable[[object], bool]:
    compare: Callable[[float, float], bool] = {
        "gt": float.__gt__, "gte": float.__ge__, "lt": float.__lt__, "lte": float.__le__
    }[op]

    def test(value: object) -> bool:
        number = _number(value)
        return number is not None and compare(number, bound)

    return test


def _prefix(prefixes: tuple[str, ...]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, str) and value.startswith(prefixes)


def _exists(want: bool) -> Callable[[object], bool]:
    return lambda value: (value is not None) == want


def _negated(condition: Condition) -> Callable[[object], bool]:
    return lambda value: not condition.test(value)
