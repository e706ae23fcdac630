"""Gradual unfreezing: stage schedules, cached activations, comparison runs, peak memory.

The guide's three stages: (1) the head on the frozen backbone, (2) + the backbone's last
stage, (3) everything at a lower learning rate. While only the last stage trains and nothing
is augmented, the activations entering that stage never change, so they are computed once
and each epoch runs the last stage only (`BackboneTail`). Everything here works for any
`Backbone` whose stages are in order (ResNet-18, EfficientNet-Lite0).
"""
from __future__ import annotations

import copy
import ctypes
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .data import FaceSet, Split, split_known_strangers, split_per_person
from .evaluation import verification
from .model import FaceModel, build_model, count_parameters, set_trainable_stages
from .runtime import pick_device, set_seed, threads
from .training import History, ImageDataset, fit

# ---------------------------------------------------------------------- peak memory


def _proc_status(field_name: str) -> int | None:
    """A `kB` field of /proc/self/status, in bytes (Linux only)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status("VmHWM") is not None
    except OSError:
        return False


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS so it is not reused unseen inside a measurement."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakMemory:
    """Context manager: peak extra memory (MB) used inside a block, and how it was measured.

    GPU: `torch.cuda.max_memory_allocated` above the allocation at the start (tensors only).
    Linux CPU: the process's resident-set high-water mark (VmHWM, reset through
    /proc/self/clear_refs) minus the resident set at the start, after freed memory has been
    handed back to the OS (malloc_trim). It counts everything the block touched: activations,
    gradients, optimizer state, the allocator's slack. Elsewhere: psutil RSS sampled every 5 ms
    (can miss short peaks), or nothing (`peak_mb` None).
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = pick_device(device)
        self.peak_mb: float | None = None
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        _release_free_memory()
        self._sampler = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "GPU: torch.cuda.max_memory_allocated above the start"
        elif _reset_rss_peak():
            self._base = _proc_status("VmRSS") or 0
            self.method = "CPU: process resident-set peak (VmHWM) above the start, Linux"
        else:
            try:
                import psutil
            except ImportError:
                self.method = "not measured (no /proc and no psutil)"
                return self
            proc = psutil.Process()
            self._base = proc.memory_info().rss
            self._peak = self._base
            self._stop = threading.Event()

            def sample():
                while not self._stop.wait(0.005):
                    self._peak = max(self._peak, proc.memory_info().rss)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
            self.method = "CPU: psutil RSS sampled every 5 ms above the start"
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            peak = max(self._peak, __import__("psutil").Process().memory_info().rss)
        elif self.method.startswith("CPU"):
            peak = _proc_status("VmHWM") or 0
        else:
            return False
        self.peak_mb = max(0.0, (peak - self._base) / 2**20)
        return False


# ---------------------------------------------------------------------- the backbone cut at a stage


def last_stage(backbone: Backbone) -> str:
    """The backbone's last stage that holds layers (ResNet-18 and EfficientNet-Lite0: 'layer4')."""
    names = [s for s in backbone.stage_names if backbone.stage_paths[s]]
    if not names:
        raise ValueError(f"{backbone.name} has no stages")
    return names[-1]


class _StopForward(Exception):
    pass


