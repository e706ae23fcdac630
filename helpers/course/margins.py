"""ArcFace margins in pictures and numbers (notebook 03).

- the target logit: cos(theta) (normalised softmax), cos(theta + m) (ArcFace), cos(theta) - m (CosFace);
- what the scale s does: the target probability against the angle, the lower bound on s for C
  classes (Ranjan et al. 2017) and the angle at which the loss stops pulling ("stop angle");
- a 2-D toy (an embedding with 2 dimensions, trained on a few people) whose decision regions show
  the gaps a margin opens between classes;
- (measured runs over several (s, m) pairs live in `margin_runs`);
- numerical safety: why acos / a bare sqrt give inf or NaN at cos(theta) = +-1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..models.heads import ArcFaceHead, make_head
from ..models.face_model import EmbeddingHead, FaceModel
from ..runtime import set_seed, threads
from ..train.fit import History, accuracy_of, fit

ARCFACE_PAPER_S, ARCFACE_PAPER_M = 64.0, 0.5
ARCFACE_PAPER_CLASSES = 85_742  # MS1MV2, the data set the defaults s=64, m=0.5 were tuned on


def check_sm(s: float, m: float) -> None:
    if not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
        raise ValueError(f"scale s={s!r}: must be a positive number (the ArcFace paper uses 64 for 85,742 people; 4-32 here)")
    if not (isinstance(m, (int, float)) and 0 <= m < math.pi / 2):
        raise ValueError(f"margin m={m!r}: must be between 0 and {math.pi / 2:.2f} radians (0.5 rad = 28.6 deg)")


def naive_arcface_logit(cos: torch.Tensor, m: float) -> torch.Tensor:
    """cos(acos(cos) + m) the naive way: its gradient is infinite (NaN) at cos = +-1 (section 7)."""
    return torch.cos(torch.acos(cos) + m)


# ---------------------------------------------------------------------- target logit and scale

def target_logits(theta_deg, m: float = 0.5, easy_margin: bool = False) -> dict[str, np.ndarray]:
    """The true class's logit (before the scale s) against the angle theta, for each head.

    'ArcFace' is the helpers' ArcFaceHead (safe, with its fallback past theta > pi - m);
    'ArcFace, naive' is cos(theta + m) as written on paper.
    """
    cos = torch.cos(torch.deg2rad(torch.as_tensor(np.asarray(theta_deg, dtype=np.float64))))
    arc = ArcFaceHead(2, 2, s=1.0, m=m, easy_margin=easy_margin)
    with torch.no_grad():
        return {"softmax (normalised): cos θ": cos.numpy(),
                "ArcFace (helpers): cos(θ + m)": arc.target_logit(cos).numpy(),
                "ArcFace naive: cos(θ + m)": naive_arcface_logit(cos, m).numpy(),
                "CosFace: cos θ − m": (cos - m).numpy()}  # the formula: CosFaceHead refuses m >= 1 rad


def target_probability(theta_deg, s: float, m: float, num_classes: int, easy_margin: bool = False,
                       other_deg: float = 90.0) -> np.ndarray:
    """Softmax probability of the true class when the photo is `theta_deg` from its own centre and
    `other_deg` from each of the other num_classes - 1 centres (training logits, margin included)."""
    check_sm(s, m)
    if num_classes < 2:
        raise ValueError("num_classes must be at least 2")
    cos = torch.cos(torch.deg2rad(torch.as_tensor(np.asarray(theta_deg, dtype=np.float64))))
    with torch.no_grad():
        t = ArcFaceHead(2, 2, s=s, m=m, easy_margin=easy_margin).target_logit(cos).numpy()
    other = math.cos(math.radians(other_deg))
    # p = 1 / (1 + (C-1) exp(s (other - t))), written to avoid overflow
    return 1.0 / (1.0 + np.exp(np.log(num_classes - 1) + s * (other - t)))


def stop_angle(s: float, m: float, num_classes: int, p: float = 0.99, other_deg: float = 90.0) -> float:
    """Largest angle (degrees) to the own centre at which the true class already has probability `p`
    (others at `other_deg`): closer than this the loss is nearly zero and stops pulling.
    NaN when even theta = 0 does not reach `p` (s too small: the loss never gets near zero)."""
    check_sm(s, m)
    need = (math.log(num_classes - 1) + math.log(p / (1 - p))) / s + math.cos(math.radians(other_deg))
    if need > math.cos(m):
        return float("nan")
    return math.degrees(math.acos(max(-1.0, need)) - m)


def s_lower_bound(num_classes: int, p: float = 0.99) -> float:
    """Smallest s at which a perfectly arranged model can give its true class probability `p`
    (Ranjan et al. 2017, "L2-constrained softmax"): (C-1)/C * log((C-1) p / (1-p))."""
    if num_classes < 2 or not 0 < p < 1:
        raise ValueError("need num_classes >= 2 and 0 < p < 1")
    c = num_classes
    return (c - 1) / c * math.log((c - 1) * p / (1 - p))


def loss_floor(s: float, m: float, num_classes: int) -> float:
    """The lowest cross-entropy any model can reach: each photo on its own centre (cos = 1, logit
    s cos m) and the centres spread as far apart as possible (cos = -1/(C-1) to every other)."""
    check_sm(s, m)
    c = num_classes
    return float(math.log1p((c - 1) * math.exp(s * (-1.0 / (c - 1) - math.cos(m)))))


def scale_table(num_classes: Sequence[int] = (9, 40, ARCFACE_PAPER_CLASSES),
                scales: Sequence[float] = (64, 16, 4), m: float = 0.5, p: float = 0.99) -> str:
    """Text table: the lower bound on s and the stop angle for each number of classes and scale."""
    head = f"{'classes':>8} | {'s needed for p=' + format(p, 'g'):>17} | " + " | ".join(
        f"stop angle s={s:g}" for s in scales)
    lines = [head, "-" * len(head)]
    for c in num_classes:
        cells = []
        for s in scales:
            a = stop_angle(s, m, c, p)
            cells.append(f"{'never' if math.isnan(a) else format(a, '.0f') + '°':>{len(f'stop angle s={s:g}')}}")
        lines.append(f"{c:>8,} | {s_lower_bound(c, p):>17.1f} | " + " | ".join(cells))
    return "\n".join(lines)


def plot_target_logits(s: float = 16.0, m: float = 0.5, easy_margin: bool = False, num_classes: int = 9,
                       axes=None) -> plt.Figure:
    """Left: target logit against theta for each head. Right: the true class's probability at scale s
    for `num_classes` classes and for the ArcFace paper's 85,742, with the stop angles marked."""
    check_sm(s, m)
    theta = np.linspace(0, 180, 361)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    a1, a2 = axes
    styles = ["-", "-", ":", "--"]
    for (name, y), st in zip(target_logits(theta, m, easy_margin).items(), styles):
        a1.plot(theta, y, st, label=name, lw=2 if "helpers" in name else 1.2)
    a1.axvline(180 - math.degrees(m), color="grey", lw=0.6)
    a1.set(xlabel="θ: angle to own class centre (degrees)", ylabel="target logit / s",
           title=f"margin m = {m:g} rad = {math.degrees(m):.0f}°" + (", easy margin" if easy_margin else ""))
    a1.legend(fontsize=7, loc="lower left")
    for c, colour in ((num_classes, "C0"), (ARCFACE_PAPER_CLASSES, "C3")):
        a2.plot(theta, target_probability(theta, s, m, c, easy_margin), color=colour, label=f"{c:,} classes")
        stop = stop_angle(s, m, c)
        if not math.isnan(stop):
            a2.axvline(stop, color=colour, ls=":", lw=1)
    a2.set(xlabel="θ (other centres at 90°)", ylabel="p(true class)", ylim=(-0.02, 1.02),
           title=f"scale s = {s:g}: where the loss stops pulling (dotted)")
    a2.legend(fontsize=7)
    fig = a1.figure
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- the 2-D toy

