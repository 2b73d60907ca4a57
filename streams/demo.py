"""`meterline demo`: a fleet's usage through the real stack, checked end to end.

1. start the local stack (broker, warehouse, worker, sink) and apply budgets;
2. send a simulated fleet, the bundled Claude Code transcripts, a few duplicates
   and a few bad records, while a live per-team view and breaches print;
3. wait until worker and sink have consumed everything;
4. compare per-team totals in ClickHouse with the worker's live totals: equal,
   or exit non-zero.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

from kafka import KafkaConsumer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streams import json
from streams.emit import Emitter
from streams.governance import apply_budgets, load_budget_file
from streams.importers.claude_code import read_transcripts
from streams.local import ROOT, Stack, worker_get
from streams.settings import Settings
from streams.simulate import Fleet, send_fleet
from streams.topics import consumer_lag
from streams.warehouse.client import connect

console = Console()
EXAMPLES = ROOT / "examples"
#: How long the demo waits for the pipeline to drain before giving up.
DRAIN_TIMEOUT_S = 300.0

BAD_RECORDS: list[tuple[str, bytes]] = [
    ("not JSON", b"\x00\x01 definitely not json"),
    ("not UTF-8", b'{"team": "\xff\xfe"}'),
    ("a JSON list", b"[1, 2, 3]"),
    ("no team", b'{"schema_version": 1, "event_id": "demo-bad-1", '
                b'"ts": "2026-01-01T00:00:00Z", "tokens": {"out_visible": 5}}'),
    ("negative tokens", b'{"schema_version": 1, "event_id": "demo-bad-2", '
                        b'"ts": "2026-01-01T00:00:00Z", "team": "research", '
                        b'"tokens": {"out_visible": -5}}'),
    ("schema version 9", b'{"schema_version": 9, "event_id": "demo-bad-3", '
                         b'"team": "research"}'),
]  # fmt: skip


def run_demo(settings: Settings, *, keep: bool, events: int) -> int:
    """Run the demo; returns the process exit code (0 when totals match)."""
    stack = Stack(settings)
    console.rule("[bold]meterline demo")
    console.print("starting the local stack (broker, warehouse, worker, sink)")
    started = stack.up(on_progress=lambda m: console.print(f"  {m}"))
    try:
        return _run(settings, events)
    finally:
        if keep or not started:
            console.print(
                "the stack keeps running: `meterline status`, `meterline down`"
            )
        else:
            console.print(
                f"stopping what the demo started: {', '.join(started)} "
                "(use --keep to explore the stack afterwards)"
            )
            for name in reversed(started):
                stack.stop(name, on_progress=lambda m: console.print(f"  {m}"))


def _run(settings: Settings, events: int) -> int:
    budgets = load_budget_file(EXAMPLES / "budgets.yaml")
    apply_budgets(settings, budgets)
    console.print(f"applied {len(budgets.budgets)} budgets from examples/budgets.yaml")
    breaches = _BreachPrinter(settings)
    breaches.start()
    time.sleep(1.0)

    seed = random.SystemRandom().randrange(1, 10**6)
    fleet = Fleet(teams=4, agents_per_team=5, seed=seed)
    console.print(
        f"simulating {events:,} calls of {len(fleet.agents)} agents over 3 hours of "
        f"event time (seed {seed}); research-agent-00 is a runaway"
    )
    progress = {"sent": 0, "worker_lag": -1, "sink_lag": -1}
    produced = threading.Event()

    def produce() -> None:
        send_fleet(
            settings,
            fleet,
            events,
            span=timedelta(hours=3),
            on_progress=lambda n: progress.__setitem__("sent", n),
        )
        progress["sent"] = events
        _send_extras(settings)
        produced.set()

    threading.Thread(target=produce, daemon=True).start()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    drained = False
    with Live(console=console, refresh_per_second=2) as live:
        while time.monotonic() < deadline:
            if produced.is_set():
                progress["worker_lag"] = consumer_lag(
                    settings, settings.app_id, [settings.topic_usage]
                )
                progress["sink_lag"] = consumer_lag(
                    settings, settings.sink_group, settings.sink_topics
                )
                drained = progress["worker_lag"] == 0 and progress["sink_lag"] == 0
            live.update(_live_table(settings, progress, events))
            if drained:
                break
            time.sleep(0.5)
    breaches.stop()
    console.print()
    if not drained:
        console.print("[red]the pipeline did not drain in time; see var/log/[/red]")
        return 1
    return _compare(settings)


def _send_extras(settings: Settings) -> None:
    transcripts = read_transcripts([EXAMPLES / "claude-code"], team="platform")
    with Emitter(settings) as emitter:
        emitter.send_all(transcripts.events)
        emitter.send_all(transcripts.events[:3])  # a retry storm: counted once
        for _, payload in BAD_RECORDS:
            emitter.send_raw(b"research", payload)
    console.print(
        f"imported {transcripts.responses} Claude Code responses from "
        f"examples/claude-code (+3 duplicates), and sent {len(BAD_RECORDS)} bad "
        f"records: {', '.join(name for name, _ in BAD_RECORDS)}"
    )


def _live_table(settings: Settings, progress: dict[str, int], total: int) -> Table:
    lag = ""
    if progress["worker_lag"] >= 0:
        lag = (
            f" · lag: worker {progress['worker_lag']:,}, sink {progress['sink_lag']:,}"
        )
    table = Table(
        "team", "events", "tokens", "USD", "no price", "this period",
        title=f"live totals from the worker · sent {progress['sent']:,}/{total:,}{lag}",
        caption="USD counts priced events only; 'no price' events have unknown "
        "cost. 'this period' is the share of each budget used in its current period.",
    )  # fmt: skip
    try:
        totals = worker_get(settings, "totals")
    except OSError:
        return table
    for team in sorted(totals):
        row = totals[team]
        used = []
        for b in row.get("budgets", []):
            if b["tokens_limit"]:
                used.append(f"{100 * b['tokens'] / b['tokens_limit']:.0f}% tok")
            if b["usd_limit"]:
                used.append(
                    f"{100 * Decimal(b['usd']) / Decimal(b['usd_limit']):.0f}% $"
                )
        table.add_row(
            team,
            f"{row['events']:,}",
            f"{row['tokens']:,}",
            f"{Decimal(row['usd']):,.2f}",
            str(row["unknown_cost_events"]),
            ", ".join(used),
        )
    return table


def _pair(worker: Any, stored: Any) -> str:
    shown = f"{worker:,}" if isinstance(worker, int) else f"{worker:,.6f}"
    return shown if worker == stored else f"{shown} ≠ {stored}"


class _BreachPrinter(threading.Thread):
    """Prints breaches from the breach topic as they arrive."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self._stop_event = threading.Event()
        self.seen = 0

    def run(self) -> None:
        consumer = KafkaConsumer(
            self.settings.topic_breaches,
            bootstrap_servers=self.settings.kafka_bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
        )
        try:
            while not self._stop_event.is_set():
                for records in consumer.poll(timeout_ms=300).values():
                    for record in records:
                        self._print(json.loads(record.value))
        finally:
            consumer.close()

    def _print(self, b: dict[str, Any]) -> None:
        self.seen += 1
        colour = {"info": "cyan", "warning": "yellow", "critical": "red"}[b["severity"]]
        unit = "tokens" if b["measure"] == "tokens" else "USD"
        console.print(
            f"[{colour}]BREACH {b['severity']}[/{colour}] {b['budget_id']}: "
            f"{b['team']} passed {Decimal(b['threshold']):.0%} of "
            f"{Decimal(b['limit']):,.0f} {unit} per {b['period']} (now at "
            f"{Decimal(b['ratio']):.0%}; {b['period']} from {b['period_start']})",
            highlight=False,
        )

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _compare(settings: Settings) -> int:
    live = worker_get(settings, "totals")
    client = connect(settings)
    stored = {
        row[0]: row[1:]
        for row in client.query(
            "SELECT team, count(), sum(tokens_total), sum(cost_usd) "
            "FROM usage_events GROUP BY team ORDER BY team"
        ).result_rows
    }
    table = Table(
        "team", "events (worker = ClickHouse)", "tokens", "USD", "match",
        title="worker live totals vs ClickHouse",
    )  # fmt: skip
    ok = True
    for team in sorted(set(live) | set(stored)):
        w = live.get(team, {"events": 0, "tokens": 0, "usd": "0"})
        c_events, c_tokens, c_usd = stored.get(team, (0, 0, Decimal(0)))
        w_usd, c_usd = Decimal(w["usd"]), Decimal(c_usd or 0)
        same = w["events"] == c_events and w["tokens"] == c_tokens and w_usd == c_usd
        ok &= same
        table.add_row(
            team,
            _pair(w["events"], c_events),
            _pair(w["tokens"], c_tokens),
            _pair(w_usd, c_usd),
            "[green]yes[/green]" if same else "[red]NO[/red]",
        )
    console.print(table)
    dead = client.query(
        "SELECT reason, count() FROM dead_letters GROUP BY reason ORDER BY reason"
    ).result_rows
    console.print(
        "dead letters in ClickHouse: " + ", ".join(f"{r}={n}" for r, n in dead)
    )
    breaches = client.query(
        "SELECT count(), uniqExact(breach_id) FROM budget_breaches"
    ).result_rows[0]
    console.print(
        f"breaches in ClickHouse: {breaches[0]} rows, {breaches[1]} distinct ids"
    )
    ok &= breaches[0] == breaches[1]
    if ok:
        console.print(
            "[bold green]ClickHouse matches the worker's live totals exactly."
        )
        return 0
    console.print("[bold red]ClickHouse and the worker disagree.")
    return 1
