"""Photos -> a ready (B, 3, size, size) float32 batch, faster than one torchvision transform per photo.

Does what `Backbone.transform(size=size)` does at evaluation time — shorter side resized to
`size` (bilinear), centre crop to size x size, scale to [0, 1], normalise with the backbone's mean
and std — but resizes with Pillow (in worker threads: Pillow releases the GIL while resizing) and
normalises the whole batch at once in NumPy. The resize runs in float (Pillow mode "F"), as
`Backbone.transform` does since it stopped rounding to grey levels; tests/test_preprocess.py bounds
the difference from torchvision's transform. `prefetched_batches` prepares the next batch
while the caller runs the model on the current one.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
from PIL import Image


def resized_crop(img: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255]: shorter side to `size` (bilinear, antialiased, computed
    in float like `Backbone.transform`: no rounding to grey levels, the same on every CPU), then the
    centre crop (torchvision's size and rounding)."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    a = np.asarray(img, dtype=np.float32)
    if (nw, nh) == (w, h):
        return a[top:top + size, left:left + size]
    box = (left, top, left + size, top + size)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), mode="F")
                                .resize((nw, nh), Image.BILINEAR).crop(box)) for c in range(3)], -1)


def to_batch(images: Sequence[Image.Image], size: int, mean, std, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """(B, 3, size, size) float32, C-contiguous: resized, cropped, scaled and normalised."""
    crops = list(pool.map(lambda im: resized_crop(im, size), images)) if pool else \
        [resized_crop(im, size) for im in images]
    x = np.stack(crops).astype(np.float32, copy=False)
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
