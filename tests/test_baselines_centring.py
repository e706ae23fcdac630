"""01's random-weights control: tiny, nearly parallel features (what a randomly initialised network gives)
must not make cosine 1-NN degenerate; and the few-shot table fits a learner's folder."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.course import baselines
from helpers.evaluate.metrics import nearest_neighbour_accuracy


def _parallel_tiny(people: int = 8, per: int = 10, seed: int = 0):
    """float32 features of length ~5e-7 that share one direction (mean cosine ~0.99), plus a weak
    per-person signal: the shape of a random EfficientNet's features on ORL."""
    rng = np.random.default_rng(seed)
    common = rng.uniform(1, 2, size=64)
    centres = rng.normal(size=(people, 64))
    y = np.repeat(np.arange(people), per)
    x = common + 0.15 * centres[y] + 0.03 * rng.normal(size=(len(y), 64))
    return (x * 5e-7 / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_uncentred_float32_tiny_features_collapse_onto_one_photo():
    """The bug the repair fixes: scikit-learn's cosine treats these vectors as zero, so every distance ties."""
    x, y = _parallel_tiny()
    split = baselines.few_shot_splits(y, 3, seeds=[0])[0]
    raw = nearest_neighbour_accuracy(x[split.train], y[split.train], x[split.test], y[split.test])
    assert raw == pytest.approx(1 / 8)                             # one hub: chance level exactly
    same, different = baselines.mean_cosine(x, y)
    assert different > 0.95                                         # nearly parallel


def test_centred_1nn_recovers_the_people():
    x, y = _parallel_tiny()
    split = baselines.few_shot_splits(y, 3, seeds=[0])[0]
    assert baselines.evaluate_split(x, y, split, "1-NN") > 0.9
    assert baselines.evaluate_split(x, y, split, "linear probe") > 0.9
    assert baselines.hub_share(x, y, split) < 0.2                   # no photo is everyone's neighbour
    xtr, xte = baselines.centre_on(x[split.train].astype(np.float64), x[split.test].astype(np.float64))
    np.testing.assert_allclose(xtr.mean(0), 0, atol=1e-18)          # centred on the training photos only
    assert not np.allclose(xte.mean(0), 0, atol=1e-12)


def test_centring_can_be_switched_off_and_tables_pass_it_on():
    x, y = _parallel_tiny()
    t_on = baselines.few_shot_table({"f": x}, y, shots=(1,), methods=("1-NN",), seeds=range(2))
    t_off = baselines.few_shot_table({"f": x}, y, shots=(1,), methods=("1-NN",), seeds=range(2), centre=False)
    splits = baselines.few_shot_splits(y, 1, seeds=[0, 1])
    for table, centre in ((t_on, True), (t_off, False)):
        want = np.mean([baselines.evaluate_split(x, y, sp, "1-NN", centre=centre) for sp in splits])
        assert table.get("f", "1-NN", 1) == pytest.approx(want)
    sp = splits[0]
    shifted = x.astype(np.float64) + np.random.default_rng(1).normal(size=x.shape[1])   # a shared offset
    for method in baselines.METHODS:                                 # centring undoes any shared offset
        assert baselines.evaluate_split(shifted, y, sp, method) == baselines.evaluate_split(x, y, sp, method)


@pytest.mark.parametrize("per,want", [(10, ((1, 3, 5), 5)), (6, ((1, 3), 3)), (5, ((1, 3), 2)), (3, ((1,), 1)),
                                      (2, ((1,), 1))])
def test_fitting_shots_fit_the_smallest_person(per, want):
    y = np.repeat(np.arange(4), per)
    y = np.r_[y, np.full(per + 3, 4)]                               # a person with more photos changes nothing
    assert baselines.fitting_shots(y) == want
    shots, test = want
    for k in shots:
        baselines.few_shot_splits(y, k, seeds=[0], test_per_person=test)   # no error


def test_fitting_shots_refuses_one_photo():
    with pytest.raises(ValueError, match="at least 2"):
        baselines.fitting_shots([0, 0, 1])
