"""helpers.course.embedding_maps and helpers.course.verification_plots (notebook 04) on synthetic faces: projections,
the data sets shown, neighbours, heatmaps, galleries, ROC / seen-vs-unseen, open set; and 04's exercise checks.

Synthetic data keeps this fast and exact: people are tight clusters of random 'features' in 48-D.
One UMAP fit pays numba's compile time (~10 s on 2 idle cores) for the whole module.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.course import embedding_maps as E
from helpers.course import exercises
from helpers.course import verification_plots as V
from helpers.course.experiments import CourseData, indices_in
from helpers.data.folders import FaceSet
from helpers.data.splits import split_known_strangers, split_people, split_per_person
from helpers.evaluate.metrics import class_centroids, threshold_from_strangers, verification

DIM = 48


def _faces(people: int = 12, per: int = 10, spread: float = 0.35, seed: int = 0):
    """A FaceSet of tiny grey images + one cluster of 'features' per person (the FaceSet's order)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, DIM))
    labels = np.repeat(np.arange(people), per)
    feats = centres[labels] + spread * rng.normal(size=(len(labels), DIM))
    images = [Image.new("RGB", (8, 8), (int(10 * p), 0, 0)) for p in labels]
    paths = [f"p{p}/{i}.pgm" for i, p in enumerate(labels)]
    faces = FaceSet(images, labels, [f"p{p}" for p in range(people)], paths, "synthetic")
    return faces, torch.tensor(feats, dtype=torch.float32)


@pytest.fixture(scope="module")
def synthetic():
    faces, feats = _faces()
    known, strangers = split_known_strangers(faces, n_known=5, seed=0)
    data = CourseData(faces, known, strangers, indices_in(faces, known), indices_in(faces, strangers),
                      split_per_person(known.labels, seed=0), 0)
    return data, feats


@pytest.fixture(scope="module")
def sets(synthetic):
    data, feats = synthetic
    s = E.course_sets(data, feats)            # raw features only
    rng = np.random.default_rng(1)            # a second view: the same photos, scrambled (no structure)
    s.add_view("noise", {k: rng.normal(size=v.shape) for k, v in s.views["raw features"].items()})
    return s


# ---------------------------------------------------------------------- projections

@pytest.mark.slow
def test_umap_is_deterministic():
    x = np.random.default_rng(0).normal(size=(60, 16))
    a, b = E.project(x, "umap", seed=3), E.project(x, "umap", seed=3)
    assert a.shape == (60, 2) and np.array_equal(a, b)


@pytest.mark.slow
def test_umap_and_tsne_keep_clusters_apart(sets):
    x, y, _, _ = sets.select("raw features", "strangers")
    for method in ("umap", "tsne"):
        xy = E.project(x, method, seed=0, n_neighbors=8)
        assert E.same_person_neighbours(xy, y, 5) > 0.9, method   # random maps: about 0.13


def test_pca_and_tsne_are_what_they_claim():
    from sklearn.decomposition import PCA
    x = np.random.default_rng(0).normal(size=(30, 10))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(np.abs(E.project(x, "pca")), np.abs(PCA(2).fit_transform(xn)), atol=1e-8)
    np.testing.assert_array_equal(E.project(x, "tsne", seed=1), E.project(x, "tsne", seed=1))


def test_project_rejects_bad_input():
    x = np.random.default_rng(0).normal(size=(20, 5))
    with pytest.raises(ValueError, match="unknown method"):
        E.project(x, "mds")
    with pytest.raises(ValueError, match="at least 4 points"):
        E.project(x[:3], "pca")
    with pytest.raises(ValueError, match="n_neighbors"):
        E.project(x, "umap", n_neighbors=1)
    with pytest.raises(ValueError, match="min_dist"):
        E.project(x, "umap", min_dist=2.0)


# ---------------------------------------------------------------------- the data shown

def test_course_sets_and_select(synthetic, sets):
    data, feats = synthetic
    assert sets.names == data.known.names
    assert {k: len(v) for k, v in sets.labels.items()} == {"train": 25, "val": 10, "test": 15, "strangers": 70}
    np.testing.assert_array_equal(sets.views["raw features"]["strangers"], feats[data.stranger_idx].numpy())
    x, y, stranger, test = sets.select("raw features", "test + strangers")
    assert len(x) == 85 and stranger.sum() == 70 and test.sum() == 15 and not (stranger & test).any()
    assert len(sets.select("raw features", "all")[0]) == 25 + 15 + 70
    with pytest.raises(ValueError, match="unknown split"):
        sets.select("raw features", "everything")
    with pytest.raises(ValueError, match="unknown view"):
        sets.select("ArcFace", "test")
    with pytest.raises(ValueError, match="rows for"):
        sets.add_view("bad", {"train": np.zeros((3, 2))})


def test_course_sets_with_a_model_embeds_every_split(synthetic, one_thread):
    from helpers.train.fit import train_head_on_features
    data, feats = synthetic
    x, sp = feats[data.known_idx], data.split
    model, _ = train_head_on_features(x[sp.train], data.known.labels[sp.train], epochs=3, progress=False)
    s = E.course_sets(data, feats, model)
    emb = s.views["ArcFace"]["strangers"]
    assert emb.shape == (70, 512) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_palette_never_uses_grey():
    for n in (3, 9, 15, 30, 38, 45):
        cols = E.palette(n)
        assert len(cols) == n and len(set(cols)) == n
        assert not any(abs(c[0] - c[1]) < 1e-3 and abs(c[1] - c[2]) < 1e-3 for c in cols), n


def test_neighbour_measures_tell_structure_from_noise(sets):
    table = E.neighbour_table(sets).splitlines()
    raw = [r for r in table if r.startswith("raw features")][0]
    noise = [r for r in table if r.startswith("noise")][0]
    assert raw.count("100.0 %") == 2         # known people among themselves, strangers among themselves
    assert float(noise.split()[-4]) < 40     # random vectors: neighbours rarely the same person
    shares = E.neighbour_shares(sets)
    assert shares["raw features"][:2] == (1.0, 1.0)
    # pooled test + strangers: 3 test photos per known person, so at most 2 of their 5 neighbours match
    known, strangers, pooled = shares["raw features"]
    assert pooled < 1.0 and pooled == pytest.approx(E.pooled_neighbours(sets, "raw features"))
    y = np.repeat(np.arange(4), 5)
    assert E.same_person_neighbours(np.eye(4)[y] + 0.01 * np.random.default_rng(0).normal(size=(20, 4)), y, k=4) == 1.0


@pytest.mark.slow
def test_plot_maps_and_map_view(sets):
    fig = E.plot_maps(sets, views=["raw features"], methods=("pca",), split="test + strangers")
    assert len(fig.axes) == 1
    plt.close(fig)
    fig, msg = E.map_view(sets, "raw features", "strangers", n_neighbors=8, min_dist=0.2)
    assert msg.startswith("Result: UMAP of 70 photos (strangers, raw features)") and "100.0 %" in msg
    plt.close(fig)
    fig, msg = E.map_view(sets, "raw features", "test + strangers", n_neighbors=8)
    pooled = E.neighbour_shares(sets)["raw features"][2]
    assert f"; {100 * pooled:.1f} % of the 5 nearest neighbours among these photos" in msg   # the table's number
    plt.close(fig)


def test_map_marks_each_stranger_in_black_and_mutes_known_people(sets):
    x, y, stranger, test = sets.select("raw features", "test + strangers")
    ax = E.plot_map(E.project(x, "pca"), y, sets.names, stranger, test)
    marks = [c for c in ax.collections if c.get_label().startswith("stranger")]
    assert len(marks) == 7                                                                  # a shape each
    assert len({c.get_paths()[0].vertices.tobytes() for c in marks}) == 7
    assert all(tuple(c.get_facecolor()[0][:3]) == (0, 0, 0) for c in marks)              # black, no colour
    known = [c for c in ax.collections if c not in marks]
    assert known and all(c.get_alpha() < 1 for c in known)                                  # pale beside them
    known_cols = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in known}
    assert (0.0, 0.0, 0.0) not in known_cols
    plt.close(ax.figure)
    ax = E.plot_map(E.project(x, "pca"), y, sets.names, stranger, test, mark_strangers=False)
    grey = [c for c in ax.collections if c.get_label().startswith("strangers")]
    assert len(grey) == 1 and grey[0].get_label() == "strangers (7, never trained on)"
    plt.close(ax.figure)
    many = [f"p{i}" for i in range(20)]           # over 12 known people: one legend entry for them all
    ax = E.plot_map(np.random.default_rng(0).normal(size=(40, 2)), np.arange(40) % 20, many)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["known people (20, a colour each)"]
    plt.close(ax.figure)


