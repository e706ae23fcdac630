"""The face model: exact parameter counts, freezing stages, frozen BatchNorm statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import load_backbone
from helpers.models.face_model import (EMBEDDING_DIM, EmbeddingHead, FaceModel, build_model, count_parameters,
                                       set_trainable_stages, trainable_stages)
from helpers.train.fit import ImageDataset, fit

pytestmark = pytest.mark.usefixtures("one_thread")

STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]
RESNET18_TRUNK = 11_176_512        # torchvision ResNet-18 without its 1000-class fc
EFFNET_LITE0_TRUNK = 3_371_008     # EfficientNet-Lite0 without its 1000-class _fc


def head_params(feature_dim: int, people: int) -> int:
    """Linear(D->512) + BatchNorm1d(512) (weight, bias) + one 512-D weight per person."""
    return feature_dim * 512 + 512 + 2 * 512 + people * 512


@pytest.fixture
def resnet():
    return load_backbone("resnet18", pretrained=False, verbose=False)


def test_resnet18_nine_people_frozen_counts(resnet):
    model = build_model(9, backbone=resnet)  # freeze_backbone=True by default
    count = count_parameters(model)
    assert count.trainable == 268_288 == head_params(512, 9)
    assert count.total == 11_444_800 == RESNET18_TRUNK + 268_288
    assert count.frozen == RESNET18_TRUNK
    assert "268,288" in str(count) and "11,444,800" in str(count)


def test_resnet18_unfrozen_all_trainable(resnet):
    count = count_parameters(build_model(9, backbone=resnet, freeze_backbone=False))
    assert count.trainable == count.total == 11_444_800
    assert trainable_stages(resnet) == STAGES


def test_efficientnet_lite0_counts():
    bb = load_backbone("efficientnet_lite0", pretrained=False, verbose=False)
    frozen = count_parameters(build_model(9, backbone=bb))
    assert frozen.trainable == 1280 * 512 + 512 + 1024 + 9 * 512 == 661_504
    assert frozen.total == EFFNET_LITE0_TRUNK + 661_504
    unfrozen = count_parameters(build_model(9, backbone=bb, freeze_backbone=False))
    assert unfrozen.trainable == unfrozen.total == frozen.total


def test_imagenet_classifier_not_counted(effnet):
    """The pretrained backbone keeps its ImageNet classifier for demos, outside the parameters."""
    assert effnet.classifier is not None
    assert sum(p.numel() for p in effnet.classifier.parameters()) == 1280 * 1000 + 1000
    assert count_parameters(effnet).total == EFFNET_LITE0_TRUNK


def test_counts_for_cached_feature_model():
    model = build_model(40, feature_dim=1280, head="cosface")
    assert count_parameters(model).trainable == count_parameters(model).total == head_params(1280, 40)
    with pytest.raises(ValueError, match="feature_dim"):
        build_model(9)


def test_model_forward_and_embed_shapes():
    torch.manual_seed(0)
    model = build_model(5, feature_dim=32)
    assert isinstance(model, FaceModel) and isinstance(model.embedding, EmbeddingHead)
    x, y = torch.randn(6, 32), torch.tensor([0, 1, 2, 3, 4, 0])
    model.train()
    assert model(x, y).shape == (6, 5)
    model.eval()
    e = model.embed(x)
    assert e.shape == (6, EMBEDDING_DIM)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(model(x), model.head.s * model.head.cosine(model.embedding(x)))


def test_set_trainable_stages_round_trip(resnet):
    for stages in (["layer4"], ["layer3", "layer4"], [], STAGES, ["stem"]):
        set_trainable_stages(resnet, stages)
        assert trainable_stages(resnet) == stages
        for name in STAGES:
            flags = {p.requires_grad for p in resnet.stage_parameters(name)}
            assert flags == {name in stages}
    with pytest.raises(KeyError, match="unknown stage"):
        set_trainable_stages(resnet, ["layer5"])


def test_only_named_stage_counts(resnet):
    model = build_model(9, backbone=resnet)
    set_trainable_stages(resnet, ["layer4"])
    layer4 = sum(p.numel() for p in resnet.stage_parameters("layer4"))
    assert layer4 == 8_393_728
    assert count_parameters(model).trainable == 268_288 + layer4


# ------------------------------------------------------------------ freezing during training

def _tiny_images(n: int = 8, size: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _stage_states(backbone):
    return {s: [_snapshot(m) for m in backbone.stage_modules(s)] for s in backbone.stage_names}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fit_layer4(keep_frozen_bn_eval: bool = True):
    torch.manual_seed(0)
    bb = load_backbone("resnet18", pretrained=False, verbose=False)
    bb.keep_frozen_bn_eval = keep_frozen_bn_eval
    model = build_model(3, backbone=bb)
    set_trainable_stages(bb, ["layer4"])
    before = _stage_states(bb)
    data = ImageDataset(_tiny_images(), [0, 1, 2, 0, 1, 2, 0, 1], bb.transform(size=64))
    hist = fit(model, data, epochs=1, lr=1e-2, batch_size=4, device="cpu", progress=False)
    assert hist.epochs == 1 and np.isfinite(hist.loss[0])
    return bb, before, _stage_states(bb)


def test_frozen_stages_bit_identical_after_training():
    bb, before, after = _fit_layer4()
    for stage in ["stem", "layer1", "layer2", "layer3"]:
        for b, a in zip(before[stage], after[stage]):
            assert _same(b, a), f"frozen stage {stage} changed"
    # frozen BN saw batches in model.train() yet counted none of them
    assert bb.body.bn1.num_batches_tracked.item() == 0
    # the trainable stage did learn, and its BatchNorm statistics did move
    (b4,), (a4,) = before["layer4"], after["layer4"]
    assert not torch.equal(b4["0.conv1.weight"], a4["0.conv1.weight"])
    assert not torch.equal(b4["0.bn1.running_mean"], a4["0.bn1.running_mean"])


def test_train_mode_keeps_frozen_batchnorm_in_eval(resnet):
    set_trainable_stages(resnet, ["layer4"])
    model = build_model(3, backbone=resnet)     # build_model freezes all stages again
    set_trainable_stages(resnet, ["layer4"])
    model.train()
    assert resnet.training
    assert not resnet.body.bn1.training                 # stem (frozen)
    assert not resnet.body.layer3[0].bn1.training       # frozen
    assert resnet.body.layer4[0].bn1.training           # trainable
    assert model.embedding.bn.training                  # the embedding's BatchNorm trains


def test_without_keep_frozen_bn_eval_stats_drift():
    """The pitfall: frozen weights, yet BatchNorm running statistics follow the new data."""
    bb, before, after = _fit_layer4(keep_frozen_bn_eval=False)
    (conv_b, bn_b), (conv_a, bn_a) = before["stem"], after["stem"]   # stem = conv1, bn1
    assert _same(conv_b, conv_a)                                        # weights frozen
    assert torch.equal(bn_b["weight"], bn_a["weight"]) and torch.equal(bn_b["bias"], bn_a["bias"])
    assert not torch.equal(bn_b["running_mean"], bn_a["running_mean"])  # statistics drifted
    assert bb.body.bn1.num_batches_tracked.item() > 0


def test_manual_adamw_step_leaves_frozen_params(resnet):
    """A plain AdamW over all parameters (even frozen ones) cannot move what has no gradient."""
    model = build_model(3, backbone=resnet)
    set_trainable_stages(resnet, ["layer4"])
    before = _snapshot(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    x = torch.randn(4, 3, 64, 64)
    y = torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(model(x, y), y).backward()
    opt.step()
    after = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(k.startswith(("backbone.body.layer4", "embedding.", "head.")) for k in changed), \
        sorted(k for k in changed if not k.startswith(("backbone.body.layer4", "embedding.", "head.")))
