"""Feature extraction speed: the helpers' extractor against independent recipes, and the ceiling.

The same PIL photos -> (N, D) features, preprocessing included (end to end: what a learner
waits for), for the course's default backbone at its input size. Recipes, each written here
independently of the helpers (own export, own session, library defaults):
  * helpers: `helpers.features.extract.compute` with its defaults and no taps (what `extract_features` runs:
    notebooks 01-05 and the recogniser's raw/head methods);
  * the recogniser's extractor: `helpers.features.extract.compute` with the stage taps (the default method's
    multi-layer features: ONNX Runtime, batched preprocessing prepared while the model runs);
  * eager PyTorch: eval, inference_mode, channels_last, batch 16 (its fastest batch here);
  * torch.compile (default mode) of the same network, batch 16 (if it compiles on this machine;
    if not, the reason is recorded);
  * ONNX Runtime with DEFAULT session options (no thread or graph settings), batch 64;
  * OpenVINO (`pip install openvino`) compiling the same ONNX file for the CPU with its defaults;
  * int8 dynamic quantisation (onnxruntime.quantization.quantize_dynamic: int8 weights, activations
    quantised on the fly) run by ONNX Runtime; `torch.ao` dynamic quantisation only covers Linear
    layers, which this convolutional backbone does not have.
Agreement with PyTorch's features (eager, fp32): the lowest cosine over the photos; a recipe counts as
"agreeing" at cosine >= 0.999. For int8 also the accuracy cost: 1-NN leave-one-out accuracy on the
photos with its features vs fp32's.
The ceiling: the model alone on a ready, preprocessed batch of 64 — the course's own ONNX export in
the helpers' session (what the extractors run), timed in alternating rounds with the helpers' two
extractors end to end, so that the ratio compares rates taken side by side; ONNX Runtime with
default options on the benchmark's own export for reference; and preprocessing alone (the helpers'
batched `to_batch`, and torchvision's transform photo by photo).
Each recipe: one untimed warm-up, then the median of `repeats` timed passes; the helpers and the
fastest agreeing recipe are then timed alternately (a shared CPU drifts between sweep rows).
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from helpers.models.backbones import BackboneUnavailable, load_backbone
from helpers.features.extract import FINAL, TAPPED, compute, default_batch_size
from helpers.data.preprocess import to_batch
from helpers.features.onnx_backbone import resolve_engine

from .common import Figure, Section, time_repeats

ENGINE = resolve_engine(None, torch.device("cpu"))
HELPERS_BATCH = default_batch_size(ENGINE, torch.device("cpu"))
AGREE = 0.999


def _batches(images, transform, bs, channels_last=False):
    for s in range(0, len(images), bs):
        b = torch.stack([transform(im) for im in images[s:s + bs]])
        yield b.contiguous(memory_format=torch.channels_last) if channels_last else b


def eager(net, transform, bs=16) -> Callable:
    net = net.eval().to(memory_format=torch.channels_last)

    def run(images):
        with torch.inference_mode():
            return torch.cat([net(b).float() for b in _batches(images, transform, bs, True)])
    return run


def compiled(net, transform, bs=16) -> Callable:
    net = net.eval().to(memory_format=torch.contiguous_format)
    fn = torch.compile(net)

    def run(images):
        with torch.inference_mode():
            return torch.cat([fn(b).float() for b in _batches(images, transform, bs)])
    return run


COMPILE_TIMEOUT_S = 480


def compiled_in_subprocess(backbone: str, size: int, n_images: int, repeats: int, ref: np.ndarray) -> dict:
    """torch.compile timed in a child process with a time limit (Inductor compiles C++ for minutes
    on a small CPU; a compile that does not finish must not hang the benchmark)."""
    import os
    import subprocess
    import sys

    out = Path(tempfile.mkdtemp(prefix="bench-compile-")) / "features.npy"
    code = f"""
import time, numpy as np, torch
from helpers.models.backbones import load_backbone
from helpers.data.folders import load_orl
from benchmarks.extraction import compiled
from benchmarks.common import time_repeats
torch.set_num_threads({torch.get_num_threads()})
bb = load_backbone({backbone!r}, allow_download=False, verbose=False)
faces = load_orl(); images = [faces.images[i] for i in range({n_images})]
fn = compiled(bb.body, bb.transform(size={size}))
t0 = time.perf_counter(); fn(images[:8]); compile_s = time.perf_counter() - t0
t = time_repeats(lambda: fn(images), repeats={repeats}, warmup=0)
np.save({str(out)!r}, fn(images).numpy())
print("RESULT", compile_s, *t.seconds)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                           env=env)
    except subprocess.TimeoutExpired:
        return {"images_per_s": None, "recipe": "compile",
                "error": f"did not compile and run within {COMPILE_TIMEOUT_S} s on this machine"}
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    if r.returncode or not line:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"images_per_s": None, "recipe": "compile", "error": f"exit {r.returncode}: {last[:200]}"}
    compile_s, *secs = map(float, line[0].split()[1:])
    feats = np.load(out)
    return {"images_per_s": round(n_images / float(np.median(secs)), 1), "recipe": "compile",
            "runs": [round(n_images / x, 1) for x in secs], "compile_s": round(compile_s, 1),
            "min_cosine_to_pytorch": round(_min_cos(feats, ref), 6),
            "agrees": _min_cos(feats, ref) >= AGREE}


