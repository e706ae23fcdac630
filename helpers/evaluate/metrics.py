"""Measuring a face model: accuracy, confusion, verification (ROC, EER, TAR@FAR) and open set.

The one implementation of the course's measures: EER from the full ROC (`eer_from_roc`), one
threshold rule (`eer_threshold`) and one open-set report (`OpenSetReport`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from ..runtime import run_batched

Array = Union[np.ndarray, torch.Tensor, Sequence]
"""Anything `np.asarray` takes: a NumPy array, a (CPU) tensor or a list."""


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def l2_normalize(x: Array) -> np.ndarray:
    """(N, D) rows scaled to length 1, as float64.

    Notebook 01, inside `few_shot_table`.
    """
    x = _np(x).astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def evaluate_logits(model: torch.nn.Module, x, batch_size: int = 256, device=None) -> torch.Tensor:
    """Logits (N, num_classes), s*cos for margin heads, of features (N, D) or an image Dataset, in eval mode.

    Notebook 02, inside `compare_heads_over_seeds`.
    """
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        return run_batched(model, x, batch_size, device)
    finally:
        model.train(was)


def predict(model: torch.nn.Module, x: torch.Tensor | torch.utils.data.Dataset) -> np.ndarray:
    """Predicted person (N,) for features (N, D) or an ImageDataset of N photos.

    Notebook 02, inside `compare_heads_over_seeds`.
    """
    return _np(evaluate_logits(model, x).argmax(1))


def embed(model: torch.nn.Module, x: torch.Tensor | torch.utils.data.Dataset, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings (N, 512) of features (N, D) or an image Dataset, in eval mode.

    Notebook 02, inside `compare_heads_over_seeds`.
    """
    was = model.training
    model.eval()
    try:
        return run_batched(model.embed, x, batch_size, next(model.parameters()).device).numpy()
    finally:
        model.train(was)


def accuracy(y_true: Array, y_pred: Array) -> float:
    """Share of (N,) predictions equal to the (N,) labels, 0-1.

    Notebook 01, inside `few_shot_table`.
    """
    return float((_np(y_true) == _np(y_pred)).mean())


def per_person_accuracy(y_true: Array, y_pred: Array, names: list[str]) -> dict[str, float]:
    """Accuracy of each person who has a photo in `y_true`: {name: 0-1}.

    Not run by a notebook or the command line.
    """
    y_true, y_pred = _np(y_true), _np(y_pred)
    return {n: float((y_pred[y_true == i] == i).mean()) for i, n in enumerate(names) if (y_true == i).any()}


