"""Classification heads over L2-normalised embeddings: ArcFace, CosFace and normalised softmax.

All heads hold one weight vector per person and compute cos(theta) = <e/|e|, w/|w|>, in float32 or wider.
Two calls, as in pytorch-metric-learning (`get_logits` apart from the loss) and insightface's
arcface_torch (the margin wherever labels are given, whatever the mode):

    head.logits(emb)            # (B, num_classes) s * cos(theta): for predictions and accuracy
    head(emb, labels)           # the same with the margin on each true class: the training objective

    head = ArcFaceHead(512, num_classes, s=16.0, m=0.3)
    loss = F.cross_entropy(head(embedding(x), y), y)

A new margin overrides one hook, `target_logit(cos)`: the true class's logit before scaling.
Notebook 02 trains these heads, notebook 03 explains the margins.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("arcface", "cosface", "softmax")
EPS = 1e-7


class CosineHead(nn.Module):
    """s * cos(theta): normalised softmax, the base of ArcFace and CosFace.

    Notebook 01, inside `build_model`.
    """

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
        """cos(theta) (B, num_classes) between each embedding (B, D) and each class weight, in [-1, 1].

        At least float32 (autocast is switched off here, half precision promoted): the margin's
        trigonometry is not safe in half precision.
        """
        dtype = torch.promote_types(torch.promote_types(emb.dtype, self.weight.dtype), torch.float32)
        with _full_precision(emb.device):
            return F.linear(F.normalize(emb.to(dtype), dim=1),
                            F.normalize(self.weight.to(dtype), dim=1)).clamp(-1.0, 1.0)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """The hook a margin overrides: the true class's logit before scaling, from its cosine (plain here)."""
        return cos

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """s * cos(theta) (B, num_classes) for embeddings (B, D): predictions, accuracy, no margin."""
        return self.s * self.cosine(emb)

    def margin_logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training logits (B, num_classes): s * target_logit(cos) for each true class `labels` (B,),
        s * cos elsewhere; in any mode (train or eval), in float32."""
        cos = self.cosine(emb)
        is_target = F.one_hot(labels.long(), cos.shape[1]).bool()
        return self.s * torch.where(is_target, self.target_logit(cos), cos)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """emb (B, D), labels (B,) -> `margin_logits`; without labels -> `logits` (B, num_classes)."""
        return self.logits(emb) if labels is None else self.margin_logits(emb, labels)

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, dim={self.weight.shape[1]}, s={self.s}"


class ArcFaceHead(CosineHead):
    """ArcFace (Deng et al. 2019): the true class's logit is s * cos(theta + m).

    Numerically safe: sin(theta) comes from a clamped sqrt, never acos, so logits and gradients
    stay finite at cos(theta) = +-1. Past theta > pi - m, where cos(theta + m) would stop being
    monotonic, it uses cos(theta) - m*sin(m) (as insightface). `easy_margin` applies the margin
    only where cos(theta) > 0.

    Notebook 01, inside `build_model`.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 16.0, m: float = 0.3,
                 easy_margin: bool = False):
        super().__init__(embedding_dim, num_classes, s)
        if not (math.isfinite(m) and 0 <= m < math.pi / 2):
            raise ValueError(f"ArcFace margin m is an angle in radians in [0, pi/2), got {m}")
        self.m, self.easy_margin = float(m), bool(easy_margin)
        self.cos_margin, self.sin_margin = math.cos(m), math.sin(m)
        # beyond theta = pi - m, cos(theta + m) would rise again: there use cos(theta) - m * sin(m)
        self.cos_limit = math.cos(math.pi - m)
        self.linear_penalty = math.sin(math.pi - m) * m

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m), with a safe sin(theta)."""
        sin = torch.sqrt((1.0 - cos * cos).clamp(min=EPS))
        cos_theta_plus_m = cos * self.cos_margin - sin * self.sin_margin
        if self.easy_margin:
            return torch.where(cos > 0, cos_theta_plus_m, cos)
        return torch.where(cos > self.cos_limit, cos_theta_plus_m, cos - self.linear_penalty)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", m={self.m}, easy_margin={self.easy_margin}"


class CosFaceHead(CosineHead):
    """CosFace (Wang et al. 2018): the true class's logit is s * (cos(theta) - m).

    Notebook 01, inside `build_model`.
    """

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
    """'arcface' (default m 0.3), 'cosface' (default m 0.2) or 'softmax' (normalised, no margin).

    Notebook 01, inside `build_model`.
    """
    if kind == "arcface":
        return ArcFaceHead(embedding_dim, num_classes, s, 0.3 if m is None else m, easy_margin)
    if kind == "cosface":
        return CosFaceHead(embedding_dim, num_classes, s, 0.2 if m is None else m)
    if kind == "softmax":
        return CosineHead(embedding_dim, num_classes, s)
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")


def _full_precision(device: torch.device):
    """A context without autocast on `device` (CPU and CUDA), so the heads compute in float32."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
