"""Reading one image file safely: every failure becomes a short reason, never a traceback."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
MIN_SIDE = 16          # smaller than this cannot hold a recognisable face
MAX_SIDE = 1024        # larger photos are shrunk on load (keeps memory small)


class ImageSkip(Exception):
    """An image that cannot be used; `str()` is the reason shown to the learner."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, I;16, CMYK, P, RGBA, LA, 1, F) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def read_image(path: str | Path, max_side: int = MAX_SIDE) -> Image.Image:
    """Open `path` as an upright RGB image no larger than `max_side`.

    Raises ImageSkip with a one-line reason for empty, truncated, unreadable, non-image or
    too-small files. Phone photos are rotated upright from their EXIF orientation.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageSkip(f"cannot read the file ({e.strerror or e})") from None
    if size == 0:
        raise ImageSkip("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open(path, "rb") as fh:
                img = Image.open(fh)
                if img.format == "JPEG" and max(img.size) > 2 * max_side:
                    img.draft("RGB", (max_side, max_side))  # decode at reduced size: no 300 MB array
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.width < MIN_SIDE or img.height < MIN_SIDE:
                    raise ImageSkip(f"too small ({img.width}x{img.height} px; need at least {MIN_SIDE} px)")
                if max(img.size) > max_side:
                    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                return _to_rgb(img)
    except ImageSkip:
        raise
    except PermissionError:
        raise ImageSkip("cannot read the file (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageSkip("not an image (Pillow cannot identify its format)") from None
    except Image.DecompressionBombError:
        raise ImageSkip("image too large to decode safely (over Pillow's pixel limit)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageSkip(f"corrupt or truncated image ({msg})") from None


def image_digest(img: Image.Image) -> str:
    """SHA-256 of an image's size, mode and pixels: equal pictures give equal digests."""
    h = hashlib.sha256()
    h.update(f"{img.size}{img.mode}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
