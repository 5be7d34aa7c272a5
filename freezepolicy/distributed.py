"""Keeping data-parallel ranks identical when a policy changes which parameters train.

`DistributedDataParallel` decides once, when it is built, which parameters it synchronizes: its
reducer registers a gradient hook on, and reserves bucket space for, every parameter that has
`requires_grad` at that moment. A parameter unfrozen later gets a gradient on each rank that is
never all-reduced, so each rank applies a different update and the copies drift apart without any
error; a parameter frozen later keeps a bucket slot that waits for a gradient that never comes.
FSDP2 (`fully_shard`) reads `requires_grad` again at every unshard, so toggling it between steps
works, provided the module is sharded at that moment.

`apply_policy` calls two functions here, on every rank at the same moment:

- `check_apply(model, params, targets)` before it changes anything. It raises
  `PolicyResolveError` (FP206) for a combination it cannot keep in sync (docs/distributed.md
  lists them) and, when the set of synchronized parameters is about to change, confirms with one
  all-reduce of two integers per data-parallel group that every rank is about to make the same
  change. An error leaves model and optimizer untouched.
- `sync_after_apply(model)` after it changed `requires_grad`. Each DistributedDataParallel whose
  trainable set differs from the one its reducer was built for gets a new reducer over exactly
  the trainable parameters, at the start of its next forward pass: frozen ones sit in no bucket
  and cost no communication.

The reducer is rebuilt the way DDP rebuilds one when it is unpickled (`__setstate__`):
`_build_params_for_reducer`, then `_ddp_init_helper`. Those are private torch functions, so their
presence is checked first and a torch without them gets FP206 with a workaround. The wrapper is
found whether `apply_policy` gets the DDP object, a `torch.compile` of it, or the inner module (a
Hugging Face Trainer callback sees the inner one).

Without an initialized process group both functions return at once: single-process training pays
nothing.
"""

from __future__ import annotations

import gc
import hashlib
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import Diagnostic, PolicyResolveError

#: The error code of every problem this module reports (docs/errors.md).
CODE = "FP206"

_TODO_REWRAP = (
    "build the DistributedDataParallel wrapper again after the policy changes which parameters "
    "train, or keep the trainable set fixed while it is wrapped"
)


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


# --- finding the wrappers -------------------------------------------------------------------------


@dataclass
class _Wrappers:
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


def _find(model: nn.Module, *, fresh: bool = True) -> _Wrappers:
    """The wrappers in and around `model`. `fresh=False` lets a heap scan (see `_scan_for_ddp`)
    reuse what it found before."""
    root, ddps = _peel(model)
    out = _Wrappers(ddp=list(ddps))
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


# --- DDP -----------------------------------------------------------------------------------------

#: DDP -> trainable mask (over `_managed`) its current reducer was built for, once freezepolicy
#: has built one. A DDP not in here may have been built for any set: the first apply rebuilds.
_BUILT_FOR: weakref.WeakKeyDictionary[nn.Module, tuple[bool, ...]] = weakref.WeakKeyDictionary()
#: DDP -> how many times freezepolicy rebuilt its reducer (diagnostics and tests).
_REBUILDS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def _managed(ddp: Any) -> list[tuple[str, nn.Parameter]]:
    """The parameters the DDP's reducer may hold, in DDP's order (the same on every rank)."""
    ignored: set[str] = getattr(ddp, "parameters_to_ignore", set())
    return [(n, p) for n, p in ddp.module.named_parameters() if n not in ignored]


def _mask(ddp: Any, planned: dict[int, bool]) -> tuple[bool, ...]:
    return tuple(planned.get(id(p), p.requires_grad) for _, p in _managed(ddp))


def _ddp_problem(ddp: Any, planned: dict[int, bool]) -> str | None:
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
    if any(hasattr(p, "_in_backward_optimizers") for _, p in _managed(ddp)):
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


# --- FSDP2 ---------------------------------------------------------------------------------------


