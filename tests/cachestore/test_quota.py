"""Unit tests for the byte quota (cachestore/quota.py)."""

from __future__ import annotations

from cachestore.quota import Quota, plan_space


def test_object_cap_is_the_smaller_limit() -> None:
    assert Quota(max_bytes=1000, max_object_fraction=0.25, max_object_bytes=10_000).object_cap() == 250
    assert Quota(max_bytes=1000, max_object_fraction=0.5, max_object_bytes=100).object_cap() == 100
    assert Quota(max_bytes=0, max_object_bytes=77).object_cap() == 77


def test_fits_needs_eviction_or_is_refused() -> None:
    q = Quota(max_bytes=1000, max_object_fraction=0.5)
    assert plan_space(q, 100, used_bytes=800, disk_free_bytes=10**9).free_bytes == 0
    assert plan_space(q, 300, used_bytes=800, disk_free_bytes=10**9).free_bytes == 100
    assert "per-object cap" in plan_space(q, 501, used_bytes=0, disk_free_bytes=10**9).refused
    # a new copy of a key replaces its old one: only the difference counts
    assert plan_space(q, 300, used_bytes=1000, disk_free_bytes=10**9, replaced_bytes=300).free_bytes == 0


def test_free_disk_floor() -> None:
    q = Quota(max_bytes=0, min_free_bytes=500, max_object_bytes=10**6)
    assert plan_space(q, 100, used_bytes=1000, disk_free_bytes=700).free_bytes == 0
    assert plan_space(q, 100, used_bytes=1000, disk_free_bytes=300).free_bytes == 200
    assert "holds only" in plan_space(q, 100, used_bytes=100, disk_free_bytes=0).refused
