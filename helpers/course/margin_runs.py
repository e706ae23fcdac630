"""Measured ArcFace runs for notebook 03: several (s, m) pairs trained on cached features, the
angles of photos to their own class centre and to the nearest other, and the learning-rate sweep."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..data import split_per_person
from ..model import FaceModel
from ..training import History, accuracy_of, train_head_on_features
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

    @property
    def label(self) -> str:
        return f"s={self.s:g}, m={self.m:g}" + (" (no margin)" if self.m == 0 else "")

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.accuracies)) if self.accuracies else float("nan")


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
            model, hist = train_head_on_features(features[sp.train], labels[sp.train], head="arcface", s=s, m=m,
                                                 easy_margin=easy_margin, epochs=epochs, lr=lr, seed=seed,
                                                 progress=False)
            if hist.diverged:
                run.diverged = hist.diverged
                break
            x_te, y_te = features[sp.test], labels[sp.test]
            run.accuracies.append(accuracy_of(model, (x_te, torch.as_tensor(y_te))))
            run.losses.append(hist.loss[-1])
            if k == 0:
                run.history = hist
                run.train_angles = angle_stats(model, features[sp.train], labels[sp.train])
                run.test_angles = angle_stats(model, x_te, y_te)
        runs.append(run)
    return runs


def format_runs(runs: Sequence[MarginRun], num_classes: int | None = None) -> str:
    """Text table of measured runs: accuracy (mean and per seed), final loss, test angles;
    with `num_classes`, also the predicted stop angle for each (s, m)."""
    lines = [f"{'(s, m)':<22}{'test acc':>9}  {'per seed':<20}{'loss':>7}{'own':>7}{'other':>7}{'gap':>7}"
             + ("  floor  stop angle" if num_classes else "")]
    lines.append("-" * len(lines[0]))
    for r in runs:
        if r.diverged:
            lines.append(f"{r.label:<22} diverged: {r.diverged}")
            continue
        seeds = " ".join(f"{100 * a:.1f}" for a in r.accuracies) if len(r.accuracies) > 1 else ""
        t = r.test_angles
        row = (f"{r.label:<22}{100 * r.accuracy:>7.1f} %  {seeds:<20}{r.losses[0]:>7.3f}"
               f"{t.own.mean():>6.1f}°{t.other.mean():>6.1f}°{t.gap:>6.1f}°")
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
    """One line per setting: the test accuracy of every (s, m) tried."""
    out = []
    for name, runs in settings.items():
        cells = ", ".join(f"({r.s:g}, {r.m:g}) {'diverged' if r.diverged else format(100 * r.accuracy, '.1f') + ' %'}"
                          for r in runs)
        out.append(f"{name}: {cells}")
    return "\n".join(out)


def plot_angle_distributions(runs: Sequence[MarginRun], split: str = "test", bins: int = 36) -> plt.Figure:
    """One histogram per run: angle to own centre vs to the nearest other centre (overlap = errors)."""
    runs = [r for r in runs if not r.diverged]
    if not runs:
        raise ValueError("no finished runs to draw")
    fig, axes = plt.subplots(1, len(runs), figsize=(min(2.4 * len(runs), 9.6), 2.6), sharey=True, squeeze=False)
    edges = np.linspace(0, 120, bins + 1)
    for ax, r in zip(axes[0], runs):
        st = r.test_angles if split == "test" else r.train_angles
        ax.hist(st.own, edges, alpha=0.7, label="own centre")
        ax.hist(st.other, edges, alpha=0.7, label="nearest other")
        ax.set_title(r.label, fontsize=8)
        ax.set_xlabel("angle (degrees)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel(f"{split} photos")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig
