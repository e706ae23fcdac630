"""Looking at embeddings (notebook 04): 2-D maps (UMAP, t-SNE, PCA), similarity heatmaps and
nearest-neighbour galleries, for known people and for strangers never seen in training.

All maps use cosine geometry: inputs are L2-normalised first, UMAP uses metric='cosine'.
umap-learn is imported on first use (numba compiles it, in the course's writable cache folder). Every projection takes a seed, so a rerun draws the same map.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..evaluate.metrics import l2_normalize
from ..runtime import setup_numba_cache

METHODS = ("umap", "tsne", "pca")
SPLITS = ("train", "test", "strangers", "test + strangers", "all")


# ---------------------------------------------------------------------- UMAP and its compile time

def import_umap():
    """`import umap` with its warnings silenced; returns the module (slow the first time: numba).

    Points numba at the course's writable cache first (`NUMBA_CACHE_DIR`, unless already set).
    """
    setup_numba_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap
    return umap


def project(x, method: str = "umap", seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
            perplexity: float = 30.0) -> np.ndarray:
    """2-D map (N, 2) of the rows of `x` after L2 normalisation, by 'umap' (cosine), 'tsne' or 'pca'.

    n_neighbors (UMAP) and perplexity (t-SNE) are reduced when there are too few points.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    from threadpoolctl import threadpool_limits

    # One thread: a few hundred points gain nothing from more, and on a small, busy CPU t-SNE's OpenMP
    # threads stall each other (measured here: ~35 s with 2 threads vs ~4 s with 1 for 382 photos).
    with threadpool_limits(limits=1):
        return _project(x, method, seed, n_neighbors, min_dist, perplexity)


def _project(x, method: str, seed: int, n_neighbors: int, min_dist: float, perplexity: float) -> np.ndarray:
    x = l2_normalize(x)
    n = len(x)
    if n < 4:
        raise ValueError(f"a map needs at least 4 points; got {n}")
    if method == "pca":
        from sklearn.decomposition import PCA
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE
        import inspect
        perp = float(min(perplexity, (n - 1) / 3))
        # 500 iterations are plenty for a few hundred photos and halve the time on a small CPU
        iters = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
        return TSNE(n_components=2, perplexity=perp, metric="cosine", init="pca", random_state=seed,
                    **{iters: 500}).fit_transform(x)
    if not 2 <= int(n_neighbors):
        raise ValueError(f"n_neighbors={n_neighbors}: must be at least 2")
    if not 0.0 <= float(min_dist) <= 1.0:
        raise ValueError(f"min_dist={min_dist}: must be between 0 and 1")
    umap = import_umap()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", spectral-init notes
        reducer = umap.UMAP(n_components=2, n_neighbors=int(min(n_neighbors, n - 1)), min_dist=float(min_dist),
                            metric="cosine", random_state=seed, n_jobs=1)
        return reducer.fit_transform(x)


# ---------------------------------------------------------------------- the data shown

