"""The one freezing rule (helpers.models.freezing): frozen means eval mode and no gradient, whatever the
module holds; parameter-free BatchNorm, Dropout and drop-connect included."""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from helpers.models.backbone_tail import FineTuneModel
from helpers.models.backbones import Backbone
from helpers.models.freezing import apply_freezing_rule, freeze, is_frozen, unfreeze
from helpers.models.face_model import build_model, set_trainable_stages
from helpers.models.stages import PretrainedConfig, SequentialStages
from helpers.train.fit import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _backbone_with_parameter_free_parts(seed: int = 0) -> Backbone:
    """stem = conv, BatchNorm without affine parameters, Dropout; layer1 = conv + BN (trainable later)."""
    torch.manual_seed(seed)
    body = SequentialStages(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, stride=2, padding=1), bn_plain=nn.BatchNorm2d(8, affine=False),
        drop=nn.Dropout(0.5), layer1=nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)),
        OrderedDict(stem=["conv1", "bn_plain", "drop"], layer1=["layer1"]))
    return Backbone(body, 8, "plain-bn", f"random init seed {seed}", "test", PretrainedConfig(input_size=32)).eval()


def test_freeze_and_unfreeze_mark_every_submodule():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4, affine=False)).train()
    assert freeze(net) is net
    assert all(is_frozen(m) and not m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())
    apply_freezing_rule(net.train())
    assert not any(m.training for m in net.modules())
    assert unfreeze(net) is net
    assert not any(is_frozen(m) for m in net.modules()) and all(p.requires_grad for p in net.parameters())
    assert all(m.training for m in apply_freezing_rule(net.train()).modules())


def test_parameter_free_batchnorm_and_dropout_of_a_frozen_stage_stay_in_eval():
    """The old rule looked at parameters: a BatchNorm(affine=False) or a Dropout under a partly
    trainable parent has none, so it stayed in train mode. By structure they are frozen."""
    bb = _backbone_with_parameter_free_parts()
    set_trainable_stages(bb, ["layer1"])
    bb.train()
    assert bb.training and bb.body.training                           # the containers train
    assert not bb.body.bn_plain.training and not bb.body.drop.training  # frozen, though parameter-free
    assert not bb.body.conv1.training
    assert all(m.training for m in bb.body.layer1.modules())           # the trainable stage trains
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stem = nn.Sequential(bb.body.conv1, bb.body.bn_plain, bb.body.drop)
    with torch.no_grad():
        a, b = stem(x), stem(x)
    assert torch.equal(a, b)                                           # no dropout mask
    assert bb.body.bn_plain.num_batches_tracked.item() == 0            # no statistics update


def test_frozen_parameter_free_stage_bit_identical_after_training():
    bb = _backbone_with_parameter_free_parts()
    model = build_model(3, backbone=bb)
    set_trainable_stages(bb, ["layer1"])
    stem_before = {k: v.clone() for k, v in bb.state_dict().items() if not k.startswith("body.layer1")}
    layer1_before = bb.body.layer1[0].weight.detach().clone()
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(12) % 3
    hist = fit(model, (x, y), epochs=1, lr=1e-2, batch_size=6, device="cpu", progress=False)
    assert hist.epochs == 1
    after = bb.state_dict()
    for k, v in stem_before.items():
        assert torch.equal(v, after[k]), f"frozen {k} changed"          # running stats of bn_plain too
    assert not torch.equal(layer1_before, bb.body.layer1[0].weight)    # the trainable stage learned


def test_frozen_drop_connect_block_under_a_partly_trainable_parent(effnet):
    """EfficientNet-Lite's drop-connect drops a block's residual branch at random in train mode. A
    frozen block inside the partly trainable `_blocks` list must not."""
    bb = copy.deepcopy(effnet)
    set_trainable_stages(bb, ["layer4"])
    bb.train()
    blocks = bb.body._blocks
    assert blocks.training and blocks[15].training                    # parent and a layer4 block train
    frozen_block = blocks[10]                                         # layer3: frozen
    assert not any(m.training for m in frozen_block.modules())
    def twice(block, channels):  # two calls with different random seeds
        x = torch.randn(2, channels, 4, 4, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.manual_seed(0)
            a = block(x, drop_connect_rate=0.5)
            torch.manual_seed(1)
            return a, block(x, drop_connect_rate=0.5)

    assert not torch.equal(*twice(blocks[12], 192))                    # a trainable block drops branches
    assert torch.equal(*twice(frozen_block, 112))                      # the frozen one never does


def test_finetune_model_keeps_every_backbone_batchnorm_in_eval():
    bb = _backbone_with_parameter_free_parts()
    model = build_model(3, backbone=bb)
    set_trainable_stages(bb, ["layer1"])
    ft = FineTuneModel(model.embedding, model.head, bb, bn_train=False).train()
    assert not bb.body.layer1[1].training and bb.body.layer1[0].training   # BN eval, conv trains
    assert model.embedding.bn.training                                # the embedding's BN trains
    ft.bn_train = True
    ft.train()
    assert bb.body.layer1[1].training and not bb.body.bn_plain.training


def test_switching_the_rule_off_shows_the_pitfall():
    bb = _backbone_with_parameter_free_parts()
    set_trainable_stages(bb, [])
    bb.keep_frozen_bn_eval = False
    bb.train()
    assert bb.body.bn_plain.training and bb.body.drop.training


def test_trainer_set_modes_uses_the_rule_and_checks_the_stages():
    from helpers.train.trainer import _set_modes

    bb = _backbone_with_parameter_free_parts()
    model = build_model(3, backbone=bb)
    set_trainable_stages(bb, ["layer1"])
    model.eval()
    _set_modes(model, ["layer1"])
    assert model.training and bb.body.layer1.training
    assert not bb.body.bn_plain.training and not bb.body.drop.training
    with pytest.raises(RuntimeError, match="should train"):
        _set_modes(model, [])


def test_set_trainable_stages_keeps_the_backbone_mode():
    bb = _backbone_with_parameter_free_parts().train()
    set_trainable_stages(bb, ["layer1"])
    assert bb.training and bb.body.layer1[1].training and not bb.body.bn_plain.training
    set_trainable_stages(bb.eval(), ["layer1"])
    assert not any(m.training for m in bb.modules())