def export_onnx(net, size) -> Path:
    net = net.eval().to(memory_format=torch.contiguous_format)
    path = Path(tempfile.mkdtemp(prefix="bench-onnx-")) / "backbone.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(1, 3, size, size), str(path), input_names=["x"], output_names=["f"],
                          dynamic_axes={"x": {0: "n"}, "f": {0: "n"}}, opset_version=17, dynamo=False)
    return path


def ort_default(path, transform, bs=64):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # default options

    def run(images):
        return torch.from_numpy(np.concatenate([sess.run(None, {"x": b.numpy()})[0]
                                                for b in _batches(images, transform, bs)]))
    return run, sess


def openvino_runner(path, transform, bs=64):
    import openvino as ov

    model = ov.Core().compile_model(str(path), "CPU")  # defaults

    def run(images):
        return torch.from_numpy(np.concatenate([np.asarray(model(b.numpy())[0])
                                                for b in _batches(images, transform, bs)]))
    return run


def int8_path(path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import contextlib
    import io

    out = path.with_name("backbone-int8.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # it prints the graph
        warnings.simplefilter("ignore")
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QUInt8)
    return out


def _loo_1nn(x: np.ndarray, y: np.ndarray) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return float((y[s.argmax(1)] == y).mean())


def _min_cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def measure(bb, images, labels, size, repeats, smoke) -> dict:
    transform = bb.transform(size=size)
    rows: dict[str, dict] = {}
    fns: dict[str, Callable] = {}
    ref = eager(bb.body, transform)(images).numpy()

    def add(name, make, **info):
        try:
            fn = make()
            feats = fn(images[:8])  # warm-up (and compilation for torch.compile)
            t = time_repeats(lambda: fn(images), repeats=repeats, warmup=0)
            out = fn(images).numpy()
            rows[name] = {"images_per_s": round(len(images) / t.median, 1),
                          "runs": [round(len(images) / s, 1) for s in t.seconds],
                          "min_cosine_to_pytorch": round(_min_cos(out, ref), 6), **info}
            rows[name]["agrees"] = rows[name]["min_cosine_to_pytorch"] >= AGREE
            if info.get("int8"):
                rows[name]["loo_1nn"] = round(100 * _loo_1nn(out, labels), 2)
                rows[name]["loo_1nn_fp32"] = round(100 * _loo_1nn(ref, labels), 2)
            fns[name] = fn
            del feats
        except Exception as e:  # a recipe that cannot run here is reported with its reason
            rows[name] = {"images_per_s": None, "error": f"{type(e).__name__}: {str(e).strip()[:200]}", **info}
        r = rows[name]
        print(f"    {name:<48} " + (f"failed: {r['error']}" if r["images_per_s"] is None else
                                     f"{r['images_per_s']:7.1f} images/s, min cosine {r['min_cosine_to_pytorch']}"),
              flush=True)

    add(f"helpers extractor ({ENGINE}, batch {HELPERS_BATCH})",
        lambda: (lambda ims: compute(bb, ims, size=size)[FINAL]), recipe="helpers")
    add("recogniser's extractor (compute with taps, batch 64)",
        lambda: (lambda ims: compute(bb, ims, TAPPED, size)[FINAL]), recipe="helpers-pooled")
    add("eager PyTorch, channels_last, inference_mode (batch 16)", lambda: eager(bb.body, transform),
        recipe="eager")
    if not smoke:
        rows["torch.compile, default mode (batch 16)"] = compiled_in_subprocess(bb.name, size, len(images), repeats,
                                                                                 ref)
        r = rows["torch.compile, default mode (batch 16)"]
        print(f"    {'torch.compile, default mode (batch 16)':<48} " + (f"failed: {r['error']}" if r["images_per_s"] is None
              else f"{r['images_per_s']:7.1f} images/s, min cosine {r['min_cosine_to_pytorch']}"), flush=True)
    path = export_onnx(bb.body, size)
    add("ONNX Runtime, default session options (batch 64)", lambda: ort_default(path, transform)[0],
        recipe="onnxruntime-default")
    add("OpenVINO, default CPU compile (batch 64)", lambda: openvino_runner(path, transform), recipe="openvino")
    add("int8 dynamic quantisation, ONNX Runtime (batch 64)", lambda: ort_default(int8_path(path), transform)[0],
        recipe="int8", int8=True)
    bb.body.to(memory_format=torch.contiguous_format)

    # the ceiling: the model alone on a ready batch of 64, and preprocessing alone
    ready = to_batch(images[:64], size, bb.mean, bb.std)
    _, sess = ort_default(path, transform)
    t = time_repeats(lambda: sess.run(None, {"x": ready}), repeats=repeats, warmup=1)
    rows[CEILING_DEFAULT] = {"images_per_s": round(64 / t.median, 1), "recipe": "ceiling-default"}
    t = time_repeats(lambda: [to_batch(images[s:s + 64], size, bb.mean, bb.std) for s in range(0, len(images), 64)],
                     repeats=repeats, warmup=1)
    rows[PREP_HELPERS] = {"images_per_s": round(len(images) / t.median, 1), "recipe": "preprocessing"}
    t = time_repeats(lambda: [transform(im) for im in images], repeats=repeats, warmup=0)
    rows[PREP_TORCHVISION] = {"images_per_s": round(len(images) / t.median, 1), "recipe": "preprocessing-torchvision"}
    rows.update(end_to_end_vs_model(bb, images, size, ready, fns, repeats + 5))

    helpers_name = next(k for k in rows if k.startswith("helpers"))
    agreeing = {k: v for k, v in rows.items() if v.get("agrees") and k in fns
                and v.get("recipe") not in ("helpers", "helpers-pooled")}
    if agreeing and fns.get(helpers_name):
        best = max(agreeing, key=lambda k: agreeing[k]["images_per_s"])
        times = {helpers_name: [], best: []}
        for _ in range(repeats + 2):
            for name in (helpers_name, best):
                t0 = time.perf_counter()
                fns[name](images)
                times[name].append(time.perf_counter() - t0)
        rate = {k: len(images) / float(np.median(v)) for k, v in times.items()}
        rows["(head to head)"] = {"images_per_s": None, "recipe": "head-to-head", "helpers": helpers_name,
                                  "fastest": best, "helpers_images_per_s": round(rate[helpers_name], 1),
                                  "fastest_images_per_s": round(rate[best], 1), "rounds": repeats + 2,
                                  "ratio": round(rate[helpers_name] / rate[best], 3)}
        print(f"    head to head: helpers {rate[helpers_name]:.1f} vs {best} {rate[best]:.1f} images/s", flush=True)
    return rows


CEILING = "(model alone: the course's ONNX export in the helpers' session, ready batch of 64)"
CEILING_DEFAULT = "(model alone: ONNX Runtime default options, ready batch of 64)"
PREP_HELPERS = "(preprocessing alone: helpers.data.preprocess.to_batch, batches of 64)"
PREP_TORCHVISION = "(preprocessing alone: torchvision transform photo by photo)"
E2E = "(end to end vs model alone, alternating rounds)"


def end_to_end_vs_model(bb, images, size, ready, fns, rounds) -> dict:
    """The helpers' extractors end to end against their own model on a ready batch, timed in alternating
    rounds (the model alone: the course's export in the helpers' ONNX Runtime session, run on `ready` as
    many times as there are images): a shared CPU drifts by ±15 % within minutes, so only rates taken
    side by side make a ratio. Rates: medians over the rounds; the ratio: the median of per-round ratios."""
    from helpers.features.onnx_backbone import OnnxUnavailable, backbone_session

    try:
        sess = backbone_session(bb, size, size, torch.get_num_threads())
    except OnnxUnavailable as e:
        return {CEILING: {"images_per_s": None, "recipe": "ceiling", "error": str(e)}}
    reps = max(1, round(len(images) / len(ready)))
    model = lambda: [sess.run(None, {"images": ready}) for _ in range(reps)]  # noqa: E731
    runners = {CEILING: (model, reps * len(ready))}
    for name, fn in fns.items():
        if name.startswith(("helpers", "recogniser")):
            runners[name] = (lambda fn=fn: fn(images), len(images))
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for fn, _ in runners.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, (fn, n) in runners.items():
            t0 = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - t0))
    out = {CEILING: {"images_per_s": round(float(np.median(rates[CEILING])), 1), "recipe": "ceiling",
                     "runs": [round(r, 1) for r in rates[CEILING]]}}
    e2e = {"images_per_s": None, "recipe": "end-to-end", "rounds": rounds}
    for name in runners:
        if name != CEILING:
            ratio = np.median(np.array(rates[name]) / np.array(rates[CEILING]))
            e2e[name] = {"images_per_s": round(float(np.median(rates[name])), 1),
                         "runs": [round(r, 1) for r in rates[name]], "of_model_alone": round(float(ratio), 3)}
            print(f"    end to end vs model alone: {name}: {e2e[name]['images_per_s']:.1f} vs "
                  f"{out[CEILING]['images_per_s']:.1f} images/s ({100 * ratio:.0f} %, median of {rounds} "
                  "alternating rounds)", flush=True)
    out[E2E] = e2e
    return out


