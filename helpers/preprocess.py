"""Photos -> a ready (B, 3, size, size) float32 batch, faster than one torchvision transform per photo.

Does what `Backbone.transform(size=size)` does at evaluation time — shorter side resized to
`size` (bilinear), centre crop to size x size, scale to [0, 1], normalise with the backbone's mean
and std — but resizes with Pillow (in worker threads: Pillow releases the GIL while resizing) and
converts and normalises the whole batch at once in NumPy. Pixels can differ from torchvision's
tensor resize by one grey level (rounding), so values by up to ~0.02 after normalising; features
agree to cosine > 0.9999 (tests/test_preprocess.py). `prefetched_batches` prepares the next batch
while the caller runs the model on the current one.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
from PIL import Image


def resized_crop(img: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8: shorter side to `size` (bilinear, as torchvision computes the size),
    then the centre crop (torchvision's rounding)."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)))


def to_batch(images: Sequence[Image.Image], size: int, mean, std, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """(B, 3, size, size) float32, C-contiguous: resized, cropped, scaled and normalised."""
    crops = list(pool.map(lambda im: resized_crop(im, size), images)) if pool else \
        [resized_crop(im, size) for im in images]
    x = np.stack(crops).astype(np.float32)
    scale = (1.0 / (255.0 * np.asarray(std, np.float32)))
    x = x * scale - np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def prefetched_batches(images: Sequence[Image.Image], size: int, mean, std, batch_size: int,
                       workers: int = 2) -> Iterator[np.ndarray]:
    """Batches of `to_batch`, the next one prepared in the background while the current one is used."""
    starts = list(range(0, len(images), batch_size))
    if not starts:
        return
    with ThreadPoolExecutor(max(1, workers)) as pool, ThreadPoolExecutor(1) as ahead:
        job = ahead.submit(to_batch, images[:batch_size], size, mean, std, pool)
        for k in range(len(starts)):
            batch = job.result()
            if k + 1 < len(starts):
                s = starts[k + 1]
                job = ahead.submit(to_batch, images[s:s + batch_size], size, mean, std, pool)
            yield batch
