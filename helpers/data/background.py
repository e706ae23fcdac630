"""Background people for the within-class whitening: photos of people who are neither enrolled
nor evaluated, that show how photos of one person really vary (pose, expression, light).

With one or three enrolment photos per person, the whitening's within-class covariance only sees
augmented copies of those photos. Adding other people's photos as extra within-class samples
(each background person is a class of their own) teaches it real variation. The product's
background is data the package ships: ORL's s1–s10 (`BACKGROUND_PEOPLE`), the benchmark's
development people, on which every setting was chosen; its test people are s11–s40.

The rule (`drop_people_in`): a background person is dropped as a whole as soon as any of their
photos appears in the data being enrolled or evaluated, found by `helpers.data.images.image_digest`
(same pixels) or as a near copy (a re-encoded or resized copy: grey 32×32 thumbnails correlated
at ≥ `NEAR_COPY`; two different ORL people reach at most 0.89, a JPEG copy at quality 60 ≥ 0.999).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .folders import FaceSet, load_orl
from .images import image_digest

BACKGROUND_PEOPLE = tuple(range(10))  # ORL s1-s10 (the loader's labels 0-9)
NEAR_COPY = 0.99


def _thumbs(images: Sequence[Image.Image]) -> np.ndarray:
    if not len(images):
        return np.zeros((0, 1024))
    x = np.stack([np.asarray(im.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float64).ravel()
                  for im in images])
    x -= x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def people_seen(background: FaceSet, *image_lists: Iterable[Image.Image]) -> set[int]:
    """Labels of the background people with a photo among `image_lists` (same pixels or near copy).

    Notebook 06, inside `background_for`.
    """
    others = [im for ims in image_lists for im in ims]
    if not others or not len(background):
        return set()
    digests = {image_digest(im) for im in others}
    labels = np.asarray(background.labels)
    seen = {int(lab) for im, lab in zip(background.images, labels) if image_digest(im) in digests}
    near = (_thumbs(background.images) @ _thumbs(others).T).max(1) >= NEAR_COPY
    return seen | {int(v) for v in labels[near]}


def drop_people_in(background: FaceSet | None, *image_lists: Iterable[Image.Image]) -> FaceSet | None:
    """`background` without any person who has a photo among `image_lists`; None if fewer than 2 remain.

    Notebook 06, inside `background_for`.
    """
    if background is None:
        return None
    seen = people_seen(background, *image_lists)
    keep = np.flatnonzero(~np.isin(np.asarray(background.labels), sorted(seen)))
    if len(np.unique(np.asarray(background.labels)[keep])) < 2:
        return None
    return background.subset(keep, relabel=True)


def background_faces(*exclude: Iterable[Image.Image]) -> FaceSet | None:
    """The packaged background (ORL s1–s10) minus anyone with a photo in `exclude` (the photos being
    enrolled and evaluated). None when fewer than 2 people are left.

    Notebook 06, inside `background_for`.
    """
    orl = load_orl()
    bg = orl.subset(np.flatnonzero(np.isin(orl.labels, BACKGROUND_PEOPLE)), relabel=True)
    return drop_people_in(bg, *exclude)
