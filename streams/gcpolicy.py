"""The cyclic garbage collector's settings for a streams worker.

The heat is millions of small Python objects (KeyHeat, its panes dict and counts lists, host
heat, CacheViews) that live for hours, and every message allocates a few hundred short-lived
ones (its rows, Faust's event). With CPython's default thresholds (700, 10, 10) a young
collection ran every few messages and visited what the pending messages still held, and each
growth of the long-lived heap by a quarter cost a full collection over all of it: measured on
bench/streams' messages (fold, decode, flush only) 11% of the time. None of this state forms
reference cycles; what does (asyncio, Faust) is short-lived and still collected, only in bigger
batches. :func:`tune` freezes what start-up made (modules, Faust's app: never garbage) and makes
the young generation large.
"""

from __future__ import annotations

import gc

# young collection every this many net allocations (default 700), the middle one every this
# many young ones (default 10), the oldest every this many middle ones (default 10; CPython
# also waits until the long-lived objects grew by a quarter)
THRESHOLDS = (20_000, 20, 100)


def tune(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    """Freeze the objects made so far (they leave the collector's generations) and set the
    thresholds. Call once, when the worker has started."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
