"""Evaluation on constructed embeddings whose right answers are known exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sklearn.metrics import roc_curve

from helpers.evaluate.metrics import (OpenSetReport, accuracy, best_match, class_centroids, confusion, eer_from_roc,
                                      eer_threshold, embed, l2_normalize, linear_probe_accuracy,
                                      nearest_neighbour_accuracy, nearest_neighbour_predict, open_set, open_set_rates,
                                      pair_scores, per_person_accuracy, predict, threshold_from_strangers,
                                      threshold_without_strangers, verification)
from helpers.models.face_model import build_model

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


def test_eer_from_roc_interpolates_between_two_roc_points():
    # FNR = 1 - TPR goes 1 -> 0.4 -> 0 while FPR goes 0 -> 0.2 -> 0.6: FNR - FPR is 0.2 at the
    # second point and -0.6 at the third, so they cross a quarter of the way from one to the other:
    # FPR = FNR = 0.2 + 0.25 * 0.4 = 0.3.
    assert eer_from_roc(np.array([0.0, 0.2, 0.6]), np.array([0.0, 0.6, 1.0])) == pytest.approx(0.3)
    # a point exactly on FNR = FPR is taken as it is
    assert eer_from_roc(np.array([0.0, 0.25, 1.0]), np.array([0.0, 0.75, 1.0])) == pytest.approx(0.25)


def test_eer_from_roc_separable_scores_give_zero():
    same = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    assert eer_from_roc(fpr, tpr) == 0.0
    assert eer_threshold(scores[same == 1], scores[same == 0]) == pytest.approx(0.55)  # middle of the gap


def test_eer_from_roc_hand_computed_case():
    # genuine 0.9 0.8 0.4, impostor 0.7 0.3 0.2 0.1. At threshold 0.7: FNR 1/3, FPR 1/4; at 0.4:
    # FNR 0, FPR 1/4. FNR - FPR goes 1/12 -> -1/4, so the crossing is 1/4 of the way: FNR = FPR =
    # 1/4. (The old nearest-point rule said (1/3 + 1/4)/2 = 7/24.)
    same = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    assert eer_from_roc(fpr, tpr) == pytest.approx(0.25)


def test_verification_eer_is_the_interpolated_crossing_of_the_full_roc():
    rng = np.random.default_rng(0)
    emb, labels = rng.standard_normal((40, 8)), rng.integers(0, 4, 40)
    v = verification(emb, labels)
    scores, same = pair_scores(emb, labels)
    fpr, tpr, thr = roc_curve(same, scores, drop_intermediate=False)
    assert len(v.fpr) == len(fpr) == len(np.unique(scores)) + 1      # every point of the ROC is kept
    assert v.eer == pytest.approx(eer_from_roc(fpr, tpr))
    assert v.eer_threshold == eer_threshold(scores[same], scores[~same])     # the one threshold rule
    # at the EER threshold the two error rates are (about) equal: within one pair either way
    frr, far = (scores[same] < v.eer_threshold).mean(), (scores[~same] >= v.eer_threshold).mean()
    assert abs(frr - v.eer) <= 1 / same.sum() + 1e-12 and abs(far - v.eer) <= 1 / (~same).sum() + 1e-12


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
    assert isinstance(r, OpenSetReport)
    assert (r.known_accepted, r.known_correct, r.strangers_rejected) == (0.75, 0.5, pytest.approx(2 / 3))
    assert (r.known_wrong_name, r.known_rejected, r.strangers_accepted) == (0.25, 0.25, pytest.approx(1 / 3))
    r = open_set(gallery, known, known_labels, strangers, threshold=0.8)
    assert (r.known_accepted, r.known_correct, r.strangers_rejected) == (0.5, 0.5, 1.0)
    assert (r.known_wrong_name, r.known_rejected, r.strangers_accepted, r.threshold) == (0.0, 0.5, 0.0, 0.8)
    assert str(r) == ("threshold 0.80: known people named right 50.0 %, wrong name 0.0 %, called unknown 50.0 %; "
                      "strangers rejected 100.0 %, taken for someone 0.0 %")
    assert r.as_dict() == {"known_correct": 0.5, "known_wrong_name": 0.0, "known_rejected": 0.5,
                           "strangers_rejected": 1.0, "strangers_accepted": 0.0, "threshold": 0.8}
    # a score equal to the threshold passes, for strangers as for known people
    r = open_set(gallery, known, known_labels, np.array([unit(1, 0, 0, 0)]), threshold=1.0)
    assert (r.known_accepted, r.strangers_rejected) == (0.5, 0.0)


def test_open_set_rates_from_scores_and_without_strangers():
    r = open_set_rates([0.9, 0.7, 0.4, 0.6], [True, False, True, True], [0.2, 0.65], threshold=0.6)
    assert (r.known_correct, r.known_wrong_name, r.known_rejected) == (0.5, 0.25, 0.25)
    assert (r.strangers_rejected, r.strangers_accepted, r.known_accepted) == (0.5, 0.5, 0.75)
    gallery = np.eye(2)
    none = open_set(gallery, np.eye(2), [0, 1], None, threshold=0.5)      # no stranger photos: NaN, not 0
    assert none.known_correct == 1.0 and np.isnan(none.strangers_rejected) and np.isnan(none.strangers_accepted)
    assert np.isnan(open_set(gallery, np.eye(2), [0, 1], np.zeros((0, 2)), 0.5).strangers_rejected)
    with pytest.raises(ValueError, match="photos of known people"):
        open_set_rates([], [], [0.1], 0.5)


def test_eer_threshold_sits_in_the_gap_or_at_equal_errors():
    assert eer_threshold([0.8, 0.9, 0.95], [0.1, 0.2, 0.4]) == pytest.approx(0.6)   # middle of the gap
    t = eer_threshold([0.3, 0.6, 0.7, 0.9], [0.1, 0.2, 0.5, 0.65])
    assert 0.5 < t <= 0.65
    g, i = np.array([0.3, 0.6, 0.7, 0.9]), np.array([0.1, 0.2, 0.5, 0.65])
    assert (g < t).mean() == (i >= t).mean() == 0.25                                # equal error rates
    with pytest.raises(ValueError):
        eer_threshold([], [0.1])


def test_threshold_from_strangers_between_known_and_strangers():
    """The one threshold rule on validation data: above every stranger, at or below every known photo."""
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
    t = threshold_from_strangers(gallery, emb, labels, strangers)
    assert stranger_scores.max() < t <= known_scores.min()
    assert t == pytest.approx((stranger_scores.max() + known_scores.min()) / 2)   # the middle of the gap
    r = open_set(gallery, emb, labels, strangers, t)
    assert (r.known_accepted, r.known_correct, r.strangers_rejected) == (1.0, 1.0, 1.0)


def test_threshold_from_strangers_does_not_count_a_wrong_name_as_a_correct_accept():
    def at(person, score):   # a unit vector whose best match is `person` with cosine `score`
        return score * np.eye(4)[person] + np.sqrt(1 - score ** 2) * np.eye(4)[3]

    gallery = np.eye(4)[:3]
    known = np.array([at(0, 0.95), at(1, 0.9), at(2, 0.6)])
    strangers = np.array([at(0, 0.5), at(1, 0.7), at(2, 0.8), at(0, 0.85)])
    # every known photo named right: genuine 0.6 0.9 0.95 vs strangers 0.5 0.7 0.8 0.85; errors are
    # equal-most (FRR 1/3, FAR 1/4) at 0.85, placed halfway down to the next score: 0.825
    assert threshold_from_strangers(gallery, known, [0, 1, 2], strangers) == pytest.approx(0.825)
    # the 0.95 photo is really person 2: its best match names the wrong person, so it is not a correct
    # accept (scored -1) and the threshold moves: FRR 2/3 vs FAR 3/4 at 0.7, halfway from 0.6: 0.65
    t = threshold_from_strangers(gallery, known, [2, 1, 2], strangers)
    assert t == pytest.approx(0.65)
    assert t == eer_threshold([-1.0, 0.9, 0.6], [0.5, 0.7, 0.8, 0.85])


def test_threshold_without_strangers_uses_other_people_as_impostors():
    gallery = np.eye(3)
    emb = np.array([[1, 0.1, 0], [0, 1, 0.2], [0.1, 0, 1], [0.9, 0.3, 0]])
    t = threshold_without_strangers(gallery, emb, np.array([0, 1, 2, 0]))
    assert 0.3 < t < 0.96   # between the best wrong-person score and the lowest own-person score


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
