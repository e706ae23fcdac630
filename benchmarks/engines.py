"""The network runners that benchmarks/extraction.py times: each maps a ready batch to features.

Every engine is `Engine.run`: a (B, 3, S, S) float32 batch, already prepared by the library's
batched preprocessing (`helpers.data.preprocess.to_batch`), -> (B, D) float32 features. The engines
differ only in what runs the network; none prepares photos itself. Each is written here, from
the backbone and its own ONNX export, with the same thread count (torch's), so the helpers'
own session is one row among them and not the yardstick:

  * torch-fp32: eager PyTorch, eval, inference_mode, channels_last (the reference);
  * torch-bf16: the same under `torch.autocast("cpu", torch.bfloat16)`;
  * helpers-ort: the helpers' own ONNX Runtime session (`helpers.features.onnx_backbone.backbone_session`:
    what `extract_features` runs on a CPU);
  * ort-fp32: ONNX Runtime on this module's export, the helpers' session options
    (intra-op threads = torch's, one inter-op thread);
  * openvino-f32 / openvino-bf16: OpenVINO compiling the same export for the CPU with
    INFERENCE_PRECISION_HINT f32 or bf16 (what the device reports is recorded: without a hint,
    OpenVINO picks bf16 on CPUs with bf16 instructions);
  * int8-static: ONNX Runtime on a static, per-channel int8 QDQ model (`quant_pre_process`, then
    `quantize_static`: uint8 activations, int8 weights, MinMax ranges from the calibration photos
    given: 32 photos of development people);
  * int8-dynamic: the previous recipe (`quantize_dynamic`, per-tensor, activations quantised on the
    fly; ONNX Runtime advises static quantisation for CNNs), kept for comparison;
  * torch.compile runs in a child process (`compile_in_subprocess`), timed there against eager
    fp32 in alternating rounds on the same batches.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Engine:
    """One way to run the network: `run(ready batch) -> (B, D) float32 features`."""

    key: str
    label: str
    run: Callable[[np.ndarray], np.ndarray]
    info: dict = field(default_factory=dict)
    precision: str = "fp32"     # what the arithmetic runs in: fp32, bf16, int8


def cpu_flags() -> dict:
    """Whether this CPU has bf16 arithmetic (avx512_bf16) or AMX tiles (amx_bf16), from /proc/cpuinfo."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return {"read": False}
    return {"read": True, **{f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                                      "amx_int8")}}


# ---------------------------------------------------------------------- PyTorch

def torch_fp32(net: torch.nn.Module) -> Engine:
    net = net.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return net(x).float().numpy()
    return Engine("torch-fp32", "PyTorch eager, fp32", run, {"memory_format": "channels_last (input)"})


def torch_bf16(net: torch.nn.Module) -> Engine:
    net = net.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return net(x).float().numpy()
    return Engine("torch-bf16", "PyTorch eager, bf16 autocast", run,
                  {"autocast": "cpu bfloat16", "mkldnn_bf16_supported": _mkldnn_bf16()}, "bf16")


def _mkldnn_bf16() -> bool | None:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


# ---------------------------------------------------------------------- ONNX

def export_onnx(net: torch.nn.Module, size: int, folder: Path) -> Path:
    """The network as ONNX (opset 17, dynamic batch), input "x", output "f"."""
    path = folder / "backbone.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.randn(1, 3, size, size), str(path), input_names=["x"], output_names=["f"],
                          dynamic_axes={"x": {0: "n"}, "f": {0: "n"}}, opset_version=17, dynamo=False)
    return path


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()                # the helpers' settings (helpers.io.onnx_session)
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_engine(path: Path, threads: int, key: str = "ort-fp32", label: str = "ONNX Runtime, fp32",
               precision: str = "fp32", **info) -> Engine:
    import onnxruntime as ort

    sess = _ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return Engine(key, label, lambda b: sess.run(None, {name: b})[0],
                  {"onnxruntime": ort.__version__, "intra_op_threads": threads, **info}, precision)


