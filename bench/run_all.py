"""Run the standard fan-out and webhook-ingest scenarios side by side and report medians.

    python -m bench.run_all [--repeat 3] [--pin] [--only ws-100,idle-5000|fanout|ingest] [--out bench/results]

Each run starts a fresh hub (SQLite in a temporary directory, the config below) through
`bench.fanout --spawn-cmd` or `bench.ingest --spawn-cmd`, so every RSS figure starts from a new
process and every ingest run from an empty store. With `--pin` (and
`taskset` present) the hub runs on core 0 and the load client on the other cores, so the two
compete less for the same core; the report says which was used.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

KEY = "bench-admin-key-0123456789abcdef"
#: The `[[sources]]` entry bench.ingest posts to.
WEBHOOK_SOURCE = "bench"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
#: name -> (bench module, its arguments).
SCENARIOS: dict[str, tuple[str, list[str]]] = {
    "ws-100": ("fanout", ["--ws", "100", "--events", "2000", "--rate", "500"]),
    "ws-1000": ("fanout", ["--ws", "1000", "--events", "1000", "--rate", "200"]),
    "sse-1000": ("fanout", ["--sse", "1000", "--events", "1000", "--rate", "200"]),
    "idle-5000": ("fanout", ["--ws", "5000", "--idle"]),
    # 10 s measured after a 2 s warm-up, one concurrency level per run (so each gets a fresh hub).
    "ingest-1": ("ingest", ["--senders", "1"]),
    "ingest-16": ("ingest", ["--senders", "16"]),
    "ingest-64": ("ingest", ["--senders", "64"]),
    "ingest-64-dup": ("ingest", ["--senders", "64", "--duplicates", "0.1"]),
    # ingest-64 with RULE_COUNT rules in the config (see `rules_toml`): what evaluating them costs.
    "ingest-64-rules": ("ingest", ["--senders", "64"]),
}
#: Rules in the `ingest-64-rules` scenario's config.
RULE_COUNT = 200
#: The figures worth a median, in report order (each scenario shows those its runs have).
FIGURES = (
    "delivered", "lost", "duplicates", "deliveries_per_s", "publish_rate_achieved",
    "latency_p50_ms", "latency_p99_ms", "hub_fanout_p50_le_ms", "hub_fanout_p99_le_ms",
    "hub_cpu_us_per_delivery", "hub_rss_per_conn_kib", "client_cpu_us_per_delivery",
    "webhooks_per_s", "errors", "ack_p50_ms", "ack_p90_ms", "ack_p99_ms", "ack_max_ms",
    "dup_ack_p50_ms", "dup_ack_p99_ms", "hub_cpu_pct", "hub_cpu_us_per_webhook", "client_cpu_us_per_webhook", "client_cpu_pct",
    "client_worker_cpu_pct", "machine_busy_pct", "other_processes_cpu_s",
)
CONFIG = """
[backend]
synchronous = "{synchronous}"
[server]
data_dir = "{data}"
log_level = "warning"
[retention]
interval = "1h"
[auth]
jwt_secret = "bench-jwt-secret-0123456789abcdef0123456789"
[[auth.keys]]
key = "{key}"
role = "admin"
[[sources]]
name = "{source}"
verify = "token"
secret = "{secret}"
id = "delivery_id"
type = "bench.webhook"
"""


def rules_toml(count: int) -> str:
    """`count` rules as a contact centre might write them, none of which fires for the bench's webhooks.

    All but one name other event types (exact types and globs, so both halves of the index are
    exercised); one names `bench.webhook` itself, with a condition its events never meet, so every
    webhook is evaluated against one rule, as an event type with a rule of its own would be.
    """
    types = ['"call.ended"', '"call.ringing"', '"campaign.*"', '"call.answered", "call.bridged"', '"action.failed"']
    outcomes = ['["no_answer", "cancelled"]', '"no_answer"', '["busy", "no_answer"]']
    rules = []
    for i in range(count - 1):
        # Conditions vary from rule to rule (some shared, as in a real rule set), so none is free.
        direction = ("inbound", "outbound")[i % 2]
        rules.append(f"""
