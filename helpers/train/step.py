"""One training step and one accuracy, shared by `fit` (`helpers.train.fit`, notebook 02) and the end-to-end
trainer `helpers.train.trainer` (notebook 07).

    objective = MarginObjective(model)                 # (x, labels) -> (margin loss, embeddings)
    result = train_step(objective, opt, [(x, y)])      # forward, loss, backward, optimiser step
    acc = closed_set_accuracy(model, (val_x, val_y))   # top-1 of the head's logits, no margin

The step is the only place in the library that calls `backward()` for training: forward with the
margin logits (labels given), mean cross-entropy, backward (through an AMP grad scaler when given,
over one or several micro-batches), the divergence check (a NaN/inf loss raises `TrainingDiverged`
and the step is not applied), optional gradient clipping, the optimiser step. What differs between
`fit` and the trainer is outside the step: the data, the schedule, the clipping and AMP settings.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..models.face_model import FaceModel
from ..runtime import run_batched


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the learning rate is too high for this model.

    Raised by `train_step` before the optimiser step (nothing is applied); `loss` is the step's
    mean loss (nan or inf), `bad` how many of its `batches` micro-batches had a non-finite loss.

    Notebook 02, inside `train_and_report`.
    """

    def __init__(self, message: str, loss: float = math.nan, bad: int = 0, batches: int = 0):
        super().__init__(message)
        self.loss, self.bad, self.batches = loss, bad, batches


