"""Caches and saved files survive faults: an interrupt mid-write never leaves a half-written file.

(tests/test_features.py covers damaged cache files being detected and rebuilt.)
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from helpers.features import extract_features
from helpers.io import atomic_save
from tiny_backbone import tiny_backbone


def _images(n: int = 6) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def _interrupting_save(monkeypatch):
    """torch.save that writes half a file and then gets Ctrl-C."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save)
    return real


def test_interrupt_while_caching_features_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACE_COURSE_CACHE", str(cache))
    images, backbone = _images(), tiny_backbone()
    with monkeypatch.context() as m:
        _interrupting_save(m)
        with pytest.raises(KeyboardInterrupt):
            extract_features(backbone, images, progress=False)
    assert list((cache / "features").iterdir()) == []          # neither a cache file nor a temp file
    feats = extract_features(backbone, images, progress=False)  # the rerun computes and caches
    assert "computed" in capsys.readouterr().out
    again = extract_features(backbone, images, progress=False)
    assert "read from cache" in capsys.readouterr().out and torch.equal(feats, again)


def test_interrupt_while_overwriting_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    atomic_save({"w": torch.arange(4)}, target)
    with monkeypatch.context() as m:
        _interrupting_save(m)
        with pytest.raises(KeyboardInterrupt):
            atomic_save({"w": torch.zeros(4)}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(4))


# ------------------------------------------------------------------ saved recognisers (helpers/recognizer.py)

@pytest.fixture(scope="module")
def saved_recognizer(tmp_path_factory):
    """A small recogniser (EfficientNet-Lite0 architecture, no download) saved to a file."""
    recognizer = pytest.importorskip("helpers.recognizer")
    from helpers.backbones import load_backbone

    torch.manual_seed(0)
    backbone = load_backbone("efficientnet_lite0", pretrained=False, verbose=False)
    gallery = torch.nn.functional.normalize(torch.randn(2, backbone.feature_dim), dim=1)
    rec = recognizer.Recognizer(backbone, None, 64, ["alice", "bob"], gallery, threshold=0.4)
    path = rec.save(tmp_path_factory.mktemp("models") / "recognizer.pt")
    return recognizer, path


def test_interrupted_recognizer_save_keeps_the_previous_file(saved_recognizer, tmp_path, monkeypatch):
    recognizer, path = saved_recognizer
    target = tmp_path / "recognizer.pt"
    target.write_bytes(path.read_bytes())
    rec = recognizer.Recognizer.load(target)
    rec.threshold = 0.9
    with monkeypatch.context() as m:
        _interrupting_save(m)
        with pytest.raises(KeyboardInterrupt):
            rec.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["recognizer.pt"]   # no temp file left
    assert recognizer.Recognizer.load(target).threshold == pytest.approx(0.4)  # the old file, whole


def test_truncated_recognizer_file_gets_a_clear_error(saved_recognizer, tmp_path):
    recognizer, path = saved_recognizer
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(recognizer.RecognizerFileError, match="truncated or corrupted"):
        recognizer.Recognizer.load(cut)


def test_recognizer_for_other_people_or_backbone_gets_a_clear_error(saved_recognizer):
    recognizer, path = saved_recognizer
    with pytest.raises(recognizer.RecognizerFileError, match="enrolled for other people"):
        recognizer.Recognizer.load(path, expect_names=["alice", "carol"])
    with pytest.raises(recognizer.RecognizerFileError, match="but resnet18 was expected"):
        recognizer.Recognizer.load(path, expect_backbone="resnet18")
    assert recognizer.Recognizer.load(path, expect_names=["alice", "bob"]).names == ["alice", "bob"]
