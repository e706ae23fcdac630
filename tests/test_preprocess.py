"""The batched preprocessing (helpers.preprocess) does what the backbone's evaluation transform does."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.preprocess import prefetched_batches, resized_crop, to_batch
from helpers.representations import compute_pooled

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
    assert list(prefetched_batches([], 32, effnet.mean, effnet.std, 4)) == []


def test_features_agree_with_the_torchvision_path(orl, effnet):
    photos = orl.images[:8]
    fast = compute_pooled(effnet, photos, 112, engine="torch")["final"].numpy()
    with torch.inference_mode():
        ref = effnet.eval()(torch.stack([effnet.transform(size=112)(im) for im in photos])).numpy()
    cos = (fast * ref).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99999
