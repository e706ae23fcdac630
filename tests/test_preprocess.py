"""The batched preprocessing (helpers.data.preprocess) does what the backbone's evaluation transform does."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.data.preprocess import prefetched_batches, resized_crop, to_batch
from helpers.features.extract import FINAL, compute

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [64, 112, 224])
def test_batch_matches_the_torchvision_transform(orl, effnet, size):
    photos = orl.images[:6] + [orl.images[7].resize((140, 90)), orl.images[8].convert("L")]  # wide, grey
    ref = torch.stack([effnet.transform(size=size)(im.convert("RGB")) for im in photos]).numpy()
    x = to_batch(photos, size, effnet.mean, effnet.std)
    assert x.shape == ref.shape and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert np.abs(x - ref).max() < 1e-4           # both resize in float (measured: 2e-5 at most)
    assert np.abs(x - ref).mean() < 1e-5


def test_crop_geometry_follows_torchvision():
    img = Image.fromarray(np.arange(90 * 140 * 3, dtype=np.uint8).reshape(90, 140, 3) % 251)
    assert resized_crop(img, 64).shape == (64, 64, 3)
    same = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    assert resized_crop(same, 64).shape == (64, 64, 3)


def test_prefetched_batches_cover_every_photo_in_order(orl, effnet):
    photos = orl.images[:11]
    batches = list(prefetched_batches(photos, 32, effnet.mean, effnet.std, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 3]
    assert np.array_equal(np.concatenate(batches), to_batch(photos, 32, effnet.mean, effnet.std))
    serial = list(prefetched_batches(photos, 32, effnet.mean, effnet.std, batch_size=4, ahead=False))
    assert [len(b) for b in serial] == [4, 4, 3] and np.array_equal(np.concatenate(serial), np.concatenate(batches))
    assert list(prefetched_batches([], 32, effnet.mean, effnet.std, 4)) == []


def test_features_agree_with_the_torchvision_path(orl, effnet):
    photos = orl.images[:8]
    fast = compute(effnet, photos, size=112, engine="torch")[FINAL].numpy()
    with torch.inference_mode():
        ref = effnet.eval()(torch.stack([effnet.transform(size=112)(im) for im in photos])).numpy()
    cos = (fast * ref).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99999


def test_resize_is_the_same_linear_map_as_pillow_for_odd_sizes():
    rng = np.random.default_rng(0)
    for w, h, size in [(92, 112, 224), (300, 200, 64), (64, 64, 64), (50, 700, 32)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        a = np.asarray(img, dtype=np.float32)
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        pil = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), mode="F")
                                   .resize((nw, nh), Image.BILINEAR)
                                   .crop((left, top, left + size, top + size))) for c in range(3)], -1)
        assert np.abs(resized_crop(img, size) - pil).max() < 1e-3   # Pillow, channel by channel, in float


def test_compute_default_is_the_eval_transform_batched(orl, effnet):
    photos = orl.images[:10]
    fast = compute(effnet, photos, engine="torch", size=64)[FINAL]
    slow = compute(effnet, photos, transform=effnet.transform(size=64), engine="torch")[FINAL]
    assert fast.shape == slow.shape == (10, effnet.feature_dim)
    assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-4)


def test_large_and_mixed_photos_follow_the_transform_on_both_resize_paths(effnet):
    """A photo over DENSE_UP_TO x the size goes through the taps, a small one through dense products;
    mixed sizes in one batch land in their own rows."""
    from helpers.data.preprocess import DENSE_UP_TO
    rng = np.random.default_rng(1)
    big = Image.fromarray(rng.integers(0, 256, (40 * DENSE_UP_TO, 31 * DENSE_UP_TO, 3), dtype=np.uint8))
    small = Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    photos = [small, big, small]
    x = to_batch(photos, 32, effnet.mean, effnet.std)
    ref = torch.stack([effnet.transform(size=32)(im) for im in photos]).numpy()
    assert np.abs(x - ref).max() < 1e-4
