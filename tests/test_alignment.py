"""Face finding and alignment (helpers.data.alignment): canonical eyes, EXIF, several faces, Haar fallback."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from helpers.data.alignment import (AUTO_SIDE, CROP_SIZE, ORL_LANDMARKS, FaceStep, HaarFinder, face_finder,
                                    similarity)
from helpers.data.images import read_image_bytes

pytest.importorskip("cv2")
try:                                   # dlib is optional (the `align` extra); without it Haar is the finder
    import dlib  # noqa: F401
    HAVE_DLIB = True
except ImportError:
    HAVE_DLIB = False


@pytest.fixture(scope="module")
def aligner():
    pytest.importorskip("dlib", reason="the aligner needs dlib-bin (pip install -e '.[align]')")
    from helpers.data.alignment import DlibAligner

    return DlibAligner()


def _scene(faces, size=(900, 700), colour=(70, 110, 150)) -> Image.Image:
    """A colour photo with each (ORL image, scale, angle, (x, y)) pasted in, tinted to skin."""
    canvas = Image.new("RGB", size, colour)
    for img, scale, angle, at in faces:
        grey = np.asarray(img.convert("L"), float)
        rgb = Image.fromarray(np.clip(grey[..., None] * [1.0, 0.85, 0.72], 0, 255).astype(np.uint8))
        rgb = rgb.resize((round(92 * scale), round(112 * scale)), Image.Resampling.BICUBIC)
        mask = Image.new("L", rgb.size, 255).rotate(angle, expand=True)
        canvas.paste(rgb.rotate(angle, Image.Resampling.BICUBIC, expand=True), at, mask)
    return canvas


def _jpeg(img: Image.Image, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    a, s, t = np.deg2rad(12), 2.5, np.array([30.0, -7.0])
    dst = s * src @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + t
    m = similarity(src, dst)
    assert np.allclose(src @ m[:, :2].T + m[:, 2], dst, atol=1e-9)


def test_aligned_crop_puts_the_eyes_where_orl_has_them(aligner, orl):
    """A face enlarged 3x and turned 12 degrees in a colour scene: found again on its aligned crop,
    the eye centres are within 3 px of the canonical ones (and upright)."""
    photo = _scene([(orl.images[0], 3.0, 12, (250, 150))])
    found = aligner.find(photo)
    assert len(found) == 1 and found[0].image.size == CROP_SIZE
    again = aligner.find(found[0].image)[0].landmarks
    eyes = np.array([again[0:2].mean(0), again[2:4].mean(0)])
    want = np.array([ORL_LANDMARKS[0:2].mean(0), ORL_LANDMARKS[2:4].mean(0)])
    assert np.abs(eyes - want).max() < 3.0, eyes


def test_exif_rotated_photo_gives_the_upright_crop(aligner, orl):
    upright = _scene([(orl.images[11], 2.5, -5, (300, 200))])
    sideways = upright.transpose(Image.Transpose.ROTATE_90)   # stored turned; tag 6 turns it back
    a = aligner.find(read_image_bytes(_jpeg(upright), "a.jpg"))
    b = aligner.find(read_image_bytes(_jpeg(sideways, orientation=6), "b.jpg"))
    assert len(a) == len(b) == 1
    diff = np.abs(np.asarray(a[0].image, float) - np.asarray(b[0].image, float)).mean()
    assert diff < 6, diff


def test_two_faces_give_two_crops_largest_first(aligner, orl):
    photo = _scene([(orl.images[0], 2.0, 0, (80, 200)), (orl.images[25], 3.2, 0, (450, 120))])
    found = aligner.find(photo)
    assert len(found) == 2
    assert found[0].box[0] > 300 and found[0].box[2] > found[1].box[2]       # the larger face (right) first
    assert all(f.image.size == CROP_SIZE for f in found)


def test_haar_is_the_fallback_without_dlib(monkeypatch, orl):
    monkeypatch.setitem(sys.modules, "dlib", None)                            # `import dlib` fails
    finder = face_finder()
    assert isinstance(finder, HaarFinder) and "Haar" in finder.name and "fallback" in finder.name
    found = finder.find(_scene([(orl.images[0], 3.0, 0, (250, 150))]))
    assert len(found) >= 1 and found[0].landmarks is None
    with pytest.raises(ImportError, match="dlib-bin"):
        face_finder("dlib")


def test_auto_mode_searches_only_large_photos(orl):
    step = FaceStep("auto")
    assert not step.applies(orl.images[0]) and step.note() == ""              # 92 x 112: a face crop already
    big = _scene([(orl.images[0], 3.0, 0, (250, 150))], size=(AUTO_SIDE + 10, 600))
    assert step.applies(big) and len(step(big)) == 1
    assert step.note().startswith("faces: 1 photo(s) searched with " + ("dlib" if HAVE_DLIB else "OpenCV Haar"))
