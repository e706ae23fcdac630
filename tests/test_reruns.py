"""Reruns give identical numbers: the same fit twice with the same seed, the same features twice.

(The notebooks are rerun by nbval, which compares their printed numbers with the committed ones.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.features.extract import extract_features
from helpers.models.face_model import build_model
from helpers.runtime import set_seed, threads
from helpers.train.fit import ImageDataset, fit, train_head_on_features
from tiny_backbone import tiny_backbone


@pytest.fixture
def single_thread():
    """One torch thread: small tensors stall badly on two busy cores."""
    with threads(1):
        yield


pytestmark = pytest.mark.usefixtures("single_thread")


def _images(n: int = 12, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(n)]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _numbers(h) -> tuple:
    return h.loss, h.train_acc, h.val_acc, h.diverged


@pytest.fixture(scope="module")
def features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=g) * 3
    y = torch.arange(40) % 4
    x = centres[y] + torch.randn(40, 32, generator=g)
    return x[:28], y[:28], x[28:], y[28:]


@pytest.mark.parametrize("head", ["arcface", "cosface", "softmax"])
def test_head_on_features_twice_is_bitwise_identical(features, head):
    a_model, a = train_head_on_features(*features, head=head, epochs=8, seed=3, progress=False)
    b_model, b = train_head_on_features(*features, head=head, epochs=8, seed=3, progress=False)
    assert _numbers(a) == _numbers(b) and a.epochs == 8
    assert _same_weights(a_model, b_model)
    c_model, c = train_head_on_features(*features, head=head, epochs=8, seed=4, progress=False)
    assert not _same_weights(a_model, c_model)  # the seed matters: the comparison is not vacuous


def test_end_to_end_fit_with_augmentation_twice_is_bitwise_identical():
    images, labels = _images(), [0, 1, 2] * 4

    def run(seed):
        set_seed(seed)  # as a notebook does before building its model (the head's init is random)
        backbone = tiny_backbone()
        model = build_model(3, backbone=backbone, freeze_backbone=False)
        data = ImageDataset(images, labels, backbone.transform(train=True))
        torch.rand(5)   # whatever happens to the global generator in between: fit reseeds it
        hist = fit(model, data, data, epochs=3, batch_size=4, seed=seed, device="cpu", progress=False)
        return model, hist

    (ma, a), (mb, b) = run(7), run(7)
    assert _numbers(a) == _numbers(b) and a.epochs == 3
    assert _same_weights(ma, mb)
    mc, _ = run(8)
    assert not _same_weights(ma, mc)


def test_features_twice_are_identical_with_and_without_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACE_COURSE_CACHE", str(tmp_path / "cache"))
    images, backbone = _images(10), tiny_backbone()
    plain = [extract_features(backbone, images, batch_size=4, cache=False, progress=False) for _ in range(2)]
    assert torch.equal(plain[0], plain[1])
    cached = [extract_features(backbone, images, batch_size=4, progress=False) for _ in range(2)]
    out = capsys.readouterr().out
    assert "computed" in out and "read from cache" in out   # the second one really came from disk
    assert torch.equal(cached[0], cached[1]) and torch.equal(cached[0], plain[0])
    # another batch size gives the same numbers up to float rounding (eval mode, no batch statistics)
    other = extract_features(backbone, images, batch_size=3, cache=False, progress=False)
    torch.testing.assert_close(other, plain[0])
