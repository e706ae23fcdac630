"""The on-disk feature cache: hit, invalidation by pixels/preprocessing, corrupt files, atomic writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import features as feats_mod
from helpers.features import extract_features
from helpers.io import atomic_save

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64  # a small input keeps each backbone pass well under a second


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("FACE_COURSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


@pytest.fixture
def six(orl):
    """Six ORL photos (copies: tests may change their pixels)."""
    return [im.copy() for im in orl.images[:6]]


@pytest.fixture
def counted(monkeypatch):
    """Counts real backbone passes (compute_features calls) made by extract_features."""
    calls = []
    real = feats_mod.compute_features

    def counting(backbone, images, *args, **kwargs):
        calls.append(len(images))
        return real(backbone, images, *args, **kwargs)

    monkeypatch.setattr(feats_mod, "compute_features", counting)
    return calls


def _extract(effnet, images, size=SIZE):
    return extract_features(effnet, images, batch_size=8, transform=effnet.transform(size=size),
                            progress=False)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_second_call_reads_from_cache(effnet, six, cache, counted, capsys, monkeypatch):
    first = _extract(effnet, six)
    assert first.shape == (6, 1280) and torch.isfinite(first).all()
    assert "computed" in capsys.readouterr().out and counted == [6]
    files = _files(cache)
    assert len(files) == 1 and files[0].startswith("efficientnet_lite0-") and files[0].endswith(".pt")

    def must_not_compute(*a, **k):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(feats_mod, "compute_features", must_not_compute)
    second = _extract(effnet, six)
    assert "read from cache" in capsys.readouterr().out
    assert torch.equal(first, second)


def test_cache_matches_uncached_computation(effnet, six, cache):
    cached = _extract(effnet, six)
    before = _files(cache)
    plain = extract_features(effnet, six, batch_size=8, transform=effnet.transform(size=SIZE),
                             cache=False, progress=False)
    torch.testing.assert_close(cached, plain)
    assert _files(cache) == before and len(before) == 1  # cache=False wrote nothing new


def test_changed_pixels_invalidate(effnet, six, cache, counted, capsys):
    first = _extract(effnet, six)
    changed = [im.copy() for im in six]
    changed[3].putpixel((40, 50), (255, 0, 0))
    second = _extract(effnet, changed)
    assert counted == [6, 6]
    out = capsys.readouterr().out
    assert out.count("computed") == 2 and "read from cache" not in out
    assert len(_files(cache)) == 2
    torch.testing.assert_close(second[[0, 1, 2, 4, 5]], first[[0, 1, 2, 4, 5]])
    assert not torch.equal(second[3], first[3])
    _extract(effnet, six)  # the original photos still hit their own file
    assert counted == [6, 6]


def test_other_preprocessing_or_order_invalidates(effnet, six, cache, counted):
    _extract(effnet, six)
    _extract(effnet, six, size=SIZE + 16)  # another input size
    _extract(effnet, six[::-1])            # same photos, another order
    assert counted == [6, 6, 6] and len(_files(cache)) == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "nan"])
def test_damaged_cache_file_is_rebuilt(effnet, six, cache, counted, capsys, damage):
    first = _extract(effnet, six)
    (name,) = _files(cache)
    path = cache / name
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "wrong_shape":
        torch.save(torch.zeros(5, 1280), path)
    else:
        bad = first.clone()
        bad[0, 0] = float("nan")
        torch.save(bad, path)
    capsys.readouterr()
    rebuilt = _extract(effnet, six)
    out = capsys.readouterr().out
    assert "unreadable" in out and "rebuilding" in out and name in out
    assert counted == [6, 6]
    torch.testing.assert_close(rebuilt, first)
    # the rebuilt file is good again: next call is a cache hit
    loaded = torch.load(path, weights_only=True)
    torch.testing.assert_close(loaded, first)
    _extract(effnet, six)
    assert counted == [6, 6]


def test_computed_and_cached_features_are_ordinary_tensors(effnet, six, cache):
    """First call (computed) and second (cache hit) must behave the same: in-place edits work."""
    for _ in range(2):
        x = _extract(effnet, six)
        assert not x.is_inference()
        x -= x.mean(0)  # raised "Inplace update to inference tensor" on the computed call
        w = torch.ones(1280, requires_grad=True)
        (x @ w).sum().backward()
        assert w.grad is not None


def test_extract_does_not_change_backbone_mode(effnet, six, cache):
    effnet.eval()
    _extract(effnet, six)
    assert not effnet.training


def test_atomic_save_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "x.pt"
    atomic_save(torch.arange(5), target)
    assert torch.equal(torch.load(target, weights_only=True), torch.arange(5))
    atomic_save(torch.arange(3), target)  # overwrite
    assert torch.equal(torch.load(target, weights_only=True), torch.arange(3))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.pt"]


def test_atomic_save_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.pt"
    atomic_save(torch.ones(2), target)
    with pytest.raises(Exception):
        atomic_save({"cannot pickle": lambda: None}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    assert torch.equal(torch.load(target, weights_only=True), torch.ones(2))


def test_extract_writes_no_temp_files(effnet, six, cache):
    _extract(effnet, six)
    _extract(effnet, six[:3])
    names = _files(cache)
    assert len(names) == 2 and all(n.endswith(".pt") and not n.startswith(".") for n in names)


def test_changed_backbone_weights_invalidate(cache, counted, capsys):
    """The cache key holds a digest of the weights: a fine-tuned (here: edited in place) backbone
    computes new features instead of reading the old backbone's file."""
    from PIL import Image

    from tiny_backbone import tiny_backbone

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(4)]
    bb = tiny_backbone()
    first = extract_features(bb, images, progress=False)
    assert torch.equal(extract_features(bb, images, progress=False), first)     # unchanged weights: a hit
    assert counted == [4] and "read from cache" in capsys.readouterr().out
    p = next(bb.parameters())
    with torch.no_grad():
        p.add_(1.0)
    second = extract_features(bb, images, progress=False)
    assert counted == [4, 4] and "read from cache" not in capsys.readouterr().out
    assert not torch.equal(second, first)
    assert len(_files(cache)) == 2
    torch.testing.assert_close(second, extract_features(bb, images, cache=False, progress=False))
