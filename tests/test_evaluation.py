"""Evaluation on constructed embeddings whose right answers are known exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.evaluation import (accuracy, best_match, choose_threshold, class_centroids, confusion,
                                embed, l2_normalize, linear_probe_accuracy, nearest_neighbour_accuracy,
                                nearest_neighbour_predict, open_set, pair_scores, per_person_accuracy,
                                predict, verification)
from helpers.model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def clusters(people: int = 4, per_person: int = 6, dim: int = 16, noise: float = 0.05, seed: int = 0):
    """Embeddings near one orthogonal direction per person: perfectly separable."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(people), per_person)
    emb = np.eye(dim)[labels] + noise * rng.standard_normal((len(labels), dim))
    return emb, labels


def unit(*v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


# ------------------------------------------------------------------ verification

def test_pair_scores_all_pairs():
    emb = np.array([[1.0, 0], [2.0, 0], [0, 1.0]])
    scores, same = pair_scores(emb, [0, 0, 1])
    np.testing.assert_allclose(scores, [1.0, 0.0, 0.0], atol=1e-12)
    assert same.tolist() == [True, False, False]


def test_verification_separable_is_perfect():
    emb, labels = clusters()
    v = verification(emb, labels, far=0.01)
    assert v.auc == 1.0 and v.eer == 0.0 and v.tar_at_far == 1.0
    assert v.num_pairs == 24 * 23 // 2
    scores, same = pair_scores(emb, labels)
    assert scores[~same].max() < v.eer_threshold <= scores[same].min() + 1e-12
    assert "AUC 1.000" in str(v) and "EER 0.0 %" in str(v)


def test_verification_random_is_chance():
    rng = np.random.default_rng(1)
    emb, labels = rng.standard_normal((300, 32)), rng.integers(0, 5, 300)
    v = verification(emb, labels)
    assert abs(v.auc - 0.5) < 0.05 and abs(v.eer - 0.5) < 0.05


def test_verification_needs_both_kinds_of_pairs():
    with pytest.raises(ValueError, match="same person"):
        verification(np.eye(3), [0, 0, 0])
    with pytest.raises(ValueError, match="different people"):
        verification(np.eye(3), [0, 1, 2])


# ------------------------------------------------------------------ open set

def test_class_centroids_unit_means():
    emb = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 5.0]])
    c = class_centroids(emb, [0, 0, 1])
    np.testing.assert_allclose(c, [unit(1.8, 0.6, 0), [0, 0, 1.0]], atol=1e-12)


def test_open_set_rates_on_constructed_case():
    gallery = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])          # person 0, person 1
    known = np.array([unit(1, 0, 0, 0),                             # score 1.0 -> person 0, right
                      unit(0, 1, 0, 0),                             # score 1.0 -> person 1, right
                      unit(0, 0.6, 0.8, 0),                         # score 0.6 -> person 1, wrong (is 0)
                      unit(0.3, 0, np.sqrt(1 - 0.09), 0)])          # score 0.3 -> rejected
    known_labels = [0, 1, 0, 0]
    strangers = np.array([unit(0, 0, 1, 0),                         # score 0   -> rejected
                          unit(0.7, 0, 0, np.sqrt(1 - 0.49)),       # score 0.7 -> accepted (error)
                          unit(0, 0, 0, 1)])                        # score 0   -> rejected
    idx, score = best_match(gallery, known)
    assert idx.tolist() == [0, 1, 1, 0]
    np.testing.assert_allclose(score, [1.0, 1.0, 0.6, 0.3], atol=1e-12)
    r = open_set(gallery, known, known_labels, strangers, threshold=0.5)
    assert (r.known_accepted, r.known_correct, r.strangers_rejected) == (0.75, 0.5, pytest.approx(2 / 3))
    r = open_set(gallery, known, known_labels, strangers, threshold=0.8)
    assert (r.known_accepted, r.known_correct, r.strangers_rejected) == (0.5, 0.5, 1.0)
    assert "threshold 0.80" in str(r)
    # a score equal to the threshold passes, for strangers as for known people
    r = open_set(gallery, known, known_labels, np.array([unit(1, 0, 0, 0)]), threshold=1.0)
    assert (r.known_accepted, r.strangers_rejected) == (0.5, 0.0)