class BackboneTail(nn.Module):
    """The backbone from `stage` to the end (pooling included): stage inputs -> features.

    Shares its modules with `backbone`, so training the tail trains the backbone. Exposes
    `stage_names`/`stage_parameters` for the stages it holds, like a `Backbone`, so `fit()`
    builds its optimizer groups the same way.
    """

    def __init__(self, backbone: Backbone, stage: str):
        super().__init__()
        names = backbone.stage_names
        if stage not in names:
            raise KeyError(f"unknown stage {stage!r}; this backbone has {names}")
        if not backbone.stage_paths[stage]:
            raise ValueError(f"stage {stage!r} of {backbone.name} holds no layers")
        if stage == names[0]:
            raise ValueError(f"{stage!r} is the first stage: there is nothing before it to cache")
        self.stage = stage
        self._backbone = [backbone]  # not registered: the tail's parameters are only its own
        self.stage_names_held = names[names.index(stage):]
        self.feature_dim = backbone.feature_dim
        body = backbone.body
        first = backbone.stage_paths[stage][0]
        if isinstance(body, nn.Sequential):  # ResNet-18: conv1 ... layer4, avgpool, flatten
            children = [n for n, _ in body.named_children()]
            top = first.split(".")[0]
            if top not in children or "." in first:
                raise NotImplementedError(f"cannot cut {backbone.name} at {stage!r} ({first})")
            self.kind = "sequential"
            self.rest = body[children.index(top):]
        elif hasattr(body, "_blocks") and first.startswith("_blocks."):  # EfficientNet-Lite
            self.kind = "efficientnet"
            self.start = int(first.split(".")[1])
            self.n_blocks = len(body._blocks)
            self.blocks = nn.ModuleList(list(body._blocks)[self.start:])
            self._conv_head, self._bn1, self._swish = body._conv_head, body._bn1, body._swish
            self.drop_connect_rate = body.drop_connect_rate
        else:
            raise NotImplementedError(f"BackboneTail does not know how to cut {type(body).__name__}")

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    @property
    def stage_names(self) -> list[str]:
        return list(self.stage_names_held)

    def stage_parameters(self, stage: str):
        if stage not in self.stage_names_held:
            return iter(())
        return self.backbone.stage_parameters(stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "sequential":
            return self.rest(x)
        for i, block in enumerate(self.blocks, start=self.start):
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / self.n_blocks)
        x = self._swish(self._bn1(self._conv_head(x)))
        return x.mean((2, 3))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.backbone.keep_frozen_bn_eval:  # same rule as Backbone.train
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    params = list(m.parameters())
                    if params and not any(p.requires_grad for p in params):
                        m.eval()
        return self


@torch.inference_mode()
def stage_inputs(backbone: Backbone, images: Sequence, stage: str, transform=None, batch_size: int = 16,
                 device=None) -> torch.Tensor:
    """The activations entering `stage` for each image (eval mode, no augmentation), on the CPU.

    Runs the backbone up to the stage's first module and stops there (a forward pre-hook).
    """
    device = pick_device(device)
    transform = transform or backbone.transform()
    first = backbone.stage_modules(stage)[0]
    captured: list[torch.Tensor] = []

    def hook(_module, args):
        captured.append(args[0].float().cpu())
        raise _StopForward

    was = backbone.training
    backbone.to(device).eval()
    handle = first.register_forward_pre_hook(hook)
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(im) for im in images[start:start + batch_size]]).to(device)
            try:
                backbone(batch)
            except _StopForward:
                pass
    finally:
        handle.remove()
        backbone.train(was)
    if not captured:
        raise ValueError("no images given")
    return torch.cat(captured)


class FineTuneModel(FaceModel):
    """A FaceModel whose backbone BatchNorm layers keep their ImageNet statistics while training.

    With `bn_train=False` (default) every BatchNorm layer of the backbone stays in eval mode in
    `train()`: it normalises with its pretrained running statistics and, if its stage trains,
    learns only its scale and shift. With batches of ~16 photos that is the safe choice: in train
    mode a layer normalises with the statistics of each small batch, while its running
    statistics (what eval mode uses) move only 1 % per step in EfficientNet (TF momentum 0.99),
    so the trained network behaves differently at test time. `bn_train=True` is PyTorch's
    default behaviour. The embedding's BatchNorm1d always trains.
    """

    def __init__(self, embedding, head, backbone=None, bn_train: bool = False):
        super().__init__(embedding, head, backbone)
        self.bn_train = bn_train

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and not self.bn_train and self.backbone is not None:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def _as_finetune(model: FaceModel, bn_train: bool) -> FineTuneModel:
    if isinstance(model, FineTuneModel):
        model.bn_train = bn_train
        return model
    return FineTuneModel(model.embedding, model.head, model.backbone, bn_train)


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
    threads: int = 2
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
                self._features[part] = torch.cat([tail(x[i:i + 64].to(self.device)).cpu()
                                                  for i in range(0, len(x), 64)])
            self.one_off_seconds += time.perf_counter() - t0
        return self._features[part]


