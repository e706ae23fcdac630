"""Pictures the notebooks share: face grids, training curves, confusion matrices."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..data.folders import FaceSet



def show_faces(faces: FaceSet, per_person: int = 5, people: Sequence[int] | None = None,
               size: float = 1.2) -> plt.Figure:
    """A grid: one row per person, `per_person` photos each, name on the left."""
    people = list(range(faces.num_people)) if people is None else list(people)
    fig, axes = plt.subplots(len(people), per_person, figsize=(per_person * size, len(people) * size * 1.2),
                             squeeze=False)
    for row, person in enumerate(people):
        idx = np.flatnonzero(faces.labels == person)[:per_person]
        for col in range(per_person):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(idx):
                ax.imshow(faces.images[idx[col]])
        axes[row, 0].set_title(faces.names[person], fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def plot_confusion(cm: np.ndarray, names: Sequence[str], ax=None, title: str = "confusion matrix") -> plt.Axes:
    """Confusion matrix as a seaborn heatmap (rows: true person, columns: predicted)."""
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * len(names) + 2, 0.45 * len(names) + 1.5))
    sns.heatmap(cm, annot=True, fmt="d", cbar=False, cmap="Blues", xticklabels=names, yticklabels=names, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return ax


# ============================================================================ notebooks 00-02 (data, pretrained, frozen)

def plot_class_balance(faces: FaceSet, ax=None, title: str = "photos per person") -> plt.Axes:
    """Bar chart of the number of photos of each person."""
    counts = faces.counts()
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12, 0.22 * len(counts) + 2), 2.6))
    ax.bar(range(len(counts)), list(counts.values()), color="#4c72b0")
    ax.set_xticks(range(len(counts)), list(counts), rotation=90, fontsize=7)
    ax.set(ylabel="photos", title=title)
    return ax


def plot_split(labels, split, names: Sequence[str], ax=None, title: str = "train / val / test per person") -> plt.Axes:
    """Stacked bars: each person's photos in train, validation and test."""
    labels = np.asarray(labels)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12, 0.5 * len(names) + 2), 2.6))
    bottom = np.zeros(len(names))
    for part, color in (("train", "#4c72b0"), ("val", "#dd8452"), ("test", "#55a868")):
        n = np.bincount(labels[getattr(split, part)], minlength=len(names)).astype(float)
        ax.bar(range(len(names)), n, bottom=bottom, color=color, label=part)
        bottom += n
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set(ylabel="photos", title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def show_predictions(photos: dict, predictions: dict, k: int = 3) -> plt.Figure:
    """Each photo with its top-k ImageNet classes and probabilities underneath."""
    fig, axes = plt.subplots(1, len(photos), figsize=(3 * len(photos), 3.4), squeeze=False)
    for ax, (name, img) in zip(axes[0], photos.items()):
        ax.imshow(img)
        ax.axis("off")
        ax.set_title("\n".join(f"{c} {100 * p:.0f} %" for c, p in predictions[name][:k]), fontsize=8)
    fig.tight_layout()
    return fig


def show_first_layer_filters(backbone, max_filters: int = 32) -> plt.Figure:
    """The first convolution's filters as small RGB pictures (each scaled to its own range)."""
    from torch import nn

    conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    w = conv.weight.detach().cpu().numpy()[:max_filters]
    cols = 16 if len(w) > 16 else len(w)
    rows = int(np.ceil(len(w) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f in zip(axes.ravel(), w):
        f = f.transpose(1, 2, 0)
        ax.imshow((f - f.min()) / (np.ptp(f) + 1e-12), interpolation="nearest")
    fig.suptitle(f"{backbone.name}: first-layer filters ({w.shape[2]}x{w.shape[3]} px, "
                 f"{conv.out_channels} in all)", fontsize=9)
    fig.tight_layout()
    return fig


def show_feature_maps(backbone, image, stage: str = "layer1", n: int = 8) -> plt.Figure:
    """The photo, then the `n` most active channels of the backbone's output after `stage`."""
    import torch

    with torch.inference_mode():   # the stage API: the output of `stage`, nothing after it computed
        x = backbone.eval().transform()(image).unsqueeze(0).to(next(backbone.parameters()).device)
        out = backbone.forward_intermediates(x, [stage], final=False)[stage]
    maps = out[0].cpu().numpy()
    order = np.argsort(-maps.mean((1, 2)))[:n]
    fig, axes = plt.subplots(1, n + 1, figsize=(1.3 * (n + 1), 1.7))
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=8)
    for ax, c in zip(axes[1:], order):
        ax.imshow(maps[c], cmap="viridis")
        ax.set_title(f"channel {c}", fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"after {stage}: {maps.shape[0]} channels of {maps.shape[1]}x{maps.shape[2]}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_few_shot(table, ax=None) -> plt.Axes:
    """Accuracy against training photos per person, one line per (features, method)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2))
    for (feat, method), row in table.acc.items():
        ax.plot(table.shots, [100 * row[k] for k in table.shots], "o-" if method == "1-NN" else "s--",
                label=f"{feat}, {method}")
    ax.set(xlabel="training photos per person", ylabel="test accuracy (%)", xticks=table.shots,
           title=f"{table.num_people} people: what pretrained features buy")
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_per_person(acc: dict, ax=None, title: str = "test accuracy per person") -> plt.Axes:
    """Horizontal bars of each person's accuracy (%)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.25 * len(acc) + 1))
    ax.barh(list(acc), [100 * a for a in acc.values()], color="#55a868")
    ax.set(xlim=(0, 100), xlabel="accuracy (%)", title=title)
    ax.invert_yaxis()
    return ax


def show_one_per_person(faces: FaceSet, max_people: int = 20, cols: int = 10, title: str = "") -> plt.Figure:
    """The first photo of each person (up to `max_people`), name underneath."""
    people = list(range(min(faces.num_people, max_people)))
    cols = min(cols, len(people))
    rows = int(np.ceil(len(people) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.95, rows * 1.3 + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, person in zip(axes.ravel(), people):
        ax.imshow(faces.images[int(np.flatnonzero(faces.labels == person)[0])])
        ax.set_title(faces.names[person], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================================ notebook 02: learning rate, freezing, mistakes

def plot_lr_and_freezing(sweep, budget, lrs: Sequence[float]) -> plt.Figure:
    """One figure, 2 x 2: top, the frozen head's validation accuracy and strangers' EER against the
    learning rate (`sweep`, a SeedComparison keyed "lr ..."); bottom, the same two for each arm of
    `budget` (equal_budget). Each seed is a faint dot (same seed joined across arms), the mean
    ± 95 % t-interval a black bar. Fixed axes: accuracy 0-100 %, EER 0-50 %."""
    from .experiments import t_interval

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    for col, (metric, label, top) in enumerate((("val", "validation accuracy (%)", 100),
                                                ("eer", "strangers' EER (%)", 50))):
        ax = axes[0, col]
        names = list(sweep.runs)
        for i, n in enumerate(names):
            v = 100 * np.asarray(sweep.runs[n][metric])
            ax.plot([lrs[i]] * len(v), v, "o", color="C0", alpha=0.35, ms=4)
        means = [t_interval(100 * np.asarray(sweep.runs[n][metric])) for n in names]
        ax.errorbar(lrs, [m for m, _ in means], yerr=[h for _, h in means], color="k", marker="s", ms=4,
                    capsize=3, lw=1)
        ax.set(xscale="log", ylim=(0, top), xlabel="learning rate (frozen head, AdamW)", ylabel=label,
               title=f"frozen head: {label.split(' (')[0]} vs learning rate", xticks=list(lrs))
        ax.title.set_fontsize(9)
        ax = axes[1, col]
        arms = list(budget.runs)
        per_seed = 100 * np.array([budget.runs[a][metric] for a in arms])   # (arms, seeds)
        for s in range(per_seed.shape[1]):
            ax.plot(range(len(arms)), per_seed[:, s], "o-", color="C1", alpha=0.35, ms=4, lw=0.8)
        means = [t_interval(row) for row in per_seed]
        ax.errorbar(range(len(arms)), [m for m, _ in means], yerr=[h for _, h in means], color="k",
                    marker="s", ms=4, capsize=3, lw=0, elinewidth=1)
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set(ylim=(0, top), ylabel=label, title=f"equal budget: {label.split(' (')[0]}")
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def top_confusions(truth, predicted, names: Sequence[str], k: int = 8) -> list[tuple[str, str, int]]:
    """The `k` most frequent mistakes as (true person, predicted person, count), most frequent first
    (ties: in order of the true person); an empty list when every prediction is right."""
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(np.asarray(truth), np.asarray(predicted)):
        if t != p:
            pairs[(int(t), int(p))] = pairs.get((int(t), int(p)), 0) + 1
    order = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [(names[t], names[p], n) for (t, p), n in order]


def plot_top_confusions(mistakes: Sequence[tuple[str, str, int]], ax=None, title: str = "most frequent mistakes"):
    """Horizontal bars, one per (true person -> predicted person) pair of `top_confusions`."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.3 * max(1, len(mistakes)) + 1))
    labels = [f"{t} → {p}" for t, p, _ in mistakes]
    ax.barh(labels, [n for *_, n in mistakes], color="#c44e52")
    ax.set(xlabel="test photos", title=title if mistakes else "no mistakes")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.invert_yaxis()
    return ax
