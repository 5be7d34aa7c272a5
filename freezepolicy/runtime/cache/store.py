"""The cache's memory: one tensor per (stored value, sample), least recently used out first.

Entries are grouped in *slots*, one per value of the graph that is cached (a capture's boundary
node). A slot remembers the fingerprint of the frozen tensors its value is computed from (their
identity, version counter and storage); when the fingerprint differs, every entry of the slot is
stale and dropped at once: this is how a `load_state_dict`, an in-place edit or a re-freeze after
training invalidates exactly the values computed from the changed tensors, and nothing else.

`max_bytes` bounds the bytes of the stored tensors. Past it, the least recently used entries are
evicted (not spilled to disk: reading a spilled activation back costs about what recomputing a
small frozen part does, and a disk cache would need its own invalidation across processes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch


@dataclass
class StoreCounts:
    entries: int = 0
    bytes: int = 0
    evicted: int = 0
    invalidated: int = 0


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Store:
    """An LRU map (slot, sample key) -> tensor, bounded by `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Hashable, bytes], torch.Tensor] = OrderedDict()
        self._fingerprints: dict[Hashable, Hashable] = {}
        self._slot_entries: dict[Hashable, int] = {}
        self.counts = StoreCounts()

    def validate(self, slot: Hashable, fingerprint: Hashable) -> None:
        """Drop the slot's entries if they were computed from other frozen tensors."""
        old = self._fingerprints.get(slot)
        if old == fingerprint:
            return
        if old is not None:
            self.drop_slot(slot)
            self.counts.invalidated += 1
        self._fingerprints[slot] = fingerprint

    def drop_slot(self, slot: Hashable) -> None:
        if self._slot_entries.get(slot):
            for key in [k for k in self._entries if k[0] == slot]:
                self._remove(key)
        self._fingerprints.pop(slot, None)

    def clear(self) -> None:
        self._entries.clear()
        self._fingerprints.clear()
        self._slot_entries.clear()
        self.counts.entries = self.counts.bytes = 0

    def get(self, slot: Hashable, key: bytes) -> torch.Tensor | None:
        value = self._entries.get((slot, key))
        if value is not None:
            self._entries.move_to_end((slot, key))
        return value

    def put(self, slot: Hashable, key: bytes, value: torch.Tensor) -> bool:
        """Store `value` (the caller passes a tensor of its own); False if it can never fit."""
        size = tensor_bytes(value)
        if size > self.max_bytes:
            return False
        if (slot, key) in self._entries:
            self._remove((slot, key))
        self._entries[(slot, key)] = value
        self._slot_entries[slot] = self._slot_entries.get(slot, 0) + 1
        self.counts.entries += 1
        self.counts.bytes += size
        while self.counts.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.counts.evicted += 1
        return True

    def _remove(self, key: tuple[Hashable, bytes]) -> None:
        value = self._entries.pop(key)
        self._slot_entries[key[0]] -= 1
        self.counts.entries -= 1
        self.counts.bytes -= tensor_bytes(value)
