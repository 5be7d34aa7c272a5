"""Normalization layers with running statistics: holding them in eval mode while they are frozen.

Freezing the affine parameters of a BatchNorm layer does not freeze the layer: in train mode it
still normalizes with batch statistics and keeps moving its running mean and variance, which is
the classic bug of hand-written freezing loops. A layer freezepolicy holds runs in eval mode (it
normalizes with its running statistics and never updates them), even after `model.train()`.

The hold is a forward pre-hook that sets `training = False` before every forward. The hook is a
module-level function that captures nothing, so a held model can be deep-copied or pickled, and
a copy is recognised as held by the same test (`is_held`).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm


def has_running_stats(module: nn.Module) -> bool:
    """Whether `module` is a normalization layer that keeps running statistics.

    BatchNorm (1d/2d/3d, SyncBatchNorm, lazy variants) and InstanceNorm with
    `track_running_stats=True`. A layer with `track_running_stats=False` always uses batch
    statistics, so there is nothing to hold.
    """
    return (
        isinstance(module, (_BatchNorm, _InstanceNorm))
        and bool(module.track_running_stats)
        and getattr(module, "running_mean", None) is not None
    )


def _hold_eval(module: nn.Module, args: object) -> None:
    # Undo whatever `model.train()` did since the last forward: the statistics stay fixed.
    module.training = False


def is_held(module: nn.Module) -> bool:
    """Whether freezepolicy currently holds `module` in eval mode."""
    return any(hook is _hold_eval for hook in module._forward_pre_hooks.values())


def hold(module: nn.Module) -> None:
    """Keep `module` in eval mode, now and at every forward, until `release`. Idempotent."""
    if not is_held(module):
        module.register_forward_pre_hook(_hold_eval)
    module.training = False


def release(module: nn.Module, training: bool) -> None:
    """Stop holding `module`; it takes the train/eval mode `training` (the model's own mode)."""
    hooks = module._forward_pre_hooks
    for key in [k for k, hook in hooks.items() if hook is _hold_eval]:
        del hooks[key]
        # register_forward_pre_hook may have recorded the id in these too (torch >= 2.0).
        module._forward_pre_hooks_with_kwargs.pop(key, None)
        getattr(module, "_forward_pre_hooks_always_called", {}).pop(key, None)
    module.training = training
