"""What ImageNet features buy: 1-NN and linear-probe baselines on frozen features, few-shot.

Compares feature sets (pretrained backbone, the same network randomly initialised, raw pixels)
with the same two classifiers on the same splits, for 1, 3 or 5 training photos per person.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import warnings

import numpy as np
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from ..models.backbones import Backbone, load_backbone
from ..data.splits import Split, split_per_person
from ..evaluate.metrics import linear_probe_accuracy, nearest_neighbour_accuracy
from ..runtime import set_seed

METHODS = ("1-NN", "linear probe")


def everyday_photos() -> dict[str, Image.Image]:
    """Four everyday photos that ship inside scikit-image (no download): cat, coffee, astronaut, rocket."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()).convert("RGB")
            for name in ("chelsea", "coffee", "astronaut", "rocket")}


def pixel_features(images: Sequence[Image.Image], size: int = 32) -> np.ndarray:
    """Raw pixels as features: each photo in grey, resized to size x size, flattened, in [0, 1]."""
    return np.stack([np.asarray(im.convert("L").resize((size, size), Image.Resampling.BILINEAR),
                                dtype=np.float32).ravel() / 255.0 for im in images])


def random_backbone(name: str, seed: int = 0) -> Backbone:
    """The architecture `name` with random weights (seeded), labelled so its cached features
    never mix with another seed's: the "no pretraining" control."""
    set_seed(seed)
    bb = load_backbone(name, pretrained=False, verbose=False)
    bb.weights = f"random init (no pretraining, seed {seed})"
    return bb


