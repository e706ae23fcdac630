"""Margin heads: ArcFace / CosFace / normalised softmax values, and finiteness at cos = +-1."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.models.heads import ArcFaceHead, CosFaceHead, CosineHead, make_head
from helpers.course.margins import naive_arcface_logit

DIM, CLASSES = 4, 3


def _with_basis_weights(head: CosineHead) -> CosineHead:
    """Class c's weight is the unit vector e_c, so cos(theta) with class 0 is emb[0] / |emb|."""
    with torch.no_grad():
        head.weight.copy_(torch.eye(CLASSES, DIM))
    return head


def _embeddings_at(cos: torch.Tensor) -> torch.Tensor:
    """Unit embeddings whose cosine with class 0 is `cos` (and 0 with the other classes)."""
    sin = torch.sqrt((1 - cos.double() ** 2).clamp(min=0)).float()
    emb = torch.zeros(len(cos), DIM)
    emb[:, 0] = cos
    emb[:, 3] = sin
    return emb


# cos from -1 to 1 with the ends exactly
COS_RANGE = torch.linspace(-1.0, 1.0, 201)


def test_cos_range_really_includes_the_ends():
    assert COS_RANGE[0].item() == -1.0 and COS_RANGE[-1].item() == 1.0


@pytest.mark.parametrize("make", [
    lambda: ArcFaceHead(DIM, CLASSES, s=16, m=0.5),
    lambda: ArcFaceHead(DIM, CLASSES, s=64, m=0.5, easy_margin=True),
    lambda: CosFaceHead(DIM, CLASSES, s=16, m=0.35),
    lambda: CosineHead(DIM, CLASSES, s=16),
], ids=["arcface", "arcface-easy", "cosface", "softmax"])
def test_target_logit_and_gradient_finite_over_whole_cos_range(make):
    head = make()
    cos = COS_RANGE.clone().requires_grad_(True)
    out = head.target_logit(cos)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(cos.grad).all(), cos.grad[~torch.isfinite(cos.grad)]


