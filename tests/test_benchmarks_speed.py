"""The fair speed benchmark's gate (benchmarks/engine_gate.py): accuracy on development people, and it can fail.

Never timed: the speed figures come from the full run on an idle machine (`bash course.sh bench`).
"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import engine_gate as G


def _clusters(seed: int = 0, people: int = 10, photos: int = 7, dim: int = 16, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    labels = np.repeat(np.arange(people), photos)
    return centres[labels] + noise * rng.normal(size=(len(labels), dim)), labels


def test_the_reference_itself_is_usable_and_changes_nothing():
    x, y = _clusters()
    g = G.gate(x, x.copy(), y)
    assert g["usable"] and g["d_identification"] == 0 and g["d_eer"] == 0 and g["min_cosine"] == pytest.approx(1)


def test_a_broken_engine_is_not_usable():
    """Features of the wrong photos (a batch's rows shuffled) lose identification and raise the EER."""
    x, y = _clusters()
    g = G.gate(x, x[np.random.default_rng(0).permutation(len(x))], y)
    assert not g["usable"] and g["d_identification"] < -G.TOLERANCE["identification"] and "identification" in g["why"]
    assert not G.gate(x, np.full_like(x, np.nan), y)["usable"]


def test_the_gate_looks_at_accuracy_not_at_the_cosine():
    """A small perturbation lowers the cosine well below the old 0.999 gate and keeps the answers."""
    x, y = _clusters(noise=0.1)
    noisy = x + 0.05 * np.random.default_rng(1).normal(size=x.shape) * np.abs(x).mean()
    g = G.gate(x, noisy, y)
    assert g["min_cosine"] < 0.999 and g["usable"]


def test_calibration_and_evaluation_photos_are_development_people_apart():
    from helpers.data import load_orl

    from benchmarks.threshold import partition

    orl = load_orl()
    dev = partition()["dev"]
    cal, ev = G.dev_split(orl.labels, dev)
    assert len(cal) == G.N_CALIBRATION and not set(cal) & set(ev)
    assert set(orl.labels[cal]) == set(dev) and set(orl.labels[ev]) == set(dev)
    assert len(cal) + len(ev) == 10 * len(dev)
    enrol, queries, strangers = G.draw(np.asarray(orl.labels)[ev], 0)
    assert len(set(orl.labels[ev][enrol])) == G.KNOWN and not set(enrol) & set(queries)
    assert not set(orl.labels[ev][strangers]) & set(orl.labels[ev][enrol])
