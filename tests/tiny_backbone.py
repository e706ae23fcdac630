"""A tiny, seeded Backbone (32 px, 8 features) so tests of the pipeline run in milliseconds."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from helpers.models.backbones import Backbone, PretrainedConfig, SequentialStages


def tiny_backbone(seed: int = 0) -> Backbone:
    """conv -> BN -> ReLU -> conv -> pool: same interface as the real backbones (stages, stage API, transform)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    body = SequentialStages(
        OrderedDict(conv1=nn.Conv2d(3, 8, 3, stride=2, padding=1), bn1=nn.BatchNorm2d(8), relu=nn.ReLU(),
                    layer1=nn.Conv2d(8, 8, 3, stride=2, padding=1), pool=nn.AdaptiveAvgPool2d(1),
                    flatten=nn.Flatten(1)),
        OrderedDict(stem=["conv1", "bn1"], layer1=["layer1"], layer2=[], layer3=[], layer4=[]))
    torch.random.set_rng_state(gen_state)
    return Backbone(body, 8, "tiny", f"random init seed {seed}", "test", PretrainedConfig(input_size=32)).eval()
