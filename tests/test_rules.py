"""Rules: conditions, schedules, cooldowns, templates, loading with precise problems, reload, dry run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from hub.config import config_from_dict
from hub.http.app import app_for
from hub.matcher import Condition, ConditionError
from hub.rules.engine import load_rules
from hub.rules.schedule import Schedule
from hub.rules.templates import MissingField, Template, TemplateError
from hub.service import build
from tests.helpers import ADMIN, PUBLISHER, make_config, raw_config, run_cli, wait_until, write_config

KNOWN = {"antcrm.create_ticket": ("title", "SLA", "contact"), "antring.click_to_call": ("agent", "number"),
         "webhook.post": ("url",)}
MISSED = {
    "name": "missed-inbound-callback",
    "on": ["call.ended"],
    "when": {"data.direction": "inbound", "data.outcome": ["no_answer", "cancelled"], "data.duration_s": {"gte": 3}},
    "cooldown": {"key": "{data.from.number}", "for": "10m"},
    "actions": [
        {"type": "antcrm.create_ticket", "title": "Missed call from {data.from.number}", "SLA": "SLA-4H",
         "contact": {"name": "Caller {data.from.number}", "phones": [{"type": "Work", "value": "{data.from.number}"}]}},
        {"type": "antring.click_to_call", "agent": "alice", "number": "{data.from.number}"},
    ],
}


def call_ended(number: str = "0912345678", **data: Any) -> dict[str, Any]:
    return {"type": "call.ended", "id": f"e-{number}", "source": "antring",
            "data": {"direction": "inbound", "outcome": "no_answer", "duration_s": 5, "from": {"number": number}, **data}}


# -- conditions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ("inbound", "inbound", True), ("inbound", "outbound", False),
        (["a", "b"], "b", True), (["a", "b"], "c", False),
        ({"eq": 3}, 3, True), ({"in": [1, 2]}, 3, False),
        ({"gt": 3}, 4, True), ({"gt": 3}, 3, False), ({"gte": 3}, 3, True),
        ({"lt": 3}, 2.5, True), ({"lte": 3}, 4, False), ({"gte": 3}, "5", False),
        ({"prefix": "09"}, "0912", True), ({"prefix": ["03", "05"]}, "0912", False),
        ({"exists": True}, None, False), ({"exists": False}, None, True),
        ({"not": "inbound"}, "outbound", True), ({"not": {"in": ["x"]}}, "x", False),
        ({"gte": 3, "lt": 10}, 7, True), ({"gte": 3, "lt": 10}, 10, False),
    ],
)
def test_each_condition_operator(spec: object, value: object, expected: bool) -> None:
    """Plain value equals, list any-of, and the operators eq, in, gt, gte, lt, lte, prefix, exists, not."""
    assert Condition("data.x", spec).matches({"data": {"x": value}}) is expected


def test_bad_conditions_are_refused_with_their_path() -> None:
    """An unknown operator or a wrong argument type names the exact key."""
    with pytest.raises(ConditionError) as info:
        Condition("data.x", {"gte": "three"})
    assert info.value.path == "data.x.gte"
    with pytest.raises(ConditionError) as info:
        Condition("data.x", {"around": 1})
    assert info.value.path == "data.x.around"


# -- schedule ------------------------------------------------------------------------------------------


def test_schedule_uses_the_named_time_zone_and_half_open_hours() -> None:
    """08:00-18:00 Mon-Fri in Ho Chi Minh City: 01:00 UTC is 08:00 there (in), 11:00 UTC is 18:00 (out)."""
    business = Schedule(days=["mon-fri"], hours=["08:00-18:00"])
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    assert business.allows(monday.replace(hour=1)) and not business.allows(monday.replace(hour=11))
    assert not business.allows(monday.replace(hour=0, minute=59))
    saturday = datetime(2026, 11, 28, 3, tzinfo=UTC)
    assert not business.allows(saturday)
    after_hours = Schedule(days=["mon-fri"], hours=["08:00-18:00"], outside=True)
    assert after_hours.allows(saturday) and after_hours.allows(monday.replace(hour=11))
    night = Schedule(hours=["22:00-06:00"], timezone="UTC")
    assert night.allows(monday.replace(hour=23)) and night.allows(monday.replace(hour=5)) and not night.allows(monday.replace(hour=6))
    sunday_to_monday = Schedule(days=["sun-mon"], timezone="UTC")
    assert sunday_to_monday.allows(monday) and not sunday_to_monday.allows(monday.replace(day=24))


def test_bad_schedules_are_refused() -> None:
    """Unknown days, malformed hours and unknown time zones are load-time errors."""
    for bad in ({"days": ["funday"]}, {"hours": ["8-17"]}, {"timezone": "Mars/Olympus"}):
        with pytest.raises(ValueError):
            Schedule(**bad)  # type: ignore[arg-type]


# -- templates ---------------------------------------------------------------------------------------


def test_templates_render_fields_and_keep_single_values_typed() -> None:
    """`{data.x}` inside text renders as text; a template that is one placeholder keeps its type."""
    event = {"data": {"from": {"number": "0912"}, "duration_s": 7}}
    assert Template("Missed call from {data.from.number}").render(event) == "Missed call from 0912"
    assert Template("{data.duration_s}").render(event) == 7
    assert Template("{{literal}} {data.duration_s}s").render(event) == "{literal} 7s"
    with pytest.raises(MissingField):
        Template("{data.nope}").render(event)
    for bad in ("{data.from.number", "{}", "{nobody.knows}", "{data..x}"):
        with pytest.raises(TemplateError):
            Template(bad)


# -- loading ------------------------------------------------------------------------------------------


def test_load_reports_every_problem_with_file_rule_and_key(tmp_path: Path) -> None:
    """Problems name the file, the rule and the key; all of them at once."""
    rules_file = tmp_path / "rules.toml"
    write_config(rules_file, {"rules": [{"name": "bad-file-rule", "on": ["call.ended"], "actions": [{"type": "nope"}]}]})
    inline = [
        {**MISSED, "name": "a", "when": {"data.duration_s": {"gte": "x"}}},
        {**MISSED, "name": "b", "cooldown": {"key": "{data.from.number", "for": "10m"}},
        {**MISSED, "name": "c", "surprise": 1},
        {**MISSED, "name": "c2", "schedule": {"timezone": "Nowhere/Land"}},
    ]
    rules, problems = load_rules(inline, str(rules_file), KNOWN)
    assert rules is None
    found = {(p.file.split("/")[-1], p.rule, p.key) for p in problems}
    assert ("config", "a", "when.data.duration_s.gte") in found
    assert ("config", "b", "cooldown.key") in found
    assert ("config", "c", "surprise") in found
    assert ("config", "c2", "schedule.timezone") in found
    assert ("rules.toml", "bad-file-rule", "actions[0].type") in found


def test_unquoted_dotted_keys_in_when_mean_the_same_paths() -> None:
    """TOML's `when = { data.direction = "inbound" }` (nested tables) reads like the quoted form."""
    nested = {**MISSED, "when": {"data": {"direction": "inbound", "duration_s": {"gte": 3}}}}
    rules, problems = load_rules([nested], None, KNOWN)
    assert rules is not None and not problems
    assert [c.path for c in rules.rules[0].conditions] == ["data.direction", "data.duration_s"]


