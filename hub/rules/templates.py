"""Templates that render event fields into action parameters: `"Missed call from {data.from.number}"`.

`{path}` is a dotted path into the event; `{{` and `}}` are literal braces. A template that
is exactly one placeholder keeps the value's type (a number stays a number). Templates are
parsed once, at load time, so a malformed one or one naming something no event has is an
error then, not when the rule first fires.

Values going into a URL (parameters named `url` or `*_url`) are percent-encoded: an event can
fill in a path segment or a query value, but cannot change the host, the path's shape or the
query's other parameters. A URL that is one placeholder is therefore never a working URL:
where a rule calls is written in the rule, not chosen by the events it reacts to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from hub.matcher import lookup

__all__ = ["Template", "TemplateError", "MissingField", "render_params", "compile_params", "is_url_param"]

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
#: The attributes an event has at its top level; templates may reach under `data.` freely.
EVENT_ROOTS = {"id", "source", "type", "time", "subject", "seq", "data", "specversion", "datacontenttype"}


class TemplateError(ValueError):
    """A template that cannot be parsed (load time)."""


class MissingField(LookupError):
    """The event lacks a field a template needs (run time)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"the event has no {path!r}")
        self.path = path


class Template:
    __slots__ = ("source", "_parts", "_single")

    def __init__(self, source: str) -> None:
        self.source = source
        parts: list[str | tuple[str]] = []
        pos = 0
        for match in _PLACEHOLDER.finditer(source):
            if match.start() > pos:
                parts.append(source[pos:match.start()])
            token = match.group(0)
            if token in ("{{", "}}"):
                parts.append(token[0])
            else:
                path = (match.group(1) or "").strip()
                if not _PATH.fullmatch(path):
                    raise TemplateError(f"{{{path}}} is not a dotted path such as {{data.from.number}}")
                if path.split(".")[0] not in EVENT_ROOTS:
                    raise TemplateError(f"{{{path}}}: events have no {path.split('.')[0]!r} (use data.…)")
                parts.append((path,))
            pos = match.end()
        if pos < len(source):
            parts.append(source[pos:])
        if "{" in "".join(p for p in parts if isinstance(p, str) and p not in ("{", "}")):
            raise TemplateError(f"unbalanced brace in {source!r}")
        self._parts = parts
        self._single = parts[0][0] if len(parts) == 1 and isinstance(parts[0], tuple) else None


    def render(self, event: Mapping[str, Any], *, escape: Callable[[str], str] | None = None) -> Any:
        """The template with the event's values in; `escape` (if given) is applied to each value."""
        if self._single is not None and escape is None:
            value = lookup(event, self._single)
            if value is None:
                raise MissingField(self._single)
            return value
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, tuple):
                value = lookup(event, part[0])
                if value is None:
                    raise MissingField(part[0])
                out.append(str(value) if escape is None else escape(str(value)))
            else:
                out.append(part)
        return "".join(out)


def compile_params(value: Any, path: str = "") -> Any:
    """Action parameters with every string made a `Template` (raises TemplateError with the key path)."""
    if isinstance(value, str):
        try:
            return Template(value)
        except TemplateError as exc:
            raise TemplateError(f"{path}: {exc}") from None
    if isinstance(value, dict):
        return {k: compile_params(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [compile_params(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def is_url_param(key: str) -> bool:
    """Parameters that hold a URL (`url`, `callback_url`): their placeholders are percent-encoded."""
    return key == "url" or key.endswith("_url")


def _url_component(value: str) -> str:
    # Every reserved character encoded: an event's value can fill a path segment or a query
    # value, never add one, nor change the host (`evil.com/` becomes `evil.com%2F`). Dots too:
    # a value of `..` would otherwise be a dot segment, which clients resolve (RFC 3986 5.2.4).
    return quote(value, safe="").replace(".", "%2E")


def render_params(value: Any, event: Mapping[str, Any], key: str = "") -> Any:
    if isinstance(value, Template):
        return value.render(event, escape=_url_component if is_url_param(key) else None)
    if isinstance(value, dict):
        return {k: render_params(v, event, k) for k, v in value.items()}
    if isinstance(value, list):
        return [render_params(v, event, key) for v in value]
    return value
