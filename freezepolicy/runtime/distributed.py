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

Finding the DDP wrappers and rebuilding a reducer are in ddp.py. A wrapper is found whether
`apply_policy` gets the DDP object, a `torch.compile` of it, or the inner module (a Hugging Face
Trainer callback sees the inner one).

Without an initialized process group both functions return at once: single-process training pays
nothing.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..lang.errors import Diagnostic, PolicyResolveError
from .ddp import (
    built_for,
    cancel_rebuild,
    ddp_problem,
    find_wrappers,
    managed,
    mark_built_for,
    mask_of,
    schedule_rebuild,
)

#: The error code of every problem this module reports (docs/errors.md).
CODE = "FP206"

_TODO_REWRAP = (
    "build the DistributedDataParallel wrapper again after the policy changes which parameters "
    "train, or keep the trainable set fixed while it is wrapped"
)


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


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
    return next(p.device for _, p in managed(ddp))


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
    wrappers = find_wrappers(model, fresh=changing)
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
        mask = mask_of(ddp, planned)
        if built_for(ddp) == mask:
            continue
        problem = ddp_problem(ddp, planned)
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
        plan = SyncPlan([weakref.ref(d) for d in find_wrappers(model).ddp])
    scheduled = 0
    follow: list[tuple[Any, tuple[bool, ...]]] = []
    unagreed: list[tuple[Any, tuple[bool, ...]]] = []
    for ref in plan.ddp:
        ddp = ref()
        if ddp is None:
            continue
        mask = mask_of(ddp, {})
        if built_for(ddp) == mask:
            cancel_rebuild(ddp)
            continue
        if getattr(ddp, "_delay_all_reduce_all_params", False):
            mark_built_for(ddp, mask)  # no reducer: DDP all-reduces one fused buffer of them all
            continue
        if plan.agreed.get(id(ddp)) != mask:
            problem = ddp_problem(ddp, {})
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
            cancel_rebuild(ddp)
            continue
        schedule_rebuild(ddp, mask)
        scheduled += 1
    return scheduled