def test_plot_maps_legend_sits_below_every_panel(sets):
    fig = E.plot_maps(sets, methods=("pca", "pca"), split="test + strangers")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert legend.y1 <= ax.get_window_extent(renderer).y0 + 1, "the legend overlaps a panel"
    plt.close(fig)


def test_random_queries_are_seeded_distinct_people_and_view_free(sets):
    q = E.random_queries(sets, n_known=3, n_strangers=2, seed=4)
    assert q == E.random_queries(sets, n_known=3, n_strangers=2, seed=4)
    assert [s for s, _ in q] == ["test"] * 3 + ["strangers"] * 2
    assert len({int(sets.labels["test"][i]) for s, i in q if s == "test"}) == 3
    assert len({int(sets.labels["strangers"][i]) for s, i in q if s == "strangers"}) == 2
    draws = {tuple(E.random_queries(sets, 3, 1, seed=k)) for k in range(6)}
    assert len(draws) > 1                                                  # the seed matters


def test_heatmap_contrast_and_galleries(sets):
    same, diff = E.block_contrast(sets.views["raw features"]["test"], sets.labels["test"])
    assert same > 0.8 and abs(diff) < 0.3
    assert "difference" in E.contrast_table(sets)
    fig = E.plot_heatmaps(sets, "test")
    assert len(fig.axes) == 4              # two heatmaps + two colour bars
    plt.close(fig)
    queries = E.gallery_queries(sets, "noise", n_known=2, n_strangers=1)
    assert [q[0] for q in queries] == ["test", "test", "strangers"]
    fig, nb = E.neighbour_gallery(sets, "raw features", queries, k=4)
    assert nb.index.shape == (3, 4)
    gy = sets.labels["train"]
    for (split, i), idx in zip(queries, nb.index):
        if split == "test":        # clean clusters: the 4 closest are the same person
            assert (gy[idx] == sets.labels["test"][i]).all()
    plt.close(fig)


