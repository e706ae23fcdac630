"""Measuring a face model: accuracy, confusion, verification (ROC, EER, TAR@FAR) and open set."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from .training import evaluate_logits


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def l2_normalize(x) -> np.ndarray:
    x = _np(x).astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def predict(model, x) -> np.ndarray:
    """Predicted person (label) for features or an ImageDataset."""
    return _np(evaluate_logits(model, x).argmax(1))


@torch.no_grad()
def embed(model, x, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings of features (tensor) or an ImageDataset, in eval mode."""
    from torch.utils.data import DataLoader
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    if isinstance(x, torch.Tensor):
        out = [model.embed(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    else:
        out = [model.embed(xb.to(device)).cpu() for xb, _ in DataLoader(x, batch_size=batch_size)]
    model.train(was)
    return torch.cat(out).numpy()


def accuracy(y_true, y_pred) -> float:
    return float((_np(y_true) == _np(y_pred)).mean())


def per_person_accuracy(y_true, y_pred, names: list[str]) -> dict[str, float]:
    y_true, y_pred = _np(y_true), _np(y_pred)
    return {n: float((y_pred[y_true == i] == i).mean()) for i, n in enumerate(names) if (y_true == i).any()}


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    return confusion_matrix(_np(y_true), _np(y_pred), labels=list(range(num_classes)))


def nearest_neighbour_predict(gallery_x, gallery_y, query_x) -> np.ndarray:
    """1-nearest-neighbour by cosine similarity."""
    sims = l2_normalize(query_x) @ l2_normalize(gallery_x).T
    return _np(gallery_y)[sims.argmax(1)]


def nearest_neighbour_accuracy(gallery_x, gallery_y, query_x, query_y) -> float:
    return accuracy(query_y, nearest_neighbour_predict(gallery_x, gallery_y, query_x))


def linear_probe_accuracy(train_x, train_y, test_x, test_y, seed: int = 0) -> float:
    """Logistic regression on L2-normalised frozen features (scikit-learn)."""
    clf = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    clf.fit(l2_normalize(train_x), _np(train_y))
    return accuracy(test_y, clf.predict(l2_normalize(test_x)))


def pair_scores(emb, labels) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity and same-person flag for every pair i < j."""
    e = l2_normalize(emb)
    labels = _np(labels)
    i, j = np.triu_indices(len(e), k=1)
    return np.einsum("nd,nd->n", e[i], e[j]), labels[i] == labels[j]


@dataclass
class Verification:
    """Same-person vs different-person decisions over all pairs."""

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


def verification(emb, labels, far: float = 0.01) -> Verification:
    """ROC, AUC, equal error rate and true-accept rate at a false-accept rate, over all pairs."""
    scores, same = pair_scores(emb, labels)
    if same.all() or not same.any():
        raise ValueError("verification needs pairs of the same person and of different people")
    fpr, tpr, thr = roc_curve(same, scores)
    fnr = 1 - tpr
    k = int(np.nanargmin(np.abs(fnr - fpr)))
    eer = float((fpr[k] + fnr[k]) / 2)
    tar = float(np.interp(far, fpr, tpr))
    return Verification(float(roc_auc_score(same, scores)), eer, float(thr[k]), tar, far, fpr, tpr, len(scores))


def class_centroids(emb, labels, num_classes: int | None = None) -> np.ndarray:
    """Mean embedding of each person, re-normalised: the enrolment gallery."""
    e, labels = l2_normalize(emb), _np(labels)
    k = num_classes or int(labels.max()) + 1
    return l2_normalize(np.stack([e[labels == c].mean(0) for c in range(k)]))


@dataclass
class OpenSet:
    """Known people accepted (and named right) vs strangers rejected, at one threshold."""

    threshold: float
    known_accepted: float      # known photos whose best score passes the threshold
    known_correct: float       # ... and are given the right name
    strangers_rejected: float  # stranger photos whose best score stays below it

    def __str__(self) -> str:
        return (f"threshold {self.threshold:.2f}: known people accepted {100 * self.known_accepted:.1f} % "
                f"(named right {100 * self.known_correct:.1f} %), strangers rejected "
                f"{100 * self.strangers_rejected:.1f} %")


def best_match(gallery: np.ndarray, query) -> tuple[np.ndarray, np.ndarray]:
    """(index of the closest gallery entry, its cosine score) for each query."""
    sims = l2_normalize(query) @ l2_normalize(gallery).T
    return sims.argmax(1), sims.max(1)


def open_set(gallery: np.ndarray, known_emb, known_labels, stranger_emb, threshold: float) -> OpenSet:
    """Rates at `threshold` for a gallery of person centroids."""
    idx, score = best_match(gallery, known_emb)
    _, s_score = best_match(gallery, stranger_emb)
    ok = score >= threshold
    return OpenSet(float(threshold), float(ok.mean()), float((ok & (idx == _np(known_labels))).mean()),
                   float((s_score < threshold).mean()))


def choose_threshold(gallery: np.ndarray, known_emb, stranger_emb) -> float:
    """Threshold where known-accepted equals strangers-rejected (validation data only)."""
    _, k = best_match(gallery, known_emb)
    _, s = best_match(gallery, stranger_emb)
    y = np.r_[np.ones(len(k)), np.zeros(len(s))]
    fpr, tpr, thr = roc_curve(y, np.r_[k, s])
    i = int(np.nanargmin(np.abs((1 - tpr) - fpr)))
    return float(min(thr[i], 1.0))