def prepare_data(backbone: Backbone, faces: FaceSet, n_known: int = 9, size: int = 112, seed: int = 0,
                 shots: int | None = None, n_threads: int = 2, batch_size: int = 16) -> UnfreezeData:
    """Pick `n_known` people (the rest are strangers), split their photos, fix the input size."""
    known, strangers = split_known_strangers(faces, n_known=n_known, seed=seed)
    split = split_per_person(known.labels, shots=shots, seed=seed)
    return UnfreezeData(backbone, known, strangers, split, size, n_threads, batch_size)


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

    def describe(self) -> str:
        what = "head only" if not self.stages else "head + " + " + ".join(self.stages)
        how = "cached activations" if self.cache else ("augmented photos" if self.augment else "photos")
        lrs = f"lr {self.lr:.2g}" + (f", backbone lr {self.backbone_lr:.2g}" if self.stages else "")
        return f"{self.name}: {what}, {self.epochs} epochs, {lrs}, on {how}"


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

    def combined_history(self) -> History:
        """All stages' epochs one after another (for a single curve)."""
        out = History()
        for h in self.histories:
            out.loss += h.loss
            out.train_acc += h.train_acc
            out.val_acc += h.val_acc
            out.seconds += h.seconds
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
                 on_epoch: Callable[[History], None] | None = None) -> RunResult:
    """Train a copy of the pretrained backbone (or continue `model`) through `plans`, in order.

    A plan with `cache=True` trains on the cached features (no backbone stage) or on the cached
    activations entering the last stage (only the last stage trains); that is only valid while
    every earlier stage still holds its pretrained weights, which is checked. `bn_train`: see
    `FineTuneModel` (False keeps the backbone's BatchNorm statistics fixed).
    """
    if model is None:
        set_seed(seed)  # the new embedding and head start from the same weights on every run
        model = build_model(data.num_classes, backbone=copy.deepcopy(data.backbone), freeze_backbone=True)
    model = _as_finetune(model, bn_train)
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
        meter = PeakMemory(data.device) if measure_memory else None
        with threads(n_threads), (meter or _null()):
            if xs is not None:
                hist = fit(target, (xs[0], y_train), (xs[1], y_val), epochs=plan.epochs, lr=plan.lr,
                           backbone_lr=plan.backbone_lr, batch_size=64, seed=seed, device=data.device,
                           progress=progress, on_epoch=on_epoch)
            else:
                train = ImageDataset(data.images("train"), y_train, data.transform(train=plan.augment))
                val = ImageDataset(data.images("val"), y_val, data.transform())
                hist = fit(target, train, val, epochs=plan.epochs, lr=plan.lr, backbone_lr=plan.backbone_lr,
                           batch_size=_even_batch(len(train), data.batch_size), seed=seed,
                           device=data.device, progress=progress, on_epoch=on_epoch)
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


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


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
            x = data.inputs(part)
            return torch.cat([tail(x[i:i + 64].to(data.device)).cpu() for i in range(0, len(x), 64)])
        bb.eval().to(data.device)
        tf = data.transform()
        ims = data.images(part)
        return torch.cat([bb(torch.stack([tf(im) for im in ims[i:i + data.batch_size]]).to(data.device)).cpu()
                          for i in range(0, len(ims), data.batch_size)])


@torch.inference_mode()
def _embed_and_logits(model: FaceModel, feats: torch.Tensor, device) -> tuple[np.ndarray, torch.Tensor]:
    model.eval()
    emb_raw = model.embedding.to(device)(feats.to(device))
    logits = model.head.to(device)(emb_raw)
    return F.normalize(emb_raw, dim=1).cpu().numpy(), logits.cpu()


def one_shot_identification(emb: np.ndarray, labels, seed: int = 0) -> float:
    """Enrol one random photo per person, identify the others by the nearest enrolled photo (cosine)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    people = np.unique(labels)
    enrol = np.array([rng.choice(np.flatnonzero(labels == p)) for p in people])
    query = np.setdiff1d(np.arange(len(labels)), enrol)
    sims = emb[query] @ emb[enrol].T
    return float((people[sims.argmax(1)] == labels[query]).mean())


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
        one_shot, eer = one_shot_identification(s_emb, s_lab, seed), verification(s_emb, s_lab).eer
    else:
        one_shot = eer = float("nan")
    result.metrics = Metrics(acc["train"], acc["val"], acc["test"], one_shot, eer, cos["train"], cos["val"])
    result.model.cpu()
    return result.metrics


def raw_feature_metrics(data: UnfreezeData, seed: int = 0) -> dict[str, float]:
    """The same stranger measures on the frozen backbone's raw features (no training at all)."""
    s = data.features("strangers").numpy()
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    lab = data.labels("strangers").numpy()
    return {"new_people_1shot": one_shot_identification(s, lab, seed), "strangers_eer": verification(s, lab).eer}


# ---------------------------------------------------------------------- the comparison


