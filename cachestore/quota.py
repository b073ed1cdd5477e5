"""The byte quota (pure): how much must go before an object of a given size may be stored.

Three limits, all enforced for prefetched and in-path-filled objects alike:
- ``max_bytes``: the cache's total (``HEATCACHE_CACHE_MAX_BYTES``; 0 = no byte quota);
- ``min_free_bytes``: a floor of free space on the cache's filesystem, so a full disk never
  truncates a client's answer or the catalog;
- the per-object cap: the smaller of ``max_object_bytes`` and ``max_object_fraction`` of the
  quota, so one large video cannot flush the whole cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Quota:
    max_bytes: int = 0  # 0 = no byte quota (only the free-disk floor)
    min_free_bytes: int = 0
    max_object_fraction: float = 0.25
    max_object_bytes: int = 4 * 1024**3
    # object_cap(), computed once: plan_space reads it for every object stored (replay: millions)
    _cap: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cap", self._object_cap())

    def object_cap(self) -> int:
        """The largest object this cache will store."""
        return self._cap

    def _object_cap(self) -> int:
        if self.max_bytes > 0:
            return max(1, min(self.max_object_bytes, int(self.max_bytes * self.max_object_fraction)))
        return self.max_object_bytes


class SpacePlan(NamedTuple):
    """``refused`` is a reason ("" when the object may be stored); ``free_bytes`` what must be
    evicted first (0 when it fits). A NamedTuple, not a frozen dataclass: replay asks for a plan
    millions of times, and a frozen dataclass's __init__ (one object.__setattr__ per field) cost
    more than the rest of plan_space."""

    free_bytes: int = 0
    refused: str = ""


_FITS = SpacePlan()  # the usual answer, made once (immutable: safe to share)
_new_plan = tuple.__new__  # SpacePlan(need) without the NamedTuple's Python __new__


def plan_space(quota: Quota, size: int, used_bytes: int, disk_free_bytes: int, replaced_bytes: int = 0) -> SpacePlan:
    """What storing ``size`` more bytes takes. ``used_bytes`` is what the cache holds now,
    ``replaced_bytes`` the size of an older copy of the same key that the new one replaces (it
    goes away with the rename), ``disk_free_bytes`` the filesystem's free space *after* the new
    copy was written to its temporary file (the rename does not change it)."""
    # asked once per object stored (replay: millions of times), so the cap is the quota's own
    # (computed when it was made) and the answer "fits, nothing to evict" is one shared object
    cap = quota._cap
    if size > cap:
        return SpacePlan(refused=f"object of {size} bytes is over the per-object cap of {cap} bytes")
    held = used_bytes - replaced_bytes
    need = 0
    max_bytes = quota.max_bytes
    if max_bytes > 0:
        need = held + size - max_bytes
        if need < 0:
            need = 0
    if quota.min_free_bytes > 0:
        floor = quota.min_free_bytes - disk_free_bytes - replaced_bytes
        if floor > need:
            need = floor
    if need > (held if held > 0 else 0):
        return SpacePlan(refused=f"needs {need} bytes freed but the cache holds only {held}")
    return _new_plan(SpacePlan, (need, "")) if need else _FITS
