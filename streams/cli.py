"""The `meterline` command: run the pipeline, feed it, govern it, query it."""

from __future__ import annotations

import csv
import io
import logging
import sys
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from streams import json
from streams.errors import MeterlineError
from streams.settings import Settings, get_settings

app = typer.Typer(
    help="meterline: metering and budget governance for AI token usage.\n\n"
    "Agents emit usage events to Kafka; a Faust worker validates, de-duplicates, "
    "prices and counts them per team and calendar period, fires budget breaches, "
    "and a sink stores every event in ClickHouse. Settings come from METERLINE_* "
    "environment variables (see README).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
warehouse_app = typer.Typer(
    help="The embedded ClickHouse warehouse.", no_args_is_help=True
)
budgets_app = typer.Typer(help="Publish and inspect budgets.", no_args_is_help=True)
import_app = typer.Typer(
    help="Import usage from agent harness logs.", no_args_is_help=True
)
schema_app = typer.Typer(
    help="The public contracts as JSON Schema.", no_args_is_help=True
)
app.add_typer(warehouse_app, name="warehouse")
app.add_typer(budgets_app, name="budgets")
app.add_typer(import_app, name="import")
app.add_typer(schema_app, name="schema")

console = Console(stderr=True)
out = Console()


def _setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        console.print(f"[red]invalid METERLINE_* setting:[/red] {exc}")
        raise typer.Exit(2) from exc


# -- the local stack -----------------------------------------------------------


@app.command()
def up() -> None:
    """Start broker, warehouse, worker and sink in the background (idempotent)."""
    from streams.local import Stack

    _setup_logging("warning")
    Stack(_settings()).up()


@app.command()
def down() -> None:
    """Stop everything `up` started."""
    from streams.local import Stack

    Stack(_settings()).down()


@app.command()
def reset() -> None:
    """Delete the local stack's data (broker, warehouse, logs); keeps the jars."""
    from streams.local import Stack

    for path in Stack(_settings()).reset():
        out.print(f"deleted {path}")


@app.command()
def status() -> None:
    """Say what runs where, with the worker's counters and consumer lag."""
    from streams.local import Stack, worker_get
    from streams.topics import consumer_lag

    settings = _settings()
    stack = Stack(settings)
    table = Table("service", "state", "address")
    for row in stack.status():
        table.add_row(*row)
    out.print(table)
    if stack.pid("worker") is not None:
        try:
            stats = worker_get(settings, "status")
        except OSError:
            out.print("worker: not answering yet")
        else:
            counts = ", ".join(f"{k} {v:,}" for k, v in stats["stats"].items())
            out.print(f"worker: {counts}; {stats['budgets']} budgets in force")
    if stack.pid("kafka") is not None:
        worker_lag = consumer_lag(settings, settings.app_id, [settings.topic_usage])
        sink_lag = consumer_lag(settings, settings.sink_group, settings.sink_topics)
        out.print(f"lag: worker {worker_lag:,}, sink {sink_lag:,} records")


@app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="info, warn, error or debug")] = "info",
) -> None:
    """Run the Faust worker in the foreground."""
    from streams.app import run_worker

    run_worker(_settings(), loglevel=loglevel)


@app.command()
def sink() -> None:
    """Run the ClickHouse sink in the foreground."""
    from streams.sink import run_sink

    _setup_logging()
    run_sink(_settings())


@app.command()
def migrate() -> None:
    """Create the database and apply pending schema migrations (idempotent)."""
    from streams.warehouse.client import migrate as run_migrate

    _setup_logging("warning")
    applied = run_migrate(_settings())
    out.print(
        f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}"
    )


@app.command()
def topics() -> None:
    """Create the pipeline's Kafka topics (existing ones are left alone)."""
    from streams.topics import ensure_topics

    created = ensure_topics(_settings())
    out.print(f"created {len(created)} topic(s): {', '.join(created) or 'all exist'}")


