"""Mildly degraded copies of photos: what a phone photo does to a face, in small doses.

`degrade(img, seed, index)` applies, deterministically per (seed, index): a rotation uniform in
±10° (bilinear, corners filled with the photo's mean colour), brightness and contrast each
× uniform 0.75–1.25, a Gaussian blur of radius (sigma) uniform 0–1 px, and JPEG compression at
a quality drawn uniformly from 60–90. The benchmarks' robustness rows and
`python -m helpers evaluate --degrade` use it on query photos only (enrolment photos stay clean).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

DEGRADE = {
    "rotation_deg": 10.0,          # uniform in [-10, 10]
    "brightness": (0.75, 1.25),    # PIL ImageEnhance.Brightness factor
    "contrast": (0.75, 1.25),      # PIL ImageEnhance.Contrast factor
    "blur_sigma": (0.0, 1.0),      # PIL GaussianBlur radius
    "jpeg_quality": (60, 90),      # inclusive
}


def degrade(img: Image.Image, seed: int, index: int) -> Image.Image:
    """One mildly degraded copy of `img` (RGB), the same for the same (seed, index).

    Notebook 06.
    """
    rng = np.random.default_rng([seed, index, 7])
    d = DEGRADE
    img = img.convert("RGB")
    grey = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(0))
    out = img.rotate(float(rng.uniform(-d["rotation_deg"], d["rotation_deg"])),
                     resample=Image.BILINEAR, fillcolor=grey)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(*d["brightness"])))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(*d["contrast"])))
    out = out.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*d["blur_sigma"]))))
    return jpeg_roundtrip(out, int(rng.integers(d["jpeg_quality"][0], d["jpeg_quality"][1] + 1)))


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    """`img` (RGB) saved as JPEG at `quality` and read back, in memory.

    Notebook 06, inside `degrade`.
    """
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")
