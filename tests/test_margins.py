"""helpers.course.margins and helpers.course.margin_runs (notebook 03): target logits, scale bounds, the 2-D toy's regions, (s, m) runs, NaN safety;
and notebook 03's exercise checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers.course import exercises, margins
from helpers.course import margin_runs as MR
from helpers.data.splits import split_per_person


def _even_weights(c: int, offset: float = 0.3) -> np.ndarray:
    a = offset + 2 * np.pi * np.arange(c) / c
    return np.stack([np.cos(a), np.sin(a)], 1)


def _clusters(c: int = 3, per: int = 10, dim: int = 24, spread: float = 0.3, seed: int = 0):
    """Synthetic 'features': c well separated Gaussian clusters, per photos each."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, dim)) * 3
    x = np.concatenate([centres[k] + spread * rng.normal(size=(per, dim)) for k in range(c)])
    return torch.tensor(x, dtype=torch.float32), np.repeat(np.arange(c), per)


# ---------------------------------------------------------------------- curves and bounds

def test_target_logits_match_the_formulas():
    theta = np.linspace(0, 150, 151)          # below 180 - m (m = 0.5 rad = 28.6 deg)
    m = 0.5
    curves = margins.target_logits(theta, m)
    rad = np.radians(theta)
    np.testing.assert_allclose(curves["softmax (normalised): cos θ"], np.cos(rad), atol=1e-6)
    np.testing.assert_allclose(curves["ArcFace (helpers): cos(θ + m)"], np.cos(rad + m), atol=2e-3)
    np.testing.assert_allclose(curves["ArcFace naive: cos(θ + m)"], np.cos(rad + m), atol=1e-6)
    np.testing.assert_allclose(curves["CosFace: cos θ − m"], np.cos(rad) - m, atol=1e-6)
    # past 180 - m the helpers' head falls back to cos - m sin m and stays monotonic (naive turns up)
    late = margins.target_logits(np.array([170.0, 179.0]), m)
    assert np.diff(late["ArcFace (helpers): cos(θ + m)"])[0] < 0
    assert np.diff(late["ArcFace naive: cos(θ + m)"])[0] > 0


def test_target_logits_for_every_margin_of_the_panel_slider():
    """The margin slider goes to 1.5 rad: a CosFace head refuses m >= 1, the curve is still drawn."""
    theta = np.array([0.0, 60.0, 90.0])
    for m in (0.0, 1.0, 1.5):
        curves = margins.target_logits(theta, m)
        np.testing.assert_allclose(curves["CosFace: cos θ − m"], np.cos(np.radians(theta)) - m, atol=1e-6)
        assert all(np.isfinite(v).all() for v in curves.values())


@pytest.mark.parametrize("c", [9, 40, 85_742])
def test_s_lower_bound_is_exactly_where_a_perfect_model_reaches_p(c):
    s = margins.s_lower_bound(c, 0.99)
    simplex_deg = math.degrees(math.acos(-1 / (c - 1)))
    p = margins.target_probability(0.0, s, 0.0, c, other_deg=simplex_deg)
    assert p == pytest.approx(0.99, abs=1e-6)
    assert margins.loss_floor(s, 0.0, c) == pytest.approx(-math.log(0.99), rel=1e-5)


def test_stop_angle_is_where_probability_reaches_p_and_nan_below_the_bound():
    for s, m, c in [(64, 0.5, 9), (16, 0.5, 40), (64, 0.5, 85_742)]:
        a = margins.stop_angle(s, m, c, p=0.99)
        assert 0 < a < 90
        assert margins.target_probability(a, s, m, c) == pytest.approx(0.99, abs=1e-4)
        assert margins.target_probability(a + 5, s, m, c) < 0.99
    assert math.isnan(margins.stop_angle(16, 0.5, 85_742))
    assert math.isnan(margins.stop_angle(4, 0.2, 9))
    # fewer people: the loss stops pulling earlier (larger angle) at the same s
    assert margins.stop_angle(64, 0.5, 9) > margins.stop_angle(64, 0.5, 85_742)


def test_scale_table_and_bad_arguments():
    table = margins.scale_table(num_classes=(9, 85_742), scales=(64, 16))
    assert "85,742" in table and "never" in table and "55°" in table
    with pytest.raises(ValueError, match="scale s"):
        margins.stop_angle(0, 0.5, 9)
    with pytest.raises(ValueError, match="margin m"):
        margins.target_probability(10.0, 16, 2.0, 9)
    with pytest.raises(ValueError):
        margins.s_lower_bound(1)


