"""Pictures the notebooks share: face grids, training curves, confusion matrices."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from .data import FaceSet
from .training import History


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


def plot_history(hist: History | dict[str, History], ax=None) -> plt.Figure:
    """Loss and accuracy per epoch; a dict draws several runs for comparison."""
    runs = hist if isinstance(hist, dict) else {"run": hist}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3))
    for name, h in runs.items():
        ep = np.arange(1, h.epochs + 1)
        a1.plot(ep, h.loss, label=name)
        a2.plot(ep, np.array(h.train_acc) * 100, "--", label=f"{name} train")
        if h.val_acc:
            a2.plot(ep, np.array(h.val_acc) * 100, label=f"{name} val")
    a1.set(xlabel="epoch", ylabel="loss", title="training loss")
    a2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", ylim=(0, 102))
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
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
