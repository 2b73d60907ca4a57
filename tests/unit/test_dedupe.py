from streams.dedupe import Expiry

HOUR_MS = 3600 * 1000


def test_ids_expire_per_partition_after_the_horizon() -> None:
    expiry = Expiry(HOUR_MS, every_s=0)
    expiry.load(0, [])
    expiry.note(0, 1_000, "a")
    expiry.note(0, 2_000, "b")
    expiry.note(1, 1_000, "c")
    assert expiry.sweep(0, 1_000 + HOUR_MS) == []
    assert expiry.sweep(0, 1_001 + HOUR_MS) == ["a"]
    assert expiry.sweep(0, 10 * HOUR_MS) == ["b"]
    assert expiry.sweep(1, 10 * HOUR_MS) == ["c"]


def test_sweeps_are_rate_limited_unless_forced() -> None:
    expiry = Expiry(HOUR_MS, every_s=3600)
    expiry.load(0, [(5, "old")])
    assert expiry.sweep(0, 10 * HOUR_MS) == []
    assert expiry.sweep(0, 10 * HOUR_MS, force=True) == ["old"]


def test_loaded_entries_and_forgetting_a_partition() -> None:
    expiry = Expiry(HOUR_MS, every_s=0)
    assert not expiry.known(3)
    expiry.load(3, [(20, "y"), (10, "x")])
    assert expiry.known(3)
    assert expiry.sweep(3, 30 + HOUR_MS) == ["x", "y"]
    expiry.forget(3)
    assert not expiry.known(3)


def test_milliseconds_round_down_before_1970_as_in_clickhouse() -> None:
    from datetime import UTC, datetime

    from streams.accounting import to_ms

    instant = datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)
    assert to_ms(instant) == -1
    assert to_ms(datetime(1970, 1, 1, 0, 0, 0, 1500, tzinfo=UTC)) == 1
