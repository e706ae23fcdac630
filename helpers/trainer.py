"""End-to-end training of the course's face model: one process, or many under torchrun (DDP).

    python -m helpers.trainer --data DIR --out runs/faces --stages layer4 --epochs 10
    torchrun --standalone --nproc_per_node=2 -m helpers.trainer --data DIR --out runs/faces ...
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m helpers.trainer --data DIR --out runs/faces --resume ...

Backbone (frozen, some stages or all), embedding and ArcFace head train together as one module,
wrapped in DistributedDataParallel when there are several processes, so the head's gradients are
averaged too. `--batch-size` is the global batch: each of W processes takes batch/W photos of the
same seeded order (DistributedSampler), so W processes compute the same steps as one. Photos are
streamed from disk by DataLoader workers. Rank 0 alone logs, evaluates and writes files:
OUT/checkpoint.pt after every epoch (model with head, optimizer, scheduler, grad scaler, epoch,
every rank's RNG states; written atomically), OUT/history.json and OUT/final.pt.

Test hook: FACE_COURSE_FAULT="rank=1,epoch=0,step=1,kind=raise" makes that rank raise (kind
'hang' sleeps forever, 'nan' turns its loss into NaN) at that step.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .backbones import Backbone, BackboneUnavailable, load_backbone
from .data import FaceDataError
from .distributed import (DEFAULT_TIMEOUT_S, DistContext, DistributedSetupError, all_reduce_sum,
                          convert_sync_batchnorm, explain_failure, fail, gather_objects, init_distributed, main_print,
                          rng_state, set_rng_state, shutdown)
from .freezing import apply_freezing_rule, is_frozen
from .io import atomic_save, atomic_write_bytes
from .model import FaceModel, build_model, set_trainable_stages
from .runtime import set_seed
from .streaming import PhotoStream, scan_people
from .training import TrainingDiverged, param_groups

CHECKPOINT_FORMAT = "face-course-trainer/1"
# settings that change the computed weights: a checkpoint resumes only with the same ones
SIGNATURE_FIELDS = ("backbone", "pretrained", "size", "stages", "epochs", "batch_size", "lr",
                    "backbone_lr", "weight_decay", "head", "margin", "scale", "val_per_person",
                    "augment", "seed", "clip")


class TrainError(ValueError):
    """A training setting that cannot work as given; the message says what to change."""


@dataclass
class TrainConfig:
    """Every setting of a run (the CLI flags have the same names, with dashes)."""

    data: str                       # folder with one sub-folder per person, or 'orl'
    out: str = "runs/train"         # checkpoint.pt, history.json, final.pt (rank 0 writes them)
    backbone: str = "auto"          # auto | resnet18 | efficientnet_lite0 | package.module:factory
    pretrained: bool = True
    size: int | None = None         # input pixels; None = the backbone's own (224)
    stages: str = "layer4"          # 'none' (frozen), 'all', or a comma list such as 'layer3,layer4'
    epochs: int = 10
    batch_size: int = 64            # global: split evenly over the processes
    lr: float = 1e-2                # embedding + head; backbone stages get backbone_lr
    backbone_lr: float | None = None  # None = lr / 10
    weight_decay: float = 5e-4
    head: str = "arcface"
    margin: float | None = None
    scale: float = 16.0
    val_per_person: int = 1         # photos per person held out for rank 0's accuracy (0 = none)
    augment: bool = True
    workers: int = 2                # DataLoader worker processes per rank
    seed: int = 0
    amp: str = "auto"               # auto | bf16 | fp16 | off; only on CUDA
    clip: float = 5.0               # max gradient norm (0 = no clipping)
    sync_bn: bool = False           # synchronise trainable BatchNorm layers over ranks
    resume: bool = False            # continue from OUT/checkpoint.pt if it exists
    device: str | None = None       # None = CUDA if present, else CPU; 'cpu' forces gloo
    threads: int | None = None      # torch threads per process (torchrun sets 1)
    timeout_s: float = DEFAULT_TIMEOUT_S
    min_photos: int = 2
    verbose: bool = True


@dataclass
class TrainResult:
    """What a run produced. `model` is the trained FaceModel on rank 0 (None on other ranks)."""

    history: dict
    names: list[str]
    world_size: int
    out: Path
    model: FaceModel | None
    resumed_at_epoch: int = 0

    @property
    def images_per_s(self) -> float:
        """Median global training throughput over the epochs after the first (worker start-up)."""
        rates = self.history["images_per_s"]
        return float(np.median(rates[1:] if len(rates) > 1 else rates)) if rates else float("nan")


# ---------------------------------------------------------------------- pieces

def make_backbone(spec: str, pretrained: bool = True) -> Backbone:
    """A course backbone by name, or `package.module:factory` (a function returning a Backbone)."""
    if ":" not in spec:
        return load_backbone(spec, pretrained=pretrained, verbose=False)
    module, _, name = spec.partition(":")
    try:
        bb = getattr(importlib.import_module(module), name)()
    except (ImportError, AttributeError) as e:
        raise TrainError(f"--backbone {spec}: cannot call {name}() from {module} ({e})") from None
    if not isinstance(bb, Backbone):
        raise TrainError(f"--backbone {spec}: returned {type(bb).__name__}, not a helpers Backbone")
    return bb


def parse_stages(stages: str, backbone: Backbone) -> list[str]:
    """'none' -> [], 'all' -> every stage, 'layer3,layer4' -> those (checked against the backbone)."""
    if stages in ("none", ""):
        return []
    if stages == "all":
        return list(backbone.stage_names)
    names = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in backbone.stage_names]
    if unknown:
        raise TrainError(f"--stages: {unknown} not in {backbone.name}'s stages {backbone.stage_names}; "
                         "give 'none', 'all' or a comma list of those")
    return names


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where the GPU has it (auto), fp16, or None (off; always on CPU)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise TrainError(f"--amp {amp}: choose auto, bf16, fp16 or off")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


class Objective(nn.Module):
    """(images (B,3,H,W), labels (B,)) -> mean ArcFace cross-entropy: the module DDP wraps.

    Backbone and embedding run under autocast when `amp_dtype` is set; the head's cosines and
    margins run in float32 (cos(theta + m) near 1 needs the precision).
    """

    def __init__(self, model: FaceModel, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.model, self.amp_dtype = model, amp_dtype

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            emb = self.model.embedding(self.model.features(x))
        return F.cross_entropy(self.model.head(emb.float(), labels), labels)


def _set_modes(model: FaceModel, trainable: list[str]) -> None:
    """Train mode for what trains; frozen stages in eval mode (fixed BatchNorm, no drop-connect).

    The one freezing rule (`helpers.freezing`); `trainable` must be the stages that
    `set_trainable_stages` left unfrozen.
    """
    if model.backbone is not None:
        frozen = {s for s in model.backbone.stage_names
                  if all(is_frozen(m) for m in model.backbone.stage_modules(s))}
        if frozen != set(model.backbone.stage_names) - set(trainable):
            raise RuntimeError(f"stages {sorted(trainable)} should train but {sorted(frozen)} are frozen")
    apply_freezing_rule(model.train())


def _atomic_save(obj, path: Path) -> None:
    """torch.save (or JSON for a .json path), written atomically: never half a file."""
    if path.suffix == ".json":
        atomic_write_bytes(json.dumps(obj, indent=1).encode(), path)
    else:
        atomic_save(obj, path)


def _fault(ctx: DistContext, epoch: int, step: int, loss: torch.Tensor) -> torch.Tensor:
    """FACE_COURSE_FAULT test hook (see the module docstring); returns `loss` (NaN for kind=nan)."""
    spec = os.environ.get("FACE_COURSE_FAULT")
    if not spec:
        return loss
    f = dict(kv.split("=", 1) for kv in spec.split(","))
    if (int(f.get("rank", 0)), int(f.get("epoch", 0)), int(f.get("step", 0))) != (ctx.rank, epoch, step):
        return loss
    kind = f.get("kind", "raise")
    if kind == "hang":
        time.sleep(10 ** 6)
    if kind == "nan":
        return loss * float("nan")
    raise RuntimeError(f"injected fault on rank {ctx.rank} at epoch {epoch} step {step} "
                       f"(FACE_COURSE_FAULT={spec})")


@torch.no_grad()
def _accuracy(model: FaceModel, loader: DataLoader, device: torch.device, amp: torch.dtype | None) -> float:
    """Closed-set top-1 accuracy: argmax of the head's cosines, model in eval mode."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            emb = model.embedding(model.features(x))
        correct += int((model.head.cosine(emb.float()).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


# ---------------------------------------------------------------------- the run

def train(config: TrainConfig, backbone: Backbone | None = None, ctx: DistContext | None = None) -> TrainResult:
    """Train as `config` says; under torchrun every rank calls this (joins the process group).

    `backbone`: use this Backbone (a copy is trained) instead of `config.backbone`. Returns the
    history on every rank; rank 0's result also holds the trained model.
    """
    own_ctx = ctx is None
    ctx = ctx or init_distributed(config.device, config.timeout_s)
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        result = _train(config, ctx, backbone)
    finally:
        torch.set_num_threads(old_threads)
    if own_ctx:
        shutdown(ctx)
    return result


def _train(cfg: TrainConfig, ctx: DistContext, backbone: Backbone | None) -> TrainResult:
    W, dev = ctx.world_size, ctx.device
    if cfg.batch_size % W:
        raise TrainError(f"--batch-size {cfg.batch_size} is not divisible by {W} processes; "
                         f"use a multiple of {W}")
    index = scan_people(cfg.data, min_photos=cfg.min_photos)
    train_idx, val_idx = index.split(cfg.val_per_person, cfg.seed)
    if len(train_idx) < cfg.batch_size:
        raise TrainError(f"{len(train_idx)} training photos, fewer than one batch of {cfg.batch_size}: "
                         "use a smaller --batch-size")
    set_seed(cfg.seed)  # the same initial weights on every rank
    backbone = copy.deepcopy(backbone) if backbone is not None else make_backbone(cfg.backbone, cfg.pretrained)
    size = cfg.size or backbone.input_size
    stages = parse_stages(cfg.stages, backbone)
    model = build_model(index.num_people, backbone=backbone, head=cfg.head, s=cfg.scale, m=cfg.margin)
    set_trainable_stages(model.backbone, stages)
    # BatchNorm right after the embedding's Linear cancels its bias: the bias's gradient is zero up
    # to rounding, and Adam would scale that rounding noise up to steps of size lr. Keep it fixed.
    model.embedding.linear.bias.requires_grad_(False)
    if cfg.sync_bn:
        convert_sync_batchnorm(model, dev)
    model.to(dev)
    fused = {"fused": True} if dev.type in ("cpu", "cuda") else {}
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.backbone_lr), weight_decay=cfg.weight_decay, **fused)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    amp = resolve_amp(cfg.amp, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    signature = {k: getattr(cfg, k) for k in SIGNATURE_FIELDS} | {"people": index.names}
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    history = {k: [] for k in ("step_loss", "epoch_loss", "val_acc", "epoch_seconds", "images_per_s")}
    start = 0
    set_seed(cfg.seed + ctx.rank)  # dropout / drop-connect masks differ between ranks
    if cfg.resume and ckpt_path.exists():
        start, history = _resume(ckpt_path, ctx, model, opt, sched, scaler, signature)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.verbose:
            print(f"trainer: {len(index)} photos of {index.num_people} people ({len(train_idx)} train, "
                  f"{len(val_idx)} val); {backbone.name} at {size} px, stages {stages or 'none (frozen)'}; "
                  f"{ctx.describe()}; batch {cfg.batch_size} = {W} x {cfg.batch_size // W}; "
                  f"amp {amp or 'off'}" + (f"; resumed after epoch {start}" if start else ""), flush=True)

    net = Objective(model, amp)
    if ctx.distributed:
        net = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    train_set = PhotoStream([index.paths[i] for i in train_idx], index.labels[train_idx],
                            backbone.transform(train=cfg.augment, size=size), cfg.seed)
    sampler = DistributedSampler(train_set, num_replicas=W, rank=ctx.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    loader = DataLoader(train_set, batch_size=cfg.batch_size // W, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, pin_memory=dev.type == "cuda")
    val_loader = None
    if ctx.is_main and len(val_idx):
        val_set = PhotoStream([index.paths[i] for i in val_idx], index.labels[val_idx],
                              backbone.transform(train=False, size=size), cfg.seed)
        val_loader = DataLoader(val_set, batch_size=max(cfg.batch_size // W, 2), num_workers=cfg.workers)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    for epoch in range(start, cfg.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        _set_modes(model, stages)
        t0, seen, losses = time.perf_counter(), 0, []
        for step, (x, y) in enumerate(loader):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = _fault(ctx, epoch, step, net(x, y))
            # one small all-reduce per step: the global mean loss, and whether any rank's is NaN
            stats = all_reduce_sum(torch.stack([loss.detach().float() * len(y),
                                                torch.tensor(float(len(y)), device=dev),
                                                (~torch.isfinite(loss.detach())).float()]), ctx)
            if stats[2] > 0:
                raise TrainingDiverged(
                    f"the loss became NaN/inf at epoch {epoch + 1} step {step + 1} (on {int(stats[2])} "
                    f"of {W} process(es)); lower --lr (now {cfg.lr:g}) or --clip, or use --amp bf16 "
                    f"instead of fp16. Resume from the last good epoch with --resume")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip)
            scaler.step(opt)
            scaler.update()
            losses.append(float(stats[0] / stats[1]))
            seen += len(y)
        sched.step()
        seconds = time.perf_counter() - t0
        history["step_loss"] += losses
        history["epoch_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        history["epoch_seconds"].append(seconds)
        history["images_per_s"].append(seen * W / seconds if seconds > 0 else float("nan"))
        if val_loader is not None:
            history["val_acc"].append(_accuracy(model, val_loader, dev, amp))
        if dev.type == "cuda":
            history["peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        rng = gather_objects(rng_state(), ctx)
        if ctx.is_main:
            _atomic_save({"format": CHECKPOINT_FORMAT, "epochs_done": epoch + 1, "model": model.state_dict(),
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "scaler": scaler.state_dict(), "rng": rng, "history": history,
                          "signature": signature, "world_size": W}, ckpt_path)
            _atomic_save(history, out / "history.json")
            if cfg.verbose:
                val = f", val acc {100 * history['val_acc'][-1]:.1f} %" if history["val_acc"] else ""
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {history['epoch_loss'][-1]:.4f}{val}, "
                      f"{history['images_per_s'][-1]:.1f} images/s", flush=True)

    if ctx.is_main:
        _atomic_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "names": index.names,
                      "backbone": backbone.name, "size": size, "stages": stages, "history": history,
                      "config": dataclasses.asdict(cfg)}, out / "final.pt")
        _atomic_save(history, out / "history.json")
    return TrainResult(history, index.names, W, out, model.eval() if ctx.is_main else None, start)


def _resume(path: Path, ctx: DistContext, model: FaceModel, opt, sched, scaler, signature: dict):
    """Load a checkpoint into the run's objects; returns (epochs done, history)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise TrainError(f"{path} cannot be read ({type(e).__name__}); delete it to start again") from None
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a checkpoint of helpers.trainer ({CHECKPOINT_FORMAT})")
    diff = [f"{k}: checkpoint {ckpt['signature'].get(k)!r}, now {v!r}" for k, v in signature.items()
            if ckpt["signature"].get(k) != v]
    if diff:
        said = "; ".join(diff)
        raise TrainError(f"{path} was made with other settings ({said}): use the same settings "
                         "to resume, or another --out to start a new run")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    if len(ckpt["rng"]) == ctx.world_size:
        set_rng_state(ckpt["rng"][ctx.rank])
    else:
        main_print(ctx, f"trainer: checkpoint made by {len(ckpt['rng'])} process(es), resumed with "
                        f"{ctx.world_size}: RNG states re-seeded (the weights' math is unchanged)")
    return int(ckpt["epochs_done"]), ckpt["history"]


# ---------------------------------------------------------------------- command line

def parse_args(argv: Sequence[str] | None = None, prog: str = "python -m helpers.trainer") -> TrainConfig:
    """The CLI flags -> TrainConfig (flags are the field names with dashes)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig(data="")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.name == "data":
            p.add_argument(flag, required=True, help="folder with one sub-folder per person, or 'orl'")
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            p.add_argument(flag, type=kind, default=default, help=f"default {default}")
    return TrainConfig(**vars(p.parse_args(argv)))


def main(argv: Sequence[str] | None = None, prog: str = "python -m helpers.trainer") -> int:
    """CLI entry point: 0 on success, 2 for a setting or data problem, 1 for any other failure.

    One process returns the status after one line on stderr; a rank of several ends its process
    at once (`distributed.fail`) so that no rank waits on another.
    """
    cfg = parse_args(argv, prog)
    ctx = DistContext()
    try:
        ctx = init_distributed(cfg.device, cfg.timeout_s)
        result = train(cfg, ctx=ctx)
    except Exception as e:  # noqa: BLE001 - every rank reports, then leaves without waiting
        code = 2 if isinstance(e, (TrainError, FaceDataError, BackboneUnavailable, DistributedSetupError,
                                   TrainingDiverged)) else 1
        if code == 1 and not os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's summary has it
            import traceback
            traceback.print_exc()
        if ctx.distributed:
            fail(ctx, e, code)
        print(explain_failure(ctx, e), file=sys.stderr, flush=True)
        return code
    main_print(ctx, f"trainer: done; {result.images_per_s:.1f} images/s; weights in {result.out / 'final.pt'}")
    shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
