"""Verification and open set in pictures (notebook 04).

- ROC curves with their equal error rate (EER) for same/different-person pairs;
- "seen vs unseen": the EER among strangers of the raw frozen features and of an ArcFace embedding
  trained on k known people, for several k;
- open set: each photo's best match against the known people's centres, and at a threshold the
  share of known people accepted vs strangers rejected;
- claims over seeds: per-seed values and the paired 95 % interval of a difference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data.folders import FaceSet

from ..data.splits import split_known_strangers, split_people, split_per_person
from ..evaluate.metrics import (OpenSetReport, Verification, best_match, class_centroids, embed, l2_normalize,
                                open_set_rates, pair_scores, threshold_from_strangers, predict, accuracy, verification)
from ..train.fit import train_head_on_features


def plot_roc(results: dict[str, Verification], ax=None, title: str = "strangers: same person or not?") -> plt.Axes:
    """ROC curves (log false-accept axis) with each curve's EER point."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 3.6))
    for k, (name, v) in enumerate(results.items()):
        line, = ax.plot(np.clip(v.fpr, 1e-4, 1), v.tpr, label=f"{name}: EER {100 * v.eer:.1f} %")
        fnr = 1 - v.tpr
        i = int(np.nanargmin(np.abs(fnr - v.fpr)))
        ax.plot(max(v.fpr[i], 1e-4), v.tpr[i], "o", color=line.get_color())
    ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="false accepts (different people called same)",
           ylabel="true accepts (same person)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_roc_and_scores(results: dict[str, Verification], pairs: dict[str, tuple]) -> plt.Figure:
    """The ROC curves, and beside them per view the cosine of every same-person (genuine) and
    different-person (impostor) pair, with the EER threshold; `pairs[view]` = (embeddings, labels)."""
    fig, axes = plt.subplots(1, 1 + len(results), figsize=(4.4 + 3.4 * len(results), 3.4))
    plot_roc(results, ax=axes[0])
    for ax, (view, v) in zip(axes[1:], results.items()):
        scores, same = pair_scores(*pairs[view])
        bins = np.linspace(float(scores.min()), 1, 49)
        ax.hist(scores[same], bins, density=True, alpha=0.7, color="tab:green", label=f"same person ({same.sum():,})")
        ax.hist(scores[~same], bins, density=True, alpha=0.6, color="tab:red",
                label=f"different people ({(~same).sum():,})")
        ax.axvline(v.eer_threshold, color="k", lw=1.2)
        ax.set(xlabel="cosine similarity of a pair", ylabel="density", yticks=[])
        ax.set_title(f"{view}: pairs, EER threshold {v.eer_threshold:.2f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


@dataclass
class UnseenRow:
    """EER among strangers before (raw frozen features) and after (ArcFace) training on n_known people."""

    n_known: int
    n_strangers: int
    stranger_pairs: int
    known_test_acc: float
    eer_raw: float
    eer_arcface: float

    def __str__(self) -> str:
        return (f"trained on {self.n_known:>2} people | {self.n_strangers:>2} strangers "
                f"({self.stranger_pairs:,} pairs) | known test acc {100 * self.known_test_acc:5.1f} % | "
                f"strangers' EER: raw features {100 * self.eer_raw:4.1f} %, ArcFace {100 * self.eer_arcface:4.1f} %")


def known_counts(wanted: Sequence[int], num_people: int, min_strangers: int = 2) -> tuple[int, ...]:
    """The numbers of known people to try, fitted to a data set of `num_people`: each value is capped so
    that `min_strangers` people stay strangers (and is at least 2), duplicates dropped, order kept.
    (9, 20, 30) stays as it is on ORL's 40 people; on 14 people it becomes (9, 12)."""
    top = num_people - min_strangers
    if top < 2:
        raise ValueError(f"{num_people} people: need at least {2 + min_strangers} (2 known, {min_strangers} strangers)")
    out: list[int] = []
    for k in wanted:
        k = max(2, min(int(k), top))
        if k not in out:
            out.append(k)
    return tuple(out)


def seen_vs_unseen(features: torch.Tensor, faces: FaceSet, n_known_values: Sequence[int] = (9, 20),
                   seed: int = 0, s: float = 16.0, m: float = 0.5, epochs: int = 30, lr: float = 1e-2,
                   shots: int | None = None) -> list[UnseenRow]:
    """For each k: pick k known people (seeded, as the course does), train the ArcFace embedding on
    their train photos (`shots` per person, None: all; cached features of all photos in `features`),
    and measure verification among the remaining people, who were never trained on."""
    from .experiments import indices_in

    rows = []
    for k in n_known_values:
        known, strangers = split_known_strangers(faces, n_known=k, seed=seed)
        if strangers is None or strangers.num_people < 2:
            raise ValueError(f"n_known={k} leaves fewer than 2 strangers out of {faces.num_people} people")
        kx = features[indices_in(faces, known)]
        sx = features[indices_in(faces, strangers)]
        sp = split_per_person(known.labels, shots=shots, seed=seed)
        model, hist = train_head_on_features(kx[sp.train], known.labels[sp.train], s=s, m=m, epochs=epochs,
                                             lr=lr, seed=seed, progress=False)
        if hist.diverged:
            raise RuntimeError(f"training on {k} people diverged: {hist.diverged}")
        raw = verification(sx.numpy(), strangers.labels)
        arc = verification(embed(model, sx), strangers.labels)
        acc = accuracy(known.labels[sp.test], predict(model, kx[sp.test]))
        rows.append(UnseenRow(k, strangers.num_people, raw.num_pairs, acc, raw.eer, arc.eer))
    return rows


@dataclass
class UnseenOverSeeds:
    """`seen_vs_unseen` for several seeds (each seed: other known people, split and training)."""

    seeds: list[int]
    rows: dict[int, list[UnseenRow]]     # n_known -> one row per seed

    def at(self, seed: int) -> list[UnseenRow]:
        return [rows[self.seeds.index(seed)] for rows in self.rows.values()]

    def difference(self, n_known: int) -> tuple[float, float]:
        """Mean and 95 % half-width of the strangers' EER, ArcFace minus raw features, paired by seed."""
        from .experiments import t_interval
        return t_interval([r.eer_arcface - r.eer_raw for r in self.rows[n_known]])

    def clear(self, n_known: int) -> bool:
        mean, half = self.difference(n_known)
        return bool(np.isfinite(half) and abs(mean) > half)

    def __str__(self) -> str:
        lines = [f"strangers' EER per seed ({', '.join(map(str, self.seeds))}) and ArcFace minus raw features, "
                 "paired by seed (mean ± 95 % t-interval):"]
        for k, rows in self.rows.items():
            mean, half = self.difference(k)
            lines += [f"trained on {k:>2} people",
                      "  raw features " + "".join(f"{100 * r.eer_raw:7.1f} %" for r in rows),
                      "  ArcFace      " + "".join(f"{100 * r.eer_arcface:7.1f} %" for r in rows),
                      f"  ArcFace minus raw features: {100 * mean:+.1f} %-points ± {100 * half:.1f} %-points"]
        return "\n".join(lines)


def seen_vs_unseen_over_seeds(features: torch.Tensor, faces: FaceSet, n_known_values: Sequence[int] = (9, 20),
                              seeds: Sequence[int] = range(5), **kw) -> UnseenOverSeeds:
    """`seen_vs_unseen` (keyword arguments `kw`) once per seed."""
    per_seed = [seen_vs_unseen(features, faces, n_known_values, seed=seed, **kw) for seed in seeds]
    return UnseenOverSeeds(list(seeds), {k: [rows[i] for rows in per_seed] for i, k in enumerate(n_known_values)})


def seed_lines(comparison, metric: str = "eer", what: str = "strangers' EER") -> str:
    """Per-seed values of each variant of an `experiments.SeedComparison`, then each variant minus the
    first, paired by seed (mean ± 95 % t-interval) and whether that interval contains 0."""
    names = list(comparison.runs)
    width = max(len(n) for n in names) + 2
    lines = [f"{what} per seed", f"{'seed':<{width}}" + "".join(f"{s:>9}" for s in comparison.seeds)]
    lines += [f"{n:<{width}}" + "".join(f"{100 * v:7.1f} %" for v in comparison.runs[n][metric]) for n in names]
    for n in names[1:]:
        mean, half = comparison.difference(n, names[0], metric)
        verdict = ("excludes 0: a clear difference" if comparison.clear(n, names[0], metric) else
                   "contains 0: no clear difference")
        lines.append(f"{n} minus {names[0]}: {100 * mean:+.1f} %-points ± {100 * half:.1f} %-points over "
                     f"{len(comparison.seeds)} seeds; the interval {verdict}")
    return "\n".join(lines)


def plot_paired_seeds(comparison, metric: str = "eer", ax=None, ylabel: str = "strangers' EER (%)") -> plt.Axes:
    """One grey line per seed across the variants (paired: same people and split), the mean in black."""
    names = list(comparison.runs)
    vals = 100 * np.array([comparison.runs[n][metric] for n in names])     # (variants, seeds)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.0))
    x = np.arange(len(names))
    for j, seed in enumerate(comparison.seeds):
        ax.plot(x, vals[:, j], "o-", color="0.6", lw=1, ms=4)
        ax.annotate(f"seed {seed}", (x[-1], vals[-1, j]), xytext=(4, 0), textcoords="offset points", fontsize=6,
                    va="center")
    ax.plot(x, vals.mean(1), "s-", color="k", lw=2, label="mean")
    ax.set(xticks=x, xlim=(-0.4, len(names) - 0.4), ylabel=ylabel)
    ax.set_xticklabels(names, fontsize=8)
    ax.legend(fontsize=7)
    return ax


# ---------------------------------------------------------------------- open set

@dataclass
class OpenSetScores:
    """Best-match cosine against the known people's centres, for known test photos and strangers."""

    known_score: np.ndarray
    known_right: np.ndarray      # the best match is the right person
    stranger_score: np.ndarray
    threshold: float             # chosen on held-out data (see open_set_scores)
    photos: str = "test"         # which photos the rates are measured on: "test" or "val"

    def __post_init__(self):
        self._check()

    def _check(self) -> None:
        if len(self.known_score) == 0 or len(self.stranger_score) == 0:
            raise ValueError(f"open set needs photos of known people and of strangers; got {len(self.known_score)} "
                             f"known and {len(self.stranger_score)} stranger photo(s)")

    @property
    def auc(self) -> float:
        """Chance that a known test photo scores higher than a stranger (threshold-free; 1 = perfect)."""
        from sklearn.metrics import roc_auc_score
        y = np.r_[np.ones(len(self.known_score)), np.zeros(len(self.stranger_score))]
        return float(roc_auc_score(y, np.r_[self.known_score, self.stranger_score]))

    def rates(self, threshold: float | None = None) -> OpenSetReport:
        self._check()
        t = self.threshold if threshold is None else float(threshold)
        return open_set_rates(self.known_score, self.known_right, self.stranger_score, t)


def open_set_scores(gallery_emb, gallery_labels, known_emb, known_labels, stranger_emb,
                    val_emb, val_labels, val_stranger_emb, photos: str = "test") -> OpenSetScores:
    """Enrol each known person as the mean of their `gallery_emb` photos; score every query by its
    best match. The threshold is the course's rule (`threshold_from_strangers`) on the validation
    photos and validation strangers, never on the test photos or test strangers."""
    gallery = class_centroids(gallery_emb, gallery_labels)
    idx, score = best_match(gallery, known_emb)
    _, s_score = best_match(gallery, stranger_emb)
    t = threshold_from_strangers(gallery, val_emb, val_labels, val_stranger_emb)
    return OpenSetScores(score, idx == np.asarray(known_labels), s_score, t, photos)


def threshold_view(scores: OpenSetScores, threshold: float | None = None) -> tuple[plt.Figure, str]:
    """What the threshold panel draws: score histograms with the threshold, and the trade-off curve
    (known accepted vs strangers rejected) with the chosen point. Returns (figure, "Result: ...")."""
    t = scores.threshold if threshold is None else float(threshold)
    if not -1.0 <= t <= 1.0:
        raise ValueError(f"threshold {t}: cosine similarities lie between -1 and 1")
    r = scores.rates(t)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.6, 3.1))
    bins = np.linspace(-0.2, 1, 49)
    a1.hist(scores.known_score, bins, alpha=0.7, density=True, label=f"known people ({scores.photos} photos)",
             color="tab:green")
    a1.hist(scores.stranger_score, bins, alpha=0.6, density=True, label=f"strangers ({scores.photos})", color="tab:red")
    a1.axvline(t, color="k", lw=1.2)
    a1.set(xlabel="best-match cosine to a known person's centre", ylabel="density")
    a1.set_title(f"threshold {t:.2f}", fontsize=9)
    a1.legend(fontsize=7)
    grid = np.linspace(-0.2, 1, 241)
    acc = [(scores.known_score >= g).mean() for g in grid]
    rej = [(scores.stranger_score < g).mean() for g in grid]
    a2.plot(100 * np.array(rej), 100 * np.array(acc), color="0.3")
    a2.plot(100 * r.strangers_rejected, 100 * r.known_accepted, "o", color="k")
    a2.set(xlabel="strangers rejected (%)", ylabel="known people accepted (%)", xlim=(-2, 102), ylim=(-2, 102))
    a2.set_title("moving the threshold trades one for the other", fontsize=9)
    fig.tight_layout()
    where = "" if scores.photos == "test" else f" (on the {scores.photos} photos and strangers)"
    return fig, f"Result: {r}{where}"


