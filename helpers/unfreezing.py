"""Gradual unfreezing: the data of a run, stage schedules, running them, and what a run achieves.

The guide's three stages: (1) the head on the frozen backbone, (2) + the backbone's last
stage, (3) everything at a lower learning rate. Stages that allow it run on cached features or
cached activations entering the last stage (`helpers.backbone_tail`). Everything here works for
any `Backbone` whose stages are in order (ResNet-18, EfficientNet-Lite0).
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbone_tail import BackboneTail, FineTuneModel, as_finetune, last_stage, stage_inputs
from .backbones import Backbone
from .data import FaceSet, Split, split_known_strangers, split_per_person
from .evaluation import embed, one_shot_identification, verification
from .model import FaceModel, build_model, count_parameters, set_trainable_stages
from .memory import PeakMemory
from .runtime import default_threads, pick_device, run_batched, set_seed, threads
from .training import History, ImageDataset, fit, param_groups


# ---------------------------------------------------------------------- data for the comparison

PARTS = ("train", "val", "test", "strangers")


@dataclass
class UnfreezeData:
    """Known people split into train/val/test, strangers, the pretrained backbone and the input size.

    The pretrained `backbone` is never trained: every run trains a copy. Features and the
    activations entering the last stage are computed once (eval mode, no augmentation) and kept
    in memory; `one_off_seconds` says what that cost.
    """

    backbone: Backbone
    known: FaceSet
    strangers: FaceSet | None
    split: Split
    size: int
    threads: int = field(default_factory=default_threads)
    batch_size: int = 16
    device: torch.device = field(default_factory=pick_device)
    _inputs: dict = field(default_factory=dict, repr=False)
    _features: dict = field(default_factory=dict, repr=False)
    one_off_seconds: float = 0.0

    @property
    def num_classes(self) -> int:
        return self.known.num_people

    @property
    def cut_stage(self) -> str:
        """The stage whose inputs are cached: the backbone's last stage (ResNet-18's layer4)."""
        return last_stage(self.backbone)

    def images(self, part: str) -> list:
        if part == "strangers":
            return list(self.strangers.images) if self.strangers is not None else []
        return [self.known.images[i] for i in getattr(self.split, part)]

    def labels(self, part: str) -> torch.Tensor:
        if part == "strangers":
            lab = self.strangers.labels if self.strangers is not None else np.zeros(0, int)
        else:
            lab = self.known.labels[getattr(self.split, part)]
        return torch.as_tensor(np.asarray(lab)).long()

    def transform(self, train: bool = False):
        return self.backbone.transform(train=train, size=self.size)

    def inputs(self, part: str) -> torch.Tensor:
        """Activations entering the last stage for `part`, computed once for all parts."""
        if not self._inputs:
            t0 = time.perf_counter()
            with threads(self.threads):
                for p in PARTS:
                    ims = self.images(p)
                    self._inputs[p] = (stage_inputs(self.backbone, ims, self.cut_stage, self.transform(),
                                                    self.batch_size, self.device) if ims else None)
            self.one_off_seconds += time.perf_counter() - t0
        return self._inputs[part]

    def features(self, part: str) -> torch.Tensor:
        """Frozen pretrained features for `part` (the cached inputs through the pretrained last stage)."""
        if part not in self._features:
            x = self.inputs(part)
            if x is None:
                return None
            t0 = time.perf_counter()
            tail = BackboneTail(self.backbone, self.cut_stage).eval()
            with threads(self.threads), torch.inference_mode():
                self._features[part] = run_batched(tail, x, 64, self.device)
            self.one_off_seconds += time.perf_counter() - t0
        return self._features[part]


def prepare_data(backbone: Backbone, faces: FaceSet, n_known: int = 9, size: int = 112, seed: int = 0,
                 shots: int | None = None, n_threads: int | None = None, batch_size: int = 16,
                 all_inputs: torch.Tensor | None = None) -> UnfreezeData:
    """Pick `n_known` people (the rest are strangers), split their photos, fix the input size.

    `all_inputs`: `all_stage_inputs(backbone, faces, size)`, the activations entering the last stage
    of every photo of `faces`, computed once and shared by many seeds (they do not depend on the seed).
    """
    known, strangers = split_known_strangers(faces, n_known=n_known, seed=seed)
    split = split_per_person(known.labels, shots=shots, seed=seed)
    data = UnfreezeData(backbone, known, strangers, split, size, n_threads or default_threads(), batch_size)
    if all_inputs is not None:
        if len(all_inputs) != len(faces):
            raise ValueError(f"all_inputs holds {len(all_inputs)} photos; faces has {len(faces)}")
        where = {path: i for i, path in enumerate(faces.paths)}
        known_idx = [where[path] for path in known.paths]
        for part in PARTS:
            if part == "strangers":
                idx = [where[path] for path in strangers.paths] if strangers is not None else []
            else:
                idx = [known_idx[i] for i in getattr(split, part)]
            data._inputs[part] = all_inputs[idx] if idx else None
    return data


def all_stage_inputs(backbone: Backbone, faces: FaceSet, size: int = 112, n_threads: int | None = None,
                     batch_size: int = 16) -> torch.Tensor:
    """Activations entering the last stage (N, C, h, w) of every photo of `faces` (eval mode, no augmentation)."""
    with threads(n_threads or default_threads()):
        return stage_inputs(backbone, faces.images, last_stage(backbone), backbone.transform(size=size),
                            batch_size, pick_device())


# ---------------------------------------------------------------------- schedules


@dataclass
class StagePlan:
    """One training stage: which backbone stages train, for how long, at which learning rates."""

    name: str
    stages: tuple[str, ...]
    epochs: int
    lr: float
    backbone_lr: float | None = None
    augment: bool = False
    cache: bool = False
    warmup: int = 0  # `train_cached_steps` only: steps of linear warm-up for the groups this stage unfreezes

    def describe(self) -> str:
        what = "head only" if not self.stages else "head + " + " + ".join(self.stages)
        how = "cached activations" if self.cache else ("augmented photos" if self.augment else "photos")
        lrs = f"lr {self.lr:.2g}" + (f", backbone lr {self.backbone_lr:.2g}" if self.stages else "")
        warm = f", {self.warmup}-step warm-up" if self.warmup else ""
        return f"{self.name}: {what}, {self.epochs} epochs, {lrs}{warm}, on {how}"


def frozen_schedule(epochs: int = 30, lr: float = 1e-2) -> list[StagePlan]:
    """Stage 1 alone: the head on cached features of the frozen backbone."""
    return [StagePlan("stage 1", (), epochs, lr, cache=True)]


def gradual_schedule(backbone: Backbone, epochs: tuple[int, int, int] = (30, 8, 4),
                     lr: tuple[float, float, float] = (1e-2, 1e-3, 3e-4),
                     backbone_lr: tuple[float, float] = (3e-4, 3e-5)) -> list[StagePlan]:
    """The guide's three stages: head; + the last stage (cached inputs); everything, lower lr, augmented."""
    last = last_stage(backbone)
    return [StagePlan("stage 1", (), epochs[0], lr[0], cache=True),
            StagePlan("stage 2", (last,), epochs[1], lr[1], backbone_lr[0], cache=True),
            StagePlan("stage 3", tuple(backbone.stage_names), epochs[2], lr[2], backbone_lr[1], augment=True)]