def best_rate_of(rows: dict, name: str | None) -> float | None:
    return rows.get(name, {}).get("images_per_s") if name else None


def run(smoke: bool = False, backbone: str = "auto", size: int | None = None, n_images: int = 192,
        repeats: int = 3) -> Section:
    from helpers.data.folders import load_orl

    if smoke:
        n_images, repeats, size = 16, 1, 64
    faces = load_orl()
    images = [faces.images[i] for i in range(n_images)]
    labels = np.asarray(faces.labels[:n_images])
    try:
        bb = load_backbone(backbone, allow_download=False, verbose=False)
    except BackboneUnavailable:
        bb = load_backbone(backbone, pretrained=False, verbose=False)
    size = size or bb.input_size
    print(f"  [extraction] {bb.name} at {size}×{size}, {n_images} photos, {torch.get_num_threads()} threads",
          flush=True)
    rows = measure(bb, images, labels, size, repeats, smoke)
    key = f"{bb.name}@{size}"
    sec = Section("Feature extraction", config={"images": n_images, "repeats": repeats,
                                                "threads": torch.get_num_threads(), "helpers_engine": ENGINE,
                                                "helpers_default_batch": HELPERS_BATCH, "agree_at_cosine": AGREE})
    helpers_name = next(k for k in rows if k.startswith("helpers"))
    h2h = rows.get("(head to head)")
    helpers = rows[helpers_name]["images_per_s"]
    fastest = None
    if h2h:
        helpers, fastest, best_rate = h2h["helpers_images_per_s"], h2h["fastest"], h2h["fastest_images_per_s"]
    sec.details[key] = {"weights": bb.weights, "recipes": rows, "fastest": fastest or helpers_name}
    if fastest:
        sec.figures.append(Figure(
            f"extraction.{key}.vs_fastest", f"{bb.name} {size}px: helpers extractor vs the fastest independent "
            "recipe that agrees with PyTorch (cosine ≥ 0.999)", helpers, "images/s", f"fastest: {fastest}",
            best_rate, helpers / best_rate, "of fastest", "≥ 95 % of fastest", helpers / best_rate >= 0.95))
    ceiling = rows.get(CEILING, {}).get("images_per_s")
    pooled = rows.get("recogniser's extractor (compute with taps, batch 64)", {}).get("images_per_s")
    if pooled and best_rate_of(rows, fastest):
        b = best_rate_of(rows, fastest)
        sec.figures.append(Figure(
            f"extraction.{key}.pooled_vs_fastest", f"{bb.name} {size}px: the recogniser's extractor (compute with taps) "
            "vs the fastest agreeing independent recipe (sweep)", pooled, "images/s", f"fastest: {fastest}", b,
            pooled / b, "of fastest", "≥ 95 % of fastest", pooled / b >= 0.95))
    e2e = rows.get(E2E, {})
    for label, name in (("helpers extractor", helpers_name),
                        ("recogniser's extractor", "recogniser's extractor (compute with taps, batch 64)")):
        r = e2e.get(name)
        if r and ceiling:
            sec.figures.append(Figure(
                f"extraction.{key}.{'pooled_' if label.startswith('rec') else ''}vs_model_alone",
                f"{bb.name} {size}px: {label} end to end vs its model alone on a ready batch ({e2e['rounds']} "
                "alternating rounds; ratio: median of per-round ratios)", r["images_per_s"], "images/s",
                "model alone (the course's ONNX export, batch 64)", ceiling, r["of_model_alone"], "of model-only",
                "≥ 85 % of model-only", r["of_model_alone"] >= 0.85))
    q = rows.get("int8 dynamic quantisation, ONNX Runtime (batch 64)", {})
    if q.get("images_per_s"):
        sec.figures.append(Figure(
            f"extraction.{key}.int8", f"{bb.name} {size}px: int8 dynamic quantisation (min cosine to fp32 "
            f"{q['min_cosine_to_pytorch']:.4f}; 1-NN leave-one-out {q['loo_1nn']:.1f} % vs fp32 "
            f"{q['loo_1nn_fp32']:.1f} %)", q["images_per_s"], "images/s", "helpers extractor (fp32)",
            rows[helpers_name]["images_per_s"]))
    return sec
