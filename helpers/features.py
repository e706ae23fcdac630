"""Frozen-backbone features, computed once and cached on disk.

The cache key covers the backbone, its weights, the preprocessing and the pixels of every
image, so a changed photo (or another backbone or input size) computes new features.
"""
from __future__ import annotations

import hashlib
import time
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .backbones import Backbone
from .images import image_digest
from .io import atomic_save
from .preprocess import prefetched_batches
from .onnx_backbone import OnnxUnavailable, backbone_session, resolve_engine, weights_digest
from .runtime import cache_dir, pick_device


def _key(backbone: Backbone, images: Sequence[Image.Image], transform_repr: str) -> str:
    h = hashlib.sha256()
    h.update(backbone.cache_key().encode())
    h.update(weights_digest(backbone).encode())  # a fine-tuned or edited backbone never reads stale features
    h.update(transform_repr.encode())
    for img in images:
        h.update(image_digest(img).encode())
    return h.hexdigest()[:24]


def default_batch_size(engine: str, device: torch.device) -> int:
    """Images per batch that ran fastest in benchmarks/extraction.py: ONNX Runtime and GPUs like big
    batches (64); eager PyTorch on a CPU is fastest at small ones (8-16: the activations stay in cache)."""
    return 16 if engine == "torch" and device.type == "cpu" else 64


def compute_features(backbone: Backbone, images: Sequence[Image.Image], batch_size: int | None = None,
                     transform=None, device: torch.device | str | None = None,
                     progress: bool = True, engine: str | None = None, size: int | None = None) -> torch.Tensor:
    """Features (N, feature_dim) of `images`, the backbone in eval mode.

    `engine`: 'torch' (inference mode, channels_last) or 'onnxruntime' (the backbone exported
    once, see `helpers.onnx_backbone`); default: ONNX Runtime on a CPU when it is installed
    (or $FACE_COURSE_ENGINE). If ONNX Runtime cannot run the backbone, PyTorch does, and one
    line says why. The result is an ordinary tensor (like a cache hit), not an inference tensor.
    `transform=None`: the backbone's evaluation transform at `size` (default: its input size), done
    batch-wise by `helpers.preprocess` (the same numbers to 1e-5, several times faster; on a GPU the next
    batch is prepared while the model runs).
    """
    device = pick_device(device)
    engine = resolve_engine(engine, device)
    batch_size = batch_size or default_batch_size(engine, device)
    if transform is None:
        batches = (torch.from_numpy(b) for b in prefetched_batches(images, size or backbone.input_size,
                                                                   backbone.mean, backbone.std, batch_size,
                                                                   ahead=device.type != "cpu"))
    else:
        batches = (torch.stack([transform(im) for im in images[s:s + batch_size]])
                   for s in range(0, len(images), batch_size))
    run = None
    out = []
    was_training = backbone.training
    try:
        for batch in tqdm(batches, total=-(-len(images) // batch_size), desc=f"features ({backbone.name})",
                          disable=not progress, leave=False):
            if run is None:
                run = _runner(backbone, engine, device, batch.shape[-2], batch.shape[-1])
            out.append(run(batch))
    finally:
        backbone.train(was_training)
    # torch.cat outside inference mode turns the inference tensors into an ordinary one
    return torch.cat(out) if out else torch.empty(0, backbone.feature_dim)


def _runner(backbone: Backbone, engine: str, device: torch.device, height: int, width: int):
    """A function batch -> features (float32, CPU) for the chosen engine."""
    if engine == "onnxruntime":
        try:
            session = backbone_session(backbone, height, width, torch.get_num_threads())
            return lambda batch: torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
        except OnnxUnavailable as e:
            if str(e) not in _SAID:
                _SAID.add(str(e))
                print(f"features: {e}; using PyTorch instead")

    net = backbone.to(device).eval().to(memory_format=torch.channels_last)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(batch.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
    return run


_SAID: set[str] = set()


def extract_features(backbone: Backbone, images: Sequence[Image.Image], batch_size: int | None = None,
                     transform=None, cache: bool = True, device=None, progress: bool = True,
                     verbose: bool = True, size: int | None = None) -> torch.Tensor:
    """Like `compute_features`, but read from / written to the on-disk cache.

    A cache file that cannot be read or does not match is reported and rebuilt.
    """
    if not cache:
        return compute_features(backbone, images, batch_size, transform, device, progress, size=size)
    # the default (None) is the evaluation transform, done batch-wise: the same features, the same key
    key = _key(backbone, images, repr(transform or backbone.transform(size=size)))
    path = cache_dir("features") / f"{backbone.name}-{key}.pt"
    if path.exists():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if not (isinstance(feats, torch.Tensor) and feats.shape == (len(images), backbone.feature_dim)
                    and torch.isfinite(feats).all()):
                raise ValueError("unexpected content")
            if verbose:
                print(f"features: {len(images)} images, read from cache ({path.name})")
            return feats
        except Exception as e:
            print(f"features: cache file {path.name} is unreadable ({type(e).__name__}); rebuilding it")
    t0 = time.perf_counter()
    feats = compute_features(backbone, images, batch_size, transform, device, progress, size=size)
    atomic_save(feats, path)
    if verbose:
        print(f"features: {len(images)} images computed in {time.perf_counter() - t0:.1f} s and cached")
    return feats