def full_schedule(backbone: Backbone, epochs: int = 8, lr: float = 1e-2, backbone_lr: float = 1e-4,
                  augment: bool = True) -> list[StagePlan]:
    """Full fine-tuning from the start: every stage trains from epoch 1."""
    return [StagePlan("full", tuple(backbone.stage_names), epochs, lr, backbone_lr, augment=augment)]


# ---------------------------------------------------------------------- runs


@dataclass
class Metrics:
    """What one trained model achieves on the shared split (fractions, not percent)."""

    train_acc: float      # known people, training photos, eval mode, no augmentation
    val_acc: float        # known people, validation photos
    test_acc: float       # known people, test photos (closed set, the head's answer)
    new_people_1shot: float  # strangers enrolled from 1 photo each, the others identified (1-NN)
    strangers_eer: float  # same/different person over all stranger pairs
    train_cos: float = float("nan")  # mean cosine between a photo's embedding and its own person's weight
    val_cos: float = float("nan")
    strangers_tar: float = float("nan")  # same-person stranger pairs accepted at FAR 1 %

    @property
    def gap(self) -> float:
        """Train minus validation accuracy: how much the model overfits."""
        return self.train_acc - self.val_acc

    @property
    def cos_gap(self) -> float:
        """Train minus validation cosine to the own person: how much more tightly the training photos
        sit on their person than new photos do. Still measures overfitting at 100 % accuracy."""
        return self.train_cos - self.val_cos


