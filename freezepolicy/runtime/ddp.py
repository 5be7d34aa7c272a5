"""DistributedDataParallel around (or inside) a model: finding the wrappers, and giving one a new
gradient reducer over exactly the parameters that train now.

`DistributedDataParallel` decides once, when it is built, which parameters it synchronizes: its
reducer registers a gradient hook on, and reserves bucket space for, every parameter that has
`requires_grad` at that moment. distributed.py decides when a reducer must be rebuilt and makes
the ranks agree; this module does the finding and the rebuilding.

The reducer is rebuilt the way DDP rebuilds one when it is unpickled (`__setstate__`):
`_build_params_for_reducer`, then `_ddp_init_helper`. Those are private torch functions, so their
presence is checked first (`ddp_problem`) and a torch without them gets FP206 with a workaround.
"""

from __future__ import annotations

import gc
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Wrappers:
    ddp: list[Any] = field(default_factory=list)
    fsdp2: list[nn.Module] = field(default_factory=list)
    fsdp1: list[nn.Module] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ddp or self.fsdp2 or self.fsdp1)


#: Inner module -> the DDPs a heap scan found around it (weakly: neither keeps the other alive).
_OUTER: weakref.WeakKeyDictionary[nn.Module, tuple[weakref.ref, ...]] = weakref.WeakKeyDictionary()


def _ddp_class() -> Any:
    return nn.parallel.DistributedDataParallel


def _peel(model: Any) -> tuple[nn.Module, list[Any]]:
    """The user's module inside DDP / DataParallel / torch.compile, and the DDPs peeled off."""
    ddp_cls = _ddp_class()
    found: list[Any] = []
    for _ in range(16):  # wrappers nest a few levels at most; the bound guards a cycle
        if isinstance(model, ddp_cls):
            found.append(model)
            model = model.module
        elif isinstance(model, nn.DataParallel):
            # Replicates the module at every forward, so it always sees the current flags.
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            break
    return model, found


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _ddps_around(root: nn.Module) -> list[Any]:
    """Every DistributedDataParallel among the objects the garbage collector tracks whose module
    contains `root`, in heap order (which is not the same on every rank)."""
    ddp_cls = _ddp_class()
    found = []
    for obj in gc.get_objects():
        # The MRO test, not isinstance: DDP's bases include an ABC, whose isinstance is slow.
        if ddp_cls not in type(obj).__mro__:
            continue
        inner = getattr(obj, "module", None)  # None while a DDP is being constructed
        if isinstance(inner, nn.Module) and _contains(inner, root):
            found.append(obj)
    return found


def _scan_for_ddp(root: nn.Module, *, fresh: bool) -> list[Any]:
    """Every live DistributedDataParallel whose module contains `root`, found by a heap scan.

    Only reached when the caller passed a module with no DDP or FSDP in or around it while a
    process group is up. A module holds no reference to the DDP around it, so the only way to
    find one is to look at live objects (about 0.1 s with a large library loaded). The result is
    remembered per module and reused unless `fresh`: check_apply asks for a fresh scan whenever
    the apply changes requires_grad, so a wrapper built since the last scan (a second
    `trainer.train()` wraps the module again; so does the FP206 workaround) is followed too,
    instead of only the one found first.

    All wrappers are returned, never just the first one met: the heap order differs between
    ranks (it follows each process's garbage-collection history), so "the first" could be a
    different wrapper on each rank, and the ranks would then rebuild different reducers and
    issue different collectives. A wrapper the program dropped can linger in a reference cycle
    until the collector runs, which also happens at different moments on different ranks; when
    more than one wrapper is found, a collection first makes every rank see the same set.
    """
    if not fresh:
        cached = [r() for r in _OUTER.get(root, ())]
        live = [d for d in cached if d is not None and _contains(d.module, root)]
        if live:
            return live
    found = _ddps_around(root)
    if len(found) > 1:
        found.clear()  # hold no reference while collecting: a dropped wrapper must go
        gc.collect()
        found = _ddps_around(root)
    if found:
        _OUTER[root] = tuple(weakref.ref(d) for d in found)
    else:
        _OUTER.pop(root, None)
    return found


