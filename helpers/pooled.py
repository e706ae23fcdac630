"""Pooled stage outputs of a backbone, the inputs of `helpers.representations`.

`pooled(backbone, x, layers)` returns {"final": the backbone's output, tap: pooled output} for a
preprocessed batch, where a tap is a stage's global average ("layer3": (B, C)) or its means over the
cells of a G x G grid ("layer3:4x4": (B, C * 16), which keeps where in the face a feature fired).
`compute_pooled` runs it over PIL photos (ONNX Runtime on a CPU, one output per tap, else eager
PyTorch); `pooled_features` caches the result on disk.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .backbones import Backbone
from .images import image_digest
from .io import atomic_save
from .runtime import cache_dir

FINAL = "final"
GRID_LAYERS = ("layer3:2x2", "layer3:3x3", "layer3:4x4")  # grid-pooled taps the development stage tries
TAPPED = ("layer2", "layer3", *GRID_LAYERS)  # the pooled outputs `pooled_features` returns


def grid_pool(x: torch.Tensor, g: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * g * g): the mean of each cell of a g x g grid, channel-major, with the cells
    of `F.adaptive_avg_pool2d(x, g)` (written out with fixed slices so that it exports to ONNX)."""
    h, w = int(x.shape[2]), int(x.shape[3])
    cells = [x[:, :, (i * h) // g:-(-(i + 1) * h // g), (j * w) // g:-(-(j + 1) * w // g)].mean((2, 3))
             for i in range(g) for j in range(g)]
    return torch.stack(cells, 2).flatten(1)


def tap_stage(name: str) -> tuple[str, int]:
    """"layer3" -> ("layer3", 1): global average; "layer3:2x2" -> ("layer3", 2): a 2 x 2 grid of means."""
    stage, _, grid = name.partition(":")
    if not grid:
        return stage, 1
    a, _, b = grid.partition("x")
    if not (a.isdigit() and a == b and int(a) >= 1):
        raise ValueError(f"tap {name!r}: write a square grid as 'stage:GxG', e.g. 'layer3:2x2'")
    return stage, int(a)


class _Taps:
    """Forward hooks that keep pooled outputs of some stages during one call: "stage" is the stage's
    global average (B, C); "stage:GxG" the means of a G x G grid of it (B, C * G * G), which keeps where
    in the face a feature fired."""

    def __init__(self, backbone: Backbone, layers: Sequence[str]):
        self.backbone, self.layers = backbone, tuple(layers)
        self.grabbed: dict[str, torch.Tensor] = {}
        self.hooks = []

    def __enter__(self):
        for name in self.layers:
            stage, g = tap_stage(name)
            last = self.backbone.stage_modules(stage)[-1]
            self.hooks.append(last.register_forward_hook(
                lambda m, i, o, name=name, g=g: self.grabbed.__setitem__(
                    name, o.float().mean((2, 3)) if g == 1 else grid_pool(o.float(), g))))
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks = []
        return False


def pooled(backbone: Backbone, x: torch.Tensor, layers: Sequence[str] = TAPPED) -> dict[str, torch.Tensor]:
    """{"final": backbone(x), layer: pooled stage output} for a preprocessed batch `x`."""
    with _Taps(backbone, layers) as taps:
        out = {FINAL: backbone(x).float()}
    return {**out, **{n: taps.grabbed[n] for n in layers}}


class _PooledOut(nn.Module):
    """backbone -> (final, *layers) pooled: one output per tap, for ONNX export."""

    def __init__(self, backbone: Backbone, layers: Sequence[str]):
        super().__init__()
        self.backbone, self.layers = backbone, tuple(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = pooled(self.backbone, x, self.layers)
        return tuple([parts[FINAL]] + [parts[n] for n in self.layers])


_SESSIONS: dict = {}


def _onnx_pooled(backbone: Backbone, size: int, layers: Sequence[str]):
    """An ONNX Runtime session for `_PooledOut` (exported once per weights, size and layers), or None
    when ONNX Runtime is not to be used here (then PyTorch runs: the same features to ~1e-5)."""
    import importlib.util
    import io
    import warnings

    from .io import atomic_write_bytes, onnx_session
    from .onnx_backbone import resolve_engine, weights_digest

    if resolve_engine(None, torch.device("cpu")) != "onnxruntime" or importlib.util.find_spec("onnxruntime") is None:
        return None
    tag = "-".join(n.replace(":", "_") for n in layers)
    name = f"{backbone.name}-pooled2-{tag}-{size}-{weights_digest(backbone)}"
    key = (name, torch.get_num_threads())
    if key in _SESSIONS:
        return _SESSIONS[key]
    path = cache_dir("models", "onnx") / f"{name}.onnx"
    was = backbone.training
    try:
        if not path.exists():
            outs = [f"pooled{i}" for i in range(1 + len(layers))]  # final, then each tap in order
            buf = io.BytesIO()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(_PooledOut(backbone.cpu().eval(), layers), (torch.zeros(1, 3, size, size),), buf,
                                  dynamo=False, opset_version=17, input_names=["images"], output_names=outs,
                                  dynamic_axes={"images": {0: "batch"}, **{o: {0: "batch"} for o in outs}})
            atomic_write_bytes(buf.getvalue(), path)
        session = onnx_session(path, torch.get_num_threads())
    except Exception:  # export or load failed: PyTorch computes the same features
        return None
    finally:
        backbone.train(was)
    _SESSIONS.clear()  # one at a time: each holds a copy of the weights
    _SESSIONS[key] = session
    return session


def compute_pooled(backbone: Backbone, images: Sequence[Image.Image], size: int, batch_size: int | None = None,
                   layers: Sequence[str] = TAPPED, engine: str | None = None) -> dict[str, torch.Tensor]:
    """Pooled outputs of every image: ONNX Runtime on a CPU when installed (batch 64), else eager
    PyTorch (channels_last, inference mode, batch 16); `engine='torch'` forces PyTorch.

    Photos are prepared by `helpers.preprocess` (the backbone's evaluation transform, batched; on a
    GPU the next batch is prepared while the model runs on the current one)."""
    from .preprocess import prefetched_batches

    session = None
    device = next(backbone.parameters()).device
    if engine != "torch" and device.type == "cpu":
        session = _onnx_pooled(backbone, size, layers)
    batch_size = batch_size or (64 if session is not None else 16)
    was = backbone.training
    net = backbone.eval()
    if session is None:
        net = net.to(memory_format=torch.channels_last)
    keys = (FINAL, *layers)
    chunks: list[list[torch.Tensor]] = []
    try:
        with torch.inference_mode():
            for batch in prefetched_batches(list(images), size, backbone.mean, backbone.std, batch_size,
                                            ahead=device.type != "cpu"):
                if session is not None:
                    chunks.append([torch.from_numpy(a) for a in session.run(None, {"images": batch})])
                else:
                    x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
                    got = pooled(net, x, layers)
                    chunks.append([got[k].cpu() for k in keys])
    finally:
        backbone.train(was)
    if not chunks:
        return {FINAL: torch.zeros(0, backbone.feature_dim),
                **{n: torch.zeros(0, _stage_dim(backbone, n)) for n in layers}}
    return {k: torch.cat([c[i] for c in chunks]).float() for i, k in enumerate(keys)}


def _stage_dim(backbone: Backbone, layer: str) -> int:
    with torch.no_grad():
        was = backbone.training
        try:
            return int(pooled(backbone.eval(), torch.zeros(1, 3, 32, 32), (layer,))[layer].shape[1])
        finally:
            backbone.train(was)


def pooled_features(backbone: Backbone, images: Sequence[Image.Image], size: int | None = None,
                    cache: bool = True, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """`compute_pooled` as NumPy arrays, cached on disk (key: backbone, its weights, size, pixels)."""
    from .onnx_backbone import weights_digest

    size = size or backbone.input_size
    if not cache:
        return {k: v.numpy() for k, v in compute_pooled(backbone, images, size, batch_size).items()}
    from .preprocess import VERSION as PREPROCESS_VERSION

    h = hashlib.sha256(f"{backbone.cache_key()}|{weights_digest(backbone)}|{size}|{TAPPED}|{PREPROCESS_VERSION}|"
                       "pooled-v4".encode())
    for im in images:
        h.update(image_digest(im).encode())
    path = cache_dir("features", "pooled") / f"{backbone.name}-{size}-{h.hexdigest()[:24]}.pt"
    if path.exists():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(feats, dict) and all(len(v) == len(images) for v in feats.values()):
                return {k: v.numpy() for k, v in feats.items()}
        except Exception:
            pass  # unreadable: computed again below
    feats = compute_pooled(backbone, images, size, batch_size)
    atomic_save(feats, path)
    return {k: v.numpy() for k, v in feats.items()}
