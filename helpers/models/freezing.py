"""Freezing by structure: a frozen module is in eval mode and has no gradient, whatever it holds.

The course's one freezing rule (notebook 05 introduces it), in the style of timm's `freeze()`:

    freeze(backbone)                      # every submodule frozen, every parameter without gradient
    unfreeze(backbone.body.layer4)        # this part trains again
    model.train()                         # Backbone.train() applies the rule: frozen parts stay in eval

Frozen is a mark on each module (set by `freeze`, cleared by `unfreeze`), not a guess from its
parameters: a BatchNorm without affine parameters, a Dropout or EfficientNet's drop-connect inside a
frozen stage has no parameter to look at, yet it must stop updating statistics / dropping values.
`apply_freezing_rule` is the only place that turns frozen modules to eval mode; the `train()`
overrides of `Backbone`, `BackboneTail`, `FineTuneModel` and the distributed trainer call it.
"""
from __future__ import annotations

from torch import nn

_FROZEN = "_frozen_by_helpers"  # the mark, an attribute on each module (copied by deepcopy)


def freeze(module: nn.Module) -> nn.Module:
    """Mark `module` and every submodule frozen and stop their parameters' gradients; returns `module`.

    The module is put in eval mode now; the rule keeps it there through later `train()` calls
    of a model that applies `apply_freezing_rule`.

    Notebook 01, inside `build_model`.
    """
    for m in module.modules():
        setattr(m, _FROZEN, True)
        m.training = False
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze(module: nn.Module, recurse: bool = True) -> nn.Module:
    """Clear the mark on `module` and every submodule and let every parameter train; returns `module`.

    `recurse=False`: only `module` itself and its own parameters (a container that holds a trainable
    part among frozen ones). The training mode is left as it is: the next `model.train()` puts the
    part in train mode.

    Notebook 01, inside `build_model`.
    """
    for m in (module.modules() if recurse else [module]):
        setattr(m, _FROZEN, False)
    for p in module.parameters(recurse=recurse):
        p.requires_grad_(True)
    return module


def is_frozen(module: nn.Module) -> bool:
    """True when `module` was frozen by `freeze` (and not unfrozen since).

    Notebook 00, inside `load_backbone`.
    """
    return bool(getattr(module, _FROZEN, False))


def apply_freezing_rule(module: nn.Module, batchnorm_eval: bool = False) -> nn.Module:
    """The one train()-time rule: every frozen module inside `module` goes to eval mode.

    Call it after `module.train()`. Frozen BatchNorm then normalises with its stored statistics and
    never updates them; frozen Dropout / drop-connect is off; so a frozen part computes exactly
    what it computed before training. `batchnorm_eval=True` also keeps the BatchNorm layers of
    trainable parts in eval mode (they still learn their scale and shift: `FineTuneModel`).
    Only `training` flags change (no recursion into other `train()` overrides); returns `module`.

    Notebook 00, inside `load_backbone`.
    """
    for m in module.modules():
        if is_frozen(m) or (batchnorm_eval and isinstance(m, nn.modules.batchnorm._BatchNorm)):
            m.training = False
    return module