def helpers_ort(backbone, size: int, threads: int) -> Engine:
    from helpers.features.onnx_backbone import backbone_session

    sess = backbone_session(backbone, size, size, threads)
    return Engine("helpers-ort", "ONNX Runtime, the helpers' session (extract_features)",
                  lambda b: sess.run(None, {"images": b})[0], {"intra_op_threads": threads})


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime.quantization prints the graph and logs warnings with whole tensor types through the root
    logger: kept out of the benchmark's output (the results record what matters)."""
    import logging

    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def int8_static_path(path: Path, calibration: np.ndarray, batch: int = 8) -> Path:
    """Static per-channel int8 (QDQ; uint8 activations, int8 weights; MinMax ranges over `calibration`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": calibration[s:s + batch]} for s in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self.batches, None)

    pre = path.with_name("backbone-pre.onnx")
    out = path.with_name("backbone-int8-static.onnx")
    with _quiet_quantizer():
        quant_pre_process(str(path), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def int8_dynamic_path(path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name("backbone-int8-dynamic.onnx")
    with _quiet_quantizer():
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QUInt8)
    return out


# ---------------------------------------------------------------------- OpenVINO

def openvino_engine(path: Path, threads: int, hint: str | None) -> Engine:
    """OpenVINO on the CPU; `hint`: INFERENCE_PRECISION_HINT ('f32', 'bf16') or None (its default).
    `info["reported_precision"]`: what the compiled model says it runs in."""
    import openvino as ov

    cfg: dict = {"INFERENCE_NUM_THREADS": threads}
    if hint:
        cfg["INFERENCE_PRECISION_HINT"] = hint
    compiled = ov.Core().compile_model(str(path), "CPU", cfg)
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: batch})[0], dtype=np.float32)  # a copy: the request reuses its buffer
    reported = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return Engine(f"openvino-{hint or 'default'}", f"OpenVINO, precision hint {hint or 'none (default)'}", run,
                  {"openvino": ov.__version__, "hint": hint, "threads": threads, "reported_precision": reported,
                   "performance_hint": str(compiled.get_property("PERFORMANCE_HINT"))},
                  {"f32": "fp32"}.get(reported, reported))


def openvino_default_precision(path: Path, threads: int) -> str:
    """The precision OpenVINO picks on this CPU when given no hint."""
    import openvino as ov

    return _type_name(ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
                      .get_property("INFERENCE_PRECISION_HINT"))


def _type_name(t) -> str:
    """An OpenVINO element type as its short name ('f32', 'bf16')."""
    return t.to_string() if hasattr(t, "to_string") else str(t)


# ---------------------------------------------------------------------- torch.compile, in a child process

COMPILE_TIMEOUT_S = 480

_CHILD = """
import sys, time, numpy as np, torch
from helpers.models.backbones import load_backbone
torch.set_num_threads({threads})
d = np.load({data!r})
photos, bs, gate, rounds = d["photos"], int(d["batch"]), d["gate"], int(d["rounds"])
batches = [photos[s:s + bs] for s in range(0, len(photos), bs)]
net = load_backbone({backbone!r}, pretrained=False, verbose=False).body
net.load_state_dict(torch.load({weights!r}, weights_only=True))
net = net.eval()
fn = torch.compile(net)

def eager(b):
    with torch.inference_mode():
        return net(torch.from_numpy(b).contiguous(memory_format=torch.channels_last)).float().numpy()

def comp(b):
    with torch.inference_mode():
        return fn(torch.from_numpy(b)).float().numpy()

t0 = time.perf_counter(); comp(batches[0]); compile_s = time.perf_counter() - t0
for _ in range({warmup}):
    for b in batches:
        comp(b); eager(b)
times = {{"eager": [], "compile": []}}
for r in range(rounds):
    for name in (("eager", "compile") if r % 2 == 0 else ("compile", "eager")):
        f = eager if name == "eager" else comp
        t = time.perf_counter()
        for b in batches:
            f(b)
        times[name].append(time.perf_counter() - t)
feats = np.concatenate([comp(gate[s:s + 64]) for s in range(0, len(gate), 64)])
np.savez({out!r}, feats=feats, eager=np.array(times["eager"]), compile=np.array(times["compile"]),
         compile_s=compile_s)
"""


def compile_in_subprocess(backbone, batches: list[np.ndarray], gate: np.ndarray, rounds: int, warmup: int,
                          threads: int) -> dict:
    """torch.compile (default mode) timed in a child process against eager fp32 there, in alternating rounds on
    the same ready batches (Inductor compiles C++ for minutes on a small CPU: a compile that does not finish
    must not hang the benchmark). Returns {"seconds": [...], "eager_seconds": [...], "compile_s", "feats"} or
    {"error": why}."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    data, out, weights = tmp / "in.npz", tmp / "out.npz", tmp / "weights.pt"
    torch.save(backbone.body.state_dict(), weights)          # the same weights, pretrained or not
    np.savez(data, photos=np.concatenate(batches), batch=len(batches[0]), gate=gate, rounds=rounds)
    code = _CHILD.format(threads=threads, data=str(data), backbone=backbone.name, weights=str(weights),
                         warmup=warmup, out=str(out))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                           env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"did not compile and run within {COMPILE_TIMEOUT_S} s on this machine"}
    if r.returncode or not out.exists():
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {r.returncode}: {last[:200]}"}
    got = np.load(out)
    return {"seconds": got["compile"].tolist(), "eager_seconds": got["eager"].tolist(),
            "compile_s": float(got["compile_s"]), "feats": got["feats"]}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
