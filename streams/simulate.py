"""A believable fleet of agents, for demos and benchmarks.

Teams run agents over a portfolio of models; call sizes are heavy-tailed
(log-normal), agents work in bursts, and one agent runs away with twenty times
the usual rate. Everything is seeded, so a run is reproducible: the same seed
gives the same events and ids.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.emit import Emitter
from streams.settings import Settings

#: (provider, model, share of calls, emits reasoning tokens)
PORTFOLIO: tuple[tuple[str, str, float, bool], ...] = (
    ("anthropic", "claude-sonnet-4-5", 0.40, False),
    ("anthropic", "claude-opus-4-1", 0.06, False),
    ("anthropic", "claude-haiku-4-5", 0.14, False),
    ("openai", "gpt-5", 0.12, True),
    ("openai", "gpt-5-mini", 0.12, True),
    ("google", "gemini-2.5-pro", 0.06, True),
    ("google", "gemini-2.5-flash", 0.06, True),
    ("self-hosted", "llama-3.3-70b-local", 0.04, False),
)

TEAM_NAMES = (
    "research", "platform", "payments", "search", "growth", "infra", "mobile",
    "data", "security", "support",
)  # fmt: skip

#: How many times the usual rate the runaway agent calls its model.
RUNAWAY_FACTOR = 20


@dataclass(frozen=True, slots=True)
class Agent:
    team: str
    name: str
    weight: float
    harness: str


@dataclass
class Fleet:
    """Teams and agents; `events()` yields canonical event dicts."""

    teams: int = 4
    agents_per_team: int = 5
    seed: int = 7
    org: str = "acme"
    agents: list[Agent] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        names = [
            TEAM_NAMES[i] if i < len(TEAM_NAMES) else f"team-{i:04d}"
            for i in range(self.teams)
        ]
        harnesses = ("claude-code", "codex", "openclaw", "in-house")
        self.agents = [
            Agent(
                team,
                f"{team}-agent-{j:02d}",
                rng.paretovariate(1.5),
                rng.choice(harnesses),
            )
            for team in names
            for j in range(self.agents_per_team)
        ]
        # The runaway: the first team's first agent loops on a big model.
        first = self.agents[0]
        self.agents[0] = Agent(
            first.team, first.name, first.weight * RUNAWAY_FACTOR, first.harness
        )

    def mean_tokens_per_call(self) -> float:
        """Rough average tokens per call, for sizing a run by tokens per day."""
        sample = list(
            self.events(2000, end=datetime(2026, 1, 1), span=timedelta(hours=1))
        )
        return sum(sum(e["tokens"].values()) for e in sample) / len(sample)

    def events(
        self, count: int, *, end: datetime, span: timedelta
    ) -> Iterator[dict[str, Any]]:
        """`count` events spread over the `span` of event time that ends at `end`."""
        rng = random.Random(self.seed * 7919 + count)
        # Ids name the run (its end time), so another run never reuses an id
        # for different content; the same seed and end give the same events.
        run = f"{int(end.timestamp()):x}"
        weights = [a.weight for a in self.agents]
        models = [(p, m, r) for p, m, _, r in PORTFOLIO]
        shares = [s for _, _, s, _ in PORTFOLIO]
        start = end - span
        step = span / max(count, 1)
        burst_agent = self.agents[0]
        for n in range(count):
            # Bursts: runs of consecutive calls from the same agent.
            if n % 8 == 0 or rng.random() < 0.3:
                burst_agent = rng.choices(self.agents, weights)[0]
            agent = burst_agent
            provider, model, reasoning = rng.choices(models, shares)[0]
            if agent is self.agents[0]:
                provider, model, reasoning = "anthropic", "claude-opus-4-1", False
            ts = start + step * n + timedelta(milliseconds=rng.randint(0, 999))
            yield self._event(rng, run, n, agent, provider, model, reasoning, ts)

    def _event(
        self,
        rng: random.Random,
        run: str,
        n: int,
        agent: Agent,
        provider: str,
        model: str,
        reasoning: bool,
        ts: datetime,
    ) -> dict[str, Any]:
        context = int(min(rng.lognormvariate(9.6, 1.0), 900_000))
        cached = int(context * rng.uniform(0.5, 0.95)) if rng.random() < 0.8 else 0
        written = int((context - cached) * 0.5) if rng.random() < 0.3 else 0
        output = int(min(rng.lognormvariate(6.2, 1.1), 64_000))
        thinking = int(output * rng.uniform(0.5, 2.0)) if reasoning else 0
        return {
            "schema_version": 1,
            "event_id": f"sim-{self.seed}-{run}-{n:09d}",
            "ts": ts.isoformat(timespec="milliseconds"),
            "org": self.org,
            "team": agent.team,
            "agent": agent.name,
            "session": f"{agent.name}-s{n // 200:05d}",
            "harness": agent.harness,
            "provider": provider,
            "model": model,
            "tokens": {
                "in_uncached": context - cached - written,
                "in_cache_read": cached,
                "in_cache_write": written,
                "in_cache_write_1h": 0,
                "out_visible": output,
                "out_reasoning": thinking,
            },
            "tags": {"env": "demo"},
        }


def send_fleet(
    settings: Settings,
    fleet: Fleet,
    count: int,
    *,
    span: timedelta,
    rate: float = 0,
    end: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Send `count` events of `fleet` to Kafka, at most `rate` per second."""
    end = end or datetime.now(UTC) - timedelta(seconds=1)
    started = time.monotonic()
    with Emitter(settings) as emitter:
        for n, event in enumerate(fleet.events(count, end=end, span=span), 1):
            emitter.send(event)
            if rate > 0:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if on_progress is not None and n % 1000 == 0:
                on_progress(n)
        emitter.flush()
        return emitter.sent