def confusion(y_true: Array, y_pred: Array, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true person, column = predicted person.

    Not run by a notebook or the command line.
    """
    return confusion_matrix(_np(y_true), _np(y_pred), labels=list(range(num_classes)))


def nearest_neighbour_predict(gallery_x: Array, gallery_y: Array, query_x: Array) -> np.ndarray:
    """1-nearest-neighbour by cosine distance (scikit-learn): gallery (G, D), labels (G,), queries (Q, D) -> (Q,).

    Notebook 01, inside `few_shot_table`.
    """
    knn = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
    return knn.fit(_np(gallery_x), _np(gallery_y)).predict(_np(query_x))


def nearest_neighbour_accuracy(gallery_x: Array, gallery_y: Array, query_x: Array, query_y: Array) -> float:
    """1-NN accuracy (cosine) of (M, D) queries against an (N, D) gallery, 0-1.

    Notebook 01, inside `few_shot_table`.
    """
    return accuracy(query_y, nearest_neighbour_predict(gallery_x, gallery_y, query_x))


def linear_probe_accuracy(train_x: Array, train_y: Array, test_x: Array, test_y: Array, seed: int = 0) -> float:
    """Logistic regression on L2-normalised frozen features (scikit-learn).

    Notebook 01, inside `few_shot_table`.
    """
    clf = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    clf.fit(l2_normalize(train_x), _np(train_y))
    return accuracy(test_y, clf.predict(l2_normalize(test_x)))


def pair_scores(emb: Array, labels: Array) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity (P,) and same-person flag (P,) for every pair i < j of N embeddings (N, D); P = N(N-1)/2.

    Notebook 02, inside `compare_heads_over_seeds`.
    """
    e = l2_normalize(emb)
    labels = _np(labels)
    i, j = np.triu_indices(len(e), k=1)
    return np.einsum("nd,nd->n", e[i], e[j]), labels[i] == labels[j]


@dataclass
class Verification:
    """Same-person vs different-person decisions over all pairs.

    Notebook 02, inside `compare_heads_over_seeds`.
    """

    auc: float
    eer: float
    eer_threshold: float
    tar_at_far: float
    far: float
    fpr: np.ndarray
    tpr: np.ndarray
    num_pairs: int

    def __str__(self) -> str:
        return (f"AUC {self.auc:.3f}, EER {100 * self.eer:.1f} % (threshold {self.eer_threshold:.2f}), "
                f"TAR {100 * self.tar_at_far:.1f} % at FAR {100 * self.far:g} % over {self.num_pairs:,} pairs")


def eer_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The equal error rate: where the ROC crosses FNR = FPR, linearly interpolated.

    `fpr`, `tpr`: the full ROC (sklearn `roc_curve(..., drop_intermediate=False)`), FPR
    non-decreasing. Between the two ROC points that bracket the crossing, FPR and FNR are
    interpolated linearly, so the EER does not depend on which points sklearn kept. The threshold
    that goes with it is `eer_threshold` (the course's one threshold rule).

    Notebook 02, inside `compare_heads_over_seeds`.
    """
    fnr = 1 - tpr
    d = fnr - fpr  # starts >= 0 (threshold above every score), ends <= 0
    k = int(np.flatnonzero(d <= 0)[0]) if (d <= 0).any() else len(d) - 1
    if k == 0 or d[k] == 0:
        return float((fpr[k] + fnr[k]) / 2)
    w = d[k - 1] / (d[k - 1] - d[k])  # fraction of the way from point k-1 to k where d = 0
    return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


def verification(emb: Array, labels: Array, far: float = 0.01) -> Verification:
    """ROC, AUC, equal error rate and true-accept rate at a false-accept rate, over all pairs i < j.

    emb: (N, D) embeddings (normalised here); labels: (N,) person ids. EER and TAR come from the
    full ROC with linear interpolation (`eer_from_roc`); the EER threshold is `eer_threshold` of
    same-person against different-person pair scores, the rule the recogniser uses.

    Notebook 02, inside `compare_heads_over_seeds`.
    """
    scores, same = pair_scores(emb, labels)
    if same.all() or not same.any():
        raise ValueError("verification needs pairs of the same person and of different people")
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    tar = float(np.interp(far, fpr, tpr))
    return Verification(float(roc_auc_score(same, scores)), eer_from_roc(fpr, tpr),
                        eer_threshold(scores[same], scores[~same]), tar, far, fpr, tpr, len(scores))


def class_centroids(emb: Array, labels: Array, num_classes: int | None = None) -> np.ndarray:
    """Mean embedding of each person, re-normalised: the enrolment gallery (people, D) from (N, D) and labels (N,).

    Notebook 04, inside `open_set_for`.
    """
    e, labels = l2_normalize(emb), _np(labels)
    k = num_classes or int(labels.max()) + 1
    return l2_normalize(np.stack([e[labels == c].mean(0) for c in range(k)]))


@dataclass
class OpenSetReport:
    """Every kind of answer at one threshold (fractions): known people named right, given a wrong
    name or called unknown; strangers rejected or taken for someone (the dangerous mistake).

    Notebook 04, inside `open_set_for`.
    """

    known_correct: float
    known_wrong_name: float
    known_rejected: float
    strangers_rejected: float   # NaN when there were no stranger photos
    strangers_accepted: float
    threshold: float

    @property
    def known_accepted(self) -> float:
        """Known photos whose best score passes the threshold (right name or not)."""
        return self.known_correct + self.known_wrong_name

    def __str__(self) -> str:
        return (f"threshold {self.threshold:.2f}: known people named right {100 * self.known_correct:.1f} %, "
                f"wrong name {100 * self.known_wrong_name:.1f} %, called unknown {100 * self.known_rejected:.1f} %; "
                f"strangers rejected {100 * self.strangers_rejected:.1f} %, "
                f"taken for someone {100 * self.strangers_accepted:.1f} %")

    def as_dict(self) -> dict:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def best_match(gallery: np.ndarray, query: Array) -> tuple[np.ndarray, np.ndarray]:
    """(index of the closest gallery entry (N,), its cosine score (N,)) for queries (N, D).

    Notebook 04, inside `open_set_for`.
    """
    sims = l2_normalize(query) @ l2_normalize(gallery).T
    return sims.argmax(1), sims.max(1)


def open_set_rates(known_score: Array, known_right: Array, stranger_score: Array, threshold: float) -> OpenSetReport:
    """The open-set report from best-match scores: known photos' scores (N,) and whether their best
    match is the right person (N,), strangers' best scores (M,; may be empty).

    Notebook 04, inside `open_set_for`.
    """
    known_score, known_right = np.asarray(known_score, float), np.asarray(known_right, bool)
    stranger_score = np.asarray(stranger_score, float)
    if len(known_score) == 0:
        raise ValueError("open-set rates need photos of known people")
    ok = known_score >= threshold
    s_rej = float((stranger_score < threshold).mean()) if len(stranger_score) else float("nan")
    return OpenSetReport(float((ok & known_right).mean()), float((ok & ~known_right).mean()), float((~ok).mean()),
                         s_rej, 1 - s_rej, float(threshold))


def open_set(gallery: np.ndarray, known_emb: Array, known_labels: Array, stranger_emb: Array | None, threshold: float) -> OpenSetReport:
    """Open-set report for a gallery (people, D) of person centroids at `threshold`.

    Notebook 06, inside `open_set_report`.
    """
    idx, score = best_match(gallery, known_emb)
    s_score = best_match(gallery, stranger_emb)[1] if stranger_emb is not None and len(stranger_emb) else []
    return open_set_rates(score, idx == _np(known_labels), s_score, threshold)


def eer_threshold(genuine: Array, impostor: Array) -> float:
    """The course's one threshold rule: where false rejects of `genuine` scores equal false accepts
    of `impostor` scores (ties: the smallest total error, then the lowest threshold).

    Placed halfway between two neighbouring observed scores, so that when the two groups do not
    overlap it sits in the middle of the gap rather than on the lowest genuine score.

    Notebook 02, inside `compare_heads_over_seeds`.
    """
    genuine, impostor = np.sort(np.asarray(genuine, float)), np.sort(np.asarray(impostor, float))
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("choosing a threshold needs genuine and impostor scores")
    scores = np.unique(np.r_[genuine, impostor])
    frr = np.searchsorted(genuine, scores, side="left") / len(genuine)           # genuine < t
    far = 1 - np.searchsorted(impostor, scores, side="left") / len(impostor)     # impostor >= t
    diff = np.abs(frr - far)
    best = np.flatnonzero(diff == diff.min())
    total = (frr + far)[best]
    i = int(best[total == total.min()][0])
    below = scores[i - 1] if i > 0 else scores[i] - 1e-3
    return float(np.clip((below + scores[i]) / 2, -1.0, 1.0))


def threshold_from_strangers(gallery: np.ndarray, known_emb: Array, known_labels: Array, stranger_emb: Array) -> float:
    """`eer_threshold` between known photos accepted as the right person and strangers rejected.

    Use validation photos and strangers who are not the test strangers: never the test data.

    Notebook 04, inside `open_set_for`.
    """
    idx, k = best_match(gallery, known_emb)
    k = np.where(idx == _np(known_labels), k, -1.0)  # a wrong name is not a correct accept
    _, s = best_match(gallery, stranger_emb)
    return eer_threshold(k, s)


def threshold_without_strangers(gallery: np.ndarray, emb: Array, labels: Array) -> float:
    """`eer_threshold` when no stranger photos exist: each held-out photo scored against the other
    people only plays a stranger (a known person missing from the gallery).

    Notebook 06, inside `evaluate_protocol`.
    """
    emb, labels = l2_normalize(emb), _np(labels)
    sims = emb @ l2_normalize(gallery).T
    genuine = sims[np.arange(len(labels)), labels]
    others = sims.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return eer_threshold(genuine, others.max(1))


def one_shot_identification(emb: Array, labels, seed: int = 0) -> float:
    """Enrol one random photo per person, identify the others by the nearest enrolled photo (cosine:
    embeddings (N, D) are L2-normalised here).

    Notebook 05, inside `evaluate_run`.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    people = np.unique(labels)
    enrol = np.array([rng.choice(np.flatnonzero(labels == p)) for p in people])
    query = np.setdiff1d(np.arange(len(labels)), enrol)
    e = l2_normalize(emb)
    sims = e[query] @ e[enrol].T
    return float((people[sims.argmax(1)] == labels[query]).mean())
