"""The accuracy protocol's data: ORL faces, deterministic degradations and augmented views,
per-seed splits (benchmarks/accuracy.py chooses which people each task uses).

Splits (per seed, per person, 10 ORL photos each):
  * identification: the person's photos are shuffled with the seed; the first 5 are test
    photos, the next k (1, 3 or 5) are the training ("enrolment") photos. The test photos are
    the same for every k, so k = 1, 3, 5 differ only by the training photos.
  * 9 known people: 9 people drawn with the seed (as in the guide), same per-person split.
  * strangers: the people are shuffled with the seed; the first half is for training, the
    second half ("strangers") is never trained on; verification uses every pair of the
    strangers' photos.

Degraded test set (DEGRADE, applied to test photos only, deterministic per seed and photo):
rotation uniform in ±10° (bilinear, corners filled with the photo's mean grey), brightness
and contrast each × uniform 0.75–1.25, Gaussian blur radius (sigma) uniform 0–1 px, JPEG
quality uniform integer 60–90.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from helpers.data.folders import FaceSet, load_orl

# the degradations and augmented views live in the library (the product uses them too)
from helpers.data.degrade import DEGRADE, degrade  # noqa: E402,F401
from helpers.features.representations import VIEWS, augmented_view, phone_view  # noqa: E402,F401


def flipped(img: Image.Image) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT)


# ------------------------------------------------------------------------------ splits

@dataclass
class IdSplit:
    train: np.ndarray  # indices into the 400 photos
    test: np.ndarray
    labels: np.ndarray  # labels of all photos, relabelled 0..P-1 over the people in this split (-1 elsewhere)
    people: np.ndarray  # ORL person ids in this split


def identification_split(labels: np.ndarray, k: int, seed: int, people: Sequence[int] | None = None,
                         n_test: int = 5) -> IdSplit:
    """k training photos and `n_test` test photos per person (test photos do not depend on k)."""
    labels = np.asarray(labels)
    people = np.unique(labels) if people is None else np.sort(np.asarray(people))
    rng = np.random.default_rng([seed, 11])
    order = {int(p): rng.permutation(np.flatnonzero(labels == p)) for p in np.unique(labels)}
    train, test = [], []
    for p in people:
        idx = order[int(p)]
        if len(idx) < n_test + k:
            raise ValueError(f"person {p} has {len(idx)} photos; needs {n_test} test + {k} training")
        test += idx[:n_test].tolist()
        train += idx[n_test:n_test + k].tolist()
    relabel = -np.ones(labels.max() + 1, dtype=int)
    relabel[people] = np.arange(len(people))
    return IdSplit(np.array(train), np.array(test), relabel[labels], np.asarray(people))


def known_people(num_people: int, n_known: int, seed: int) -> np.ndarray:
    """The `n_known` people drawn for this seed (9 as in the guide)."""
    return np.sort(np.random.default_rng([seed, 13]).choice(num_people, size=n_known, replace=False))


def strangers_split(num_people: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training people, strangers): the people halved at random with the seed."""
    perm = np.random.default_rng([seed, 17]).permutation(num_people)
    half = num_people // 2
    return np.sort(perm[:half]), np.sort(perm[half:])


# ------------------------------------------------------------------------------ data

class ProtocolData:
    """ORL photos with their degraded copies (per seed) and augmented views, created lazily."""

    def __init__(self, faces: FaceSet | None = None, n_views: int = 8):
        self.faces = faces or load_orl()
        self.n_views = n_views
        self._degraded: dict[int, list[Image.Image]] = {}
        self._views: dict[int, list[Image.Image]] = {}
        self._phone: dict[tuple, list[Image.Image]] = {}

    @property
    def images(self) -> list[Image.Image]:
        return self.faces.images

    @property
    def labels(self) -> np.ndarray:
        return self.faces.labels

    def degraded(self, seed: int) -> list[Image.Image]:
        if seed not in self._degraded:
            self._degraded[seed] = [degrade(im, seed, i) for i, im in enumerate(self.images)]
        return self._degraded[seed]

    def views(self, view: int) -> list[Image.Image]:
        if view not in self._views:
            self._views[view] = [augmented_view(im, view, i) for i, im in enumerate(self.images)]
        return self._views[view]


    def phone(self, view: int, strength: float) -> list[Image.Image]:
        """Phone view `view` (blur + JPEG, helpers.features.representations.phone_view) of every photo."""
        if (view, strength) not in self._phone:
            self._phone[view, strength] = [phone_view(im, view, i, strength) for i, im in enumerate(self.images)]
        return self._phone[view, strength]


