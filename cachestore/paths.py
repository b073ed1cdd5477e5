"""Where a cache key lives on disk: a hash, so no URL can walk out of the cache root."""

from __future__ import annotations

import hashlib
from pathlib import Path


def object_relpath(cache_key: str) -> str:
    """``objects/ab/abcdef...``: two-level fan-out by SHA-256 of the key."""
    digest = hashlib.sha256(cache_key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"objects/{digest[:2]}/{digest}"


def resolve_in_root(root: Path, relpath: str) -> Path:
    """Join a catalog path to the cache root, refusing anything that escapes it."""
    base = root.resolve()
    full = (base / relpath).resolve()
    if full == base or base not in full.parents:
        raise ValueError(f"path {relpath!r} escapes the cache root")
    return full
