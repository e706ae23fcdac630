"""Backbone features through ONNX Runtime on a CPU: the same features as PyTorch (within 2e-5), faster.

On this course's CPUs ONNX Runtime runs EfficientNet-Lite0 about 3x faster than eager PyTorch
(its depthwise convolutions especially); `benchmarks/extraction.py` measures it. The backbone
(with its stage taps) is exported once per (weights, input size, taps) into `cache_dir("models",
"onnx")` and reused. `onnx_bytes` is the one ONNX export (`helpers.recognize.export` uses it for recognisers).
When onnxruntime is missing or the export fails, `backbone_session` raises `OnnxUnavailable` with
the reason, and `helpers.features.extract` falls back to PyTorch. `FACE_COURSE_ENGINE=torch` forces
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

from ..io import atomic_write_bytes, onnx_session
from .taps import TapOutputs
from ..runtime import cache_dir

ENGINES = ("auto", "torch", "onnxruntime")
KEEP_FILES = 6  # exported backbones kept on disk (the most recently used)
_SESSIONS: "OrderedDict[tuple, object]" = OrderedDict()
_KEEP_SESSIONS = 3  # sessions kept in memory (each holds a copy of the weights)
_DIGESTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> (tensor versions, digest)


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime cannot run this backbone here (the message says why).

    Notebook 01, inside `cache_demo`.
    """


def resolve_engine(engine: str | None, device: torch.device) -> str:
    """'torch' or 'onnxruntime': `engine`, else $FACE_COURSE_ENGINE, else onnxruntime on a CPU when installed.

    Notebook 01, inside `cache_demo`.
    """
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

    Notebook 01, inside `cache_demo`.
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


def onnx_bytes(module: torch.nn.Module, example: torch.Tensor, output_names: list[str], opset: int = 17) -> bytes:
    """`module` (on the CPU, eval mode) as an ONNX file with input "images" and a dynamic batch axis on the
    input and every output: the course's one call of the TorchScript-based exporter (no onnxscript).

    Notebook 01, inside `cache_demo`.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's constant-folding notes
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=list(output_names),
                          dynamic_axes={"images": {0: "batch"}, **{o: {0: "batch"} for o in output_names}})
    return buf.getvalue()


def backbone_session(backbone, height: int, width: int, n_threads: int, taps: tuple[str, ...] = ()):
    """An ONNX Runtime session mapping (N, 3, height, width) float32 images to [final (N, D), *taps]: the
    backbone's features and its pooled stage taps (`helpers.features.taps.stage_taps`), in that order.

    Exported once per (backbone, weights, size, taps) into `cache_dir("models", "onnx")`; the few most
    recently used sessions stay in memory (the one session cache).

    Notebook 01, inside `cache_demo`.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        raise OnnxUnavailable("onnxruntime is not installed (pip install onnxruntime)")
    tag = "-".join(t.replace(":", "_") for t in taps)
    name = f"{backbone.name}-{height}x{width}-{weights_digest(backbone)}" + (f"-{tag}" if tag else "")
    key = (name, n_threads)
    if key in _SESSIONS:
        _SESSIONS.move_to_end(key)
        return _SESSIONS[key]
    folder = cache_dir("models", "onnx")
    path = folder / f"{name}.onnx"
    if not path.exists():
        _export(backbone, height, width, path, tuple(taps))
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


def _export(backbone, height: int, width: int, path: Path, taps: tuple[str, ...]) -> None:
    """Export a CPU copy of `backbone` (the caller's stays on its device, in its mode and memory format)."""
    import copy

    try:
        net = copy.deepcopy(backbone).cpu().eval()
        names = ["final", *(f"tap{i}" for i in range(len(taps)))]
        data = onnx_bytes(TapOutputs(net, taps), torch.zeros(1, 3, height, width), names)
    except Exception as e:
        raise OnnxUnavailable(f"exporting {backbone.name} to ONNX failed: {str(e).splitlines()[0][:160]}") from e
    atomic_write_bytes(data, path)


def _prune(folder: Path) -> None:
    """Keep the KEEP_FILES most recently used exports; older ones are deleted (they are only a cache)."""
    files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP_FILES:]:
        old.unlink(missing_ok=True)
