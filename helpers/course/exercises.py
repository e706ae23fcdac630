"""Self-checks for the notebooks' exercises: each says "correct" or explains what is off.

One section per notebook; each check returns True/False and prints its verdict.
"""
from __future__ import annotations

import math


def _verdict(ok: bool, good: str, bad: str) -> bool:
    print(("correct: " + good) if ok else ("not yet: " + bad))
    return ok


def _as_number(answer, what: str):
    """The answer as a float, or None after saying what is missing (never reveals the solution)."""
    if answer is None:
        print(f"not yet: replace None with your {what}")
        return None
    try:
        value = float(answer)
    except (TypeError, ValueError):
        print(f"not yet: {what} should be a number, got {type(answer).__name__} {answer!r}")
        return None
    if value != value:  # NaN
        print(f"not yet: {what} is NaN")
        return None
    return value


# ============================================================================ notebooks 00 (data), 01 (pretrained), 02 (frozen training)

def check_person_split(train, val, test, photos: int = 7, val_frac: float = 0.2, test_frac: float = 0.3) -> bool:
    """00, exercise 1: how split_per_person divides one person's `photos` photos (train, val, test)."""
    from ..data.splits import split_per_person

    if None in (train, val, test):
        print("not yet: replace each None with a number of photos")
        return False
    got = [_as_number(v, f"number of {k} photos") for k, v in (("train", train), ("val", val), ("test", test))]
    if None in got:
        return False
    s = split_per_person([0] * photos, val=val_frac, test=test_frac, seed=0).sizes()
    want = (s["train"], s["val"], s["test"])
    if tuple(got) == want:
        return _verdict(True, f"{photos} photos -> train {want[0]}, val {want[1]}, test {want[2]}: test = "
                              f"round({test_frac} x {photos}), val = round({val_frac} x {photos}), the rest trains", "")
    if sum(got) != photos:
        return _verdict(False, "", f"the three add up to {sum(got):g}, but the person has {photos} photos: "
                                   "every photo goes to exactly one part")
    if (got[1], got[2]) == (want[2], want[1]):
        return _verdict(False, "", "val and test are swapped: test takes 30 %, val 20 %")
    return _verdict(False, "", f"each part is rounded to the nearest whole photo: test = round({test_frac} x "
                               f"{photos}), val = round({val_frac} x {photos}), train = the rest")


def check_fixed_folder(root) -> bool:
    """00, exercise 2: the problem folder, fixed so it loads with nothing skipped and 4 people."""
    from pathlib import Path

    from ..data.folders import FaceDataError, load_folder

    if root is None:
        print("not yet: make the folder with make_problem_folder(path), fix it, then pass its path")
        return False
    root = Path(root)
    try:
        faces = load_folder(root, verbose=False)
    except FaceDataError as e:
        return _verdict(False, "", f"the folder does not load: {str(e).splitlines()[0]}")
    rep = faces.report
    if rep.skipped:
        first = rep.skipped[0]
        return _verdict(False, "", f"{len(rep.skipped)} file(s) still skipped, e.g. {first[0]}: {first[1]}")
    if rep.notes:
        return _verdict(False, "", f"the loader still notes: {rep.notes[0]}")
    counts = faces.counts()
    if counts.get("s4", 0) < 2:
        return _verdict(False, "", "s4 is left out: it needs a second photo of the same man (look at "
                                   "loose_photo.jpg)")
    if sum(counts.values()) < 12:
        return _verdict(False, "", f"{sum(counts.values())} photos load; the 12 good photos should all "
                                   "stay (remove only what cannot be used)")
    return _verdict(True, f"{faces.num_people} people, {len(faces)} photos, nothing skipped: "
                          f"{', '.join(f'{n} {c}' for n, c in counts.items())}", "")


def check_trainable_params(answer, people: int = 20, feature_dim: int = 512) -> bool:
    """01, exercise 1: trainable parameters of the frozen model (embedding + BatchNorm + head)."""
    value = _as_number(answer, "parameter count")
    if value is None:
        return False
    lin, bn, head = feature_dim * 512 + 512, 2 * 512, people * 512
    want = lin + bn + head
    if value == want:
        return _verdict(True, f"{want:,} = Linear {feature_dim}x512 + 512 bias ({lin:,}) + BatchNorm weight and "
                              f"bias ({bn:,}) + one 512-D centre per person ({head:,})", "")
    if value == want - bn:
        return _verdict(False, "", "BatchNorm1d(512) also learns a weight and a bias per channel")
    if value == want - 512:
        return _verdict(False, "", "the Linear layer has a bias of 512 as well")
    if value == lin + bn + 9 * 512 and people != 9:
        return _verdict(False, "", f"that is for 9 people; the head holds one 512-D centre per person ({people})")
    if value > 1_000_000:
        return _verdict(False, "", "frozen backbone parameters are not trainable: count only the new layers")
    return _verdict(False, "", f"{value:,.0f} is off: Linear({feature_dim}->512) with bias, BatchNorm1d(512), "
                               f"and an ArcFace head of {people} x 512")


def check_few_shot_answer(answer, features, labels, shots: int = 2, method: str = "1-NN") -> bool:
    """01, exercise 2: mean accuracy (fraction or %) with `shots` photos per person, 5 splits."""
    from .baselines import few_shot_table

    value = _as_number(answer, "accuracy")
    if value is None:
        return False
    want = few_shot_table({"f": features}, labels, shots=(shots,), methods=(method,)).get("f", method, shots)
    if value > 1.0:
        value = value / 100
    if abs(value - want) <= 0.005:
        return _verdict(True, f"{100 * want:.1f} % with {shots} photos per person ({method})", "")
    return _verdict(False, "", f"{100 * value:.1f} % is off by {100 * abs(value - want):.1f} points: use "
                               f"few_shot_table(..., shots=({shots},)) on the frozen features, {method}")


def check_biggest_gain(answer, table, better: str, worse: str, method: str = "1-NN") -> bool:
    """01, exercise 3: the number of photos per person where `better` features gain most over `worse`."""
    value = _as_number(answer, "number of photos per person")
    if value is None:
        return False
    gains = {k: table.get(better, method, k) - table.get(worse, method, k) for k in table.shots}
    best = max(gains, key=gains.get)
    text = ", ".join(f"{k}: {100 * g:+.1f}" for k, g in gains.items())
    if int(value) == best:
        return _verdict(True, f"k = {best} (gain in points: {text}): pretrained features matter most when "
                              "there are few photos; with many, even pixels find a close neighbour", "")
    if int(value) not in gains:
        return _verdict(False, "", f"choose one of {table.shots}")
    return _verdict(False, "", f"subtract the two rows of the table for each k; at k = {int(value)} the "
                               f"gain is {100 * gains[int(value)]:+.1f} points, another k gains more")


def check_unfrozen_params(answer, backbone, people: int = 9) -> bool:
    """02, exercise 1: trainable parameters with freeze_backbone=False for `backbone`."""
    import copy

    from ..models.face_model import build_model, count_parameters

    value = _as_number(answer, "parameter count")
    if value is None:
        return False
    model = build_model(people, backbone=copy.deepcopy(backbone), freeze_backbone=False)
    want = count_parameters(model).trainable
    frozen = count_parameters(build_model(people, feature_dim=backbone.feature_dim)).trainable
    if value == want:
        return _verdict(True, f"{want:,}: with the switch off every backbone weight trains too, "
                              f"{want / frozen:.1f}x the frozen model's {frozen:,}", "")
    if value == frozen:
        return _verdict(False, "", "that is the frozen count; build the model with freeze_backbone=False")
    if value == want - frozen:
        return _verdict(False, "", "that is the backbone alone; the embedding and head train as well")
    return _verdict(False, "", f"{value:,.0f} is off: count_parameters(build_model({people}, backbone=..., "
                               "freeze_backbone=False)).trainable")


def check_first_perfect_epoch(answer, features, labels, split, lr: float = 1e-4, epochs: int = 50,
                              seed: int = 0) -> bool:
    """02, exercise 2: the first epoch at which validation accuracy reaches 100 % with learning rate `lr`."""
    import numpy as np
    import torch

    from ..train.fit import train_head_on_features

    value = _as_number(answer, "epoch number")
    if value is None:
        return False
    x = features if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    y = torch.as_tensor(np.asarray(labels)).long()
    _, hist = train_head_on_features(x[split.train], y[split.train], x[split.val], y[split.val], lr=lr,
                                     epochs=epochs, seed=seed, progress=False)
    hits = [i + 1 for i, a in enumerate(hist.val_acc) if a >= 1.0 - 1e-9]
    if not hits:
        return _verdict(value == -1, "validation never reaches 100 % in these epochs",
                        f"validation never reaches 100 % in {epochs} epochs with lr={lr:g}: answer -1")
    want = hits[0]
    if int(value) == want:
        return _verdict(True, f"epoch {want} with lr={lr:g} (the default lr=0.01 gets there much sooner)", "")
    if int(value) == want - 1:
        return _verdict(False, "", "history.val_acc[0] is epoch 1: add one to the index")
    return _verdict(False, "", f"not epoch {int(value)}: look for the first value 1.0 in result.history.val_acc "
                               f"(lr={lr:g}, {epochs} epochs, seed {seed})")


# ============================================================================ notebooks 03 (margins) and 04 (embedding maps)

def check_scale_bound(answer, num_classes: int = 40, p: float = 0.99) -> bool:
    """03, exercise 1: the smallest s that lets `num_classes` people reach probability p."""
    from .margins import s_lower_bound

    value = _as_number(answer, "lower bound on s")
    if value is None:
        return False
    want = s_lower_bound(num_classes, p)
    if abs(value - want) <= 0.05:
        return _verdict(True, f"s >= {value:.2f} for {num_classes} people at p = {p:g}", "")
    if abs(value - num_classes / (num_classes - 1) * want) <= 0.05 or abs(value - math.log((num_classes - 1) * p / (1 - p))) <= 0.05:
        return _verdict(False, "", "close: check the factor (C - 1) / C in front of the logarithm")
    if abs(value - (num_classes - 1) / num_classes * math.log10((num_classes - 1) * p / (1 - p))) <= 0.05:
        return _verdict(False, "", "the formula uses the natural logarithm (math.log), not log10")
    return _verdict(False, "", f"{value:.3g} is off; use C = {num_classes}, p = {p:g} in "
                               "(C - 1) / C * log((C - 1) * p / (1 - p))")


def check_arcface_logit(answer, theta_deg: float = 60.0, m: float = 0.5) -> bool:
    """03, exercise 2: cos(theta + m) for a photo theta degrees from its centre."""
    value = _as_number(answer, "logit")
    if value is None:
        return False
    want = math.cos(math.radians(theta_deg) + m)
    if abs(value - want) <= 1e-3:
        return _verdict(True, f"cos({theta_deg:g}° + {m:g} rad) = {value:.4f}: far below cos {theta_deg:g}° = "
                              f"{math.cos(math.radians(theta_deg)):.2f}, so this photo still costs loss", "")
    if abs(value - math.cos(theta_deg + m)) <= 1e-3:
        return _verdict(False, "", "θ went into math.cos in degrees: convert it with math.radians first")
    if abs(value - math.cos(math.radians(theta_deg + m))) <= 1e-3:
        return _verdict(False, "", "m is already in radians: add it after converting θ")
    if abs(value - (math.cos(math.radians(theta_deg)) - m)) <= 1e-3:
        return _verdict(False, "", "that is CosFace's cos θ - m; ArcFace adds m to the angle")
    return _verdict(False, "", f"{value:.4g} is off; ArcFace's target logit is cos(θ + m)")


def check_max_margin(answer, num_classes: int = 6) -> bool:
    """03, exercise 3: largest m with which a photo on its centre still wins, for evenly spread centres."""
    value = _as_number(answer, "margin in radians")
    if value is None:
        return False
    want = 2 * math.pi / num_classes
    if abs(value - want) <= 0.02:
        return _verdict(True, f"m < 2π/{num_classes} = {want:.3f} rad ({math.degrees(want):.0f}°): on its centre "
                              "the photo needs 0 + m < the angle to the next centre", "")
    if abs(value - want / 2) <= 0.02:
        return _verdict(False, "", "half of it: that is where the sectors of two neighbours would meet without a "
                                   "margin; the photo sits on its own centre, 0° from it")
    if abs(value - math.degrees(want)) <= 1:
        return _verdict(False, "", "that is in degrees; give radians")
    return _verdict(False, "", f"{value:.3g} is off; on its own centre θ = 0, the next centre is "
                               f"360°/{num_classes} away")


def check_rejection_threshold(answer, scores, target: float = 0.95, step: float = 0.01) -> bool:
    """04, exercise 1: the smallest threshold (to `step`) that rejects at least `target` of the strangers."""
    value = _as_number(answer, "threshold")
    if value is None:
        return False
    r = scores.rates(value)
    if r.strangers_rejected < target:
        return _verdict(False, "", f"at {value:.2f} only {100 * r.strangers_rejected:.1f} % of the strangers are "
                                   f"rejected; raise the threshold")
    if scores.rates(value - step - 1e-9).strangers_rejected >= target:
        return _verdict(False, "", f"{value:.2f} works, but a lower threshold still rejects {100 * target:g} %: "
                                   "lower it until it stops working")
    return _verdict(True, f"threshold {value:.2f}: strangers rejected {100 * r.strangers_rejected:.1f} %, known "
                          f"people accepted {100 * r.known_accepted:.1f} %", "")


