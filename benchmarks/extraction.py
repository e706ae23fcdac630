"""Feature extraction speed: the helpers' extractor vs a plain eval loop, and the fastest recipe.

Every recipe goes from the same PIL images to the same (N, D) features, preprocessing
included (the same transform), so images/s is what a learner waits for:
  * helpers: `helpers.features.compute_features` at its default batch size and engine (on a CPU
    with onnxruntime: the backbone exported to ONNX once and run by ONNX Runtime; else PyTorch
    eval + inference_mode + channels_last) -- what `extract_features` runs on a cache miss;
    also its PyTorch engine at each batch size;
  * plain: `model.eval()` and `torch.no_grad()`, contiguous NCHW tensors, the same batch;
  * the search for the fastest recipe: batch sizes, inference_mode / channels_last alone,
    one thread, TorchScript (trace + freeze), ONNX Runtime (exported here, independently of the
    helpers) at each batch size. Export/compile time is not in images/s; the ONNX export's one-off
    seconds are reported beside it.
Each recipe: one untimed warm-up batch, then the median of `repeats` timed passes.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from helpers.backbones import BackboneUnavailable, load_backbone
from helpers.features import compute_features, default_batch_size
from helpers.onnx_backbone import resolve_engine
from helpers.runtime import threads

from .common import Figure, Section, time_repeats

ENGINE = resolve_engine(None, torch.device("cpu"))  # what compute_features runs on this CPU by default
HELPERS_BATCH = default_batch_size(ENGINE, torch.device("cpu"))  # ... and its default batch there


def _stack(images, transform, start, bs, channels_last=False):
    batch = torch.stack([transform(im) for im in images[start:start + bs]])
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def plain_loop(net, images, transform, bs):
    net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(images), bs):
            out.append(net(_stack(images, transform, s, bs)))
    return torch.cat(out)


def variant_loop(net, images, transform, bs, inference=True, channels_last=True):
    net.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    ctx = torch.inference_mode if inference else torch.no_grad
    out = []
    with ctx():
        for s in range(0, len(images), bs):
            out.append(net(_stack(images, transform, s, bs, channels_last)))
    return torch.cat(out)


def _contiguous_format(net):
    return net.to(memory_format=torch.contiguous_format)


def torchscript_runner(net, transform, bs, size) -> Callable:
    net = _contiguous_format(net.eval())
    with torch.inference_mode():
        traced = torch.jit.optimize_for_inference(torch.jit.trace(net, torch.randn(bs, 3, size, size)))

    def run(images):
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), bs):
                out.append(traced(_stack(images, transform, s, bs)))
        return torch.cat(out)
    return run


def onnx_export(net, size) -> Path:
    """The network exported to a temporary ONNX file (independently of the helpers' own export)."""
    net = _contiguous_format(net.eval())
    path = Path(tempfile.mkdtemp(prefix="bench-onnx-")) / "backbone.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(1, 3, size, size), str(path), input_names=["x"], output_names=["f"],
                          dynamic_axes={"x": {0: "n"}, "f": {0: "n"}}, opset_version=17, dynamo=False)
    return path


def onnx_runner(path, transform, bs, n_threads) -> Callable:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(images):
        out = []
        for s in range(0, len(images), bs):
            out.append(sess.run(None, {"x": _stack(images, transform, s, bs).numpy()})[0])
        return torch.from_numpy(np.concatenate(out))
    return run


def _rate(fn, images, repeats) -> tuple[float, list[float]]:
    fn(images[:8])  # warm-up (allocator, kernels, lazy init)
    t = time_repeats(lambda: fn(images), repeats=repeats, warmup=0)
    return len(images) / t.median, [round(len(images) / s, 1) for s in t.seconds]


