"""ArcFaceHead and CosFaceHead against an independent implementation: pytorch-metric-learning's
ArcFaceLoss and CosFaceLoss (a test dependency), same weights, same inputs: loss and gradients.

pytorch-metric-learning keeps its class weights as W (embedding_size, num_classes), the transpose
of the course's (num_classes, embedding_dim), and takes the ArcFace margin in degrees.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.models.heads import ArcFaceHead, CosFaceHead

pml_losses = pytest.importorskip(
    "pytorch_metric_learning.losses",
    reason="pytorch-metric-learning is not installed (it is in the `test` extra: "
           "pip install --no-deps pytorch-metric-learning)")

DIM, CLASSES, BATCH = 32, 10, 64


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, DIM, generator=gen), torch.randint(0, CLASSES, (BATCH,), generator=gen)


def _compare(head, reference, seed: int):
    with torch.no_grad():
        reference.W.copy_(head.weight.detach().T)
    emb, labels = _inputs(seed)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    ours = F.cross_entropy(head(e1, labels), labels)
    theirs = reference(e2, labels)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(e1.grad, e2.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(head.weight.grad, reference.W.grad.T, atol=1e-6, rtol=1e-4)
    return float(ours.detach())


@pytest.mark.parametrize("s, m", [(64.0, 0.5), (16.0, 0.3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_arcface_head_matches_pytorch_metric_learning(s, m, seed):
    torch.manual_seed(seed)
    head = ArcFaceHead(DIM, CLASSES, s=s, m=m)
    reference = pml_losses.ArcFaceLoss(CLASSES, DIM, margin=math.degrees(m), scale=s)
    loss = _compare(head, reference, seed)
    # the reference really has a margin: our loss is above the margin-free one
    emb, labels = _inputs(seed)
    with torch.no_grad():
        assert loss > float(F.cross_entropy(head.logits(emb), labels)) + 1e-3


@pytest.mark.parametrize("s, m", [(64.0, 0.35), (16.0, 0.2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_cosface_head_matches_pytorch_metric_learning(s, m, seed):
    torch.manual_seed(seed)
    head = CosFaceHead(DIM, CLASSES, s=s, m=m)
    reference = pml_losses.CosFaceLoss(CLASSES, DIM, margin=m, scale=s)
    _compare(head, reference, seed)


def test_the_reference_margin_applies_in_eval_mode_too():
    """Both implementations put the margin on every call with labels: eval mode changes nothing."""
    torch.manual_seed(0)
    head = ArcFaceHead(DIM, CLASSES, s=32.0, m=0.5).eval()
    reference = pml_losses.ArcFaceLoss(CLASSES, DIM, margin=math.degrees(0.5), scale=32.0).eval()
    _compare(head, reference, 3)