def test_hardest_queries_puts_a_wrong_match_first():
    g = np.array([[1, 0], [0, 1.0]])
    q = np.array([[1, 0.1], [0.9, 0.5], [0.2, 1.0]])
    # query 1 is labelled 1 but is closer to gallery 0: the only wrong 1-NN answer
    assert E.hardest_queries(g, [0, 1], q, [0, 1, 1], n=1)[0] == 1


# ---------------------------------------------------------------------- verification and open set

def test_seen_vs_unseen_rows(synthetic, one_thread):
    data, feats = synthetic
    rows = V.seen_vs_unseen(feats, data.faces, n_known_values=(4, 8), epochs=5)
    assert [(r.n_known, r.n_strangers) for r in rows] == [(4, 8), (8, 4)]
    assert rows[0].stranger_pairs == 80 * 79 // 2
    assert all(r.eer_raw < 0.01 for r in rows)   # clean clusters: raw features already separate everyone
    assert "strangers' EER" in str(rows[0])
    with pytest.raises(ValueError, match="fewer than 2 strangers"):
        V.seen_vs_unseen(feats, data.faces, n_known_values=(11,))


def test_known_counts_adapt_to_the_number_of_people():
    assert V.known_counts((9, 20, 30), 40) == (9, 20, 30)          # ORL: unchanged
    assert V.known_counts((9, 20, 30), 20) == (9, 18)              # a learner's 20 people: 2 strangers left
    assert V.known_counts((9, 20, 30), 14) == (9, 12)
    assert V.known_counts((9, 20, 30), 6) == (4,)
    assert V.known_counts((1,), 10) == (2,)
    with pytest.raises(ValueError, match="need at least 4"):
        V.known_counts((9,), 3)