@dataclass
class EmbeddingSets:
    """Photos of known people (train/test) and strangers, each under several views
    (e.g. 'raw features', 'ArcFace'): views[view][split] -> (N, D) array."""

    names: list[str]                       # known people, label order
    labels: dict[str, np.ndarray]          # split -> labels (strangers: their own ids)
    images: dict[str, list]                # split -> PIL images (for galleries)
    views: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def add_view(self, name: str, per_split: dict[str, np.ndarray]) -> None:
        for split, x in per_split.items():
            if len(x) != len(self.labels[split]):
                raise ValueError(f"view {name!r}, split {split!r}: {len(x)} rows for {len(self.labels[split])} photos")
        self.views[name] = {k: np.asarray(v) for k, v in per_split.items()}

    def select(self, view: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, labels, is_stranger, is_test) for a split name in SPLITS."""
        if view not in self.views:
            raise ValueError(f"unknown view {view!r}; have {list(self.views)}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        parts = {"train": ["train"], "test": ["test"], "strangers": ["strangers"],
                 "test + strangers": ["test", "strangers"], "all": ["train", "test", "strangers"]}[split]
        v = self.views[view]
        x = np.concatenate([v[p] for p in parts])
        y = np.concatenate([self.labels[p] for p in parts])
        stranger = np.concatenate([np.full(len(self.labels[p]), p == "strangers") for p in parts])
        test = np.concatenate([np.full(len(self.labels[p]), p == "test") for p in parts])
        return x, y, stranger, test


def course_sets(data, features, model=None, model_name: str = "ArcFace") -> EmbeddingSets:
    """EmbeddingSets of the course data (helpers.experiments.CourseData): known people's train / val / test
    photos and the strangers, under 'raw features' (frozen backbone) and, with a model, its embedding."""
    from ..evaluate.metrics import embed

    known_x = features[data.known_idx]
    sp = data.split
    parts = {"train": sp.train, "val": sp.val, "test": sp.test}
    labels = {k: np.asarray(data.known.labels)[v] for k, v in parts.items()}
    images = {k: [data.known.images[i] for i in v] for k, v in parts.items()}
    raw = {k: np.asarray(known_x[v]) for k, v in parts.items()}
    if data.strangers is not None and len(data.stranger_idx):
        labels["strangers"] = np.asarray(data.strangers.labels)
        images["strangers"] = list(data.strangers.images)
        raw["strangers"] = np.asarray(features[data.stranger_idx])
    else:
        raise ValueError("these maps need strangers: choose n_known smaller than the number of people")
    sets = EmbeddingSets(list(data.known.names), labels, images)
    sets.add_view("raw features", raw)
    if model is not None:
        import torch
        sets.add_view(model_name, {k: embed(model, torch.as_tensor(v).float()) for k, v in raw.items()})
    return sets


STRANGER_MARKERS = ("X", "P", "*", "D", "v", "^", "s", "p", "h", "<", ">", "d")


def palette(n: int):
    """n distinct colours for known people, never grey nor black (those are the strangers'):
    tab10 up to 9, then tab20 and tab20b (38 colours, greys left out), then hues."""
    if n <= 9:
        return [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)[:n]]
    if n <= 38:
        cols = [plt.get_cmap("tab20")(i) for i in range(20) if i not in (14, 15)]
        return (cols + [plt.get_cmap("tab20b")(i) for i in range(20)])[:n]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def plot_map(xy: np.ndarray, labels, names: Sequence[str], is_stranger=None, is_test=None, ax=None,
             title: str = "", legend: bool = True, mark_strangers: bool = True) -> plt.Axes:
    """Scatter a 2-D map. Known people: dots coloured by person (test photos: black edge), small and
    pale when strangers are shown, so that these stand out. Strangers: black markers, a shape per
    stranger (up to 12; more, or not `mark_strangers`: grey crosses, one legend entry). Colours are
    for known people only, so a stranger is never mistaken for a known person's colour. Over 12 known
    people the legend names them as one group."""
    labels = np.asarray(labels)
    n = len(labels)
    is_stranger = np.zeros(n, bool) if is_stranger is None else np.asarray(is_stranger, bool)
    is_test = np.zeros(n, bool) if is_test is None else np.asarray(is_test, bool)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    mute = bool(is_stranger.any())
    cols, group, labelled = palette(len(names)), len(names) > 12, set()
    for k, name in enumerate(names):
        for test, edge in ((False, "none"), (True, "k")):
            sel = (~is_stranger) & (labels == k) & (is_test == test)
            if sel.any():
                key = "all" if group else k       # one legend entry per person, or one for them all
                label = None if key in labelled else f"known people ({len(names)}, a colour each)" if group else name
                labelled.add(key)
                ax.scatter(*xy[sel].T, s=12 if mute else 26, color=cols[k], alpha=0.5 if mute else 1,
                           edgecolor=edge, lw=0.5 if mute else 0.7, label=label)
    if is_stranger.any():
        s_lab = labels[is_stranger]
        ids = np.unique(s_lab)
        if not mark_strangers or len(ids) > len(STRANGER_MARKERS):
            ax.scatter(*xy[is_stranger].T, marker="x", s=16, lw=0.9, c="0.25",
                       label=f"strangers ({len(ids)}, never trained on)")
        else:
            for j, sid in enumerate(ids):
                ax.scatter(*xy[is_stranger][s_lab == sid].T, marker=STRANGER_MARKERS[j], s=30, color="k",
                           edgecolor="w", lw=0.3, label=f"stranger {j + 1}")
    ax.set(xticks=[], yticks=[])
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return ax


def plot_maps(sets: EmbeddingSets, views: Sequence[str] | None = None, methods: Sequence[str] = METHODS,
              split: str = "all", seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> plt.Figure:
    """Rows: views (e.g. raw features, ArcFace); columns: UMAP, t-SNE, PCA. One legend below all panels,
    in a strip of its own, so it never covers a map."""
    views = list(views or sets.views)
    titles = {"umap": "UMAP (cosine)", "tsne": "t-SNE (cosine)", "pca": "PCA"}
    legend_in = 0.75                                   # inches kept free below the maps for the legend
    fig, axes = plt.subplots(len(views), len(methods), figsize=(3.2 * len(methods), 3.0 * len(views) + legend_in),
                             squeeze=False)
    for r, view in enumerate(views):
        x, y, stranger, test = sets.select(view, split)
        for c, method in enumerate(methods):
            xy = project(x, method, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist)
            plot_map(xy, y, sets.names, stranger, test, ax=axes[r, c], legend=False,
                     title=f"{view}: {titles[method]}")
    handles, lab = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, lab, loc="lower center", ncol=min(6, len(lab)), fontsize=8, frameon=False,
               markerscale=1.3)
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    return fig


def same_person_neighbours(x, labels, k: int = 5) -> float:
    """Share of each photo's k nearest neighbours (cosine, in the full embedding) that show the same
    person: a number for how well people cluster, independent of any 2-D map."""
    e = l2_normalize(x)
    labels = np.asarray(labels)
    k = min(k, len(e) - 1)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return float((labels[nn] == labels[:, None]).mean())


def pooled_neighbours(sets: EmbeddingSets, view: str, split: str = "test + strangers", k: int = 5) -> float:
    """`same_person_neighbours` over the photos of `split` pooled (what the UMAP panel reports): a
    stranger's neighbours may be known people's photos, and each person has only the photos of `split`."""
    x, y, stranger, _ = sets.select(view, split)
    return same_person_neighbours(x, np.where(stranger, y + len(sets.names), y), k)


def neighbour_shares(sets: EmbeddingSets, k: int = 5, pooled: str = "test + strangers") -> dict[str, tuple]:
    """Per view: `same_person_neighbours` (k, full embedding) among all photos of the known people, among
    the strangers, and among the photos of `pooled` together (the UMAP panel's number)."""
    known_parts = [p for p in ("train", "val", "test") if p in sets.labels]
    ky = np.concatenate([sets.labels[p] for p in known_parts])
    return {view: (same_person_neighbours(np.concatenate([v[p] for p in known_parts]), ky, k),
                   same_person_neighbours(v["strangers"], sets.labels["strangers"], k),
                   pooled_neighbours(sets, view, pooled, k)) for view, v in sets.views.items()}


def neighbour_table(sets: EmbeddingSets, k: int = 5, pooled: str = "test + strangers") -> str:
    """`neighbour_shares` as a table, in percent."""
    head = f"{'embedding':<16}{'known people':>16}{'strangers':>14}{pooled:>20}"
    lines = [head, "-" * len(head)]
    for view, (known, strangers, both) in neighbour_shares(sets, k, pooled).items():
        lines.append(f"{view:<16}{100 * known:>14.1f} %{100 * strangers:>12.1f} %{100 * both:>18.1f} %")
    return "\n".join(lines)


def map_view(sets: EmbeddingSets, view: str, split: str = "test + strangers", n_neighbors: int = 15,
             min_dist: float = 0.1, seed: int = 0) -> tuple[plt.Figure, str]:
    """What the UMAP panel draws: one UMAP of `split` under `view`; returns (figure, "Result: ...")."""
    x, y, stranger, test = sets.select(view, split)
    t0 = time.perf_counter()
    xy = project(x, "umap", seed=seed, n_neighbors=n_neighbors, min_dist=min_dist)
    seconds = time.perf_counter() - t0
    fig, ax = plt.subplots(figsize=(9.0, 5.6))
    plot_map(xy, y, sets.names, stranger, test, ax=ax,
             title=f"{view}: UMAP, n_neighbors={min(n_neighbors, len(x) - 1)}, min_dist={min_dist:g}")
    fig.tight_layout()
    k = pooled_neighbours(sets, view, split)
    msg = (f"Result: UMAP of {len(x)} photos ({split}, {view}) in {seconds:.1f} s; {100 * k:.1f} % of the "
           f"5 nearest neighbours among these photos (full embedding) are the same person")
    return fig, msg


# ---------------------------------------------------------------------- heatmap and galleries

def similarity_heatmap(x, labels, names: Sequence[str], ax=None, title: str = "") -> plt.Axes:
    """Cosine similarity of every pair of photos, ordered by person (seaborn); blocks on the
    diagonal = the same person."""
    import seaborn as sns

    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    e = l2_normalize(x)[order]
    sims = e @ e.T
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4))
    sns.heatmap(sims, vmin=-0.2, vmax=1.0, cmap="viridis", square=True, ax=ax, cbar_kws={"shrink": 0.7},
                xticklabels=False, yticklabels=False)
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    ends = np.r_[starts[1:], len(lab)]
    for s in starts[1:]:
        ax.axhline(s, color="w", lw=0.6)
        ax.axvline(s, color="w", lw=0.6)
    ax.set_yticks((starts + ends) / 2)
    ax.set_yticklabels([names[int(lab[s])] for s in starts], fontsize=7, rotation=0)
    ax.set_title(title, fontsize=9)
    return ax


