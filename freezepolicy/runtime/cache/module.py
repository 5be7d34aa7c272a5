"""`cache_frozen(model)`: the model, with its frozen part computed once per sample.

```python
cached = freezepolicy.cache_frozen(model, max_bytes=2 * 2**30)
fs = FreezeScheduler(cached, policy, optimizer)       # or on `model`: the parameters are shared
for epoch in range(epochs):
    fs.start_epoch(epoch)
    for x, y in loader:
        loss_fn(cached(x), y).backward()              # the frozen part runs only for new samples
        ...
print(cached.stats())                                 # hits, misses, bytes, time spent filling
```

On each call the wrapper checks, in this order, everything its cached values depend on: the
inputs' structure, dtypes and ranks and each module's train/eval mode (the call signature), a
capture of that signature that serves the inputs' sizes (one capture serves every sequence
length the model allows; `shapes.py`), which parameters train (the cut), the identity and
version of every frozen tensor a cached value was computed from, and each sample's content (its
padded row: the same text padded to another length is another sample). Anything it cannot
cache runs as the model would, with a warning saying why.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ...lang.policy import Policy
from ..binding import as_policy
from .capture import (
    Capture,
    CaptureError,
    Inputs,
    autocast_state,
    capture,
    flatten_inputs,
    hooked_modules,
    model_state,
)
from .graphs import Partition, build
from .keys import FAST, HASH_NAME, sample_keys
from .partition import Classifier
from .store import Store

#: Partitions kept per capture (one per trainable set seen); a schedule has a few.
PARTITIONS_KEPT = 8
#: Input sizes remembered with the capture that serves them (a dict lookup instead of checking
#: each capture's sizes and guards); forgotten all at once past this many.
SIZES_KEPT = 4096


@dataclass(frozen=True)
class CacheStats:
    """What the cache did since it was made (or since `reset_stats`), and what it holds now."""

    calls: int = 0  # forwards
    cached_calls: int = 0  # forwards that ran the live part on cached or filled values
    uncached_calls: int = 0  # forwards that ran the whole model (nothing to cache, or refused)
    hits: int = 0  # samples whose frozen values came from the cache
    misses: int = 0  # samples whose frozen part was computed (and stored)
    fill_seconds: float = 0.0  # time spent computing the frozen part for misses
    #: Graph captures (torch.export): one per call signature and mode, and one more for each
    #: other size the model's code fixes or branches on (docs/caching.md).
    captures: int = 0
    capture_seconds: float = 0.0
    entries: int = 0  # (value, sample) entries held
    bytes: int = 0  # bytes of tensors held
    max_bytes: int = 0
    evicted: int = 0  # entries dropped to stay under max_bytes
    invalidated: int = 0  # times a cached value's frozen tensors changed and its entries went
    hash: str = HASH_NAME
    reasons: tuple[str, ...] = ()  # why parts of the model could not be cached

    @property
    def hit_rate(self) -> float:
        seen = self.hits + self.misses
        return self.hits / seen if seen else 0.0


class CachedModule(nn.Module):
    """`model` with its frozen part cached per sample; see `cache_frozen`."""

    def __init__(
        self,
        model: nn.Module,
        *,
        max_bytes: int,
        frozen_dropout: str = "eval",
        anticipate: Policy | str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative integer, not {max_bytes!r}")
        if frozen_dropout not in ("eval", "keep"):
            raise ValueError(f"frozen_dropout must be 'eval' or 'keep', not {frozen_dropout!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"cache_frozen needs a torch.nn.Module, not {type(model).__name__}")
        # `_orig_mod`, as torch.compile names it: freezepolicy (and users of torch.compile)
        # already see through it, so a policy applied to the wrapper sees the model's names.
        self._orig_mod = model
        self.frozen_dropout = frozen_dropout
        self._store = Store(max_bytes)
        # Captures by call signature (sizes aside), each serving the sizes its ShapeSpec says;
        # the signatures export could not capture; and which capture serves which sizes.
        self._captures: dict[Hashable, list[Capture]] = {}
        self._refused: dict[Hashable, CaptureError] = {}
        self._serving: dict[Hashable, Capture | CaptureError] = {}
        self._ids: tuple[int, ...] | None = None
        self._warned: set[str] = set()
        self._counts: dict[str, Any] = {}
        self._reasons: dict[str, None] = {}
        if anticipate is not None:
            anticipate = as_policy(anticipate)
        #: Kept so that a copy can bind it to its own tensors (see __setstate__).
        self._anticipate = anticipate
        self._anticipated = _anticipated_sets(model, anticipate) if anticipate is not None else []
        if not FAST:
            warnings.warn(
                "freezepolicy.cache_frozen: the xxhash package is not installed; samples are "
                "hashed with BLAKE2b, about 50 times slower (pip install 'freezepolicy[cache]')",
                stacklevel=3,
            )
        self.reset_stats()

    # --- copies (copy.deepcopy for an EMA model, torch.save of the whole module) --------------

    def __getstate__(self) -> dict[str, Any]:
        """The module without its caches: captured graphs hold fake tensors and the cached
        values are keyed by the identity of the original's tensors, neither of which means
        anything in a copy. A copy starts empty and captures again on its first call."""
        state = self.__dict__.copy()
        state["_store"] = Store(self._store.max_bytes)
        state["_captures"], state["_refused"], state["_serving"] = {}, {}, {}
        state["_ids"] = None
        state["_anticipated"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.reset_stats()  # a copy's statistics are its own, from its first call
        if self._anticipate is not None:  # the anticipated sets are of this copy's tensors
            self._anticipated = _anticipated_sets(self._orig_mod, self._anticipate)

    # --- the wrapped model -------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The wrapped model (its parameters are this module's parameters)."""
        return self._orig_mod

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("_orig_mod")
            if inner is None or name.startswith("__"):
                raise
            return getattr(inner, name)  # `config`, `num_labels`, ... of the model

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The model's state dict, with the model's own keys (no wrapper prefix)."""
        return self._orig_mod.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:  # type: ignore[override]
        return self._orig_mod.load_state_dict(state_dict, strict=strict, assign=assign)

    # --- statistics ---------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        c = self._store.counts
        return CacheStats(
            **self._counts,
            entries=c.entries,
            bytes=c.bytes,
            max_bytes=self._store.max_bytes,
            evicted=c.evicted - self._base["evicted"],
            invalidated=c.invalidated - self._base["invalidated"],
            reasons=tuple(self._reasons),
        )

    def reset_stats(self) -> None:
        """Zero the counters (the cache's contents stay)."""
        self._counts = {
            k: type(v)() for k, v in CacheStats().__dict__.items() if isinstance(v, (int, float))
        }
        for k in ("entries", "bytes", "max_bytes", "evicted", "invalidated"):
            self._counts.pop(k)
        c = self._store.counts
        self._base = {"evicted": c.evicted, "invalidated": c.invalidated}

    def invalidate(self) -> None:
        """Forget every cached value and every capture, for a change the cache cannot see: an
        in-place edit through `param.data` (no version counter records it), or a plain
        attribute the model's forward reads (`self.temperature = 2.0`, a tensor attribute that
        is neither a parameter nor a buffer), which the capture holds as a constant."""
        self._captures.clear()
        self._refused.clear()
        self._serving.clear()
        self._store.clear()

    # --- forward ------------------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        counts = self._counts
        counts["calls"] += 1
        model = self._orig_mod
        try:
            inputs = flatten_inputs(args, kwargs)
        except CaptureError as exc:
            return self._uncached(str(exc), args, kwargs)
        modes, ids = model_state(model)
        if ids != self._ids:  # parameters or buffers replaced: every capture refers to old ones
            self.invalidate()
            self._ids = ids
        batch = inputs.batch if inputs.batch < 2 else None
        signature = (modes, autocast_state(), inputs.signature, batch)
        cap = self._serving.get((signature, inputs.shapes))
        if cap is None:
            cap = self._serve(signature, inputs, args, kwargs)
        if isinstance(cap, CaptureError):
            return self._uncached(str(cap), args, kwargs, warn=False)
        part = self._partition(cap, inputs.leaves)
        if part.frozen is None or part.boundary == 0:
            return self._uncached(None, args, kwargs)
        counts["cached_calls"] += 1
        values = self._boundary(cap, part, inputs.leaves, inputs.batch)
        live_args = [
            values[a] if isinstance(a, int) else _value(a, inputs.leaves) for a in part.live_inputs
        ]
        outputs = part.live(*live_args)
        return pytree.tree_unflatten(list(outputs), cap.out_spec)

    def _uncached(self, reason: str | None, args: Any, kwargs: Any, warn: bool = True) -> Any:
        self._counts["uncached_calls"] += 1
        if reason is not None and warn:
            self._warn(f"this call runs uncached: {reason}")
        return self._orig_mod(*args, **kwargs)

    def _warn(self, message: str) -> None:
        self._reasons[message] = None
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(f"freezepolicy.cache_frozen: {message}", stacklevel=_user_frame())

    def _serve(
        self, signature: Hashable, inputs: Inputs, args: Any, kwargs: Any
    ) -> Capture | CaptureError:
        """The capture for a call whose sizes were not seen before: one of the signature's
        captures that serves these sizes, or a new one (unless the signature was refused)."""
        cap: Capture | CaptureError | None = next(
            (c for c in self._captures.get(signature, ()) if c.shapes.matches(inputs.shapes)),
            None,
        )
        if cap is None:
            cap = self._refused.get(signature) or self._capture(signature, args, kwargs, inputs)
        if len(self._serving) >= SIZES_KEPT:
            self._serving.clear()
        self._serving[(signature, inputs.shapes)] = cap
        return cap

    def _capture(
        self, signature: Hashable, args: Any, kwargs: Any, inputs: Inputs
    ) -> Capture | CaptureError:
        started = time.perf_counter()
        result: Capture | CaptureError
        try:
            cap = capture(self._orig_mod, args, kwargs, inputs.shapes)
            if not cap.batch_symbols and inputs.batch > 1:
                raise CaptureError("torch.export fixed the batch size (the model's code does)")
            cap.classifier = Classifier(cap, self.frozen_dropout)
            hooked = hooked_modules(self._orig_mod)
            if hooked:
                self._warn(
                    f"modules with hooks ({', '.join(hooked[:3])}{', ...' if hooked[3:] else ''})"
                    ": a cached forward runs the captured graph and does not call the hooks"
                )
        except CaptureError as exc:
            self._warn(f"caching is off for these inputs: {exc}")
            # Export would most likely fail again for other sizes (one capture takes seconds):
            # every call of this signature that no capture serves runs uncached.
            self._refused[signature] = result = exc
        else:
            self._captures.setdefault(signature, []).append(cap)
            result = cap
        self._counts["captures"] += 1
        self._counts["capture_seconds"] += time.perf_counter() - started
        return result

    def _partition(self, cap: Capture, leaves: tuple[Any, ...]) -> Partition:
        flags = tuple(p.tensor.requires_grad for p in cap.params())  # type: ignore[union-attr]
        part = cap.partitions.get(flags)
        if part is not None:
            return part
        names = _trainable_names(cap, leaves)
        anticipate = [
            {p.name for p in cap.params() if id(p.tensor) in ids} | (names - _param_names(cap))
            for ids in self._anticipated
        ]
        part = build(cap.classifier, flags, names, anticipate)
        for reason in part.reasons:
            self._warn(f"part of the frozen computation is not cached: {reason}")
        if len(cap.partitions) >= PARTITIONS_KEPT:
            cap.partitions.pop(next(iter(cap.partitions)))
        cap.partitions[flags] = part
        return part

    def _boundary(
        self, cap: Capture, part: Partition, leaves: tuple[Any, ...], batch: int
    ) -> list[torch.Tensor]:
        """The stored values the live graph reads, from the cache or computed for misses."""
        store = self._store
        slots = [(cap.id, name) for name in part.stored]
        for slot, sources in zip(slots, part.sources, strict=True):
            store.validate(slot, tuple((id(t), t._version, t.data_ptr()) for t in sources))
        # A sample is identified, for each value, by the inputs that value is computed from.
        by_leaves: dict[tuple[int, ...], list[bytes]] = {}
        for used in part.key_leaves:
            if used not in by_leaves:
                by_leaves[used] = sample_keys([leaves[i] for i in used], batch)
        keys = [by_leaves[used] for used in part.key_leaves]
        nb = part.boundary
        found: list[list[torch.Tensor | None]] = [
            [store.get(slot, k) for k in keys[j]] for j, slot in enumerate(slots[:nb])
        ]
        missing = [i for i in range(batch) if any(col[i] is None for col in found)]
        self._counts["hits"] += batch - len(missing)
        self._counts["misses"] += len(missing)
        fresh: list[torch.Tensor] = []
        if missing:
            started = time.perf_counter()
            fresh = self._fill(cap, part, leaves, batch, missing, slots, keys)
            self._counts["fill_seconds"] += time.perf_counter() - started
            if len(missing) == batch:
                return fresh[:nb]
        out = []
        for j in range(nb):
            col = found[j]
            if missing:
                rows = _per_sample(fresh[j], len(missing), part.grouped[j])
                for i, row in zip(missing, rows, strict=True):
                    col[i] = row
            out.append(_join(col, part.grouped[j]))  # type: ignore[arg-type]
        return out

    def _fill(
        self,
        cap: Capture,
        part: Partition,
        leaves: tuple[Any, ...],
        batch: int,
        missing: list[int],
        slots: Sequence[Hashable],
        keys: list[list[bytes]],
    ) -> list[torch.Tensor]:
        """Run the frozen graph on the missing samples and store what it computes."""
        if len(missing) < batch:
            index = torch.tensor(missing)
            read = {i for used in part.key_leaves for i in used}
            leaves = tuple(
                leaf.index_select(0, index.to(leaf.device)) if i in read else leaf
                for i, leaf in enumerate(leaves)
            )
        assert part.frozen is not None
        with torch.no_grad():
            outs = part.frozen(*(_value(p, leaves) for p in part.frozen_inputs))
        # Stored tensors are ordinary ones even when filled under `inference_mode` (an inference
        # tensor could not be used by a later training step).
        with torch.inference_mode(False):
            for slot, value, grouped, slot_keys in zip(
                slots, outs, part.grouped, keys, strict=True
            ):
                for i, row in zip(missing, _per_sample(value, len(missing), grouped), strict=True):
                    self._store.put(slot, slot_keys[i], row.clone())
        return list(outs)


_INSIDE = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))