def _fsdp2_params(module: Any) -> list[tuple[str, nn.Parameter, str]]:
    """(name, sharded parameter, sharded-state name) of the parameters one FSDP2 module manages.

    FSDP2 has no public view of this. If its internals change, the fallback goes by what is
    registered on the modules: a sharded parameter is a DTensor, so any plain tensor counts as
    possibly unsharded (and is refused rather than risked).
    """
    try:
        groups = module._get_fsdp_state()._fsdp_param_groups
        return [
            (getattr(fp, "_param_fqn", None) or "?", fp.sharded_param, fp.sharded_state.name)
            for group in groups
            for fp in group.fsdp_params
        ]
    except (AttributeError, AssertionError):
        from torch.distributed.tensor import DTensor

        return [
            (name, p, "SHARDED" if isinstance(p, DTensor) else "UNKNOWN")
            for name, p in module.named_parameters()
        ]


def _fsdp2_managed(modules: Sequence[Any]) -> list[tuple[str, nn.Parameter, str]]:
    """`_fsdp2_params` of all the modules, each parameter once (nested modules overlap in the
    fallback)."""
    seen: set[int] = set()
    out = []
    for m in modules:
        for entry in _fsdp2_params(m):
            if id(entry[1]) not in seen:
                seen.add(id(entry[1]))
                out.append(entry)
    return out


def _fsdp2_groups(
    managed: Sequence[tuple[str, nn.Parameter, str]],
) -> list[tuple[Any, list[nn.Parameter]]]:
    """Process groups over which FSDP2 parameters must agree, each with its parameters.

    Every rank of a parameter's device mesh holds a piece of the same logical tensor, so all of
    them must give it the same requires_grad. One entry per dimension of each distinct mesh.
    """
    by_mesh: dict[int, tuple[Any, list[nn.Parameter]]] = {}
    for _name, p, _state in managed:
        mesh = getattr(p, "device_mesh", None)
        if mesh is not None:
            by_mesh.setdefault(id(mesh), (mesh, []))[1].append(p)
    return [
        (mesh.get_group(dim), params)
        for mesh, params in by_mesh.values()
        for dim in range(mesh.ndim)
    ]


# --- agreement between ranks ---------------------------------------------------------------------


def _digest(mask: Sequence[bool]) -> int:
    """A 56-bit digest of a trainable mask (fits an int64 with room to negate)."""
    data = bytes(int(bool(b)) for b in mask) + len(mask).to_bytes(8, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "big")


def _ranks_agree(mask: Sequence[bool], group: Any, device: torch.device) -> bool:
    """Whether every rank of `group` holds the same mask: one all-reduce (MAX) of [h, -h]."""
    return _ranks_agree_on(_digest(mask), group, device)


def _ranks_agree_on(h: int, group: Any, device: torch.device) -> bool:
    """Whether every rank of `group` holds the same digest `h` (one all-reduce)."""
    import torch.distributed as dist

    t = torch.tensor([h, -h], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t[0]) == -int(t[1])  # max(h) == min(h)


def _ddps_agree(changes: Sequence[tuple[Any, tuple[bool, ...]]]) -> bool:
    """Whether every rank is about to make the same DDP changes: `changes` holds (DDP, mask it
    is about to get) for each DDP whose synchronized set changes.

    One all-reduce per process group, groups in the order of their names, each over the masks of
    that group's DDPs as a multiset. Nothing depends on the order the DDPs come in: when the
    inner module is passed, they come from a heap scan, whose order differs between ranks, and
    one all-reduce per DDP in that order could pair one rank's all-reduce with another's for a
    different wrapper.
    """
    by_group: dict[str, tuple[Any, torch.device, list[int]]] = {}
    for ddp, mask in changes:
        group = ddp.process_group
        key = str(getattr(group, "group_name", id(group)))
        by_group.setdefault(key, (group, _ddp_device(ddp), []))[2].append(_digest(mask))
    for key in sorted(by_group):
        group, device, digests = by_group[key]
        if len(digests) == 1:
            h = digests[0]  # the digest a single DDP has always used
        else:
            data = b"".join(d.to_bytes(7, "big") for d in sorted(digests))
            h = int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "big")
        if not _ranks_agree_on(h, group, device):
            return False
    return True