# ---------------------------------------------------------------------- decision regions

@pytest.mark.parametrize("c,m", [(6, 0.5), (4, 0.3), (6, 0.0)])
def test_gap_fraction_for_evenly_spread_centres_is_m_over_spacing(c, m):
    spacing = 2 * np.pi / c
    assert margins.gap_fraction(_even_weights(c), m) == pytest.approx(m / spacing, abs=0.01)


def test_margin_wider_than_the_spacing_leaves_no_room():
    assert margins.gap_fraction(_even_weights(6), 1.2) == 1.0


def test_region_map_winner_probability_and_scale():
    w = _even_weights(5, offset=0.0)
    centres = np.arctan2(w[:, 1], w[:, 0])
    _, winner, p16 = margins.region_map(w, 16, 0.3, phi=centres)
    assert winner.tolist() == [0, 1, 2, 3, 4]
    _, _, p1 = margins.region_map(w, 1, 0.3, phi=centres)
    assert (p16 > 0.99).all() and (p1 < 0.5).all()     # small s: even a photo on its centre is unsure
    _, winner, prob = margins.region_map(w, 16, 0.3, phi=np.array([np.pi / 5]))   # half way: in the gap
    assert winner[0] == -1 and prob[0] == 0


# ---------------------------------------------------------------------- the toy

@pytest.fixture(scope="module")
def toy_data():
    x, y = _clusters(c=3, per=10)
    sp = split_per_person(y, seed=0)
    return x, y, sp


def test_train_toy_and_retrain(toy_data, one_thread):
    x, y, sp = toy_data
    toy = margins.train_toy(x, y, ["a", "b", "c"], sp.train, sp.test, s=16, m=0.5, epochs=40, lr=3e-2)
    assert toy.weights().shape == (3, 2) and np.allclose(np.linalg.norm(toy.weights(), axis=1), 1)
    assert toy.points("test").shape == (len(sp.test), 2)
    assert toy.accuracy("train") == 1.0 and toy.min_separation() > 30
    assert "train accuracy 100.0 %" in toy.summary()
    again = margins.retrain_toy(toy, s=8, m=0.0)
    assert (again.s, again.m, again.epochs, again.lr) == (8, 0.0, 40, 3e-2)
    assert np.array_equal(again.test[1], toy.test[1]) and torch.equal(again.train[0], toy.train[0])
    fig, msg = margins.margin_view(toy, 16, 0.5)
    assert msg.startswith("Result: s=16, m=0.50: gap ") and "p = 0.99 at θ ≤" in msg
    assert len(fig.axes) == 3


def test_toy_rejects_bad_input(toy_data):
    x, y, sp = toy_data
    with pytest.raises(ValueError, match="labels 0..1"):
        margins.train_toy(x, y, ["a", "b"], sp.train, sp.test)
    with pytest.raises(ValueError, match="learning rate"):
        margins.train_toy(x, y, ["a", "b", "c"], sp.train, sp.test, lr=0)
    with pytest.raises(ValueError, match="n_people"):
        margins.toy_split(y, sp, 1)
    tr, te = margins.toy_split(y, sp, 2)
    assert set(y[tr]) == {0, 1} and set(y[te]) == {0, 1}


# ---------------------------------------------------------------------- measured runs (real features)

@pytest.fixture(scope="module")
def margin_runs(known_features):
    x, y = known_features
    torch.set_num_threads(1)
    return MR.run_margins(x, y.numpy(), [(16, 0.0), (4, 0.2)], epochs=20)


@pytest.mark.slow
def test_run_margins_measures_accuracy_and_angles(margin_runs, known_features):
    _, y = known_features
    no_margin, small_s = margin_runs
    sp = split_per_person(y.numpy(), seed=0)
    for r in margin_runs:
        assert len(r.accuracies) == 1 and 0.8 <= r.accuracy <= 1.0
        assert len(r.test_angles.own) == len(sp.test) and len(r.train_angles.own) == len(sp.train)
        # a photo is misclassified exactly when another centre is closer than its own
        assert r.test_angles.overlap == pytest.approx(1 - r.accuracy, abs=1e-9)
    # the claim of notebook 03: a small s with a margin pulls photos much closer to their centre
    assert small_s.train_angles.own.mean() < no_margin.train_angles.own.mean() - 10
    # and s = 4 cannot get its loss below the floor
    assert small_s.losses[0] >= margins.loss_floor(4, 0.2, 9) - 1e-6