def test_rules_are_indexed_by_type() -> None:
    """An event meets only the rules whose `on` patterns match its type."""
    inline = [MISSED, {**MISSED, "name": "any-call", "on": ["call.*"]}, {**MISSED, "name": "vbee", "on": ["campaign.*"]}]
    rules, problems = load_rules(inline, None, KNOWN)
    assert rules is not None and not problems
    assert [r.name for r in rules.candidates("call.ended")] == ["missed-inbound-callback", "any-call"]
    assert [r.name for r in rules.candidates("call.ringing")] == ["any-call"]
    assert rules.candidates("hub.gap") == []


def test_rules_sharing_conditions_each_decide_for_themselves() -> None:
    """Identical conditions are tested once per event, yet each rule fires on its own conditions."""
    inline = [
        {**MISSED, "name": "long", "cooldown": None, "when": {"data.direction": "inbound", "data.duration_s": {"gte": 10}}},
        {**MISSED, "name": "short", "cooldown": None, "when": {"data.direction": "inbound", "data.duration_s": {"lt": 10}}},
        {**MISSED, "name": "not-outbound", "cooldown": None, "when": {"data.direction": {"not": "outbound"}}},
    ]
    rules, problems = load_rules(inline, None, KNOWN)
    assert rules is not None and not problems
    assert rules.rules[0].conditions[0] is rules.rules[1].conditions[0], "interned"

    def fired(duration: int, direction: str = "inbound") -> list[str]:
        event = {"type": "call.ended", "id": f"{duration}{direction}", "source": "t",
                 "data": {"direction": direction, "duration_s": duration, "from": {"number": "0903"}}}
        return [f.rule.name for f in rules.evaluate(event, now=0.0)]

    assert fired(12) == ["long", "not-outbound"]
    assert fired(3) == ["short", "not-outbound"]
    assert fired(3, "outbound") == []


