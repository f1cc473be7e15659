"""Parsing of human-friendly durations and sizes used in the config file and the CLI."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
    None: 1,
}


#: The longest duration accepted (a bigger number is a typo, or an attack on arithmetic).
MAX_DURATION = 100 * 365 * 86400.0


def parse_duration(value: str | int | float) -> float:
    """Seconds from `30`, `1.5`, `"250ms"`, `"15s"`, `"10m"`, `"8h"` or `"7d"`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 15s, 10m, 8h or 7d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = float(value)
    elif not isinstance(value, str):  # a table or a list where a duration belongs (config, API bodies)
        raise ValueError("expected a duration such as 15s, 10m, 8h or 7d")
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value[:40]!r} is not a duration such as 15s, 10m, 8h or 7d")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not seconds <= MAX_DURATION:  # NaN and infinity too
        raise ValueError("a duration may be at most 100 years")
    return seconds


def parse_size(value: str | int) -> int:
    """Bytes from `1048576`, `"64KiB"` or `"1MiB"`."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 1048576, 64KiB or 1MiB")
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size such as 1048576, 64KiB or 1MiB")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def whole_seconds(value: object) -> int | None:
    """A vendor's duration (or small count) in whole seconds, from a number or a numeric string;
    anything else (negative, NaN, infinite, a bool) is missing."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return round(value)
    return None