def compare_methods(data: UnfreezeData, gradual: Sequence[StagePlan], full: Sequence[StagePlan],
                    seed: int = 0, progress: bool = False) -> list[RunResult]:
    """Frozen (stage 1 alone), gradual after stage 2, gradual (3 stages), full fine-tuning: same split.

    The gradual run continues from the frozen run's model (stage 1 is shared, not repeated).
    """
    gradual = list(gradual)
    if len(gradual) != 3:
        raise ValueError("the gradual schedule has three stages")
    data.inputs("train")  # the one-off cost, outside every run's timing
    data.features("train")
    frozen = run_schedule(data, gradual[:1], "frozen (stage 1 only)", seed, progress=progress)
    evaluate_run(frozen, data, seed)
    frozen.one_off_seconds = data.one_off_seconds

    model2 = copy.deepcopy(frozen.model)
    g2 = run_schedule(data, gradual[1:2], "gradual, stages 1-2", seed, model=model2, progress=progress)
    g2.histories = frozen.histories + g2.histories
    g2.plans = gradual[:2]
    g2.stage_seconds = frozen.stage_seconds + g2.stage_seconds
    g2.peak_mb = max(frozen.peak_mb or 0.0, g2.peak_mb or 0.0) if g2.peak_mb is not None else None
    g2.one_off_seconds = data.one_off_seconds
    evaluate_run(g2, data, seed)

    model3 = copy.deepcopy(g2.model)
    g3 = run_schedule(data, gradual[2:], "gradual, stages 1-3", seed, model=model3,
                      trained_stages=g2.trained_stages, progress=progress)
    g3.histories = g2.histories + g3.histories
    g3.plans = gradual
    g3.stage_seconds = g2.stage_seconds + g3.stage_seconds
    g3.peak_mb = max(g2.peak_mb or 0.0, g3.peak_mb or 0.0) if g3.peak_mb is not None else None
    g3.one_off_seconds = data.one_off_seconds
    evaluate_run(g3, data, seed)

    f = run_schedule(data, full, "full fine-tuning", seed, progress=progress)
    evaluate_run(f, data, seed)
    return [frozen, g2, g3, f]


# ---------------------------------------------------------------------- the table and the plot

GUIDE_EXPECTATIONS = {
    "frozen": "85-92 % accuracy; 5-10 min on a GPU",
    "full": "85-95 % accuracy; 10-20 min on a GPU",
}


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f} %"


def accuracy_table(results: Sequence[RunResult]) -> str:
    """Accuracy columns only (deterministic for fixed seeds and threads), one line per method."""
    head = ("| method | train acc | val acc | cos to own person, train / val | test acc (known) | "
            "1-shot new people | strangers' EER |")
    lines = [head, "|" + "---|" * 7]
    for r in results:
        m = r.metrics
        lines.append(f"| {r.method} | {_pct(m.train_acc)} | {_pct(m.val_acc)} | {m.train_cos:.2f} / {m.val_cos:.2f} | "
                     f"{_pct(m.test_acc)} | {_pct(m.new_people_1shot)} | {_pct(m.strangers_eer)} |")
    return "\n".join(lines)


