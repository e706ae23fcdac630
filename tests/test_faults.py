"""Caches and saved files survive faults: an interrupt mid-write never leaves a half-written file.

(tests/test_features.py covers damaged cache files being detected and rebuilt.)
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from helpers.features import atomic_save, extract_features
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
