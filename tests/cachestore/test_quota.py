"""Unit tests for the byte quota (cachestore/quota.py)."""

from __future__ import annotations

import random

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


def test_plan_space_equals_its_definition_on_random_inputs() -> None:
    """plan_space (inlined cap, shared "fits" answer) against the limits as the module doc
    states them, on random quotas, sizes and disk states."""
    rng = random.Random(5)
    for _ in range(5000):
        q = Quota(max_bytes=rng.choice((0, 1, 1000, 10**6)), min_free_bytes=rng.choice((0, 0, 500)),
                  max_object_fraction=rng.choice((0.001, 0.25, 1.0)), max_object_bytes=rng.choice((10, 10**5, 10**9)))
        size, used = rng.randrange(0, 3000), rng.randrange(0, 2000)
        disk, replaced = rng.randrange(0, 1000), rng.choice((0, 0, rng.randrange(0, 1 + used)))
        plan = plan_space(q, size, used, disk, replaced)
        need = max(0, used - replaced + size - q.max_bytes) if q.max_bytes > 0 else 0
        if q.min_free_bytes > 0:
            need = max(need, q.min_free_bytes - disk - replaced)
        if size > q.object_cap():
            assert "per-object cap" in plan.refused and plan.free_bytes == 0
        elif need > max(0, used - replaced):
            assert "holds only" in plan.refused and plan.free_bytes == 0
        else:
            assert plan.refused == "" and plan.free_bytes == need
