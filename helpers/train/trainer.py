"""End-to-end training of the course's face model: one process, or many under torchrun (DDP).

    python -m helpers.train.trainer --data DIR --out runs/faces --stages layer4 --epochs 10
    torchrun --standalone --nproc_per_node=2 -m helpers.train.trainer --data DIR --out runs/faces ...
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m helpers.train.trainer --data DIR --out runs/faces --resume ...

Backbone (frozen, some stages or all), embedding and ArcFace head train together as one module,
wrapped in DistributedDataParallel when there are several processes, so the head's gradients are
averaged too. Each step is `helpers.train.step.train_step` and `val_acc` its `closed_set_accuracy`:
the step and the accuracy of `helpers.train.fit.fit`. `--batch-size` is the global batch: each of W
processes takes batch/W photos of the same seeded order (DistributedSampler), so W processes compute
the same steps as one. Photos are streamed from disk by DataLoader workers. Notebook 07 introduces it.

Ranks agree before training: rank 0 alone walks the folder and decides whether (and from which
checkpoint) to resume; the others receive its photo index (paths, sizes, labels, SHA-256) and
check it against their own machine's files and checkpoint, and any mismatch stops every rank with
one message. Every photo is decoded once before training (shared over the ranks): unreadable ones
are listed and skipped, up to --max-bad-photos. The learning rate follows a per-step warm-up and
cosine schedule, optionally scaled with the global batch (--lr-scaling); --accumulate splits each
step into micro-batches. Rank 0 alone logs, evaluates and writes files: OUT/checkpoint.pt after
every epoch (model with head, optimizer, grad scaler, epoch, every rank's RNG states; fsync'ed
then renamed, the previous one kept as checkpoint.last-good.pt), OUT/history.json, OUT/final.pt.
final.pt (weights, names, backbone, input size) loads as a recogniser: `Recognizer.from_checkpoint("OUT/final.pt")` or
`python -m helpers train --data PEOPLE --out model.pt --from-checkpoint OUT/final.pt`.

Test hook: FACE_COURSE_FAULT="rank=1,epoch=0,step=1,kind=raise" makes that rank raise (kind
'hang' sleeps forever, 'nan' turns its loss into NaN) at that step.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..models.backbones import Backbone, BackboneUnavailable, load_backbone
from .checkpoints import CHECKPOINT_FORMAT, resume_run, save_checkpoint, save_durably
from ..data.folders import FaceDataError
from .distributed import (DEFAULT_TIMEOUT_S, DistContext, DistributedSetupError, PeerReported, all_reduce_sum,
                          convert_sync_batchnorm, explain_failure, fail, gather_objects, init_distributed,
                          main_print, mark_progress, rng_state, shutdown)
from ..models.freezing import apply_freezing_rule, is_frozen
from .lr_schedule import check_settings, lr_factor, make_optimizer
from ..models.face_model import FaceModel, build_model, set_trainable_stages
from .run_checks import (CHECKPOINT, TrainError, agree, check_local_view, from_main, hold_out_people,
                         injected_fault, plan_run, skip_unreadable)
from ..runtime import set_seed
from ..data.streaming import PhotoStream
from .step import MarginObjective, TrainingDiverged, closed_set_accuracy, train_step
from .trainer_eval import held_out_eer

# settings that change the computed weights: a checkpoint resumes only with the same ones
SIGNATURE_FIELDS = ("backbone", "pretrained", "size", "stages", "epochs", "batch_size", "lr", "backbone_lr",
                    "weight_decay", "optimizer", "momentum", "head", "margin", "scale", "val_per_person",
                    "verify_people", "verify_max_photos", "augment", "seed", "clip", "warmup_epochs",
                    "accumulate", "lr_scaling", "base_batch")



@dataclass
class TrainConfig:
    """Every setting of a run (the CLI flags have the same names, with dashes).

    Notebook 07.
    """

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
    optimizer: str = "adamw"        # adamw | sgd (arcface_torch's choice for large runs; see momentum)
    momentum: float = 0.9           # SGD only; 0 = plain SGD
    head: str = "arcface"
    margin: float | None = None
    scale: float = 16.0
    val_per_person: int = 1         # photos per person held out for rank 0's accuracy (0 = none)
    verify_people: int = 0          # people held out of training: verification EER on their pairs
    verify_max_photos: int = 2000   # at most this many of their photos (bounds the evaluation's time)
    augment: bool = True
    workers: int = 2                # DataLoader worker processes per rank
    seed: int = 0
    amp: str = "auto"               # auto | bf16 | fp16 | off; only on CUDA
    clip: float = 5.0               # max gradient norm (0 = no clipping)
    sync_bn: bool = False           # synchronise trainable BatchNorm layers over ranks
    resume: bool = False            # continue from OUT/checkpoint.pt (or its last good copy) if any
    resume_with_new_lr: bool = False  # allow resuming with another lr, backbone_lr, clip or warm-up
    warmup_epochs: float = 0.0      # linear warm-up of the rates, stepped per optimizer step
    accumulate: int = 1             # micro-batches per optimizer step (gradient accumulation)
    lr_scaling: str = "none"        # none | linear | sqrt: lr (and backbone_lr) x f(batch / base_batch)
    base_batch: int = 64            # the global batch that lr was chosen for (with lr_scaling)
    max_bad_photos: int = 10        # unreadable photos skipped before training; more stops the run
    device: str | None = None       # None = CUDA if present, else CPU; 'cpu' forces gloo
    backend: str = "auto"           # auto (nccl on CUDA, gloo on CPU) | nccl | gloo (gloo may share a GPU)
    threads: int | None = None      # torch threads per process (torchrun sets 1)
    timeout_s: float = DEFAULT_TIMEOUT_S
    min_photos: int = 2
    verbose: bool = True


@dataclass
class TrainResult:
    """What a run produced. `model` is the trained FaceModel on rank 0 (None on other ranks).

    Notebook 07, inside `train`.
    """

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
    """A course backbone by name, or `package.module:factory` (a function returning a Backbone).

    Notebook 07, inside `train`.
    """
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
    """'none' -> [], 'all' -> every stage, 'layer3,layer4' -> those (checked against the backbone).

    Notebook 07, inside `train`.
    """
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
    """The autocast dtype: bf16 where the GPU has it (auto), fp16, or None (off; always on CPU).

    Notebook 07, inside `train`.
    """
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise TrainError(f"--amp {amp}: choose auto, bf16, fp16 or off")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _set_modes(model: FaceModel, trainable: list[str]) -> None:
    """Train mode for what trains; frozen stages in eval mode (fixed BatchNorm, no drop-connect).

    The one freezing rule (`helpers.models.freezing`); `trainable` must be the stages that
    `set_trainable_stages` left unfrozen.
    """
    if model.backbone is not None:
        frozen = {s for s in model.backbone.stage_names
                  if all(is_frozen(m) for m in model.backbone.stage_modules(s))}
        if frozen != set(model.backbone.stage_names) - set(trainable):
            raise RuntimeError(f"stages {sorted(trainable)} should train but {sorted(frozen)} are frozen")
    apply_freezing_rule(model.train())


# ---------------------------------------------------------------------- ranks that agree

# ---------------------------------------------------------------------- the run

def train(config: TrainConfig, backbone: Backbone | None = None, ctx: DistContext | None = None) -> TrainResult:
    """Train as `config` says; under torchrun every rank calls this (joins the process group).

    `backbone`: use this Backbone (a copy is trained) instead of `config.backbone`. Returns the
    history on every rank; rank 0's result also holds the trained model.

    Notebook 07.
    """
    own_ctx = ctx is None
    ctx = ctx or init_distributed(config.device, config.timeout_s, config.backend)
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
    lr, backbone_lr, lr_said = from_main(ctx, lambda: check_settings(cfg, W))
    # rank 0 walks the folder and decides whether to resume; the others receive its view and check it
    plan = from_main(ctx, lambda: plan_run(cfg, ctx))
    agree(ctx, check_local_view(plan, ctx))
    for note in plan["notes"]:
        main_print(ctx, f"trainer: {note}")
    index = skip_unreadable(plan["index"], cfg, ctx)
    index, verify_paths, verify_labels = hold_out_people(index, cfg.verify_people, cfg.verify_max_photos, cfg.seed)
    train_idx, val_idx = index.split(cfg.val_per_person, cfg.seed)
    if len(train_idx) < cfg.batch_size:
        raise TrainError(f"{len(train_idx)} training photos, fewer than one batch of {cfg.batch_size}: "
                         "use a smaller --batch-size")
    backbone = copy.deepcopy(backbone) if backbone is not None else make_backbone(cfg.backbone, cfg.pretrained)
    # seeded after the backbone is made (building one by name may draw random numbers): the same
    # initial embedding and head on every rank, whether the backbone was passed or named
    set_seed(cfg.seed)
    size = cfg.size or backbone.input_size
    stages = parse_stages(cfg.stages, backbone)
    model = build_model(index.num_people, backbone=backbone, head=cfg.head, s=cfg.scale, m=cfg.margin)
    set_trainable_stages(model.backbone, stages)
    # BatchNorm right after the embedding's Linear cancels its bias: the bias's gradient is zero up
    # to rounding, and Adam would scale that rounding noise up to steps of size lr. Keep it fixed.
    model.embedding.linear.bias.requires_grad_(False)
    if cfg.sync_bn:
        convert_sync_batchnorm(model, dev, torch_sync=dev.type == "cuda" and ctx.backend == "nccl")
    model.to(dev)
    opt = make_optimizer(cfg, model, lr, backbone_lr)
    base_lrs = [g["lr"] for g in opt.param_groups]
    amp = resolve_amp(cfg.amp, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    signature = {k: getattr(cfg, k) for k in SIGNATURE_FIELDS} | {
        "photos": f"{len(index)} photos of {index.num_people} people, index sha256 {index.digest()[:16]}"}
    out = Path(cfg.out)
    history = {k: [] for k in ("step_loss", "epoch_loss", "val_acc", "val_eer", "epoch_seconds",
                                 "images_per_s", "lr")}
    set_seed(cfg.seed + ctx.rank)  # dropout / drop-connect masks differ between ranks
    start, resumed_note = 0, ""
    if plan["resume_from"]:
        start, history, resumed_note = resume_run(out / plan["resume_from"], plan["epochs_done"], cfg, ctx,
                                               model, opt, scaler, signature)
        for g, base in zip(opt.param_groups, base_lrs):  # the rates of now (--resume-with-new-lr)
            g["initial_lr"] = base
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.verbose:
            micro = cfg.batch_size // (W * cfg.accumulate)
            accum = f" x {cfg.accumulate} accumulated" if cfg.accumulate > 1 else ""
            print(f"trainer: {len(index)} photos of {index.num_people} people ({len(train_idx)} train, "
                  f"{len(val_idx)} val; index sha256 {plan['digest'][:12]}); {backbone.name} at {size} px, "
                  f"stages {stages or 'none (frozen)'}; {ctx.describe()}; batch {cfg.batch_size} = "
                  f"{W} x {micro}{accum}; {lr_said}; warm-up {cfg.warmup_epochs:g} epoch(s), cosine per step; "
                  f"amp {amp or 'off'}" + (f"; resumed after epoch {start}{resumed_note}" if start else ""),
                  flush=True)

    net = MarginObjective(model, amp)
    if ctx.distributed:
        net = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    train_set = PhotoStream([index.paths[i] for i in train_idx], index.labels[train_idx],
                            backbone.transform(train=cfg.augment, size=size), cfg.seed)
    sampler = DistributedSampler(train_set, num_replicas=W, rank=ctx.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    micro = cfg.batch_size // (W * cfg.accumulate)
    loader = DataLoader(train_set, batch_size=micro, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, pin_memory=dev.type == "cuda")
    steps_per_epoch = len(loader) // cfg.accumulate
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    val_loader = None
    if ctx.is_main and len(val_idx):
        val_set = PhotoStream([index.paths[i] for i in val_idx], index.labels[val_idx],
                              backbone.transform(train=False, size=size), cfg.seed)
        val_loader = DataLoader(val_set, batch_size=max(micro, 2), num_workers=cfg.workers)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    for epoch in range(start, cfg.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        _set_modes(model, stages)
        t0, seen, losses = time.perf_counter(), 0, []
        batches = iter(loader)
        for step in range(steps_per_epoch):
            factor = lr_factor(epoch * steps_per_epoch + step, total_steps, warmup_steps)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * factor
            micro_batches = [next(batches) for _ in range(cfg.accumulate)]

            def hook(k: int, loss: torch.Tensor, epoch=epoch, step=step) -> torch.Tensor:
                if k == 0:
                    loss = injected_fault(ctx, epoch, step, loss)
                if k == cfg.accumulate - 1:
                    mark_progress(ctx, epoch, step)  # names this rank if a collective times out
                return loss
            try:  # the one step of helpers.train.step (fit's too); one small all-reduce of the loss
                result = train_step(net, opt, micro_batches, scaler, cfg.clip, lambda t: all_reduce_sum(t, ctx), hook)
            except TrainingDiverged as e:
                if not ctx.is_main:
                    raise PeerReported(2) from None
                other = (f"a smaller --clip (now {cfg.clip:g}) or more --warmup-epochs (now {cfg.warmup_epochs:g})"
                         + (", or --amp bf16 instead of fp16" if amp == torch.float16 else ""))
                raise TrainingDiverged(
                    f"the loss became NaN/inf at epoch {epoch + 1} step {step + 1} (on {e.bad} "
                    f"of {W * cfg.accumulate} micro-batch(es)); this step was not applied. " +
                    (f"Resume from the checkpoint of epoch {epoch} with a lower rate: --resume "
                     f"--resume-with-new-lr --lr {cfg.lr / 10:g} (now {cfg.lr:g}), and/or {other}"
                     if epoch else
                     f"No epoch finished, so nothing to resume: start again with a lower --lr "
                     f"(now {cfg.lr:g}; try {cfg.lr / 10:g}), and/or {other}"), e.loss, e.bad, e.batches) from None
            losses.append(result.loss)
            seen += result.count
        seconds = time.perf_counter() - t0
        history["step_loss"] += losses
        history["lr"].append(opt.param_groups[0]["lr"])
        history["epoch_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        history["epoch_seconds"].append(seconds)
        history["images_per_s"].append(seen * W / seconds if seconds > 0 else float("nan"))
        if val_loader is not None:
            history["val_acc"].append(closed_set_accuracy(model, val_loader, amp))
        if verify_paths:  # every rank embeds its share of the held-out people's photos
            eer = held_out_eer(model, verify_paths, verify_labels, backbone.transform(train=False, size=size), ctx,
                          micro, cfg.workers, amp)
            if ctx.is_main:
                history["val_eer"].append(eer)
        if dev.type == "cuda":
            history["peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        rng = gather_objects(rng_state(), ctx)
        if ctx.is_main:
            save_checkpoint({"format": CHECKPOINT_FORMAT, "epochs_done": epoch + 1, "model": model.state_dict(),
                              "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
                              "history": history, "signature": signature, "world_size": W}, out / CHECKPOINT)
            save_durably(history, out / "history.json")
            if cfg.verbose:
                val = f", val acc {100 * history['val_acc'][-1]:.1f} %" if history["val_acc"] else ""
                val += (f", EER {100 * history['val_eer'][-1]:.1f} % on {len(verify_paths)} photos of "
                        f"{cfg.verify_people} held-out people" if history["val_eer"] else "")
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {history['epoch_loss'][-1]:.4f}{val}, "
                      f"{history['images_per_s'][-1]:.1f} images/s", flush=True)

    if ctx.is_main:
        save_durably({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "names": index.names,
                      "backbone": backbone.name, "backbone_weights": backbone.weights,
                      "feature_dim": int(backbone.feature_dim), "size": size, "stages": stages,
                      "history": history, "config": dataclasses.asdict(cfg)}, out / "final.pt")
        save_durably(history, out / "history.json")
    return TrainResult(history, index.names, W, out, model.eval() if ctx.is_main else None, start)


# ---------------------------------------------------------------------- command line

def parse_args(argv: Sequence[str] | None = None, prog: str = "python -m helpers.train.trainer") -> TrainConfig:
    """The CLI flags -> TrainConfig (flags are the field names with dashes).

    Command line: `python -m helpers ...`.
    """
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


def main(argv: Sequence[str] | None = None, prog: str = "python -m helpers.train.trainer") -> int:
    """CLI entry point: 0 on success, 2 for a setting or data problem, 1 for any other failure.

    One process returns the status after one line on stderr; a rank of several ends its process
    at once (`distributed.fail`) so that no rank waits on another.

    Command line: `python -m helpers ...`.
    """
    cfg = parse_args(argv, prog)
    ctx = DistContext()
    try:
        ctx = init_distributed(cfg.device, cfg.timeout_s, cfg.backend)
        result = train(cfg, ctx=ctx)
    except PeerReported as e:  # rank 0 says what went wrong; let its exit be the one torchrun sees first
        time.sleep(min(3.0, cfg.timeout_s))
        sys.stdout.flush()
        os._exit(e.code)
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
