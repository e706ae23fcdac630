"""Classification heads over L2-normalised embeddings: ArcFace, CosFace and normalised softmax.

All heads hold one weight vector per person and compute cos(theta) = <e/|e|, w/|w|>.
Input: embeddings (B, embedding_dim), optional integer labels (B,). Output: logits
(B, num_classes): in training mode with labels, the true class gets the margin; otherwise
s * cos(theta). Use them like any classifier in a loop of your own:

    head = ArcFaceHead(512, num_classes, s=16.0, m=0.3)
    loss = F.cross_entropy(head(embedding(x), y), y)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("arcface", "cosface", "softmax")
EPS = 1e-7


class CosineHead(nn.Module):
    """s * cos(theta): normalised softmax, the base of ArcFace and CosFace."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 16.0):
        super().__init__()
        if int(embedding_dim) < 1 or int(num_classes) < 1:
            raise ValueError(f"embedding_dim and num_classes must be >= 1, got {embedding_dim} and {num_classes}")
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"scale s must be a positive number, got {s}")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.s = float(s)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """cos(theta) (B, num_classes) between each embedding (B, D) and each class weight, in [-1, 1]."""
        return F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """The true class's logit before scaling (plain cosine here)."""
        return cos

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """emb (B, D), labels (B,) or None -> logits (B, num_classes)."""
        cos = self.cosine(emb)
        if labels is None or not self.training:
            return self.s * cos
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        return self.s * torch.where(onehot, self.target_logit(cos), cos)

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, dim={self.weight.shape[1]}, s={self.s}"


class ArcFaceHead(CosineHead):
    """ArcFace (Deng et al. 2019): the true class's logit is s * cos(theta + m).

    Numerically safe: sin(theta) comes from a clamped sqrt, never acos, so logits and gradients
    stay finite at cos(theta) = +-1. Past theta > pi - m, where cos(theta + m) would stop being
    monotonic, it uses cos(theta) - m*sin(m) (as insightface). `easy_margin` applies the margin
    only where cos(theta) > 0.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 16.0, m: float = 0.3,
                 easy_margin: bool = False):
        super().__init__(embedding_dim, num_classes, s)
        if not (math.isfinite(m) and 0 <= m < math.pi / 2):
            raise ValueError(f"ArcFace margin m is an angle in radians in [0, pi/2), got {m}")
        self.m, self.easy_margin = float(m), bool(easy_margin)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        sin = torch.sqrt((1.0 - cos * cos).clamp(min=EPS))
        phi = cos * self.cos_m - sin * self.sin_m  # cos(theta + m)
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        return torch.where(cos > self.th, phi, cos - self.mm)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", m={self.m}, easy_margin={self.easy_margin}"


class CosFaceHead(CosineHead):
    """CosFace (Wang et al. 2018): the true class's logit is s * (cos(theta) - m)."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 16.0, m: float = 0.2):
        super().__init__(embedding_dim, num_classes, s)
        if not (math.isfinite(m) and 0 <= m < 1):
            raise ValueError(f"CosFace margin m is subtracted from a cosine: give 0 <= m < 1, got {m}")
        self.m = float(m)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m

    def extra_repr(self) -> str:
        return super().extra_repr() + f", m={self.m}"


def make_head(kind: str, embedding_dim: int, num_classes: int, s: float = 16.0,
              m: float | None = None, easy_margin: bool = False) -> CosineHead:
    """'arcface' (default m 0.3), 'cosface' (default m 0.2) or 'softmax' (normalised, no margin)."""
    if kind == "arcface":
        return ArcFaceHead(embedding_dim, num_classes, s, 0.3 if m is None else m, easy_margin)
    if kind == "cosface":
        return CosFaceHead(embedding_dim, num_classes, s, 0.2 if m is None else m)
    if kind == "softmax":
        return CosineHead(embedding_dim, num_classes, s)
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")


def naive_arcface_logit(cos: torch.Tensor, m: float) -> torch.Tensor:
    """cos(acos(cos) + m) the naive way: its gradient is infinite (NaN) at cos = +-1."""
    return torch.cos(torch.acos(cos) + m)
