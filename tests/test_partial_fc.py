"""helpers.models.partial_fc: the sharded ArcFace head against the replicated one, and its memory arithmetic."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.models.heads import ArcFaceHead
from helpers.models.partial_fc import PartialFC, check_against_replicated, head_memory_gb, shard_bounds


def test_shards_cover_every_class_once():
    for classes, world in [(10, 3), (7, 7), (2_000_000, 8)]:
        bounds = [shard_bounds(classes, world, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1


def test_one_rank_equals_arcface_with_cross_entropy():
    torch.manual_seed(3)
    head = PartialFC(16, 50, s=64.0, m=0.5)
    torch.manual_seed(3)
    ref = ArcFaceHead(16, 50, s=64.0, m=0.5)
    emb, labels = torch.randn(12, 16), torch.randint(0, 50, (12,))
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    loss, loss_ref = head(e1, labels), F.cross_entropy(ref(e2, labels), labels)
    (loss + loss_ref).backward()
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(head.weight.grad, ref.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e1.grad, e2.grad, atol=1e-5, rtol=1e-5)


def test_sampling_keeps_every_positive_and_the_asked_share():
    torch.manual_seed(0)
    head = PartialFC(8, 100, sample_rate=0.2)
    labels = torch.tensor([3, 3, 50, 99, 7])
    torch.manual_seed(1)
    rows, target = head.sample(labels)
    assert len(rows) == math.ceil(0.2 * 100) and set(labels.tolist()) <= set(rows.tolist())
    assert torch.equal(rows[target], labels)          # each label's column points at its class
    emb = torch.randn(5, 8, requires_grad=True)
    torch.manual_seed(1)                              # the same draw of negatives as above
    head(emb, labels).backward()
    unused = torch.ones(100, dtype=torch.bool)
    unused[rows] = False
    assert head.weight.grad[unused].abs().max() == 0 and head.weight.grad[rows].abs().sum() > 0


@pytest.mark.slow
def test_two_gloo_processes_match_the_replicated_head():
    """2 processes, 500 classes each, 16 photos each, float32: loss and gradients as the replicated
    head's to 1e-5 (measured ~5e-7 for gradients of size ~2)."""
    diff = check_against_replicated(world_size=2, seed=0)
    assert diff["loss"] < 1e-5 and diff["weight_grad"] < 1e-5 and diff["embedding_grad"] < 1e-5, diff
    assert diff["weight_grad_scale"] > 0.1   # the gradients compared are not all zero


def test_memory_arithmetic_for_two_million_identities():
    """Replicated: 16.4 GB of weights + AdamW state, and 128 x 2 M logits (+ gradient) = 2.0 GB;
    sharded over 8: 4.1 GB + the same 2.0 GB of logits (1,024 gathered rows x 250,000 classes)."""
    rep = head_memory_gb(2_000_000, 512, 8, 128, sharded=False)
    shard = head_memory_gb(2_000_000, 512, 8, 128, sharded=True)
    assert rep["weights_and_adam"] == pytest.approx(16.384) and rep["logits"] == pytest.approx(2.048)
    assert shard["weights_and_adam"] == pytest.approx(2.048) and shard["logits"] == pytest.approx(2.048)
    assert head_memory_gb(2_000_000, 512, 8, 128, sharded=True, sample_rate=0.1)["logits"] == pytest.approx(0.2048)


def test_07_exercise_3_accepts_the_per_gpu_answer_and_explains_the_global_batch_one(capsys):
    """40 GB / (4 x 512 x 4 + 2 x 128 x 4 bytes) = 4,340,277 identities; the old checker counted
    the logits of the global batch (2 x 1024 x 4 bytes) and rejected this answer."""
    from helpers.course.scaling_exercises import check_replicated_head_capacity as check

    assert check(4_340_277) is True and check(4_300_000) is True
    assert check(int(40e9 // (4 * 512 * 4 + 2 * 1024 * 4))) is False
    assert "per-GPU batch (128), not the global batch (1024)" in capsys.readouterr().out
    assert check(None) is False and check(1_000_000) is False