def _user_frame() -> int:
    """The stacklevel of the first frame outside torch and freezepolicy.runtime: the user's
    call of the model, which is where a warning about that call belongs."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


def _per_sample(value: torch.Tensor, n: int, grouped: bool) -> list[torch.Tensor]:
    """A batch-major value split into one piece per sample (k rows each when dim 0 is n * k)."""
    if not grouped:
        return list(value.unbind(0))
    return list(value.unflatten(0, (n, -1)).unbind(0))


def _join(rows: list[torch.Tensor], grouped: bool) -> torch.Tensor:
    """Per-sample pieces back into a batch (the inverse of `_per_sample`)."""
    joined = torch.stack(rows)
    return joined.flatten(0, 1) if grouped else joined


def _value(p: Any, leaves: tuple[Any, ...]) -> Any:
    return p.tensor if p.tensor is not None else leaves[p.leaf]


def _param_names(cap: Capture) -> set[str]:
    return {p.name for p in cap.params()}


def _trainable_names(cap: Capture, leaves: tuple[Any, ...]) -> set[str]:
    """Placeholders that carry gradients: trainable parameters and inputs that require grad."""
    names = {p.name for p in cap.params() if p.tensor is not None and p.tensor.requires_grad}
    for p in cap.placeholders.values():
        if p.kind == "input" and getattr(leaves[p.leaf], "requires_grad", False):
            names.add(p.name)
    return names


def _anticipated_sets(model: nn.Module, policy: Policy) -> list[set[int]]:
    """The trainable sets (parameter ids) `policy` gives `model` at each of its moments."""
    from ...lang.errors import PolicyError
    from ..modelinfo import inspect_model, shapes_of

    info = inspect_model(model)
    bound = policy.bind(info.names, info.module_types, shapes_of(info.params))
    sets = []
    for epoch, step, fired in bound.moments():
        try:
            decisions = bound.resolve(epoch=epoch, step=step, fired=fired)
        except PolicyError as exc:  # a warm-up that needs steps_per_epoch: trainability is known
            warnings.warn(
                f"freezepolicy.cache_frozen: cannot anticipate {policy.source}: {exc}",
                stacklevel=3,
            )
            continue
        sets.append(
            {
                id(info.params[name])
                for name, d in decisions.items()
                if (d.trainable if d.trainable is not None else info.params[name].requires_grad)
            }
        )
    return sets


def cache_frozen(
    model: nn.Module,
    *,
    max_bytes: int = 2 * 2**30,
    frozen_dropout: str = "eval",
    anticipate: Policy | str | os.PathLike[str] | None = None,
) -> CachedModule:
    """Wrap `model` so that its frozen part is computed once per sample (see docs/caching.md).

    The result shares `model`'s parameters (the same objects: an optimizer, `param_groups`,
    `apply_policy` or a `FreezeScheduler` works with either) and its forward returns what
    `model`'s would, with the part of the computation that depends on no trainable tensor taken
    from the cache for samples seen since the frozen tensors last changed.

    - `max_bytes`: the most bytes of cached tensors held; least recently used out first.
    - `frozen_dropout`: `"eval"` turns dropout inside the frozen part off (as in eval mode, so
      the frozen part is a function of its input and can be cached); `"keep"` keeps it random,
      and the part from the first dropout on is then not cached.
    - `anticipate`: the policy that will drive the model; the values its later phases will
      need (after an unfreeze) are stored as well, so an unfreeze does not refill the cache.
    """
    return CachedModule(
        model, max_bytes=max_bytes, frozen_dropout=frozen_dropout, anticipate=anticipate
    )


__all__ = ["CacheStats", "CachedModule", "cache_frozen"]
