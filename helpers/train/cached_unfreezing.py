"""Stages 1-2 of gradual unfreezing step by step on ONE model, on the cached activations entering the
last stage: `requires_grad`, one parameter group per part, a new optimiser per stage and a warm-up of
the groups a stage newly unfreezes (`helpers.train.lr_schedule.lr_factor`). Seconds on a CPU."""
from __future__ import annotations

import copy
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.backbone_tail import BackboneTail, FineTuneModel, as_finetune
from ..evaluate.metrics import verification
from .lr_schedule import lr_factor
from ..models.face_model import build_model, count_parameters, set_trainable_stages
from ..runtime import set_seed, threads
from .step import MarginObjective, accuracy_of_embeddings, train_step
from .fit import History, param_groups
from .unfreezing import RunResult, StagePlan, UnfreezeData
from .unfreezing_metrics import evaluate_run


def train_cached_steps(data: UnfreezeData, plans: Sequence[StagePlan], method: str = "", seed: int = 0,
                       batch_size: int = 64, trace: bool = False) -> RunResult:
    """Stage 1 (head only) and stage 2 (+ the last stage) on ONE model, step by step on the cached
    activations entering the last stage: what the guide's first two stages do, in seconds on a CPU.

    For each plan: set `requires_grad` on its stages (the rest frozen, BatchNorm in eval mode), build
    one parameter group per trainable part (head at `plan.lr`, the last stage at `plan.backbone_lr`),
    rebuild AdamW (fresh moments), then `plan.epochs` passes over the training photos in batches of
    `batch_size` (60 photos: one step per pass). The groups a stage newly unfreezes get a linear
    warm-up over `plan.warmup` steps (`helpers.train.lr_schedule.lr_factor`). `trace`: validation accuracy and strangers' EER
    after every step, in `History.val_acc` / `extra["strangers_eer"]` (one entry per step).
    The result is evaluated (`evaluate_run`) and its histories hold one entry per step.

    Notebook 05, inside `compare_cached_over_seeds`.
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
            objective = MarginObjective(target)
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
                target.train()   # FineTuneModel.train keeps the frozen stages in eval mode
                step_ = train_step(objective, opt, [(x[idx], y[idx])])   # fit's step
                hist.loss.append(step_.loss)
                hist.train_acc.append(float(np.float32(step_.correct / step_.count)))  # a float32 mean, as before
                if trace:
                    _trace_step(target, hist, (xv, yv), (s_x, s_lab))
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


@torch.inference_mode()
def _trace_step(target: FineTuneModel, hist: History, val, strangers) -> None:
    """Validation accuracy and, with stranger inputs, the strangers' EER now, appended to `hist`."""
    (xv, yv), (s_x, s_lab) = val, strangers
    target.eval()
    hist.val_acc.append(accuracy_of_embeddings(target, target.embedding(target.features(xv)), yv))
    if s_x is not None:
        emb_s = F.normalize(target.embedding(target.features(s_x)), dim=1).numpy()
        hist.extra.setdefault("strangers_eer", []).append(verification(emb_s, s_lab).eer)
