"""Speed, measured fairly: network engines on the same prepared batches, and the recogniser end to end.

Engines (`benchmarks.engines`: eager fp32 and bf16 PyTorch, the helpers' ONNX Runtime session, ONNX
Runtime fp32, OpenVINO with the f32 and the bf16 precision hints, static per-channel int8, the previous
dynamic int8; torch.compile in a child process in the full run) are timed alike:
  * one preprocessing for all: the library's batched `helpers.data.preprocess.to_batch`, batches of
    `BATCH` (the helpers' batch on a CPU); an engine only runs the network;
  * the same ceiling for each: "model only" is the engine alone on the ready batches; "end to end"
    is decoded photos in memory -> `to_batch` -> the engine, so end to end / model only is the
    preprocessing's cost, the same for every engine;
  * `WARMUP` untimed passes of each engine (both ways), then `rounds` rounds, each a sweep of every
    engine model only and then a sweep end to end (A, B, C, A, B, C; the starting engine rotated every
    round, so each timed pass follows another engine's): ms per photo is the median over rounds, with
    the min-max; ratios to eager fp32 PyTorch are medians of per-round ratios (rates taken side by
    side: a shared CPU drifts by ±15 % within minutes);
  * headline figures: the helpers' engine against the fastest usable fp32 engine (target ≥ 95 %, the
    old extraction target, now on equal terms), its end to end against its model only (≥ 85 %), and,
    as information, the fastest usable engine of any precision against the helpers' engine;
  * usable or not: the accuracy cost on development people (`benchmarks.engine_gate`: identification
    and strangers' EER against eager fp32's features, tolerance 1 point each, fixed before any run);
    the lowest cosine to eager fp32's features is information only.
The timing photos are ORL photos of the background people (s1-s10) and the development people; the
gate reads development people only; no test person is read anywhere in this section.

Then the recogniser row (`benchmarks.recogniser_speed`): JPEG files -> decode -> face detection and
alignment -> preprocessing -> the recogniser's embedding with its mirror pass -> the answer, step by
step, beside dlib's face_recognition pipeline on the same files when dlib is installed.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from helpers.models.backbones import BackboneUnavailable, load_backbone
from helpers.features.extract import default_batch_size
from helpers.features.onnx_backbone import resolve_engine
from helpers.data.preprocess import to_batch

from . import engine_gate, engines as E
from .common import Figure, Section

ENGINE = resolve_engine(None, torch.device("cpu"))
BATCH = default_batch_size(ENGINE, torch.device("cpu"))   # the helpers' batch on a CPU (ONNX Runtime: 64)
REFERENCE = "torch-fp32"
HELPERS = "helpers-ort"
WARMUP = 2                   # untimed passes of every engine (model only and end to end) before the rounds
ENGINE_KEYS = ("torch-fp32", "torch-bf16", "helpers-ort", "ort-fp32", "openvino-f32", "openvino-bf16",
               "int8-static", "int8-dynamic")
TARGET_VS_FASTEST, TARGET_E2E = 0.95, 0.85


def timing_photos(orl, n: int) -> list[int]:
    """`n` ORL photo indices of the background and development people (never a test person), fixed order."""
    from helpers.data.background import BACKGROUND_PEOPLE

    from .threshold import partition

    pool = [i for i, y in enumerate(orl.labels) if int(y) in set(BACKGROUND_PEOPLE) | set(partition()["dev"])]
    return [int(i) for i in np.random.default_rng(0).permutation(pool)[:n]]


def prepare(photos: Sequence, size: int, mean, std) -> list[np.ndarray]:
    """The one preprocessing: `to_batch` in batches of `BATCH`."""
    return [to_batch(photos[s:s + BATCH], size, mean, std) for s in range(0, len(photos), BATCH)]


def build_engines(bb, size: int, threads: int, calibration: np.ndarray, folder: Path,
                  include: Sequence[str] = ENGINE_KEYS) -> tuple[dict[str, E.Engine], dict[str, dict]]:
    """(engines that run here, {key: {"label", "error"}} for those that do not)."""
    onnx: dict[str, Path] = {}

    def export() -> Path:
        if "fp32" not in onnx:
            onnx["fp32"] = E.export_onnx(bb.body, size, folder)
        return onnx["fp32"]

    makers: dict[str, tuple[str, Callable[[], E.Engine]]] = {
        "torch-fp32": ("PyTorch eager, fp32", lambda: E.torch_fp32(bb.body)),
        "torch-bf16": ("PyTorch eager, bf16 autocast", lambda: E.torch_bf16(bb.body)),
        "helpers-ort": ("ONNX Runtime, the helpers' session", lambda: E.helpers_ort(bb, size, threads)),
        "ort-fp32": ("ONNX Runtime, fp32", lambda: E.ort_engine(export(), threads)),
        "openvino-f32": ("OpenVINO, f32 hint", lambda: E.openvino_engine(export(), threads, "f32")),
        "openvino-bf16": ("OpenVINO, bf16 hint", lambda: E.openvino_engine(export(), threads, "bf16")),
        "int8-static": ("int8 static per-channel (QDQ), ONNX Runtime", lambda: E.ort_engine(
            E.int8_static_path(export(), calibration), threads, "int8-static",
            "int8 static per-channel (QDQ), ONNX Runtime", "int8", calibration_photos=len(calibration),
            recipe="quant_pre_process + quantize_static(QDQ, per_channel, U8 activations, S8 weights, MinMax)")),
        "int8-dynamic": ("int8 dynamic per-tensor (previous recipe), ONNX Runtime", lambda: E.ort_engine(
            E.int8_dynamic_path(export()), threads, "int8-dynamic",
            "int8 dynamic per-tensor (previous recipe), ONNX Runtime", "int8", recipe="quantize_dynamic(QUInt8 weights)")),
    }
    built, failed = {}, {}
    for key in include:
        label, make = makers[key]
        try:
            built[key] = make()
        except Exception as e:  # an engine that cannot run here is listed with its reason
            failed[key] = {"label": label, "error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
            print(f"    {label}: cannot run here: {failed[key]['error']}", flush=True)
    return built, failed


def alternating_rounds(engines: dict[str, E.Engine], batches: list[np.ndarray], photos: Sequence, size: int, mean,
                       std, rounds: int, warmup: int = WARMUP) -> dict[str, dict[str, list[float]]]:
    """Seconds of each engine's pass over all photos, model only (ready batches) and end to end (photos ->
    `to_batch` -> engine), per round. A round is a sweep of every engine model only, then a sweep end to
    end, the starting engine rotated every round: each timed pass follows another engine's (switching
    thread pools and caches costs every pass alike)."""
    def model(eng):
        for b in batches:
            eng.run(b)

    def e2e(eng):
        for s in range(0, len(photos), BATCH):
            eng.run(to_batch(photos[s:s + BATCH], size, mean, std))

    keys = list(engines)
    for _ in range(warmup):
        for k in keys:
            model(engines[k])
            e2e(engines[k])
    out = {k: {"model": [], "e2e": []} for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for way, fn in (("model", model), ("e2e", e2e)):
            for k in order:
                out[k][way].append(E.timed(lambda: fn(engines[k])))
    return out


def _ms(seconds: list[float], n: int) -> dict:
    ms = [1000 * s / n for s in seconds]
    return {"ms": round(float(np.median(ms)), 3), "min": round(min(ms), 3), "max": round(max(ms), 3),
            "rounds": [round(x, 3) for x in ms]}


def engine_rows(bb, size: int, photos: Sequence, gate_photos: Sequence, gate_labels: np.ndarray,
                calibration_photos: Sequence, rounds: int, warmup: int = WARMUP, include: Sequence[str] = ENGINE_KEYS,
                extra: Sequence[Callable[[dict[str, E.Engine]], E.Engine]] = (),
                compile_rounds: int = 0) -> tuple[dict, dict]:
    """(every engine's row: timings (model only, end to end, ratios to eager fp32), the gate and its info;
    facts about the machine's engines). `extra`: functions of the built engines returning more engines
    (the tests add a broken one)."""
    threads = torch.get_num_threads()
    folder = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    calibration = np.concatenate(prepare(list(calibration_photos), size, bb.mean, bb.std))
    built, failed = build_engines(bb, size, threads, calibration, folder, include)
    for make in extra:
        eng = make(built)
        built[eng.key] = eng
    if REFERENCE not in built:
        raise RuntimeError(f"the reference engine {REFERENCE} did not run: {failed.get(REFERENCE)}")
    batches = prepare(list(photos), size, bb.mean, bb.std)
    gate_batches = prepare(list(gate_photos), size, bb.mean, bb.std)
    feats = {}
    for k, eng in list(built.items()):
        try:
            feats[k] = np.concatenate([eng.run(b) for b in gate_batches]).astype(np.float32)
        except Exception as e:
            failed[k] = {"label": eng.label, "error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
            del built[k]
    t0 = time.perf_counter()
    times = alternating_rounds(built, batches, list(photos), size, bb.mean, bb.std, rounds, warmup)
    n = len(photos)
    ref = times[REFERENCE]
    rows: dict[str, dict] = {}
    for k, eng in built.items():
        t = times[k]
        g = engine_gate.gate(feats[REFERENCE], feats[k], gate_labels)
        rows[k] = {"label": eng.label, "precision": eng.precision, "info": eng.info, "model": _ms(t["model"], n), "e2e": _ms(t["e2e"], n),
                   "x_eager": round(float(np.median(np.array(ref["model"]) / np.array(t["model"]))), 3),
                   "x_eager_e2e": round(float(np.median(np.array(ref["e2e"]) / np.array(t["e2e"]))), 3),
                   "model_share_of_e2e": round(float(np.median(np.array(t["model"]) / np.array(t["e2e"]))), 3),
                   "gate": g, "usable": g["usable"]}
    order = [*include, *(k for k in rows if k not in include)]             # the engines' order, failures in place
    rows = {k: rows[k] if k in rows else failed[k] for k in order if k in rows or k in failed}
    if compile_rounds:
        rows["torch-compile"] = compile_row(bb, batches, gate_batches, feats[REFERENCE], gate_labels, compile_rounds,
                                            warmup, threads, n)
    print(f"    {len(built)} engines, {rounds} alternating rounds: {time.perf_counter() - t0:.0f} s", flush=True)
    facts = {"cpu_flags": E.cpu_flags(), "openvino_default_precision": None}
    if (folder / "backbone.onnx").exists():
        try:
            facts["openvino_default_precision"] = E.openvino_default_precision(folder / "backbone.onnx", threads)
        except Exception as e:  # OpenVINO missing: its rows say why
            facts["openvino_default_precision"] = f"unknown ({type(e).__name__})"
    return rows, facts


def compile_row(bb, batches, gate_batches, ref_feats, gate_labels, rounds, warmup, threads, n) -> dict:
    label = "torch.compile (default mode), timed against eager fp32 in its own process"
    got = E.compile_in_subprocess(bb, batches, np.concatenate(gate_batches), rounds, warmup, threads)
    if "error" in got:
        return {"label": label, "error": got["error"]}
    g = engine_gate.gate(ref_feats, got["feats"], gate_labels)
    return {"label": label, "precision": "fp32", "info": {"compile_s": round(got["compile_s"], 1), "eager_in_child": _ms(got["eager_seconds"], n)},
            "model": _ms(got["seconds"], n), "e2e": None,
            "x_eager": round(float(np.median(np.array(got["eager_seconds"]) / np.array(got["seconds"]))), 3),
            "x_eager_e2e": None, "gate": g, "usable": g["usable"]}


def print_table(rows: dict) -> None:
    print(f"    {'engine':<16} {'model ms/photo':>22} {'end to end ms/photo':>22} {'× eager':>8} "
          f"{'Δ ident.':>9} {'Δ EER':>7} {'min cos':>9}  usable", flush=True)
    for k, r in rows.items():
        if "error" in r:
            print(f"    {k:<16} cannot run here: {r['error']}")
            continue
        e2e = r["e2e"]
        g = r["gate"]
        print(f"    {k:<16} {r['model']['ms']:8.2f} ({r['model']['min']:.2f}–{r['model']['max']:.2f}) "
              + (f"{e2e['ms']:8.2f} ({e2e['min']:.2f}–{e2e['max']:.2f})" if e2e else f"{'—':>22}")
              + f" {r['x_eager']:7.2f}× {g.get('d_identification', float('nan')):+8.1f} {g.get('d_eer', float('nan')):+6.1f}"
              f" {g.get('min_cosine', float('nan')):9.4f}  {'yes' if r['usable'] else 'NO ' + g.get('why', '')}",
              flush=True)


def run(smoke: bool = False, backbone: str = "auto", size: int | None = None, n_images: int = 128, rounds: int = 7,
        n_scenes: int = 16, recogniser_rounds: int = 3) -> Section:
    from helpers.data.folders import load_orl

    from . import recogniser_speed
    from .threshold import partition

    if smoke:
        n_images, rounds, size, n_scenes, recogniser_rounds = 16, 2, 64, 3, 1
    orl = load_orl()
    try:
        bb = load_backbone(backbone, allow_download=False, verbose=False)
    except BackboneUnavailable:
        bb = load_backbone(backbone, pretrained=False, verbose=False)
    size = size or bb.input_size
    threads = torch.get_num_threads()
    photos = [orl.images[i] for i in timing_photos(orl, n_images)]
    cal_idx, ev_idx = engine_gate.dev_split(orl.labels, partition()["dev"])
    print(f"  [extraction] {bb.name} at {size}×{size}, {len(photos)} photos in batches of {BATCH}, {threads} threads, "
          f"{rounds} rounds; gate: {len(ev_idx)} photos of development people", flush=True)
    rows, facts = engine_rows(bb, size, photos, [orl.images[i] for i in ev_idx], np.asarray(orl.labels)[ev_idx],
                       [orl.images[i] for i in cal_idx], rounds, compile_rounds=0 if smoke else rounds)
    print_table(rows)
    print(f"  [extraction] the recogniser end to end, {n_scenes} JPEG scenes, {recogniser_rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scenes-") as tmp:
        rec = recogniser_speed.measure(bb, size, n_scenes, recogniser_rounds, Path(tmp), threads)
    for name in ("product", "dlib"):
        r = rec.get(name, {})
        print(f"    {name}: " + (f"{r['ms_per_photo']:.1f} ms/photo ({r['ms_min']:.1f}–{r['ms_max']:.1f}); steps "
                                 + ", ".join(f"{s} {v:.1f} ms" for s, v in r["steps_ms"].items())
                                 if "ms_per_photo" in r else r.get("error") or r.get("skipped", "?")), flush=True)

    ov_default, flags = facts["openvino_default_precision"], facts["cpu_flags"]
    key = f"{bb.name}@{size}"
    sec = Section("Speed: engines on the same batches, and the recogniser end to end", config={
        "photos": len(photos), "batch": BATCH, "rounds": rounds, "warmup_passes": WARMUP, "threads": threads,
        "helpers_engine": ENGINE, "gate": engine_gate.RULE, "gate_photos": int(len(ev_idx)),
        "calibration_photos": int(len(cal_idx)), "scenes": n_scenes, "recogniser_rounds": recogniser_rounds})
    sec.details = {"backbone": key, "weights": bb.weights, "engines": rows, "reference": REFERENCE,
                   "cpu_flags": flags, "openvino_default_precision": ov_default, "recogniser": rec}
    sec.figures += figures(key, rows, rec)
    if ov_default:
        sec.notes.append(f"OpenVINO without a precision hint runs in {ov_default} on this CPU "
                         f"(avx512_bf16: {flags.get('avx512_bf16')}, amx_bf16: {flags.get('amx_bf16')}).")
    return sec


def figures(key: str, rows: dict, rec: dict) -> list[Figure]:
    out = []
    ok = {k: r for k, r in rows.items() if "error" not in r}
    usable = {k: r for k, r in ok.items() if r["usable"] and k != HELPERS and r.get("e2e")}  # timed in these rounds
    h = ok.get(HELPERS)

    def per_round(a: dict, b: dict) -> float:   # rate of a / rate of b, median over the rounds they shared
        return float(np.median(np.array(b["model"]["rounds"]) / np.array(a["model"]["rounds"])))

    fp32 = {k: r for k, r in usable.items() if r.get("precision") == "fp32"}
    if h and fp32:
        best = min(fp32, key=lambda k: fp32[k]["model"]["ms"])
        b, ratio = fp32[best], per_round(h, fp32[best])
        out.append(Figure(
            f"extraction.{key}.vs_fastest", f"{key}: the helpers' engine vs the fastest usable fp32 engine, model "
            "only on the same prepared batches (alternating rounds)", 1000 / h["model"]["ms"], "images/s",
            f"fastest usable fp32: {b['label']}", 1000 / b["model"]["ms"], ratio, "of fastest",
            f"≥ {100 * TARGET_VS_FASTEST:.0f} % of fastest", ratio >= TARGET_VS_FASTEST))
    if h and h.get("e2e"):
        share = h["model_share_of_e2e"]
        out.append(Figure(
            f"extraction.{key}.vs_model_alone", f"{key}: the helpers' engine end to end (decoded photos -> to_batch -> "
            "network) vs the same engine on ready batches (ratio: median of per-round ratios)",
            1000 / h["e2e"]["ms"], "images/s", "model only", 1000 / h["model"]["ms"], share, "of model-only",
            f"≥ {100 * TARGET_E2E:.0f} % of model-only", share >= TARGET_E2E))
    if h and usable:
        best = min(usable, key=lambda k: usable[k]["model"]["ms"])
        b = usable[best]
        out.append(Figure(
            f"extraction.{key}.fastest_usable", f"{key}: the fastest usable engine, any precision ({b['label']}), vs "
            "the helpers' engine, model only (information: a candidate for the product)", b["model"]["ms"],
            "ms/photo", "the helpers' engine", h["model"]["ms"], per_round(b, h), "× the helpers' speed"))
    p, d = rec.get("product", {}), rec.get("dlib", {})
    if "ms_per_photo" in p:
        out.append(Figure(
            "extraction.recogniser_end_to_end", f"the recogniser end to end: JPEG file -> {p['finder']} -> "
            "embedding with mirror pass -> answer", p["ms_per_photo"], "ms/photo",
            "dlib face_recognition pipeline (same files)" if "ms_per_photo" in d else d.get("skipped", d.get("error", "")),
            d.get("ms_per_photo"), rec.get("dlib_over_product"), "× dlib's speed" if "ms_per_photo" in d else ""))
    return out