def head_to_head(rows: dict, fns: dict, images, helpers_name: str, rounds: int) -> None:
    """The helpers' default against the fastest other recipe of the sweep, timed alternately
    (`rounds` passes each): a sweep measures recipes minutes apart, and on a shared CPU that
    drift alone moved the same recipe by 20 %. Stored as rows["(head to head)"]."""
    others = {k: v for k, v in rows.items() if k != helpers_name and v.get("images_per_s")
              and v.get("recipe") not in ("preprocessing", "export")}
    if not others or not rows.get(helpers_name, {}).get("images_per_s"):
        return
    best = max(others, key=lambda k: others[k]["images_per_s"])
    times = {helpers_name: [], best: []}
    for _ in range(rounds):
        for name in (helpers_name, best):
            t0 = time.perf_counter()
            fns[name](images)
            times[name].append(time.perf_counter() - t0)
    rate = {k: len(images) / float(np.median(v)) for k, v in times.items()}
    rows["(head to head)"] = {"images_per_s": None, "recipe": "head-to-head", "helpers": helpers_name,
                              "fastest": best, "helpers_images_per_s": round(rate[helpers_name], 1),
                              "fastest_images_per_s": round(rate[best], 1), "rounds": rounds,
                              "ratio": round(rate[helpers_name] / rate[best], 3)}
    print(f"    head to head, {rounds} alternating passes: helpers {rate[helpers_name]:.1f} vs {best} "
          f"{rate[best]:.1f} images/s -> {100 * rate[helpers_name] / rate[best]:.0f} %", flush=True)


def measure_backbone(bb, images, size, repeats, batches, smoke) -> dict:
    """images/s of every recipe for one backbone at one input size."""
    transform = bb.transform(size=size)
    n_threads = torch.get_num_threads()
    rows: dict[str, dict] = {}
    fns: dict[str, Callable] = {}

    def add(name, fn, **info):
        fns[name] = fn
        try:
            rate, runs = _rate(fn, images, repeats)
            rows[name] = {"images_per_s": round(rate, 1), "runs": runs, **info}
        except Exception as e:  # a recipe that cannot run here is reported, not fatal
            rows[name] = {"images_per_s": None, "error": f"{type(e).__name__}: {str(e)[:160]}", **info}
        r = rows[name]["images_per_s"]
        print(f"    {name:<44} {'failed: ' + rows[name]['error'] if r is None else f'{r:7.1f} images/s'}",
              flush=True)

    hb, engine = HELPERS_BATCH, ENGINE
    add(f"helpers extractor (batch {hb})",
        lambda ims: compute_features(bb, ims, batch_size=hb, transform=transform, progress=False),
        recipe="helpers", batch=hb, engine=engine)
    add(f"plain eval + no_grad (batch {hb})",
        lambda ims: plain_loop(_contiguous_format(bb.body), ims, transform, hb), recipe="plain", batch=hb)
    for b in batches:
        if b != hb:
            add(f"helpers extractor (batch {b})",
                lambda ims, b=b: compute_features(bb, ims, batch_size=b, transform=transform, progress=False),
                recipe="helpers", batch=b, engine=engine)
    if engine != "torch":  # the helpers' PyTorch path, used on a GPU or without onnxruntime
        for b in batches:
            add(f"helpers extractor, PyTorch engine (batch {b})",
                lambda ims, b=b: compute_features(bb, ims, batch_size=b, transform=transform, progress=False,
                                                  engine="torch"), recipe="helpers-torch", batch=b)
    if not smoke:
        add(f"inference_mode only (batch {hb})",
            lambda ims: variant_loop(_contiguous_format(bb.body), ims, transform, hb, True, False),
            recipe="inference_mode", batch=hb)
        add(f"channels_last only (batch {hb})",
            lambda ims: variant_loop(bb.body, ims, transform, hb, False, True), recipe="channels_last", batch=hb)
    torch_rows = {k: v for k, v in rows.items() if v.get("recipe") in ("helpers-torch", "helpers")
                  and v.get("engine", "torch") == "torch" and v["images_per_s"]}
    best_b = max(torch_rows.values(), key=lambda r: r["images_per_s"])["batch"] if torch_rows else hb
    if n_threads > 1:
        def one_thread(ims, b=best_b):
            with threads(1):
                return compute_features(bb, ims, batch_size=b, transform=transform, progress=False, engine="torch")
        add(f"PyTorch, 1 thread (batch {best_b})", one_thread, recipe="1 thread", batch=best_b)
    try:
        if smoke:
            raise RuntimeError("not run in smoke mode")
        ts = torchscript_runner(bb.body, transform, best_b, size)
        add(f"TorchScript trace+freeze (batch {best_b})", ts, recipe="torchscript", batch=best_b)
    except Exception as e:
        rows[f"TorchScript trace+freeze (batch {best_b})"] = {"images_per_s": None, "error": str(e)[:160]}
    try:
        t0 = time.perf_counter()
        path = onnx_export(bb.body, size)
        rows["(ONNX export, once)"] = {"images_per_s": None, "seconds": round(time.perf_counter() - t0, 2),
                                       "recipe": "export"}
        for b in batches:
            add(f"ONNX Runtime, {n_threads} threads (batch {b})", onnx_runner(path, transform, b, n_threads),
                recipe="onnxruntime", batch=b)
    except Exception as e:
        rows["ONNX Runtime export"] = {"images_per_s": None, "error": f"{type(e).__name__}: {str(e)[:160]}"}
    head_to_head(rows, fns, images, f"helpers extractor (batch {hb})", repeats + 2)
    # preprocessing alone (PIL -> normalised tensor), shared by every recipe
    t = time_repeats(lambda: [transform(im) for im in images], repeats=repeats, warmup=0)
    rows["(preprocessing alone)"] = {"images_per_s": round(len(images) / t.median, 1), "recipe": "preprocessing"}
    _contiguous_format(bb.body)
    return rows