def open_set_for(sets, view: str, seed: int = 0, measure: str = "test") -> OpenSetScores:
    """Open-set scores of one view of embedding_maps.EmbeddingSets: the known people are enrolled from their
    train photos; the threshold is chosen on their val photos and on half of the strangers (by person), other
    strangers than the test strangers. `measure="test"`: the rates are measured on the test photos and the
    other half of the strangers (look once); "val": on the same validation photos and strangers that chose the
    threshold (for panels and exercises, which a learner may move as often as they like)."""
    if measure not in ("test", "val"):
        raise ValueError(f"measure={measure!r}: 'test' or 'val'")
    val_s, test_s = split_people(sets.labels["strangers"], 0.5, seed)
    v = sets.views[view]
    known, strangers = (("test", test_s) if measure == "test" else ("val", val_s))
    return open_set_scores(v["train"], sets.labels["train"], v[known], sets.labels[known], v["strangers"][strangers],
                           val_emb=v["val"], val_labels=sets.labels["val"], val_stranger_emb=v["strangers"][val_s],
                           photos=known)


def open_set_comparison(open_set: dict[str, OpenSetScores]) -> str:
    """The open-set rates of each view side by side, with what one photo is worth in percent."""
    first = next(iter(open_set.values()))
    nk, ns = len(first.known_score), len(first.stranger_score)
    rates = {view: sc.rates() for view, sc in open_set.items()}
    known = ", ".join(f"{view} {100 * r.known_correct:.1f} %" for view, r in rates.items())
    rejected = ", ".join(f"{view} {100 * r.strangers_rejected:.1f} %" for view, r in rates.items())
    return (f"known test photos named right: {known} (one photo of {nk} is {100 / nk:.1f} %)\n"
            f"test strangers rejected: {rejected} (one photo of {ns} is {100 / ns:.1f} %)")


