"""Frozen features of several layers in one pass, from the library's cache (for the accuracy protocol).

`layer_features(backbone, images, size)` returns {"final": (N, D), "layer3": (N, C3), "layer2": (N, C2),
"layer3:GxG": (N, C3 * G * G), ...}: `helpers.features.extract.extract` with the recogniser's taps, i.e. exactly
what the recogniser computes, cached under the library's one key (weights digest, preprocessing
version, input size, taps, pixels).
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from helpers.models.backbones import Backbone
from helpers.features.extract import TAPPED, extract

LAYERS = TAPPED  # ("layer2", "layer3", grid taps of layer3)


def layer_features(backbone: Backbone, images: Sequence[Image.Image], size: int = 224,
                   batch_size: int | None = None, cache: bool = True) -> dict[str, torch.Tensor]:
    """`extract(backbone, images, LAYERS, size)` as tensors."""
    return {k: torch.from_numpy(v) for k, v in extract(backbone, images, LAYERS, size, batch_size,
                                                       cache=cache).items()}