def check_unseen_eer(answer, features, faces, n_known: int = 9, s: float = 64.0, m: float = 0.5, seed: int = 0,
                     epochs: int = 30, lr: float = 1e-2, shots: int | None = None) -> bool:
    """04, exercise 2: the strangers' EER (%) of an ArcFace embedding trained with (s, m) on n_known people,
    `shots` training photos each (recomputed here, a few seconds)."""
    from .verification_plots import seen_vs_unseen

    value = _as_number(answer, "EER in percent")
    if value is None:
        return False
    row = seen_vs_unseen(features, faces, (n_known,), seed=seed, s=s, m=m, epochs=epochs, lr=lr, shots=shots)[0]
    want = 100 * row.eer_arcface
    if abs(value - want) <= 0.3:
        other = "higher" if want > 100 * row.eer_raw else "lower"
        return _verdict(True, f"EER {want:.1f} % with s={s:g}, m={m:g}: {other} than the raw features' "
                              f"{100 * row.eer_raw:.1f} %", "")
    if abs(100 * value - want) <= 0.3:
        return _verdict(False, "", "give it in percent (multiply the fraction by 100)")
    if abs(value - 100 * row.eer_raw) <= 0.3:
        return _verdict(False, "", "that is the raw features' EER; the question asks for the ArcFace one")
    return _verdict(False, "", f"{value:.3g} % is off; pass s={s:g}, m={m:g} and n_known_values=({n_known},)")


def check_equal_rates_threshold(answer, scores, tol: float = 0.03) -> bool:
    """04, exercise 3: a threshold where known-accepted and strangers-rejected are within `tol`."""
    value = _as_number(answer, "threshold")
    if value is None:
        return False
    r = scores.rates(value)
    gap = r.known_accepted - r.strangers_rejected
    if abs(gap) <= tol:
        return _verdict(True, f"threshold {value:.2f}: known accepted {100 * r.known_accepted:.1f} %, strangers "
                              f"rejected {100 * r.strangers_rejected:.1f} %", "")
    move = "raise" if gap > 0 else "lower"
    return _verdict(False, "", f"at {value:.2f}: known accepted {100 * r.known_accepted:.1f} %, strangers rejected "
                               f"{100 * r.strangers_rejected:.1f} %; {move} the threshold")


# ============================================================================ notebooks 05 (gradual unfreezing) and 06 (recognise and deploy)

def check_stage2_trainable(answer, backbone, num_classes: int = 9) -> bool:
    """05, exercise 1: trainable parameters in stage 2 (embedding + head + the backbone's last stage)."""
    import copy

    from ..models.face_model import build_model, count_parameters, set_trainable_stages
    from ..models.backbone_tail import last_stage

    value = _as_number(answer, "number of trainable parameters")
    if value is None:
        return False
    model = build_model(num_classes, backbone=copy.deepcopy(backbone))  # never touches the learner's backbone
    head_only = count_parameters(model).trainable
    set_trainable_stages(model.backbone, [last_stage(backbone)])
    want = count_parameters(model).trainable
    if int(value) == want:
        return _verdict(True, f"{want:,} parameters train in stage 2 ({want - head_only:,} of them in "
                              f"{last_stage(backbone)})", "")
    if int(value) == want - head_only:
        return _verdict(False, "", "that is the last stage alone: the embedding and the head train too")
    if int(value) == head_only:
        return _verdict(False, "", "that is stage 1 (head only): add the last stage's parameters")
    return _verdict(False, "", f"{int(value):,} is off; build the model, call set_trainable_stages(backbone, "
                               "['layer4']) and count with count_parameters")


def check_stage_input_shape(answer, backbone, size: int) -> bool:
    """05, exercise 2: (channels, height, width) of the activations entering the last stage at `size` px."""
    from PIL import Image

    from ..models.backbone_tail import last_stage, stage_inputs

    if answer is None:
        print("not yet: replace None with a (channels, height, width) tuple")
        return False
    try:
        got = tuple(int(v) for v in answer)
    except (TypeError, ValueError):
        print(f"not yet: give a tuple of three integers, got {answer!r}")
        return False
    want = tuple(stage_inputs(backbone, [Image.new("RGB", (size, size))], last_stage(backbone),
                              backbone.transform(size=size)).shape[1:])
    if got == want:
        return _verdict(True, f"{want}: {want[0] * want[1] * want[2]:,} numbers per photo to cache", "")
    if len(got) == 4:
        return _verdict(False, "", "leave out the batch dimension")
    if len(got) == 3 and got[0] == want[0]:
        return _verdict(False, "", f"the channels are right; the last stage starts at 1/{size // want[1]} of "
                                   "the input size")
    return _verdict(False, "", f"{got} is off; look at data.inputs('train').shape")


