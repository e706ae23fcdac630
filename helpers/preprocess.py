"""Photos -> a ready (B, 3, size, size) float32 batch, faster than one torchvision transform per photo.

Does what `Backbone.transform(size=size)` does at evaluation time — shorter side resized to
`size` (bilinear, antialiased), centre crop to size x size, scale to [0, 1], normalise with the
backbone's mean and std — in float, as `Backbone.transform` does since it stopped rounding to grey
levels. A resize is linear: for one photo size it is a (size, h) matrix on the left and a (w, size)
matrix on the right of each colour plane, crop included. The matrices are Pillow's own float
bilinear kernel (read off by resizing an identity image, once per photo size), and a whole batch of
same-sized photos is resized at once: each output pixel mixes only a few input pixels (2 per axis when
enlarging), so the products are sums over those few taps, several times faster than Pillow photo by
photo. tests/test_preprocess.py bounds the difference from torchvision's transform.
`prefetched_batches` prepares the next batch while the caller runs the model on the current one.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np
from PIL import Image


def _geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(new width, new height, top, left): shorter side to `size`, torchvision's centre-crop rounding."""
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    return nw, nh, int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))


def _axis_matrix(n_in: int, n_out: int, start: int, size: int) -> np.ndarray:
    """(size, n_in) float32: output pixels start..start+size of Pillow's float bilinear resize n_in -> n_out."""
    if n_in == n_out:
        return np.eye(n_in, dtype=np.float32)[start:start + size]
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32), mode="F")
    impulse = np.asarray(eye.resize((n_out, n_in), Image.BILINEAR))  # row k: the response to pixel k
    return np.ascontiguousarray(impulse.T[start:start + size])


@lru_cache(maxsize=64)
def resize_matrices(w: int, h: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (size, h), cols (size, w)): `rows @ plane @ cols.T` is the resized, centre-cropped plane."""
    nw, nh, top, left = _geometry(w, h, size)
    return _axis_matrix(h, nh, top, size), _axis_matrix(w, nw, left, size)


@lru_cache(maxsize=64)
def _taps(w: int, h: int, size: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The matrices of `resize_matrices` as (index, weight) pairs, each (size, K): the K input pixels
    each output pixel mixes (2 when enlarging). A resize then costs K multiply-adds per output pixel."""
    def sparse(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = max(1, int((m != 0).sum(1).max()))
        idx, wts = np.zeros((len(m), k), np.intp), np.zeros((len(m), k), np.float32)
        for r, row in enumerate(m):
            nz = np.flatnonzero(row)
            idx[r, :len(nz)], wts[r, :len(nz)] = nz, row[nz]
        return idx, wts
    rows, cols = resize_matrices(w, h, size)
    return sparse(rows), sparse(cols)


def _planes(img: Image.Image) -> np.ndarray:
    """(3, h, w) float32 in [0, 255]."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1)


def _resize_planes(planes: np.ndarray, w: int, h: int, size: int) -> np.ndarray:
    """(n, 3, h, w) -> (n, 3, size, size): rows, then columns, each a sum over the K taps (elementwise
    float32 multiply-adds: the same result on every CPU). Both passes gather along axis 2 (fast in
    NumPy), so the column pass works on the transposed rows and the result is a transposed view."""
    (ri, rw), (ci, cw) = _taps(w, h, size)
    y = rw[:, 0, None] * planes[:, :, ri[:, 0], :]
    for k in range(1, ri.shape[1]):
        y += rw[:, k, None] * planes[:, :, ri[:, k], :]                 # (n, 3, size, w)
    y = np.ascontiguousarray(y.transpose(0, 1, 3, 2))                  # (n, 3, w, size)
    z = cw[:, 0, None] * y[:, :, ci[:, 0], :]
    for k in range(1, ci.shape[1]):
        z += cw[:, k, None] * y[:, :, ci[:, k], :]                       # (n, 3, size: columns, size: rows)
    return z.transpose(0, 1, 3, 2)


def resized_crop(img: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255]: shorter side to `size` (bilinear, antialiased, in float
    like `Backbone.transform`: no rounding to grey levels, the same on every CPU), then the centre crop."""
    return _resize_planes(_planes(img)[None], *img.size, size)[0].transpose(1, 2, 0)


def to_batch(images: Sequence[Image.Image], size: int, mean, std, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """(B, 3, size, size) float32, C-contiguous: resized, cropped, scaled and normalised.

    Photos of one size are resized together; `pool` converts them to arrays in parallel."""
    out = np.empty((len(images), 3, size, size), np.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.size, []).append(i)
    for (w, h), idx in groups.items():
        ims = [images[i] for i in idx]
        planes = np.stack(list(pool.map(_planes, ims)) if pool else [_planes(im) for im in ims])  # (n, 3, h, w)
        out[idx] = _resize_planes(planes, w, h, size)
    scale = (1.0 / (255.0 * np.asarray(std, np.float32)))[:, None, None]
    out *= scale
    out -= (np.asarray(mean, np.float32) / np.asarray(std, np.float32))[:, None, None]
    return out


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
