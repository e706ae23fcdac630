"""Gradual unfreezing: the backbone cut at its last stage, cached activations, schedules, runs, memory.

Most tests use the tiny seeded backbone (32 px) on a few ORL people, so whole schedules run in
well under a second; the cut of the real backbones (EfficientNet-Lite0, ResNet-18) is checked
numerically on a handful of photos.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from helpers import load_backbone
from helpers.models import backbone_tail as T
from helpers.train import unfreezing as U
from helpers.course import unfreezing_lessons as L
from helpers.train.cached_unfreezing import train_cached_steps
from helpers.evaluate.metrics import one_shot_identification
from helpers.train.lr_schedule import lr_factor
from helpers.memory import PeakMemory
from helpers.models.face_model import build_model, count_parameters, set_trainable_stages
from tiny_backbone import tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(orl):
    """5 known ORL people (25/10/15 photos), 5 strangers (50 photos), tiny backbone at 32 px."""
    faces = orl.subset(np.flatnonzero(orl.labels < 10), relabel=True)
    return U.prepare_data(tiny_backbone(), faces, n_known=5, size=32, seed=0, n_threads=1)


def _fresh(data):
    """A copy of the data object with its own (empty) caches and an untouched backbone."""
    return U.UnfreezeData(copy.deepcopy(data.backbone), data.known, data.strangers, data.split, data.size,
                          threads=1, batch_size=data.batch_size)


def _state(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------- the cut


@pytest.mark.parametrize("which", ["efficientnet_lite0", "resnet18", "tiny"])
def test_tail_of_cached_inputs_equals_the_whole_backbone(which, effnet, orl):
    bb = {"efficientnet_lite0": lambda: effnet, "tiny": tiny_backbone,
          "resnet18": lambda: load_backbone("resnet18", pretrained=False, verbose=False)}[which]()
    size = 32 if which == "tiny" else 64
    images = orl.images[:3]
    stage = T.last_stage(bb)
    tf = bb.transform(size=size)
    x = torch.stack([tf(im) for im in images])
    with torch.no_grad():
        whole = bb.eval()(x)
        inputs = T.stage_inputs(bb, images, stage, tf)
        tail = T.BackboneTail(bb, stage).eval()(inputs)
    assert inputs.dim() == 4 and inputs.shape[0] == 3
    assert torch.allclose(tail, whole, atol=1e-5), (tail - whole).abs().max()


def test_tail_shares_and_owns_only_the_last_stage(effnet):
    bb = copy.deepcopy(effnet)
    tail = T.BackboneTail(bb, "layer4")
    stage_ids = {id(p) for p in bb.stage_parameters("layer4")}
    assert {id(p) for p in tail.parameters()} == stage_ids      # only layer4's weights, the same objects
    assert tail.stage_names == ["layer4"]
    assert list(tail.stage_parameters("layer3")) == []
    with pytest.raises(ValueError, match="first stage"):
        T.BackboneTail(bb, "stem")
    with pytest.raises(KeyError):
        T.BackboneTail(bb, "layer9")


def test_tail_follows_the_frozen_batchnorm_rule(effnet):
    bb = copy.deepcopy(effnet)
    set_trainable_stages(bb, [])
    tail = T.BackboneTail(bb, "layer4").train()
    bns = [m for m in tail.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)            # frozen: eval mode
    set_trainable_stages(bb, ["layer4"])
    tail.train()
    assert all(m.training for m in bns)                          # trainable: train mode (unless FineTuneModel says no)


# ---------------------------------------------------------------------- runs


def test_frozen_run_never_touches_the_pretrained_backbone(tiny_data):
    data = _fresh(tiny_data)
    before = _state(data.backbone)
    res = U.run_schedule(data, U.gradual_schedule(data.backbone, epochs=(3, 2, 1)), seed=0)
    after = _state(data.backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)   # runs train a copy
    assert res.trained_stages == tuple(data.backbone.stage_names)  # stage 3 trains everything
    changed = [k for k, v in _state(res.model.backbone).items() if not torch.equal(v, before[k])]
    assert any("layer1" in k for k in changed) and any("conv1" in k for k in changed)
    assert len(res.histories) == 3 and [h.epochs for h in res.histories] == [3, 2, 1]


def test_stage_2_on_cached_inputs_trains_only_the_last_stage(tiny_data):
    data = _fresh(tiny_data)
    frozen = U.run_schedule(data, U.frozen_schedule(epochs=3))
    before = _state(frozen.model.backbone)
    plan = U.StagePlan("stage 2", (T.last_stage(data.backbone),), 2, 1e-2, 1e-2, cache=True)
    g2 = U.run_schedule(data, [plan], model=copy.deepcopy(frozen.model))
    after = _state(g2.model.backbone)
    moved = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"layer1"}, moved                            # the tiny backbone's last stage
    assert g2.trained_stages == ("layer1",)
    # evaluation through the cached inputs equals evaluation through the whole fine-tuned backbone
    via_cache = U.model_features(g2, data, "test")
    g2.bn_stats_changed = True                                   # forces the whole-photo path
    via_photos = U.model_features(g2, data, "test")
    assert torch.allclose(via_cache, via_photos, atol=1e-5)


def test_cached_stages_are_refused_when_they_would_be_wrong(tiny_data):
    data = _fresh(tiny_data)
    last = T.last_stage(data.backbone)
    with pytest.raises(ValueError, match="cannot be augmented"):
        U.run_schedule(data, [U.StagePlan("x", (last,), 1, 1e-2, cache=True, augment=True)])
    with pytest.raises(ValueError, match="out of date"):
        U.run_schedule(data, [U.StagePlan("x", (last,), 1, 1e-2, cache=True)], trained_stages=["stem"])
    with pytest.raises(ValueError, match="last stage"):
        U.run_schedule(data, [U.StagePlan("x", ("stem",), 1, 1e-2, cache=True)])


def test_runs_are_reproducible(tiny_data):
    data = _fresh(tiny_data)
    plans = U.gradual_schedule(data.backbone, epochs=(3, 2, 2))
    a = U.run_schedule(data, plans, seed=3)
    b = U.run_schedule(data, plans, seed=3)
    assert a.combined_history().loss == b.combined_history().loss
    assert U.evaluate_run(a, data) == U.evaluate_run(b, data)


def test_trainable_parameters_grow_with_each_stage(effnet):
    plans = U.gradual_schedule(effnet)
    counts = []
    for plan in plans:
        model = build_model(9, backbone=copy.deepcopy(effnet))
        set_trainable_stages(model.backbone, plan.stages)
        counts.append(count_parameters(model).trainable)
    assert counts[0] < counts[1] < counts[2]
    assert counts[0] == 1280 * 512 + 512 + 2 * 512 + 9 * 512       # embedding + BN1d + ArcFace weights
    assert counts[1] - counts[0] == sum(p.numel() for p in effnet.stage_parameters("layer4"))
    assert plans[2].augment and not plans[2].cache and plans[1].cache and not plans[1].augment
    assert plans[2].backbone_lr < plans[1].backbone_lr                 # stage 3: a lower learning rate


def test_finetune_model_keeps_backbone_batchnorm_statistics(tiny_data):
    data = _fresh(tiny_data)
    model = build_model(data.num_classes, backbone=data.backbone, freeze_backbone=False)
    ft = T.FineTuneModel(model.embedding, model.head, model.backbone, bn_train=False).train()
    assert not data.backbone.body.bn1.training and ft.embedding.bn.training
    ft.bn_train = True
    ft.train()
    assert data.backbone.body.bn1.training


def test_frozen_bn_pitfall_moves_statistics_not_weights(tiny_data):
    data = _fresh(tiny_data)
    out = L.frozen_bn_pitfall(data, epochs=2)
    assert set(out) == {"bn eval", "bn train"}
    assert out["bn eval"]["bn_stats_moved"] == 0 and not out["bn eval"]["weights_changed"]
    assert out["bn train"]["bn_stats_moved"] > 0 and not out["bn train"]["weights_changed"]


def test_compare_methods_on_one_split(tiny_data):
    data = _fresh(tiny_data)
    res = L.compare_methods(data, U.gradual_schedule(data.backbone, epochs=(3, 2, 1)),
                            U.full_schedule(data.backbone, epochs=2))
    assert [r.method for r in res] == ["frozen (stage 1 only)", "gradual, stages 1-2", "gradual, stages 1-3",
                                       "full fine-tuning"]
    assert [r.epochs for r in res] == [3, 5, 6, 2]
    for r in res:
        m = r.metrics
        for v in (m.train_acc, m.val_acc, m.test_acc, m.new_people_1shot, m.strangers_eer):
            assert 0.0 <= v <= 1.0
        assert len(r.seconds_per_epoch()) == len(r.histories)
    table = L.comparison_table(res)
    assert table.count("\n") == 5 and "full fine-tuning" in table and "MiB" in table
    assert L.accuracy_table(res).count("|") == 8 * 6
    raw = U.raw_feature_metrics(data)
    assert 0 <= raw["strangers_eer"] <= 1


def _first(model) -> torch.Tensor:
    return next(model.embedding.parameters())


def test_run_chain_continues_each_stage_from_the_previous_one(tiny_data):
    data = _fresh(tiny_data)
    plans = U.gradual_schedule(data.backbone, epochs=(3, 2, 1))
    chain = U.run_chain(data, plans, ["s1", "s1-2", "s1-3"], measure_memory=False)
    assert [r.method for r in chain] == ["s1", "s1-2", "s1-3"]
    assert chain[-1].stage_ends() == [3, 5, 6] and chain[1].stage_ends() == [3, 5]
    h = chain[-1].combined_history()
    assert h.epochs == 6 and len(h.val_loss) == 6 and len(h.val_acc) == 6
    # stage 2 started from stage 1's weights: the embedding stage 1 left is not the fresh one
    fresh = U.run_schedule(data, plans[1:2], "stage 2 from scratch", measure_memory=False)
    assert not torch.equal(_first(fresh.model), _first(chain[1].model))
    # ... and the frozen result was not changed by the later stages (each stage trains a copy)
    again = U.run_chain(_fresh(tiny_data), plans[:1], measure_memory=False)[0]
    assert torch.equal(_first(again.model), _first(chain[0].model))
    assert all(r.metrics is not None for r in chain)
    fig = L.plot_chain(chain)
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 2 + 2  # train + val loss, 2 stage boundaries
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_describe_result_compares_with_the_previous_run(tiny_data):
    data = _fresh(tiny_data)
    a = U.train_stages(data, [], epochs=1)
    b = U.train_stages(data, [], epochs=3)
    line = L.describe_result(b, a)
    want = 100 * (b.metrics.test_acc - a.metrics.test_acc)
    assert f"vs previous click: test acc {want:+.1f} pts" in line
    assert "vs previous" not in L.describe_result(b)


def test_train_stages_checks_its_arguments(tiny_data):
    data = _fresh(tiny_data)
    with pytest.raises(ValueError, match="unknown stage"):
        U.train_stages(data, ["layer9"])
    with pytest.raises(ValueError, match="at least 1"):
        U.train_stages(data, [], epochs=0)
    res = U.train_stages(data, ["layer1"], epochs=2)
    assert res.plans[0].cache and res.trained_stages == ("layer1",)
    assert L.describe_result(res).startswith("Result: test acc ")


# ---------------------------------------------------------------------- measures


def test_one_shot_identification_on_clear_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(4)
    labels = np.repeat(np.arange(4), 5)
    emb = centres[labels] + 0.01 * rng.normal(size=(20, 4))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert one_shot_identification(emb, labels) == 1.0
    assert one_shot_identification(emb, rng.permutation(labels)) < 0.6


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory("cpu") as small:
        x = torch.ones(10)
    with PeakMemory("cpu") as big:
        y = torch.ones(50 * 2**20 // 4)  # 50 MB, touched
        y += 1
        del y
    assert big.method and big.peak_mb is not None
    assert big.peak_mb >= 40, big.peak_mb
    assert small.peak_mb < 40
    del x


def test_even_batches():
    assert U._even_batch(45, 16) == 15 and U._even_batch(10, 16) == 10 and U._even_batch(64, 16) == 16


def test_frozen_report_names_exactly_the_changed_stage(effnet):
    model = build_model(9, backbone=copy.deepcopy(effnet))
    with torch.no_grad():
        model.backbone.body._blocks[11]._project_conv.weight.add_(1e-3)   # layer4's first block only
    lines = L.frozen_report(model, effnet).splitlines()
    assert [ln.split()[0] for ln in lines] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [ln.endswith("NO") for ln in lines] == [False, False, False, False, True]
    assert all("trainable         0 of" in ln and "train mode  0 of" in ln for ln in lines)
    set_trainable_stages(model.backbone, ["layer4"])
    assert "train mode 16 of 16" in L.frozen_report(model).splitlines()[4]


# ---------------------------------------------------------------------- stages 1-2 step by step, warm-up


def test_lr_factor_is_a_linear_warm_up_times_a_cosine():
    steps = 8
    cosine = [0.5 * (1 + np.cos(np.pi * t / steps)) for t in range(steps)]
    assert [lr_factor(t, steps) for t in range(steps)] == pytest.approx(cosine)
    warm = [lr_factor(t, steps, 3) for t in range(steps)]
    assert warm[:3] == pytest.approx([cosine[0] / 3, cosine[1] * 2 / 3, cosine[2]])
    assert warm[2:] == pytest.approx(cosine[2:])          # full rate from the last warm-up step on


def _cached_plans(cut, warmup=0, s2=1):
    return [U.StagePlan("stage 1", (), 3, 1e-2, cache=True),
            U.StagePlan("stage 2", (cut,), s2, 1e-3, 1e-2, cache=True, warmup=warmup)]


def test_cached_steps_train_the_last_stage_only_and_warm_up_its_first_steps(tiny_data):
    data = _fresh(tiny_data)
    cut = data.cut_stage
    pre = {k: v for k, v in _state(data.backbone).items()}
    cold = train_cached_steps(data, _cached_plans(cut, warmup=0), seed=0)
    warm = train_cached_steps(data, _cached_plans(cut, warmup=3), seed=0)
    assert all(torch.equal(v, pre[k]) for k, v in _state(data.backbone).items())  # runs train a copy
    for res in (cold, warm):
        moved = {k.split(".")[1] for k, v in _state(res.model.backbone).items() if not torch.equal(v, pre[k])}
        assert moved == {cut}, moved
        assert res.trained_stages == (cut,) and [h.epochs for h in res.histories] == [3, 1]
        assert res.metrics is not None
    # Adam's first step moves every weight by about its learning rate, whatever the gradient's size: so
    # the largest move of the last stage's weights is ~lr without warm-up and ~lr / 3 with 3 warm-up steps
    def largest_move(res):
        after = dict(res.model.backbone.named_parameters())
        return max(float((after[k] - pre[k]).abs().max()) for k in after if f".{cut}." in f".{k}")
    assert largest_move(cold) == pytest.approx(1e-2, rel=0.05)
    assert largest_move(warm) == pytest.approx(1e-2 / 3, rel=0.05)
    # the head was trainable before: no warm-up for it (its first stage-2 step is the same in both runs)
    assert torch.equal(_first(cold.model), _first(warm.model))


def test_cached_steps_refuse_an_earlier_stage_and_are_reproducible(tiny_data):
    data = _fresh(tiny_data)
    with pytest.raises(ValueError, match="only the last stage"):
        train_cached_steps(data, [U.StagePlan("x", ("stem",), 1, 1e-2, cache=True)])
    a = train_cached_steps(data, _cached_plans(data.cut_stage, 2, s2=3), seed=1, trace=True)
    b = train_cached_steps(data, _cached_plans(data.cut_stage, 2, s2=3), seed=1)
    assert a.combined_history().loss == b.combined_history().loss and a.metrics == b.metrics
    assert len(a.histories[1].val_acc) == 3 and len(a.histories[1].extra["strangers_eer"]) == 3


def test_prepare_data_reuses_the_activations_of_all_photos(tiny_data, orl):
    faces = orl.subset(np.flatnonzero(orl.labels < 10), relabel=True)
    bb = tiny_data.backbone
    shared = U.all_stage_inputs(bb, faces, size=32, n_threads=1)
    for seed in (0, 3):
        a = U.prepare_data(bb, faces, n_known=5, size=32, seed=seed, n_threads=1, all_inputs=shared)
        b = U.prepare_data(bb, faces, n_known=5, size=32, seed=seed, n_threads=1)
        for part in U.PARTS:
            assert torch.allclose(a.inputs(part), b.inputs(part), atol=1e-5), part
    with pytest.raises(ValueError, match="holds 3 photos"):
        U.prepare_data(bb, faces, n_known=5, size=32, all_inputs=shared[:3])


def test_powered_comparison_arms_share_stage_1_and_the_budget(tiny_data, orl):
    faces = orl.subset(np.flatnonzero(orl.labels < 10), relabel=True)
    bb = tiny_data.backbone
    shared = U.all_stage_inputs(bb, faces, size=32, n_threads=1)
    arms = L.cached_arms(T.last_stage(bb), steps=(3, 2), warmup=1)
    assert len({sum(p.epochs for p in plans) for plans in arms.values()}) == 1   # equal step budgets
    comp = L.compare_cached_over_seeds(bb, faces, [0, 1, 2], arms, 5, None, 32, shared, n_threads=1)
    assert list(comp.runs) == list(arms) and comp.seeds == [0, 1, 2]
    starts = [[trace[0] for trace in row["val_trace"]] for row in comp.runs.values()]
    assert starts[0] == starts[1] == starts[2]           # stage 1 is the same run in every arm
    assert all(len(t) == 3 for row in comp.runs.values() for t in row["eer_trace"])
    names = list(arms)
    text = L.verdict(comp, names[1], names[0], "eer", "strangers' EER")
    mean, half = comp.difference(names[1], names[0], "eer")
    assert (f"{100 * mean:+.1f} ± {100 * half:.1f} points over 3 seeds" in text)
    assert ("clear difference" in text) == (abs(mean) > half)
    fig = L.plot_warmup(comp)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_verdict_states_the_largest_difference_the_run_could_miss():
    from helpers.course.experiments import SeedComparison
    same = SeedComparison("t", [0, 1, 2, 3], {"a": {"eer": [0.10, 0.12, 0.11, 0.13]},
                                              "b": {"eer": [0.11, 0.11, 0.12, 0.12]}})
    text = L.verdict(same, "b", "a", "eer", "EER")
    mean, half = same.difference("b", "a", "eer")
    assert f"no difference larger than {100 * (abs(mean) + half):.1f} points" in text
    apart = SeedComparison("t", [0, 1, 2], {"a": {"eer": [0.10, 0.12, 0.11]}, "b": {"eer": [0.20, 0.23, 0.21]}})
    assert "a clear difference" in L.verdict(apart, "b", "a", "eer", "EER")


def test_choose_warmup_picks_the_best_mean_validation_accuracy_on_the_seeds_given(tiny_data, orl):
    faces = orl.subset(np.flatnonzero(orl.labels < 10), relabel=True)
    bb = tiny_data.backbone
    shared = U.all_stage_inputs(bb, faces, size=32, n_threads=1)
    best, comp = L.choose_warmup(bb, faces, [100, 101], (0, 2), 5, None, 32, shared, n_threads=1, steps=(3, 3))
    assert comp.seeds == [100, 101] and list(comp.runs) == ["0-step warm-up", "2-step warm-up"]
    means = {w: np.mean(comp.runs[f"{w}-step warm-up"]["val"]) for w in (0, 2)}
    assert best == max(means, key=means.get)
    assert all(row["val_trace"] == [] for row in comp.runs.values())   # no trace: validation at the end only
