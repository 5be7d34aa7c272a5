"""Caching the frozen part of a model: `cache_frozen` (docs/caching.md).

- `capture.py`: the model's computation as one graph (`torch.export`), per call signature.
- `shapes.py`: which input sizes a capture serves (symbolic sizes, their ranges, the guards).
- `partition.py`: the cut between the frozen part and the live part, from the graph's dataflow.
- `graphs.py`: the frozen graph and the live graph of a cut.
- `keys.py`: per-sample content keys (xxHash, or BLAKE2b without the `cache` extra).
- `store.py`: the bounded LRU store and its invalidation by the frozen tensors' versions.
- `module.py`: `CachedModule`, the wrapper that puts them together, and `cache_frozen`.
"""

from .module import CachedModule, CacheStats, cache_frozen

__all__ = ["CacheStats", "CachedModule", "cache_frozen"]
