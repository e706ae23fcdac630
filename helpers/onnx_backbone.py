"""Backbone features through ONNX Runtime on a CPU: the same features as PyTorch (within 2e-5), faster.

On this course's CPUs ONNX Runtime runs EfficientNet-Lite0 about 3x faster than eager PyTorch
(its depthwise convolutions especially); `benchmarks/extraction.py` measures it. The backbone
is exported once per (weights, input size) into `cache_dir("models", "onnx")` and reused. When
onnxruntime is missing or the export fails, `backbone_session` raises `OnnxUnavailable` with
the reason, and `helpers.features` falls back to PyTorch. `FACE_COURSE_ENGINE=torch` forces
PyTorch everywhere.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path

import torch

from .io import atomic_write_bytes, onnx_session
from .runtime import cache_dir

ENGINES = ("auto", "torch", "onnxruntime")
KEEP_FILES = 6  # exported backbones kept on disk (the most recently used)
_SESSIONS: "OrderedDict[tuple, object]" = OrderedDict()
_KEEP_SESSIONS = 3  # sessions kept in memory (each holds a copy of the weights)
_DIGESTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> (tensor versions, digest)


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime cannot run this backbone here (the message says why)."""


def resolve_engine(engine: str | None, device: torch.device) -> str:
    """'torch' or 'onnxruntime': `engine`, else $FACE_COURSE_ENGINE, else onnxruntime on a CPU when installed."""
    choice = engine or os.environ.get("FACE_COURSE_ENGINE", "auto")
    if choice not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {choice!r}")
    if choice != "auto":
        return choice
    ok = device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None
    return "onnxruntime" if ok else "torch"


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of every parameter and buffer: a changed (e.g. fine-tuned) weight gives a new one.

    Hashing 16-45 MB of weights costs tens of milliseconds, so the hash is reused while no tensor
    was replaced or modified in place (each tensor's version counter, which every optimiser step
    and load_state_dict advance, is unchanged).
    """
    # the module's own tensors (state_dict() would make fresh ones each call, with new ids)
    tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    signature = tuple((name, id(t), t.data_ptr(), t._version) for name, t in tensors)
    known = _DIGESTS.get(module)
    if known is not None and known[0] == signature:
        return known[1]
    state = module.state_dict()
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    digest = h.hexdigest()[:16]
    _DIGESTS[module] = (signature, digest)
    return digest


def backbone_session(backbone, height: int, width: int, n_threads: int):
    """An ONNX Runtime session mapping (N, 3, height, width) float32 images to (N, feature_dim) features."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise OnnxUnavailable("onnxruntime is not installed (pip install onnxruntime)")
    name = f"{backbone.name}-{height}x{width}-{weights_digest(backbone)}"
    key = (name, n_threads)
    if key in _SESSIONS:
        _SESSIONS.move_to_end(key)
        return _SESSIONS[key]
    folder = cache_dir("models", "onnx")
    path = folder / f"{name}.onnx"
    if not path.exists():
        _export(backbone, height, width, path)
    path.touch()  # most recently used: kept by _prune
    _prune(folder)
    try:
        session = onnx_session(path, n_threads)
    except Exception as e:  # e.g. a damaged file: say so, PyTorch takes over
        raise OnnxUnavailable(f"onnxruntime could not load {path.name}: {str(e).splitlines()[0][:160]}") from e
    _SESSIONS[key] = session
    while len(_SESSIONS) > _KEEP_SESSIONS:
        _SESSIONS.popitem(last=False)
    return session


def _export(backbone, height: int, width: int, path: Path) -> None:
    was_training = backbone.training
    buf = io.BytesIO()
    try:
        net = backbone.cpu().eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's constant-folding notes
            torch.onnx.export(net, (torch.zeros(1, 3, height, width),), buf, dynamo=False, opset_version=17,
                              input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    except Exception as e:
        raise OnnxUnavailable(f"exporting {backbone.name} to ONNX failed: {str(e).splitlines()[0][:160]}") from e
    finally:
        backbone.train(was_training)
    atomic_write_bytes(buf.getvalue(), path)


def _prune(folder: Path) -> None:
    """Keep the KEEP_FILES most recently used exports; older ones are deleted (they are only a cache)."""
    files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP_FILES:]:
        old.unlink(missing_ok=True)