def comparison_table(results: Sequence[RunResult]) -> str:
    """The whole comparison: parameters, time per epoch, memory and accuracy (pipe table)."""
    head = ("| method | trainable params | epochs | s/epoch by stage | training time | one-off caching | "
            "peak extra memory | train-val gap (acc / cos) | test acc (known) | 1-shot new people | strangers' EER |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        m = r.metrics
        spe = " / ".join(f"{s:.2f} s" for s in r.seconds_per_epoch())
        mem = "n/a" if r.peak_mb is None else f"{r.peak_mb:.0f} MB"
        lines.append(f"| {r.method} | {r.trainable:,} | {r.epochs} | {spe} | {r.train_seconds:.1f} s | "
                     f"{r.one_off_seconds:.1f} s | {mem} | {100 * m.gap:+.1f} pts / {m.cos_gap:+.2f} | "
                     f"{_pct(m.test_acc)} | "
                     f"{_pct(m.new_people_1shot)} | {_pct(m.strangers_eer)} |")
    return "\n".join(lines)


def plot_comparison(results: Sequence[RunResult], raw: dict | None = None):
    """One figure: accuracy measures, cosine to the own person (overfitting), strangers' EER, seconds per epoch
    (last stage) and peak memory, one bar group per method."""
    import matplotlib.pyplot as plt

    names = [r.method.replace(", ", "\n").replace(" (", "\n(") for r in results]
    x = np.arange(len(results))
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.6))
    w = 0.27
    for k, (attr, label) in enumerate([("train_acc", "train"), ("test_acc", "test (known)"),
                                       ("new_people_1shot", "1-shot new people")]):
        axes[0].bar(x + (k - 1) * w, [100 * getattr(r.metrics, attr) for r in results], w, label=label)
    axes[0].axhspan(85, 92, color="tab:gray", alpha=0.15, label="guide: frozen 85-92 %")
    axes[0].set(title="accuracy (%)", ylim=(0, 105))
    axes[0].legend(fontsize=7, loc="lower left")
    for k, (attr, label) in enumerate([("train_cos", "train"), ("val_cos", "validation")]):
        axes[1].bar(x + (k - 0.5) * 0.4, [getattr(r.metrics, attr) for r in results], 0.4, label=label)
    axes[1].set(title="cosine to own person (gap = overfitting)", ylim=(0, 1))
    axes[1].legend(fontsize=7)
    axes[2].bar(x, [100 * r.metrics.strangers_eer for r in results], color="tab:red")
    if raw:
        axes[2].axhline(100 * raw["strangers_eer"], ls="--", color="k", label="raw frozen features")
        axes[2].legend(fontsize=7)
    axes[2].set(title="strangers' EER (%, lower is better)")
    axes[3].bar(x, [r.seconds_per_epoch()[-1] for r in results], color="tab:green")
    axes[3].set(title="seconds per epoch (last stage)", yscale="log")
    axes[4].bar(x, [r.peak_mb or 0 for r in results], color="tab:purple")
    axes[4].set(title="peak extra memory (MB)")
    for ax in axes:
        ax.set_xticks(x, names, fontsize=6.5)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- speed of the cache


def cache_speedup(data: UnfreezeData, epochs: int = 2, lr: float = 1e-3, backbone_lr: float = 1e-3,
                  seed: int = 0) -> dict[str, float]:
    """Seconds per epoch of stage 2 (last stage + head) on cached inputs vs the whole backbone each epoch."""
    last = data.cut_stage
    cached = run_schedule(data, [StagePlan("cached", (last,), epochs, lr, backbone_lr, cache=True)],
                          seed=seed, measure_memory=False)
    uncached = run_schedule(data, [StagePlan("uncached", (last,), epochs, lr, backbone_lr)],
                            seed=seed, measure_memory=False)
    c, u = cached.seconds_per_epoch()[0], uncached.seconds_per_epoch()[0]
    return {"cached_s_per_epoch": c, "uncached_s_per_epoch": u, "speedup": u / c,
            "one_off_s": data.one_off_seconds}


# ---------------------------------------------------------------------- pitfalls


def _bn_running_stats(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var)]


def frozen_bn_pitfall(data: UnfreezeData, epochs: int = 10, lr: float = 1e-2, seed: int = 0) -> dict:
    """Train the head on photos through a frozen backbone, twice: BatchNorm kept in eval mode, and
    BatchNorm left in train mode (the pitfall). Same data, seed and epochs.

    For each: whether any weight changed, how far the BN running statistics moved (largest
    relative change), validation/test accuracy in eval mode, and the backbone (for more checks).
    """
    out = {}
    for name, keep_eval in (("bn eval", True), ("bn train", False)):
        bb = copy.deepcopy(data.backbone)
        bb.keep_frozen_bn_eval = keep_eval
        set_seed(seed)
        model = build_model(data.num_classes, backbone=bb, freeze_backbone=True)
        weights = {k: v.clone() for k, v in bb.state_dict().items() if "running" not in k and "num_batches" not in k}
        stats = _bn_running_stats(bb)
        res = run_schedule(data, [StagePlan("stage 1 on photos", (), epochs, lr)], seed=seed, model=model,
                           measure_memory=False, bn_train=not keep_eval)
        after = _bn_running_stats(bb)
        moved = max(float(((a - b).abs() / (b.abs() + 1e-3)).max()) for a, b in zip(after, stats))
        res.bn_stats_changed = moved > 0
        evaluate_run(res, data, seed, strangers=False)
        changed = any(not torch.equal(v, bb.state_dict()[k]) for k, v in weights.items())
        out[name] = {"weights_changed": changed, "bn_stats_moved": moved, "val_acc": res.metrics.val_acc,
                     "test_acc": res.metrics.test_acc, "train_acc_during_training": res.histories[0].train_acc[-1],
                     "backbone": bb, "result": res}
    return out