def test_known_counts_make_seen_vs_unseen_run_on_few_people(synthetic, one_thread):
    data, feats = synthetic                                        # 12 people: (9, 20, 30) cannot all run
    counts = V.known_counts((9, 20, 30), data.faces.num_people)
    rows = V.seen_vs_unseen(feats, data.faces, n_known_values=counts, epochs=3)
    assert [r.n_strangers for r in rows] == [3, 2]


def test_strangers_like_known_counts_every_stranger(sets):
    like = V.strangers_like_known(sets)
    assert set(like) == {"raw features", "noise"}
    assert like["raw features"] == 0.0                  # clean clusters: no stranger beats a known person's own match
    assert 0.0 <= like["noise"] <= 1.0


def test_seen_vs_unseen_takes_shots_and_seeds(synthetic, one_thread, monkeypatch):
    data, feats = synthetic
    sizes = []
    real = V.train_head_on_features
    monkeypatch.setattr(V, "train_head_on_features", lambda x, y, **kw: (sizes.append(len(x)), real(x, y, **kw))[1])
    V.seen_vs_unseen(feats, data.faces, (4,), epochs=2, shots=2)
    V.seen_vs_unseen(feats, data.faces, (4,), epochs=2)
    assert sizes == [4 * 2, 4 * 5]                 # 2 training photos each, or all 5 of the training share
    over = V.seen_vs_unseen_over_seeds(feats, data.faces, (4, 8), seeds=(0, 1, 2), epochs=2, shots=2)
    assert list(over.rows) == [4, 8] and all(len(r) == 3 for r in over.rows.values())
    assert [r.n_known for r in over.at(1)] == [4, 8]
    mean, half = over.difference(4)
    assert mean == pytest.approx(np.mean([r.eer_arcface - r.eer_raw for r in over.rows[4]])) and half >= 0
    assert over.clear(4) == (abs(mean) > half)
    text = str(over)
    assert "trained on  4 people" in text and text.count("  ArcFace minus raw features: ") == 2


def _comparison(a, b):
    from helpers.course.experiments import SeedComparison
    runs = {"m = 0.5": {"eer": a, "val": a, "test": a}, "m = 0": {"eer": b, "val": b, "test": b}}
    return SeedComparison("toy", [0, 1, 2, 3], runs)


def test_seed_lines_and_paired_plot_say_whether_the_interval_contains_zero():
    clear = _comparison([0.10, 0.12, 0.09, 0.11], [0.14, 0.16, 0.13, 0.15])
    text = V.seed_lines(clear)
    assert "m = 0 minus m = 0.5: +4.0 %-points ± 0.0 %-points over 4 seeds" in text and "a clear difference" in text
    assert "14.0 %" in text.splitlines()[3]
    assert "no clear difference" in V.seed_lines(_comparison([0.10, 0.12, 0.09, 0.11], [0.12, 0.10, 0.11, 0.09]))
    ax = V.plot_paired_seeds(clear)
    assert len(ax.lines) == 5 and [t.get_text() for t in ax.get_xticklabels()] == ["m = 0.5", "m = 0"]
    plt.close(ax.figure)


