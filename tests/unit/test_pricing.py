from decimal import Decimal
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.pricing import PriceOverride, Pricer, load_overrides
from tests.unit.factories import usage_event


def test_catalog_price_counts_each_bucket_at_its_rate() -> None:
    # claude-sonnet-4-5 below 200k input: $3 in, $0.30 cache read, $3.75 cache
    # write (5 min), $6 cache write (1 h), $15 out, per million tokens.
    event = usage_event(
        tokens={
            "in_uncached": 1000,
            "in_cache_read": 10_000,
            "in_cache_write": 2000,
            "in_cache_write_1h": 1000,
            "out_visible": 300,
            "out_reasoning": 200,
        }
    )
    priced = Pricer().price(event)
    per_mtok = [(1000, "3"), (10_000, "0.3"), (2000, "3.75"), (1000, "6"), (500, "15")]
    expected = sum(Decimal(n) * Decimal(p) for n, p in per_mtok) / 1_000_000
    assert priced.cost_usd == expected
    assert (priced.source, priced.model, priced.provider) == (
        "catalog",
        "claude-sonnet-4-5",
        "anthropic",
    )


def test_dated_snapshot_name_matches_the_catalog_model() -> None:
    priced = Pricer().price(usage_event(model="claude-sonnet-4-5-20250929"))
    assert priced.model == "claude-sonnet-4-5"
    assert priced.cost_usd == Decimal("0.0105")


def test_provider_reported_cost_wins() -> None:
    priced = Pricer().price(usage_event(cost_usd=0.125))
    assert (priced.cost_usd, priced.source) == (Decimal("0.125"), "provider")


@pytest.mark.parametrize("model", ["my-private-model", None])
def test_unknown_model_has_unknown_cost_never_zero(model: str | None) -> None:
    priced = Pricer().price(usage_event(model=model, provider="self-hosted"))
    assert priced.cost_usd is None
    assert priced.source == "unknown"
    assert priced.flags == ("unknown_model",)


def test_override_beats_catalog() -> None:
    override = PriceOverride(
        model="claude-sonnet-4-5", in_uncached=Decimal(1), out_visible=Decimal(2)
    )
    priced = Pricer([override]).price(usage_event())
    assert priced.cost_usd == Decimal("0.002")
    assert priced.source == "override"


def test_override_reasoning_defaults_to_output_price() -> None:
    override = PriceOverride(model="m", out_visible=Decimal(10))
    event = usage_event(model="m", tokens={"out_visible": 100, "out_reasoning": 100})
    assert Pricer([override]).price(event).cost_usd == Decimal("0.002")


def test_overrides_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "prices.yaml"
    good.write_text("prices:\n  - model: m\n    in_uncached: 0.5\n")
    assert load_overrides(good)[0].in_uncached == Decimal("0.5")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prices:\n  - model: m\n    in_uncached: -1\n")
    with pytest.raises(ConfigError, match="invalid"):
        load_overrides(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_overrides(tmp_path / "missing.yaml")
