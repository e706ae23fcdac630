"""Training loops: the embedding + head on cached features (seconds), or end to end with chosen stages."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..models.face_model import FaceModel, build_model
from ..runtime import pick_device, set_seed, threads
from .step import (MarginObjective, TrainingDiverged, accuracy_of_embeddings, closed_set_accuracy,
                   labelled_embeddings, train_step)

__all__ = ["History", "ImageDataset", "TrainingDiverged", "accuracy_of", "fit", "param_groups",
           "train_head_on_features", "val_scores"]


@dataclass
class History:
    """Per-epoch loss and accuracies of one training run.

    Notebook 02, inside `train_and_report`.
    """

    loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    diverged: str = ""
    val_loss: list[float] = field(default_factory=list)  # same objective as `loss` (margin included)
    extra: dict[str, list[float]] = field(default_factory=dict)  # fit(epoch_metrics=...) per epoch

    @property
    def epochs(self) -> int:
        return len(self.loss)

    @property
    def final_val_acc(self) -> float:
        return self.val_acc[-1] if self.val_acc else float("nan")

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.median(self.seconds)) if self.seconds else float("nan")

    def summary(self) -> str:
        if self.diverged:
            return f"diverged: {self.diverged}"
        s = f"{self.epochs} epochs, final loss {self.loss[-1]:.3f}, train acc {100 * self.train_acc[-1]:.1f} %"
        if self.val_acc:
            s += f", val acc {100 * self.val_acc[-1]:.1f} %"
        return s


class ImageDataset(Dataset):
    """PIL images + labels through a transform (augmentation happens here, per epoch).

    Notebook 05, inside `run_schedule`.
    """

    def __init__(self, images: Sequence, labels, transform):
        self.images, self.labels, self.transform = images, torch.as_tensor(np.asarray(labels)), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def param_groups(model: FaceModel, lr: float, backbone_lr: float | dict[str, float] | None) -> list[dict]:
    """Optimizer groups over trainable parameters only: head at `lr`, backbone stages lower.

    `backbone_lr` is one rate for all trainable stages, or a {stage: lr} dict; None means `lr`/10.

    Notebook 02, inside `freeze_switch`.
    """
    groups = [{"params": [p for p in [*model.embedding.parameters(), *model.head.parameters()]
                          if p.requires_grad], "lr": lr, "name": "head"}]
    if model.backbone is not None:
        for stage in model.backbone.stage_names:
            params = [p for p in model.backbone.stage_parameters(stage) if p.requires_grad]
            if not params:
                continue
            if isinstance(backbone_lr, dict):
                stage_lr = backbone_lr.get(stage, lr / 10)
            else:
                stage_lr = lr / 10 if backbone_lr is None else backbone_lr
            groups.append({"params": params, "lr": stage_lr, "name": stage})
    return [g for g in groups if g["params"]]


def _batches(n: int, batch_size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) > 1:  # BatchNorm1d needs two samples
            yield idx


@torch.no_grad()
def _finite_model(model: FaceModel, xb: torch.Tensor) -> bool:
    """Weights, BatchNorm statistics and eval-mode outputs for two samples of `xb` are all finite."""
    if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
        return False
    was = model.training
    model.eval()
    ok = bool(torch.isfinite(model(xb[:2])).all())
    model.train(was)
    return ok


def _fast_adamw(device: torch.device) -> dict:
    """AdamW's fused kernel where PyTorch has one (CPU and CUDA): on the small head's 660 k parameters
    the default per-tensor loop spent half of each step in the optimiser."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def fit(model: FaceModel, train, val=None, epochs: int = 30, lr: float = 1e-2,
        backbone_lr: float | dict | None = None, batch_size: int = 64, weight_decay: float = 5e-4,
        seed: int = 0, device=None, progress: bool = True,
        on_epoch: Callable[[History], None] | None = None, raise_on_divergence: bool = False,
        epoch_metrics: dict[str, Callable[[FaceModel], float]] | None = None) -> History:
    """Train `model` on `train` = (features, labels) tensors or an ImageDataset; AdamW, cosine schedule.

    After each epoch: validation accuracy and loss (the training objective, margin included, in eval
    mode) when `val` is given, and each `epoch_metrics` function of the model (e.g. the strangers'
    EER) into `History.extra[name]`. Only trainable parameters are optimised. A NaN/inf loss stops training, puts back the
    weights of the last finished epoch and is reported in `History.diverged` (or raised with
    `raise_on_divergence`). Notebook 02 introduces it.

    Each batch is one `helpers.train.step.train_step`, the step the end-to-end trainer
    (`helpers.train.trainer`, notebook 07) takes too, and the accuracies are its `closed_set_accuracy`.
    What still differs from the trainer, kept so that the notebooks' numbers stay the same: `fit`
    trains the embedding Linear's bias (the trainer fixes it: the BatchNorm after it cancels it, so
    its gradient is rounding noise that Adam scales up; measured on 30-epoch runs on the 9 known ORL
    people, 1 and 3 shots, fixing it here changed the training losses by up to 3e-6 relative, the
    validation losses by up to 4e-3 (through BatchNorm's running mean) and no accuracy); a cosine
    schedule per epoch, no warm-up, no gradient clipping, no AMP; and, after each epoch, a check that
    the weights and BatchNorm statistics are still finite (the trainer checks the loss only).

    Notebook 02, inside `train_and_report`.
    """
    set_seed(seed)
    device = pick_device(device)
    model.to(device)
    groups = param_groups(model, lr, backbone_lr)
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay, **_fast_adamw(device))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    gen = torch.Generator().manual_seed(seed)
    cached = isinstance(train, tuple)
    if cached:
        x_train, y_train = (torch.as_tensor(t) for t in train)
        y_train = y_train.long()
    else:
        loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen, drop_last=len(train) > batch_size)
    objective = MarginObjective(model)
    hist = History()
    bar = tqdm(range(epochs), desc="epochs", disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        last_good = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        batches = ((x_train[i], y_train[i]) for i in _batches(len(x_train), batch_size, gen)) if cached else loader
        for xb, yb in batches:
            try:
                step = train_step(objective, opt, [(xb, yb)])
            except TrainingDiverged as e:
                hist.diverged = f"loss became {e.loss} at epoch {epoch + 1} with lr={lr:g}"
                break
            loss_sum += step.loss * step.count
            correct += step.correct
            total += step.count
        if not hist.diverged and total and not _finite_model(model, xb.to(device)):
            # the loss can stay finite (BatchNorm renormalises) while weights or running stats overflow
            hist.diverged = (f"the weights overflowed (the model's outputs became inf/NaN) at epoch "
                             f"{epoch + 1} with lr={lr:g}")
        if hist.diverged:
            hint = f"try lr={lr / 10:g}" if math.isfinite(lr) and lr > 0 else "use a finite lr such as 1e-2"
            hist.diverged += (f": the learning rate is too high; {hint}. The weights of the last "
                              "finished epoch were kept.")
            model.load_state_dict(last_good)
            print(f"training stopped: {hist.diverged}")
            if raise_on_divergence:
                raise TrainingDiverged(hist.diverged)
            break
        sched.step()
        hist.loss.append(loss_sum / max(total, 1))
        hist.train_acc.append(correct / max(total, 1))
        if val is not None:
            acc, vloss = val_scores(model, val)
            hist.val_acc.append(acc)
            hist.val_loss.append(vloss)
        for name, metric in (epoch_metrics or {}).items():
            hist.extra.setdefault(name, []).append(float(metric(model)))
        hist.seconds.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{hist.loss[-1]:.3f}", val=f"{hist.val_acc[-1]:.3f}" if hist.val_acc else "-")
        if on_epoch is not None:
            on_epoch(hist)
    return hist


def accuracy_of(model: FaceModel, data) -> float:
    """Closed-set accuracy of the head's prediction on (features, labels) or an ImageDataset
    (`helpers.train.step.closed_set_accuracy`, the trainer's too).

    Notebook 03, inside `run_margins_on_tasks`.
    """
    return closed_set_accuracy(model, data)


def val_scores(model: FaceModel, data) -> tuple[float, float]:
    """(accuracy, loss) on (features, labels) or an ImageDataset, in eval mode, one pass.

    The loss is the training objective (margin included), so it is comparable with the training loss.

    Notebook 02, inside `train_and_report`.
    """
    emb, y = labelled_embeddings(model, data)
    with torch.no_grad():
        emb = emb.to(model.head.weight.device)
        loss = F.cross_entropy(model.head(emb, y.to(emb.device)), y.to(emb.device)).item()  # margin logits
    return accuracy_of_embeddings(model, emb, y), loss


SMALL_FIT = 512  # vectors: below this the head is fitted on one thread


def train_head_on_features(train_x: torch.Tensor, train_y, val_x=None, val_y=None, head: str = "arcface",
                           s: float = 16.0, m: float | None = None, easy_margin: bool = False,
                           epochs: int = 30, lr: float = 1e-2, batch_size: int = 64, seed: int = 0,
                           progress: bool = True, on_epoch=None, n_threads: int | None = None,
                           epoch_metrics: dict | None = None) -> tuple[FaceModel, History]:
    """Frozen training: a fresh embedding + head fitted on cached backbone features.

    `n_threads` default: 1 below SMALL_FIT vectors (tiny matrix products stall when two threads
    share busy cores), every torch thread above (the products are big enough to split).

    Notebook 02, inside `check_first_perfect_epoch`.
    """
    set_seed(seed)
    train_y = torch.as_tensor(np.asarray(train_y)).long()
    model = build_model(int(train_y.max()) + 1, feature_dim=train_x.shape[1], head=head, s=s, m=m,
                        easy_margin=easy_margin)
    val = (val_x, torch.as_tensor(np.asarray(val_y)).long()) if val_x is not None else None
    if n_threads is None:
        n_threads = 1 if len(train_x) < SMALL_FIT else torch.get_num_threads()
    with threads(n_threads):
        hist = fit(model, (train_x, train_y), val, epochs=epochs, lr=lr, batch_size=batch_size,
                   seed=seed, device="cpu", progress=progress, on_epoch=on_epoch,
                   epoch_metrics=epoch_metrics)
    return model.eval(), hist