@dataclass
class RunResult:
    """One method's trained model, its per-stage histories, cost and metrics."""

    method: str
    model: FaceModel
    plans: list[StagePlan]
    histories: list[History]
    trainable: int
    total_params: int
    stage_seconds: list[float]
    peak_mb: float | None
    memory_method: str
    one_off_seconds: float = 0.0
    metrics: Metrics | None = None
    trained_stages: tuple[str, ...] = ()
    bn_stats_changed: bool = False  # BatchNorm running statistics moved (a "frozen" backbone in train mode)

    @property
    def epochs(self) -> int:
        return sum(h.epochs for h in self.histories)

    @property
    def train_seconds(self) -> float:
        """Seconds spent in training epochs (validation included), all stages."""
        return float(sum(sum(h.seconds) for h in self.histories))

    def seconds_per_epoch(self) -> list[float]:
        return [h.seconds_per_epoch for h in self.histories]

    @property
    def diverged(self) -> str:
        return next((h.diverged for h in self.histories if h.diverged), "")

    def stage_ends(self) -> list[int]:
        """The epoch after which each stage ended, counted from 1 across stages (boundaries of one curve)."""
        return np.cumsum([h.epochs for h in self.histories]).tolist()

    def combined_history(self) -> History:
        """All stages' epochs one after another (for a single curve)."""
        out = History()
        for h in self.histories:
            out.loss += h.loss
            out.train_acc += h.train_acc
            out.val_acc += h.val_acc
            out.val_loss += h.val_loss
            out.seconds += h.seconds
            for name, values in h.extra.items():
                out.extra[name] = out.extra.get(name, []) + values
            out.diverged = out.diverged or h.diverged
        return out


def _even_batch(n: int, target: int) -> int:
    """A batch size near `target` that splits `n` into equal batches (fit drops a ragged last one)."""
    if n <= target:
        return n
    k = -(-n // target)
    return -(-n // k)


def run_schedule(data: UnfreezeData, plans: Sequence[StagePlan], method: str = "", seed: int = 0,
                 model: FaceModel | None = None, trained_stages: Sequence[str] = (),
                 measure_memory: bool = True, progress: bool = False, bn_train: bool = False,
                 on_epoch: Callable[[History], None] | None = None,
                 strangers_each_epoch: bool = False) -> RunResult:
    """Train a copy of the pretrained backbone (or continue `model`) through `plans`, in order.

    A plan with `cache=True` trains on the cached features (no backbone stage) or on the cached
    activations entering the last stage (only the last stage trains); that is only valid while
    every earlier stage still holds its pretrained weights, which is checked. `bn_train`: see
    `FineTuneModel` (False keeps the backbone's BatchNorm statistics fixed). `strangers_each_epoch`:
    the strangers' EER after every epoch, in `History.extra["strangers_eer"]`.
    """
    if model is None:
        set_seed(seed)  # the new embedding and head start from the same weights on every run
        model = build_model(data.num_classes, backbone=copy.deepcopy(data.backbone), freeze_backbone=True)
    model = as_finetune(model, bn_train)
    backbone = model.backbone
    trained = list(trained_stages)
    histories, seconds, peak, mem_method, trainable = [], [], None, "", 0
    y_train, y_val = data.labels("train"), data.labels("val")
    for plan in plans:
        if plan.cache and plan.augment:
            raise ValueError(f"{plan.name}: cached activations cannot be augmented (they are computed once)")
        set_trainable_stages(backbone, plan.stages)
        trainable = count_parameters(model).trainable
        trained += [s for s in plan.stages if s not in trained]
        t0 = time.perf_counter()
        if plan.cache and not plan.stages:
            xs = (data.features("train"), data.features("val"))
            target = FineTuneModel(model.embedding, model.head, None)
            n_threads = 1  # small tensors: one thread is fastest
        elif plan.cache:
            first = plan.stages[0]
            if tuple(plan.stages) != (data.cut_stage,):
                raise ValueError(f"{plan.name}: cached activations exist for the last stage "
                                 f"({data.cut_stage}) only; got {plan.stages}")
            earlier = [s for s in trained if backbone.stage_names.index(s) < backbone.stage_names.index(first)]
            if earlier:
                raise ValueError(f"{plan.name}: stages {earlier} were trained, so the cached activations "
                                 "entering the last stage are out of date; train end to end instead")
            xs = (data.inputs("train"), data.inputs("val"))
            target = FineTuneModel(model.embedding, model.head, BackboneTail(backbone, first), bn_train)
            n_threads = data.threads
        else:
            xs = None
            target = model
            n_threads = data.threads
        one_off = time.perf_counter() - t0
        metrics = _strangers_metric(data, xs, plan) if strangers_each_epoch and data.strangers is not None else None
        meter = PeakMemory(data.device) if measure_memory else None
        with threads(n_threads), (meter or contextlib.nullcontext()):
            if xs is not None:
                hist = fit(target, (xs[0], y_train), (xs[1], y_val), epochs=plan.epochs, lr=plan.lr,
                           backbone_lr=plan.backbone_lr, batch_size=64, seed=seed, device=data.device,
                           progress=progress, on_epoch=on_epoch, epoch_metrics=metrics)
            else:
                train = ImageDataset(data.images("train"), y_train, data.transform(train=plan.augment))
                val = ImageDataset(data.images("val"), y_val, data.transform())
                hist = fit(target, train, val, epochs=plan.epochs, lr=plan.lr, backbone_lr=plan.backbone_lr,
                           batch_size=_even_batch(len(train), data.batch_size), seed=seed,
                           device=data.device, progress=progress, on_epoch=on_epoch, epoch_metrics=metrics)
        if meter is not None and meter.peak_mb is not None:
            peak = max(peak or 0.0, meter.peak_mb)
            mem_method = meter.method
        histories.append(hist)
        seconds.append(one_off + sum(hist.seconds))
        if hist.diverged:
            break
    set_trainable_stages(backbone, [])
    model.eval()
    return RunResult(method or " + ".join(p.name for p in plans), model, list(plans), histories, trainable,
                     count_parameters(model).total, seconds, peak, mem_method,
                     trained_stages=tuple(s for s in backbone.stage_names if s in trained))


def _strangers_metric(data: UnfreezeData, xs, plan: StagePlan) -> dict:
    """{"strangers_eer": model -> EER}: the strangers in the form this stage's model takes as input."""
    inputs = (ImageDataset(data.images("strangers"), data.labels("strangers"), data.transform()) if xs is None
              else data.inputs("strangers") if plan.stages else data.features("strangers"))
    labels = data.labels("strangers").numpy()
    return {"strangers_eer": lambda model: verification(embed(model, inputs), labels).eer}


def run_chain(data: UnfreezeData, plans: Sequence[StagePlan], names: Sequence[str] | None = None,
              seed: int = 0, measure_memory: bool = True, progress: bool = False,
              strangers_each_epoch: bool = False) -> list[RunResult]:
    """Run `plans` one after another on ONE model (stage k starts from stage k-1's weights), evaluate after each.

    Element k is the model after stages 1..k+1, with their histories, seconds and peak memory accumulated,
    so `result[-1].combined_history()` is one curve across all stages and `stage_ends()` its boundaries.
    """
    data.inputs("train")  # the one-off cost, outside every stage's timing
    data.features("train")
    out: list[RunResult] = []
    for k, plan in enumerate(plans):
        prev = out[-1] if out else None
        name = names[k] if names else " + ".join(p.name for p in plans[:k + 1])
        r = run_schedule(data, [plan], name, seed, model=copy.deepcopy(prev.model) if prev else None,
                         trained_stages=prev.trained_stages if prev else (), measure_memory=measure_memory,
                         progress=progress, strangers_each_epoch=strangers_each_epoch)
        if prev is not None:
            r.histories, r.plans = prev.histories + r.histories, prev.plans + r.plans
            r.stage_seconds = prev.stage_seconds + r.stage_seconds
            both = (prev.peak_mb, r.peak_mb)
            r.peak_mb = None if both == (None, None) else max(b or 0.0 for b in both)
        r.one_off_seconds = data.one_off_seconds
        evaluate_run(r, data, seed)
        out.append(r)
        if r.diverged:
            break
    return out


# ---------------------------------------------------------------------- the stages that cost seconds, step by step


def lr_factor(step: int, steps: int, warmup: int = 0) -> float:
    """Multiplier of a group's learning rate at `step` (0-based) of a stage of `steps` steps.

    Cosine decay from 1 to 0 over the stage (as `fit`'s per-epoch schedule), times a linear warm-up
    (step + 1) / (warmup + 1) for the first `warmup` steps: the first step runs at 1 / (warmup + 1)
    of the rate, step `warmup` at the full (cosine) rate.
    """
    cosine = 0.5 * (1.0 + float(np.cos(np.pi * step / max(1, steps))))
    warm = (step + 1) / (warmup + 1) if step < warmup else 1.0
    return cosine * warm


def train_cached_steps(data: UnfreezeData, plans: Sequence[StagePlan], method: str = "", seed: int = 0,
                       batch_size: int = 64, trace: bool = False) -> RunResult:
    """Stage 1 (head only) and stage 2 (+ the last stage) on ONE model, step by step on the cached
    activations entering the last stage: what the guide's first two stages do, in seconds on a CPU.

    For each plan: set `requires_grad` on its stages (the rest frozen, BatchNorm in eval mode), build
    one parameter group per trainable part (head at `plan.lr`, the last stage at `plan.backbone_lr`),
    rebuild AdamW (fresh moments), then `plan.epochs` passes over the training photos in batches of
    `batch_size` (60 photos: one step per pass). The groups a stage newly unfreezes get a linear
    warm-up over `plan.warmup` steps (`lr_factor`). `trace`: validation accuracy and strangers' EER
    after every step, in `History.val_acc` / `extra["strangers_eer"]` (one entry per step).
    The result is evaluated (`evaluate_run`) and its histories hold one entry per step.
    """
    cut = data.cut_stage
    for plan in plans:
        if set(plan.stages) - {cut}:
            raise ValueError(f"{plan.name}: on cached activations only the last stage ({cut}) can train; "
                             f"got {plan.stages}")
    set_seed(seed)  # the same embedding and head weights as `run_schedule` on this seed
    model = as_finetune(build_model(data.num_classes, backbone=copy.deepcopy(data.backbone),
                                    freeze_backbone=True), bn_train=False)
    tail = FineTuneModel(model.embedding, model.head, BackboneTail(model.backbone, cut))
    head_only = FineTuneModel(model.embedding, model.head, None)   # on the cached features: faster, same numbers
    y, yv, s_lab = data.labels("train"), data.labels("val"), data.labels("strangers").numpy()
    gen = torch.Generator().manual_seed(seed)
    trained: list[str] = []
    histories, seconds = [], []
    with threads(data.threads):
        for plan in plans:
            set_trainable_stages(model.backbone, plan.stages)
            new = {s for s in plan.stages if s not in trained}
            target, cached = (tail, data.inputs) if plan.stages or trained else (head_only, data.features)
            x, xv = cached("train"), cached("val")
            s_x = cached("strangers") if trace and data.strangers is not None else None
            groups = param_groups(target, plan.lr, plan.backbone_lr)
            opt = torch.optim.AdamW(groups, weight_decay=5e-4)   # a new optimizer: fresh Adam moments
            base = [g["lr"] for g in opt.param_groups]
            steps_per_pass = max(1, -(-len(x) // batch_size))
            steps = plan.epochs * steps_per_pass
            hist, t0 = History(), time.perf_counter()
            for step in range(steps):
                for g, lr0 in zip(opt.param_groups, base):
                    g["lr"] = lr0 * lr_factor(step, steps, plan.warmup if g["name"] in new else 0)
                idx = torch.randperm(len(x), generator=gen)[:batch_size]
                target.train()
                emb = target.embedding(target.features(x[idx]))
                loss = F.cross_entropy(target.head(emb, y[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                hist.loss.append(loss.item())
                with torch.no_grad():
                    hist.train_acc.append(float((target.head.cosine(emb).argmax(1) == y[idx]).float().mean()))
                if trace:
                    target.eval()
                    with torch.inference_mode():
                        hist.val_acc.append(float((target.head.cosine(target.embedding(target.features(xv)))
                                                   .argmax(1) == yv).float().mean()))
                        if s_x is not None:
                            emb_s = F.normalize(target.embedding(target.features(s_x)), dim=1).numpy()
                            hist.extra.setdefault("strangers_eer", []).append(verification(emb_s, s_lab).eer)
                hist.seconds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
            histories.append(hist)
            seconds.append(sum(hist.seconds))
            trained += sorted(new)
    trainable = count_parameters(model).trainable  # in the last stage
    set_trainable_stages(model.backbone, [])
    model.eval()
    result = RunResult(method or " + ".join(p.name for p in plans), model, list(plans), histories, trainable,
                       count_parameters(model).total, seconds, None, "", trained_stages=tuple(trained))
    evaluate_run(result, data, seed)
    return result


# ---------------------------------------------------------------------- evaluation


@torch.inference_mode()
def model_features(result: RunResult, data: UnfreezeData, part: str) -> torch.Tensor | None:
    """Backbone features of `part` through the run's (possibly fine-tuned) backbone, cheapest way.

    Untouched backbone: the cached features. Only the last stage trained: the cached inputs
    through the trained last stage. Otherwise: the photos through the whole backbone.
    """
    if not data.images(part):
        return None
    trained = result.trained_stages
    bb = result.model.backbone
    with threads(data.threads):
        if not trained and not result.bn_stats_changed:
            return data.features(part)
        if trained == (data.cut_stage,) and not result.bn_stats_changed:
            tail = BackboneTail(bb, data.cut_stage).eval().to(data.device)
            return run_batched(tail, data.inputs(part), 64, data.device)
        bb.eval().to(data.device)
        tf = data.transform()
        return run_batched(bb, data.images(part), data.batch_size, data.device,
                           prepare=lambda chunk: torch.stack([tf(im) for im in chunk]))


@torch.inference_mode()
def _embed_and_logits(model: FaceModel, feats: torch.Tensor, device) -> tuple[np.ndarray, torch.Tensor]:
    model.eval()
    emb_raw = model.embedding.to(device)(feats.to(device))
    logits = model.head.to(device)(emb_raw)
    return F.normalize(emb_raw, dim=1).cpu().numpy(), logits.cpu()


def evaluate_run(result: RunResult, data: UnfreezeData, seed: int = 0, strangers: bool = True) -> Metrics:
    """Accuracy on known people (train/val/test), 1-shot new people and strangers' EER; stored on `result`.

    `strangers=False` skips the stranger measures (NaN), which saves a pass over 310 photos.
    """
    acc, cos = {}, {}
    for part in ("train", "val", "test"):
        _, logits = _embed_and_logits(result.model, model_features(result, data, part), data.device)
        y = data.labels(part)
        acc[part] = float((logits.argmax(1) == y).float().mean())
        cos[part] = float((logits[torch.arange(len(y)), y] / result.model.head.s).mean())  # eval: s * cos
    s_feats = model_features(result, data, "strangers") if strangers else None
    if s_feats is not None:
        s_emb, _ = _embed_and_logits(result.model, s_feats, data.device)
        s_lab = data.labels("strangers").numpy()
        ver = verification(s_emb, s_lab)
        one_shot, eer, tar = one_shot_identification(s_emb, s_lab, seed), ver.eer, ver.tar_at_far
    else:
        one_shot = eer = tar = float("nan")
    result.metrics = Metrics(acc["train"], acc["val"], acc["test"], one_shot, eer, cos["train"], cos["val"], tar)
    result.model.cpu()
    return result.metrics


def raw_feature_metrics(data: UnfreezeData, seed: int = 0) -> dict[str, float]:
    """The same stranger measures on the frozen backbone's raw features (no training at all)."""
    s = data.features("strangers").numpy()
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    lab = data.labels("strangers").numpy()
    return {"new_people_1shot": one_shot_identification(s, lab, seed), "strangers_eer": verification(s, lab).eer}


def train_stages(data: UnfreezeData, stages: Sequence[str], epochs: int = 3, lr: float = 1e-2,
                 backbone_lr: float = 1e-3, seed: int = 0, augment: bool = True,
                 strangers_each_epoch: bool = False) -> RunResult:
    """Train the head plus the chosen backbone stages from the pretrained backbone, and evaluate.

    Head only: cached features. Only the last stage: its cached inputs (no augmentation).
    Anything else: photos end to end, augmented when `augment`.
    """
    order = data.backbone.stage_names
    unknown = [s for s in stages if s not in order]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; this backbone has {order}")
    stages = tuple(s for s in order if s in stages)
    if int(epochs) < 1:
        raise ValueError("epochs must be at least 1")
    cache = stages in ((), (data.cut_stage,))
    plan = StagePlan("panel", stages, int(epochs), float(lr), float(backbone_lr), augment=augment and not cache,
                     cache=cache)
    res = run_schedule(data, [plan], plan.describe(), seed=seed, strangers_each_epoch=strangers_each_epoch)
    evaluate_run(res, data, seed)
    return res


