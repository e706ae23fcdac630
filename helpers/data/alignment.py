"""Faces in photos: find every face, then cut each to a canonical, ORL-like crop (92 x 112 pixels).

Two finders share one interface, `find(img) -> list[FoundFace]` (largest face first):

- `DlibAligner` (preferred; needs `dlib-bin` and `face-recognition-models`): dlib's HOG face
  detector, its 5-point landmarks (eye corners, nose), then the similarity transform (rotation,
  scale, shift: least squares, Umeyama) that puts the landmarks where they sit on average in the
  packaged ORL photos of the background people s1-s10. So an aligned crop looks like the photos the
  recogniser was built around: upright eyes at y = 55.5, the face filling most of the frame.
- `HaarFinder` (fallback; OpenCV 4.x): the Haar cascade's box with a 20 % margin, no alignment.

`face_finder()` gives the first that works here; `.name` says which ran (the CLI and the enrol
panel print it). Photos are expected upright and RGB (`helpers.data.images.read_image` applies the EXIF
orientation and converts to RGB); the crops keep the photo's colours.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
from PIL import Image

from .facecrop import FoundFace

__all__ = ["FoundFace", "DlibAligner", "HaarFinder", "FaceStep", "face_finder", "similarity", "warp", "box_crop"]

CROP_SIZE = (92, 112)    # (width, height) of an ORL photo
# Mean dlib 5-point landmarks in the ORL photos of s1-s10 (detected on 2x enlarged copies), made
# left-right symmetric about x = 46: (outer, inner) corner of the eye on the image's right, (outer,
# inner) of the eye on its left, bottom of the nose; (x, y) in a 92 x 112 crop.
ORL_LANDMARKS = np.array([[69.2, 55.5], [56.2, 55.5], [22.8, 55.5], [35.8, 55.5], [46.0, 77.8]])
ORL_FACE_BOX = (7.4, 32.9, 75.5, 74.1)   # mean dlib HOG box (x, y, w, h) in the same photos
GEOMETRIES = {"orl": 1.0, "wide": 0.85}  # landmark spread relative to ORL's (<1: more margin)
# "auto" face finding: a photo longer than this (3 x the default 224 px input, as the enrol panel's
# SMALL_FACTOR) is searched for faces; a smaller one is taken as a face crop already (ORL: 92 x 112).
AUTO_SIDE = 672


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) matrix of the least-squares similarity transform mapping src (n, 2) onto dst (n, 2)
    (Umeyama 1991, no reflection).

    Notebook 00, inside `problem_folder_demo`.
    """
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ e @ vt
    scale = (sig * np.diag(e)).sum() / (s ** 2).sum(1).mean()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = md - m[:, :2] @ ms
    return m


def warp(img: Image.Image, m: np.ndarray, size: tuple[int, int] = CROP_SIZE) -> Image.Image:
    """`img` mapped by the (2, 3) matrix `m` (photo -> crop) into a crop of `size` (w, h); a photo much
    larger than the crop is shrunk first (area filter), so the crop does not alias.

    Notebook 00, inside `problem_folder_demo`.
    """
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.6:            # photo pixels per crop pixel > 1.7: pre-shrink to ~1.5x the crop's scale
        f = scale * 1.5
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BOX)
        m = m.copy()
        m[:, :2] /= f
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]       # PIL wants crop -> photo
    return img.transform(size, Image.Transform.AFFINE, tuple(inv.ravel()), Image.Resampling.BILINEAR,
                         fillcolor=(128, 128, 128) if img.mode == "RGB" else 128)


def box_crop(img: Image.Image, box, size: tuple[int, int] = CROP_SIZE,
             face_box: tuple[float, float, float, float] = ORL_FACE_BOX) -> Image.Image:
    """The region of `img` that puts detector box (x, y, w, h) where `face_box` sits in a crop of `size`.

    Notebook 00, inside `problem_folder_demo`.
    """
    x, y, w, h = box
    sx, sy = face_box[2] / w, face_box[3] / h
    m = np.array([[sx, 0, face_box[0] - sx * x], [0, sy, face_box[1] - sy * y]])
    return warp(img, m, size)


