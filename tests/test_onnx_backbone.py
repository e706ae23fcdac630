"""The ONNX Runtime engine of the feature extractor: same features as PyTorch, exported once per
weights and input size, fresh weights never served stale, a clear fallback when it cannot run."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers.features import onnx_backbone
from helpers.features.extract import FINAL, compute
from tiny_backbone import tiny_backbone

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime missing")]


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """An empty model cache and no sessions left over from other tests."""
    monkeypatch.setenv("FACE_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACE_COURSE_ENGINE", raising=False)
    onnx_backbone._SESSIONS.clear()
    return tmp_path / "cache" / "models" / "onnx"


def _features(bb, images, engine, size=64):
    return compute(bb, images, size=size, batch_size=4, engine=engine)[FINAL]


def test_onnxruntime_gives_pytorchs_features(effnet, orl, fresh):
    images = orl.images[:6]
    a, b = _features(effnet, images, "torch"), _features(effnet, images, "onnxruntime")
    assert a.shape == b.shape == (6, 1280) and b.dtype == torch.float32 and not b.is_inference()
    assert (a - b).abs().max().item() < 1e-4  # measured: 9e-6 at 224 px, 2e-5 at 112 px (features up to ~6)
    assert len(list(fresh.glob("*.onnx"))) == 1  # exported once ...
    _features(effnet, images[:2], "onnxruntime")
    assert len(list(fresh.glob("*.onnx"))) == 1  # ... and reused
    _features(effnet, images[:2], "onnxruntime", size=32)
    assert len(list(fresh.glob("*.onnx"))) == 2  # another input size: another export


def test_auto_engine_is_onnxruntime_on_cpu_and_env_overrides(monkeypatch):
    cpu = torch.device("cpu")
    assert onnx_backbone.resolve_engine(None, cpu) == "onnxruntime"
    assert onnx_backbone.resolve_engine("auto", torch.device("cuda")) == "torch"
    monkeypatch.setenv("FACE_COURSE_ENGINE", "torch")
    assert onnx_backbone.resolve_engine(None, cpu) == "torch"
    with pytest.raises(ValueError, match="engine must be one of"):
        onnx_backbone.resolve_engine("tensorrt", cpu)


def test_changed_weights_are_exported_again_never_stale(orl, fresh):
    bb = tiny_backbone(0)
    images = orl.images[:4]
    before = _features(bb, images, "onnxruntime", size=32)
    with torch.no_grad():
        bb.body.layer1.weight.mul_(-1.0)  # as fine-tuning would change it
    after = _features(bb, images, "onnxruntime", size=32)
    assert torch.allclose(after, _features(bb, images, "torch", size=32), atol=1e-5)
    assert not torch.allclose(before, after, atol=1e-3)
    assert len(list(fresh.glob("*.onnx"))) == 2


def test_backbone_mode_and_device_kept(orl):
    bb = tiny_backbone(0).train()
    _features(bb, orl.images[:2], "onnxruntime", size=32)
    assert bb.training
    bb.eval()
    _features(bb, orl.images[:2], "onnxruntime", size=32)
    assert not bb.training


def test_without_onnxruntime_pytorch_takes_over_and_says_why(orl, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(onnx_backbone.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    monkeypatch.setattr("helpers.features.extract._SAID", set())
    bb = tiny_backbone(0)
    x = _features(bb, orl.images[:3], "onnxruntime", size=32)
    assert torch.allclose(x, _features(bb, orl.images[:3], "torch", size=32))
    out = capsys.readouterr().out
    assert "onnxruntime is not installed" in out and "using PyTorch instead" in out


def test_a_backbone_that_cannot_export_falls_back(orl, monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("unsupported operator Foo")

    monkeypatch.setattr(onnx_backbone.torch.onnx, "export", broken)
    monkeypatch.setattr("helpers.features.extract._SAID", set())
    bb = tiny_backbone(0)
    x = _features(bb, orl.images[:2], "onnxruntime", size=32)
    assert x.shape == (2, 8)
    assert "exporting tiny to ONNX failed: unsupported operator Foo; using PyTorch instead" in capsys.readouterr().out


def test_old_exports_are_pruned(orl, fresh, monkeypatch):
    monkeypatch.setattr(onnx_backbone, "KEEP_FILES", 2)
    for seed in range(4):
        _features(tiny_backbone(seed), orl.images[:1], "onnxruntime", size=32)
    assert len(list(fresh.glob("*.onnx"))) == 2


def test_weights_digest_follows_in_place_changes_and_replaced_tensors():
    bb = tiny_backbone(0)
    first = onnx_backbone.weights_digest(bb)
    assert onnx_backbone.weights_digest(bb) == first  # unchanged: the remembered hash
    original = bb.body.layer1.bias.detach().clone()
    with torch.no_grad():
        bb.body.layer1.bias.add_(1.0)  # in place, as an optimiser step
    second = onnx_backbone.weights_digest(bb)
    assert second != first
    bb.body.layer1.bias = torch.nn.Parameter(original)  # a new tensor holding the old values
    assert onnx_backbone.weights_digest(bb) == first
    bb.load_state_dict(tiny_backbone(1).state_dict())  # copied in place
    assert onnx_backbone.weights_digest(bb) == onnx_backbone.weights_digest(tiny_backbone(1))