def test_roc_and_score_histograms(sets):
    v = {view: verification(sets.views[view]["strangers"], sets.labels["strangers"]) for view in sets.views}
    fig = V.plot_roc_and_scores(v, {view: (sets.views[view]["strangers"], sets.labels["strangers"]) for view in v})
    assert len(fig.axes) == 3
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert labels == ["same person (315)", "different people (2,100)"]   # 7 strangers x 10 photos
    assert fig.axes[1].lines[0].get_xdata()[0] == pytest.approx(v["raw features"].eer_threshold)
    plt.close(fig)


def test_roc_plot_has_eer_in_legend(sets):
    v = {"raw": verification(sets.views["raw features"]["strangers"], sets.labels["strangers"]),
         "noise": verification(sets.views["noise"]["strangers"], sets.labels["strangers"])}
    assert v["raw"].eer < 0.01 < 0.3 < v["noise"].eer
    ax = V.plot_roc(v)
    assert [t.get_text() for t in ax.get_legend().get_texts()][0].startswith("raw: EER 0.")
    plt.close(ax.figure)


def test_split_people_is_disjoint_and_complete():
    labels = np.repeat(np.arange(7), 3)
    a, b = split_people(labels, 0.5, seed=0)
    assert set(labels[a]).isdisjoint(labels[b]) and len(a) + len(b) == 21
    assert len(np.unique(labels[a])) == 4 and np.array_equal(split_people(labels, 0.5, seed=0)[0], a)
    with pytest.raises(ValueError):
        split_people(np.zeros(4), 0.5)


def test_open_set_scores_threshold_comes_from_validation_data_only(sets):
    """The threshold is the course's rule on the validation photos and validation strangers: test
    photos and test strangers never choose it (and validation data is required)."""
    v, lab = sets.views["noise"], sets.labels
    val_s, test_s = split_people(lab["strangers"], 0.5, seed=0)
    args = (v["train"], lab["train"], v["test"], lab["test"], v["strangers"][test_s])
    scores = V.open_set_scores(*args, val_emb=v["val"], val_labels=lab["val"], val_stranger_emb=v["strangers"][val_s])
    gallery = class_centroids(v["train"], lab["train"])
    assert scores.threshold == threshold_from_strangers(gallery, v["val"], lab["val"], v["strangers"][val_s])
    on_test = threshold_from_strangers(gallery, v["test"], lab["test"], v["strangers"][test_s])
    assert scores.threshold != on_test                       # noise: the test data would pick another one
    moved = V.open_set_scores(*args, val_emb=v["val"] + 5 * v["val"][::-1], val_labels=lab["val"],
                              val_stranger_emb=v["strangers"][val_s])
    assert moved.threshold != scores.threshold               # other validation data, other threshold
    np.testing.assert_array_equal(moved.known_score, scores.known_score)   # the test scores do not change
    with pytest.raises(TypeError):
        V.open_set_scores(*args)                             # no silent fallback to the test data


def test_open_set_rates_auc_and_view(sets):
    raw = V.open_set_for(sets, "raw features")
    noise = V.open_set_for(sets, "noise")
    assert raw.auc > 0.99 and 0.2 < noise.auc < 0.8
    r = raw.rates()
    assert r.known_accepted > 0.9 and r.strangers_rejected > 0.9 and r.known_correct <= r.known_accepted
    low, high = raw.rates(-1.0), raw.rates(1.0)
    assert (low.known_accepted, low.strangers_rejected) == (1.0, 0.0)
    assert high.strangers_rejected == 1.0
    assert r.known_correct + r.known_wrong_name + r.known_rejected == pytest.approx(1.0)
    assert r.strangers_rejected + r.strangers_accepted == pytest.approx(1.0)
    fig, msg = V.threshold_view(raw, 0.5)
    assert msg == f"Result: {raw.rates(0.5)}" and msg.startswith("Result: threshold 0.50: known people named right")
    plt.close(fig)
    with pytest.raises(ValueError, match="between -1 and 1"):
        V.threshold_view(raw, 1.5)


