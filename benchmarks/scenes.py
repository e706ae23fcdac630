"""Faces in scenes: an ORL photo made into a photo as a phone takes it (benchmarks/protocols/alignment.md).

`scene(face, seed, second=None)` -> (JPEG bytes, info): the face enlarged 2-4x, rotated +-15 degrees,
tinted to a skin colour and blended with a soft elliptical edge into a 640-1024 px colour scene (a
random crop of a scikit-image sample photo without people, or a smooth random texture); an optional
second, smaller face; sometimes stored rotated by 90 or 270 degrees with the EXIF Orientation tag
that turns it upright again. Everything is drawn from `seed`.
"""
from __future__ import annotations

from functools import lru_cache
from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SAMPLES = ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "brick", "grass",
           "gravel", "retina", "moon", "coins")    # no people in them (not astronaut, not camera)
P_SECOND, P_EXIF = 0.30, 0.25


@lru_cache(maxsize=None)
def _sample(name: str) -> Image.Image:
    import skimage.data

    a = getattr(skimage.data, name)()
    return Image.fromarray(a).convert("RGB")


def background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A colour scene of w x h: a tinted, rescaled crop of a sample photo, or a smooth random texture."""
    k = rng.integers(len(SAMPLES) + 2)
    if k >= len(SAMPLES):
        small = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, (h, w, 3))
        return Image.fromarray(np.clip(np.asarray(img, float) + noise, 0, 255).astype(np.uint8))
    src = _sample(SAMPLES[k])
    f = max(w / src.width, h / src.height) * rng.uniform(1.0, 1.6)
    src = src.resize((round(src.width * f) + 1, round(src.height * f) + 1), Image.Resampling.BILINEAR)
    x, y = rng.integers(0, src.width - w + 1), rng.integers(0, src.height - h + 1)
    img = np.asarray(src.crop((x, y, x + w, y + h)), float) * rng.uniform(0.7, 1.2, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _face_layer(face: Image.Image, rng: np.random.Generator, scale: float) -> tuple[Image.Image, Image.Image]:
    """(RGB face enlarged by `scale`, tinted and rotated; its soft elliptical mask)."""
    grey = np.asarray(face.convert("L"), float) / 255
    tint = np.array([1.0, 0.82, 0.70]) * rng.uniform(0.85, 1.15, 3)
    rgb = Image.fromarray(np.clip(grey[..., None] * tint * 255, 0, 255).astype(np.uint8))
    size = (round(face.width * scale), round(face.height * scale))
    rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    mask = Image.new("L", size, 0)
    mx, my = size[0] * 0.06, size[1] * 0.04
    ImageDraw.Draw(mask).ellipse((mx, my, size[0] - mx, size[1] - my), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(size[0] * 0.05))
    angle = rng.uniform(-15, 15)
    return (rgb.rotate(angle, Image.Resampling.BICUBIC, expand=True),
            mask.rotate(angle, Image.Resampling.BICUBIC, expand=True))


def scene(face: Image.Image, seed, second: Image.Image | None = None) -> tuple[bytes, dict]:
    """(JPEG bytes, what was drawn) for one ORL `face` (92 x 112); `second`: another face, pasted smaller
    when the draw says so (30 %)."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(2.0, 4.0)
    side = int(rng.integers(640, 1025))
    w, h = (side, round(side * 3 / 4)) if rng.random() < 0.5 else (round(side * 3 / 4), side)
    h = max(h, round(face.height * scale * 1.15) + 2)
    w = max(w, round(face.width * scale * 1.15) + 2)
    img = background(rng, w, h)
    layer, mask = _face_layer(face, rng, scale)
    x0 = int(rng.integers(0, max(1, w - layer.width)))
    y0 = int(rng.integers(0, max(1, h - layer.height)))
    info = {"scale": round(scale, 2), "size": (w, h), "face_at": (x0, y0, layer.width, layer.height)}
    if second is not None and rng.random() < P_SECOND:
        s2 = scale * rng.uniform(0.45, 0.7)
        l2, m2 = _face_layer(second, rng, s2)
        # beside the main face where it fits, else anywhere (overlap allowed: phones see crowds)
        room = [(x, y) for x, y in ((x0 + layer.width, y0), (x0 - l2.width, y0), (x0, y0 + layer.height))
                if 0 <= x <= w - l2.width and 0 <= y <= h - l2.height]
        x2, y2 = room[0] if room else (int(rng.integers(0, max(1, w - l2.width))), 0)
        img.paste(l2, (x2, y2), m2)
        info["second_at"] = (x2, y2, l2.width, l2.height)
    img.paste(layer, (x0, y0), mask)
    exif = Image.Exif()
    if rng.random() < P_EXIF:
        # stored sideways: Orientation 6 means "rotate 90 degrees clockwise to view", 8 counter-clockwise
        tag = 6 if rng.random() < 0.5 else 8
        img = img.transpose(Image.Transpose.ROTATE_90 if tag == 6 else Image.Transpose.ROTATE_270)
        exif[0x0112] = tag
        info["exif"] = tag
    buf = BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(80, 96)), exif=exif.tobytes())
    return buf.getvalue(), info