def imagenet_top1(backbone: Backbone, image, size: int = 224) -> tuple[str, float]:
    """The backbone's ImageNet top-1 (class, probability) for one PIL image (its classifier, unchanged)."""
    x = backbone.transform(size=size)(image).unsqueeze(0)
    device = next(backbone.parameters()).device
    backbone.cpu()  # its ImageNet classifier is not a registered module: it stays on the CPU
    try:
        return backbone.predict_imagenet(x, k=1)[0][0]
    finally:
        backbone.to(device)


def feature_drift(result: RunResult, data: UnfreezeData) -> float:
    """Mean cosine similarity between pretrained and fine-tuned features of the strangers' photos."""
    a = F.normalize(data.features("strangers"), dim=1)
    b = F.normalize(model_features(result, data, "strangers"), dim=1)
    return float((a * b).sum(1).mean())


def frozen_report(model: FaceModel, pretrained: Backbone | None = None) -> str:
    """How to know a backbone is frozen, per stage: trainable parameters, BatchNorm layers that
    would be in train mode after `model.train()`, and (given the pretrained backbone) whether any
    weight or BatchNorm statistic differs from the pretrained one."""
    bb = model.backbone
    was = model.training
    model.train()
    ref = dict(pretrained.named_parameters()) | dict(pretrained.named_buffers()) if pretrained is not None else {}
    mine = dict(bb.named_parameters()) | dict(bb.named_buffers())
    lines = []
    for stage in bb.stage_names:
        if not bb.stage_paths[stage]:
            continue
        params = list(bb.stage_parameters(stage))
        trainable = sum(p.numel() for p in params if p.requires_grad)
        bns = [m for mod in bb.stage_modules(stage) for m in mod.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        line = (f"{stage:7s} trainable {trainable:>9,} of {sum(p.numel() for p in params):>9,} parameters; "
                f"BatchNorm in train mode {sum(m.training for m in bns):>2} of {len(bns):>2}")
        if ref:
            prefixes = tuple(f"body.{path}." for path in bb.stage_paths[stage])
            keys = [k for k in mine if k.startswith(prefixes) and "num_batches" not in k]
            same = all(torch.equal(mine[k].detach().cpu(), ref[k].detach().cpu()) for k in keys)
            line += f"; identical to the pretrained weights: {'yes' if same else 'NO'}"
        lines.append(line)
    model.train(was)
    return "\n".join(lines)


def show_augmentations(data: UnfreezeData, index: int = 0, n: int = 6, seed: int = 0):
    """One training photo and `n` augmented versions of it, as the network sees them (denormalised)."""
    import matplotlib.pyplot as plt

    img = data.images("train")[index]
    tf = data.transform(train=True)
    mean, std = torch.tensor(data.backbone.mean)[:, None, None], torch.tensor(data.backbone.std)[:, None, None]
    torch.manual_seed(seed)
    views = [data.transform()(img)] + [tf(img) for _ in range(n)]
    fig, axes = plt.subplots(1, n + 1, figsize=(1.4 * (n + 1), 1.7))
    for k, (ax, v) in enumerate(zip(axes, views)):
        ax.imshow((v * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_title("as evaluated" if k == 0 else f"augmented {k}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- one run for the panel


def train_stages(data: UnfreezeData, stages: Sequence[str], epochs: int = 3, lr: float = 1e-2,
                 backbone_lr: float = 1e-3, seed: int = 0, augment: bool = True) -> RunResult:
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
    res = run_schedule(data, [plan], plan.describe(), seed=seed)
    evaluate_run(res, data, seed)
    return res


def describe_result(res: RunResult) -> str:
    """One line: 'Result: ...' with accuracy, gap, EER, time per epoch, trainable parameters, memory."""
    if res.diverged:
        return f"Result: training diverged ({res.diverged})"
    m = res.metrics
    mem = "n/a" if res.peak_mb is None else f"{res.peak_mb:.0f} MB"
    return (f"Result: test acc {_pct(m.test_acc)}, val acc {_pct(m.val_acc)}, train-val gap "
            f"{100 * m.gap:+.1f} pts (cos {m.cos_gap:+.2f}), strangers' EER {_pct(m.strangers_eer)}; "
            f"{res.seconds_per_epoch()[-1]:.2f} s/epoch, {res.trainable:,} trainable parameters, "
            f"peak extra memory {mem}")