def test_choose_threshold_between_known_and_strangers():
    emb, labels = clusters(people=3, per_person=5, dim=8, noise=0.02)
    gallery = class_centroids(emb, labels)
    # strangers look somewhat like the known people: best scores between 0.70 and 0.85
    rng = np.random.default_rng(2)
    cos = rng.uniform(0.70, 0.85, 10)
    strangers = cos[:, None] * np.eye(8)[rng.integers(0, 3, 10)] \
        + np.sqrt(1 - cos ** 2)[:, None] * np.eye(8)[rng.integers(3, 8, 10)]
    _, known_scores = best_match(gallery, emb)
    _, stranger_scores = best_match(gallery, strangers)
    assert stranger_scores.max() < 0.86 and known_scores.min() > 0.95  # separable, gap high up
    t = choose_threshold(gallery, emb, strangers)
    assert stranger_scores.max() < t <= known_scores.min()
    r = open_set(gallery, emb, labels, strangers, t)
    assert (r.known_accepted, r.known_correct, r.strangers_rejected) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------ closed set

def test_nearest_neighbour_toy():
    gallery = np.array([[1.0, 0], [0, 1.0], [-1.0, 0]])
    gy = np.array([7, 8, 9])
    query = np.array([[5.0, 0.5], [0.2, 3.0], [-0.1, -0.01], [0.1, -3.0]])
    assert nearest_neighbour_predict(gallery, gy, query).tolist() == [7, 8, 9, 7]
    # cosine, not Euclidean: [0.1, -3] is nearer [1, 0] in angle than [0, 1]
    assert nearest_neighbour_accuracy(gallery, gy, query, [7, 8, 9, 8]) == 0.75


def test_linear_probe_separable_and_chance():
    emb, labels = clusters(people=4, per_person=10, noise=0.1)
    test_emb, test_labels = clusters(people=4, per_person=5, noise=0.1, seed=1)
    assert linear_probe_accuracy(emb, labels, test_emb, test_labels) == 1.0
    rng = np.random.default_rng(3)
    rand = linear_probe_accuracy(rng.standard_normal((80, 16)), rng.integers(0, 4, 80),
                                 rng.standard_normal((400, 16)), rng.integers(0, 4, 400))
    assert rand < 0.45  # chance is 0.25


def test_accuracy_per_person_and_confusion():
    y, p = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    assert accuracy(y, p) == pytest.approx(4 / 6)
    assert accuracy(torch.tensor(y), torch.tensor(p)) == pytest.approx(4 / 6)
    assert per_person_accuracy(y, p, ["a", "b", "c", "d"]) == {"a": 0.5, "b": 1.0, "c": 0.5}
    np.testing.assert_array_equal(confusion(y, p, 4), [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0],
                                                       [0, 0, 0, 0]])


def test_predict_and_embed_through_a_model():
    torch.manual_seed(0)
    model = build_model(3, feature_dim=8, head="softmax")
    with torch.no_grad():
        model.embedding.linear.weight.zero_()
        model.embedding.linear.weight[:8, :8] = torch.eye(8)
        model.embedding.linear.bias.zero_()
        model.head.weight.zero_()
        model.head.weight[:3, :3] = torch.eye(3)
    x = torch.zeros(3, 8)
    x[0, 2], x[1, 0], x[2, 1] = 1.0, 1.0, 1.0
    model.train()
    assert predict(model, x).tolist() == [2, 0, 1]
    assert model.training  # restored
    e = embed(model, x)
    assert e.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(e[:, :3], np.eye(3)[[2, 0, 1]], atol=1e-5)


def test_l2_normalize_handles_zero_rows():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
