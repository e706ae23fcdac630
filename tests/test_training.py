"""Training: learns on real faces, reproducible, optimises only what is trainable, reports divergence."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import load_backbone
from helpers.data.splits import split_per_person
from helpers.evaluate.metrics import accuracy, predict
from helpers.models.face_model import build_model, set_trainable_stages
from helpers.train.fit import (History, ImageDataset, TrainingDiverged, accuracy_of, fit, param_groups,
                               train_head_on_features, val_scores)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def one_shot(known_features):
    """9 known ORL people, 1 training photo each (val 2, test 3 per person)."""
    x, y = known_features
    split = split_per_person(y.numpy(), shots=1, seed=0)
    return {part: (x[idx], y[idx]) for part, idx in
            (("train", split.train), ("val", split.val), ("test", split.test))}


def _train(data, **kwargs):
    kwargs = {"epochs": 30, "progress": False, **kwargs}
    return train_head_on_features(*data["train"], *data["val"], **kwargs)


def test_one_shot_frozen_training_beats_chance_widely(one_shot):
    assert len(one_shot["train"][0]) == 9 and len(one_shot["test"][0]) == 27
    model, hist = _train(one_shot)
    test_x, test_y = one_shot["test"]
    acc = accuracy(test_y, predict(model, test_x))
    assert acc > 0.7, f"1-shot accuracy {acc:.2f} (chance is 0.11)"
    assert hist.epochs == 30 and not hist.diverged
    assert hist.loss[-1] < 0.5 * hist.loss[0]
    assert hist.final_val_acc == hist.val_acc[-1] > 0.5
    assert not model.training  # returned ready for evaluation


@pytest.mark.parametrize("head", ["cosface", "softmax"])
def test_other_heads_learn_too(one_shot, head):
    model, hist = _train(one_shot, head=head, epochs=20)
    assert accuracy(one_shot["test"][1], predict(model, one_shot["test"][0])) > 0.7


def test_same_seed_same_history_bitwise(one_shot):
    _, a = _train(one_shot, epochs=10, seed=5)
    _, b = _train(one_shot, epochs=10, seed=5)
    assert (a.loss, a.train_acc, a.val_acc) == (b.loss, b.train_acc, b.val_acc)
    _, c = _train(one_shot, epochs=10, seed=6)
    assert a.loss != c.loss


def test_end_to_end_fit_with_augmentation_is_reproducible():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(8)]
    labels = [0, 1, 0, 1, 0, 1, 0, 1]

    def run():
        torch.manual_seed(0)
        bb = load_backbone("resnet18", pretrained=False, verbose=False)
        model = build_model(2, backbone=bb)
        set_trainable_stages(bb, ["layer4"])
        data = ImageDataset(images, labels, bb.transform(train=True, size=32))
        return fit(model, data, epochs=2, batch_size=4, device="cpu", seed=3, progress=False)

    a, b = run(), run()
    assert a.epochs == 2 and all(math.isfinite(v) for v in a.loss)
    assert a.loss == b.loss and a.train_acc == b.train_acc


def test_on_epoch_callback_sees_growing_history(one_shot):
    seen = []
    _train(one_shot, epochs=4, on_epoch=lambda h: seen.append((h.epochs, h.val_acc[-1])))
    assert [n for n, _ in seen] == [1, 2, 3, 4]


# ------------------------------------------------------------------ optimizer groups

def test_param_groups_only_trainable_and_backbone_slower():
    bb = load_backbone("resnet18", pretrained=False, verbose=False)
    model = build_model(9, backbone=bb)
    groups = param_groups(model, lr=1e-2, backbone_lr=None)
    assert [g["name"] for g in groups] == ["head"]  # frozen backbone: nothing of it
    set_trainable_stages(bb, ["layer3", "layer4"])
    groups = param_groups(model, lr=1e-2, backbone_lr=None)
    assert [g["name"] for g in groups] == ["head", "layer3", "layer4"]
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == 1e-2 and lrs["layer3"] == lrs["layer4"] == pytest.approx(1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(p.requires_grad for g in groups for p in g["params"])
    groups = param_groups(model, lr=1e-2, backbone_lr={"layer4": 1e-4})
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["layer4"] == 1e-4 and lrs["layer3"] == pytest.approx(1e-3) and lrs["head"] == 1e-2
    groups = param_groups(model, lr=1e-2, backbone_lr=5e-4)
    assert all(g["lr"] == 5e-4 for g in groups if g["name"] != "head")


# ------------------------------------------------------------------ divergence

def _no_nan(hist: History) -> bool:
    return all(math.isfinite(v) for v in hist.loss + hist.train_acc + hist.val_acc)


def test_far_too_high_lr_sets_diverged_not_nan_accuracies(one_shot, capsys):
    model, hist = _train(one_shot, lr=1e20, epochs=10)
    assert hist.diverged, "lr=1e20 should make the loss NaN"
    # no NaN model comes back: weights, BatchNorm statistics and predictions are finite
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert torch.isfinite(model(one_shot["test"][0])).all()
    assert "learning rate is too high" in hist.diverged and "lr=1e+19" in hist.diverged
    assert hist.epochs < 10 and _no_nan(hist)
    assert hist.summary().startswith("diverged")
    assert "training stopped" in capsys.readouterr().out


def test_nan_features_diverge_in_first_epoch(one_shot, capsys):
    x, y = one_shot["train"]
    x = x.clone()
    x[0, 0] = float("nan")
    model = build_model(9, feature_dim=x.shape[1])
    hist = fit(model, (x, y), one_shot["val"], epochs=5, device="cpu", progress=False)
    assert "epoch 1" in hist.diverged
    assert hist.epochs == 0 and hist.val_acc == [] and math.isnan(hist.final_val_acc)
    assert "training stopped" in capsys.readouterr().out
    with pytest.raises(TrainingDiverged, match="learning rate"):
        fit(build_model(9, feature_dim=x.shape[1]), (x, y), epochs=5, device="cpu", progress=False,
            raise_on_divergence=True)


def test_history_summary_text():
    h = History(loss=[2.0, 1.0], train_acc=[0.5, 0.75], val_acc=[0.4, 0.6], seconds=[0.1, 0.3])
    assert h.summary() == "2 epochs, final loss 1.000, train acc 75.0 %, val acc 60.0 %"
    assert h.seconds_per_epoch == pytest.approx(0.2)


def test_fit_records_val_loss_and_epoch_metrics():
    """Validation loss is the training objective (margin included); epoch_metrics run after each epoch."""
    import numpy as np
    import torch

    from helpers.train.fit import train_head_on_features

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(8)
    x = (torch.randn(3, 16, generator=gen) * 3)[y] + 0.3 * torch.randn(24, 16, generator=gen)
    calls = []
    model, hist = train_head_on_features(x, y, x, y, epochs=4, progress=False,
                                         epoch_metrics={"n": lambda m: calls.append(1) or len(calls)})
    assert hist.extra["n"] == [1, 2, 3, 4] and len(hist.val_loss) == 4
    assert all(np.isfinite(hist.val_loss)) and hist.val_loss[-1] < hist.val_loss[0]


# ------------------------------------------------------------------ the one step and the one accuracy

def test_fit_and_the_trainer_report_the_same_accuracy(orl):
    """fit's validation accuracy, accuracy_of and the trainer's val_acc (a DataLoader, as the trainer
    passes it) are one function: the same number on the same model and photos, = argmax of the logits."""
    import helpers.train.trainer
    from torch.utils.data import DataLoader

    from helpers.train import step as S
    from tiny_backbone import tiny_backbone

    assert helpers.train.trainer.closed_set_accuracy is S.closed_set_accuracy
    idx = np.flatnonzero(orl.labels < 4)[::2]                       # 4 people x 5 photos
    torch.manual_seed(0)
    model = build_model(4, backbone=tiny_backbone())
    data = ImageDataset([orl.images[i] for i in idx], orl.labels[idx], model.backbone.transform(size=32))
    fit(model, data, epochs=2, batch_size=8, device="cpu", progress=False)
    model.eval()
    x = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        by_hand = (model(x).argmax(1) == data.labels).float().mean().item()
    assert 0 < by_hand < 1
    trainer_acc = S.closed_set_accuracy(model, DataLoader(data, batch_size=3))
    assert val_scores(model, data)[0] == accuracy_of(model, data) == trainer_acc == by_hand


def test_train_step_is_forward_margin_loss_backward_step_and_refuses_nan():
    """One step = the hand-written step (bit for bit), micro-batches add their mean gradients, and a NaN
    loss raises before the optimiser step (weights and optimiser state untouched)."""
    import copy

    from helpers.train.step import MarginObjective, train_step

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 6, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(0)
    a = build_model(3, feature_dim=6).train()
    b = copy.deepcopy(a)
    opt_a, opt_b = (torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (a, b))
    res = train_step(MarginObjective(a), opt_a, [(x, y)])
    emb = b.embedding(x)
    loss = F.cross_entropy(b.head(emb, y), y)
    loss.backward()
    opt_b.step()
    assert res.loss == loss.item() and res.count == 8
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.no_grad():   # counted after the step: the new head on this step's embeddings
        assert res.correct == int((b.head.logits(emb).argmax(1) == y).sum())
    # two micro-batches of 4: each loss / 2, one step
    res = train_step(MarginObjective(a), opt_a, [(x[:4], y[:4]), (x[4:], y[4:])])
    b.train()
    opt_b.zero_grad()
    losses = [F.cross_entropy(b.head(b.embedding(xs), ys), ys) for xs, ys in ((x[:4], y[:4]), (x[4:], y[4:]))]
    for part in losses:
        (part / 2).backward()
    opt_b.step()
    assert res.loss == pytest.approx(sum(p.item() * 4 for p in losses) / 8, rel=1e-12) and res.count == 8
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    before = copy.deepcopy(a.state_dict())
    steps = opt_a.state_dict()["state"][0]["step"].clone()
    bad = x.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="the step was not applied") as e:
        train_step(MarginObjective(a), opt_a, [(bad, y)])
    assert math.isnan(e.value.loss) and e.value.bad == 1
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items() if "running" not in k and "tracked" not in k)
    assert torch.equal(opt_a.state_dict()["state"][0]["step"], steps)
