"""Notebook 05's panel: the widget contract, nothing trains on display, a click trains what is ticked.

Driven without a browser: set widget values, `button.click()`, read the Output's items. The tiny
seeded backbone keeps each click well under a second.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers.train import unfreezing as U
from helpers.course.widgets import unfreezing_panel
from tiny_backbone import tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def data(orl):
    faces = orl.subset(np.flatnonzero(orl.labels < 8), relabel=True)
    return U.prepare_data(tiny_backbone(), faces, n_known=4, size=32, seed=0, n_threads=1)


def _text(out) -> str:
    return "".join(item.get("text", "") for item in out.outputs)


def _figures(out) -> int:
    return sum("image/png" in item.get("data", {}) for item in out.outputs)


def test_panel_follows_the_course_contract_and_does_not_train_on_display(data):
    panel = unfreezing_panel(data)
    c = panel.controls
    assert "course-panel" in panel._dom_classes
    assert c.train.description == "Train" and "course-run" in c.train._dom_classes
    assert c.lr.description == "lr" and "course-lr" in c.lr._dom_classes and type(c.lr).__name__ == "FloatLogSlider"
    assert "course-output" in c.output._dom_classes
    assert list(c.stages) == ["stem", "layer1"]                 # stages that hold layers, in order
    assert [b.value for b in c.stages.values()] == [False, True]  # default: the last stage (stage 2)
    assert panel.results == [] and c.output.outputs == ()       # nothing ran


def test_click_trains_the_ticked_stages_and_shows_curves_and_result(data):
    panel = unfreezing_panel(data, epochs=2)
    c = panel.controls
    c.lr.value, c.backbone_lr.value = 1e-2, 1e-4
    c.train.click()
    res = panel.results[-1]
    assert isinstance(res, U.RunResult), res
    plan = res.plans[0]
    assert res.trained_stages == ("layer1",) and plan.cache and not plan.augment
    assert plan.lr == pytest.approx(1e-2) and plan.backbone_lr == pytest.approx(1e-4) and plan.epochs == 2
    assert _figures(c.output) == 1
    lines = [ln for ln in _text(c.output).splitlines() if ln.startswith("Result: ")]
    assert len(lines) == 1 and "test acc" in lines[0] and "trainable parameters" in lines[0]
    assert "strangers' EER" in lines[0] and "at FAR 1 %" in lines[0]
    eer = res.histories[0].extra["strangers_eer"]      # the curve: one EER per epoch, a fraction
    assert len(eer) == 2 and all(0 <= e <= 1 for e in eer)
    assert not c.train.disabled


def test_head_only_and_several_stages(data):
    panel = unfreezing_panel(data, epochs=1)
    c = panel.controls
    c.stages["layer1"].value = False
    c.train.click()
    head = panel.results[-1]
    assert head.trained_stages == () and head.plans[0].cache
    c.stages["stem"].value = c.stages["layer1"].value = True
    c.train.click()
    both = panel.results[-1]
    assert both.trained_stages == ("stem", "layer1") and both.plans[0].augment and not both.plans[0].cache
    assert both.trainable > head.trainable
    assert _figures(c.output) == 1 and "Result: " in _text(c.output)  # the output shows the latest run only


def test_a_failing_run_is_one_clear_line_in_the_output(data, monkeypatch):
    def broken(*a, **k):
        raise ValueError("the data has no validation photos")

    monkeypatch.setattr(U, "train_stages", broken)
    panel = unfreezing_panel(data)
    panel.controls.train.click()
    text = _text(panel.controls.output)
    assert "Training failed: the data has no validation photos (ValueError)" in text
    assert "Traceback" not in text and not panel.controls.train.disabled
    assert isinstance(panel.results[-1], ValueError)


def test_the_pretrained_backbone_is_left_alone(data):
    before = copy.deepcopy(data.backbone.state_dict())
    panel = unfreezing_panel(data, epochs=1)
    panel.controls.stages["stem"].value = True
    panel.controls.train.click()
    after = data.backbone.state_dict()
    assert all((before[k] == after[k]).all() for k in before)


def test_chain_box_runs_the_three_stages_one_after_another(data):
    panel = unfreezing_panel(data, epochs=1)
    c = panel.controls
    c.train.click()
    c.chain.value = True
    c.lr.value, c.backbone_lr.value = 1e-2, 1e-3
    c.train.click()
    res = panel.results[-1]
    assert isinstance(res, U.RunResult), res
    assert [p.name for p in res.plans] == ["stage 1", "stage 2", "stage 3"] and res.stage_ends() == [30, 31, 32]
    assert [p.lr for p in res.plans] == pytest.approx([1e-2, 1e-3, 1e-2 / 30])
    assert [p.backbone_lr for p in res.plans[1:]] == pytest.approx([1e-3, 1e-4])
    text = _text(c.output)
    assert _figures(c.output) == 1 and "strangers' EER after each stage:" in text
    assert "vs previous click:" in text  # the first click's result is the comparison
    assert len(res.combined_history().extra["strangers_eer"]) == 32   # per epoch, across the three stages
