"""Type stub for the compiled fold (streams/_fold.c); streams/heat.py and windows.py are its reference."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

def fold(
    batch: Sequence[Sequence[Any]], too_old: float, step: float, spec: Any, cap: int, keys: dict[str, Any],
    key_new: Callable[[str], Any], hosts: dict[str, Any] | None, host_new: Callable[[str], Any],
    sizes: Callable[[str], int] | None, dirty_keys: set[str], dirty_hosts: set[str], touched_hosts: set[str],
    cache: dict[str, Any], watermark: float, unanswered: float, min_clients: int, /,
) -> tuple[int, list[tuple[str, Any, float]]]: ...
def encode_slot(
    names: Iterable[str], heats: dict[str, Any], cache: dict[str, bytes] | None, fallback: Callable[[Any], bytes],
    key_fields: bool, /,
) -> bytes: ...
def rows(raw: bytes | None, /) -> list[Any] | None: ...  # 9-tuples equal to contract.RequestEvent
def top_keys(keys: dict[str, Any], first: int, n: int, /) -> list[tuple[str, int]]: ...
def fold_hosts(
    batches: Sequence[tuple[Sequence[Sequence[Any]], float]], step: float, spec: Any, cap: int,
    hosts: dict[str, Any], host_new: Callable[[str], Any], dirty_hosts: set[str], touched_hosts: set[str], /,
) -> None: ...
