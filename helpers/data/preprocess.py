"""Photos -> a ready (B, 3, size, size) float32 batch, faster than one torchvision transform per photo.

Does what `Backbone.transform(size=size)` does at evaluation time — shorter side resized to
`size` (bilinear, antialiased), centre crop to size x size, scale to [0, 1], normalise with the
backbone's mean and std — in float, as `Backbone.transform` does since it stopped rounding to grey
levels. A resize is linear: for one photo size it is a (size, h) matrix on the left and a (w, size)
matrix on the right of each colour plane, crop included. The matrices are Pillow's own float
bilinear kernel (read off by resizing an identity image, once per photo size), and a whole batch of
same-sized photos is resized at once by two matrix products per colour plane (BLAS), with the
scaling and normalisation folded into them: several times faster than Pillow photo by photo.
tests/test_preprocess.py bounds the difference from torchvision's transform.
`prefetched_batches` yields batches, on a GPU preparing the next one while the model runs on the current one.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

# Feature caches key on this (helpers.features.representations, benchmarks/featcache.py): change it when the
# numbers this module produces change by more than float rounding.
VERSION = "float-bilinear-2"


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
    """(rows (size, h), cols (size, w)): `rows @ plane @ cols.T` is the resized, centre-cropped plane.

    Notebook 01, inside `cache_demo`.
    """
    nw, nh, top, left = _geometry(w, h, size)
    return _axis_matrix(h, nh, top, size), _axis_matrix(w, nw, left, size)


@lru_cache(maxsize=64)
def _taps(w: int, h: int, size: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The matrices of `resize_matrices` as (index, weight) pairs, each (size, K): the K input pixels
    each output pixel mixes (about 2 x the shrink factor when shrinking)."""
    def sparse(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = max(1, int((m != 0).sum(1).max()))
        idx, wts = np.zeros((len(m), k), np.intp), np.zeros((len(m), k), np.float32)
        for r, row in enumerate(m):
            nz = np.flatnonzero(row)
            idx[r, :len(nz)], wts[r, :len(nz)] = nz, row[nz]
        return idx, wts
    rows, cols = resize_matrices(w, h, size)
    return sparse(rows), sparse(cols)


def _resize_by_taps(planes: np.ndarray, w: int, h: int, size: int) -> np.ndarray:
    """(n, 3, h, w) -> (n, 3, size, size) for photos much larger than `size`: rows, then columns, each a
    sum over the K taps, so the cost follows the output, not the input (a dense product would not)."""
    (ri, rw), (ci, cw) = _taps(w, h, size)
    y = rw[:, 0, None] * planes[:, :, ri[:, 0], :]
    for k in range(1, ri.shape[1]):
        y += rw[:, k, None] * planes[:, :, ri[:, k], :]                 # (n, 3, size, w)
    y = np.ascontiguousarray(y.transpose(0, 1, 3, 2))                  # (n, 3, w, size)
    z = cw[:, 0, None] * y[:, :, ci[:, 0], :]
    for k in range(1, ci.shape[1]):
        z += cw[:, k, None] * y[:, :, ci[:, k], :]                       # (n, 3, size: columns, size: rows)
    return z.transpose(0, 1, 3, 2)


DENSE_UP_TO = 4  # photos up to 4 x `size` on their longer side are resized by dense products, larger by taps


def _planes(img: Image.Image) -> np.ndarray:
    """(3, h, w) float32 in [0, 255]."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1)


def _resize_planes(planes: np.ndarray, w: int, h: int, size: int, scale=(1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0),
                   out: np.ndarray | None = None) -> np.ndarray:
    """(n, 3, h, w) -> (n, 3, size, size): channel c is `scale[c] * (rows @ (plane + shift[c]) @ cols.T)`.

    Two matrix products per channel (BLAS), the cheaper order first (photos more than DENSE_UP_TO x
    `size`: sums over the few input pixels each output pixel mixes, `_resize_by_taps`). Every row of
    `rows` and `cols` sums to 1, so adding `shift` to the small input equals adding it to the output:
    the normalisation costs nothing extra. BLAS kernels differ between CPUs in the last bits (about 1e-7 relative)."""
    out = np.empty((len(planes), 3, size, size), np.float32) if out is None else out
    if max(w, h) > DENSE_UP_TO * size:
        z = _resize_by_taps(planes, w, h, size)
        for c in range(3):
            np.multiply(z[:, c] + np.float32(shift[c]), np.float32(scale[c]), out=out[:, c])
        return out
    rows, cols = resize_matrices(w, h, size)
    rows_first = size * w * (h + size) <= size * h * (w + size)
    for c in range(3):
        x = planes[:, c] + np.float32(shift[c]) if shift[c] else planes[:, c]   # (n, h, w)
        r = rows * np.float32(scale[c]) if scale[c] != 1 else rows
        if rows_first:
            np.matmul(np.matmul(r, x), cols.T, out=out[:, c])                   # (size, w) then (size, size)
        else:
            np.matmul(r, np.matmul(x, cols.T), out=out[:, c])                   # (h, size) then (size, size)
    return out


def resized_crop(img: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255]: shorter side to `size` (bilinear, antialiased, in float
    like `Backbone.transform`: no rounding to grey levels), then the centre crop.

    Not run by a notebook or the command line.
    """
    return _resize_planes(_planes(img)[None], *img.size, size)[0].transpose(1, 2, 0)


def to_batch(images: Sequence[Image.Image], size: int, mean, std, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """(B, 3, size, size) float32, C-contiguous: resized, cropped, scaled to [0, 1] and normalised
    ((x / 255 - mean) / std, folded into the resize).

    Photos of one size are resized together; `pool` converts them to arrays in parallel.

    Notebook 01, inside `cache_demo`.
    """
    out = np.empty((len(images), 3, size, size), np.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.size, []).append(i)
    scale = [1.0 / (255.0 * float(s)) for s in std]
    shift = [-255.0 * float(m) for m in mean]
    for (w, h), idx in groups.items():
        ims = [images[i] for i in idx]
        planes = np.stack(list(pool.map(_planes, ims)) if pool else [_planes(im) for im in ims])  # (n, 3, h, w)
        with _one_blas_thread():
            if len(groups) == 1:
                _resize_planes(planes, w, h, size, scale, shift, out=out)
            else:
                out[idx] = _resize_planes(planes, w, h, size, scale, shift)
    return out


@lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def _one_blas_thread():
    """BLAS on the calling thread only, for the duration of a `with`. These products are small, and a
    BLAS pool's threads keep spinning after each one, taking the cores from the model that runs
    meanwhile (measured once by hand on a 2-core machine: end to end 116-134 images/s with 2 BLAS
    threads, 150-176 with one)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def prefetched_batches(images: Sequence[Image.Image], size: int, mean, std, batch_size: int,
                       workers: int = 2, ahead: bool = True) -> Iterator[np.ndarray]:
    """Batches of `to_batch`. With `ahead`, the next one is prepared in the background while the current
    one is used: worth it when the model runs on a GPU. When it runs on the CPU with every core, leave
    `ahead` off: a preparing thread only takes cores from the model (measured once by hand on a 2-core
    machine, 12 alternating rounds: 135 images/s prefetched vs 156 one after the other).

    Notebook 01, inside `cache_demo`.
    """
    starts = list(range(0, len(images), batch_size))
    if not starts:
        return
    if not ahead:
        for s in starts:
            yield to_batch(images[s:s + batch_size], size, mean, std)
        return
    with ThreadPoolExecutor(max(1, workers)) as pool, ThreadPoolExecutor(1) as pending:
        job = pending.submit(to_batch, images[:batch_size], size, mean, std, pool)
        for k in range(len(starts)):
            batch = job.result()
            if k + 1 < len(starts):
                s = starts[k + 1]
                job = pending.submit(to_batch, images[s:s + batch_size], size, mean, std, pool)
            yield batch
