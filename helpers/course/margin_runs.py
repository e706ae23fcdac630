"""Measured ArcFace runs for notebook 03: several (s, m) pairs trained on cached features over
several seeds (test accuracy on the known people, verification EER on strangers never trained on,
paired differences with a 95 % interval), the angles of photos to their own class centre and to the
nearest other, and the learning-rate sweep."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..data.splits import split_per_person
from ..evaluate.metrics import embed, verification
from ..models.face_model import FaceModel
from ..train.fit import History, accuracy_of, train_head_on_features
from .experiments import CourseData, t_interval
from .margins import check_sm, loss_floor, stop_angle


@dataclass
class AngleStats:
    """Angles (degrees) of photos to their own class centre and to the nearest other centre."""

    own: np.ndarray
    other: np.ndarray

    @property
    def gap(self) -> float:
        """Mean of (nearest other - own): how far, on average, the right centre is ahead."""
        return float(np.mean(self.other - self.own))

    @property
    def overlap(self) -> float:
        """Share of photos closer to another centre than to their own (= errors)."""
        return float(np.mean(self.other <= self.own))

    def __str__(self) -> str:
        return (f"own centre {self.own.mean():.1f}°, nearest other {self.other.mean():.1f}°, "
                f"gap {self.gap:.1f}°")


@torch.no_grad()
def angle_stats(model: FaceModel, x: torch.Tensor, y) -> AngleStats:
    """Angles between each photo's embedding and the head's class centres."""
    model.eval()
    y = np.asarray(y)
    e = model.embed(torch.as_tensor(x).float())
    w = F.normalize(model.head.weight, dim=1)
    ang = torch.rad2deg(torch.acos((e @ w.T).clamp(-1, 1))).double().numpy()
    rows = np.arange(len(y))
    own = ang[rows, y].copy()
    ang[rows, y] = np.inf
    return AngleStats(own, ang.min(1))


@dataclass
class MarginRun:
    """One (s, m) pair trained on one setting, over one or more split seeds."""

    s: float
    m: float
    accuracies: list[float]
    losses: list[float]
    train_angles: AngleStats | None = None   # first seed
    test_angles: AngleStats | None = None    # first seed
    diverged: str = ""
    history: History | None = None           # first seed
    eers: list[float] = field(default_factory=list)   # strangers' EER per seed (run_margins_on_tasks)

    @property
    def label(self) -> str:
        return f"s={self.s:g}, m={self.m:g}" + (" (no margin)" if self.m == 0 else "")

    @property
    def pair(self) -> tuple[float, float]:
        return (self.s, self.m)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.accuracies)) if self.accuracies else float("nan")

    def values(self, metric: str) -> list[float]:
        """Per-seed values of "acc" (test accuracy) or "eer" (strangers' EER)."""
        if metric not in ("acc", "eer"):
            raise ValueError(f"metric {metric!r}: 'acc' or 'eer'")
        return self.accuracies if metric == "acc" else self.eers


def _train_one(run: MarginRun, x, y, split, seed: int, first: bool, epochs: int, lr: float,
               easy_margin: bool = False, strangers=None) -> bool:
    """Train run's (s, m) on one split; append its results to `run`. False if training diverged."""
    model, hist = train_head_on_features(x[split.train], y[split.train], head="arcface", s=run.s, m=run.m,
                                         easy_margin=easy_margin, epochs=epochs, lr=lr, seed=seed,
                                         progress=False)
    if hist.diverged:
        run.diverged = hist.diverged
        return False
    x_te, y_te = x[split.test], y[split.test]
    run.accuracies.append(accuracy_of(model, (x_te, torch.as_tensor(y_te))))
    run.losses.append(hist.loss[-1])
    if strangers is not None:
        run.eers.append(verification(embed(model, strangers[0]), strangers[1]).eer)
    if first:
        run.history = hist
        run.train_angles = angle_stats(model, x[split.train], y[split.train])
        run.test_angles = angle_stats(model, x_te, y_te)
    return True


def run_margins(features: torch.Tensor, labels, pairs: Sequence[tuple[float, float]], shots: int | None = None,
                seeds: Sequence[int] = (0,), epochs: int = 30, lr: float = 1e-2,
                easy_margin: bool = False) -> list[MarginRun]:
    """Train the frozen-feature model (512-D embedding + ArcFace) once per (s, m) pair and seed.

    Each seed draws its own per-person split (`shots` training photos per person, None = all);
    accuracy is on the test photos; angles are measured for the first seed.
    """
    labels = np.asarray(labels)
    if not pairs:
        raise ValueError("give at least one (s, m) pair, e.g. [(16, 0.5)]")
    for s, m in pairs:
        check_sm(s, m)
    splits = [split_per_person(labels, shots=shots, seed=seed) for seed in seeds]
    runs = []
    for s, m in pairs:
        run = MarginRun(float(s), float(m), [], [])
        for k, (seed, sp) in enumerate(zip(seeds, splits)):
            if not _train_one(run, features, labels, sp, seed, k == 0, epochs, lr, easy_margin):
                break
        runs.append(run)
    return runs


def run_margins_on_tasks(features: torch.Tensor, tasks: Sequence[CourseData],
                         pairs: Sequence[tuple[float, float]], epochs: int = 30, lr: float = 1e-2) -> list[MarginRun]:
    """Each (s, m) pair on each task (one `load_course_data(..., seed=k)` per seed: its known people,
    their split and the strangers never trained on), trained with the task's seed.

    Per seed: test accuracy on the known people and the strangers' verification EER; angles and the
    loss curve for the first task. `features`: of every photo (`course_features`).
    """
    if not pairs:
        raise ValueError("give at least one (s, m) pair, e.g. [(16, 0.5)]")
    if not tasks:
        raise ValueError("give at least one task (load_course_data(..., seed=k))")
    for s, m in pairs:
        check_sm(s, m)
    x = torch.as_tensor(features).float()
    runs = [MarginRun(float(s), float(m), [], []) for s, m in pairs]
    for k, task in enumerate(tasks):
        if task.strangers is None:
            raise ValueError("the task has no strangers: keep N_KNOWN below the number of people")
        kx, ky = x[task.known_idx], np.asarray(task.known.labels)
        strangers = (x[task.stranger_idx], np.asarray(task.strangers.labels))
        for run in runs:
            if not run.diverged:
                _train_one(run, kx, ky, task.split, task.seed, k == 0, epochs, lr, strangers=strangers)
    return runs


def find_run(runs: Sequence[MarginRun], pair: tuple[float, float]) -> MarginRun:
    """The run of the (s, m) pair `pair`."""
    for r in runs:
        if r.pair == (float(pair[0]), float(pair[1])):
            return r
    raise KeyError(f"no run for (s, m) = {pair}; measured: {[r.pair for r in runs]}")


def difference(run: MarginRun, reference: MarginRun, metric: str) -> tuple[float, float]:
    """Mean and 95 % t-interval half-width of run - reference, paired by seed (same people, split)."""
    a, b = run.values(metric), reference.values(metric)
    if len(a) != len(b) or not a:
        raise ValueError(f"{run.label} and {reference.label} need the same seeds (one finished run per seed)")
    return t_interval(np.subtract(a, b))


def verdict(run: MarginRun, reference: MarginRun, metric: str) -> str:
    """'higher' / 'lower' when the paired 95 % interval excludes 0, else 'no clear difference'."""
    mean, half = difference(run, reference, metric)
    if not (np.isfinite(half) and abs(mean) > half):
        return "no clear difference"
    return "higher" if mean > 0 else "lower"


def format_differences(runs: Sequence[MarginRun], reference: int = 0) -> str:
    """One line per run: its test accuracy and strangers' EER minus the reference's, paired by seed,
    with a verdict ("no clear difference" when the 95 % interval contains 0)."""
    ref = runs[reference]
    lines = [f"paired by seed, minus {ref.label} (%-points; an interval that contains 0: no clear difference):"]
    for r in runs:
        if r is ref or r.diverged:
            continue
        parts = []
        for name, metric in (("test acc", "acc"), ("strangers' EER", "eer")):
            mean, half = difference(r, ref, metric)
            parts.append(f"{name} {100 * mean:+.1f} ± {100 * half:.1f} ({verdict(r, ref, metric)})")
        lines.append(f"  {r.label:<22}" + ", ".join(parts))
    return "\n".join(lines)


def _mean_ci(values) -> str:
    mean, half = t_interval(values)
    return f"{100 * mean:.1f} ± {100 * half:.1f} %" if np.isfinite(half) else f"{100 * mean:.1f} %"


def format_runs(runs: Sequence[MarginRun], num_classes: int | None = None) -> str:
    """Text table of measured runs: test accuracy (mean ± 95 % interval over seeds), the strangers'
    EER (when measured), the first seed's final loss and test angles; with `num_classes`, also the
    lowest possible loss and the predicted stop angle for each (s, m)."""
    eer = any(r.eers for r in runs)
    head = f"{'(s, m)':<22}{'test acc':>15}" + (f"{'strangers EER':>16}" if eer else "")
    lines = [head + f"{'loss':>7}{'own':>7}{'other':>7}{'gap':>7}" + ("  floor  stop angle" if num_classes else "")]
    lines.append("-" * len(lines[0]))
    for r in runs:
        if r.diverged:
            lines.append(f"{r.label:<22} diverged: {r.diverged}")
            continue
        t = r.test_angles
        row = (f"{r.label:<22}{_mean_ci(r.accuracies):>15}" + (f"{_mean_ci(r.eers):>16}" if eer else "")
               + f"{r.losses[0]:>7.3f}{t.own.mean():>6.1f}°{t.other.mean():>6.1f}°{t.gap:>6.1f}°")
        if num_classes:
            a = stop_angle(r.s, r.m, num_classes)
            row += f"{loss_floor(r.s, r.m, num_classes):>7.3f}  {'never' if math.isnan(a) else format(a, '.0f') + '°':>10}"
        lines.append(row)
    return "\n".join(lines)


def lr_sweep(features: torch.Tensor, labels, scales: Sequence[float] = (64, 16, 4), m: float = 0.5,
             lrs: Sequence[float] = (1e-2, 1e-1, 1.0), shots: int | None = None, seed: int = 0,
             epochs: int = 30) -> dict[float, list[MarginRun]]:
    """{learning rate: runs over `scales` at margin m}: where does training stop converging?"""
    return {lr: run_margins(features, labels, [(s, m) for s in scales], shots=shots, seeds=(seed,),
                            epochs=epochs, lr=lr) for lr in lrs}


def format_lr_sweep(sweep: dict[float, list[MarginRun]], num_classes: int) -> str:
    """Text table: final loss (and the best loss possible) / test accuracy for each scale and learning rate."""
    runs0 = next(iter(sweep.values()))
    lines = [f"{'learning rate':<14}" + "".join(f"{r.label + ': loss / acc':>30}" for r in runs0)]
    lines.append(f"{'(best possible loss)':<14}" + "".join(
        f"{format(loss_floor(r.s, r.m, num_classes), '.3f') + ' / -':>30}" for r in runs0))
    for lr, runs in sweep.items():
        cells = [("diverged" if r.diverged else f"{r.losses[0]:.3f} / {100 * r.accuracy:.1f} %") for r in runs]
        lines.append(f"{lr:<14g}" + "".join(f"{c:>30}" for c in cells))
    return "\n".join(lines)


def closing_summary(settings: dict[str, Sequence[MarginRun]]) -> str:
    """One line per setting: each (s, m) tried, its test accuracy and (when measured) the strangers'
    EER, as mean ± 95 % interval over seeds."""
    out = []
    for name, runs in settings.items():
        cells = []
        for r in runs:
            if r.diverged:
                cells.append(f"({r.s:g}, {r.m:g}) diverged")
                continue
            cells.append(f"({r.s:g}, {r.m:g}) test {_mean_ci(r.accuracies)}"
                         + (f", EER {_mean_ci(r.eers)}" if r.eers else ""))
        out.append(f"{name}:\n  " + "\n  ".join(cells))
    return "\n".join(out)


def plot_angle_scatter(runs: Sequence[MarginRun], size: float = 3.3) -> plt.Figure:
    """One panel per run, same axes: each photo's angle to its own centre (x) against the angle to the
    nearest other centre (y), test photos coloured, training photos grey. Above the line y = x a
    photo is classified right; ArcFace trains its photos above y = x + m (dashed)."""
    runs = [r for r in runs if not r.diverged and r.test_angles is not None]
    if not runs:
        raise ValueError("no finished runs to draw")
    fig, axes = plt.subplots(1, len(runs), figsize=(size * len(runs), size + 0.3), sharex=True, sharey=True,
                             squeeze=False)
    every = np.concatenate([np.r_[a.own, a.other] for r in runs for a in (r.train_angles, r.test_angles)])
    low, top = max(0, 10 * math.floor(every.min() / 10 - 0.5)), 10 * math.ceil(every.max() / 10 + 0.5)
    line = np.array([low, top], dtype=float)
    for ax, r in zip(axes[0], runs):
        tr, te = r.train_angles, r.test_angles
        right = te.other > te.own
        ax.scatter(tr.own, tr.other, s=9, color="0.65", label="training photos")
        ax.scatter(te.own[right], te.other[right], s=14, color="C0", label="test: right")
        ax.scatter(te.own[~right], te.other[~right], s=22, color="C3", marker="x", label="test: wrong")
        ax.plot(line, line, color="k", lw=1, label="y = x")
        if r.m > 0:
            ax.plot(line, line + math.degrees(r.m), "k--", lw=0.8, label=f"y = x + m ({math.degrees(r.m):.0f}°)")
        ax.set(xlim=(low, top), ylim=(low, top), aspect="equal", xlabel="angle to own centre (°)",
               title=f"{r.label}: {right.sum()} of {len(right)} test photos right")
        ax.title.set_fontsize(8)
    axes[0, 0].set_ylabel("angle to nearest other centre (°)")
    for ax in axes[0]:
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig
