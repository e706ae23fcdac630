"""Gradual unfreezing: the data of a run, stage schedules, running them, and what a run achieves.

The guide's three stages: (1) the head on the frozen backbone, (2) + the backbone's last
stage, (3) everything at a lower learning rate. Stages that allow it run on cached features or
cached activations entering the last stage (`helpers.models.backbone_tail`). Everything here works for
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

from ..models.backbone_tail import BackboneTail, FineTuneModel, as_finetune, last_stage, stage_inputs
from ..models.backbones import Backbone
from ..data.folders import FaceSet
from ..data.splits import Split, split_known_strangers, split_per_person
from ..evaluate.metrics import embed, verification
from ..models.face_model import FaceModel, build_model, count_parameters, set_trainable_stages
from ..memory import PeakMemory
from ..runtime import default_threads, pick_device, run_batched, set_seed, threads
from .fit import History, ImageDataset, fit
# what a run achieves, measured in helpers.train.unfreezing_metrics (re-exported: notebook 05 calls U.evaluate_run)
from .unfreezing_metrics import Metrics, evaluate_run, model_features, raw_feature_metrics  # noqa: F401


# ---------------------------------------------------------------------- data for the comparison

PARTS = ("train", "val", "test", "strangers")


@dataclass
class UnfreezeData:
    """Known people split into train/val/test, strangers, the pretrained backbone and the input size.

    The pretrained `backbone` is never trained: every run trains a copy. Features and the
    activations entering the last stage are computed once (eval mode, no augmentation) and kept
    in memory; `one_off_seconds` says what that cost.

    Notebook 05, inside `prepare_data`.
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

    Notebook 05.
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
    """Activations entering the last stage (N, C, h, w) of every photo of `faces` (eval mode, no augmentation).

    Notebook 05.
    """
    with threads(n_threads or default_threads()):
        return stage_inputs(backbone, faces.images, last_stage(backbone), backbone.transform(size=size),
                            batch_size, pick_device())


# ---------------------------------------------------------------------- schedules


@dataclass
class StagePlan:
    """One training stage: which backbone stages train, for how long, at which learning rates.

    Notebook 05, inside `cache_speedup`.
    """

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
    """Stage 1 alone: the head on cached features of the frozen backbone.

    Not run by a notebook or the command line.
    """
    return [StagePlan("stage 1", (), epochs, lr, cache=True)]


def gradual_schedule(backbone: Backbone, epochs: tuple[int, int, int] = (30, 8, 4),
                     lr: tuple[float, float, float] = (1e-2, 1e-3, 3e-4),
                     backbone_lr: tuple[float, float] = (3e-4, 3e-5)) -> list[StagePlan]:
    """The guide's three stages: head; + the last stage (cached inputs); everything, lower lr, augmented.

    Notebook 05.
    """
    last = last_stage(backbone)
    return [StagePlan("stage 1", (), epochs[0], lr[0], cache=True),
            StagePlan("stage 2", (last,), epochs[1], lr[1], backbone_lr[0], cache=True),
            StagePlan("stage 3", tuple(backbone.stage_names), epochs[2], lr[2], backbone_lr[1], augment=True)]


def full_schedule(backbone: Backbone, epochs: int = 8, lr: float = 1e-2, backbone_lr: float = 1e-4,
                  augment: bool = True) -> list[StagePlan]:
    """Full fine-tuning from the start: every stage trains from epoch 1.

    Notebook 05.
    """
    return [StagePlan("full", tuple(backbone.stage_names), epochs, lr, backbone_lr, augment=augment)]


# ---------------------------------------------------------------------- runs


@dataclass
class RunResult:
    """One method's trained model, its per-stage histories, cost and metrics.

    Notebook 05, inside `run_schedule`.
    """

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

    Notebook 05.
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

    Notebook 05, inside `compare_methods`.
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


def train_stages(data: UnfreezeData, stages: Sequence[str], epochs: int = 3, lr: float = 1e-2,
                 backbone_lr: float = 1e-3, seed: int = 0, augment: bool = True,
                 strangers_each_epoch: bool = False) -> RunResult:
    """Train the head plus the chosen backbone stages from the pretrained backbone, and evaluate.

    Head only: cached features. Only the last stage: its cached inputs (no augmentation).
    Anything else: photos end to end, augmented when `augment`.

    Notebook 05.
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


