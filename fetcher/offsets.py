"""Which offset may be committed (pure): messages finish out of order (downloads run side by
side), and an offset is stored only when every message before it on its partition is done, i.e.
what it produced was acknowledged by the broker."""

from __future__ import annotations


class OffsetTracker:
    """Per (topic, partition): the offsets in flight and the next offset safe to commit."""

    def __init__(self) -> None:
        self.inflight: dict[tuple[str, int], set[int]] = {}
        self.highest: dict[tuple[str, int], int] = {}
        self.stored: dict[tuple[str, int], int] = {}

    def add(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        self.inflight.setdefault(tp, set()).add(offset)
        self.highest[tp] = max(self.highest.get(tp, -1), offset)
        self.stored.setdefault(tp, offset)  # where the group's committed position already is

    def done(self, topic: str, partition: int, offset: int) -> int | None:
        """Mark one message done; the offset to store now (next to read), or None if unchanged."""
        tp = (topic, partition)
        live = self.inflight.get(tp, set())
        live.discard(offset)
        commit = min(live) if live else self.highest.get(tp, offset) + 1
        if commit > self.stored.get(tp, -1):
            self.stored[tp] = commit
            return commit
        return None

    def pending(self) -> int:
        return sum(len(v) for v in self.inflight.values())

    def forget(self, topic: str, partition: int) -> None:
        """A partition revoked in a rebalance: its messages will be redelivered elsewhere."""
        self.inflight.pop((topic, partition), None)
        self.highest.pop((topic, partition), None)
        self.stored.pop((topic, partition), None)
