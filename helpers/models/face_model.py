"""The face model: backbone -> Linear + BatchNorm1d embedding -> margin head; freezing; counts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .freezing import freeze, unfreeze
from .heads import CosineHead, make_head

EMBEDDING_DIM = 512


class EmbeddingHead(nn.Module):
    """Linear(feature_dim -> 512) + BatchNorm1d(512): the trainable face embedding.

    Notebook 01, inside `build_model`.
    """

    def __init__(self, feature_dim: int, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.linear = nn.Linear(feature_dim, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(features))


class FaceModel(nn.Module):
    """backbone (optional) -> embedding -> head.

    Without a backbone the model takes cached backbone features, which is how frozen training
    runs in seconds. `embed()` gives L2-normalised embeddings for recognition.

    Notebook 01, inside `build_model`.
    """

    def __init__(self, embedding: EmbeddingHead, head: CosineHead, backbone: Backbone | None = None):
        super().__init__()
        self.backbone = backbone
        self.embedding = embedding
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x) if self.backbone is not None else x

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes): with `labels` (B,) the head's margin logits (the training objective,
        in any mode); without, s * cos(theta) for predictions."""
        return self.head(self.embedding(self.features(x)), labels)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedding(self.features(x)), dim=1)


def build_model(num_classes: int, backbone: Backbone | None = None, feature_dim: int | None = None,
                head: str = "arcface", s: float = 16.0, m: float | None = None,
                easy_margin: bool = False, freeze_backbone: bool = True) -> FaceModel:
    """The guide's model. Give `backbone` for end-to-end use, or only `feature_dim` for cached features.

    Notebook 01.
    """
    if backbone is None and feature_dim is None:
        raise ValueError("give a backbone or the feature_dim of cached features")
    dim = backbone.feature_dim if backbone is not None else feature_dim
    model = FaceModel(EmbeddingHead(dim), make_head(head, EMBEDDING_DIM, num_classes, s, m, easy_margin),
                      backbone)
    if backbone is not None:
        set_trainable_stages(backbone, [] if freeze_backbone else backbone.stage_names)
    return model


def set_trainable_stages(backbone: Backbone, stages: Iterable[str]) -> None:
    """Train only the named stages of the backbone (e.g. ['layer4']); freeze all the rest.

    Frozen parts (`helpers.models.freezing.freeze`) have no gradient and stay in eval mode at every
    `train()`: fixed BatchNorm statistics, no dropout / drop-connect.

    Notebook 01, inside `build_model`.
    """
    stages = list(stages)
    for stage in stages:
        backbone.stage_modules(stage)  # a clear KeyError for an unknown stage, before any change
    was_training = backbone.training
    freeze(backbone)
    for stage in stages:
        for path in backbone.stage_paths[stage]:
            unfreeze(backbone.body.get_submodule(path))
            parts = path.split(".")
            for depth in range(len(parts)):  # the containers holding it (body, ...) train too
                unfreeze(backbone.body.get_submodule(".".join(parts[:depth])), recurse=False)
    if stages:
        unfreeze(backbone, recurse=False)
    backbone.train(was_training)  # the mode it had, with the freezing rule applied


def trainable_stages(backbone: Backbone) -> list[str]:
    """Names of the stages that have at least one trainable parameter.

    Not run by a notebook or the command line.
    """
    return [s for s in backbone.stage_names if any(p.requires_grad for p in backbone.stage_parameters(s))]


@dataclass
class ParamCount:
    """Trainable and total parameters of a model (and `frozen`, the difference).

    Notebook 01, inside `count_parameters`.
    """
    trainable: int
    total: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def __str__(self) -> str:
        return (f"trainable {self.trainable:,} / total {self.total:,} "
                f"({100 * self.trainable / self.total:.2f} % trainable)")


def count_parameters(model: nn.Module) -> ParamCount:
    """Trainable and total parameter counts (the ImageNet classifier is not part of the model).

    Notebook 01.
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParamCount(trainable, total)
