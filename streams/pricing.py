"""What an event cost, and how we know.

Order of precedence: a provider-reported `cost_usd` on the event, then a local
override (negotiated or self-hosted prices), then the genai-prices catalog
snapshot shipped in the package (never fetched at run time). A model found in
none of them has unknown cost (`None`), flagged on the event; never $0.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Annotated

import yaml
from genai_prices import Usage, calc_price
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.usage import BUCKETS, CostSource, Tokens, UsageEvent
from streams.errors import ConfigError

logger = logging.getLogger(__name__)

#: Money is kept to 12 decimal places (ClickHouse `Decimal(38, 12)`), so sums in
#: the worker and in the warehouse agree to the last digit.
USD_PLACES = Decimal("0.000000000001")
MTOK = Decimal(1_000_000)

PerMTok = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class PriceOverride(BaseModel):
    """USD per million tokens for each bucket of one model (optionally provider)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    provider: str | None = None
    in_uncached: PerMTok = Decimal(0)
    in_cache_read: PerMTok = Decimal(0)
    in_cache_write: PerMTok = Decimal(0)
    in_cache_write_1h: PerMTok = Decimal(0)
    out_visible: PerMTok = Decimal(0)
    out_reasoning: PerMTok | None = Field(
        None, description="Defaults to the out_visible price."
    )

    def cost(self, tokens: Tokens) -> Decimal:
        """Cost in USD of `tokens` at these prices."""
        total = Decimal(0)
        for bucket in BUCKETS:
            price = getattr(self, bucket)
            if bucket == "out_reasoning" and price is None:
                price = self.out_visible
            total += price * getattr(tokens, bucket)
        return total / MTOK


class OverridesFile(BaseModel):
    """The YAML file of local prices: `prices: [{model, provider?, <bucket>...}]`."""

    model_config = ConfigDict(extra="forbid")

    prices: list[PriceOverride] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Priced:
    """The outcome of pricing one event."""

    cost_usd: Decimal | None
    source: CostSource
    model: str | None = None
    provider: str | None = None
    flags: tuple[str, ...] = field(default=())


def quantize_usd(value: Decimal) -> Decimal:
    """Round to the 12 decimal places money is stored with."""
    return value.quantize(USD_PLACES, rounding=ROUND_HALF_EVEN)


def load_overrides(path: Path | None) -> list[PriceOverride]:
    """Read a price overrides file; None or a missing path gives no overrides."""
    if path is None:
        return []
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return OverridesFile.model_validate(raw).prices
    except FileNotFoundError as exc:
        raise ConfigError(f"price overrides file {path} does not exist") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"price overrides file {path} is invalid: {exc}") from exc


class Pricer:
    """Prices events; one instance per process (it caches catalog misses)."""

    def __init__(self, overrides: list[PriceOverride] | None = None) -> None:
        self._overrides: dict[tuple[str, str | None], PriceOverride] = {
            (o.model, o.provider): o for o in overrides or []
        }
        self._unknown: set[tuple[str, str | None]] = set()

    def price(self, event: UsageEvent) -> Priced:
        """Cost of `event`, and where it came from."""
        if event.cost_usd is not None:
            return Priced(quantize_usd(event.cost_usd), "provider", event.model)
        if event.model is None:
            return Priced(None, "unknown", flags=("unknown_model",))
        override = self._overrides.get(
            (event.model, event.provider)
        ) or self._overrides.get((event.model, None))
        if override is not None:
            return Priced(
                quantize_usd(override.cost(event.tokens)),
                "override",
                override.model,
                override.provider,
            )
        return self._from_catalog(event)

    def _from_catalog(self, event: UsageEvent) -> Priced:
        model = event.model or ""
        lookup = (model, event.provider)
        if lookup in self._unknown:
            return Priced(None, "unknown", flags=("unknown_model",))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = calc_price(
                    _catalog_usage(event.tokens),
                    model,
                    provider_id=event.provider,
                    genai_request_timestamp=event.ts,
                )
        except LookupError:
            if event.provider is not None:
                # The catalog may list the model under another provider id
                # (a gateway, say): try again by model name alone.
                anyone = self._from_catalog(event.model_copy(update={"provider": None}))
                if anyone.cost_usd is None:
                    self._unknown.add(lookup)
                return anyone
            logger.info("model %s has no price in the catalog; cost unknown", model)
            self._unknown.add(lookup)
            return Priced(None, "unknown", flags=("unknown_model",))
        return Priced(
            quantize_usd(result.total_price),
            "catalog",
            result.model.id,
            result.provider.id,
        )


def _catalog_usage(tokens: Tokens) -> Usage:
    # genai-prices counts cache reads and writes inside input_tokens, and 1-hour
    # writes inside cache_write_tokens; reasoning is inside output_tokens.
    writes = tokens.in_cache_write + tokens.in_cache_write_1h
    kwargs: dict[str, int] = {
        "input_tokens": tokens.input_total,
        "output_tokens": tokens.output_total,
    }
    if tokens.in_cache_read:
        kwargs["cache_read_tokens"] = tokens.in_cache_read
    if writes:
        kwargs["cache_write_tokens"] = writes
    if tokens.in_cache_write_1h:
        kwargs["cache_write_1h_tokens"] = tokens.in_cache_write_1h
    return Usage(**kwargs)