def block_contrast(x, labels) -> tuple[float, float]:
    """(mean cosine of same-person pairs, mean cosine of different-person pairs), i < j."""
    e = l2_normalize(x)
    labels = np.asarray(labels)
    i, j = np.triu_indices(len(e), k=1)
    s = np.einsum("nd,nd->n", e[i], e[j])
    same = labels[i] == labels[j]
    return float(s[same].mean()), float(s[~same].mean())


def plot_heatmaps(sets: EmbeddingSets, split: str = "test") -> plt.Figure:
    """One similarity heatmap per view, side by side, of the same photos ordered by person."""
    views = list(sets.views)
    fig, axes = plt.subplots(1, len(views), figsize=(4.4 * len(views), 3.9), squeeze=False)
    names = sets.names if split != "strangers" else [f"stranger {i}" for i in range(int(sets.labels[split].max()) + 1)]
    for ax, view in zip(axes[0], views):
        similarity_heatmap(sets.views[view][split], sets.labels[split], names, ax=ax,
                           title=f"{view}: cosine similarity, {split} photos")
    fig.tight_layout()
    return fig


def contrast_table(sets: EmbeddingSets, split: str = "test") -> str:
    """Mean cosine of same-person and different-person pairs, per view."""
    lines = []
    for view in sets.views:
        same, diff = block_contrast(sets.views[view][split], sets.labels[split])
        lines.append(f"{view:<16} same person {same:.2f}, different people {diff:.2f}, difference {same - diff:.2f}")
    return "\n".join(lines)


