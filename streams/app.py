"""The Faust worker: intake, pricing, accounting and budgets for each usage event.

Reads `meterline.usage` (keyed by team, so a team's events arrive in order on one
partition) and writes:

* `meterline.usage.accepted`  each accepted event, priced, for the warehouse sink;
* `meterline.usage.dlq`       each rejected record, with its reason and bytes;
* `meterline.breaches`        each budget threshold crossed, once.

State lives in two Faust tables backed by changelog topics: `teams` (one
`TeamState` per team) and `seen` (event ids within the de-duplication horizon).
Delivery is at least once; every output is idempotent by id (event id, breach id),
so a replay after a crash may repeat a record but never changes a total.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.web import Request, Response, View

from schemas.breach import BreachEvent
from schemas.budget import Budget
from schemas.deadletter import Reason
from schemas.usage import AcceptedUsage, UsageEvent
from streams import json
from streams.accounting import TeamState, apply, to_ms
from streams.budgets import BudgetRegistry, calendars_of, evaluate
from streams.dedupe import Expiry
from streams.governance import parse_budget_record, read_budgets
from streams.intake import RejectedError, Source, dead_letter, decode, fingerprint
from streams.periods import period_of
from streams.pricing import Pricer, load_overrides
from streams.settings import Settings
from streams.topics import OUTPUT_FACTOR

logger = logging.getLogger(__name__)

#: How often, per partition, remembered ids past the horizon are forgotten.
SEEN_SWEEP_SECONDS = 30.0
#: Pause before the budgets reader reconnects after an error.
BUDGET_RETRY_SECONDS = 5.0


class Worker:
    """The worker's parts, built from settings; `app` is the Faust app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pricer = Pricer(load_overrides(settings.price_overrides_file))
        self.registry = BudgetRegistry()
        self.budgets_ready = asyncio.Event()
        self.stats: dict[str, int] = dict.fromkeys(
            ("accepted", "duplicates", "dead_lettered", "breaches"), 0
        )
        self.expiry = Expiry(
            settings.dedupe_horizon_s * 1000, every_s=SEEN_SWEEP_SECONDS
        )
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=[f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",")],
            store="memory://",
            topic_partitions=s.usage_partitions,
            topic_replication_factor=s.replication_factor,
            topic_allow_declare=True,
            web_host="127.0.0.1",
            web_bind="127.0.0.1",
            web_port=s.worker_web_port,
            web_in_thread=False,
            producer_acks=-1,
            # Dead letters carry oversized inputs in base64; they must fit.
            producer_max_request_size=OUTPUT_FACTOR * s.max_message_bytes + 65536,
            consumer_auto_offset_reset="earliest",
            # Standby copies would share the in-memory store with active
            # partitions and be counted in /meterline/totals; recovery from the
            # changelog on restart is enough at this scale.
            table_standby_replicas=0,
        )
        self.usage_topic = _raw_topic(app, s.topic_usage)
        self.accepted_topic = _raw_topic(app, s.topic_accepted)
        self.dlq_topic = _raw_topic(app, s.topic_dlq)
        self.breaches_topic = _raw_topic(app, s.topic_breaches)
        schema: faust.Schema[str, Any] = faust.Schema(
            key_serializer="json", value_serializer="json"
        )
        self.teams = app.Table("teams", partitions=s.usage_partitions, schema=schema)
        self.seen = app.Table("seen", partitions=s.usage_partitions, schema=schema)
        app.agent(self.usage_topic, name="meterline.intake")(self._process)
        app.task(self._follow_budgets)
        self._add_pages(app)
        return app

    # -- the stream -------------------------------------------------------

    async def _process(self, stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        # Never block here: records Faust fetched while an agent waits can be
        # dropped from its buffers at the end of recovery (budgets are loaded
        # before the app starts, see `run_worker`).
        async for record in stream.events():
            message = record.message
            source = Source(
                message.topic, message.partition, message.offset, message.key
            )
            try:
                await self.handle(message.value, source)
            except Exception as exc:
                # One bad record must never stop the worker: dead-letter it.
                logger.exception(
                    "unexpected error on %s[%s]@%s; dead-lettering it",
                    source.topic,
                    source.partition,
                    source.offset,
                )
                rejected = RejectedError("internal_error", f"{type(exc).__name__}")
                await self._dead_letter(message.value, source, rejected)
            yield None

    async def handle(self, value: bytes | None, source: Source) -> None:
        """Take one usage record through intake, pricing, accounting, budgets."""
        s = self.settings
        now = datetime.now(UTC)
        try:
            event = decode(
                value,
                now=now,
                future_skew=timedelta(seconds=s.future_skew_s),
                max_bytes=s.max_message_bytes,
            )
        except RejectedError as rejected:
            await self._dead_letter(value, source, rejected)
            return
        if event.team.encode() != source.key:
            await self._refuse(
                event,
                value,
                source,
                "wrong_key",
                f"the record key {source.key!r} is not the team {event.team!r}; key "
                "usage by team so a team's events meet on one partition",
            )
            return
        sighting = await self._sighting(event, value, source)
        if sighting is None:
            return

        # Everything that can fail runs before anything is written, so a record
        # that fails leaves no trace in the state (and its id is not burnt).
        priced = self.pricer.price(event)
        state = self._team_state(event.team)
        flags = list(priced.flags)
        replay = state.applied(source.partition, source.offset)
        breaches: list[BreachEvent] = []
        if replay:
            breach_payloads = state.breaches_from(source.partition, source.offset)
        else:
            budgets = self.registry.for_team(event.team)
            flags += apply(
                state,
                event,
                priced.cost_usd,
                calendars_of(budgets),
                grace_ms=s.period_grace_s * 1000,
            )
            breaches = evaluate(
                budgets, state, event, now=now, origin=(source.partition, source.offset)
            )
            state.mark_applied(source.partition, source.offset)
            breach_payloads = [b.model_dump(mode="json") for b in breaches]
        accepted = json.dumps(
            AcceptedUsage(
                event=event,
                cost_usd=priced.cost_usd,
                cost_source=priced.source,
                price_model=priced.model,
                price_provider=priced.provider,
                flags=flags,
                ingested_at=now,
                source_partition=source.partition,
                source_offset=source.offset,
            ).model_dump(mode="json")
        )
        encoded_breaches = [json.dumps(p) for p in breach_payloads]

        if sighting:
            self._remember(event, source)
        if replay:
            # A replay after a crash: the event is counted already, but what it
            # sent may have been lost. Send it again; every output is idempotent.
            logger.info(
                "replayed %s[%s]@%s is already counted; re-sending its outputs",
                source.topic,
                source.partition,
                source.offset,
            )
        else:
            self.teams[event.team] = state.to_json()
            self.stats["accepted"] += 1
            self.stats["breaches"] += len(breaches)
            for breach in breaches:
                logger.info(
                    "budget %s crossed %s of its %s limit for team %s (period from %s)",
                    breach.budget_id,
                    breach.threshold,
                    breach.measure,
                    breach.team,
                    breach.period_start.isoformat(),
                )
        await self.accepted_topic.send(key=source.key, value=accepted)
        for payload, encoded in zip(breach_payloads, encoded_breaches, strict=True):
            await self.breaches_topic.send(
                key=str(payload["budget_id"]).encode(), value=encoded
            )

    async def _sighting(
        self, event: UsageEvent, value: bytes | None, source: Source
    ) -> bool | None:
        """True for a new id, False for this very record read again after a
        crash, None for a repeat (dropped, or dead-lettered as a conflict).

        An id is stored with the partition and offset that first carried it,
        so the same record read again is not taken for a repeat.
        """
        prior = self.seen.get(event.event_id)
        if prior is None:
            return True
        if prior[2:4] == [source.partition, source.offset]:
            return False
        if prior[0] == fingerprint(event):
            self.stats["duplicates"] += 1
            logger.debug(
                "duplicate event %s at %s[%s]@%s dropped",
                event.event_id,
                source.topic,
                source.partition,
                source.offset,
            )
            return None
        await self._refuse(
            event,
            value,
            source,
            "duplicate_conflict",
            f"event id {event.event_id} was already accepted with different "
            "content; the first one counts",
        )
        return None

    async def _refuse(
        self,
        event: UsageEvent,
        value: bytes | None,
        source: Source,
        reason: Reason,
        detail: str,
    ) -> None:
        """Dead-letter a valid event that cannot be accepted, naming it."""
        rejected = RejectedError(
            reason, detail, event_id=event.event_id, team=event.team
        )
        await self._dead_letter(value, source, rejected)

    def _remember(self, event: UsageEvent, source: Source) -> None:
        """Store a new event id (and forget this partition's expired ones)."""
        now_ms = to_ms(datetime.now(UTC))
        self._forget_old_ids(source.partition, now_ms)
        self.seen[event.event_id] = [
            fingerprint(event),
            now_ms,
            source.partition,
            source.offset,
        ]
        self.expiry.note(source.partition, now_ms, event.event_id)

    def _team_state(self, team: str) -> TeamState:
        data = self.teams.get(team)
        return TeamState() if data is None else TeamState.from_json(data)

    async def _dead_letter(
        self, value: bytes | None, source: Source, rejected: RejectedError
    ) -> None:
        logger.warning(
            "rejected %s[%s]@%s: %s (%s)",
            source.topic,
            source.partition,
            source.offset,
            rejected.reason,
            rejected.detail,
        )
        letter = dead_letter(value, source, rejected, at=datetime.now(UTC))
        await self.dlq_topic.send(
            key=source.key, value=json.dumps(letter.model_dump(mode="json"))
        )
        self.stats["dead_lettered"] += 1

    # -- housekeeping -----------------------------------------------------

    def _forget_old_ids(self, partition: int, now_ms: int) -> None:
        """Drop this partition's ids past the horizon (inside its stream)."""
        if not self.expiry.known(partition):
            self.expiry.load(
                partition,
                ((int(v[1]), k) for k, v in self.seen.items() if v[2] == partition),
            )
        stale = self.expiry.sweep(partition, now_ms)
        for event_id in stale:
            entry = self.seen.get(event_id)
            if entry is not None and entry[2] == partition:
                del self.seen[event_id]
        if stale:
            logger.info(
                "forgot %s event ids of partition %s past the horizon",
                len(stale),
                partition,
            )

    async def _follow_budgets(self) -> None:
        """Follow the budgets topic forever; a failure restarts the reader.

        An exception escaping a Faust task would stop the whole worker, so
        errors are logged and the reader starts again after a pause.
        """
        while True:
            try:
                await self._read_budgets()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception(
                    "reading %s failed; retrying in %s s",
                    self.settings.topic_budgets,
                    BUDGET_RETRY_SECONDS,
                )
                await asyncio.sleep(BUDGET_RETRY_SECONDS)

    async def _read_budgets(self) -> None:
        """Read the compacted budgets topic from the start, forever."""
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            enable_auto_commit=False,
            client_id=f"{s.app_id}-budgets",
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(s.topic_budgets) or {0}
            tps = [TopicPartition(s.topic_budgets, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            if all(v == 0 for v in ends.values()):
                self._budgets_loaded()
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self._apply_budget_record(record.key, record.value)
                if not self.budgets_ready.is_set():
                    positions = [await consumer.position(tp) for tp in tps]
                    if all(p >= ends[tp] for p, tp in zip(positions, tps, strict=True)):
                        self._budgets_loaded()
        finally:
            await consumer.stop()

    def _budgets_loaded(self) -> None:
        logger.info("%s budgets in force", len(self.registry))
        self.budgets_ready.set()

    def _apply_budget_record(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        budget_id = key.decode("utf-8", "replace")
        if value is None:
            self.registry.remove(budget_id)
            logger.info("budget %s removed", budget_id)
            return
        budget = parse_budget_record(budget_id, value)
        if budget is None:
            return
        self.registry.put(budget)
        if self.budgets_ready.is_set():
            logger.info("budget %s updated", budget_id)

    # -- the status endpoint ----------------------------------------------

    def _add_pages(self, app: faust.App) -> None:
        worker = self

        @app.page("/meterline/status")
        class Status(View):
            async def get(self, request: Request) -> Response:
                return self.json(worker.status())

        @app.page("/meterline/totals")
        class Totals(View):
            async def get(self, request: Request) -> Response:
                return self.json(worker.totals())

    def status(self) -> dict[str, Any]:
        """Readiness and counters of this worker process."""
        assigned = self.app.consumer.assignment() if self.app.consumer else set()
        return {
            "ready": self.budgets_ready.is_set() and bool(assigned),
            "budgets": len(self.registry),
            "partitions": sorted(
                tp.partition
                for tp in assigned
                if tp.topic == self.usage_topic.get_topic_name()
            ),
            "stats": self.stats,
            "offsets": self._offsets(),
        }

    def _offsets(self) -> dict[str, Any]:
        """Per usage partition: Faust's committed offset and the acknowledged
        offsets not yet committed (min, max, count); for diagnosing lag."""
        # Faust keeps these in private fields; read them defensively.
        consumer = self.app.consumer
        acked_by_tp: dict[Any, list[int]] = getattr(consumer, "_acked", {})
        committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
        out: dict[str, Any] = {}
        for tp, acked in list(acked_by_tp.items()):
            if tp.topic != self.usage_topic.get_topic_name():
                continue
            out[str(tp.partition)] = {
                "committed": committed.get(tp),
                "acked": [min(acked), max(acked), len(acked)] if acked else [],
            }
        return out

    def totals(self) -> dict[str, Any]:
        """Live per-team totals and period counters held by this worker."""
        out: dict[str, Any] = {}
        for team, data in self.teams.items():
            state = TeamState.from_json(data)
            out[team] = {
                "events": state.events,
                "tokens": state.total_tokens,
                "buckets": state.tokens,
                "usd": str(state.usd),
                "unknown_cost_events": state.unknown_cost_events,
                "periods": {
                    key: {"tokens": c.tokens, "usd": str(c.usd), "events": c.events}
                    for key, c in state.periods.items()
                },
                "budgets": [
                    _budget_status(b, state) for b in self.registry.for_team(team)
                ],
            }
        return out


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic whose keys and values are bytes; meterline does its own JSON."""
    return app.topic(name, key_serializer="raw", value_serializer="raw", internal=False)


def _budget_status(budget: Budget, state: TeamState) -> dict[str, Any]:
    """Usage of the current period of a budget, as of the team's watermark."""
    instant = datetime.fromtimestamp(max(state.watermark_ms, 0) / 1000, UTC)
    period = period_of(
        instant, budget.period, budget.timezone, week_start=budget.week_start
    )
    counter = state.periods.get(period.key)
    tokens = counter.tokens if counter else 0
    usd = counter.usd if counter else Decimal(0)
    return {
        "id": budget.id,
        "period_start": period.start.isoformat(),
        "tokens": tokens,
        "usd": str(usd),
        "tokens_limit": budget.tokens,
        "usd_limit": str(budget.usd) if budget.usd is not None else None,
    }


def run_worker(settings: Settings, *, loglevel: str = "info") -> None:
    """Run the worker in the foreground until SIGTERM or SIGINT.

    The budgets in force are read before Faust starts, so the first usage
    record is already evaluated against them; a task then follows changes.
    """
    from streams.topics import ensure_topics

    worker = Worker(settings)
    ensure_topics(settings)
    for budget in read_budgets(settings):
        worker.registry.put(budget)
    logger.info("loaded %s budgets before start", len(worker.registry))
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
