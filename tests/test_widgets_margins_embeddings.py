"""The panels of notebooks 03 and 04, driven as the learner drives them: set values, move sliders, click.

margin_panel (03): s / m / easy margin redraw only; Train retrains the 2-D toy.
umap_panel (04): Compute recomputes a UMAP.  threshold_panel (04): the slider redraws; Compute too.
Synthetic, well-separated data keeps every click short (one UMAP fit pays numba's compile time).
"""
from __future__ import annotations

import base64

import ipywidgets as W
import matplotlib
import numpy as np
import pytest
import torch

from helpers.course import embedding_maps as E
from helpers.course import margins
from helpers.course import verification_plots as V
from helpers.course.widgets import margin_panel, threshold_panel, umap_panel
from helpers.data.splits import split_per_person

matplotlib.use("Agg", force=True)
pytestmark = pytest.mark.usefixtures("one_thread")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figures(out: W.Output) -> list[bytes]:
    return [base64.b64decode(o["data"]["image/png"]) for o in out.outputs
            if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]


def _text(out: W.Output, stream: str = "stdout") -> str:
    return "".join(o["text"] for o in out.outputs if o.get("output_type") == "stream" and o["name"] == stream)


def _descendants(w):
    yield w
    for child in getattr(w, "children", ()):
        yield from _descendants(child)


def _contract(panel, run_label: str, lr: bool):
    found = list(_descendants(panel))
    assert "course-panel" in panel._dom_classes
    runs = [w for w in found if "course-run" in getattr(w, "_dom_classes", ())]
    assert len(runs) == 1 and isinstance(runs[0], W.Button) and runs[0].description == run_label
    outs = [w for w in found if "course-output" in getattr(w, "_dom_classes", ())]
    assert len(outs) == 1 and isinstance(outs[0], W.Output)
    lrs = [w for w in found if "course-lr" in getattr(w, "_dom_classes", ())]
    assert len(lrs) == (1 if lr else 0)
    if lr:
        assert isinstance(lrs[0], W.FloatLogSlider)
    for w in found:   # labels must not be cut off in the browser
        if isinstance(w, (W.FloatSlider, W.FloatLogSlider, W.IntSlider, W.Dropdown, W.Checkbox)):
            assert w.style.description_width == "initial", w.description
    return runs[0], outs[0]


def _assert_figure_and_result(out: W.Output, start: str = "Result:"):
    figs = _figures(out)
    assert len(figs) == 1 and figs[0].startswith(PNG_MAGIC)
    lines = _text(out).splitlines()
    assert any(line.startswith(start) for line in lines), lines
    assert _text(out, "stderr") == ""


# ---------------------------------------------------------------------- 03: margin panel

@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    y = np.repeat(np.arange(3), 10)
    x = torch.tensor(centres[y] + 0.3 * rng.normal(size=(30, 16)), dtype=torch.float32)
    sp = split_per_person(y, seed=0)
    torch.set_num_threads(1)
    return margins.train_toy(x, y, ["a", "b", "c"], sp.train, sp.test, s=16, m=0.5, epochs=30, lr=3e-2)


def test_margin_panel_contract_and_nothing_on_display(toy):
    panel = margin_panel(toy)
    run, out = _contract(panel, "Train", lr=True)
    c = panel.controls
    assert run is c.train and out is c.output
    assert (c.s.value, c.m.value, c.easy_margin.value) == (16, 0.5, False)
    assert c.lr.value == pytest.approx(3e-2, rel=0.2)
    assert out.outputs == () and panel.results == [] and panel.state.toy is toy   # built, nothing ran


def test_margin_sliders_redraw_without_training(toy):
    panel = margin_panel(toy)
    c = panel.controls
    weights = toy.weights().copy()
    c.m.value = 1.0
    _assert_figure_and_result(c.output)
    assert "m=1.00" in panel.results[-1] and panel.state.toy is toy
    c.s.value = 2.0
    assert "s=2" in panel.results[-1] and "never reaches p = 0.99" in panel.results[-1]
    c.easy_margin.value = True
    assert "(easy margin)" in panel.results[-1]
    assert np.array_equal(toy.weights(), weights)          # redraws never trained
    assert len(panel.results) == 3


def test_margin_train_button_retrains_with_the_panel_values(toy):
    panel = margin_panel(toy)
    c = panel.controls
    c.s.value, c.m.value = 8.0, 0.2
    c.lr.value = 1e-2
    c.train.click()
    new = panel.state.toy
    assert new is not toy and (new.s, new.m, new.lr) == (8.0, pytest.approx(0.2), pytest.approx(1e-2))
    assert not np.allclose(new.weights(), toy.weights())
    _assert_figure_and_result(c.output, "Result: retrained the 2-D toy: loss ")
    assert any(line.startswith("Regions:") for line in _text(c.output).splitlines())
    assert c.train.disabled is False