def find_wrappers(model: nn.Module, *, fresh: bool = True) -> Wrappers:
    """The wrappers in and around `model`. `fresh=False` lets a heap scan (see `_scan_for_ddp`)
    reuse what it found before."""
    root, ddps = _peel(model)
    out = Wrappers(ddp=list(ddps))
    ddp_cls = _ddp_class()
    fsdp2_cls: type | None = None
    fsdp1_cls: type | None = None
    # Look for FSDP classes only when FSDP was imported: there can be no FSDP module otherwise.
    if "torch.distributed.fsdp" in sys.modules:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

        fsdp2_cls, fsdp1_cls = FSDPModule, FullyShardedDataParallel
    for m in root.modules():
        if m is not root and isinstance(m, ddp_cls):
            out.ddp.append(m)  # a DDP nested inside the model (TorchRec-style)
        elif fsdp2_cls is not None and isinstance(m, fsdp2_cls):
            out.fsdp2.append(m)
        elif fsdp1_cls is not None and isinstance(m, fsdp1_cls):
            out.fsdp1.append(m)
    if fsdp1_cls is not None and isinstance(model, fsdp1_cls) and model not in out.fsdp1:
        out.fsdp1.append(model)
    if not out:
        out.ddp.extend(_scan_for_ddp(root, fresh=fresh))
    return out


#: DDP -> trainable mask (over `managed`) its current reducer was built for, once freezepolicy
#: has built one. A DDP not in here may have been built for any set: the first apply rebuilds.
_BUILT_FOR: weakref.WeakKeyDictionary[nn.Module, tuple[bool, ...]] = weakref.WeakKeyDictionary()


#: DDP -> how many times freezepolicy rebuilt its reducer (diagnostics and tests).
_REBUILDS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def managed(ddp: Any) -> list[tuple[str, nn.Parameter]]:
    """The parameters the DDP's reducer may hold, in DDP's order (the same on every rank)."""
    ignored: set[str] = getattr(ddp, "parameters_to_ignore", set())
    return [(n, p) for n, p in ddp.module.named_parameters() if n not in ignored]


def mask_of(ddp: Any, planned: dict[int, bool]) -> tuple[bool, ...]:
    return tuple(planned.get(id(p), p.requires_grad) for _, p in managed(ddp))


def ddp_problem(ddp: Any, planned: dict[int, bool]) -> str | None:
    """Why this DDP cannot follow the planned trainable set, or None."""
    delayed = {id(p) for p in getattr(ddp, "_delay_all_reduce_params", ())}
    if delayed:
        for name, p in ddp.module.named_parameters():
            if id(p) in delayed and not planned.get(id(p), p.requires_grad):
                # DDP hands every delayed parameter a gradient view at every forward, frozen or
                # not, so weight decay and momentum would move a frozen one.
                return (
                    f"`{name}` is in delay_all_reduce_named_params, and DDP gives those "
                    "parameters a gradient at every forward even when they are frozen"
                )
    if getattr(ddp, "_delay_all_reduce_all_params", False):
        return None  # every parameter is delayed: there is no reducer to rebuild
    for attr in ("reducer", "_build_params_for_reducer", "_ddp_init_helper", "_comm_hooks"):
        if not hasattr(ddp, attr):
            return (
                f"this torch ({torch.__version__}) has no DistributedDataParallel.{attr}, which "
                "freezepolicy uses to rebuild the gradient reducer"
            )
    if getattr(ddp, "_use_python_reducer", False):
        return "DDP runs its Python reducer (compiled autograd), which is not rebuilt"
    if getattr(ddp, "mixed_precision", None) is not None:
        return "DDP's private mixed_precision mode keeps low-precision copies that are not rebuilt"
    if any(hasattr(p, "_in_backward_optimizers") for _, p in managed(ddp)):
        return "the model runs optimizers in backward (apply_optimizer_in_backward)"
    hook = _builtin_hook_name(ddp)
    if hook is not None and not ddp._comm_hooks and _builtin_hook(hook) is None:
        return f"DDP has the communication hook `{hook}`, which freezepolicy cannot register again"
    return None


def _builtin_hook_name(ddp: Any) -> str | None:
    """The name DDP logged for its communication hook (a built-in one leaves no other trace)."""
    if getattr(ddp, "logger", None) is None:
        return None
    try:
        name = ddp._get_ddp_logging_data().get("comm_hook")
    except Exception:  # a prototype API: without it there is no built-in hook to restore
        return None
    return str(name) if name else None


def _builtin_hook(name: str) -> Any:
    import torch.distributed as dist

    prefix = "BuiltinCommHookType."
    if not name.startswith(prefix):
        return None
    return getattr(dist.BuiltinCommHookType, name[len(prefix) :], None)


def _not_finalized(ddp: Any) -> bool:
    try:
        ddp.reducer._check_reducer_finalized()
    except RuntimeError:
        return True
    return False


