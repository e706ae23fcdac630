"""Reading one image file safely: every failure becomes a short reason, never a traceback.

Each reason says what is wrong and what to do, e.g. "empty file (0 bytes): the copy is
incomplete; copy the photo again". Memory stays small for huge photos: JPEGs are decoded at
reduced size (1/2 ... 1/8) and then shrunk to `max_side`; other formats over
`MAX_DECODE_PIXELS` are skipped before decoding, with the reason.
"""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
MIN_SIDE = 16          # smaller than this cannot hold a recognisable face
MAX_SIDE = 1024        # larger photos are shrunk on load (keeps memory small)
MAX_DECODE_PIXELS = 40_000_000  # non-JPEG files are decoded at full size: ~120 MB at this limit
HEIC_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


class ImageSkip(Exception):
    """An image that cannot be used; `str()` is the reason shown to the learner.

    Notebook 00, inside `problem_folder_demo`.
    """


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


def _not_an_image_reason(path: Path) -> str:
    """Why Pillow could not identify `path`, from its first bytes: HEIC, text/HTML or unknown."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        head = b""
    if head[4:8] == b"ftyp" and head[8:12] in HEIC_BRANDS:
        return ("HEIC/HEIF photo (the iPhone format), which Pillow cannot read: export it as JPEG "
                "(Photos: File > Export, or set Camera > Formats > Most Compatible)")
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return ("not an image: the file holds a web page or SVG text (a failed download?); save the "
                "photo itself as JPEG or PNG")
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "not an image: the file holds plain text; save the photo itself as JPEG or PNG"
    return "not an image (Pillow cannot identify its format): re-save it as JPEG or PNG"


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation of phone photos; a damaged EXIF block leaves the image as is."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - bad EXIF must not lose a good photo
        return img


def read_image(path: str | Path, max_side: int = MAX_SIDE) -> Image.Image:
    """Open `path` as an upright RGB image no larger than `max_side`.

    Raises ImageSkip with a one-line reason (what is wrong: what to do) for missing, empty,
    truncated, unreadable, non-image, too-small or too-large files. Phone photos are rotated
    upright from their EXIF orientation.

    Notebook 00, inside `make_problem_folder`.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageSkip("a folder, not a photo file: give the path of a photo")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageSkip("broken link (it points to a file that does not exist): copy the photo "
                            "itself into the folder") from None
        raise ImageSkip("file not found (moved or deleted while loading): run the loader again") from None
    except PermissionError:
        raise ImageSkip("cannot read the file (permission denied): fix its permissions "
                        "(chmod a+r FILE) or copy the photo again") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageSkip("link loop (the link points back to itself): replace it with the photo") from None
        raise ImageSkip(f"cannot read the file ({e.strerror or e}): copy the photo again") from None
    if size == 0:
        raise ImageSkip("empty file (0 bytes): the copy is incomplete; copy the photo again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open(path, "rb") as fh:
                img = Image.open(fh)
                w, h = img.size
                if img.format == "JPEG":
                    if max(w, h) > 2 * max_side:
                        img.draft("RGB", (max_side, max_side))  # decode at 1/2..1/8 size
                elif w * h > MAX_DECODE_PIXELS:
                    raise ImageSkip(
                        f"image too large to load safely ({w}x{h} px = {w * h / 1e6:.0f} megapixels "
                        f"{img.format}; the limit for non-JPEG files is {MAX_DECODE_PIXELS / 1e6:.0f}): "
                        f"shrink it or save it as JPEG")
                img.load()
                img = _upright(img)
                if img.width < MIN_SIDE or img.height < MIN_SIDE:
                    raise ImageSkip(f"too small ({img.width}x{img.height} px; a face needs at least "
                                    f"{MIN_SIDE}x{MIN_SIDE} px): use a larger photo")
                if max(img.size) > max_side:
                    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                return _to_rgb(img)
    except ImageSkip:
        raise
    except PermissionError:
        raise ImageSkip("cannot read the file (permission denied): fix its permissions "
                        "(chmod a+r FILE) or copy the photo again") from None
    except UnidentifiedImageError:
        raise ImageSkip(_not_an_image_reason(path)) from None
    except Image.DecompressionBombError:
        raise ImageSkip(f"image too large to load safely (over Pillow's limit of "
                        f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels): shrink it") from None
    except MemoryError:
        raise ImageSkip("not enough memory to decode this image: shrink it") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        msg = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise ImageSkip(f"damaged or truncated image (Pillow: {msg}): copy it again from the "
                        "original, or re-save it with a photo app") from None


def read_image_bytes(data: bytes, name: str = "photo", max_side: int = MAX_SIDE) -> Image.Image:
    """`read_image` for bytes held in memory (an upload, a camera photo): same checks, same reasons.

    The bytes go to a private temporary file (named after `name`'s suffix) that is deleted at once.

    Notebook 06, inside `enrol_panel`.
    """
    fd, tmp = tempfile.mkstemp(suffix=Path(name).suffix[:10] or ".img", prefix="photo-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return read_image(tmp, max_side)
    finally:
        Path(tmp).unlink(missing_ok=True)


def image_digest(img: Image.Image) -> str:
    """SHA-256 of an image's size, mode and pixels: equal pictures give equal digests.

    Notebook 01, inside `cache_demo`.
    """
    h = hashlib.sha256()
    h.update(f"{img.size}{img.mode}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes.

    Notebook 00, inside `problem_folder_demo`.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
