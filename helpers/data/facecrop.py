"""Face cropping with OpenCV's Haar cascade (ships inside opencv-python-headless 4.x): the fallback
face finder when dlib is not installed (`helpers.data.alignment.face_finder`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class FoundFace:
    """One face: `image` the crop (RGB), `box` (x, y, w, h) in the photo's pixels, `landmarks` (5, 2)
    in the photo's pixels (None for Haar).

    Notebook 00, inside `problem_folder_demo`.
    """

    image: Image.Image
    box: tuple[int, int, int, int]
    landmarks: np.ndarray | None = None


class FaceCropper:
    """Finds frontal faces and cuts out the largest one with a margin around it.

    Notebook 00, inside `problem_folder_demo`.
    """

    def __init__(self, margin: float = 0.2, min_size: int = 24):
        try:
            import cv2
        except ImportError:
            raise ImportError("Face cropping needs OpenCV: pip install 'opencv-python-headless<5'") from None
        if not hasattr(cv2, "data") or not hasattr(cv2, "CascadeClassifier"):
            raise ImportError("This OpenCV has no Haar cascades (OpenCV 5 removed them): "
                              "pip install 'opencv-python-headless<5'")
        self.cv2 = cv2
        self.detector = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        self.margin = margin
        self.min_size = min_size
        self.name = "OpenCV Haar cascade box, not aligned"

    def detect(self, img: Image.Image, max_side: int = 1024) -> np.ndarray:
        """Face boxes (x, y, w, h) in `img`'s pixels, largest first; empty when none is found.

        Large photos are searched on a copy shrunk to `max_side` (seconds instead of minutes);
        images smaller than the minimum face size have no face.
        """
        if min(img.size) < self.min_size:
            return np.zeros((0, 4), dtype=int)
        scale = min(1.0, max_side / max(img.size))
        small = img if scale == 1.0 else img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
        if small.mode not in ("L", "RGB"):
            small = small.convert("RGB")
        grey = np.ascontiguousarray(np.asarray(small.convert("L"), dtype=np.uint8))
        boxes = self.detector.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                               minSize=(self.min_size, self.min_size))
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        if scale != 1.0:
            boxes = boxes / scale
        boxes = boxes.round().astype(int)
        return boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")] if len(boxes) else boxes

    def _cut(self, img: Image.Image, box) -> Image.Image:
        x, y, w, h = (int(v) for v in box)
        dx, dy = int(w * self.margin), int(h * self.margin)
        return img.crop((max(0, x - dx), max(0, y - dy), min(img.width, x + w + dx), min(img.height, y + h + dy)))

    def crop(self, img: Image.Image) -> tuple[Image.Image | None, int]:
        """(largest face with margin, number of faces found); (None, 0) when none is found."""
        boxes = self.detect(img)
        if len(boxes) == 0:
            return None, 0
        return self._cut(img, boxes[0]), len(boxes)

    def find(self, img: Image.Image) -> list[FoundFace]:
        """Every face as a `FoundFace` (its box with the margin; sizes vary), largest first."""
        return [FoundFace(self._cut(img, b), tuple(int(v) for v in b)) for b in self.detect(img)]
