"""Numerics as properties (hypothesis): margin heads stay finite for any s, m and inputs, cos = +-1
included; training with a far too high learning rate reports divergence instead of nan numbers.

tests/test_heads.py checks fixed values; here hypothesis searches the whole parameter space
(s in [1, 128], m in [0, 1), any embedding directions, any labels), derandomised so CI is stable.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from helpers.models.heads import ArcFaceHead, CosFaceHead, CosineHead
from helpers.course.margins import naive_arcface_logit
from helpers.models.face_model import build_model
from helpers.train.fit import ImageDataset, TrainingDiverged, fit
from helpers.runtime import cache_dir, threads
from tiny_backbone import tiny_backbone


@pytest.fixture
def single_thread():
    """One torch thread: small tensors stall badly on two busy cores."""
    with threads(1):
        yield


pytestmark = pytest.mark.usefixtures("single_thread")

set_hypothesis_home_dir(str(cache_dir("hypothesis")))  # its small caches go with the course's, not into the repo root
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
S = st.floats(1.0, 128.0)
M = st.floats(0.0, 1.0, exclude_max=True)
KINDS = ("arcface", "arcface_easy", "cosface", "softmax")


def make(kind: str, dim: int, classes: int, s: float, m: float) -> CosineHead:
    if kind == "arcface":
        return ArcFaceHead(dim, classes, s=s, m=m)
    if kind == "arcface_easy":
        return ArcFaceHead(dim, classes, s=s, m=m, easy_margin=True)
    if kind == "cosface":
        return CosFaceHead(dim, classes, s=s, m=m)
    return CosineHead(dim, classes, s=s)


@st.composite
def batches(draw):
    """(embeddings, weights, labels): random directions, some rows exactly +-their class weight."""
    b, d, c = draw(st.integers(1, 8)), draw(st.integers(2, 16)), draw(st.integers(2, 10))
    elements = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)
    emb = draw(hnp.arrays(np.float32, (b, d), elements=elements))
    weight = draw(hnp.arrays(np.float32, (c, d), elements=elements))
    assume((np.linalg.norm(weight, axis=1) > 1e-3).all())
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=b, max_size=b)))
    # where asked, the embedding is exactly its class weight (cos = +1) or its opposite (cos = -1)
    for i, how in enumerate(draw(st.lists(st.sampled_from(["free", "+1", "-1"]), min_size=b, max_size=b))):
        if how != "free":
            emb[i] = weight[labels[i]] * (1 if how == "+1" else -1)
    assume((np.linalg.norm(emb, axis=1) > 1e-3).all())
    return torch.from_numpy(emb), torch.from_numpy(weight), torch.from_numpy(labels).long()


@PROPERTY
@given(kind=st.sampled_from(KINDS), s=S, m=M, batch=batches())
def test_logits_loss_and_gradients_are_finite(kind, s, m, batch):
    emb, weight, labels = batch
    head = make(kind, emb.shape[1], weight.shape[0], s, m).train()
    with torch.no_grad():
        head.weight.copy_(weight)
    emb = emb.clone().requires_grad_(True)
    logits = head(emb, labels)
    assert torch.isfinite(logits).all()
    assert logits.abs().max() <= s * (1 + m + math.sin(math.pi - m) * m) + 1e-3  # bounded by s
    loss = F.cross_entropy(logits, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    # the margin only ever makes the true class harder; other classes keep s * cos
    cos = head.cosine(emb.detach())
    true = logits.detach().gather(1, labels[:, None])[:, 0]
    assert (true <= s * cos.gather(1, labels[:, None])[:, 0] + 1e-3 * s).all()
    others = ~F.one_hot(labels, weight.shape[0]).bool()
    torch.testing.assert_close(logits.detach()[others], s * cos[others])


COS = st.one_of(st.just(1.0), st.just(-1.0), st.floats(-1.0, 1.0, width=32))


@PROPERTY
@given(kind=st.sampled_from(KINDS[:3]), m=M, cos=st.lists(COS, min_size=1, max_size=32))
def test_target_logit_finite_with_finite_gradient_on_all_of_minus_one_to_one(kind, m, cos):
    head = make(kind, 4, 2, 16.0, m)
    c = torch.tensor(cos, dtype=torch.float32, requires_grad=True)
    out = head.target_logit(c)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(c.grad).all()
    assert (out <= c.detach() + 1e-5).all()       # a margin never helps the true class


@PROPERTY
@given(m=M, cos=st.lists(COS, min_size=2, max_size=32))
def test_arcface_target_never_decreases_as_cos_grows(m, cos):
    """Past theta = pi - m the fallback keeps the logit monotonic (cos(theta + m) alone would not)."""
    c = torch.tensor(sorted(cos), dtype=torch.float32)
    out = ArcFaceHead(4, 2, s=16.0, m=m).target_logit(c)
    assert (out[1:] >= out[:-1] - 1e-5).all(), (c, out)


def test_the_naive_formula_is_what_these_properties_catch():
    """Control: acos-based ArcFace has a non-finite gradient at cos = 1, so the test above is not vacuous."""
    c = torch.tensor([1.0], requires_grad=True)
    naive_arcface_logit(c, 0.5).sum().backward()
    assert not torch.isfinite(c.grad).all()


# ------------------------------------------------------------------ divergence guard

@pytest.mark.parametrize("lr", [1e12, 1e30])
def test_end_to_end_fit_with_far_too_high_lr_reports_divergence(lr, capsys):
    """A trainable backbone at an absurd rate: the NaN guard stops it and says what to do."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(8)]
    backbone = tiny_backbone()
    model = build_model(2, backbone=backbone, freeze_backbone=False)
    data = ImageDataset(images, [0, 1] * 4, backbone.transform(train=True))
    hist = fit(model, data, data, epochs=20, lr=lr, batch_size=4, device="cpu", progress=False)
    assert "learning rate is too high" in hist.diverged, hist.summary()
    assert hist.epochs < 20 and hist.summary().startswith("diverged")
    assert all(math.isfinite(v) for v in hist.loss + hist.train_acc + hist.val_acc)  # no nan printed
    assert "training stopped" in capsys.readouterr().out
    with pytest.raises(TrainingDiverged, match="try lr="):
        fit(build_model(2, backbone=tiny_backbone(), freeze_backbone=False), data, epochs=20, lr=lr,
            batch_size=4, device="cpu", progress=False, raise_on_divergence=True)


def test_sane_lr_does_not_trip_the_guard():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(8)]
    backbone = tiny_backbone()
    model = build_model(2, backbone=backbone, freeze_backbone=False)
    data = ImageDataset(images, [0, 1] * 4, backbone.transform())
    hist = fit(model, data, epochs=3, lr=1e-2, batch_size=4, device="cpu", progress=False)
    assert hist.diverged == "" and hist.epochs == 3