@warehouse_app.command("serve")
def warehouse_serve(
    path: Annotated[Path | None, typer.Option(help="chdb data directory")] = None,
) -> None:
    """Own the embedded ClickHouse (chdb) and serve its HTTP interface."""
    from streams.warehouse.server import serve

    _setup_logging()
    s = _settings()
    serve(path or s.var_dir / "warehouse", s.warehouse_host, s.warehouse_port)


# -- budgets -------------------------------------------------------------------


@budgets_app.command("apply")
def budgets_apply(
    file: Annotated[Path, typer.Argument(help="budgets YAML file")],
) -> None:
    """Publish the budgets in FILE; budgets no longer in it are removed."""
    from streams.governance import apply_budgets, load_budget_file

    budget_file = load_budget_file(file)
    result = apply_budgets(_settings(), budget_file)
    out.print(
        f"published {result.published} budget(s), removed {len(result.removed)}"
        + (f": {', '.join(result.removed)}" if result.removed else "")
    )


@budgets_app.command("list")
def budgets_list() -> None:
    """Show the budgets in force."""
    from streams.governance import read_budgets

    table = Table("id", "team", "period", "timezone", "tokens", "usd", "thresholds")
    for column in table.columns:
        # Ids and zones are what users copy; never cut them.
        column.no_wrap = column.header in ("id", "timezone")
        column.overflow = "fold"
    for b in read_budgets(_settings()):
        table.add_row(
            b.id,
            b.team,
            b.period,
            b.timezone,
            f"{b.tokens:,}" if b.tokens else "-",
            str(b.usd) if b.usd is not None else "-",
            ", ".join(str(t) for t in b.thresholds),
        )
    out.print(table)


# -- feeding the pipeline ------------------------------------------------------


@app.command()
def emit(
    file: Annotated[str, typer.Argument(help="canonical JSONL file, or - for stdin")],
) -> None:
    """Send canonical usage events (one JSON object per line) to Kafka."""
    from streams.emit import Emitter

    stream = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    with stream, Emitter(_settings()) as emitter:
        for line in stream:
            if line.strip():
                emitter.send_raw(_team_key(line), line.rstrip(b"\r\n"))
    out.print(f"sent {emitter.sent} event(s)")


def _team_key(line: bytes) -> bytes | None:
    try:
        team = json.loads(line).get("team")
    except (ValueError, AttributeError):
        return None
    return team.strip().encode() if isinstance(team, str) else None


@import_app.command("claude-code")
def import_claude_code(
    paths: Annotated[list[Path], typer.Argument(help="transcript files or folders")],
    team: Annotated[str, typer.Option(help="team to charge the usage to")],
    agent: Annotated[str | None, typer.Option(help="agent name")] = None,
    user: Annotated[str | None, typer.Option(help="user name")] = None,
    dry_run: Annotated[bool, typer.Option(help="print events, send nothing")] = False,
) -> None:
    """Import Claude Code session transcripts (~/.claude/projects/...)."""
    from streams.emit import Emitter
    from streams.importers.claude_code import read_transcripts

    result = read_transcripts(paths, team=team, agent=agent, user=user)
    if dry_run:
        for event in result.events:
            out.print_json(json.dumps(event).decode())
    else:
        with Emitter(_settings()) as emitter:
            emitter.send_all(result.events)
    out.print(
        f"{result.files} file(s), {result.responses} response(s) "
        f"({result.duplicate_lines} repeated lines folded, "
        f"{result.skipped_synthetic} synthetic and {result.skipped_malformed} "
        f"malformed lines skipped){'' if dry_run else ', sent'}"
    )
    if not dry_run:
        out.print(
            "ids already counted are dropped by the worker; an id re-sent with other "
            "content (another --team, say) goes to the dead letters as "
            "duplicate_conflict"
        )


