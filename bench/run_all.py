"""Run the standard fan-out and webhook-ingest scenarios side by side and report medians.

    python -m bench.run_all [--repeat 3] [--pin] [--rate R] [--only ws-100,idle-5000|fanout|ingest|deliver] [--out bench/results]
                            [--variant before=/path/to/old/checkout --variant after=.]

Each run starts a fresh hub (SQLite in a temporary directory, the config below) through
`bench.fanout --spawn-cmd` or `bench.ingest --spawn-cmd`, so every RSS figure starts from a new
process and every ingest run from an empty store. With `--pin` (and
`taskset` present) the hub runs on core 0 and the load client on the other cores, so the two
compete less for the same core; the report says which was used.

With `--variant NAME=DIR` (twice or more), every scenario runs once per variant in each round,
the hub's code imported from DIR (a checkout, e.g. `git worktree add /tmp/before <commit>`), and
the report shows each variant's medians side by side with the ratio of each to the first:
before/after comparisons in one interleaved run, so the machine's drift touches both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = "bench-admin-key-0123456789abcdef"
#: The `[[sources]]` entry bench.ingest posts to.
WEBHOOK_SOURCE = "bench-hook"  # not "bench": bench.fanout publishes under that source, and webhook sources are reserved
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
    # ingest-64 with 10 active outbound subscriptions (see `subscriptions_toml`) that the webhooks
    # do not pass: what having subscriptions costs the ingest path.
    "ingest-64-subs10": ("ingest", ["--senders", "64"]),
    # Outbound deliveries: one endpoint taking a burst, and 50 endpoints at 50 events/s (2,500 deliveries/s).
    # Two hub processes on one Redis (docs/SCALING.md): events published to the first, half of the
    # subscribers (or senders) on each; run beside ws-100 / ingest-64 for the cost of the Redis hop.
    # Only when named (`--only ws-100,ws-100-redis2` or `--only redis`): they need `redis-server`.
    "ws-100-redis2": ("fanout", ["--ws", "100", "--events", "2000", "--rate", "500"]),
    "ingest-64-redis2": ("ingest", ["--senders", "64"]),
    "deliver-1": ("deliver", ["--endpoints", "1", "--events", "5000", "--rate", "2500"]),
    "deliver-50": ("deliver", ["--endpoints", "50", "--events", "1000", "--rate", "50"]),
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
    "not_ok", "latency_p90_ms", "latency_max_ms", "receiver_cpu_pct",
    "latency_p50_ms_same_hub", "latency_p99_ms_same_hub", "latency_p50_ms_other_hub", "latency_p99_ms_other_hub",
)
#: Lets deliveries reach the bench's endpoints on loopback (scenarios that need it).
WEBHOOKS_TOML = """
[webhooks]
allow_hosts = ["127.0.0.1"]
"""
CONFIG = """
[backend]
synchronous = "{synchronous}"
[server]
data_dir = "{data}"
log_level = "warning"
[retention]
interval = "1h"
[streams]
max_per_credential = 0      # the load client opens every connection with one key
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
on = ["bench.*"]
when = {{ "data.status" = "never-sent-by-the-bench" }}
[[rules.actions]]
type = "webhook.post"
url = "https://hooks.example.com/bench"
""")
    return "".join(rules)


def subscriptions_toml(count: int) -> str:
    """`count` declared subscriptions: half to call events (never published by the bench), half to
    the bench's own type with a filter its webhooks never pass, so the commit hook parses each
    webhook once and those workers test the filter, as they would for a busy centre's CRM."""
    out = [WEBHOOKS_TOML]
    for i in range(count):
        types, extra = ('["call.*"]', "") if i % 2 else ('["bench.*"]', 'filter = { "data.status" = "never-sent" }\n')
        out.append(f"""
[[webhooks.subscriptions]]
id = "bench-{i}"
url = "http://127.0.0.1:9/hook-{i}"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
types = {types}
{extra}""")
    return "".join(out)