def stranger_vs_known(sets, stranger: int, gallery_split: str = "train") -> dict[str, tuple[float, float, float]]:
    """Per view of embedding_maps.EmbeddingSets: (the best cosine of stranger photo `stranger` to a known
    person's `gallery_split` photo, the median of the known test photos' best cosine to their own person,
    the share of those below the stranger's)."""
    out = {}
    for view, v in sets.views.items():
        g, gy = l2_normalize(v[gallery_split]), np.asarray(sets.labels[gallery_split])
        own = np.where(gy[None] == np.asarray(sets.labels["test"])[:, None], l2_normalize(v["test"]) @ g.T, -2).max(1)
        best = float((l2_normalize(v["strangers"][stranger:stranger + 1]) @ g.T).max())
        out[view] = (best, float(np.median(own)), float((own < best).mean()))
    return out


def strangers_like_known(sets, gallery_split: str = "train") -> dict[str, float]:
    """Per view of embedding_maps.EmbeddingSets: the share of stranger photos whose best cosine to a known
    person's `gallery_split` photo is above the median known test photo's best cosine to its own person
    (all strangers count, so no single stranger is picked to suit one view)."""
    out = {}
    for view, v in sets.views.items():
        g, gy = l2_normalize(v[gallery_split]), np.asarray(sets.labels[gallery_split])
        own = np.where(gy[None] == np.asarray(sets.labels["test"])[:, None], l2_normalize(v["test"]) @ g.T, -2).max(1)
        best = (l2_normalize(v["strangers"]) @ g.T).max(1)
        out[view] = float((best > np.median(own)).mean())
    return out


def stranger_best_match(sets, stranger: int, gallery_split: str = "train") -> str:
    """`stranger_vs_known` in words, one line per view."""
    return "\n".join(f"{view:<13} the stranger's best match {best:.2f}; the known test photos' best match with "
                     f"their own person: median {median:.2f}, lower than the stranger's for {100 * share:.0f} %"
                     for view, (best, median, share) in stranger_vs_known(sets, stranger, gallery_split).items())


def rate_table(scores: OpenSetScores, thresholds) -> str:
    """Text table: known people accepted / named right and strangers rejected at each threshold."""
    lines = [f"{'threshold':>9} {'known accepted':>15} {'named right':>12} {'strangers rejected':>19}"]
    for t in thresholds:
        r = scores.rates(float(t))
        lines.append(f"{t:>9.2f} {100 * r.known_accepted:>13.1f} % {100 * r.known_correct:>10.1f} % "
                     f"{100 * r.strangers_rejected:>17.1f} %")
    return "\n".join(lines)
