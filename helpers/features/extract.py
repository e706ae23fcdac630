"""Frozen-backbone features: the one extractor and its one on-disk cache.

`extract(backbone, photos, taps=...)` returns named arrays: "final" (N, D), the backbone's pooled
output, and one per tap, where a tap is a stage's global average ("layer3": (N, C)) or its means over
the cells of a G x G grid ("layer3:4x4": (N, C * 16), which keeps where in the face a feature fired).
Stage outputs come from `Backbone.forward_intermediates`. On a CPU with ONNX Runtime installed the
backbone and its taps run there (`helpers.features.onnx_backbone`), else in eager PyTorch; the photos are
prepared by `helpers.data.preprocess`. The cache key covers the backbone's name and pretrained config, a
digest of its weights, `preprocess.VERSION`, the input size, the taps and every photo's pixels.
Introduced in notebook 01 (frozen features) and 06 (stage taps).
"""
from __future__ import annotations

import copy
import hashlib
import time
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..models.backbones import FINAL, Backbone
from ..data.images import image_digest
from ..io import atomic_save
from .onnx_backbone import OnnxUnavailable, backbone_session, resolve_engine, weights_digest
from ..data.preprocess import VERSION as PREPROCESS_VERSION
from ..data.preprocess import prefetched_batches
from ..runtime import cache_dir, pick_device
from .taps import GRID_LAYERS, TAPPED, stage_taps, tap_stage

__all__ = ["FINAL", "GRID_LAYERS", "TAPPED", "cache_key", "compute", "default_batch_size", "extract",
           "extract_features", "stage_taps"]
FORMAT = "extract-1"  # the cache files' layout; part of the key


# ---------------------------------------------------------------------- the extractor

def default_batch_size(engine: str, device: torch.device) -> int:
    """Images per batch that ran fastest in benchmarks/extraction.py: ONNX Runtime and GPUs like big
    batches (64); eager PyTorch on a CPU is fastest at small ones (8-16: the activations stay in cache).

    Notebook 01, inside `cache_demo`.
    """
    return 16 if engine == "torch" and device.type == "cpu" else 64


def _check_taps(backbone: Backbone, taps: Sequence[str]) -> tuple[str, ...]:
    taps = tuple(dict.fromkeys(taps))
    if FINAL in taps:
        raise ValueError(f"{FINAL!r} is always returned; list only stage taps")
    for t in taps:
        stage, _ = tap_stage(t)
        if stage not in backbone.stage_names:
            raise KeyError(f"tap {t!r}: unknown stage {stage!r}; this backbone has {backbone.stage_names}")
    return taps


_SAID: set[str] = set()


def _runner(backbone: Backbone, taps: tuple[str, ...], engine: str, device: torch.device, size: int):
    """A function batch (B, 3, size, size) float32 numpy -> [final, *taps] float32 CPU tensors.

    Leaves `backbone` where it is (device, memory format): the PyTorch path runs it in place when it
    already sits on `device` (only the input is channels_last), else runs a copy moved there."""
    if engine == "onnxruntime":
        try:
            session = backbone_session(backbone, size, size, torch.get_num_threads(), taps)
            return lambda batch: [torch.from_numpy(a) for a in session.run(None, {"images": batch})]
        except OnnxUnavailable as e:
            if str(e) not in _SAID:
                _SAID.add(str(e))
                print(f"features: {e}; using PyTorch instead")
    here = all(p.device.type == device.type and device.index in (None, p.device.index)
               for p in backbone.parameters())
    net = backbone if here else copy.deepcopy(backbone).to(device)
    keys = (FINAL, *taps)

    def run(batch: np.ndarray) -> list[torch.Tensor]:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
            got = stage_taps(net, x, taps)
            return [got[k].float().cpu() for k in keys]
    return run


