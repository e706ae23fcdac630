"""Self-checks for the notebooks' exercises: each says "correct" or explains what is off.

One section per notebook; each check returns True/False and prints its verdict.
"""
from __future__ import annotations


def _verdict(ok: bool, good: str, bad: str) -> bool:
    print(("correct: " + good) if ok else ("not yet: " + bad))
    return ok


def check_close(name: str, answer: float, expected: float, tol: float, hint: str = "") -> bool:
    """Generic numeric check with a tolerance."""
    ok = answer is not None and abs(float(answer) - float(expected)) <= tol
    return _verdict(ok, f"{name} = {answer}", f"{name} = {answer}, expected about {expected:g}. {hint}".strip())


# ============================================================================ notebooks 05 (gradual unfreezing) and 06 (recognise and deploy)

def _number_0506(answer, what: str):
    """The answer as a float, or None after saying what is missing."""
    if answer is None:
        print(f"not yet: replace None with your {what}")
        return None
    try:
        value = float(answer)
    except (TypeError, ValueError):
        print(f"not yet: {what} should be a number, got {type(answer).__name__} {answer!r}")
        return None
    if value != value:
        print(f"not yet: {what} is NaN")
        return None
    return value


def check_stage2_trainable(answer, backbone, num_classes: int = 9) -> bool:
    """05, exercise 1: trainable parameters in stage 2 (embedding + head + the backbone's last stage)."""
    import copy

    from .model import build_model, count_parameters, set_trainable_stages
    from .unfreezing import last_stage

    value = _number_0506(answer, "number of trainable parameters")
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

    from .unfreezing import last_stage, stage_inputs

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
        return _verdict(False, "", "that is not a RunResult from helpers.unfreezing.run_schedule")
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

    value = _number_0506(threshold, "threshold")
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

    from .recognizer import onnx_session

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