def test_evaluation_renders_requests_and_honours_cooldown() -> None:
    """A match renders every action's parameters; the same caller within the cooldown does not fire again."""
    rules, _ = load_rules([MISSED], None, KNOWN)
    assert rules is not None
    (firing,) = rules.evaluate(call_ended(), now=1000.0)
    ticket, ring = firing.requests
    assert ticket["title"] == "Missed call from 0912345678" and ticket["contact"]["phones"][0]["value"] == "0912345678"
    assert ring == {"type": "antring.click_to_call", "agent": "alice", "number": "0912345678"}
    assert rules.evaluate(call_ended(), now=1300.0) == []
    assert len(rules.evaluate(call_ended("0987654321"), now=1300.0)) == 1
    assert len(rules.evaluate(call_ended(), now=1000.0 + 601)) == 1
    assert rules.evaluate(call_ended(outcome="answered"), now=5000.0) == []
    assert rules.evaluate(call_ended(duration_s=2), now=6000.0) == []


def test_what_rules_remember_stays_bounded_however_many_types_and_callers_come() -> None:
    """A client inventing event types, or calls from ever new numbers, cannot grow the rules' memory:
    candidates are remembered for at most MAX_CACHED_TYPES types, and expired cooldowns are swept."""
    import tracemalloc

    from hub.rules.engine import MAX_CACHED_TYPES

    rules, _ = load_rules([MISSED, {**MISSED, "name": "any", "on": ["*.x*"], "cooldown": {"key": "{data.n}", "for": "1s"}}],
                          None, KNOWN)
    assert rules is not None
    for i in range(MAX_CACHED_TYPES):  # fill what may be remembered, then measure what more events add
        rules.evaluate({"type": f"t{i}.x", "id": str(i), "data": {"n": i}}, now=float(i))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(MAX_CACHED_TYPES, 6 * MAX_CACHED_TYPES):
        rules.evaluate({"type": f"t{i}.x", "id": str(i), "data": {"n": i}}, now=float(i))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 2_000_000, f"{grown} bytes held after 20,000 new types and callers"


def test_missing_field_at_run_time_is_reported_not_raised() -> None:
    """An event lacking a templated field still fires; the action carries the error instead of a request."""
    rules, _ = load_rules([{**MISSED, "cooldown": None}], None, KNOWN)
    assert rules is not None
    event = call_ended()
    del event["data"]["from"]
    (firing,) = rules.evaluate(event, now=1.0)
    assert firing.requests == [] and len(firing.errors) == 2 and "data.from.number" in firing.errors[0]


# -- through the app -------------------------------------------------------------------------------------


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    return write_config(tmp_path / "rules.toml", {"rules": [MISSED]})


