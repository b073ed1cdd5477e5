"""Type stub for dns_redirect._index (dns_redirect/_index.c): CacheIndex.apply, compiled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

def setup(key_host: Callable[[str], str], key_port: Callable[[str], tuple[str, int]], counter_cls: type,
          monotonic: Callable[[], float]) -> None: ...
def apply(index: Any, event: Any, now: float | None = None) -> None: ...