def check_bn_train_run(result, reference=None) -> bool:
    """05, exercise 3: a full fine-tuning run with bn_train=True, evaluated (compared with `reference`)."""
    if result is None:
        print("not yet: replace None with the RunResult of run_schedule(..., bn_train=True), evaluated")
        return False
    model = getattr(result, "model", None)
    if model is None or getattr(model, "bn_train", None) is None:
        return _verdict(False, "", "that is not a RunResult from helpers.train.unfreezing.run_schedule")
    if not model.bn_train:
        return _verdict(False, "", "pass bn_train=True to run_schedule: BatchNorm must train this time")
    if result.metrics is None:
        return _verdict(False, "", "call U.evaluate_run(result, data) first")
    if len(result.trained_stages) < 2:
        return _verdict(False, "", "train the whole backbone (U.full_schedule) so every BatchNorm layer trains")
    msg = f"test accuracy with BatchNorm training: {100 * result.metrics.test_acc:.1f} %"
    if reference is not None and getattr(reference, "metrics", None) is not None:
        msg += (f" vs {100 * reference.metrics.test_acc:.1f} % with BatchNorm statistics kept; compare the "
                "training accuracy in the curves (train mode) with the evaluated one")
    return _verdict(True, msg, "")


def check_strict_threshold(threshold, rec, stranger_emb, known_emb, known_labels, target: float = 0.95) -> bool:
    """06, exercise 1: the lowest threshold that rejects at least `target` of the validation strangers."""
    import numpy as np

    value = _as_number(threshold, "threshold")
    if value is None:
        return False
    _, s = rec.scores(stranger_emb)
    rejected = float((s < value).mean())
    need = float(np.sort(s)[min(len(s) - 1, int(np.ceil(target * len(s))) - 1)]) + 1e-6
    if rejected < target:
        return _verdict(False, "", f"at {value:.3f} only {100 * rejected:.1f} % of the strangers are rejected; "
                                   f"raise it")
    if value > need + 0.02:
        return _verdict(False, "", f"{value:.3f} rejects enough strangers but is higher than needed: lower it "
                                   "until just {:.0f} % are rejected".format(100 * target))
    idx, k = rec.scores(known_emb)
    named = float(((k >= value) & (idx == np.asarray(known_labels))).mean())
    return _verdict(True, f"threshold {value:.3f} rejects {100 * rejected:.1f} % of the strangers and still "
                          f"names {100 * named:.1f} % of the known people right", "")


def check_new_person(rec, name, other_photos) -> bool:
    """06, exercise 2: a new person enrolled from one photo (rec.add_person) and recognised in others."""
    if name is None:
        print("not yet: replace None with the name you enrolled")
        return False
    if name not in rec.names:
        return _verdict(False, "", f"{name!r} is not in the gallery: call rec.add_person({name!r}, [photo])")
    if rec.gallery.shape[0] != len(rec.names):
        return _verdict(False, "", "the gallery and the names disagree: use add_person, not names.append")
    answers = rec.recognize(other_photos)
    hits = sum(m.name == name for m in answers)
    if hits * 2 >= len(answers):
        return _verdict(True, f"{hits} of {len(answers)} other photos of {name} recognised, with no training", "")
    return _verdict(False, "", f"only {hits} of {len(answers)} photos recognised as {name}: enrol a clearer, "
                               "frontal photo, or more than one")


def check_onnx_batch(path, rec, images, tol: float = 1e-4) -> bool:
    """06, exercise 3: the exported ONNX model embeds a batch of several photos like PyTorch does."""
    import numpy as np
    import torch

    from ..io import onnx_session

    if path is None:
        print("not yet: replace None with the path of your exported .onnx file")
        return False
    if len(images) < 2:
        return _verdict(False, "", "use a batch of several photos (the export has a dynamic batch axis)")
    x = torch.stack([rec.transform()(im) for im in images])
    with torch.no_grad():
        ref = rec.eval()(x).numpy()
    try:
        out = onnx_session(path).run(None, {"images": x.numpy()})[0]
    except Exception as e:  # a wrong file or a fixed batch size
        return _verdict(False, "", f"onnxruntime could not run it: {str(e).splitlines()[0][:160]}")
    diff = float(np.abs(out - ref).max())
    if out.shape != ref.shape or diff > tol:
        return _verdict(False, "", f"shape {out.shape} vs {ref.shape}, max difference {diff:.2e}")
    return _verdict(True, f"{len(images)} photos, max difference {diff:.1e} (below {tol:g})", "")