def compute(backbone: Backbone, images: Sequence[Image.Image], taps: Sequence[str] = (), size: int | None = None,
            batch_size: int | None = None, engine: str | None = None, device: torch.device | str | None = None,
            progress: bool = False, transform=None) -> dict[str, torch.Tensor]:
    """`extract` without the cache, as float32 CPU tensors: {"final": (N, D), tap: (N, C_tap)}.

    `engine`: 'torch' (inference mode, channels_last input) or 'onnxruntime' (the backbone and its taps
    exported once, see `helpers.features.onnx_backbone`); default: ONNX Runtime on a CPU when installed (or
    $FACE_COURSE_ENGINE). If ONNX Runtime cannot run it, PyTorch does, and one line says why. The
    backbone runs in eval mode; its mode, device and memory format are as before afterwards.
    `transform`: a per-photo transform (PIL -> (3, H, W)) instead of `helpers.data.preprocess`'s batched
    evaluation transform (e.g. an augmenting one, for timing; never cached).

    Notebook 01, inside `cache_demo`.
    """
    taps = _check_taps(backbone, taps)
    size = int(size or backbone.input_size)
    device = pick_device(device)
    engine = resolve_engine(engine, device)
    batch_size = batch_size or default_batch_size(engine, device)
    images = list(images)
    keys = (FINAL, *taps)
    chunks: list[list[torch.Tensor]] = []
    was = backbone.training
    try:
        backbone.eval()
        run = None
        if transform is None:
            batches = prefetched_batches(images, size, backbone.mean, backbone.std, batch_size,
                                         ahead=device.type != "cpu")
        else:
            batches = (torch.stack([transform(im) for im in images[s:s + batch_size]]).numpy()
                       for s in range(0, len(images), batch_size))
        for batch in tqdm(batches, total=-(-len(images) // batch_size), desc=f"features ({backbone.name})",
                          disable=not progress, leave=False):
            run = run or _runner(backbone, taps, engine, device, batch.shape[-1])
            chunks.append(run(batch))
    finally:
        backbone.train(was)
    if not chunks:
        return {k: torch.zeros(0, d) for k, d in zip(keys, _dims(backbone, taps, size))}
    # torch.cat outside inference mode turns inference tensors into ordinary ones
    return {k: torch.cat([c[i] for c in chunks]).float() for i, k in enumerate(keys)}


def _dims(backbone: Backbone, taps: tuple[str, ...], size: int) -> list[int]:
    was = backbone.training
    try:
        with torch.no_grad():
            p = next(backbone.parameters())
            got = stage_taps(backbone.eval(), torch.zeros(1, 3, size, size, device=p.device), taps)
        return [int(got[k].shape[1]) for k in (FINAL, *taps)]
    finally:
        backbone.train(was)


def cache_key(backbone: Backbone, images: Sequence[Image.Image], taps: Sequence[str] = (),
              size: int | None = None) -> str:
    """The one cache key: backbone name and pretrained config, weights digest, preprocessing version,
    input size, taps and every photo's pixels (24 hex digits).

    Notebook 01, inside `cache_demo`.
    """
    size = int(size or backbone.input_size)
    h = hashlib.sha256("|".join([FORMAT, backbone.cache_key(), weights_digest(backbone), PREPROCESS_VERSION,
                                 str(size), ",".join(taps)]).encode())
    for im in images:
        h.update(image_digest(im).encode())
    return h.hexdigest()[:24]


def extract(backbone: Backbone, images: Sequence[Image.Image], taps: Sequence[str] = (), size: int | None = None,
            batch_size: int | None = None, engine: str | None = None, device: torch.device | str | None = None,
            cache: bool = True, progress: bool = False, verbose: bool = False) -> dict[str, np.ndarray]:
    """{"final": (N, D), tap: (N, C_tap) for each of `taps`} float32 arrays for `images`, read from or
    written to the on-disk cache (`cache_dir("features")`). A cache file that cannot be read or does not
    match is reported and rebuilt. See `compute` for `engine`, `device`, `batch_size`.

    Notebook 01, inside `cache_demo`.
    """
    images = list(images)
    taps = _check_taps(backbone, taps)
    size = int(size or backbone.input_size)
    if not cache:
        return {k: v.numpy() for k, v in compute(backbone, images, taps, size, batch_size, engine, device,
                                                 progress).items()}
    path = cache_dir("features") / f"{backbone.name}-{size}-{cache_key(backbone, images, taps, size)}.pt"
    keys = {FINAL, *taps}
    if path.exists():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if not (isinstance(feats, dict) and set(feats) == keys
                    and all(isinstance(v, torch.Tensor) and v.ndim == 2 and len(v) == len(images)
                            and bool(torch.isfinite(v).all()) for v in feats.values())):
                raise ValueError("unexpected content")
            if verbose:
                print(f"features: {len(images)} images, read from cache ({path.name})")
            return {k: v.numpy() for k, v in feats.items()}
        except Exception as e:
            print(f"features: cache file {path.name} is unreadable ({type(e).__name__}); rebuilding it")
    t0 = time.perf_counter()
    feats = compute(backbone, images, taps, size, batch_size, engine, device, progress)
    atomic_save(feats, path)
    if verbose:
        print(f"features: {len(images)} images computed in {time.perf_counter() - t0:.1f} s and cached")
    return {k: v.numpy() for k, v in feats.items()}


def extract_features(backbone: Backbone, images: Sequence[Image.Image], batch_size: int | None = None,
                     cache: bool = True, device=None, progress: bool = True, verbose: bool = True,
                     size: int | None = None) -> torch.Tensor:
    """`extract(...)["final"]` as a tensor (N, feature_dim): the name notebooks 01-05 use (via `helpers`).

    Notebook 01, inside `cache_demo`.
    """
    return torch.from_numpy(extract(backbone, images, (), size, batch_size, device=device, cache=cache,
                                    progress=progress, verbose=verbose)[FINAL])
