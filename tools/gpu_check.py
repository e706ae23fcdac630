#!/usr/bin/env python
"""Check the course's training paths on CUDA and print what they cost: `python tools/gpu_check.py`.

What it runs, on ORL's photos (the packaged, offline data) written as a folder of people:

1. feature extraction (`helpers.features.extract.extract_features`): images/s;
2. `helpers.train.trainer` in 1 process, fp32, global batch B: the reference loss curve;
3. the same with AMP (`--amp auto`: bf16 where the GPU has it): the AMP speed-up;
4. the same run as P >= 2 processes under torchrun (one per GPU; 2 sharing the GPU, over gloo,
   when there is only 1): its loss curve must match run 2's (fp32, frozen backbone, augmentation
   on: the same steps, see notebook 07) to 1e-3, else the check FAILS.

The per-process batch is capped so that P x batch <= the training photos (the trainer refuses a
global batch larger than the data), and every run trains `--epochs` epochs (images/s is the median
over the epochs after the first, which pays for worker start-up). The table at the end: images/s,
peak GPU memory, AMP speed-up, and the largest loss difference 1 vs P processes. About 2-4 minutes
of GPU time.

Without a CUDA device it prints "no CUDA device: nothing run" and exits 0. `--cpu-smoke` runs the
same sections on the CPU at toy sizes (2 processes over gloo): a check of this script's own code,
run by the tests (its figures say nothing about GPUs). Exit status 1 when any section failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
LOSS_TOLERANCE = 1e-3  # float32 sums in another order, over a few dozen steps (notebook 07: ~1e-4)


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def plan_processes(gpus: int, train_photos: int, per_process: int) -> tuple[int, int]:
    """(processes, per-process batch): at least 2 processes (2 sharing the GPU when there is 1, or
    on a CPU), and a batch capped so that processes x batch <= the training photos."""
    procs = max(2, gpus)
    batch = min(per_process, train_photos // procs)
    if batch < 2:
        raise ValueError(f"{train_photos} training photos cannot give {procs} processes 2 photos each")
    return procs, batch


class Check:
    """Runs sections, keeps one row of figures per section, prints a table at the end."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, []

    def run(self, name: str, fn) -> dict:
        print(f"--- {name}", flush=True)
        _reset(self.device)
        t0 = time.perf_counter()
        try:
            figures = fn() or {}
            figures.setdefault("peak_mb", _peak_mb(self.device))
            self.rows.append((name, "ok", time.perf_counter() - t0, figures))
            return figures
        except Exception as e:  # noqa: BLE001 - report and go on with the next section
            traceback.print_exc()
            self.rows.append((name, f"FAILED: {type(e).__name__}: {str(e)[:300]}", time.perf_counter() - t0, {}))
            return {}

    def report(self, title: str) -> int:
        print(f"\n=== {title}")
        print(f"{'section':<40} {'status':<6} {'seconds':>7} {'images/s':>9} {'peak MiB':>9}  other")
        for name, status, secs, fig in self.rows:
            rate = fig.get("images_per_s")
            peak = fig.get("peak_mb")
            other = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in fig.items() if k not in ("images_per_s", "peak_mb") and v is not None)
            print(f"{name:<40} {status if status == 'ok' else 'FAILED':<6} {secs:>7.1f} "
                  f"{'' if rate is None else f'{rate:.1f}':>9} {'' if peak is None else f'{peak:.0f}':>9}  {other}")
            if status != "ok":
                print(f"    {status}")
        return int(any(status != "ok" for _, status, _, _ in self.rows))


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every section passed (or there is no GPU), 1 otherwise."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="run the sections on CPU at toy sizes")
    p.add_argument("--epochs", type=int, default=None, help="epochs per training run (default 8; 2 in smoke)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA device: nothing run (torch.cuda.is_available() is False). Run this on a "
              "machine with an NVIDIA GPU; --cpu-smoke checks the script itself on a CPU.")
        return 0

    import helpers
    from helpers.train.trainer import TrainConfig, train

    smoke = args.cpu_smoke
    epochs = args.epochs or (2 if smoke else 8)
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    gpus = 0 if smoke else torch.cuda.device_count()
    size = 32 if smoke else 112
    faces = helpers.load_orl()
    if smoke:
        faces = faces.subset([i for i, lab in enumerate(faces.labels) if lab < 6], relabel=True)
    backbone = helpers.load_backbone("auto", verbose=True)
    out = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data = out / "faces"
    for i, (img, lab) in enumerate(zip(faces.images, faces.labels)):
        (data / f"p{lab}").mkdir(parents=True, exist_ok=True)
        img.save(data / f"p{lab}" / f"{i}.png")
    train_photos = len(faces.images) - len(set(faces.labels.tolist()))  # 1 per person held out
    procs, per_proc = plan_processes(gpus, train_photos, 8 if smoke else 64)
    batch = procs * per_proc
    workers = 1 if smoke else 4
    print(f"gpu_check: {gpus or 'no'} GPU(s); {procs} processes x {per_proc} photos = global batch {batch} "
          f"of {train_photos} training photos; {epochs} epochs per run at {size} px", flush=True)
    check = Check(device)
    common = dict(data=str(data), backbone="auto", size=size, stages="none", epochs=epochs, batch_size=batch,
                  sync_bn=True, workers=workers, device=str(device), verbose=True, threads=1 if smoke else None)

    def features():
        from helpers.features.extract import extract_features
        t0 = time.perf_counter()
        x = extract_features(backbone, faces.images, batch_size=64, cache=False, device=device,
                             progress=False, verbose=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return {"images_per_s": len(x) / (time.perf_counter() - t0), "dim": x.shape[1]}

    def one_process(amp: str, tag: str):
        def run():
            res = train(TrainConfig(out=str(out / tag), amp=amp, **common), backbone=backbone)
            return {"images_per_s": res.images_per_s, "loss": res.history["epoch_loss"][-1],
                    "steps": len(res.history["step_loss"]), "_losses": res.history["step_loss"]}
        return run

    def several(reference: list[float]):
        def run():
            tag = out / "ddp"
            flags = ["--data", str(data), "--out", str(tag), "--size", str(size), "--stages", "none",
                     "--epochs", str(epochs), "--batch-size", str(batch), "--workers", str(workers),
                     "--amp", "off", "--sync-bn", "--timeout-s", "120", "--device", str(device) if smoke else "cuda"]
            if gpus < procs and not smoke:
                flags += ["--backend", "gloo"]  # 2 processes on 1 GPU: NCCL refuses a shared GPU
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                   "-m", "helpers.train.trainer", *flags]
            env = {**os.environ, "OMP_NUM_THREADS": "1" if smoke else "4"}
            done = subprocess.run(cmd, cwd=REPO, env=env, timeout=300, capture_output=True, text=True)
            print(done.stdout[-2000:], done.stderr[-3000:] if done.returncode else "", flush=True)
            if done.returncode:
                raise RuntimeError(f"torchrun exit status {done.returncode}")
            hist = json.loads((tag / "history.json").read_text())
            if not reference:
                raise RuntimeError("no 1-process reference curve (its section failed)")
            gap = float(np.max(np.abs(np.array(hist["step_loss"]) - np.array(reference))))
            if len(hist["step_loss"]) != len(reference) or gap > LOSS_TOLERANCE:
                raise AssertionError(f"{procs}-process loss curve differs from 1 process's by {gap:.2e} "
                                     f"(tolerance {LOSS_TOLERANCE:g}, {len(hist['step_loss'])} vs {len(reference)} "
                                     "steps): the processes do not compute the same steps")
            rates = hist["images_per_s"][1:] or hist["images_per_s"]
            return {"images_per_s": float(np.median(rates)), "peak_mb": hist.get("peak_memory_mb"),
                    "processes": procs, "max_loss_gap_vs_1": gap}
        return run

    check.run("features (extract_features)", features)
    fp32 = check.run(f"trainer, 1 process, fp32, batch {batch}", one_process("off", "fp32"))
    amp = check.run(f"trainer, 1 process, amp auto, batch {batch}", one_process("auto", "amp"))
    if fp32.get("images_per_s") and amp.get("images_per_s"):
        amp["amp_speedup"] = amp["images_per_s"] / fp32["images_per_s"]
    check.run(f"trainer, {procs} processes (torchrun), fp32", several(fp32.get("_losses", [])))
    for _, _, _, fig in check.rows:
        fig.pop("_losses", None)
    shutil.rmtree(out, ignore_errors=True)
    title = (f"GPU check: {torch.cuda.get_device_name(device)} x {gpus}" if device.type == "cuda"
             else "CPU smoke run (no GPU figures)")
    return check.report(title)


if __name__ == "__main__":
    sys.exit(main())
