"""A backbone cut at a stage: the activations entering it (computed once) and the tail that runs
from there to the features; and the fine-tuning model whose backbone BatchNorm keeps its statistics.

While only the last stage trains and nothing is augmented, the activations entering that stage
never change, so they are computed once and each epoch runs the last stage only (`BackboneTail`).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .backbones import Backbone
from .freezing import apply_freezing_rule
from .face_model import FaceModel
from ..runtime import pick_device, run_batched


def last_stage(backbone: Backbone) -> str:
    """The backbone's last stage that holds layers (ResNet-18 and EfficientNet-Lite0: 'layer4').

    Notebook 05, inside `check_stage2_trainable`.
    """
    names = [s for s in backbone.stage_names if backbone.stage_paths[s]]
    if not names:
        raise ValueError(f"{backbone.name} has no stages")
    return names[-1]


class BackboneTail(nn.Module):
    """The backbone from `stage` to the end (pooling included): stage inputs -> features.

    Shares its modules with `backbone`, so training the tail trains the backbone. Exposes
    `stage_names`/`stage_parameters` for the stages it holds, like a `Backbone`, so `fit()`
    builds its optimizer groups the same way.

    Notebook 05.
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
        # the held stages' modules, registered so that the tail's parameters, modes and device are theirs
        self.held = nn.ModuleList(m for s in self.stage_names_held for m in backbone.stage_modules(s))

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    @property
    def stage_names(self) -> list[str]:
        return list(self.stage_names_held)

    def stage_parameters(self, stage: str) -> Iterator[nn.Parameter]:
        if stage not in self.stage_names_held:
            return iter(())
        return self.backbone.stage_parameters(stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activations entering the stage (B, C, h, w) -> features (B, feature_dim)."""
        return self.backbone.forward_from(self.stage, x)

    def train(self, mode: bool = True) -> "nn.Module":
        super().train(mode)
        if mode and self.backbone.keep_frozen_bn_eval:  # the rule of Backbone.train
            apply_freezing_rule(self)
        return self


def stage_inputs(backbone: Backbone, images: Sequence, stage: str, transform: Callable | None = None,
                 batch_size: int = 16, device: torch.device | str | None = None) -> torch.Tensor:
    """Activations entering `stage` (N, C, h, w), float32 on the CPU, eval mode, no augmentation.

    Notebook 05, inside `check_stage_input_shape`.
    """
    if not len(images):
        raise ValueError("no images given")
    device = pick_device(device)
    transform = transform or backbone.transform()
    if not backbone.stage_paths[stage]:
        raise ValueError(f"stage {stage!r} of {backbone.name} holds no layers")
    was = backbone.training
    backbone.to(device).eval()
    try:
        return run_batched(lambda x: backbone.forward_until(stage, x), list(images), batch_size, device,
                           prepare=lambda chunk: torch.stack([transform(im) for im in chunk]))
    finally:
        backbone.train(was)


class FineTuneModel(FaceModel):
    """A FaceModel whose backbone BatchNorm layers keep their ImageNet statistics while training.

    With `bn_train=False` (default) every BatchNorm layer of the backbone stays in eval mode in
    `train()`: it normalises with its pretrained running statistics and, if its stage trains,
    learns only its scale and shift. With batches of ~16 photos that is the safe choice: in train
    mode a layer normalises with the statistics of each small batch, while its running
    statistics (what eval mode uses) move only 1 % per step in EfficientNet (TF momentum 0.99),
    so the trained network behaves differently at test time. `bn_train=True` is PyTorch's
    default behaviour. The embedding's BatchNorm1d always trains.

    Notebook 05, inside `run_schedule`.
    """

    def __init__(self, embedding, head, backbone=None, bn_train: bool = False):
        super().__init__(embedding, head, backbone)
        self.bn_train = bn_train

    def train(self, mode: bool = True) -> "nn.Module":
        super().train(mode)
        if mode and self.backbone is not None and not self.bn_train:
            apply_freezing_rule(self.backbone, batchnorm_eval=True)
        return self


def as_finetune(model: FaceModel, bn_train: bool) -> FineTuneModel:
    """`model` as a FineTuneModel sharing its modules (the same object when it already is one).

    Notebook 05, inside `run_schedule`.
    """
    if isinstance(model, FineTuneModel):
        model.bn_train = bn_train
        return model
    return FineTuneModel(model.embedding, model.head, model.backbone, bn_train)