def gallery_queries(sets: EmbeddingSets, view: str, n_known: int = 3, n_strangers: int = 1,
                    gallery_split: str = "train") -> list[tuple[str, int]]:
    """The known test photos hardest to match (smallest lead of the right person) and the strangers that
    look most like a known person (highest best-match score): (split, index) pairs."""
    gx, gy = sets.views[view][gallery_split], sets.labels[gallery_split]
    known = hardest_queries(gx, gy, sets.views[view]["test"], sets.labels["test"], n_known)
    _, score = nearest(gx, sets.views[view]["strangers"], 1)
    strangers = np.argsort(-score[:, 0], kind="stable")[:n_strangers]
    return [("test", int(i)) for i in known] + [("strangers", int(i)) for i in strangers]


def random_queries(sets: EmbeddingSets, n_known: int = 3, n_strangers: int = 1, seed: int = 0,
                   split: str = "test") -> list[tuple[str, int]]:
    """Gallery queries drawn at random (seeded): `n_known` photos of `split` from different known people
    and `n_strangers` stranger photos from different strangers, as (split, index) pairs. Fair to every
    view: none is picked for being easy or hard in one of them."""
    rng = np.random.default_rng(seed)
    out = []
    for part, n in ((split, n_known), ("strangers", n_strangers)):
        labels = np.asarray(sets.labels[part])
        people = rng.permutation(np.unique(labels))[:n]
        out += [(part, int(rng.choice(np.flatnonzero(labels == p)))) for p in people]
    return out