def raw_pixels(images: Sequence[Image.Image], size: int = 32) -> np.ndarray:
    """Grey 32×32 thumbnails, flattened and mean-centred per photo: the 'no learning' baseline."""
    x = np.stack([np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32).ravel()
                  for im in images])
    return x - x.mean(1, keepdims=True)


def protocol_text(dev_seeds: list, grid_taps: list, background_people: list, far: float) -> list[str]:
    """The protocol as the results file states it, one sentence group per item."""
    return [
        "Development people: ORL s1-s10; test people: ORL s11-s40. Fixed by that rule before any run; every "
        "choice below is made on development people only.",
        f"Stage 1: development score = mean of k=1, k=3, k=3 degraded accuracy and (100 - EER) over development "
        f"seeds {dev_seeds} (10 people: identification among them; EER with 5 fitted and 5 strangers). "
        "Candidates are listed cheapest first; the first of equal scores wins.",
        "Stage 2 ([stage 2] rows: a background for the whitening, λ re-tuned, optional phone views, optional "
        f"grid taps {grid_taps}: layer3 averaged over each cell of a G x G grid): per "
        "development seed the development people are halved; each half is evaluated (identification among "
        "its 5 people; EER with 2 fitted and 3 strangers; open-set threshold with 2 known, 3 strangers) with "
        "the other half's photos (+ mirrors, views, phone views) as the background, then the halves swap; "
        "score = mean of k=1, k=3, k=3 degraded, 100 - EER and 100 - EER degraded over the 2 × seeds runs "
        "(stage 1's best whitening competes without a background on the same runs). Cheapest first, the "
        "first of equal scores wins. Stage-2 scores are not comparable with stage-1 scores (other tasks).",
        f"Background in test runs: every photo of the development people ORL s1-s10 (the library's "
        f"helpers.data.background.BACKGROUND_PEOPLE = {background_people}) with their mirrors and views; every "
        "task (identification, strangers, open set, the product case) draws its people from the test people "
        "s11-s40 only, so the background never holds an evaluated person (asserted per task).",
        "Phone views (enrolment side only): helpers.features.representations.phone_view, Gaussian blur U(0, s) px then "
        "JPEG quality U(90 - 30 s, 90), seeded per (view, photo); the degraded queries use helpers.data.degrade "
        "with other seeds. Blur and JPEG are two of the five degradations of the query photos, so the "
        "degraded rows measure the same kinds of damage the enrolment copies imitate (a real phone "
        "photo differs in more ways).",
        "Identification: k enrolment photos and 5 test photos per person (the same test photos for every k); "
        "1-NN by cosine to the enrolled photos in each method's representation (the probe: its prediction).",
        f"Strangers: the test people halved per seed; EER (interpolated on the full ROC) and TAR at FAR "
        f"{100 * far:g} % over every pair of the strangers' photos (helpers.evaluate.metrics.verification).",
        "Open set: the fitted half enrolled with 3 photos (centroids), their 5 test photos vs every photo of "
        "the strangers, at the threshold fixed on development people (mean over development seeds).",
        "Product case: 9 known people × 3 enrolment photos and 11 strangers drawn from the test people per "
        "seed; identification of degraded test photos by the nearest centroid; EER over pairs of the "
        "strangers' degraded photos.",
        f"Degraded photos (queries only): {DEGRADE}, deterministic per seed and photo (helpers.data.degrade).",
        f"Augmented enrolment views: {VIEWS} (helpers.features.representations.augmented_view).",
        "Mean ± half-width of the 95 % t-interval over the seeds.",
    ]