def _ddp_device(ddp: Any) -> torch.device:
    device = getattr(ddp, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(p.device for _, p in _managed(ddp))


def _fail(source: str, why: str, todo: str) -> PolicyResolveError:
    return PolicyResolveError(
        Diagnostic(CODE, f"cannot keep data-parallel ranks in sync: {why}; {todo}", path=source)
    )


def _disagree(source: str) -> PolicyResolveError:
    return _fail(
        source,
        "the ranks would train different sets of parameters at this moment",
        "call apply_policy with the same policy, epoch, step and steps_per_epoch on every rank",
    )


# --- the two calls apply_policy makes ------------------------------------------------------------


@dataclass
class SyncPlan:
    """What `check_apply` found, for `sync_after_apply` in the same apply (weakly held)."""

    #: The DistributedDataParallel wrappers around or inside the model.
    ddp: list[weakref.ref] = field(default_factory=list)
    #: id(DDP) -> the trainable mask all ranks confirmed they are about to set.
    agreed: dict[int, tuple[bool, ...]] = field(default_factory=dict)


#: (model, plan) of the last check_apply, taken by the sync_after_apply of the same apply, so
#: the wrappers are not searched for twice and the ranks not asked twice.
_HANDOFF: tuple[weakref.ref, SyncPlan] | None = None


def check_apply(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    targets: Sequence[bool],
    *,
    source: str = "<policy>",
) -> SyncPlan | None:
    """Raise `PolicyResolveError` (FP206) before an apply that would desynchronize ranks.

    `params` and `targets` are the tensors the apply decides and the `requires_grad` each will
    get. Call on every rank at the same moment: when the synchronized set is about to change,
    this makes one small all-reduce per data-parallel group to confirm all ranks agree. Returns
    the plan for `sync_after_apply` (which also finds it by itself when given the same model),
    or None without a process group.
    """
    global _HANDOFF
    _HANDOFF = None
    if not _dist_ready():
        return None
    planned = {id(p): bool(t) for p, t in zip(params, targets, strict=True)}
    changing = any(p.requires_grad != bool(t) for p, t in zip(params, targets, strict=True))
    # A wrapper found by a heap scan is looked for again whenever the trainable set changes: one
    # built since the last scan was built for the flags of that moment and needs nothing until
    # the next change.
    wrappers = _find(model, fresh=changing)
    plan = SyncPlan([weakref.ref(d) for d in wrappers.ddp])

    if wrappers.fsdp1 and changing:
        raise _fail(
            source,
            "FullyShardedDataParallel (FSDP1) fixes which parameters train when it wraps the "
            "model, and this apply changes requires_grad",
            "apply the policy before wrapping and keep the trainable set fixed, or shard with "
            "FSDP2 (torch.distributed.fsdp.fully_shard)",
        )

    managed = _fsdp2_managed(wrappers.fsdp2) if wrappers.fsdp2 and changing else []
    if managed:
        unsharded = [name for name, _p, state in managed if state != "SHARDED"]
        if unsharded:
            raise _fail(
                source,
                f"FSDP2 parameters such as `{unsharded[0]}` are unsharded right now, and "
                "requires_grad set on them is lost at the next reshard",
                "call apply_policy between steps while the model is sharded (after "
                "optimizer.step()), or call reshard() on the model first",
            )

    # Every refusal a rank decides by itself comes before the first collective, so no rank can
    # leave the others waiting in an all-reduce it never joins.
    changes = []
    for ddp in wrappers.ddp:
        mask = _mask(ddp, planned)
        if _BUILT_FOR.get(ddp) == mask:
            continue
        problem = _ddp_problem(ddp, planned)
        if problem is not None:
            raise _fail(source, problem, _TODO_REWRAP)
        changes.append((ddp, mask))

    for group, group_params in _fsdp2_groups(managed):
        group_mask = [planned.get(id(p), p.requires_grad) for p in group_params]
        if not _ranks_agree(group_mask, group, group_params[0].device):
            raise _disagree(source)
    if changes and not _ddps_agree(changes):
        raise _disagree(source)
    for ddp, mask in changes:
        plan.agreed[id(ddp)] = mask
    _HANDOFF = (weakref.ref(model), plan)
    return plan


def sync_after_apply(
    model: nn.Module, plan: SyncPlan | None = None, *, source: str = "<policy>"
) -> int:
    """Make every DDP around `model` synchronize exactly its trainable parameters.

    Call on every rank after `requires_grad` changed; apply_policy does, right after
    `check_apply`, whose plan is picked up here. Called on its own (after changing
    requires_grad by hand), it finds the wrappers and checks the ranks agree itself. Each
    DistributedDataParallel whose trainable set differs from the one its reducer was built for
    (or that freezepolicy has not rebuilt yet, as it may have been built for other flags) gets a
    new reducer at the start of its next forward pass, before DDP's own pre-forward work. By then
    any backward pass of the old set has finished, so the old reducer completes the iteration it
    started. Returns how many rebuilds were scheduled. FSDP2 needs nothing: it reads
    requires_grad at every unshard.
    """
    global _HANDOFF
    if plan is None and _HANDOFF is not None and _HANDOFF[0]() is model:
        plan = _HANDOFF[1]
    _HANDOFF = None
    if plan is None:
        if not _dist_ready():
            return 0
        plan = SyncPlan([weakref.ref(d) for d in _find(model).ddp])
    scheduled = 0
    follow: list[tuple[Any, tuple[bool, ...]]] = []
    unagreed: list[tuple[Any, tuple[bool, ...]]] = []
    for ref in plan.ddp:
        ddp = ref()
        if ddp is None:
            continue
        mask = _mask(ddp, {})
        if _BUILT_FOR.get(ddp) == mask:
            _PENDING.pop(ddp, None)
            continue
        if getattr(ddp, "_delay_all_reduce_all_params", False):
            _BUILT_FOR[ddp] = mask  # no reducer: DDP all-reduces one fused buffer of them all
            continue
        if plan.agreed.get(id(ddp)) != mask:
            problem = _ddp_problem(ddp, {})
            if problem is not None:
                raise _fail(source, problem, _TODO_REWRAP)
            unagreed.append((ddp, mask))
        follow.append((ddp, mask))
    # As in check_apply: refusals first, then one agreement that does not depend on the order.
    if unagreed and not _ddps_agree(unagreed):
        raise _disagree(source)
    for ddp, mask in follow:
        if not any(mask):
            # DDP cannot hold an empty reducer. The old one stays: no parameter produces a
            # gradient, so none of its hooks fire. The apply that unfreezes again rebuilds.
            _PENDING.pop(ddp, None)
            continue
        _PENDING[ddp] = mask
        # Looked up on the module itself, so a pickled or copied DDP is not hooked twice.
        if not any(isinstance(h, _RebuildHook) for h in ddp._forward_pre_hooks.values()):
            ddp.register_forward_pre_hook(_RebuildHook())
        scheduled += 1
    return scheduled


#: DDP -> trainable mask of a rebuild scheduled for its next forward.
_PENDING: weakref.WeakKeyDictionary[nn.Module, tuple[bool, ...]] = weakref.WeakKeyDictionary()


class _RebuildHook:
    """The forward pre-hook freezepolicy puts on a DDP: rebuilds its reducer when an apply
    scheduled it. An instance of a module-level class holding nothing, so a DDP that carries it
    can still be pickled (`torch.save` of the whole wrapper) and it keeps nothing alive."""

    #: `_rebuild_if_pending` excluded from torch.compile (made on first use: creating it imports
    #: torch._dynamo, which DDP has imported by then anyway). Under a compiled DDP the rebuild is
    #: Python bookkeeping that must run, never be traced.
    _impl: Any = None

    def __call__(self, ddp: Any, args: object) -> None:
        impl = _RebuildHook._impl
        if impl is None:
            impl = _RebuildHook._impl = torch.compiler.disable(_rebuild_if_pending)
        impl(ddp, args)


def _rebuild_if_pending(ddp: Any, args: object) -> None:
    """Rebuild the reducer of `ddp` if an apply scheduled it (one dictionary lookup if not)."""
    if ddp not in _PENDING:
        return
    if _not_finalized(ddp):
        # The last backward left gradients unreduced (a trainable parameter that got none).
        # Keep the old reducer so DDP raises its own error, which names the parameters.
        return
    del _PENDING[ddp]
    _rebuild(ddp)
    _BUILT_FOR[ddp] = _mask(ddp, {})
    _REBUILDS[ddp] = _REBUILDS.get(ddp, 0) + 1


def reducer_rebuilds(ddp: Any) -> int:
    """How many times freezepolicy rebuilt the reducer of `ddp`."""
    return _REBUILDS.get(ddp, 0)