def test_open_set_on_validation_data_for_panels_and_exercises(sets):
    test = V.open_set_for(sets, "raw features", seed=0)
    val = V.open_set_for(sets, "raw features", seed=0, measure="val")
    assert val.threshold == test.threshold                           # one threshold, chosen on validation data
    assert len(val.known_score) == len(sets.labels["val"]) and val.photos == "val" and test.photos == "test"
    val_s, test_s = split_people(sets.labels["strangers"], 0.5, 0)
    assert len(val.stranger_score) == len(val_s) and len(test.stranger_score) == len(test_s)
    fig, msg = V.threshold_view(val)
    assert msg.startswith("Result: threshold") and msg.endswith("(on the val photos and strangers)")
    plt.close(fig)
    with pytest.raises(ValueError, match="'test' or 'val'"):
        V.open_set_for(sets, "raw features", measure="train")


def test_open_set_comparison_and_stranger_best_match(sets):
    open_set = {view: V.open_set_for(sets, view) for view in sets.views}
    text = V.open_set_comparison(open_set)
    n_test, n_str = len(open_set["noise"].known_score), len(open_set["noise"].stranger_score)
    assert f"(one photo of {n_test} is {100 / n_test:.1f} %)" in text and f"one photo of {n_str}" in text
    assert text.startswith("known test photos named right: raw features 100.0 %, noise ")
    match = V.stranger_vs_known(sets, 0)
    best, median, share = match["raw features"]
    assert best < median and share == 0.0          # clean clusters: a stranger matches no one as well
    assert 0 <= match["noise"][2] <= 1
    assert V.stranger_best_match(sets, 0).splitlines()[0].startswith("raw features  the stranger's best match")


# ---------------------------------------------------------------------- exercise checks (04)

def test_check_rejection_threshold(sets, capsys):
    scores = V.open_set_for(sets, "noise")
    grid = np.round(np.arange(-0.2, 1.0001, 0.01), 2)
    smallest = next(t for t in grid if scores.rates(t).strangers_rejected >= 0.95)
    assert exercises.check_rejection_threshold(smallest, scores) is True
    assert exercises.check_rejection_threshold(smallest + 0.1, scores) is False
    assert "lower it" in capsys.readouterr().out
    assert exercises.check_rejection_threshold(smallest - 0.05, scores) is False
    assert "raise the threshold" in capsys.readouterr().out
    assert exercises.check_rejection_threshold(None, scores) is False


def test_check_equal_rates_threshold(sets, capsys):
    scores = V.open_set_for(sets, "noise")
    grid = np.linspace(-0.5, 1, 301)
    gaps = [abs(scores.rates(t).known_accepted - scores.rates(t).strangers_rejected) for t in grid]
    best = grid[int(np.argmin(gaps))]
    assert exercises.check_equal_rates_threshold(best, scores, tol=0.1) is True
    assert exercises.check_equal_rates_threshold(-1.0, scores) is False
    assert "raise the threshold" in capsys.readouterr().out


def test_check_unseen_eer(synthetic, capsys, one_thread):
    data, feats = synthetic
    row = V.seen_vs_unseen(feats, data.faces, (5,), s=64, m=0.5, epochs=5)[0]
    ok = exercises.check_unseen_eer(100 * row.eer_arcface, feats, data.faces, n_known=5, s=64, m=0.5, epochs=5)
    assert ok is True
    if abs(row.eer_arcface - row.eer_raw) > 0.01:
        assert exercises.check_unseen_eer(100 * row.eer_raw, feats, data.faces, n_known=5, epochs=5) is False
    few = V.seen_vs_unseen(feats, data.faces, (5,), s=64, m=0.5, epochs=5, shots=1)[0]
    assert exercises.check_unseen_eer(100 * few.eer_arcface, feats, data.faces, n_known=5, epochs=5, shots=1) is True
