"""The cache store: the one owner of what is on disk (object paths, the catalog, the atomic
object writer, quota and eviction). The fetcher and the edge both use it; it imports no stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cachestore.catalog import Catalog
    from cachestore.store import ObjectStore
    from heatcache.settings import Settings


def open_store(settings: Settings, catalog: Catalog) -> ObjectStore:
    """The store with the quota and eviction parameters of ``settings``."""
    from cachestore.policy import PolicyParams
    from cachestore.quota import Quota
    from cachestore.store import ObjectStore

    quota = Quota(settings.cache_max_bytes, settings.cache_min_free_bytes, settings.cache_max_object_fraction,
                  settings.max_object_bytes)
    return ObjectStore(settings.cache_root, catalog, settings.node_name, quota,
                       PolicyParams(half_life_s=settings.cache_half_life_s))