def _rebuild(ddp: Any) -> None:
    """Give `ddp` a new reducer over exactly its parameters that require grad now.

    The steps DistributedDataParallel.__setstate__ takes, plus what its constructor does after
    building a reducer: communication hooks and static graph. Nothing here communicates; the new
    reducer learns its bucket order at its first backward, like a fresh DDP.
    """
    import torch.distributed as dist

    builtin = _builtin_hook_name(ddp)
    # Remove the old reducer's autograd hooks now, not whenever it is garbage collected: until
    # then they would still fire for the parameters they were registered on.
    ddp.reducer._remove_autograd_hooks()
    parameters, expect_sparse = ddp._build_params_for_reducer()
    mapping = ddp._build_debug_param_to_name_mapping(parameters)
    ddp._ddp_init_helper(parameters, expect_sparse, mapping, ddp.static_graph)
    for hook, state in ddp._comm_hooks:
        _reset_hook_state(state)
        ddp.logger._set_comm_hook_name(hook.__qualname__)
        dist._register_comm_hook(ddp.reducer, state, hook)
    if not ddp._comm_hooks and builtin is not None:
        kind = _builtin_hook(builtin)
        if kind is not None:
            ddp.logger._set_comm_hook_name(builtin)
            dist._register_builtin_comm_hook(ddp.reducer, kind)
    if ddp.static_graph:
        # A static-graph reducer records the graph in its first iteration; the new one must too.
        ddp._static_graph_delay_allreduce_enqueued = False
        ddp.reducer._set_static_graph()
        ddp.logger._set_static_graph()
    ddp._has_rebuilt_buckets = False


def _reset_hook_state(state: object) -> None:
    """Forget a communication hook's per-bucket memory: bucket indices now mean other tensors."""
    # PowerSGD keeps error feedback and low-rank factors per bucket index.
    for attr in ("error_dict", "p_memory_dict", "q_memory_dict"):
        memory = getattr(state, attr, None)
        if isinstance(memory, dict):
            memory.clear()


#: DDP -> trainable mask of a rebuild scheduled for its next forward.
_PENDING: weakref.WeakKeyDictionary[nn.Module, tuple[bool, ...]] = weakref.WeakKeyDictionary()


class RebuildHook:
    """The forward pre-hook freezepolicy puts on a DDP: rebuilds its reducer when an apply
    scheduled it. An instance of a module-level class holding nothing, so a DDP that carries it
    can still be pickled (`torch.save` of the whole wrapper) and it keeps nothing alive."""

    #: `rebuild_if_pending` excluded from torch.compile (made on first use: creating it imports
    #: torch._dynamo, which DDP has imported by then anyway). Under a compiled DDP the rebuild is
    #: Python bookkeeping that must run, never be traced.
    _impl: Any = None

    def __call__(self, ddp: Any, args: object) -> None:
        impl = RebuildHook._impl
        if impl is None:
            impl = RebuildHook._impl = torch.compiler.disable(rebuild_if_pending)
        impl(ddp, args)


def rebuild_if_pending(ddp: Any, args: object) -> None:
    """Rebuild the reducer of `ddp` if an apply scheduled it (one dictionary lookup if not)."""
    if ddp not in _PENDING:
        return
    if _not_finalized(ddp):
        # The last backward left gradients unreduced (a trainable parameter that got none).
        # Keep the old reducer so DDP raises its own error, which names the parameters.
        return
    del _PENDING[ddp]
    _rebuild(ddp)
    _BUILT_FOR[ddp] = mask_of(ddp, {})
    _REBUILDS[ddp] = _REBUILDS.get(ddp, 0) + 1


def reducer_rebuilds(ddp: Any) -> int:
    """How many times freezepolicy rebuilt the reducer of `ddp`."""
    return _REBUILDS.get(ddp, 0)


def built_for(ddp: Any) -> tuple[bool, ...] | None:
    """The trainable mask the current reducer of `ddp` was built for, once freezepolicy has
    built one (None: it may have been built for any set)."""
    return _BUILT_FOR.get(ddp)


def mark_built_for(ddp: Any, mask: tuple[bool, ...]) -> None:
    """Record that `ddp` synchronizes exactly `mask` without a rebuild (no reducer to rebuild)."""
    _BUILT_FOR[ddp] = mask


def schedule_rebuild(ddp: Any, mask: tuple[bool, ...]) -> None:
    """Rebuild the reducer of `ddp` for `mask` at the start of its next forward pass."""
    _PENDING[ddp] = mask
    # Looked up on the module itself, so a pickled or copied DDP is not hooked twice.
    if not any(isinstance(h, RebuildHook) for h in ddp._forward_pre_hooks.values()):
        ddp.register_forward_pre_hook(RebuildHook())


def cancel_rebuild(ddp: Any) -> None:
    """Forget a rebuild scheduled for `ddp`, if any."""
    _PENDING.pop(ddp, None)