def test_margin_train_errors_become_one_clear_line(toy, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(margins, "retrain_toy", broken)
    panel = margin_panel(toy)
    panel.controls.train.click()                           # must not raise
    err = _text(panel.controls.output, "stderr")
    assert err.strip() == "Training failed: out of memory (RuntimeError)"
    assert isinstance(panel.results[-1], RuntimeError) and panel.controls.train.disabled is False


def test_margin_train_divergence_keeps_the_old_toy(toy, monkeypatch):
    diverged = margins.Toy(toy.model, toy.names, toy.train, toy.test, 64, 0.5, False, 10.0, 30,
                           margins.History(diverged="loss became nan at epoch 2"))
    monkeypatch.setattr(margins, "retrain_toy", lambda *a, **k: diverged)
    panel = margin_panel(toy)
    panel.controls.train.click()
    assert panel.state.toy is toy
    assert "Result: training diverged (loss became nan at epoch 2)" in _text(panel.controls.output)


# ---------------------------------------------------------------------- 04: UMAP and threshold panels

@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(0)
    def people(n, per, offset):
        c = rng.normal(size=(n, 24))
        y = np.repeat(np.arange(n), per)
        return c[y] + 0.3 * rng.normal(size=(len(y), 24)), y
    s = E.EmbeddingSets(["p0", "p1", "p2"], {}, {})
    tr, ytr = people(3, 5, 0)
    x_all = {}
    for split, (n, per) in {"train": (3, 5), "val": (3, 2), "test": (3, 3), "strangers": (6, 6)}.items():
        if split in ("train", "val", "test"):
            idx = np.repeat(np.arange(3), per)
            x_all[split] = tr[idx * 5] + 0.2 * rng.normal(size=(len(idx), 24))
            s.labels[split] = idx
        else:
            x_all[split], s.labels[split] = people(n, per, 0)
        s.images[split] = [np.zeros((4, 4, 3)) for _ in s.labels[split]]
    s.add_view("raw features", x_all)
    return s


@pytest.mark.slow
def test_umap_panel_contract_and_compute(sets):
    panel = umap_panel(sets, split="strangers", n_neighbors=8)
    run, out = _contract(panel, "Compute", lr=False)
    c = panel.controls
    assert out.outputs == ()                               # nothing computed on display
    assert c.split.options == E.SPLITS and c.view.value == "raw features"
    c.min_dist.value = 0.3
    assert out.outputs == ()                               # sliders wait for Compute
    run.click()
    _assert_figure_and_result(out, "Result: UMAP of 36 photos (strangers, raw features)")
    c.split.value = "all"
    run.click()
    assert panel.results[-1].startswith("Result: UMAP of 60 photos (all, raw features)")


def test_umap_panel_shows_errors(sets):
    tiny = E.EmbeddingSets(["p0"], {"train": np.zeros(2, int), "test": np.zeros(2, int), "strangers": np.arange(1)},
                           {k: [] for k in ("train", "test", "strangers")})
    tiny.add_view("v", {"train": np.eye(2), "test": np.eye(2), "strangers": np.ones((1, 2))})
    panel = umap_panel(tiny, split="test")
    panel.controls.compute.click()
    assert _text(panel.controls.output, "stderr").strip() == \
        "UMAP failed: a map needs at least 4 points; got 2 (ValueError)"


@pytest.fixture(scope="module")
def scores(sets):
    return {"raw features": V.open_set_for(sets, "raw features")}


def test_threshold_panel_contract_and_redraw(scores):
    panel = threshold_panel(scores)
    run, out = _contract(panel, "Compute", lr=False)
    c = panel.controls
    assert out.outputs == ()
    assert c.threshold.value == round(scores["raw features"].threshold, 2)
    c.threshold.value = 0.3                                 # the slider redraws at once
    _assert_figure_and_result(out, "Result: threshold 0.30: known people named right")
    assert panel.results[-1] == f"Result: {scores['raw features'].rates(0.3)}"
    before = out.outputs
    run.click()                                             # the same threshold: still a visible change
    assert len(panel.results) == 2 and panel.results[-1] == panel.results[-2]
    assert out.outputs != before and "strangers rejected" in _text(out).splitlines()[1]
    assert "   0.30 " in _text(out) and "   0.40 " in _text(out)


def test_threshold_panel_single_scores_and_errors(scores):
    panel = threshold_panel(scores["raw features"], threshold=0.5)
    assert panel.controls.view.options == ("embedding",)
    panel.controls.compute.click()
    assert panel.results[-1].startswith("Result: threshold 0.50")
    with pytest.raises(ValueError, match="0 stranger photo"):
        V.OpenSetScores(np.array([0.9]), np.array([True]), np.array([]), 0.5)
    panel = threshold_panel(scores, threshold=0.5)
    panel.controls.threshold.value = 1.0
    assert panel.results[-1].startswith("Result: threshold 1.00")
    scores_bad = V.OpenSetScores(np.array([0.9]), np.array([True]), np.array([0.2]), 0.5)
    panel = threshold_panel(scores_bad)
    scores_bad.known_score = np.array([])                  # broken after the panel was built
    panel.controls.compute.click()
    assert _text(panel.controls.output, "stderr").startswith("Computing failed: open set needs")
