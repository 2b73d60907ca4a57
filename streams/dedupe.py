"""Which remembered event ids have passed the de-duplication horizon.

Event ids live in a Faust table whose entries belong to the partition of the
event that wrote them; a table change is only allowed while that partition's
stream is being iterated, and must go to the same changelog partition. So expiry
is tracked per partition: a min-heap of (first seen, id) per partition, swept
while an event of that partition is in hand.

The horizon is wall-clock time since an id was first seen, not event time:
retries and re-imports happen close to the original in wall-clock time whatever
their timestamps say (a re-import of last month's transcripts must still be
caught an hour later).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable


class Expiry:
    """Per-partition event-time expiry of remembered ids."""

    def __init__(self, horizon_ms: int, *, every_s: float = 30.0) -> None:
        self.horizon_ms = horizon_ms
        self.every_s = every_s
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._last_sweep: dict[int, float] = {}

    def known(self, partition: int) -> bool:
        """Whether the partition's heap has been built (after an assignment)."""
        return partition in self._heaps

    def load(self, partition: int, entries: Iterable[tuple[int, str]]) -> None:
        """Seed a partition's heap from recovered (first seen ms, id) entries."""
        heap = list(entries)
        heapq.heapify(heap)
        self._heaps[partition] = heap
        self._last_sweep[partition] = time.monotonic()

    def note(self, partition: int, seen_ms: int, event_id: str) -> None:
        """Remember that `event_id` was first seen at `seen_ms` (epoch ms)."""
        heapq.heappush(self._heaps.setdefault(partition, []), (seen_ms, event_id))

    def sweep(self, partition: int, now_ms: int, *, force: bool = False) -> list[str]:
        """Ids of `partition` seen before `now_ms` - horizon; at most once per
        `every_s` unless forced."""
        now = time.monotonic()
        if not force and now - self._last_sweep.get(partition, 0.0) < self.every_s:
            return []
        self._last_sweep[partition] = now
        heap = self._heaps.get(partition, [])
        cutoff = now_ms - self.horizon_ms
        out = []
        while heap and heap[0][0] < cutoff:
            out.append(heapq.heappop(heap)[1])
        return out

    def forget(self, partition: int) -> None:
        """Drop a partition (revoked from this worker)."""
        self._heaps.pop(partition, None)
        self._last_sweep.pop(partition, None)
