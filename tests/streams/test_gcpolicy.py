"""streams.gcpolicy: the worker's collector settings (frozen start-up objects, a large young generation)."""

from __future__ import annotations

import gc
import weakref

from streams import gcpolicy


class _Node:
    me: _Node | None = None


def test_tune_freezes_what_exists_and_sets_the_thresholds() -> None:
    before = gc.get_threshold()
    marker = [object()]  # a tracked object made before tune: frozen by it
    try:
        gcpolicy.tune((12_345, 7, 3))
        assert gc.get_threshold() == (12_345, 7, 3)
        assert gc.get_freeze_count() > 0
        assert all(o is not marker for o in gc.get_objects())  # left the generations
        cycle = _Node()
        cycle.me = cycle  # a cycle made after: still collected
        ref = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