class RedisServer:
    """Debian's `redis-server` on a free loopback port for the `-redis2` scenarios, with the
    persistence docs/SCALING.md asks for (AOF, `appendfsync always`: an fsync per write, as the
    local backend's `synchronous = full`)."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("the -redis2 scenarios need redis-server (Debian: apt-get install redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        directory = workdir / "redis"
        directory.mkdir()
        # Pinned runs put Redis with the load, off the hub's core: it stands for a server of its own.
        self.proc = subprocess.Popen(
            [*(["taskset", "-c", "1-1024"] if pin else []), binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


#: The Redis server of this run, started when a -redis2 scenario is selected.
REDIS: RedisServer | None = None


def run_once(name: str, workdir: Path, pin: bool, index: int, synchronous: str,
             source: Path | None = None, label: str = "", rate: float | None = None) -> dict[str, Any]:
    tag = f"{name}-{label}-{index}" if label else f"{name}-{index}"
    data = workdir / tag
    config = workdir / f"{tag}.toml"
    text = CONFIG.format(data=data, key=KEY, synchronous=synchronous, source=WEBHOOK_SOURCE, secret=WEBHOOK_SECRET)
    redis = name.endswith("-redis2")
    if redis:
        assert REDIS is not None
        text = text.replace(f'synchronous = "{synchronous}"', f'url = "{REDIS.url}"\nprefix = "{tag}:"')
    if name.endswith("-rules"):
        text += rules_toml(RULE_COUNT)
    if name.endswith("-subs10"):
        text += subscriptions_toml(10)
    if name.startswith("deliver"):
        text += WEBHOOKS_TOML
    config.write_text(text)
    if redis:  # the second process: its own data directory, the same Redis keys
        config2 = workdir / f"{tag}-2.toml"
        config2.write_text(text.replace(f'data_dir = "{data}"', f'data_dir = "{data}-2"'))
    hub_prefix = "taskset -c 0 " if pin else ""
    client_prefix = ["taskset", "-c", "1-1024"] if pin else []
    out = workdir / f"{tag}.json"
    module, scenario_args = SCENARIOS[name]
    if rate is not None and "--rate" in scenario_args:  # --rate: the same scenario at another publish rate
        at = scenario_args.index("--rate") + 1
        scenario_args = [*scenario_args[:at], str(rate), *scenario_args[at + 1:]]
    # -P: the hub's code comes from PYTHONPATH (the variant's checkout), not from the working directory.
    python = f"env PYTHONPATH={source.resolve()} {{python}} -P" if source is not None else "{python}"
    if module == "ingest":
        credentials = ["--source", WEBHOOK_SOURCE, "--token", WEBHOOK_SECRET]
    else:
        credentials = ["--key", KEY]
    cmd = [
        *client_prefix, sys.executable, "-m", f"bench.{module}", *credentials, *scenario_args,
        "--spawn-cmd", f"{hub_prefix}{python} -m hub serve --config {config} --port {{port}}",
        "--json", str(out),
    ]
    if redis:  # both hub processes share core 0, as the one process of the local scenario has it alone
        cmd += ["--spawn-cmd2", f"{hub_prefix}{python} -m hub serve --config {config2} --port {{port}}"]
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
    """Scenario names from --only; `fanout`, `ingest` and `deliver` stand for all scenarios of that benchmark."""
    if not only:
        return [n for n in SCENARIOS if not n.endswith("-redis2")]
    names: list[str] = []
    for item in only.split(","):
        group = [n for n, (module, _) in SCENARIOS.items()
                 if (module == item and not n.endswith("-redis2")) or (item == "redis" and n.endswith("-redis2"))]
        if not group and item not in SCENARIOS:
            parser.error(f"unknown scenario {item!r}; known: {', '.join(SCENARIOS)}, fanout, ingest")
        names += [n for n in group or [item] if n not in names]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--pin", action="store_true", help="hub on core 0, client on the others (taskset)")
    parser.add_argument("--only", help="comma-separated scenario names, or fanout / ingest / deliver for a whole group")
    parser.add_argument(
        "--synchronous", choices=("full", "normal"), default="full",
        help="the hub's backend.synchronous (full: fsync per commit, the default)",
    )
    parser.add_argument("--rate", type=float, help="publish rate (events/s) of the scenarios that have one, instead of theirs")
    parser.add_argument("--out", type=Path, help="directory for the raw JSON of every run and the summary")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="run the hub from this checkout too (repeatable; compared with the first)")
    args = parser.parse_args(argv)
    pin = args.pin and shutil.which("taskset") is not None
    names = select(args.only, parser)
    variants = parse_variants(args.variant, parser)
    summary: dict[str, dict[str, Any]] = {}
    global REDIS
    with tempfile.TemporaryDirectory(prefix="callhub-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        if any(n.endswith("-redis2") for n in names):
            REDIS = RedisServer(workdir, pin)
            stack.callback(REDIS.stop)
        # Interleaved (A, B, A, B, ...), so slow drift of a noisy machine touches every scenario alike.
        keys = [(name, label) for name in names for label in variants]
        all_runs: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in keys}
        for i in range(args.repeat):
            for name, label in keys:
                all_runs[(name, label)].append(run_once(name, workdir, pin, i, args.synchronous, variants[label], label,
                                                            args.rate))
        for (name, label), runs in all_runs.items():
            key = f"{name}@{label}" if label else name
            summary[key] = {f: median([r.get(f) for r in runs]) for f in FIGURES if any(f in r for r in runs)}
            summary[key]["runs"] = len(runs)
            print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in summary[key].items()), flush=True)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{key}.runs.json").write_text(json.dumps(runs, indent=1))
    if len(variants) > 1:
        print("\n" + compare(summary, names, list(variants)))
    rate = "" if args.rate is None else f"; rate: {args.rate:g}/s"
    print(f"\nmedians of {args.repeat} run(s) each; pinned: {pin}; synchronous: {args.synchronous}{rate}")
    if args.out:
        meta = {"pinned": pin, "synchronous": args.synchronous, "repeat": args.repeat, "rate": args.rate,
                "variants": {k: str(v) for k, v in variants.items() if v is not None}}
        (args.out / "summary.json").write_text(json.dumps({**meta, "scenarios": summary}, indent=1))
    return 0


def parse_variants(specs: list[str], parser: argparse.ArgumentParser) -> dict[str, Path | None]:
    """`NAME=DIR` specs in order; none means the one hub of this checkout (label "")."""
    if not specs:
        return {"": None}
    variants: dict[str, Path | None] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not (Path(path) / "hub" / "__init__.py").is_file():
            parser.error(f"--variant {spec!r}: expected NAME=DIR with DIR a checkout holding hub/")
        variants[label] = Path(path)
    return variants


#: Figures compared between variants, and which way is better.
COMPARED = (("deliveries_per_s", "higher"), ("webhooks_per_s", "higher"), ("latency_p50_ms", "lower"),
            ("latency_p99_ms", "lower"), ("ack_p50_ms", "lower"), ("ack_p99_ms", "lower"),
            ("hub_cpu_us_per_delivery", "lower"), ("hub_cpu_us_per_webhook", "lower"),
            ("hub_rss_per_conn_kib", "lower"), ("lost", "lower"))


def compare(summary: dict[str, dict[str, Any]], names: list[str], labels: list[str]) -> str:
    """A table per scenario: each variant's medians, and each one's ratio to the first variant."""
    first = labels[0]
    lines = ["| scenario | figure | " + " | ".join(labels) + " | " + " | ".join(f"{v}/{first}" for v in labels[1:]) + " |",
             "|---|---|" + "---|" * (2 * len(labels) - 1)]
    for name in names:
        for figure, _ in COMPARED:
            values = [summary[f"{name}@{label}"].get(figure) for label in labels]
            if values[0] is None:
                continue
            ratios = [f"{v / values[0]:.3f}" if v is not None and values[0] else "" for v in values[1:]]
            lines.append(f"| {name} | {figure} | " + " | ".join(str(v) for v in values) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