def run(smoke: bool = False, backbones=("efficientnet_lite0", "resnet18"), sizes=(224, 112),
        n_images: int = 192, repeats: int = 3, batches=(8, 16, 32, 64)) -> Section:
    from helpers.data import load_orl

    if smoke:
        backbones, sizes, n_images, repeats, batches = ("efficientnet_lite0",), (64,), 16, 1, (8,)
    faces = load_orl()
    images = [faces.images[i % len(faces)] for i in range(n_images)]
    sec = Section("Feature extraction", config={"images": n_images, "repeats": repeats, "batches": list(batches),
                                                "threads": torch.get_num_threads(),
                                                "helpers_default_batch": HELPERS_BATCH,
                                                "helpers_engine": ENGINE})
    for name in backbones:
        try:
            bb = load_backbone(name, allow_download=False, verbose=False)
        except BackboneUnavailable:
            bb = load_backbone(name, pretrained=False, verbose=False)  # the same speed as trained weights
        for size in sizes:
            print(f"  [extraction] {name} at {size}×{size}, {n_images} images", flush=True)
            rows = measure_backbone(bb, images, size, repeats, batches, smoke)
            key = f"{name}@{size}"
            sec.details[key] = {"weights": bb.weights, "recipes": rows}
            ok = {k: v for k, v in rows.items() if v.get("images_per_s") and v.get("recipe") != "preprocessing"}
            helpers = sweep = rows[f"helpers extractor (batch {HELPERS_BATCH})"]["images_per_s"]
            plain = rows[f"plain eval + no_grad (batch {HELPERS_BATCH})"]["images_per_s"]
            best_name, best = max(ok.items(), key=lambda kv: kv[1]["images_per_s"])
            best_rate = best["images_per_s"]
            h2h = rows.get("(head to head)")
            if h2h:  # the alternating measurement decides (see head_to_head)
                helpers, best_name, best_rate = (h2h["helpers_images_per_s"], h2h["fastest"],
                                                 h2h["fastest_images_per_s"])
            sec.details[key]["fastest"] = best_name
            sec.figures.append(Figure(
                f"extraction.{key}.vs_plain", f"{name} {size}px: helpers extractor ({ENGINE}, batch {HELPERS_BATCH})",
                sweep, "images/s", f"plain eval loop (same batch)", plain, sweep / plain, "× plain"))
            sec.figures.append(Figure(
                f"extraction.{key}.vs_fastest", f"{name} {size}px: helpers extractor vs fastest recipe",
                helpers, "images/s", f"fastest: {best_name}", best_rate, helpers / best_rate, "of fastest",
                "≥ 95 % of fastest", helpers / best_rate >= 0.95))
            print(f"  [extraction] {key}: helpers {sweep} images/s, plain {plain} ({sweep / plain:.2f}×); "
                  f"fastest {best_name}: {best_rate} -> helpers at {100 * helpers / best_rate:.0f} %", flush=True)
    return sec