def _models_dir() -> str:
    """face_recognition_models' model folder, found without importing it (its import needs
    pkg_resources, which setuptools >= 81 no longer has)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dlib alignment needs face-recognition-models: pip install face-recognition-models")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


class DlibAligner:
    """dlib HOG detector + 5-point landmarks -> similarity transform onto `ORL_LANDMARKS` (scaled by
    `GEOMETRIES[geometry]` about the crop's centre). `align=False`: the HOG box mapped onto ORL's mean
    box instead (no rotation).

    Notebook 00, inside `problem_folder_demo`.
    """

    def __init__(self, geometry: str = "orl", align: bool = True, max_side: int = 1024):
        try:
            import dlib
        except ImportError:
            raise ImportError("dlib alignment needs dlib: pip install dlib-bin") from None
        path = os.path.join(_models_dir(), "shape_predictor_5_face_landmarks.dat")
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(path)
        self.dlib = dlib
        centre = np.array([CROP_SIZE[0] / 2, CROP_SIZE[1] / 2])
        self.template = centre + GEOMETRIES[geometry] * (ORL_LANDMARKS - centre)
        self.align, self.max_side = align, max_side
        self.name = (f"dlib HOG + 5 landmarks, aligned ({geometry})" if align else "dlib HOG box, not aligned")

    def _boxes(self, rgb: np.ndarray) -> list:
        """dlib rectangles in `rgb`'s pixels, largest first; small photos are searched enlarged (HOG
        finds faces of about 80 px and more)."""
        h, w = rgb.shape[:2]
        f = 1.0
        if max(h, w) < 400:
            f = 2.0 if max(h, w) >= 200 else 400 / max(h, w)
        elif max(h, w) > self.max_side:
            f = self.max_side / max(h, w)
        work = rgb if f == 1.0 else np.asarray(Image.fromarray(rgb).resize(
            (max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR))
        found = self.detector(np.ascontiguousarray(work), 1 if max(work.shape[:2]) <= 800 else 0)
        rects = [self.dlib.rectangle(round(r.left() / f), round(r.top() / f), round(r.right() / f),
                                     round(r.bottom() / f)) for r in found]
        return sorted(rects, key=lambda r: -r.width() * r.height())

    def find(self, img: Image.Image) -> list[FoundFace]:
        """Every face in `img` (RGB), largest first, each cut to a 92 x 112 crop."""
        img = img.convert("RGB")
        rgb = np.ascontiguousarray(np.asarray(img))
        out = []
        for r in self._boxes(rgb):
            box = (r.left(), r.top(), r.width(), r.height())
            if not self.align:
                out.append(FoundFace(box_crop(img, box), box))
                continue
            s = self.shape(rgb, r)
            pts = np.array([[s.part(i).x, s.part(i).y] for i in range(5)], dtype=float)
            out.append(FoundFace(warp(img, similarity(pts, self.template)), box, pts))
        return out


class HaarFinder:
    """OpenCV's Haar cascade (`helpers.data.facecrop.FaceCropper`): the box with a 20 % margin, no alignment.

    Notebook 00, inside `problem_folder_demo`.
    """

    def __init__(self, margin: float = 0.2):
        from .facecrop import FaceCropper

        self.cropper = FaceCropper(margin=margin)
        self.name = self.cropper.name

    def find(self, img: Image.Image) -> list[FoundFace]:
        """Every face in `img`, largest first, each its box with the margin (sizes vary)."""
        return self.cropper.find(img)


def face_finder(prefer: str = "auto"):
    """The face finder to use: 'auto' = dlib aligned if it is installed, else Haar; 'dlib' or 'haar'
    to insist. Raises ImportError (with the pip command) when none can run.

    Notebook 00, inside `problem_folder_demo`.
    """
    if prefer in ("auto", "dlib"):
        try:
            return DlibAligner()
        except (ImportError, RuntimeError) as e:    # RuntimeError: dlib cannot read the model file
            if prefer == "dlib":
                raise ImportError(str(e)) from None
            why = str(e)
    if prefer not in ("auto", "haar"):
        raise ValueError(f"prefer={prefer!r}: use 'auto', 'dlib' or 'haar'")
    try:
        finder = HaarFinder()
    except ImportError as e:
        raise ImportError(f"no face detector here: {e}; for aligned faces: pip install dlib-bin "
                          "face-recognition-models") from None
    if prefer == "auto":
        finder.name += f" (fallback: {why.split(': pip')[0]})"
    return finder


class FaceStep:
    """The face step of loading a folder (`helpers.data.folders.load_folder`): `mode` True or "always" searches
    every photo, "auto" only photos longer than `AUTO_SIDE` (smaller ones are face crops already).
    The finder is made on first use; in "auto" mode a missing detector leaves large photos whole
    (`note()` says so) instead of failing.

    Notebook 00, inside `problem_folder_demo`.
    """

    def __init__(self, mode, finder=None):
        self.mode, self.finder, self.searched, self.missing = mode, finder, 0, ""

    def applies(self, img: Image.Image) -> bool:
        """Whether `img` is searched for faces (makes the finder the first time)."""
        if not self.mode or (self.mode == "auto" and max(img.size) <= AUTO_SIDE):
            return False
        if self.finder is None and not self.missing:
            try:
                self.finder = face_finder()
            except ImportError as e:
                if self.mode != "auto":
                    raise
                self.missing = str(e)
        return self.finder is not None

    def __call__(self, img: Image.Image) -> list[FoundFace]:
        self.searched += 1
        return self.finder.find(img)

    def note(self) -> str:
        """One line for the load report: which finder ran on how many photos ("" when none ran)."""
        if self.missing:
            return f"photos over {AUTO_SIDE} px used whole: {self.missing}"
        if self.searched:
            return f"faces: {self.searched} photo(s) searched with {self.finder.name}"
        return ""