@pytest.mark.slow
def test_format_runs_and_summary(margin_runs):
    table = MR.format_runs(margin_runs, num_classes=9)
    assert "s=16, m=0 (no margin)" in table and "never" in table      # s=4 never reaches p = 0.99
    summary = MR.closing_summary({"9 people": margin_runs})
    assert summary.startswith("9 people:\n  (16, 0) test ") and "(4, 0.2) test" in summary
    assert "EER" not in summary                      # no strangers measured by run_margins
    broken = MR.MarginRun(64.0, 0.5, [], [], diverged="loss became nan")
    assert "diverged" in MR.format_runs([broken])
    sweep = {0.01: margin_runs}
    assert "best possible loss" in MR.format_lr_sweep(sweep, 9)


@pytest.mark.slow
def test_angle_scatter_plot(margin_runs):
    fig = MR.plot_angle_scatter(margin_runs)
    assert len(fig.axes) == 2
    a, b = fig.axes
    assert a.get_xlim() == b.get_xlim() == a.get_ylim()          # the same axes in every panel
    # y = x in every panel; y = x + m (dashed) only where there is a margin
    lines = [[tuple(l.get_ydata() - l.get_xdata()) for l in ax.get_lines()] for ax in fig.axes]
    assert lines[0] == [(0.0, 0.0)]
    assert lines[1][0] == (0.0, 0.0) and lines[1][1] == pytest.approx((math.degrees(0.2),) * 2)
    r = margin_runs[1]
    assert f"{int((r.test_angles.other > r.test_angles.own).sum())} of {len(r.test_angles.own)}" in b.get_title()
    with pytest.raises(ValueError):
        MR.plot_angle_scatter([MR.MarginRun(1.0, 0.0, [], [], diverged="x")])


# ---------------------------------------------------------------------- runs over several draws, with strangers

def _tasks(seeds=(0, 1, 2)):
    """Synthetic draws: 6 clustered 'people', the first 4 known (2 training photos each), 2 strangers."""
    from types import SimpleNamespace

    x, y = _clusters(c=6, per=10, spread=0.6)
    known_idx, stranger_idx = np.flatnonzero(y < 4), np.flatnonzero(y >= 4)
    tasks = [SimpleNamespace(known=SimpleNamespace(labels=y[known_idx]), known_idx=known_idx,
                             strangers=SimpleNamespace(labels=y[stranger_idx] - 4), stranger_idx=stranger_idx,
                             split=split_per_person(y[known_idx], shots=2, seed=k), seed=k) for k in seeds]
    return x, tasks


def test_run_margins_on_tasks_measures_each_draw_and_the_strangers(one_thread):
    x, tasks = _tasks()
    runs = MR.run_margins_on_tasks(x, tasks, [(16, 0.3), (16, 0.0)], epochs=10)
    for r in runs:
        assert len(r.accuracies) == len(r.eers) == len(r.losses) == 3
        assert all(0 <= e <= 0.5 for e in r.eers) and all(0 <= a <= 1 for a in r.accuracies)
        assert len(r.test_angles.own) == len(tasks[0].split.test)       # angles of the first draw
        assert r.history is not None and not r.diverged
    assert MR.find_run(runs, (16, 0)) is runs[1]
    table = MR.format_runs(runs, num_classes=4)
    assert "strangers EER" in table and table.count("±") == 4
    diffs = MR.format_differences(runs)
    assert diffs.startswith("paired by seed, minus s=16, m=0.3") and "s=16, m=0 (no margin)" in diffs
    assert "EER" in MR.closing_summary({"toy": runs})
    with pytest.raises(KeyError, match="no run for"):
        MR.find_run(runs, (64, 0.5))


def test_run_margins_on_tasks_rejects_bad_input():
    x, tasks = _tasks(seeds=(0,))
    with pytest.raises(ValueError, match="at least one task"):
        MR.run_margins_on_tasks(x, [], [(16, 0.3)])
    with pytest.raises(ValueError, match="at least one"):
        MR.run_margins_on_tasks(x, tasks, [])
    tasks[0].strangers = None
    with pytest.raises(ValueError, match="no strangers"):
        MR.run_margins_on_tasks(x, tasks, [(16, 0.3)])