@pytest.fixture
def client(data_dir: Path, rules_file: Path) -> Iterator[TestClient]:
    """The app with recording stand-ins for the vendors' executors (these tests are about rules, not vendors):
    a test handler package registers them through the plugin surface."""
    raw = raw_config(data_dir)
    raw_top = {"rules_file": str(rules_file), **raw}
    app = app_for(build(config_from_dict(raw_top, env={}), plugins="tests.stub_plugins"))
    with TestClient(app) as c:
        yield c


def test_dry_run_answers_which_rules_fire_and_what_they_would_send(client: TestClient) -> None:
    """POST /v1/rules/test renders the actions without sending anything or touching counters."""
    r = client.post("/v1/rules/test", json=call_ended(), headers=ADMIN)
    assert r.status_code == 200, r.text
    (fired,) = r.json()["fired"]
    assert fired["rule"] == "missed-inbound-callback" and fired["actions"][1]["number"] == "0912345678"
    assert client.post("/v1/rules/test", json=call_ended(), headers=ADMIN).json()["fired"], "dry runs keep no cooldown"
    assert client.get("/v1/rules", headers=ADMIN).json()["rules"][0]["matched"] == 0
    assert client.post("/v1/rules/test", json={"data": {}}, headers=ADMIN).status_code == 422
    assert client.post("/v1/rules/test", json=call_ended(), headers=PUBLISHER).status_code == 403


def test_live_events_count_matches(client: TestClient) -> None:
    """A committed event that matches a rule shows in GET /v1/rules as matched, with when it last fired."""
    client.post("/v1/events", json=call_ended(), headers=PUBLISHER)
    client.post("/v1/events", json=call_ended(outcome="answered", number="1"), headers=PUBLISHER)
    wait_until(lambda: client.get("/v1/rules", headers=ADMIN).json()["rules"][0]["matched"] == 1, what="a match")
    assert client.get("/v1/rules", headers=ADMIN).json()["rules"][0]["last_fired"].endswith("Z")


def test_reload_with_a_broken_file_keeps_the_old_rules_and_says_why(client: TestClient, rules_file: Path) -> None:
    """A broken rules file on reload: 422 with the problems; the rules in force stay; a good file replaces them."""
    rules_file.write_text("[[rules]]\nname = \"broken\"\non = [\"call.ended\"]\nwhen = { \"data.x\" = { gte = \"a\" } }\n"
                          "[[rules.actions]]\ntype = \"webhook.post\"\n")
    r = client.post("/v1/rules/reload", headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_rules"
    assert r.json()["error"]["problems"][0]["rule"] == "broken"
    listed = client.get("/v1/rules", headers=ADMIN).json()
    assert [x["name"] for x in listed["rules"]] == ["missed-inbound-callback"] and listed["last_load"]["ok"] is False
    write_config(rules_file, {"rules": [{**MISSED, "name": "renamed"}]})
    assert client.post("/v1/rules/reload", headers=ADMIN).json() == {"loaded": 1}
    assert [x["name"] for x in client.get("/v1/rules", headers=ADMIN).json()["rules"]] == ["renamed"]


def test_check_reports_rule_problems_and_serve_refuses_them(tmp_path: Path) -> None:
    """`callhub check` lists each rule problem with file, rule and key, exits 1; so does `serve`."""
    rules_file = write_config(tmp_path / "rules.toml", {"rules": [{**MISSED, "name": "oops", "on": []}]})
    raw = raw_config(tmp_path / "data")
    config = tmp_path / "hub.toml"
    config.write_text(f'rules_file = "{rules_file}"\n' + write_config(tmp_path / "x.toml", raw).read_text())
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1 and "rule 'oops': on:" in result.stderr
    served = run_cli("serve", "--config", str(config), "--port", "0")
    assert served.returncode == 1 and "rule 'oops'" in served.stderr
    assert make_config(tmp_path / "d").rules == []
