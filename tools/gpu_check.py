#!/usr/bin/env python
"""Run the course's key paths on CUDA and print what they cost: `python tools/gpu_check.py`.

Sections: feature extraction (`helpers.features.extract_features`), the frozen head fit
(`helpers.training.train_head_on_features` as the course runs it, on a CPU, and `fit` on the
GPU), end-to-end unfreezing with `helpers.trainer` (AMP: bf16, then fp16 with a grad scaler),
the recogniser (`train_recognizer` + `recognize`), and DDP on every visible GPU through torchrun
(`--sync-bn`, the trainer's own AMP). Each prints images/s and peak GPU memory
(`torch.cuda.max_memory_allocated`); a failing section is reported and the others still run.
About 2-4 minutes on one recent GPU with ORL's 400 photos (the packaged, offline data).

Without a CUDA device it prints "no CUDA device: nothing run" and exits 0. `--cpu-smoke` runs
every section on the CPU at toy sizes: a check of this script's own code on a machine without
a GPU (its figures say nothing about GPUs). Exit status 1 when any section failed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _find(name: str, *modules: str):
    """`name` from the first of `modules` that has it (the library's layout may move)."""
    for m in modules:
        try:
            return getattr(importlib.import_module(m), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"{name} not found in {modules}")


class Check:
    """Runs sections, keeps one row of figures per section, prints a table at the end."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, []

    def run(self, name: str, fn) -> None:
        print(f"--- {name}", flush=True)
        _reset(self.device)
        t0 = time.perf_counter()
        try:
            figures = fn() or {}
            figures.setdefault("peak_mb", _peak_mb(self.device))
            self.rows.append((name, "ok", time.perf_counter() - t0, figures))
        except Exception as e:  # noqa: BLE001 - report and go on with the next section
            traceback.print_exc()
            self.rows.append((name, f"FAILED: {type(e).__name__}: {str(e)[:200]}",
                              time.perf_counter() - t0, {}))

    def report(self) -> int:
        print("\n=== GPU check:", torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
              else "CPU smoke run (no GPU figures)")
        for name, status, secs, fig in self.rows:
            figs = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in fig.items() if v is not None)
            print(f"{name:<34} {status:<6} {secs:6.1f} s  {figs}")
        return int(any(status != "ok" for _, status, _, _ in self.rows))


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every section passed (or there is no GPU), 1 otherwise."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="run the sections on CPU at toy sizes")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA device: nothing run (torch.cuda.is_available() is False). Run this on a "
              "machine with an NVIDIA GPU; --cpu-smoke checks the script itself on a CPU.")
        return 0

    import helpers
    from helpers.trainer import TrainConfig, train

    smoke = args.cpu_smoke
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    size = 64 if smoke else 224
    faces = helpers.load_orl()
    if smoke:
        faces = faces.subset([i for i, lab in enumerate(faces.labels) if lab < 6], relabel=True)
    backbone = helpers.load_backbone("auto", verbose=True)
    check = Check(device)
    out = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    state: dict = {}
    data = "orl"
    if smoke:  # the trainer reads folders: write the 6 people's photos as PNG
        data = str(out / "faces")
        for i, (img, lab) in enumerate(zip(faces.images, faces.labels)):
            (Path(data) / f"p{lab}").mkdir(parents=True, exist_ok=True)
            img.save(Path(data) / f"p{lab}" / f"{i}.png")

    def features():
        from helpers.features import extract_features
        t0 = time.perf_counter()
        x = extract_features(backbone, faces.images, batch_size=64, cache=False, device=device,
                             progress=False, verbose=False)
        _sync(device)
        state["x"] = x
        return {"images_per_s": len(x) / (time.perf_counter() - t0), "dim": x.shape[1]}

    def head_fit():
        from helpers.training import train_head_on_features
        t0 = time.perf_counter()
        _, hist = train_head_on_features(state["x"], faces.labels, epochs=30, progress=False)
        return {"cpu_seconds": time.perf_counter() - t0, "loss": hist.loss[-1]}

    def head_fit_gpu():
        from helpers.training import fit
        y = torch.as_tensor(faces.labels).long()
        model = helpers.build_model(int(y.max()) + 1, feature_dim=state["x"].shape[1])
        t0 = time.perf_counter()
        hist = fit(model, (state["x"], y), epochs=30, device=device, progress=False)
        _sync(device)
        return {"seconds": time.perf_counter() - t0, "loss": hist.loss[-1]}

    def trainer_run(stages: str, amp: str, tag: str):
        def run():
            cfg = TrainConfig(data=data, out=str(out / tag), backbone="auto", size=size, stages=stages,
                              epochs=args.epochs, batch_size=16 if smoke else 64, lr=1e-2, amp=amp,
                              workers=2 if smoke else 4, device=str(device), verbose=True,
                              threads=1 if smoke else None)
            res = train(cfg, backbone=backbone)
            return {"images_per_s": res.images_per_s, "loss": res.history["epoch_loss"][-1],
                    "val_acc": res.history["val_acc"][-1] if res.history["val_acc"] else None}
        return run

    def recognizer():
        train_recognizer = _find("train_recognizer", "helpers.recognizer_pipeline", "helpers.recognizer")
        t0 = time.perf_counter()
        rec, info = train_recognizer(faces, backbone, method="head", epochs=30, strangers=None)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rec.recognize(faces.images[:64])
        return {"fit_seconds": fit_s, "recognize_images_per_s": 64 / (time.perf_counter() - t0)}

    def ddp():
        n = 2 if smoke else torch.cuda.device_count()
        tag = out / "ddp"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "helpers.trainer", "--data", data, "--out", str(tag), "--size", str(size),
               "--stages", "all", "--epochs", str(args.epochs), "--batch-size", str((16 if smoke else 64) * n),
               "--sync-bn", "--workers", "2" if smoke else "4", "--timeout-s", "120"]
        if smoke:
            cmd += ["--device", "cpu"]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1" if smoke else "4")}
        done = subprocess.run(cmd, cwd=REPO, env=env, timeout=240, capture_output=True, text=True)
        print(done.stdout[-2000:], done.stderr[-3000:] if done.returncode else "", flush=True)
        if done.returncode:
            raise RuntimeError(f"torchrun exit status {done.returncode}")
        hist = json.loads((tag / "history.json").read_text())
        rates = hist["images_per_s"][1:] or hist["images_per_s"]
        return {"processes": n, "images_per_s": sorted(rates)[len(rates) // 2],
                "peak_mb_rank0": hist.get("peak_memory_mb")}

    check.run("features (extract_features)", features)
    check.run("frozen head fit (course, CPU)", head_fit)
    check.run("frozen head fit (fit on device)", head_fit_gpu)
    check.run("unfreeze layer4 (trainer, amp auto)", trainer_run("layer4", "auto", "layer4"))
    check.run("unfreeze all (trainer, amp fp16)", trainer_run("all", "fp16", "all_fp16"))
    check.run("recogniser (train + recognize)", recognizer)
    check.run("DDP over every GPU (torchrun)", ddp)
    shutil.rmtree(out, ignore_errors=True)
    return check.report()


if __name__ == "__main__":
    sys.exit(main())
