"""Regression tests for four small bugs (issue 21, item 8); each failed before its fix.

- `weights_digest`'s memo never hit (it keyed on `id()` of the fresh tensors `state_dict()` makes);
- `Backbone.predict_imagenet` failed on a GPU (its classifier did not move with `.to(device)`);
- the verification report's EER threshold (interpolated on the ROC) differed from `eer_threshold`
  (the midpoint rule the recogniser uses) by up to 0.03;
- `one_shot_identification` said cosine but ranked raw dot products.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from helpers.features import onnx_backbone
from helpers.evaluate.metrics import eer_threshold, one_shot_identification, pair_scores, verification
from tiny_backbone import tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def _count_hashes(monkeypatch) -> list:
    calls = []
    real = hashlib.sha256

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_backbone.hashlib, "sha256", counting)
    return calls


def test_weights_digest_hashes_once_while_nothing_changes(monkeypatch):
    bb = tiny_backbone(0)
    calls = _count_hashes(monkeypatch)
    digests = {onnx_backbone.weights_digest(bb) for _ in range(5)}
    assert len(digests) == 1 and len(calls) == 1          # 5 calls, 1 hash (was 5 hashes)
    with torch.no_grad():
        bb.body.layer1.bias.add_(1.0)                     # an optimiser step: in place
    assert onnx_backbone.weights_digest(bb) not in digests and len(calls) == 2
    onnx_backbone.weights_digest(bb)
    assert len(calls) == 2
    bb.body.bn1.running_mean.add_(0.5)                    # a buffer changes too (BatchNorm statistics)
    onnx_backbone.weights_digest(bb)
    assert len(calls) == 3


def test_predict_imagenet_classifier_moves_with_the_backbone(effnet):
    """Device-agnostic: `.to(torch.float64)` goes through the same path as `.to('cuda')`."""
    import copy

    bb = copy.deepcopy(effnet)
    n_params = sum(p.numel() for p in bb.parameters())
    bb.to(torch.float64)
    assert bb.classifier.weight.dtype == torch.float64    # moved with the backbone (was float32)
    (top,) = bb.predict_imagenet(torch.zeros(1, 3, 64, 64, dtype=torch.float64), k=1)
    assert isinstance(top[0][0], str)
    # still not part of the face model: not a parameter, not in the state_dict (nor its digest)
    assert sum(p.numel() for p in bb.parameters()) == n_params
    assert not any(k.startswith("_classifier") or "fc" in k for k in bb.state_dict())


@pytest.mark.parametrize("seed", range(5))
def test_verification_reports_the_one_eer_threshold(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(8), 5)
    emb = rng.normal(size=(8, 16))[labels] + rng.normal(scale=1.2, size=(40, 16))
    scores, same = pair_scores(emb, labels)
    v = verification(emb, labels)
    assert v.eer_threshold == eer_threshold(scores[same], scores[~same])


def test_one_shot_identification_uses_cosine_not_dot_products():
    # person 0 enrolled far from the origin in direction 0; a query of person 1 points along
    # person 1's short enrolled vector: by dot product it goes to person 0, by cosine to person 1
    emb = np.array([[10.0, 1.0], [10.0, 1.2],     # person 0
                    [0.1, 1.0], [0.1, 1.0]])      # person 1 (short vectors)
    labels = np.array([0, 0, 1, 1])
    assert one_shot_identification(emb, labels, seed=0) == 1.0
    assert one_shot_identification(emb * np.array([[1.0], [1.0], [100.0], [0.01]]), labels, seed=0) == 1.0
