"""The one extractor and its on-disk cache: a hit, invalidation by each part of the key (pixels, weights,
preprocessing version, input size, normalisation, taps), damaged files reported, atomic writes, the
caller's backbone left as it was."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.features import extract as feats_mod
from helpers.features.extract import FINAL, extract, extract_features
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
    """Counts real backbone passes (`compute` calls) made by `extract`."""
    calls = []
    real = feats_mod.compute

    def counting(backbone, images, *args, **kwargs):
        calls.append(len(images))
        return real(backbone, images, *args, **kwargs)

    monkeypatch.setattr(feats_mod, "compute", counting)
    return calls


def _extract(effnet, images, size=SIZE):
    return extract_features(effnet, images, batch_size=8, size=size, progress=False)


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

    monkeypatch.setattr(feats_mod, "compute", must_not_compute)
    second = _extract(effnet, six)
    assert "read from cache" in capsys.readouterr().out
    assert torch.equal(first, second)


def test_cache_matches_uncached_computation(effnet, six, cache):
    cached = _extract(effnet, six)
    before = _files(cache)
    plain = extract_features(effnet, six, batch_size=8, size=SIZE, cache=False, progress=False)
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


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "nan", "missing_tap"])
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
        torch.save({FINAL: torch.zeros(5, 1280)}, path)
    elif damage == "missing_tap":
        torch.save({FINAL: first, "layer3": first}, path)  # another key set than the one asked for
    else:
        bad = first.clone()
        bad[0, 0] = float("nan")
        torch.save({FINAL: bad}, path)
    capsys.readouterr()
    rebuilt = _extract(effnet, six)
    out = capsys.readouterr().out
    assert "unreadable" in out and "rebuilding" in out and name in out
    assert counted == [6, 6]
    torch.testing.assert_close(rebuilt, first)
    # the rebuilt file is good again: next call is a cache hit
    loaded = torch.load(path, weights_only=True)
    torch.testing.assert_close(loaded[FINAL], first)
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


# ---------------------------------------------------------------------- each part of the one key

@pytest.fixture
def tiny_photos():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(4)]


def _tiny_extract(bb, photos, **kw):
    return extract(bb, photos, engine="torch", **kw)


def test_preprocessing_version_is_part_of_the_key(cache, counted, tiny_photos, monkeypatch):
    """A new `preprocess.VERSION` never reads features cached under the old one (features.py used to key
    on repr(transform), so a changed batched preprocessing served stale features)."""
    from tiny_backbone import tiny_backbone

    bb = tiny_backbone()
    _tiny_extract(bb, tiny_photos)
    _tiny_extract(bb, tiny_photos)
    assert counted == [4]
    monkeypatch.setattr(feats_mod, "PREPROCESS_VERSION", feats_mod.PREPROCESS_VERSION + "-changed")
    _tiny_extract(bb, tiny_photos)
    assert counted == [4, 4] and len(_files(cache)) == 2


def test_normalisation_is_part_of_the_key(cache, counted, tiny_photos):
    import dataclasses

    from tiny_backbone import tiny_backbone

    bb = tiny_backbone()
    first = _tiny_extract(bb, tiny_photos)[FINAL]
    bb.config = dataclasses.replace(bb.config, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    second = _tiny_extract(bb, tiny_photos)[FINAL]
    assert counted == [4, 4] and not np.allclose(first, second)


def test_input_size_is_part_of_the_key(cache, counted, tiny_photos):
    from tiny_backbone import tiny_backbone

    bb = tiny_backbone()
    first = _tiny_extract(bb, tiny_photos, size=32)[FINAL]
    second = _tiny_extract(bb, tiny_photos, size=40)[FINAL]
    assert counted == [4, 4] and not np.allclose(first, second)


def test_taps_are_part_of_the_key_and_returned_by_name(cache, counted, tiny_photos):
    from tiny_backbone import tiny_backbone

    bb = tiny_backbone()
    plain = _tiny_extract(bb, tiny_photos)
    tapped = _tiny_extract(bb, tiny_photos, taps=("stem", "layer1:2x2"))
    other = _tiny_extract(bb, tiny_photos, taps=("stem",))
    assert counted == [4, 4, 4] and len(_files(cache)) == 3
    assert set(plain) == {FINAL} and set(tapped) == {FINAL, "stem", "layer1:2x2"} and set(other) == {FINAL, "stem"}
    assert tapped["stem"].shape == (4, 8) and tapped["layer1:2x2"].shape == (4, 32)
    np.testing.assert_allclose(tapped[FINAL], plain[FINAL], atol=1e-6)
    # the taps are the stage outputs' averages: recomputed here from forward_intermediates
    x = torch.from_numpy(feats_mod.prefetched_batches(tiny_photos, 32, bb.mean, bb.std, 4, ahead=False)
                         .__next__())
    with torch.no_grad():
        stem = bb.forward_intermediates(x, ["stem"])["stem"]
    np.testing.assert_allclose(tapped["stem"], stem.mean((2, 3)).numpy(), atol=1e-5)
    with pytest.raises(KeyError, match="unknown stage 'layer9'"):
        extract(bb, tiny_photos, taps=("layer9",))


def test_extract_leaves_the_callers_backbone_as_it_was(cache, tiny_photos):
    """Device, memory format and mode: the extractor used to leave the backbone in channels_last."""
    from tiny_backbone import tiny_backbone

    for engine in ("torch", "onnxruntime"):
        bb = tiny_backbone().train()
        before = {n: (p.device, p.stride()) for n, p in bb.named_parameters()}
        extract(bb, tiny_photos, taps=("stem",), engine=engine, cache=False)
        assert bb.training
        assert {n: (p.device, p.stride()) for n, p in bb.named_parameters()} == before
        assert bb.body.conv1.weight.is_contiguous()   # not channels_last


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_extract_on_a_gpu_leaves_a_cpu_backbone_on_the_cpu(cache, tiny_photos):
    from tiny_backbone import tiny_backbone

    bb = tiny_backbone()
    on_gpu = extract(bb, tiny_photos, device="cuda", cache=False)[FINAL]
    assert next(bb.parameters()).device.type == "cpu"
    np.testing.assert_allclose(on_gpu, extract(bb, tiny_photos, engine="torch", device="cpu", cache=False)[FINAL],
                               atol=1e-4)
    bb.cuda()
    extract(bb, tiny_photos, device="cuda", cache=False)
    assert next(bb.parameters()).device.type == "cuda"
