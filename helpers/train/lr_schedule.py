"""Learning rates of helpers.train.trainer: the optimizer, scaling with the global batch, warm-up + cosine."""
from __future__ import annotations

import math

import torch

from ..models.face_model import FaceModel
from .run_checks import TrainError
from .fit import param_groups

# `cfg` below is a helpers.train.trainer.TrainConfig (not imported: the trainer imports this module)


def make_optimizer(cfg: "TrainConfig", model: FaceModel, lr: float, backbone_lr: float | None):
    """AdamW (the course's default) or SGD with momentum, over `param_groups` (head at lr, stages lower).

    Notebook 07, inside `train`.
    """
    groups = param_groups(model, lr, backbone_lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer != "adamw":
        raise TrainError(f"--optimizer {cfg.optimizer}: choose adamw or sgd")
    fused = {"fused": True} if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, **fused)


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of a learning rate at `step` (0-based) of `total_steps`: the course's one schedule.

    A cosine from 1 down to 0 over all the steps, times a linear warm-up (step + 1) / warmup_steps
    over the first `warmup_steps` (1/warmup at the first step, the full rate at the last warm-up step).
    The cosine does not depend on the warm-up, so groups with and without one (notebook 05: only
    the newly unfrozen stage warms up) follow the same decay; timm's cosine scheduler with a warm-up
    does the same by default (`warmup_prefix=False`).

    Notebook 05, inside `compare_cached_over_seeds`.
    """
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    warm = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    return cosine * warm


def scaled_lr(cfg: "TrainConfig") -> tuple[float, float | None, str]:
    """(lr, backbone_lr, sentence for the log) after scaling with the global batch (`lr_scaling`).

    Notebook 07, inside `train`.
    """
    k = cfg.batch_size / cfg.base_batch
    if cfg.lr_scaling == "none":
        return cfg.lr, cfg.backbone_lr, f"lr {cfg.lr:g} (not scaled with the global batch {cfg.batch_size})"
    if cfg.lr_scaling not in ("linear", "sqrt"):
        raise TrainError(f"--lr-scaling {cfg.lr_scaling}: choose none, linear or sqrt")
    f = k if cfg.lr_scaling == "linear" else math.sqrt(k)
    bb = None if cfg.backbone_lr is None else cfg.backbone_lr * f
    rule = f"{k:g}" if cfg.lr_scaling == "linear" else f"sqrt({k:g})"
    return cfg.lr * f, bb, (f"lr {cfg.lr:g} x {rule} = {cfg.lr * f:g} for the global batch {cfg.batch_size} "
                            f"({cfg.lr_scaling} rule from --base-batch {cfg.base_batch})")


def check_settings(cfg: "TrainConfig", W: int) -> tuple[float, float | None, str]:
    """Settings that cannot work with W processes; returns `scaled_lr(cfg)`.

    Notebook 07, inside `train`.
    """
    if cfg.accumulate < 1 or cfg.batch_size % (W * cfg.accumulate):
        raise TrainError(f"--batch-size {cfg.batch_size} is not divisible by {W} process(es) x --accumulate "
                         f"{cfg.accumulate}; use a multiple of {W * max(cfg.accumulate, 1)}")
    if cfg.optimizer not in ("adamw", "sgd"):
        raise TrainError(f"--optimizer {cfg.optimizer}: choose adamw or sgd")
    if cfg.warmup_epochs < 0 or cfg.max_bad_photos < 0:
        raise TrainError("--warmup-epochs and --max-bad-photos must be >= 0")
    return scaled_lr(cfg)