[[rules]]
name = "rule-{i}"
on = [{types[i % len(types)]}]
when = {{ "data.direction" = "{direction}", "data.outcome" = {outcomes[i % 3]}, "data.duration_s" = {{ gte = {3 + i % 7} }} }}
[[rules.actions]]
type = "webhook.post"
url = "https://hooks.example.com/rule-{i}"
body = {{ text = "Missed call from {{data.from.number}}" }}
""")
    rules.append(f"""
[[rules]]
name = "rule-{count - 1}"
on = ["{WEBHOOK_SOURCE}.*"]
when = {{ "data.status" = "never-sent-by-the-bench" }}
[[rules.actions]]
type = "webhook.post"
url = "https://hooks.example.com/bench"
""")
    return "".join(rules)


def run_once(name: str, workdir: Path, pin: bool, index: int, synchronous: str) -> dict[str, Any]:
    data = workdir / f"{name}-{index}"
    config = workdir / f"{name}-{index}.toml"
    text = CONFIG.format(data=data, key=KEY, synchronous=synchronous, source=WEBHOOK_SOURCE, secret=WEBHOOK_SECRET)
    if name.endswith("-rules"):
        text += rules_toml(RULE_COUNT)
    config.write_text(text)
    hub_prefix = "taskset -c 0 " if pin else ""
    client_prefix = ["taskset", "-c", "1-1024"] if pin else []
    out = workdir / f"{name}-{index}.json"
    module, scenario_args = SCENARIOS[name]
    if module == "ingest":
        credentials = ["--source", WEBHOOK_SOURCE, "--token", WEBHOOK_SECRET]
    else:
        credentials = ["--key", KEY]
    cmd = [
        *client_prefix, sys.executable, "-m", f"bench.{module}", *credentials, *scenario_args,
        "--spawn-cmd", f"{hub_prefix}{{python}} -m hub serve --config {config} --port {{port}}",
        "--json", str(out),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    if module == "ingest":  # one concurrency level per scenario: its figures, flat like fanout's
        levels = result.pop("levels")
        result.update(levels[0])
    return result


def median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    if not values:
        return None
    if isinstance(values[0], list):  # per-worker percentages: median of each run's maximum
        return statistics.median(max(v) for v in values if v)
    return round(statistics.median(values), 3)


def select(only: str | None, parser: argparse.ArgumentParser) -> list[str]:
    """Scenario names from --only; `fanout` and `ingest` stand for all scenarios of that benchmark."""
    if not only:
        return list(SCENARIOS)
    names: list[str] = []
    for item in only.split(","):
        group = [n for n, (module, _) in SCENARIOS.items() if module == item]
        if not group and item not in SCENARIOS:
            parser.error(f"unknown scenario {item!r}; known: {', '.join(SCENARIOS)}, fanout, ingest")
        names += [n for n in group or [item] if n not in names]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--pin", action="store_true", help="hub on core 0, client on the others (taskset)")
    parser.add_argument("--only", help="comma-separated scenario names, or fanout / ingest for a whole group")
    parser.add_argument(
        "--synchronous", choices=("full", "normal"), default="full",
        help="the hub's backend.synchronous (full: fsync per commit, the default)",
    )
    parser.add_argument("--out", type=Path, help="directory for the raw JSON of every run and the summary")
    args = parser.parse_args(argv)
    pin = args.pin and shutil.which("taskset") is not None
    names = select(args.only, parser)
    summary: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="callhub-bench-") as tmp:
        workdir = Path(tmp)
        # Interleaved (A, B, A, B, ...), so slow drift of a noisy machine touches every scenario alike.
        all_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for i in range(args.repeat):
            for name in names:
                all_runs[name].append(run_once(name, workdir, pin, i, args.synchronous))
        for name, runs in all_runs.items():
            summary[name] = {f: median([r.get(f) for r in runs]) for f in FIGURES if any(f in r for r in runs)}
            summary[name]["runs"] = len(runs)
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in summary[name].items()), flush=True)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{name}.runs.json").write_text(json.dumps(runs, indent=1))
    print(f"\nmedians of {args.repeat} run(s) each; pinned: {pin}; synchronous: {args.synchronous}")
    if args.out:
        meta = {"pinned": pin, "synchronous": args.synchronous, "repeat": args.repeat}
        (args.out / "summary.json").write_text(json.dumps({**meta, "scenarios": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
