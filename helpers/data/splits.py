"""Splits of a face set: which people are known and which are strangers, and which of each person's
photos train, validate and test (seeded, per person, so every person is in every part)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .folders import FaceDataError, FaceSet


@dataclass
class Split:
    """Indices of the train, validation and test photos.

    Notebook 00, inside `check_person_split`.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_known_strangers(faces: FaceSet, n_known: int = 9, seed: int = 0) -> tuple[FaceSet, FaceSet]:
    """Pick `n_known` people at random (seeded) to recognise; the others are strangers.

    Both returned sets are relabelled 0..k-1. Strangers are never used for training.

    Notebook 00, inside `load_course_data`.
    """
    if not 2 <= n_known <= faces.num_people:
        raise FaceDataError(f"n_known={n_known}: choose between 2 and {faces.num_people} people")
    rng = np.random.default_rng(seed)
    known = np.sort(rng.choice(faces.num_people, size=n_known, replace=False))
    is_known = np.isin(faces.labels, known)
    strangers = faces.subset(np.flatnonzero(~is_known), relabel=True) if (~is_known).any() else None
    return faces.subset(np.flatnonzero(is_known), relabel=True), strangers


def split_per_person(labels, val: float = 0.2, test: float = 0.3, shots: int | None = None,
                     seed: int = 0) -> Split:
    """Per-person split with a fixed seed: each person appears in train and test.

    `val`/`test` are fractions of each person's photos (at least 1 test photo each);
    `shots=k` keeps only k training photos per person (few-shot).

    Notebook 00, inside `check_person_split`.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val_idx, test_idx = [], [], []
    for person in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == person))
        n = len(idx)
        if n < 2:
            raise FaceDataError(f"person {person} has {n} photo; needs at least 2 (train + test)")
        n_test = max(1, int(round(test * n)))
        n_val = int(round(val * n)) if n - n_test > 1 else 0
        n_val = min(n_val, n - n_test - 1)
        test_idx += idx[:n_test].tolist()
        val_idx += idx[n_test:n_test + n_val].tolist()
        rest = idx[n_test + n_val:]
        if shots is not None:
            if shots > len(rest):
                raise FaceDataError(f"person {person}: shots={shots} but only {len(rest)} photos "
                                    "remain for training")
            rest = rest[:shots]
        train += rest.tolist()
    return Split(np.array(sorted(train), dtype=int), np.array(sorted(val_idx), dtype=int),
                 np.array(sorted(test_idx), dtype=int))


def split_people(labels, frac: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint groups of people (e.g. strangers for choosing a threshold / for testing).

    Notebook 04, inside `open_set_for`.
    """
    labels = np.asarray(labels)
    people = np.unique(labels)
    if len(people) < 2:
        raise ValueError("need at least two people to split them into two groups")
    rng = np.random.default_rng(seed)
    first = rng.choice(people, size=max(1, int(round(frac * len(people)))), replace=False)
    a = np.isin(labels, first)
    return np.flatnonzero(a), np.flatnonzero(~a)
