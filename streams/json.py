"""The one place meterline turns bytes into objects and back (orjson)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} as JSON")


def dumps(obj: Any) -> bytes:
    """Serialise to compact UTF-8 JSON; Decimals become strings (exact money)."""
    return orjson.dumps(obj, default=_default)


def dumps_sorted(obj: Any) -> bytes:
    """Like `dumps`, with sorted keys: stable bytes for hashing."""
    return orjson.dumps(obj, default=_default, option=orjson.OPT_SORT_KEYS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises `JSONDecodeError` (a ValueError) on bad input."""
    return orjson.loads(data)