@app.command()
def simulate(
    events: Annotated[
        int | None,
        typer.Option(
            help="number of events [default: sized by --tokens-per-day]", min=1
        ),
    ] = None,
    tokens_per_day: Annotated[
        float | None,
        typer.Option(help="size the run by fleet tokens per day [default: 2e9]", min=1),
    ] = None,
    span_minutes: Annotated[
        float, typer.Option(help="minutes of event time, ending now")
    ] = 180.0,
    teams: Annotated[int, typer.Option(help="number of teams", min=1)] = 4,
    agents: Annotated[int, typer.Option(help="agents per team", min=1)] = 5,
    rate: Annotated[float, typer.Option(help="events per second to send (0: max)")] = 0,
    seed: Annotated[
        int,
        typer.Option(
            help="random seed: the same seed and end time give the same events"
        ),
    ] = 7,
) -> None:
    """Generate a believable fleet's usage (heavy tails, bursts, a runaway)."""
    from streams.simulate import Fleet, send_fleet

    if events is not None and tokens_per_day is not None:
        raise typer.BadParameter("give --events or --tokens-per-day, not both")
    fleet = Fleet(teams=teams, agents_per_team=agents, seed=seed)
    span = timedelta(minutes=span_minutes)
    if events is None:
        day_share = span / timedelta(days=1)
        per_call = fleet.mean_tokens_per_call()
        events = int((tokens_per_day or 2e9) * day_share / per_call) or 1
    sent = send_fleet(_settings(), fleet, events, span=span, rate=rate)
    out.print(
        f"sent {sent} simulated event(s) over {span_minutes:g} minutes of event time"
    )


# -- analysis ------------------------------------------------------------------


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL to run in the warehouse")],
    fmt: Annotated[Format, typer.Option("--format", "-f")] = Format.table,
) -> None:
    """Run an SQL query in ClickHouse and print the answer."""
    from streams.warehouse.client import connect

    if not query.strip():
        raise typer.BadParameter('give an SQL query, e.g. "SELECT 1"')
    result = connect(_settings()).query(query)
    print_rows(list(result.column_names), result.result_rows, fmt)


def print_rows(columns: list[str], rows: list[Any], fmt: Format) -> None:
    """Print query results as a table, CSV or JSON lines."""
    if fmt is Format.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(rows)
        sys.stdout.write(buffer.getvalue())
    elif fmt is Format.json:
        for row in rows:
            sys.stdout.write(
                json.dumps(
                    dict(zip(columns, row, strict=True)),
                ).decode()
                + "\n"
            )
    else:
        table = Table(*columns)
        for row in rows:
            table.add_row(*(str(v) for v in row))
        out.print(table)


@schema_app.command("export")
def schema_export(
    directory: Annotated[
        Path, typer.Argument(help="where to write *.schema.json")
    ] = Path("schemas/json"),
) -> None:
    """Write the JSON Schemas of the usage event, budget file and breach."""
    from schemas.export import export_all

    for path in export_all(directory):
        out.print(f"wrote {path}")


@app.command()
def demo(
    keep: Annotated[
        bool, typer.Option(help="leave the stack running at the end")
    ] = False,
    events: Annotated[int, typer.Option(help="simulated events")] = 20_000,
) -> None:
    """The main job: a fleet's usage through the real stack, checked end to end."""
    from streams.demo import run_demo

    _setup_logging("warning")
    code = run_demo(_settings(), keep=keep, events=events)
    raise typer.Exit(code)


def main() -> None:
    """Console entry point: known failures become one clear line and exit 1."""
    from clickhouse_connect.driver.exceptions import ClickHouseError
    from kafka.errors import KafkaError

    try:
        app()
    except MeterlineError as exc:
        _fail(str(exc))
    except ClickHouseError as exc:
        _fail(f"ClickHouse said: {_first_line(exc)}")
    except KafkaError as exc:
        bootstrap = get_settings().kafka_bootstrap
        _fail(
            f"Kafka at {bootstrap} failed: {_first_line(exc)}. Is the broker running "
            "(`meterline up`), or is METERLINE_KAFKA_BOOTSTRAP right?"
        )
    except FileNotFoundError as exc:
        _fail(f"no such file or folder: {exc.filename or exc}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    sys.exit(1)


if __name__ == "__main__":
    main()
