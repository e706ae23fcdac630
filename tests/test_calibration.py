"""The threshold's calibration: rules on score distributions, the rates the file records, and
cross-fitted (leave-one-out) genuine scores that never score a photo against itself."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.evaluate import calibration as C
from helpers.recognize import pipeline as P
from helpers.evaluate.metrics import eer_threshold, l2_normalize


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    return rng.normal(0.7, 0.1, 400), rng.normal(0.2, 0.1, 2000)


@pytest.mark.parametrize("target", [0.005, 0.01, 0.02])
def test_far_rule_is_the_lowest_threshold_within_the_target(scores, target):
    g, i = scores
    t = C.threshold_for(f"far:{target}", g, i)
    far, frr = C.rates_at(g, i, t)
    assert far <= target
    below = np.sort(i)[np.sort(i) < t][-1]           # the highest impostor score under t
    assert C.rates_at(g, i, below)[0] > target       # one step lower accepts too many
    assert far == pytest.approx(target, abs=1 / len(i) + 1e-12)


def test_eer_and_ratio_rules(scores):
    g, i = scores
    assert C.threshold_for("eer", g, i) == eer_threshold(g, i)
    far, frr = C.rates_at(g, i, C.threshold_for("ratio:0.05/0.02", g, i))
    assert frr / 0.05 == pytest.approx(far / 0.02, abs=0.1)       # the two budgets spent in proportion
    with pytest.raises(ValueError, match="unknown threshold rule"):
        C.threshold_for("median", g, i)


def test_the_record_states_the_rates_of_its_threshold(scores):
    g, i = scores
    cal = C.Calibration(g, i, {"own other people": 2000}, "far:0.01")
    rec = cal.record()
    assert rec["threshold"] == cal.threshold and (rec["genuine"], rec["impostor"]) == (400, 2000)
    assert (rec["far"], rec["frr"]) == C.rates_at(g, i, cal.threshold)
    assert C.rates_at(rec["genuine_scores"], rec["impostor_scores"], rec["threshold"]) == pytest.approx(
        (rec["far"], rec["frr"]), abs=1e-3)
    assert "false accepts 1.0 %" in C.describe_record(rec) and C.describe_record(None) == ""


def test_cross_fitted_genuine_scores_leave_the_photo_out(effnet):
    """'raw' method (nothing fitted): each genuine score is the photo against the mean of its person's
    OTHER photos, never against a gallery that holds it; impostors: against the other people."""
    rng = np.random.default_rng(1)
    people, per, dim = 4, 3, effnet.feature_dim
    centre = rng.normal(size=(people, dim))
    labels = np.repeat(np.arange(people), per)
    feats = (centre[labels] + 0.8 * rng.normal(size=(len(labels), dim))).astype(np.float32)
    cal = P.calibrate(effnet, [None] * len(labels), labels, feats, P.RecognizerConfig("raw", 64))
    e = l2_normalize(feats)
    want_g, want_o = [], []
    rank = np.tile(np.arange(per), people)                  # photo j of each person is in fold j
    for n in range(len(labels)):
        cents = {p: l2_normalize(e[(labels == p) & (rank != rank[n])].mean(0, keepdims=True))[0]
                 for p in range(people)}                    # the fold's gallery: without photo n's fold
        want_g.append(e[n] @ cents[labels[n]])
        inside = {p: l2_normalize(e[labels == p].mean(0, keepdims=True))[0] for p in range(people)}
        assert e[n] @ inside[labels[n]] > want_g[-1]             # with itself in the gallery: higher
        want_o.append(max(e[n] @ cents[p] for p in range(people) if p != labels[n]))
    assert cal.folds == 3 and cal.sources == {"own other people": 12}
    assert np.sort(cal.genuine) == pytest.approx(np.sort(want_g), abs=1e-5)
    assert np.sort(cal.impostor) == pytest.approx(np.sort(want_o), abs=1e-5)


def test_fixed_embedder_calibration_leaves_each_photo_out_of_its_gallery():
    """`calibrate_fixed` (a fine-tuned model enrolled with --from-checkpoint): 3 people x 3 photos, each
    photo's genuine score is against the mean of that person's 2 other photos, never itself; strangers
    are scored once each."""
    rng = np.random.default_rng(1)
    centres = l2_normalize(rng.normal(size=(3, 16)))
    labels = np.repeat(np.arange(3), 3)
    emb = l2_normalize(centres[labels] + 0.3 * rng.normal(size=(9, 16)))
    strangers = l2_normalize(rng.normal(size=(5, 16)))
    cal = C.calibrate_fixed(emb, labels, strangers)
    assert cal.folds == 3 and len(cal.genuine) == 9 and cal.sources == {"own other people": 9, "strangers": 5}
    by_hand = []
    for f in range(3):            # photo j of each person is in fold j
        for p in range(3):
            others = l2_normalize(emb[labels == p][np.arange(3) != f].mean(0, keepdims=True))[0]
            by_hand.append(float(emb[labels == p][f] @ others))
    assert sorted(cal.genuine) == pytest.approx(sorted(by_hand))
    assert max(cal.genuine) < 1 - 1e-6                           # no photo met itself
    assert cal.record()["threshold"] == pytest.approx(cal.threshold)