@pytest.mark.parametrize("kind", ["arcface", "cosface", "softmax"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["cos=+1", "cos=-1"])
def test_exact_plus_minus_one_end_to_end(kind, sign):
    """Embedding equal / opposite to its class weight: logits, loss and all gradients finite."""
    head = _with_basis_weights(make_head(kind, DIM, CLASSES, s=16, m=0.5 if kind != "softmax" else None))
    head.train()
    emb = torch.zeros(2, DIM)
    emb[0, 0] = sign * 3.0        # exactly +-e_0 after normalisation
    emb[1, 1] = sign * 0.5        # exactly +-e_1
    emb.requires_grad_(True)
    labels = torch.tensor([0, 1])
    cos = head.cosine(emb)
    assert cos[0, 0].item() == sign and cos[1, 1].item() == sign
    logits = head(emb, labels)
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all()
    assert torch.isfinite(head.weight.grad).all()


def test_cosine_clamped_when_rounding_exceeds_one():
    """Normalised equal vectors can give cos = 1.0000001 in float32; it must stay in [-1, 1]."""
    torch.manual_seed(3)
    head = ArcFaceHead(512, 64, s=16, m=0.5)
    for sign in (1.0, -1.0):
        cos = head.cosine(sign * head.weight.detach() * 7.3)
        assert cos.abs().max().item() <= 1.0
        assert torch.isfinite(head(sign * head.weight.detach(), torch.arange(64))).all()


def test_arcface_target_is_cos_theta_plus_m():
    m = 0.5
    head = ArcFaceHead(DIM, CLASSES, s=1.0, m=m)
    cos = torch.tensor([-0.5, 0.0, 0.3, 0.7, 0.99])  # all above the threshold cos(pi - m) = -0.878
    want = torch.cos(torch.acos(cos.double()) + m).float()
    torch.testing.assert_close(head.target_logit(cos), want, atol=1e-6, rtol=0)


def test_arcface_past_pi_minus_m_uses_linear_fallback():
    """Where theta + m > pi, cos(theta + m) would rise again: ArcFace uses cos - m*sin(m) there."""
    m = 0.5
    head = ArcFaceHead(DIM, CLASSES, s=1.0, m=m)
    cos = torch.tensor([-1.0, -0.95, -0.9])  # below cos(pi - 0.5) = -0.8776
    torch.testing.assert_close(head.target_logit(cos), cos - m * math.sin(m))
    # and the target logit never increases when cos decreases (monotonic over the range)
    t = head.target_logit(COS_RANGE)
    assert (t[1:] >= t[:-1]).all()
    # the margin always lowers the target logit (harder than plain cosine)
    assert (t <= COS_RANGE + 1e-6).all()


def test_arcface_with_zero_margin_is_the_scaled_cosine_softmax():
    torch.manual_seed(0)
    emb = torch.randn(16, DIM)
    emb[0] = torch.tensor([1.0, 0, 0, 0])   # cos exactly +1 with class 0
    emb[1] = torch.tensor([-2.0, 0, 0, 0])  # cos exactly -1 with class 0
    labels = torch.randint(0, CLASSES, (16,))
    labels[:2] = 0
    plain = _with_basis_weights(CosineHead(DIM, CLASSES, s=16))
    arc = _with_basis_weights(ArcFaceHead(DIM, CLASSES, s=16, m=0.0))
    la, lp = arc(emb, labels), plain(emb, labels)
    torch.testing.assert_close(la, lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(F.cross_entropy(la, labels), F.cross_entropy(lp, labels), atol=1e-5, rtol=0)


def test_cosface_target_is_s_times_cos_minus_m_others_plain():
    s, m = 16.0, 0.35
    head = _with_basis_weights(CosFaceHead(DIM, CLASSES, s=s, m=m)).train()
    torch.manual_seed(1)
    emb = torch.randn(8, DIM)
    labels = torch.randint(0, CLASSES, (8,))
    cos = head.cosine(emb)
    logits = head(emb, labels)
    onehot = F.one_hot(labels, CLASSES).bool()
    torch.testing.assert_close(logits[onehot], s * (cos[onehot] - m))
    torch.testing.assert_close(logits[~onehot], s * cos[~onehot])


def test_easy_margin_only_where_cos_positive():
    m = 0.5
    easy = ArcFaceHead(DIM, CLASSES, s=1.0, m=m, easy_margin=True)
    cos = torch.tensor([-1.0, -0.6, -0.2, 0.0, 0.2, 0.6, 1.0])
    t = easy.target_logit(cos)
    neg = cos <= 0
    torch.testing.assert_close(t[neg], cos[neg])                      # no margin
    want = torch.cos(torch.acos(cos[~neg].double()) + m).float()
    torch.testing.assert_close(t[~neg], want, atol=1e-3, rtol=0)      # cos(theta + m)
    # the standard version does apply a margin on negative cosines
    hard = ArcFaceHead(DIM, CLASSES, s=1.0, m=m).target_logit(cos)
    assert (hard[neg] < cos[neg]).all()


@pytest.mark.parametrize("kind", ["arcface", "cosface", "softmax"])
def test_logits_are_s_cos_and_labels_give_the_margin_in_any_mode(kind):
    """Inference logits never carry a margin; with labels the margin applies in train AND eval mode
    (a loop left in eval mode used to train without its margin)."""
    s = 12.0
    head = make_head(kind, DIM, CLASSES, s=s)
    torch.manual_seed(2)
    emb = torch.randn(5, DIM)
    labels = torch.tensor([0, 1, 2, 0, 1])
    onehot = F.one_hot(labels, CLASSES).bool()
    with torch.no_grad():
        cos = head.cosine(emb)
        for mode in (True, False):
            head.train(mode)
            torch.testing.assert_close(head(emb), s * cos)
            torch.testing.assert_close(head.logits(emb), s * cos)
            out = head(emb, labels)
            torch.testing.assert_close(out, head.margin_logits(emb, labels))
            torch.testing.assert_close(out[~onehot], s * cos[~onehot])
            if kind == "softmax":
                torch.testing.assert_close(out, s * cos)
            else:                                 # the margin lowers the true class only
                assert (out[onehot] < s * cos[onehot]).all()


def test_margin_logits_are_float32_under_autocast():
    head = ArcFaceHead(DIM, CLASSES, s=16.0, m=0.5)
    emb = torch.randn(4, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(emb.bfloat16(), torch.tensor([0, 1, 2, 0]))
        plain = head.logits(emb.bfloat16())
    assert out.dtype == torch.float32 and plain.dtype == torch.float32
    torch.testing.assert_close(out, head(emb.bfloat16().float(), torch.tensor([0, 1, 2, 0])))


def test_make_head_defaults_and_unknown():
    assert isinstance(make_head("arcface", DIM, CLASSES), ArcFaceHead)
    assert make_head("arcface", DIM, CLASSES).m == pytest.approx(0.3)
    assert make_head("cosface", DIM, CLASSES).m == pytest.approx(0.2)
    assert type(make_head("softmax", DIM, CLASSES)) is CosineHead
    assert make_head("arcface", DIM, CLASSES, s=30, m=0.1).s == 30
    with pytest.raises(ValueError, match="unknown head"):
        make_head("sphereface", DIM, CLASSES)


def test_naive_arcface_has_non_finite_gradient_at_cos_one():
    """The teaching contrast: cos(acos(x) + m) breaks exactly where training pushes cos to 1."""
    cos = torch.tensor([1.0], requires_grad=True)
    out = naive_arcface_logit(cos, 0.5)
    assert torch.isfinite(out).all()       # the value is fine ...
    out.sum().backward()
    assert not torch.isfinite(cos.grad).all()  # ... the gradient is not
    # the safe head at the same point
    safe = torch.tensor([1.0], requires_grad=True)
    ArcFaceHead(DIM, CLASSES, m=0.5).target_logit(safe).sum().backward()
    assert torch.isfinite(safe.grad).all()
    # and the two agree on values inside the range
    inner = torch.linspace(-0.8, 0.99, 50)
    torch.testing.assert_close(naive_arcface_logit(inner, 0.5),
                               ArcFaceHead(DIM, CLASSES, m=0.5).target_logit(inner), atol=1e-3, rtol=0)


@pytest.mark.parametrize("make, message", [
    (lambda: CosineHead(DIM, CLASSES, s=0.0), "scale s must be a positive number"),
    (lambda: CosineHead(DIM, CLASSES, s=-16.0), "scale s must be a positive number"),
    (lambda: CosineHead(DIM, CLASSES, s=float("nan")), "scale s must be a positive number"),
    (lambda: ArcFaceHead(DIM, CLASSES, s=float("inf"), m=0.5), "scale s must be a positive number"),
    (lambda: ArcFaceHead(DIM, CLASSES, s=16, m=-0.1), "ArcFace margin m is an angle"),
    (lambda: ArcFaceHead(DIM, CLASSES, s=16, m=math.pi / 2), "ArcFace margin m is an angle"),
    (lambda: ArcFaceHead(DIM, CLASSES, s=16, m=28.6), "ArcFace margin m is an angle"),   # degrees by mistake
    (lambda: CosFaceHead(DIM, CLASSES, s=16, m=-0.2), "CosFace margin m"),
    (lambda: CosFaceHead(DIM, CLASSES, s=16, m=1.0), "CosFace margin m"),
    (lambda: CosFaceHead(DIM, CLASSES, s=16, m=float("nan")), "CosFace margin m"),
    (lambda: CosineHead(DIM, 0), "num_classes must be >= 1"),
    (lambda: make_head("arcface", DIM, CLASSES, s=-1.0), "scale s"),
    (lambda: make_head("cosface", DIM, CLASSES, m=2.0), "CosFace margin m"),
], ids=["s=0", "s<0", "s=nan", "s=inf", "arc m<0", "arc m=pi/2", "arc m in degrees", "cos m<0", "cos m=1",
        "cos m=nan", "no classes", "make_head s", "make_head m"])
def test_bad_scale_or_margin_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_edge_values_of_scale_and_margin_are_accepted():
    """The limits themselves: no margin at all, and margins just inside their ranges."""
    assert ArcFaceHead(DIM, CLASSES, s=1e-3, m=0.0).m == 0.0
    assert ArcFaceHead(DIM, CLASSES, s=64, m=math.pi / 2 - 1e-6).m < math.pi / 2
    assert CosFaceHead(DIM, CLASSES, s=64, m=0.0).m == 0.0 and CosFaceHead(DIM, CLASSES, m=0.99).m == 0.99
