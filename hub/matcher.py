"""Event-type patterns: the one matcher that subscription filters (and, later, rules) share.

A pattern is an event type in which `*` stands for any run of characters (dots included)
and `?` for exactly one: `call.*` matches `call.ringing` and `call.leg.bridged`; `*` matches
everything. Patterns are compiled into one regular expression per filter, and every
filter remembers its answer per type, so matching in the fan-out hot path is a dict hit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from hub.exceptions import BadRequest

__all__ = ["TypeFilter", "parse_patterns", "lookup", "MATCH_ALL"]

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
    items = value.split(",") if isinstance(value, str) else list(value)
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


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns or "*" in patterns:
        return None
    parts = [re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") for p in patterns]
    return re.compile("(?:" + "|".join(parts) + r")\Z")


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
            hit = (self._want is None or self._want.match(type_) is not None) and (
                self._may is None or self._may.match(type_) is not None
            )
            if len(self._cache) >= MAX_CACHED_TYPES:
                self._cache.clear()
            self._cache[type_] = hit
        return hit

    def __repr__(self) -> str:
        return f"TypeFilter(patterns={self.patterns!r}, allowed={self.allowed!r})"


MATCH_ALL = TypeFilter()


_MISSING = object()


def lookup(obj: object, path: str, default: object = None) -> object:
    """The value at dotted `path` in nested JSON (`data.from.number`, `items.0.id`), or `default`."""
    current = obj
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part, _MISSING)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return default
        if current is _MISSING:
            return default
    return current
