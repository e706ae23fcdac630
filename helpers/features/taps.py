"""Pooled stage taps of one preprocessed batch, by `Backbone.forward_intermediates`.

A tap is a stage's global average ("layer3": (B, C)) or its means over the cells of a G x G grid
("layer3:4x4": (B, C * 16), which keeps where in the face a feature fired). `stage_taps` is what the
extractor (`helpers.features.extract`), its ONNX export (`TapOutputs`) and the recogniser's representation run.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models.backbones import FINAL, Backbone

GRID_LAYERS = ("layer3:2x2", "layer3:3x3", "layer3:4x4")  # grid-pooled taps the development stage tries
TAPPED = ("layer2", "layer3", *GRID_LAYERS)  # the taps the recogniser's representations read


def tap_stage(name: str) -> tuple[str, int]:
    """"layer3" -> ("layer3", 1): global average; "layer3:2x2" -> ("layer3", 2): a 2 x 2 grid of means.

    Notebook 01, inside `cache_demo`.
    """
    stage, _, grid = name.partition(":")
    if not grid:
        return stage, 1
    a, _, b = grid.partition("x")
    if not (a.isdigit() and a == b and int(a) >= 1):
        raise ValueError(f"tap {name!r}: write a square grid as 'stage:GxG', e.g. 'layer3:2x2'")
    return stage, int(a)


def grid_pool(x: torch.Tensor, g: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * g * g): the mean of each cell of a g x g grid, channel-major, with the cells
    of `F.adaptive_avg_pool2d(x, g)` (written out with fixed slices so that it exports to ONNX).

    Notebook 01, inside `cache_demo`.
    """
    h, w = int(x.shape[2]), int(x.shape[3])
    cells = [x[:, :, (i * h) // g:-(-(i + 1) * h // g), (j * w) // g:-(-(j + 1) * w // g)].mean((2, 3))
             for i in range(g) for j in range(g)]
    return torch.stack(cells, 2).flatten(1)


def stage_taps(backbone: Backbone, x: torch.Tensor, taps: Sequence[str] = TAPPED) -> dict[str, torch.Tensor]:
    """{"final": backbone(x) (B, D), tap: pooled stage output (B, C) or (B, C * G * G)} for a preprocessed
    batch `x` (B, 3, H, W): one pass through `backbone.forward_intermediates`.

    Notebook 01, inside `cache_demo`.
    """
    parsed = {t: tap_stage(t) for t in taps}
    out = backbone.forward_intermediates(x, sorted({s for s, _ in parsed.values()}))
    got = {FINAL: out[FINAL].float()}
    for t, (stage, g) in parsed.items():
        o = out[stage].float()
        got[t] = o.mean((2, 3)) if g == 1 else grid_pool(o, g)
    return got


class TapOutputs(nn.Module):
    """backbone -> ("final", *taps) as a tuple: one output per name, what ONNX Runtime runs.

    Notebook 01, inside `cache_demo`.
    """

    def __init__(self, backbone: Backbone, taps: Sequence[str] = ()):
        super().__init__()
        self.backbone, self.taps = backbone, tuple(taps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        got = stage_taps(self.backbone, x, self.taps)
        return tuple(got[k] for k in (FINAL, *self.taps))