def test_verdicts_are_paired_by_seed():
    ref = MR.MarginRun(16.0, 0.3, [0.90, 0.80, 0.85], [0, 0, 0], eers=[0.10, 0.20, 0.15])
    worse = MR.MarginRun(16.0, 0.0, [0.91, 0.79, 0.86], [0, 0, 0], eers=[0.12, 0.22, 0.17])  # +2 points each seed
    noisy = MR.MarginRun(64.0, 0.5, [0.95, 0.75, 0.85], [0, 0, 0], eers=[0.14, 0.16, 0.15])
    # the seeds' spread (10 points) hides nothing when the difference is paired
    assert MR.verdict(worse, ref, "eer") == "higher" and MR.verdict(ref, worse, "eer") == "lower"
    assert MR.difference(worse, ref, "eer")[0] == pytest.approx(0.02)
    assert MR.verdict(noisy, ref, "eer") == "no clear difference"
    assert MR.verdict(worse, ref, "acc") == "no clear difference"
    text = MR.format_differences([ref, worse, noisy])
    assert "strangers' EER +2.0 ± 0.0 (higher)" in text and "(no clear difference)" in text
    with pytest.raises(ValueError, match="same seeds"):
        MR.difference(MR.MarginRun(8.0, 0.3, [0.9], [0], eers=[0.1]), ref, "eer")
    with pytest.raises(ValueError, match="metric"):
        ref.values("auc")


def test_run_margins_rejects_bad_pairs(known_features):
    x, y = known_features
    with pytest.raises(ValueError, match="at least one"):
        MR.run_margins(x, y.numpy(), [])
    with pytest.raises(ValueError, match="scale s"):
        MR.run_margins(x, y.numpy(), [(-1, 0.5)])


# ---------------------------------------------------------------------- numerical safety

def test_numerical_safety_table_shows_nan_for_naive_and_none_for_helpers():
    rows = margins.numerical_safety_table(m=0.5).splitlines()
    naive = [r for r in rows if r.startswith("naive")]
    helpers_row = [r for r in rows if r.startswith("helpers")][0]
    assert len(naive) == 2 and all("nan" in r and "inf" in r for r in naive)
    assert "nan" not in helpers_row and "inf" not in helpers_row
    assert "1.0000001" in rows[0]


def test_float32_self_cosines_above_one_give_nan():
    r = margins.float32_self_cosines(n=500, dim=512)
    assert 0 < r.above_one < 1 and r.nan_after_acos == r.above_one and r.max > 1
    assert "acos(cos) is NaN" in str(r)


# ---------------------------------------------------------------------- exercise checks (03)

def test_check_scale_bound(capsys):
    want = 39 / 40 * math.log(39 * 0.99 / 0.01)
    assert exercises.check_scale_bound(want, 40) is True
    assert exercises.check_scale_bound(math.log(39 * 0.99 / 0.01), 40) is False
    assert "(C - 1) / C" in capsys.readouterr().out
    assert exercises.check_scale_bound(None, 40) is False
    out = capsys.readouterr().out
    assert "replace None" in out and f"{want:.1f}" not in out    # never gives the answer away
    assert exercises.check_scale_bound("abc") is False


def test_check_arcface_logit(capsys):
    assert exercises.check_arcface_logit(math.cos(math.radians(60) + 0.5)) is True
    assert exercises.check_arcface_logit(math.cos(60 + 0.5)) is False
    assert "radians" in capsys.readouterr().out
    assert exercises.check_arcface_logit(math.cos(math.radians(60)) - 0.5) is False
    assert "CosFace" in capsys.readouterr().out


def test_check_max_margin(capsys):
    assert exercises.check_max_margin(2 * math.pi / 6, 6) is True
    assert exercises.check_max_margin(math.pi / 6, 6) is False
    assert exercises.check_max_margin(60, 6) is False
    assert "degrees" in capsys.readouterr().out
    # the answer agrees with the regions: just below it a photo on its centre still wins, just above not
    w = _even_weights(6, offset=0.0)
    for m, wins in ((2 * math.pi / 6 - 0.02, True), (2 * math.pi / 6 + 0.02, False)):
        _, winner, _ = margins.region_map(w, 16, m, phi=np.array([0.0]))
        assert bool(winner[0] == 0) is wins
