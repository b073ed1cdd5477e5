"""Unit tests for cache file placement (fetcher/paths.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachestore.paths import object_relpath, resolve_in_root


def test_relpath_is_a_hash() -> None:
    rel = object_relpath("http://example.com/../../etc/passwd")
    assert rel.startswith("objects/") and ".." not in rel and len(rel.split("/")[-1]) == 64
    assert object_relpath("a") == object_relpath("a") != object_relpath("b")


@pytest.mark.parametrize("rel", ["../x", "objects/../../x", "/etc/passwd", "", "."])
def test_escapes_are_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(ValueError):
        resolve_in_root(tmp_path, rel)


def test_inside_root(tmp_path: Path) -> None:
    assert resolve_in_root(tmp_path, "objects/ab/cd") == tmp_path.resolve() / "objects/ab/cd"
