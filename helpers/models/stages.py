"""The stage protocol every backbone body follows, and the pretrained config of its weights.

A body is cut into named stages (`forward_stage`), then pooled (`forward_head`); `Backbone` builds
`forward_intermediates` / `forward_until` / `forward_from` on it (timm's stage API), so stage taps,
stage-input caching and gradual unfreezing need no hooks, tracing or knowledge of the architecture.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FINAL = "final"  # the key of the backbone's pooled output beside stage outputs


@dataclass(frozen=True)
class PretrainedConfig:
    """How a model's weights expect their input (timm's `pretrained_cfg`): photo size and normalisation.

    Notebook 00, inside `load_backbone`.
    """
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class Stages(nn.Module):
    """A trunk cut into named stages: `forward_stage(name, x)` runs one, `forward_head(x)` pools the last
    output to (B, D). `stage_paths` lists, per stage in order, the submodules it owns (for parameters and
    freezing). An architecture is added by writing one subclass (or using `SequentialStages`).

    Notebook 00, inside `load_backbone`.
    """

    stage_paths: "OrderedDict[str, list[str]]"

    def forward_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stage_paths:
            x = self.forward_stage(name, x)
        return self.forward_head(x)


class SequentialStages(Stages):
    """Named children run in order: stage s runs its first listed child up to the next stage's first
    child (parameter-free children such as ReLU and max-pooling ride along), the head runs whatever
    follows the last stage's last child. Children keep their names (`body.conv1.weight`, ...).

    Notebook 00, inside `load_backbone`.
    """

    def __init__(self, children: "OrderedDict[str, nn.Module]", stages: "OrderedDict[str, list[str]]"):
        super().__init__()
        for name, m in children.items():
            self.add_module(name, m)
        self.stage_paths = OrderedDict((k, list(v)) for k, v in stages.items())
        order = list(children)
        bad = [p for ps in self.stage_paths.values() for p in ps if p not in order]
        if bad:
            raise ValueError(f"stage paths {bad} are not children of this body ({order})")
        filled = [(s, order.index(ps[0]), order.index(ps[-1])) for s, ps in self.stage_paths.items() if ps]
        self._runs: dict[str, list[str]] = {s: [] for s in self.stage_paths}
        for k, (s, first, last) in enumerate(filled):
            stop = filled[k + 1][1] if k + 1 < len(filled) else last + 1
            self._runs[s] = order[first:stop]
        self._head = order[filled[-1][2] + 1:] if filled else order
        if filled and filled[0][1] != 0:
            self._runs[filled[0][0]] = order[:filled[0][1]] + self._runs[filled[0][0]]

    def forward_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        for child in self._runs[name]:
            x = getattr(self, child)(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        for child in self._head:
            x = getattr(self, child)(x)
        return x