def centre_on(train_x: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Subtract the mean of the training rows (D,) from every set: (train_x, *others) centred.

    Uncentred features that all point the same way (a random network's: mean cosine near 1) make
    cosine 1-NN degenerate: one "hub" training photo is the nearest neighbour of nearly every query.
    Centring on the training mean removes the shared direction; the classifiers then L2-normalise.
    """
    mean = train_x.mean(axis=0, keepdims=True)
    return (train_x - mean, *(o - mean for o in others))


def hub_share(features, labels, split: Split) -> float:
    """Largest share of test photos whose cosine 1-NN is one and the same training photo
    (1/len(test) or so when there is no hub; near 1 when one photo attracts every query)."""
    x = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features, dtype=np.float64)
    g = x[split.train] / np.maximum(np.linalg.norm(x[split.train], axis=1, keepdims=True), 1e-12)
    q = x[split.test] / np.maximum(np.linalg.norm(x[split.test], axis=1, keepdims=True), 1e-12)
    with threadpool_limits(1):
        nn = np.argmax(q @ g.T, axis=1)
    return float(np.bincount(nn).max() / len(nn))


def evaluate_split(features, labels, split: Split, method: str = "1-NN", seed: int = 0,
                   centre: bool = True) -> float:
    """Accuracy on `split.test` of a classifier fitted on `split.train` (1-NN cosine or linear probe).

    `centre`: subtract the training photos' mean feature first (see `centre_on`), then the classifier
    L2-normalises; False scores the raw, uncentred features.
    """
    x = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    x = x.astype(np.float64)
    y = np.asarray(labels)
    tr, te = split.train, split.test
    if centre:
        xtr, xte = centre_on(x[tr], x[te])
        x = np.empty_like(x)
        x[tr], x[te] = xtr, xte
    with threadpool_limits(1), warnings.catch_warnings():  # small BLAS problems stall on 2 busy cores
        warnings.simplefilter("ignore", UserWarning)  # sklearn: "more classes than 50 % of samples" at k=1
        if method == "1-NN":
            return nearest_neighbour_accuracy(x[tr], y[tr], x[te], y[te])
        if method == "linear probe":
            return linear_probe_accuracy(x[tr], y[tr], x[te], y[te], seed=seed)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def few_shot_splits(labels, shots: int, seeds: Sequence[int], test_per_person: int = 5) -> list[Split]:
    """One split per seed: `test_per_person` test photos and `shots` training photos per person."""
    labels = np.asarray(labels)
    n = int(np.bincount(labels).min())
    if test_per_person + shots > n:
        raise ValueError(f"{shots} training + {test_per_person} test photos per person, but the "
                         f"smallest person has {n} photos")
    return [split_per_person(labels, val=0.0, test=test_per_person / n, shots=shots, seed=s) for s in seeds]


def fitting_shots(labels, shots: Sequence[int] = (1, 3, 5), test_per_person: int = 5) -> tuple[tuple[int, ...], int]:
    """(shots, test photos per person) that every person's photos allow: ORL's 10 each keep (1, 3, 5) and 5;
    a folder whose smallest person has n photos keeps n // 2 test photos (at most `test_per_person`, at least
    1) and the shots that fit beside them (at least 1)."""
    n = int(np.bincount(np.asarray(labels)).min())
    if n < 2:
        raise ValueError(f"the smallest person has {n} photo(s): few-shot tables need at least 2 per person")
    test = max(1, min(test_per_person, n // 2))
    fit = tuple(k for k in shots if k + test <= n) or (min(n - test, max(shots)),)
    return fit, test


@dataclass
class FewShotTable:
    """Mean accuracy per (features, method) and shots, over several seeded splits."""

    shots: list[int]
    num_people: int
    test_per_person: int
    seeds: list[int]
    acc: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)

    def get(self, features: str, method: str, shots: int) -> float:
        return self.acc[(features, method)][shots]

    def __str__(self) -> str:
        width = max(len(f) for f, _ in self.acc) + 2
        head = "".join(f"{f'{k} photo' + ('s' if k > 1 else ''):>12}" for k in self.shots)
        lines = [f"accuracy on {self.num_people} people, {self.test_per_person} test photos each, "
                 f"mean of {len(self.seeds)} splits",
                 f"{'features':<{width}}{'method':<14}{head}"]
        for (feat, method), row in self.acc.items():
            lines.append(f"{feat:<{width}}{method:<14}" + "".join(f"{100 * row[k]:>10.1f} %" for k in self.shots))
        return "\n".join(lines)


def few_shot_table(feature_sets: Mapping[str, object], labels, shots: Sequence[int] = (1, 3, 5),
                   methods: Sequence[str] = METHODS, seeds: Sequence[int] = range(5),
                   test_per_person: int = 5, centre: bool = True) -> FewShotTable:
    """1-NN and linear-probe accuracy of each feature set with k training photos per person.

    Every feature set is scored on the same splits, so differences come from the features only;
    `centre` as in `evaluate_split`.
    """
    labels = np.asarray(labels)
    table = FewShotTable(list(shots), int(len(np.unique(labels))), test_per_person, list(seeds))
    splits = {k: few_shot_splits(labels, k, list(seeds), test_per_person) for k in shots}
    for name, feats in feature_sets.items():
        for method in methods:
            table.acc[(name, method)] = {
                k: float(np.mean([evaluate_split(feats, labels, sp, method, seed=i, centre=centre)
                                  for i, sp in enumerate(splits[k])])) for k in shots}
    return table


@dataclass
class SplitScores:
    """Accuracy of each (features, method) on one train/test split."""

    description: str
    acc: dict[tuple[str, str], float] = field(default_factory=dict)

    def __str__(self) -> str:
        width = max(len(f) for f, _ in self.acc) + 2
        lines = [self.description, f"{'features':<{width}}{'method':<14}{'accuracy':>10}"]
        lines += [f"{feat:<{width}}{method:<14}{100 * a:>8.1f} %" for (feat, method), a in self.acc.items()]
        return "\n".join(lines)


def scores_on_split(feature_sets: Mapping[str, object], labels, split: Split,
                    methods: Sequence[str] = METHODS, centre: bool = True) -> SplitScores:
    """1-NN and linear-probe test accuracy of each feature set on one split (e.g. the 9 known people)."""
    labels = np.asarray(labels)
    people = len(np.unique(labels[split.test]))
    out = SplitScores(f"accuracy on {people} people: {len(split.train)} training photos, "
                      f"{len(split.test)} test photos")
    for name, feats in feature_sets.items():
        for method in methods:
            out.acc[(name, method)] = evaluate_split(feats, labels, split, method, centre=centre)
    return out


def mean_cosine(features, labels) -> tuple[float, float]:
    """Mean cosine similarity of (same-person pairs, different-person pairs) of photos.

    Useful features put the first clearly above the second; random features give two numbers
    close to each other (often both near 1: every photo points almost the same way).
    """
    x = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = np.asarray(labels)
    with threadpool_limits(1):
        sims = x @ x.T
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return float(sims[same & off].mean()), float(sims[~same].mean())


def imagenet_top_k(backbone: Backbone, photos: Mapping[str, Image.Image], k: int = 3) -> dict[str, list]:
    """Top-k ImageNet (class, probability) of each photo; empty lists if the weights have no classifier."""
    if backbone.classifier is None:
        return {name: [] for name in photos}
    x = torch.stack([backbone.transform()(im) for im in photos.values()])
    return dict(zip(photos, backbone.predict_imagenet(x, k)))


def format_top_k(preds: Mapping[str, list]) -> str:
    """One line per photo: its top classes with whole-percent probabilities."""
    width = max(len(n) for n in preds) + 2
    return "\n".join(f"{name:<{width}}" + ", ".join(f"{c} {100 * p:.0f} %" for c, p in top)
                     for name, top in preds.items())