@dataclass
class StepResult:
    """What one step did: mean loss over its photos (all ranks with `reduce`), and this process's
    count of photos and of photos whose head logits (no margin) put the true class first.

    Notebook 02, inside `freeze_switch`.
    """

    loss: float
    count: int
    correct: int


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def embeddings(model: FaceModel, x: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Embeddings (B, 512) float32 of images (B, 3, H, W) or cached features (B, D); backbone and
    embedding under autocast when `amp_dtype` is set. In the model's current mode.

    Notebook 02, inside `freeze_switch`.
    """
    with _autocast(x.device, amp_dtype):
        emb = model.embedding(model.features(x))
    return emb.float()


class MarginObjective(nn.Module):
    """(x (B, ...), labels (B,)) -> (mean margin cross-entropy, embeddings (B, 512) detached).

    The module that DistributedDataParallel wraps in the trainer. Backbone and embedding run under
    autocast when `amp_dtype` is set; the head's cosines and margins run in float32
    (cos(theta + m) near 1 needs the precision).

    Notebook 02, inside `freeze_switch`.
    """

    def __init__(self, model: FaceModel, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.model, self.amp_dtype = model, amp_dtype

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = embeddings(self.model, x, self.amp_dtype)
        return F.cross_entropy(self.model.head(emb, labels), labels), emb.detach()


def _face_model(objective: nn.Module) -> FaceModel:
    inner = objective.module if isinstance(objective, DistributedDataParallel) else objective
    return inner.model


def train_step(objective: nn.Module, opt: torch.optim.Optimizer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               scaler: torch.amp.GradScaler | None = None, clip: float = 0.0,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
               on_loss: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> StepResult:
    """One optimiser step over `batches` (micro-batches of (x, labels); their gradients add up).

    `objective`: a `MarginObjective`, optionally wrapped in DistributedDataParallel (gradients are
    then synchronised on the last micro-batch only). Each micro-batch's loss is divided by their
    number, so the step follows the mean over all of them. `scaler`: an AMP GradScaler (fp16).
    `clip` > 0: clip the gradient norm of the trainable parameters. `reduce`: sums a tensor over
    the processes (the trainer's all-reduce) so that every rank sees the same loss and the same
    divergence. `on_loss(k, loss)`: returns micro-batch k's loss before its backward (test hooks).

    A NaN/inf loss on any micro-batch (of any rank) raises `TrainingDiverged` before the optimiser
    step: the weights are as before the step, except BatchNorm statistics updated by the forward.
    `correct` is counted after the step (the new head on this step's embeddings), as `fit`
    always reported its training accuracy.

    Notebook 02, inside `freeze_switch`.
    """
    model = _face_model(objective)
    device = next(model.parameters()).device
    batches = list(batches)
    n = len(batches)
    opt.zero_grad(set_to_none=True)
    losses, counts, kept = [], [], []
    for k, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()
        last = k == n - 1
        sync = contextlib.nullcontext() if last or not isinstance(objective, DistributedDataParallel) \
            else objective.no_sync()
        with sync:
            loss, emb = objective(x, y)
            if on_loss is not None:
                loss = on_loss(k, loss)
            scaled = loss / n if n > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        losses.append(loss.detach())
        counts.append(len(y))
        kept.append((emb, y))
    if reduce is None:  # on the host, in double: the loss of one batch is exactly loss.item()
        values = [v.item() for v in losses]
        total, count = sum(v * c for v, c in zip(values, counts)), sum(counts)
        bad = sum(not math.isfinite(v) for v in values)
    else:  # one small all-reduce: the global loss sum, photo count and non-finite micro-batches
        stats = torch.stack([sum(v.float() * c for v, c in zip(losses, counts)),
                             torch.tensor(float(sum(counts)), device=device),
                             sum((~torch.isfinite(v)).float() for v in losses)])
        total, count, bad = reduce(stats).tolist()
    mean = total / max(count, 1)
    if bad:
        raise TrainingDiverged(f"the loss became {mean} on {int(bad)} micro-batch(es); the step was not applied",
                               loss=mean, bad=int(bad), batches=n)
    if clip > 0:
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    correct = sum(int(correct_top1(model, emb, y).sum()) for emb, y in kept)
    return StepResult(mean, sum(counts), correct)


# ---------------------------------------------------------------------- one accuracy

@torch.no_grad()
def correct_top1(model: FaceModel, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the head's largest logit (s * cos, no margin) for embedding (B, 512) is its label (B,).

    Notebook 02, inside `freeze_switch`.
    """
    emb = emb.to(model.head.weight.device)
    return model.head.logits(emb.float()).argmax(1) == labels.to(emb.device).long()


def accuracy_of_embeddings(model: FaceModel, emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Closed-set top-1 accuracy of embeddings (N, 512) with labels (N,): a float32 mean (nan if N = 0).

    Notebook 02, inside `train_and_report`.
    """
    return correct_top1(model, emb, labels).float().mean().item()


def labelled_embeddings(model: FaceModel, data, amp_dtype: torch.dtype | None = None,
                        batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (N, 512) float32 on the CPU, labels (N,)) of `data` in eval mode, without gradients.

    `data`: (features or images tensor, labels), a Dataset of (x, y) with `.labels`, or a DataLoader
    of (x, y) batches (the trainer's, with its workers). The model's mode is restored afterwards.

    Notebook 02, inside `train_and_report`.
    """
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        if isinstance(data, DataLoader):
            parts, labels = [], []
            with torch.no_grad():
                for x, y in data:
                    parts.append(embeddings(model, x.to(device), amp_dtype).cpu())
                    labels.append(torch.as_tensor(y))
            return (torch.cat(parts) if parts else torch.empty(0), torch.cat(labels) if labels else torch.empty(0))
        x, y = (data[0], data[1]) if isinstance(data, (tuple, list)) else (data, data.labels)
        emb = run_batched(lambda xb: embeddings(model, xb, amp_dtype), x, batch_size, device)
        return emb, torch.as_tensor(y).long()
    finally:
        model.train(was)


def closed_set_accuracy(model: FaceModel, data, amp_dtype: torch.dtype | None = None, batch_size: int = 256) -> float:
    """Closed-set top-1 accuracy on `data` (see `labelled_embeddings`): the one accuracy of `fit`'s
    validation, `accuracy_of` and the trainer's `val_acc`. Notebook 02 introduces it.

    Notebook 03, inside `run_margins_on_tasks`.
    """
    return accuracy_of_embeddings(model, *labelled_embeddings(model, data, amp_dtype, batch_size))