@dataclass
class Toy:
    """A 2-D embedding + ArcFace head trained on a few people's cached features."""

    model: FaceModel
    names: list[str]
    train: tuple[torch.Tensor, np.ndarray]
    test: tuple[torch.Tensor, np.ndarray]
    s: float
    m: float
    easy_margin: bool
    lr: float
    epochs: int
    history: History

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def weights(self) -> np.ndarray:
        """Class centres: the head's weight vectors, normalised (num_classes, 2)."""
        return F.normalize(self.model.head.weight.detach(), dim=1).numpy()

    @torch.no_grad()
    def points(self, split: str = "train") -> np.ndarray:
        """Normalised 2-D embeddings of the train or test photos."""
        x = (self.train if split == "train" else self.test)[0]
        self.model.eval()
        return self.model.embed(x).numpy()

    def min_separation(self) -> float:
        """Angle (degrees) between the two closest class centres: near 0 = two people collapsed into one."""
        w = self.weights()
        a = np.sort(np.degrees(np.arctan2(w[:, 1], w[:, 0])))
        return float(np.diff(np.r_[a, a[0] + 360]).min())

    def accuracy(self, split: str = "test") -> float:
        x, y = self.train if split == "train" else self.test
        return accuracy_of(self.model, (x, torch.as_tensor(y)))

    def summary(self) -> str:
        if self.history.diverged:
            return f"s={self.s:g}, m={self.m:g}: {self.history.diverged}"
        return (f"s={self.s:g}, m={self.m:.2f}{' (easy margin)' if self.easy_margin else ''}: final loss "
                f"{self.history.loss[-1]:.3f}, train accuracy {100 * self.accuracy('train'):.1f} %, "
                f"test accuracy {100 * self.accuracy('test'):.1f} %")


