"""The one matcher: type globs in linear time whatever the pattern, and what a filter effectively lets through."""

from __future__ import annotations

import fnmatch
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.matcher import MAX_PATTERN_LENGTH, MAX_PATTERNS, Glob, TypeFilter, covers, effective_patterns

#: Small alphabets make overlaps (and so backtracking for a naive matcher) likely.
PATTERN = st.text(alphabet="ab.*?", max_size=12)
TYPE = st.text(alphabet="ab.", max_size=16)
#: The longest an event type may be (hub.events.EVENT_LIMITS).
MAX_TYPE = 256


@settings(max_examples=2000, deadline=None)
@given(patterns=st.lists(PATTERN, min_size=1, max_size=4), type_=TYPE)
def test_glob_agrees_with_a_reference_glob_for_any_patterns_and_type(patterns: list[str], type_: str) -> None:
    """Any set of patterns, any type: `Glob` answers exactly as fnmatch (no `[` in either) would."""
    expected = any(fnmatch.fnmatchcase(type_, p) for p in patterns)
    assert Glob(patterns).matches(type_) is expected


@settings(max_examples=500, deadline=None)
@given(general=PATTERN, specific=PATTERN, filler=st.lists(st.sampled_from("ab."), max_size=6))
def test_covers_is_sound(general: str, specific: str, filler: list[str]) -> None:
    """When `covers(g, s)` says yes, every type `s` matches is matched by `g` (checked on concrete types)."""
    if not covers(general, specific):
        return
    # A concrete type `specific` matches: each `*` replaced by the filler, each `?` by "a".
    concrete = specific.replace("?", "a").replace("*", "".join(filler))
    assert fnmatch.fnmatchcase(concrete, specific)
    assert fnmatch.fnmatchcase(concrete, general)


def _worst(patterns: tuple[str, ...], subject: str) -> float:
    """Seconds one fresh filter takes to answer for `subject` (median of 3)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        TypeFilter(patterns).matches(subject)
        times.append(time.perf_counter() - started)
    return sorted(times)[1]


def test_patterns_built_to_make_a_backtracking_matcher_explode_answer_at_once() -> None:
    """Many `*`, `*a*a*…b` and long literal runs, at the size limits: each answer is milliseconds.

    The regular expressions this replaced took 12.8 s for `********************Z` against a
    40-character type, and longer for every added `*a`.
    """
    cases = [
        (("*" * 20 + "Z",), "a" * 40),
        (("*a" * (MAX_PATTERN_LENGTH // 2),), "a" * (MAX_TYPE - 1) + "b"),
        (((("a" * 200 + "*") * 2)[:MAX_PATTERN_LENGTH],), "a" * MAX_TYPE),
        (tuple(("*a" * 127 + "?" + str(i))[:MAX_PATTERN_LENGTH] for i in range(MAX_PATTERNS)), "a" * MAX_TYPE),
    ]
    for patterns, subject in cases:
        assert _worst(patterns, subject) < 0.05, patterns[0][:40]


def test_matching_time_grows_linearly_with_the_type() -> None:
    """Four times the type, at most about four times the time (not its square or worse)."""
    patterns = ("*a" * 100 + "b",)
    short = min(_worst(patterns, "a" * 60) for _ in range(3))
    long = min(_worst(patterns, "a" * 240) for _ in range(3))
    assert long < short * 12 + 0.002


def test_a_filter_is_requested_patterns_and_allowed_patterns_together() -> None:
    """An event passes when it matches one requested pattern and one allowed (claim) pattern."""
    f = TypeFilter(("call.*", "sms.in"), ("call.ended", "sms.*"))
    assert [f.matches(t) for t in ("call.ended", "call.ringing", "sms.in", "sms.out")] == [True, False, True, False]
    assert f.allows("sms.out") and not f.allows("hub.gap")


def test_effective_patterns_narrow_a_request_by_the_claim() -> None:
    """`*` under a `call.*` claim is `call.*`; `call.ended` and `sms.*` under it is `call.ended`."""
    assert effective_patterns(("*",), ("call.*",)) == ("call.*",)
    assert effective_patterns(("call.ended", "sms.*"), ("call.*",)) == ("call.ended",)
    assert effective_patterns(("call.*",), ()) == ("call.*",)
    assert effective_patterns((), ("call.*",)) == ("call.*",)
