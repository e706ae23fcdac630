"""Frozen features of several layers in one pass, cached on disk (for the accuracy protocol).

`layer_features(backbone, images, size)` returns {"final": (N, D), "layer3": (N, C3),
"layer2": (N, C2), "layer3:GxG": (N, C3 * G * G), ...}: the backbone's pooled output (what
helpers.extract_features gives), the globally average-pooled outputs of its `layer3` and `layer2`
stages and `layer3`'s means over G x G grids (computed by the
library, helpers.pooled.compute_pooled). The cache key covers the backbone, the input size and every image's pixels.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from PIL import Image

from helpers.backbones import Backbone
from helpers.io import atomic_save
from helpers.images import image_digest
from helpers.preprocess import VERSION as PREPROCESS_VERSION
from helpers.pooled import TAPPED, compute_pooled
from helpers.runtime import cache_dir

LAYERS = TAPPED  # ("layer2", "layer3", grid taps of layer3)


def _key(backbone: Backbone, images: Sequence[Image.Image], size: int) -> str:
    # the preprocessing's version too: features cached before it resized in float are never reused
    h = hashlib.sha256(f"{backbone.cache_key()}|{size}|{LAYERS}|{PREPROCESS_VERSION}|v2".encode())
    for im in images:
        h.update(image_digest(im).encode())
    return h.hexdigest()[:24]


def compute_layer_features(backbone: Backbone, images: Sequence[Image.Image], size: int,
                           batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """The library's pooled stage outputs (helpers.pooled.compute_pooled: ONNX Runtime
    on a CPU when installed, else eager PyTorch), i.e. exactly what the recogniser computes."""
    return compute_pooled(backbone, images, size, batch_size, LAYERS)


def layer_features(backbone: Backbone, images: Sequence[Image.Image], size: int = 224,
                   batch_size: int | None = None, cache: bool = True) -> dict[str, torch.Tensor]:
    """Cached `compute_layer_features`."""
    if not cache:
        return compute_layer_features(backbone, images, size, batch_size)
    path = cache_dir("benchmarks", "features") / f"{backbone.name}-{size}-{_key(backbone, images, size)}.pt"
    if path.exists():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(feats, dict) and all(len(v) == len(images) for v in feats.values()):
                return feats
        except Exception:
            pass
    feats = compute_layer_features(backbone, images, size, batch_size)
    atomic_save(feats, path)
    return feats