def toy_split(labels, split, n_people: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of the first `n_people` people (labels 0..n_people-1) of a Split."""
    labels = np.asarray(labels)
    if not 2 <= n_people <= int(labels.max()) + 1:
        raise ValueError(f"n_people={n_people}: choose between 2 and {int(labels.max()) + 1}")
    return (np.asarray(split.train)[labels[split.train] < n_people],
            np.asarray(split.test)[labels[split.test] < n_people])


def train_toy(features: torch.Tensor, labels, names: Sequence[str], train_idx, test_idx, s: float = 16.0,
              m: float = 0.5, easy_margin: bool = False, epochs: int = 60, lr: float = 1e-2,
              seed: int = 0) -> Toy:
    """Train Linear(D -> 2) + BatchNorm + ArcFace(s, m) on the photos at `train_idx` (one thread, ~1 s)."""
    check_sm(s, m)
    labels = np.asarray(labels)
    if not lr > 0:
        raise ValueError(f"learning rate {lr!r} must be positive")
    x_tr, y_tr = torch.as_tensor(features[train_idx]).float(), labels[train_idx]
    x_te, y_te = torch.as_tensor(features[test_idx]).float(), labels[test_idx]
    c = len(names)
    if len(train_idx) < 2 or not set(np.unique(labels[train_idx])) <= set(range(c)):
        raise ValueError(f"the training photos need labels 0..{c - 1} (one name per label) and at least 2 photos")
    set_seed(seed)
    model = FaceModel(EmbeddingHead(x_tr.shape[1], 2), make_head("arcface", 2, c, s, m, easy_margin))
    # float64: a 2-D toy is chaotic (which basin it lands in depends on float32 rounding, which
    # differs between CPUs' kernels); in double precision every CPU follows the same path
    with threads(1):
        hist = fit(model.double(), (x_tr.double(), torch.as_tensor(y_tr)), None, epochs=epochs, lr=lr,
                   seed=seed, device="cpu", progress=False)
    return Toy(model.float().eval(), list(names), (x_tr, y_tr), (x_te, y_te), float(s), float(m), bool(easy_margin),
               float(lr), int(epochs), hist)


def retrain_toy(toy: Toy, s: float, m: float, easy_margin: bool = False, lr: float | None = None,
                epochs: int | None = None, seed: int = 0) -> Toy:
    """The same toy (same people and photos) trained again with other settings."""
    x = torch.cat([toy.train[0], toy.test[0]])
    y = np.concatenate([toy.train[1], toy.test[1]])
    n = len(toy.train[1])
    return train_toy(x, y, toy.names, np.arange(n), np.arange(n, len(y)), s, m, easy_margin,
                     epochs or toy.epochs, lr or toy.lr, seed)


def region_map(weights: np.ndarray, s: float, m: float, easy_margin: bool = False,
               phi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For directions `phi` (radians) on the circle: (phi, winner, probability).

    `winner` is the class whose margin-penalised target logit still beats every other class's
    cosine there (what training demands), or -1 in the gap where no class does; `probability`
    is that class's training softmax probability at scale s (0 in the gap).
    """
    check_sm(s, m)
    w = np.asarray(weights, dtype=np.float64)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    phi = np.linspace(-np.pi, np.pi, 1441) if phi is None else np.asarray(phi, dtype=np.float64)
    dirs = np.stack([np.cos(phi), np.sin(phi)], 1)
    cos = np.clip(dirs @ w.T, -1, 1)                                     # (P, C)
    with torch.no_grad():
        t = ArcFaceHead(2, 2, s=s, m=m, easy_margin=easy_margin).target_logit(torch.as_tensor(cos)).numpy()
    best = cos.argmax(1)
    rows = np.arange(len(phi))
    others = cos.copy()
    others[rows, best] = -np.inf
    wins = t[rows, best] > others.max(1)
    logits = s * cos
    logits[rows, best] = s * t[rows, best]
    logits -= logits.max(1, keepdims=True)
    prob = np.exp(logits[rows, best]) / np.exp(logits).sum(1)
    winner = np.where(wins, best, -1)
    return phi, winner, np.where(wins, prob, 0.0)


def gap_fraction(weights: np.ndarray, m: float, easy_margin: bool = False) -> float:
    """Share of the circle where no class wins once the margin is applied."""
    _, winner, _ = region_map(weights, 1.0, m, easy_margin)
    return float((winner < 0).mean())


def plot_decision_regions(weights: np.ndarray, s: float, m: float, easy_margin: bool = False,
                          points: np.ndarray | None = None, labels=None, test_points: np.ndarray | None = None,
                          test_labels=None, names: Sequence[str] | None = None, ax=None,
                          title: str | None = None) -> plt.Axes:
    """The unit circle coloured by the class that wins with margin m (grey: the gap, no class);
    colour strength = that class's training probability at scale s. Arrows: class centres;
    dots on the circle: normalised train photos; crosses inside: test photos."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    n = 241
    g = np.linspace(-1.25, 1.25, n)
    xx, yy = np.meshgrid(g, g)
    rr = np.hypot(xx, yy)
    phi, winner, prob = region_map(w, s, m, easy_margin, np.arctan2(yy, xx).ravel())
    colours = plt.get_cmap("tab10")
    rgba = np.ones((n * n, 4))
    for c in range(len(w)):
        sel = winner == c
        base = np.array(colours(c % 10))
        a = (0.15 + 0.6 * prob[sel])[:, None]
        rgba[sel, :3] = 1 - a * (1 - base[:3])
    rgba[winner < 0, :3] = 0.82
    rgba[((rr < 0.45) | (rr > 1.2)).ravel(), :3] = 1.0
    ax.imshow(rgba.reshape(n, n, 4), extent=(-1.25, 1.25, -1.25, 1.25), origin="lower", interpolation="nearest")
    t = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(t), np.sin(t), color="k", lw=0.6)
    for c, (x, y) in enumerate(w):
        ax.annotate("", xy=(1.17 * x, 1.17 * y), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="->", color=colours(c % 10), lw=1.5))
    for pts, lab, r, marker in ((points, labels, 1.0, "o"), (test_points, test_labels, 0.8, "X")):
        if pts is None:
            continue
        p = np.asarray(pts, dtype=np.float64)
        p = r * p / np.linalg.norm(p, axis=1, keepdims=True)
        lab = np.asarray(lab)
        for c in np.unique(lab):
            sel = lab == c
            ax.scatter(p[sel, 0], p[sel, 1], s=22, marker=marker, color=colours(int(c) % 10),
                       edgecolor="k", lw=0.5, zorder=3,
                       label=(names[int(c)] if names is not None and marker == "o" else None))
    ax.set(xlim=(-1.25, 1.25), ylim=(-1.25, 1.25), aspect="equal", xticks=[], yticks=[])
    ax.set_title(title or f"s={s:g}, m={m:g}: gap {100 * gap_fraction(w, m, easy_margin):.0f} % of circle", fontsize=9)
    return ax


def plot_toy(toy: Toy, s: float | None = None, m: float | None = None, easy_margin: bool | None = None,
             ax=None, title: str | None = None) -> plt.Axes:
    """A trained toy's centres, train photos (dots) and test photos (crosses) over its decision regions
    for (s, m) (default: the values it was trained with)."""
    s = toy.s if s is None else s
    m = toy.m if m is None else m
    easy = toy.easy_margin if easy_margin is None else easy_margin
    return plot_decision_regions(toy.weights(), s, m, easy, toy.points("train"), toy.train[1],
                                 toy.points("test"), toy.test[1], toy.names, ax=ax, title=title)


def plot_toys(toys: Sequence[Toy], titles: Sequence[str] | None = None, size: float = 3.6) -> plt.Figure:
    """Several trained toys side by side, each over its own decision regions; one legend of names."""
    fig, axes = plt.subplots(1, len(toys), figsize=(size * len(toys) + 1.4, size), squeeze=False)
    for k, toy in enumerate(toys):
        title = titles[k] if titles else None
        plot_toy(toy, ax=axes[0, k], title=title or
                 f"s={toy.s:g}, m={toy.m:g}: train {100 * toy.accuracy('train'):.0f} %, test {100 * toy.accuracy('test'):.0f} %")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 1))
    return fig


def margin_view(toy: Toy, s: float = 16.0, m: float = 0.5, easy_margin: bool = False) -> tuple[plt.Figure, str]:
    """What the margin panel draws: target logits, target probability at s, and the toy's regions.

    Redraws only (the toy keeps the weights it was trained with); returns (figure, "Result: ...").
    """
    check_sm(s, m)
    fig = plt.figure(figsize=(9.6, 3.3))
    a1, a2, a3 = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, 2), fig.add_subplot(1, 3, 3)
    theta = np.linspace(0, 180, 361)
    for (name, y), st in zip(target_logits(theta, m, easy_margin).items(), ["-", "-", ":", "--"]):
        a1.plot(theta, y, st, label=name.split(":")[0], lw=2 if "helpers" in name else 1.1)
    a1.set(xlabel="θ (degrees)", ylabel="target logit / s", title=f"m = {m:.2f} ({math.degrees(m):.0f}°)")
    a1.legend(fontsize=6, loc="lower left")
    c = toy.num_classes
    a2.plot(theta, target_probability(theta, s, m, c, easy_margin), label=f"{c} classes")
    a2.plot(theta, target_probability(theta, s, m, ARCFACE_PAPER_CLASSES, easy_margin), label="85,742 classes")
    a2.set(xlabel="θ (others at 90°)", ylabel="p(true class)", ylim=(-0.02, 1.02), title=f"s = {s:g}")
    a2.legend(fontsize=6)
    gap = gap_fraction(toy.weights(), m, easy_margin)
    plot_toy(toy, s, m, easy_margin, ax=a3, title=f"toy (trained s={toy.s:g}, m={toy.m:g})")
    fig.tight_layout()
    stop = stop_angle(s, m, c)
    reach = ("never reaches p = 0.99 (s too small)" if math.isnan(stop)
             else f"reaches p = 0.99 at θ ≤ {stop:.0f}°")
    msg = (f"Result: s={s:g}, m={m:.2f}{' (easy margin)' if easy_margin else ''}: gap {100 * gap:.0f} % of the "
           f"circle; the true class {reach}")
    return fig, msg





# ---------------------------------------------------------------------- numerical safety

def _value_and_grad(fn, c: float) -> tuple[float, float]:
    x = torch.tensor([c], dtype=torch.float32, requires_grad=True)
    y = fn(x)
    y.sum().backward()
    return float(y.detach()[0]), float(x.grad[0])


def naive_sqrt_arcface_logit(cos: torch.Tensor, m: float) -> torch.Tensor:
    """cos(theta + m) = cos cos m - sqrt(1 - cos^2) sin m with a bare sqrt: NaN for |cos| > 1,
    infinite gradient at |cos| = 1."""
    return cos * math.cos(m) - torch.sqrt(1 - cos * cos) * math.sin(m)


def numerical_safety_table(m: float = 0.5,
                           cos_values: Sequence[float] = (-1.0, 0.0, 0.999, 1.0, 1.0000001)) -> str:
    """Value and gradient d(logit)/d(cos) of three ArcFace implementations at chosen cos(theta),
    in float32 (1.0000001 is what float32 rounding gives for a photo exactly on its centre)."""
    head = ArcFaceHead(2, 2, s=1.0, m=m)
    # the head clamps cos to [-1, 1] before target_logit (CosineHead.cosine); do the same here
    impls = {"naive acos: cos(acos(c) + m)": lambda x: naive_arcface_logit(x, m),
             "naive sqrt: c cos m - sqrt(1-c²) sin m": lambda x: naive_sqrt_arcface_logit(x, m),
             "helpers ArcFaceHead (clamp + safe sqrt)": lambda x: head.target_logit(x.clamp(-1.0, 1.0))}
    lines = [f"{'implementation':<40}" + "".join(f"{format(c, '.8g'):>22}" for c in cos_values), " " * 40 +
             "".join(f"{'value':>11}{'gradient':>11}" for _ in cos_values)]
    for name, fn in impls.items():
        cells = []
        for c in cos_values:
            v, g = _value_and_grad(fn, c)
            cells.append(f"{v:>11.4g}{g:>11.4g}")
        lines.append(f"{name:<40}" + "".join(cells))
    return "\n".join(lines)


@dataclass
class SelfCosines:
    """cos(theta) of normalised float32 vectors with themselves (exactly 1 in real numbers)."""

    n: int
    dim: int
    above_one: float
    below_one: float
    max: float
    nan_after_acos: float

    def __str__(self) -> str:
        return (f"{self.n} random {self.dim}-D float32 vectors, each normalised and compared with itself:\n"
                f"  cos above 1: {100 * self.above_one:.1f} % (largest {self.max:.9f}), below 1: "
                f"{100 * self.below_one:.1f} %, exactly 1: {100 * (1 - self.above_one - self.below_one):.1f} %\n"
                f"  acos(cos) is NaN for {100 * self.nan_after_acos:.1f} % of them")


def float32_self_cosines(n: int = 1000, dim: int = 512, seed: int = 0) -> SelfCosines:
    """How often float32 rounding puts cos(theta) of a photo exactly on its centre above 1."""
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    c = (e * e).sum(1)
    return SelfCosines(n, dim, float((c > 1).float().mean()), float((c < 1).float().mean()), float(c.max()),
                       float(torch.isnan(torch.acos(c)).float().mean()))
