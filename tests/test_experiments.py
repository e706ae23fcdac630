"""Helpers behind notebooks 00-02: course data, baselines, cache demo, training runs, freeze switch,
the problem-folder demo, the exercise checks and the plots."""
from __future__ import annotations

import os
import shutil

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.course import baselines, demo, exercises, experiments, plots
from helpers.data.folders import load_folder
from helpers.data.splits import split_per_person
from helpers.models.face_model import build_model, count_parameters
from tiny_backbone import tiny_backbone

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def course():
    return experiments.load_course_data("orl", n_known=9, seed=0)


@pytest.fixture(scope="module")
def clusters():
    """40 feature vectors (16-D) of 4 people, 10 each, well apart."""
    gen = torch.Generator().manual_seed(1)
    labels = np.repeat(np.arange(4), 10)
    x = (torch.randn(4, 16, generator=gen) * 4)[labels] + 0.3 * torch.randn(40, 16, generator=gen)
    return x, labels


@pytest.fixture
def small_images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 36, 3)).astype(np.uint8)) for _ in range(6)]


# ------------------------------------------------------------------ course data

def test_course_data_splits_and_indices(course):
    assert len(course.faces) == 400 and course.known.num_people == 9
    assert course.split.sizes() == {"train": 45, "val": 18, "test": 27}
    assert len(course.stranger_idx) == 310 and course.strangers.num_people == 31
    assert set(course.known_idx).isdisjoint(course.stranger_idx)
    assert sorted([*course.known_idx, *course.stranger_idx]) == list(range(400))
    # the indices point at the very same photos (so features of all photos can be sliced)
    for i, j in zip(course.known_idx[:20], range(20)):
        assert course.faces.paths[i] == course.known.paths[j]
        assert course.faces.images[i] is course.known.images[j]
    text = str(course)
    assert "train 45 / val 18 / test 27" in text and "31 people, 310 photos" in text


def test_course_features_slice_equals_direct_extraction(small_images):
    from helpers.data.folders import FaceSet
    from helpers.features.extract import FINAL, compute

    bb = tiny_backbone()
    faces = FaceSet(small_images, np.array([0, 0, 0, 1, 1, 1]), ["a", "b"], [f"p{i}" for i in range(6)], "t")
    with experiments.temporary_cache():
        allf = experiments.course_features(bb, faces)
        direct = compute(bb, small_images[3:], batch_size=16)[FINAL]
    assert torch.allclose(allf[3:], direct, atol=1e-6)


def test_temporary_cache_is_restored_and_removed(monkeypatch):
    monkeypatch.setenv("FACE_COURSE_CACHE", "/somewhere/else")
    with experiments.temporary_cache() as tmp:
        assert os.environ["FACE_COURSE_CACHE"] == str(tmp) and tmp.is_dir()
    assert os.environ["FACE_COURSE_CACHE"] == "/somewhere/else" and not tmp.exists()


def test_cache_demo_second_call_reads_the_cache(small_images, capsys):
    first, second = experiments.cache_demo(tiny_backbone(), small_images)
    out = capsys.readouterr().out
    assert "first call:  6 photos through tiny, computed and saved in" in out
    assert "second call: the same features read back from the cache in" in out
    assert "identical: True, shape (6, 8)" in out
    assert first > 0 and second > 0


# ------------------------------------------------------------------ baselines

