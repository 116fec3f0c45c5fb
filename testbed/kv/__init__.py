"""KV block managers: paged, prefix-cached (hash chain or radix tree) and contiguous, picked by name."""
from __future__ import annotations

from testbed.kv.base import KVManager, KVStats, num_blocks_for_budget
from testbed.kv.caching import CachingKVManager
from testbed.kv.contiguous import RESERVATIONS, ContiguousKVManager
from testbed.kv.eviction import EVICTION_KEYS
from testbed.kv.paged import PagedKVManager
from testbed.kv.prefix import PrefixKVManager
from testbed.kv.radix import RadixKVManager
from testbed.registry import Registry

KV_MANAGERS: Registry[KVManager] = Registry("KV manager")
KV_MANAGERS.register("contiguous")(ContiguousKVManager)
KV_MANAGERS.register("paged")(PagedKVManager)
KV_MANAGERS.register("prefix")(PrefixKVManager)
KV_MANAGERS.register("radix")(RadixKVManager)


def make_kv_manager(name: str, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0,
                    eviction: str = "lru", reservation: str = "exact",
                    max_model_len: int | None = None) -> KVManager:
    """Build a KV manager by name. `eviction` (lru | lfu | fifo) matters to `prefix` and `radix`
    only, `reservation` (exact | pow2 | max, with `max_model_len`) to `contiguous` only; both
    are still checked for the others, so one cache config can sweep every manager."""
    factory = KV_MANAGERS.get(name)
    if eviction not in EVICTION_KEYS:
        raise ValueError(f"unknown eviction policy {eviction!r}; choose one of: {', '.join(EVICTION_KEYS)}")
    if reservation not in RESERVATIONS:
        raise ValueError(f"unknown contiguous reservation {reservation!r}; choose one of: "
                         f"{', '.join(RESERVATIONS)}")
    if issubclass(factory, CachingKVManager):
        return factory(num_blocks, block_size, num_host_blocks, eviction)
    if factory is ContiguousKVManager:
        return factory(num_blocks, block_size, num_host_blocks, reservation, max_model_len)
    return factory(num_blocks, block_size, num_host_blocks)


__all__ = ["KVManager", "KVStats", "KV_MANAGERS", "make_kv_manager", "num_blocks_for_budget",
           "ContiguousKVManager", "PagedKVManager", "PrefixKVManager", "RadixKVManager",
           "CachingKVManager"]
