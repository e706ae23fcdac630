"""Frozen features of several layers in one pass, cached on disk (for the accuracy protocol).

`layer_features(backbone, images, size)` returns {"final": (N, D), "layer3": (N, C3),
"layer2": (N, C2)}: the backbone's pooled output (what helpers.extract_features gives) and
the globally average-pooled outputs of its `layer3` and `layer2` stages, read with forward
hooks. The cache key covers the backbone, the input size and every image's pixels.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from PIL import Image

from helpers.backbones import Backbone
from helpers.features import atomic_save
from helpers.images import image_digest
from helpers.runtime import cache_dir

LAYERS = ("layer2", "layer3")


def _key(backbone: Backbone, images: Sequence[Image.Image], size: int) -> str:
    h = hashlib.sha256(f"{backbone.cache_key()}|{size}|{LAYERS}|v1".encode())
    for im in images:
        h.update(image_digest(im).encode())
    return h.hexdigest()[:24]


def compute_layer_features(backbone: Backbone, images: Sequence[Image.Image], size: int,
                           batch_size: int = 16) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = _layer_batches(backbone, images, size, batch_size)
    return {k: torch.cat(v) for k, v in out.items()}  # outside inference mode: ordinary tensors


def _layer_batches(backbone: Backbone, images: Sequence[Image.Image], size: int,
                   batch_size: int) -> dict[str, list[torch.Tensor]]:
    transform = backbone.transform(size=size)
    net = backbone.eval().to(memory_format=torch.channels_last)
    grabbed: dict[str, torch.Tensor] = {}
    hooks = [backbone.stage_modules(name)[-1].register_forward_hook(
        lambda m, i, o, name=name: grabbed.__setitem__(name, o.float().mean((2, 3))))
        for name in LAYERS]
    out: dict[str, list[torch.Tensor]] = {"final": [], **{n: [] for n in LAYERS}}
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(im) for im in images[start:start + batch_size]])
            out["final"].append(net(batch.contiguous(memory_format=torch.channels_last)).float())
            for n in LAYERS:
                out[n].append(grabbed[n])
    finally:
        for h in hooks:
            h.remove()
    return out


def layer_features(backbone: Backbone, images: Sequence[Image.Image], size: int = 224,
                   batch_size: int = 16, cache: bool = True) -> dict[str, torch.Tensor]:
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