def test_pixel_features_shape_and_range(small_images):
    x = baselines.pixel_features(small_images, size=8)
    assert x.shape == (6, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def test_random_backbone_is_seeded_and_labelled():
    a, b, c = (baselines.random_backbone("resnet18", s) for s in (0, 0, 1))
    assert a.weights == "random init (no pretraining, seed 0)" and a.classifier is None
    assert torch.equal(a.body.conv1.weight, b.body.conv1.weight)
    assert not torch.equal(a.body.conv1.weight, c.body.conv1.weight)
    assert a.cache_key() == b.cache_key() != c.cache_key()   # no feature-cache mix-up between seeds


def test_few_shot_splits_hold_k_train_and_5_test_per_person():
    labels = np.repeat(np.arange(5), 10)
    for sp in baselines.few_shot_splits(labels, 3, seeds=[0, 1]):
        assert np.bincount(labels[sp.train]).tolist() == [3] * 5
        assert np.bincount(labels[sp.test]).tolist() == [5] * 5
        assert set(sp.train).isdisjoint(sp.test) and len(sp.val) == 0
    with pytest.raises(ValueError, match="6 training \\+ 5 test photos"):
        baselines.few_shot_splits(labels, 6, seeds=[0])


def test_few_shot_table_separates_good_from_useless_features(clusters):
    x, y = clusters
    noise = torch.randn(40, 16, generator=torch.Generator().manual_seed(5))
    table = baselines.few_shot_table({"good": x, "noise": noise}, y, shots=(1, 3), seeds=range(3))
    for m in baselines.METHODS:
        assert table.get("good", m, 1) == 1.0 and table.get("good", m, 3) == 1.0
        assert table.get("noise", m, 3) < 0.7
    text = str(table)
    assert "accuracy on 4 people, 5 test photos each, mean of 3 splits" in text
    assert "1 photo" in text and "3 photos" in text and "100.0 %" in text


def test_scores_on_split_and_mean_cosine(clusters):
    x, y = clusters
    split = split_per_person(y, seed=0)
    scores = baselines.scores_on_split({"good": x}, y, split)
    assert scores.acc[("good", "1-NN")] == 1.0 and scores.acc[("good", "linear probe")] == 1.0
    assert str(scores).startswith(f"accuracy on 4 people: {len(split.train)} training photos")
    same, different = baselines.mean_cosine(x, y)
    assert same > 0.9 and different < same - 0.3


def test_imagenet_top_k_names_the_cat(effnet):
    photos = baselines.everyday_photos()
    assert list(photos) == ["chelsea", "coffee", "astronaut", "rocket"]
    preds = baselines.imagenet_top_k(effnet, {"chelsea": photos["chelsea"], "coffee": photos["coffee"]}, k=3)
    assert {c for c, _ in preds["chelsea"]} & {"tabby", "tiger cat", "Egyptian cat"}
    assert preds["coffee"][0][0] == "espresso"
    assert "espresso" in baselines.format_top_k(preds)
    assert baselines.imagenet_top_k(tiny_backbone(), {"x": photos["coffee"]}) == {"x": []}


# ------------------------------------------------------------------ training runs

def test_train_and_report_is_deterministic_and_reports(clusters, capsys):
    x, y = clusters
    split = split_per_person(y, seed=0)
    a = experiments.train_and_report(x, y, split, epochs=6, progress=False)
    b = experiments.train_and_report(x, y, split, epochs=6, progress=False)
    assert a.history.loss == b.history.loss and a.test_acc == b.test_acc == 1.0
    assert a.line().rsplit("trained in", 1)[0] == b.line().rsplit("trained in", 1)[0]   # only the time differs
    printed = capsys.readouterr().out
    assert printed.count("Result:") == 2 and all(len(l) <= 100 for l in printed.splitlines())
    assert a.line().startswith("Result: ArcFace head, frozen backbone, lr=0.01, cached features: 6 epochs "
                               "frozen (6 steps), val 100.0 %, 4 people, ")
    assert "test" not in a.line()            # settings are judged on validation; test is kept for the end
    assert list(a.test_pred) == list(a.test_true)


def test_train_and_report_rejects_bad_settings(clusters):
    x, y = clusters
    split = split_per_person(y, seed=0)
    with pytest.raises(ValueError, match="unknown head 'arc'"):
        experiments.train_and_report(x, y, split, head="arc")
    with pytest.raises(ValueError, match="epochs must be >= 1 and lr > 0"):
        experiments.train_and_report(x, y, split, epochs=0)


def test_freeze_switch_counts_and_leaves_the_backbone_alone(small_images):
    bb = tiny_backbone()
    before = [p.detach().clone() for p in bb.parameters()]
    labels = np.array([0, 0, 0, 1, 1, 1])
    split = split_per_person(labels, val=0.0, test=0.34, seed=0)
    feats = torch.randn(6, bb.feature_dim)
    rows = experiments.freeze_switch(bb, small_images, labels, split, features=feats, batch_size=4)
    assert [r.setting.split(" ")[0] for r in rows] == ["head", "freeze_backbone=True,", "freeze_backbone=False,"]
    head_only = count_parameters(build_model(2, feature_dim=bb.feature_dim)).trainable
    assert rows[0].trainable == rows[0].total == head_only
    assert rows[1].trainable == head_only and rows[1].total == head_only + sum(p.numel() for p in bb.parameters())
    assert rows[2].trainable == rows[2].total == rows[1].total
    assert all(r.seconds_per_epoch > 0 for r in rows)
    assert all(torch.equal(a, b) for a, b in zip(before, bb.parameters()))
    table = experiments.format_freeze_rows(rows).splitlines()
    assert table[0].startswith("setting") and all(line.endswith(" s") for line in table[1:])


def test_compare_heads_uses_the_same_splits(clusters):
    x, y = clusters
    cmp = experiments.compare_heads(x, y, heads=("arcface", "softmax"), shots=2, seeds=range(2), epochs=10)
    assert list(cmp.acc) == ["ArcFace head", "softmax (no margin) head", "1-NN on the frozen features"]
    assert all(len(v) == 2 and all(a == 1.0 for a in v) for v in cmp.acc.values())
    assert "4 people, 2 training photos each, 5 test photos each; mean (min-max) over 2 splits" in str(cmp)


# ------------------------------------------------------------------ the problem folder (notebook 00)

def test_problem_folder_loads_with_every_problem_reported(tmp_path):
    root = demo.make_problem_folder(tmp_path / "mine")
    faces = load_folder(root)
    assert faces.counts() == {"s1": 4, "s2": 3, "s3": 3}
    skipped = dict(faces.report.skipped)
    assert set(skipped) == {"loose_photo.jpg", "s2/.DS_Store", "s2/empty.jpg", "s2/half_copied.jpg", "s2/notes.txt"}
    assert any("'s4' has 1 usable photo" in n for n in faces.report.notes)
    assert any("'s5' has 0 usable photo" in n for n in faces.report.notes)
    tree = demo.folder_tree(root)
    assert str(tmp_path) not in tree and "s5/  (empty)" in tree and "empty.jpg  (0 bytes)" in tree
    with pytest.raises(FileExistsError):
        demo.make_problem_folder(root)


def test_problem_folder_demo_prints_only_relative_paths(capsys):
    faces = demo.problem_folder_demo()
    out = capsys.readouterr().out
    assert faces.num_people == 3
    assert "Loaded 10 photos of 3 people from my_photos (s1 4, s2 3, s3 3)" in out
    assert "/tmp" not in out and os.getcwd() not in out


# ------------------------------------------------------------------ exercise checks

def test_check_person_split(capsys):
    assert exercises.check_person_split(4, 1, 2) is True
    assert exercises.check_person_split(4, 2, 1) is False
    assert "swapped" in capsys.readouterr().out
    assert exercises.check_person_split(3, 1, 2) is False
    assert "add up to 6" in capsys.readouterr().out
    assert exercises.check_person_split(None, None, None) is False


def test_check_fixed_folder(tmp_path, capsys):
    root = demo.make_problem_folder(tmp_path / "mine")
    assert exercises.check_fixed_folder(root) is False
    assert "still skipped" in capsys.readouterr().out
    for bad in ("s2/.DS_Store", "s2/empty.jpg", "s2/half_copied.jpg", "s2/notes.txt"):
        (root / bad).unlink()
    (root / "s5").rmdir()
    assert exercises.check_fixed_folder(root) is False          # the loose photo is still outside
    shutil.move(str(root / "loose_photo.jpg"), str(root / "s4" / "photo2.jpg"))
    assert exercises.check_fixed_folder(root) is True
    assert "4 people, 12 photos, nothing skipped" in capsys.readouterr().out
    (root / "s1" / "photo1.jpg").unlink()
    assert exercises.check_fixed_folder(root) is False
    assert "the 12 good photos should all stay" in capsys.readouterr().out


def test_check_trainable_params(capsys):
    assert exercises.check_trainable_params(273_920, people=20) is True
    assert exercises.check_trainable_params(272_896, people=20) is False
    assert "BatchNorm" in capsys.readouterr().out
    assert exercises.check_trainable_params(268_288, people=20) is False
    assert "that is for 9 people" in capsys.readouterr().out
    assert exercises.check_trainable_params("lots") is False


def test_check_unfrozen_params(capsys):
    bb = tiny_backbone()
    for p in bb.parameters():
        p.requires_grad_(False)                               # as after build_model(..., freeze_backbone=True)
    model = build_model(9, backbone=tiny_backbone(), freeze_backbone=False)
    want = count_parameters(model).trainable
    assert exercises.check_unfrozen_params(want, bb) is True
    frozen = count_parameters(build_model(9, feature_dim=bb.feature_dim)).trainable
    assert exercises.check_unfrozen_params(frozen, bb) is False
    assert "frozen count" in capsys.readouterr().out
    assert not any(p.requires_grad for p in bb.parameters())  # the check built its model on a copy


def test_check_few_shot_answer_and_biggest_gain(clusters, capsys):
    x, y = clusters
    assert exercises.check_few_shot_answer(100.0, x, y, shots=2) is True
    assert exercises.check_few_shot_answer(0.5, x, y, shots=2) is False
    table = baselines.FewShotTable([1, 3, 5], 40, 5, [0], {("A", "1-NN"): {1: 0.8, 3: 0.9, 5: 0.95},
                                                           ("B", "1-NN"): {1: 0.6, 3: 0.85, 5: 0.93}})
    assert exercises.check_biggest_gain(1, table, "A", "B") is True
    assert exercises.check_biggest_gain(5, table, "A", "B") is False
    assert exercises.check_biggest_gain(2, table, "A", "B") is False
    assert "choose one of [1, 3, 5]" in capsys.readouterr().out


def test_check_first_perfect_epoch(clusters):
    x, y = clusters
    split = split_per_person(y, seed=0)
    from helpers.train.fit import train_head_on_features
    _, hist = train_head_on_features(x[split.train], y[split.train], x[split.val], y[split.val],
                                     lr=1e-3, epochs=20, progress=False)
    first = next(i + 1 for i, a in enumerate(hist.val_acc) if a == 1.0)
    assert exercises.check_first_perfect_epoch(first, x, y, split, lr=1e-3, epochs=20) is True
    assert exercises.check_first_perfect_epoch(first + 3, x, y, split, lr=1e-3, epochs=20) is False


# ------------------------------------------------------------------ plots (draw without error, right content)

def test_plots_of_notebooks_00_to_02(course, clusters, small_images):
    known = course.known
    ax = plots.plot_class_balance(known)
    assert [round(p.get_height()) for p in ax.patches] == [10] * 9
    ax = plots.plot_split(known.labels, course.split, known.names)
    assert len(ax.patches) == 27 and ax.get_legend() is not None
    fig = plots.show_one_per_person(known, cols=5)
    assert sum(bool(a.images) for a in fig.axes) == 9
    bb = tiny_backbone()
    fig = plots.show_first_layer_filters(bb)
    assert sum(bool(a.images) for a in fig.axes) == 8
    fig = plots.show_feature_maps(bb, small_images[0], stage="stem", n=4)
    assert len(fig.axes) == 5 and "8 channels" in fig._suptitle.get_text()
    x, y = clusters
    table = baselines.few_shot_table({"good": x}, y, shots=(1, 2), seeds=range(2))
    assert len(plots.plot_few_shot(table).lines) == 2
    assert len(plots.plot_per_person({"a": 1.0, "b": 0.5}).patches) == 2
    fig = plots.show_predictions({"p": small_images[0]}, {"p": [("cat", 0.5)]})
    assert "cat 50 %" in fig.axes[0].get_title()
    plt.close("all")


def test_t_interval_matches_the_textbook():
    mean, half = experiments.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert np.isnan(experiments.t_interval([1.0])[1])


def test_seed_comparison_pairs_by_seed():
    c = experiments.SeedComparison("t", [0, 1, 2], {
        "a": {"val": [0.9, 0.8, 0.7], "test": [0.9, 0.8, 0.7], "eer": [0.10, 0.20, 0.30]},
        "b": {"val": [0.9, 0.8, 0.7], "test": [0.9, 0.8, 0.7], "eer": [0.12, 0.22, 0.32]}})
    assert c.clear("b", "a", "eer")                       # +2 points on every seed: clear when paired
    assert not c.clear("b", "a", "test")                  # identical
    mean, half = c.interval("a", "eer")
    assert half > 0.02                                    # unpaired, the seeds' spread hides it
    assert "paired by seed" in str(c) and "strangers' EER +2.0 ± 0.0 %-points" in str(c)


def test_course_data_shots_keeps_k_training_photos(course):
    data = experiments.load_course_data("orl", n_known=9, seed=0, shots=2)
    assert data.split.sizes() == {"train": 18, "val": 18, "test": 27}
    assert list(data.split.val) == list(course.split.val) and list(data.split.test) == list(course.split.test)


# ------------------------------------------------------------------ learning rate and freezing (02)

def test_equal_budget_arms_share_stage_one_and_take_the_same_steps():
    bb = tiny_backbone()
    before = [p.detach().clone() for p in bb.parameters()]
    cmp = experiments.equal_budget(bb, seeds=(0, 1), size=32, epochs=3, tune_epochs=1)
    assert list(cmp.runs) == ["after stage 1 (frozen)", "frozen + frozen", "frozen + unfrozen"]
    assert all(len(r[k]) == 2 for r in cmp.runs.values() for k in ("val", "eer", "seconds"))
    assert "at 32 px; 3 epochs frozen (3 steps) + 1 epochs unfrozen, backbone lr 0.0001 (4 steps of 16" in cmp.task
    assert all(0 <= e <= 1 for r in cmp.runs.values() for e in r["eer"])
    assert all(torch.equal(a, b) for a, b in zip(before, bb.parameters()))   # fine-tuned a copy
    table = experiments.format_over_seeds(cmp)
    assert "frozen + unfrozen" in table and "strangers' EER" in table and "test" not in table


def test_lr_sweep_and_its_figure(tmp_path):
    x = torch.randn(400, 8)                                   # any features of ORL's 400 photos
    sweep = experiments.lr_sweep(x, lrs=(1e-3, 1e-1), seeds=(0, 1), epochs=2)
    assert list(sweep.runs) == ["lr 0.001", "lr 0.1"]
    budget = experiments.SeedComparison("t", [0, 1], {"a": {"val": [0.5, 0.6], "eer": [0.2, 0.3]},
                                                      "b": {"val": [0.7, 0.8], "eer": [0.1, 0.2]}})
    fig = plots.plot_lr_and_freezing(sweep, budget, (1e-3, 1e-1))
    axes = fig.axes
    assert len(axes) == 4 and axes[0].get_xscale() == "log"
    assert axes[0].get_ylim() == (0, 100) and axes[1].get_ylim() == (0, 50) and axes[3].get_ylim() == (0, 50)
    plt.close(fig)


def test_top_confusions_lists_the_most_frequent_mistakes_first():
    names = ["ann", "bob", "cy"]
    truth = [0, 0, 0, 1, 1, 2, 2, 2]
    pred = [0, 1, 1, 1, 2, 2, 0, 0]
    assert plots.top_confusions(truth, pred, names) == [("ann", "bob", 2), ("cy", "ann", 2), ("bob", "cy", 1)]
    assert plots.top_confusions(truth, pred, names, k=1) == [("ann", "bob", 2)]
    assert plots.top_confusions([0, 1], [0, 1], names) == []
