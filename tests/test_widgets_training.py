"""The training panel of notebook 02, driven as the learner drives it: set widget values, click Train.

Synthetic, well-separated features (3 people x 10 photos) keep each click to a fraction of a
second; the fine-tuning path uses the tiny test backbone on small random photos.
"""
from __future__ import annotations

import base64

import ipywidgets as W
import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.data.splits import split_per_person
from helpers.course.experiments import TrainReport
from helpers.course.widgets import training_panel
from tiny_backbone import tiny_backbone

matplotlib.use("Agg", force=True)
pytestmark = pytest.mark.usefixtures("one_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def clusters():
    """30 feature vectors (16-D) of 3 people, far apart; split 5 train / 2 val / 3 test per person."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 4
    labels = np.repeat(np.arange(3), 10)
    x = centres[labels] + 0.3 * torch.randn(30, 16, generator=gen)
    return x, labels, split_per_person(labels, seed=0)


def _figures(out: W.Output) -> list[bytes]:
    return [base64.b64decode(o["data"]["image/png"]) for o in out.outputs
            if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]


def _text(out: W.Output, stream: str = "stdout") -> str:
    """The Output's text on `stream`; for stdout also the Result lines (HTML with a text/plain twin)."""
    parts = []
    for o in out.outputs:
        if o.get("output_type") == "stream" and o["name"] == stream:
            parts.append(o["text"])
        elif stream == "stdout" and o.get("output_type") == "display_data" and "text/html" in o.get("data", {}):
            parts.append(o["data"]["text/plain"] + "\n")
    return "".join(parts)


def _photos(n_people=2, per_person=6, seed=0):
    """Dark vs bright random 32 px photos: a tiny task the tiny backbone can fine-tune on."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_people), per_person)
    images = [Image.fromarray((rng.integers(0, 60, (32, 32, 3)) + 180 * l / max(1, n_people - 1)).astype(np.uint8))
              for l in labels]
    return images, labels


def test_panel_follows_the_browser_contract(clusters):
    panel = training_panel(*clusters)
    c = panel.controls
    assert "course-panel" in panel._dom_classes
    assert isinstance(c.train, W.Button) and c.train.description == "Train" and "course-run" in c.train._dom_classes
    assert isinstance(c.lr, W.FloatLogSlider) and c.lr.description == "lr" and "course-lr" in c.lr._dom_classes
    assert (c.lr.base, c.lr.min, c.lr.max, c.lr.value) == (10, -4, 0, pytest.approx(1e-2))
    assert isinstance(c.output, W.Output) and "course-output" in c.output._dom_classes
    assert isinstance(c.freeze, W.Checkbox) and c.freeze.value is True
    assert c.head.value == "arcface" and set(c.head.options) >= {("ArcFace", "arcface")}
    # all controls and the output are inside the panel
    def descendants(w):
        yield w
        for child in getattr(w, "children", ()):
            yield from descendants(child)
    inside = list(descendants(panel))
    assert all(any(w is d for d in inside) for w in (c.lr, c.epochs, c.freeze, c.head, c.train, c.output))


def test_building_the_panel_trains_nothing(clusters):
    panel = training_panel(*clusters)
    assert panel.results == [] and panel.controls.output.outputs == ()


def test_click_trains_with_the_widget_values_and_shows_figure_and_result(clusters):
    panel = training_panel(*clusters)
    c = panel.controls
    c.lr.value, c.epochs.value, c.head.value = 0.1, 7, "softmax"
    c.train.click()
    res = panel.results[-1]
    assert isinstance(res, TrainReport)
    assert (res.lr, res.head, res.history.epochs, res.frozen) == (pytest.approx(0.1), "softmax", 7, True)
    assert res.test_acc == 1.0 and res.val_acc == 1.0          # separable clusters: learnt
    figs = _figures(c.output)
    assert len(figs) == 1 and figs[0].startswith(PNG_MAGIC) and len(figs[0]) > 5_000
    lines = _text(c.output).strip().splitlines()
    assert lines[-1].startswith("Result: softmax (no margin) head, frozen backbone")
    assert "lr=0.1," in lines[-1] and "7 epochs frozen (7 steps)" in lines[-1] and "val 100.0 %" in lines[-1]
    assert "test" not in lines[-1]                            # validation only: test is looked at once
    assert not c.train.disabled


def test_second_click_replaces_the_output_and_keeps_every_result(clusters):
    panel = training_panel(*clusters)
    c = panel.controls
    c.epochs.value = 3
    c.train.click()
    c.lr.value = 1e-3
    c.train.click()
    assert [r.lr for r in panel.results] == [pytest.approx(1e-2), pytest.approx(1e-3)]
    assert len(_figures(c.output)) == 1
    assert _text(c.output).count("Result:") == 1 and "lr=0.001" in _text(c.output)


def test_same_values_give_the_same_result(clusters):
    a, b = training_panel(*clusters), training_panel(*clusters)
    for p in (a, b):
        p.controls.epochs.value = 5
        p.controls.train.click()
    assert a.results[-1].history.loss == b.results[-1].history.loss


def test_unfreezing_without_photos_says_what_is_missing(clusters):
    panel = training_panel(*clusters)                     # no images / backbone given
    c = panel.controls
    c.freeze.value = False
    c.train.click()
    assert isinstance(panel.results[-1], ValueError)
    err = _text(c.output, "stderr")
    assert err.startswith("Training failed: freeze=False fine-tunes the backbone") and "images=" in err
    assert "Traceback" not in err and not c.train.disabled


def test_diverging_training_is_reported_not_hidden(clusters):
    x, y, split = clusters
    bad = x.clone()
    bad[split.train[0]] = float("nan")                    # one broken feature row -> NaN loss
    panel = training_panel(bad, y, split)
    panel.controls.train.click()
    res = panel.results[-1]
    assert res.diverged
    text = _text(panel.controls.output)
    assert "Result:" in text and "training diverged: loss became nan at epoch 1" in text
    assert "training stopped" in text                     # the loop's own message is shown too


def test_unfrozen_training_fine_tunes_a_copy_of_the_backbone():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 6)
    images = [Image.fromarray((rng.integers(0, 60, (32, 32, 3)) + 180 * l).astype(np.uint8))  # dark vs bright
              for l in labels]
    split = split_per_person(labels, seed=0)
    bb = tiny_backbone()
    before = [p.detach().clone() for p in bb.parameters()]
    feats = torch.zeros(len(images), bb.feature_dim)      # unused when unfrozen
    panel = training_panel(feats, labels, split, images=images, backbone=bb, epochs=2)
    panel.controls.freeze.value = False
    panel.controls.train.click()
    res = panel.results[-1]
    assert isinstance(res, TrainReport) and res.frozen is False and res.history.epochs == 2 + 5
    assert "backbone fine-tuned after epoch 2" in _text(panel.controls.output)
    tuned = res.model.backbone
    assert tuned is not bb
    assert any(not torch.equal(a, b) for a, b in zip(before, tuned.parameters()))   # the copy trained
    assert all(torch.equal(a, b) for a, b in zip(before, bb.parameters()))           # the original did not


def _panel_with_strangers(clusters):
    """A training panel on the clusters with 3 strangers of 6 photos each (16-D, well separated)."""
    x, y, split = clusters
    gen = torch.Generator().manual_seed(5)
    s_labels = np.repeat(np.arange(3), 6)
    s_x = (torch.randn(3, 16, generator=gen) * 4)[s_labels] + 0.3 * torch.randn(18, 16, generator=gen)
    return training_panel(x, y, split, epochs=10, strangers=(s_x, s_labels))


def test_clicks_report_strangers_and_compare_with_the_last_click(clusters):
    """Issue 14: each click reports the strangers' EER / TAR and how val and EER moved since the last."""
    panel = _panel_with_strangers(clusters)
    panel.controls.train.click()
    first = panel.results[-1]
    assert np.isfinite(first.stranger_eer) and 0 <= first.stranger_tar <= 1
    assert "vs last run" not in _text(panel.controls.output)
    assert "strangers' EER" in _text(panel.controls.output)
    panel.controls.lr.value = 1e-3
    panel.controls.train.click()
    text = _text(panel.controls.output)
    assert "vs last run" in text and panel.results[-1].previous is first
    assert len(first.history.extra["strangers' EER"]) == 10                      # one slot per epoch
    assert np.isfinite(first.history.extra["strangers' EER"][4]) and np.isnan(first.history.extra["strangers' EER"][0])
    assert len(first.history.val_loss) == 10 and all(np.isfinite(first.history.val_loss))


def test_unticking_freeze_continues_from_the_frozen_head_at_an_equal_visible_budget():
    """Issue 22: unfrozen = the frozen head's stage, then `then epochs` with the backbone training at its
    own lower lr; ticked, the same epochs continue frozen: same steps, same size, same photos."""
    images, labels = _photos()
    split = split_per_person(labels, seed=0)
    bb = tiny_backbone()
    before = [p.detach().clone() for p in bb.parameters()]
    feats = torch.zeros(len(images), bb.feature_dim)       # stage 1 on these (zeros: nothing to learn)
    s_labels = np.repeat(np.arange(2), 3)
    s_images, _ = _photos(per_person=3, seed=1)
    panel = training_panel(feats, labels, split, images=images, backbone=bb, epochs=4,
                           strangers=(torch.zeros(6, bb.feature_dim), s_labels), stranger_images=s_images)
    c = panel.controls
    assert c.warning.value == "" and c.tune_epochs.value == 0
    c.freeze.value = False
    assert c.tune_epochs.value == 5                        # unfreezing needs epochs to continue with
    warning = c.warning.value
    assert "Fine-tuning" in warning and "took" in warning and "about a minute" not in warning
    assert "5 epochs = 5 steps of 16 photos at 32 px" in warning   # 6 training photos: one step per epoch
    c.tune_epochs.value, c.backbone_lr.value = 3, 1e-3
    c.train.click()
    tuned = panel.results[-1]
    assert isinstance(tuned, TrainReport), tuned
    assert not tuned.frozen and tuned.history.epochs == 4 + 3 and tuned.tune_steps == 3
    line = _text(c.output).strip().splitlines()[-1]
    assert "backbone fine-tuned after epoch 4" in line
    assert "32 px: 4 epochs frozen (4 steps) + 3 epochs unfrozen, backbone lr 0.001 (3 steps of 16, head lr 0.001)" in line
    assert all(torch.equal(a, b) for a, b in zip(before, bb.parameters()))           # the original: untouched
    assert any(not torch.equal(a, b) for a, b in zip(before, tuned.model.backbone.parameters()))
    assert np.isfinite(tuned.stranger_eer)
    assert "(your last fine-tuning run)" in c.warning.value         # the estimate now uses the real run
    c.freeze.value = True
    c.train.click()
    frozen = panel.results[-1]
    assert frozen.frozen and frozen.tune_steps == tuned.tune_steps and frozen.history.epochs == 7
    assert frozen.history.loss[:4] == tuned.history.loss[:4]   # one shared frozen stage, then they differ
    assert "+ 3 epochs frozen (3 steps of 16, head lr 0.001)" in _text(c.output)
    assert "(" in _text(c.output) and "vs last run" in _text(c.output)


def test_fine_tuning_at_another_input_size_recomputes_features_and_says_so():
    images, labels = _photos()
    split = split_per_person(labels, seed=0)
    bb = tiny_backbone()
    panel = training_panel(torch.zeros(len(images), bb.feature_dim), labels, split, images=images, backbone=bb,
                           epochs=3)
    c = panel.controls
    assert set(c.size.options) == {32, 112} and c.size.value == 32
    c.size.value = 112
    c.train.click()
    res = panel.results[-1]
    assert isinstance(res, TrainReport) and "112 px: 3 epochs frozen" in res.line()


def test_curves_keep_fixed_axes_integer_ticks_and_earlier_runs(clusters):
    """Plots compare by eye across clicks: the same y-axes whatever the run, earlier runs drawn grey."""
    from matplotlib.ticker import MaxNLocator

    from helpers.course.training_runs import _Curves

    panel = _panel_with_strangers(clusters)
    panel.controls.train.click()
    panel.controls.lr.value = 1.0
    panel.controls.train.click()
    curves = _Curves("ArcFace", 10, with_strangers=True, earlier=panel.results)
    curves.draw(panel.results[-1].history)
    assert curves.acc_ax.get_ylim() == (0, 102) and curves.eer_ax.get_ylim() == (0, 50)
    assert curves.loss_ax.get_ylim() == pytest.approx((1e-3, 20))
    assert isinstance(curves.acc_ax.xaxis.get_major_locator(), MaxNLocator)
    assert all(float(t).is_integer() for t in curves.acc_ax.get_xticks())
    grey = [l for l in curves.acc_ax.get_lines() if l.get_color() == "0.75"]
    assert len(grey) == 2 and grey[-1].get_label() == "earlier runs"


def test_result_html_never_breaks_inside_a_field(clusters):
    panel = training_panel(*clusters)
    panel.controls.epochs.value = 3
    panel.controls.train.click()
    html = next(o["data"]["text/html"] for o in panel.controls.output.outputs
                if o.get("output_type") == "display_data" and "text/html" in o.get("data", {}))
    res = panel.results[-1]
    assert html.count('style="white-space: nowrap"') == len(res.fields()) >= 5
    assert "val 100.0 %" in html
    wrapped = res.line(lines=True).splitlines()               # printed in a cell: breaks between fields
    assert len(wrapped) == 4 and wrapped[0].startswith("Result:") and wrapped[2].startswith("  val ")
    assert all(f in res.line(lines=True) for f in res.fields())


def test_measuring_stage_two_only_at_the_end_changes_no_number():
    """equal_budget skips the per-epoch validation and strangers of stage 2: the same final numbers."""
    from helpers.course.training_runs import train_and_report

    images, labels = _photos()
    split = split_per_person(labels, seed=0)
    bb = tiny_backbone()
    s_images, _ = _photos(per_person=3, seed=1)
    s_labels = np.repeat(np.arange(2), 3)
    feats = torch.randn(len(images), bb.feature_dim, generator=torch.Generator().manual_seed(1))
    runs = [train_and_report(feats, labels, split, epochs=3, freeze=False, images=images, backbone=bb,
                             strangers=(torch.zeros(6, bb.feature_dim), s_labels), stranger_images=s_images,
                             tune_epochs=3, show=False, each_epoch=e) for e in (True, False)]
    assert runs[0].val_acc == runs[1].val_acc and runs[0].stranger_eer == runs[1].stranger_eer
    assert runs[0].history.loss == runs[1].history.loss and np.isnan(runs[1].history.val_acc[-2])
