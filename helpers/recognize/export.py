"""A recogniser exported to TorchScript and ONNX, the exports checked against PyTorch, and CPU latency."""
from __future__ import annotations

import io
import statistics
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..io import atomic_write_bytes, onnx_session
from ..features.onnx_backbone import onnx_bytes
from .recognizer import Recognizer
from ..runtime import threads


def export_torchscript(rec: Recognizer, path: str | Path) -> Path:
    """TorchScript by tracing (torch.jit is deprecated in recent PyTorch but still runs everywhere).

    Notebook 06.
    """
    path = Path(path)
    rec = rec.eval().cpu()
    x = torch.zeros(1, 3, rec.size, rec.size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(rec, x, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    atomic_write_bytes(buf.getvalue(), path)
    return path


def export_onnx(rec: Recognizer, path: str | Path, opset: int = 17) -> Path:
    """ONNX with a dynamic batch axis, by the TorchScript-based exporter (no onnxscript needed).

    Notebook 06.
    """
    path = Path(path)
    rec = rec.eval().cpu()
    atomic_write_bytes(onnx_bytes(rec, torch.zeros(1, 3, rec.size, rec.size), ["embeddings"], opset), path)
    return path


def _load_torchscript(path: str | Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of torch.export
        return torch.jit.load(str(path)).eval()


@torch.inference_mode()
def check_exports(rec: Recognizer, images: Sequence, torchscript_path: Path, onnx_path: Path,
                  n_threads: int | None = None) -> dict[str, float]:
    """Max absolute difference of the exported models' embeddings from PyTorch's, on `images` (CPU).

    Notebook 06.
    """
    rec.eval().cpu()
    x = torch.stack([rec.transform()(im) for im in images])
    with threads(n_threads):
        ref = rec(x).numpy()
        ts = _load_torchscript(torchscript_path)
        ts_out = ts(x).numpy()
    onnx_out = onnx_session(onnx_path, n_threads).run(None, {"images": x.numpy()})[0]
    return {"images": len(images), "torchscript_max_abs_diff": float(np.abs(ts_out - ref).max()),
            "onnx_max_abs_diff": float(np.abs(onnx_out - ref).max())}


def _median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def measure_latency(rec: Recognizer, torchscript_path: Path, onnx_path: Path, image, runs: int = 20,
                    warmup: int = 3, n_threads: int | None = None) -> dict[str, float]:
    """Median milliseconds per single image (batch 1, preprocessing excluded) on the CPU.

    Notebook 06.
    """
    rec.eval().cpu()
    x = rec.transform()(image).unsqueeze(0)
    out = {}
    with threads(n_threads):
        out["pytorch_ms"] = _median_ms(lambda: rec(x), runs, warmup)
        ts = _load_torchscript(torchscript_path)
        out["torchscript_ms"] = _median_ms(lambda: ts(x), runs, warmup)
    sess = onnx_session(onnx_path, n_threads)
    xn = x.numpy()
    out["onnx_ms"] = _median_ms(lambda: sess.run(None, {"images": xn}), runs, warmup)
    tf = rec.transform()
    out["preprocess_ms"] = _median_ms(lambda: tf(image), runs, warmup)
    return out