@dataclass
class Neighbours:
    """For each query: indices of its k closest gallery photos and their cosine similarities."""

    queries: np.ndarray
    index: np.ndarray   # (Q, k)
    score: np.ndarray   # (Q, k)


def nearest(gallery_x, query_x, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(indices (Q, k), cosine (Q, k)) of the k gallery photos closest to each query."""
    sims = l2_normalize(query_x) @ l2_normalize(gallery_x).T
    k = min(k, sims.shape[1])
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, 1)


def hardest_queries(gallery_x, gallery_y, query_x, query_y, n: int = 3) -> np.ndarray:
    """Queries whose best same-person match beats the best other-person match by the least
    (wrong 1-NN answers first): the ones worth looking at."""
    sims = l2_normalize(query_x) @ l2_normalize(gallery_x).T
    gy, qy = np.asarray(gallery_y), np.asarray(query_y)
    same = gy[None, :] == qy[:, None]
    margin = np.where(same, sims, -np.inf).max(1) - np.where(~same, sims, -np.inf).max(1)
    return np.argsort(margin, kind="stable")[:n]


def plot_gallery(query_images: Sequence, query_titles: Sequence[str], match_images: Sequence[Sequence],
                 match_ok: np.ndarray, match_scores: np.ndarray, size: float = 1.1) -> plt.Figure:
    """Rows: a query photo, then its closest matches framed green (same person) or red (other),
    with the cosine similarity above each."""
    q, k = np.asarray(match_scores).shape
    fig, axes = plt.subplots(q, k + 1, figsize=((k + 1) * size, q * size * 1.3), squeeze=False)
    for r in range(q):
        ax = axes[r, 0]
        ax.imshow(query_images[r])
        ax.set_title(query_titles[r], fontsize=7)
        ax.set(xticks=[], yticks=[])
        for side in ax.spines.values():
            side.set(color="k", lw=2)
        for c in range(k):
            ax = axes[r, c + 1]
            ax.imshow(match_images[r][c])
            ax.set(xticks=[], yticks=[])
            ok = bool(match_ok[r, c])
            for side in ax.spines.values():
                side.set(color="tab:green" if ok else "tab:red", lw=3)
            ax.set_title(f"{match_scores[r, c]:.2f}", fontsize=7, color="tab:green" if ok else "tab:red")
    fig.tight_layout()
    return fig


def neighbour_gallery(sets: EmbeddingSets, view: str, queries: Sequence[tuple[str, int]], k: int = 5,
                      gallery_split: str = "train") -> tuple[plt.Figure, Neighbours]:
    """Galleries for queries given as (split, index) pairs, matched against the `gallery_split`
    photos of the known people; a stranger's matches are all wrong by definition."""
    gx = sets.views[view][gallery_split]
    gy = sets.labels[gallery_split]
    gimg = sets.images[gallery_split]
    q_img, q_title, m_img, ok, scores, q_idx = [], [], [], [], [], []
    for split, i in queries:
        qx = sets.views[view][split][i:i + 1]
        idx, sc = nearest(gx, qx, k)
        q_img.append(sets.images[split][i])
        who = "stranger" if split == "strangers" else sets.names[int(sets.labels[split][i])]
        q_title.append(f"query: {who}")
        m_img.append([gimg[j] for j in idx[0]])
        same = (gy[idx[0]] == sets.labels[split][i]) if split != "strangers" else np.zeros(len(idx[0]), bool)
        ok.append(same)
        scores.append(sc[0])
        q_idx.append(idx[0])
    fig = plot_gallery(q_img, q_title, m_img, np.array(ok), np.array(scores))
    return fig, Neighbours(np.array([i for _, i in queries]), np.array(q_idx), np.array(scores))
