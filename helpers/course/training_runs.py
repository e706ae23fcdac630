"""One training run shown as it learns: live curves, the strangers' EER per epoch, a "Result:" line.

`train_and_report` is what notebook 02's cell and its training panel both call; each run reports,
beside the known people's closed-set accuracy, the verification EER and TAR at FAR 1 % of strangers
never trained on, and (given the previous run) how each number moved.
"""
from __future__ import annotations

import base64
import copy
import html
import io
import time
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..models.backbones import Backbone
from ..data.splits import Split
from ..evaluate.metrics import predict
from ..models.face_model import build_model
from ..runtime import threads
from ..train.step import MarginObjective, train_step
from ..train.fit import History, fit, param_groups, train_head_on_features, val_scores

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

    def say(self, result: "TrainReport | str") -> None:
        """A Result under the figure: printed in a cell, on a few lines broken between fields only;
        in an Output, an HTML line whose fields never break inside (text for other views)."""
        text = result if isinstance(result, str) else result.line()
        if self.output is None:
            print(text if isinstance(result, str) else result.line(lines=True))
            return
        figs = tuple(o for o in self.output.outputs if o.get("output_type") == "display_data"
                     and "image/png" in o.get("data", {}))
        data = {"text/plain": text}
        if not isinstance(result, str):
            data["text/html"] = result.html()
        self.lines.append({"output_type": "display_data", "data": data, "metadata": {}})
        self.output.outputs = (*figs, *self._line_outputs())

    def _line_outputs(self) -> tuple:
        return tuple(self.lines)


# ------------------------------------------------------------------------------ training runs

HEAD_NAMES = {"arcface": "ArcFace", "cosface": "CosFace", "softmax": "softmax (no margin)"}
TUNE_BATCH = 16  # photos per step once the backbone trains (features: the whole 60-photo set fits in one step)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one epoch over `n` vectors (the training loop skips a last batch of 1)."""
    return n // batch_size + (1 if n % batch_size > 1 else 0)


@dataclass
class TrainReport:
    """One training run of the face model and what it scored, on the known people and on strangers
    (a notebook panel's run; `helpers.train.trainer.TrainResult` is what the distributed trainer returns).

    `test_acc` is measured but the Result line leaves it out: settings are compared on validation,
    and the test photos are looked at once, at the end of notebook 02.
    """

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
    stranger_eer: float = float("nan")  # verification EER over pairs of strangers (never trained on)
    stranger_tar: float = float("nan")  # true-accept rate at FAR = 1 % over the same pairs
    num_strangers: int = 0
    previous: "TrainReport | None" = None  # the run before (a panel's last click): the line compares
    budget: str = ""                      # input size, epochs and optimiser steps of each stage
    tune_epochs: int = 0                  # epochs after the frozen ones (frozen or unfrozen: `frozen`)
    tune_seconds: float = float("nan")    # seconds of those epochs
    tune_steps: int = 0

    @property
    def diverged(self) -> bool:
        return bool(self.history.diverged)

    def _vs(self, name: str, fmt: str = "+.1f") -> str:
        prev = self.previous
        if prev is None or prev.diverged:
            return ""
        a, b = getattr(self, name), getattr(prev, name)
        if not (np.isfinite(a) and np.isfinite(b)):
            return ""
        return f" ({100 * (a - b):{fmt}}{' vs last run' if name == 'val_acc' else ''})"

    def fields(self) -> list[str]:
        """The Result line's parts, in order; the first starts with "Result:"."""
        how = ("frozen backbone" if self.frozen else
               f"backbone fine-tuned after epoch {self.epochs - self.tune_epochs}")
        parts = [f"Result: {HEAD_NAMES.get(self.head, self.head)} head", how, f"lr={self.lr:.3g}"]
        if self.budget:
            parts.append(self.budget)
        if self.diverged:
            return parts + [f"training diverged: {self.history.diverged}"]
        s = self.sizes
        if s["val"]:
            parts.append(f"val {100 * self.val_acc:.1f} %{self._vs('val_acc')}")
        if np.isfinite(self.stranger_eer):
            parts += [f"strangers' EER {100 * self.stranger_eer:.1f} %{self._vs('stranger_eer')}",
                      f"TAR {100 * self.stranger_tar:.0f} % at FAR 1 %"]
        parts.append(f"{self.num_people} people, {s['train']} train / {s['val']} val photos"
                     + (f", {self.num_strangers} strangers" if self.num_strangers else ""))
        parts.append(f"trained in {sum(self.history.seconds):.1f} s")
        return parts

    def line(self, lines: bool = False) -> str:
        """The summary starting with "Result:", on one line; with `lines`, on up to four: what was
        trained, the budget, the scores, the data and time (breaks that never depend on the numbers)."""
        parts = self.fields()
        if not lines:
            return ", ".join(parts)
        n = 4 if self.budget else 3
        groups = [parts[:3], parts[3:n], parts[n:-2], parts[-2:]] if not self.diverged else [parts[:3], parts[3:]]
        return ",\n  ".join(", ".join(g) for g in groups if g)

    def html(self) -> str:
        """The line as HTML: fields never break inside (one nowrap span each), lines break between them."""
        spans = ", ".join(f'<span style="white-space: nowrap">{html.escape(p)}</span>' for p in self.fields())
        return f'<div class="course-result" style="font-family: monospace; font-size: 12px">{spans}</div>'


def as_float_tensor(x) -> torch.Tensor:
    """`x` unchanged if it is a tensor, else a float32 tensor of it (features given as arrays or lists)."""
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


def stranger_metric(x, labels):
    """A function model -> (EER, TAR at FAR 1 %) of the strangers' embeddings (features or photos)."""
    from ..evaluate.metrics import embed, verification

    def metric(model) -> tuple[float, float]:
        v = verification(embed(model, x), labels)
        return v.eer, v.tar_at_far
    return metric


def photo_tensor(backbone: Backbone, images: Sequence, size: int) -> torch.Tensor:
    """Photos (N, 3, size, size) through the backbone's evaluation transform: no augmentation, so a
    fine-tuned backbone sees exactly the photos whose cached features the frozen head saw."""
    tf = backbone.transform(size=size)
    return torch.stack([tf(im) for im in images])


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 1e-3,
                 repeats: int = 1) -> float:
    """Seconds of one step (forward, backward, AdamW on the trainable parameters) on `x` (N, 3, H, W),
    `y` (N,), measured now: the median of `repeats` steps after a warm-up one; leaves eval mode."""
    opt = torch.optim.AdamW(param_groups(model, lr, None))
    model.train()
    times = []
    objective = MarginObjective(model)
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        train_step(objective, opt, [(x, y)])   # the library's one step (fit's, the trainer's)
        times.append(time.perf_counter() - t0)
    model.eval()
    return float(np.median(times[1:]))


def seconds_per_step(backbone: Backbone, images: Sequence, size: int, num_classes: int,
                     batch_size: int = TUNE_BATCH) -> float:
    """Measured now: seconds of one fine-tuning step on `batch_size` photos at `size` px, on a copy
    of `backbone` (`step_seconds`), with one thread as `train_and_report` fine-tunes."""
    model = build_model(num_classes, backbone=copy.deepcopy(backbone), freeze_backbone=False)
    x = photo_tensor(backbone, list(images)[:batch_size], size)
    with threads(1):
        return step_seconds(model, x, torch.arange(len(x)) % num_classes, lr=1e-6)


def _join(first: History, second: History) -> History:
    """One history: the epochs of `first`, then those of `second` (curves across an unfreezing)."""
    out = History(loss=first.loss + second.loss, train_acc=first.train_acc + second.train_acc,
                  val_acc=first.val_acc + second.val_acc, seconds=first.seconds + second.seconds,
                  diverged=first.diverged or second.diverged, val_loss=first.val_loss + second.val_loss)
    for k in set(first.extra) | set(second.extra):
        a = first.extra.get(k, [float("nan")] * first.epochs)
        out.extra[k] = a + second.extra.get(k, [float("nan")] * second.epochs)
    return out


def train_and_report(features, labels, split: Split, head: str = "arcface", lr: float = 1e-2,
                     epochs: int = 50, freeze: bool = True, seed: int = 0, images: Sequence | None = None,
                     backbone: Backbone | None = None, output=None, progress: bool = True,
                     redraw_every: int = 10, batch_size: int = 64, strangers=None,
                     stranger_images: Sequence | None = None, previous: TrainReport | None = None,
                     size: int | None = None, tune_epochs: int = 0, tune_lr: float | None = None,
                     backbone_lr: float = 1e-4, tune_batch: int = TUNE_BATCH, earlier: Sequence = (),
                     features_size: int | None = None, show: bool = True,
                     each_epoch: bool = True) -> TrainReport:
    """Train the guide's model (embedding 512 + BatchNorm -> `head`), show live curves, end with "Result:".

    Stage 1 always trains the embedding and head on cached backbone features (`epochs` at `lr`, batches
    of `batch_size`): the frozen backbone. With `tune_epochs` > 0, stage 2 continues from that trained
    head for `tune_epochs` more epochs in batches of `tune_batch`, the head at `tune_lr` (default
    lr/10): `freeze=True` keeps the backbone frozen (same steps on the cached features), `freeze=False`
    also trains a copy of `backbone` at `backbone_lr` on the same photos (the guide: "After training
    with frozen backbone, you can unfreeze and continue training with a lower learning rate"). The
    two stage-2 variants differ only in whether the backbone learns: an equal budget.

    `features` (and the strangers') are at `features_size` px (default: the backbone's input size);
    another `size` recomputes them from `images` (cached on disk). `strangers` = (features, labels) of people
    never trained on: their verification EER and TAR at FAR 1 % are measured every 5 epochs and at
    the end. `previous`: the run the Result line compares with; `earlier`: runs drawn faintly.
    With `output` (an ipywidgets Output) the curves and the line go there; `show=False` draws and
    prints nothing; `each_epoch=False` measures stage 2's validation and strangers only after its last
    epoch (the same numbers, less time: for runs nobody watches). The Result line reports validation,
    not test (`test_acc` is kept for the end).
    """
    if head not in HEAD_NAMES:
        raise ValueError(f"unknown head {head!r}; choose one of {tuple(HEAD_NAMES)}")
    if not (epochs >= 1 and lr > 0):
        raise ValueError(f"epochs must be >= 1 and lr > 0 (got epochs={epochs}, lr={lr})")
    if not freeze and tune_epochs < 1:
        raise ValueError("freeze=False continues from the trained frozen head: give tune_epochs >= 1 "
                         "(the epochs with the backbone unfrozen)")
    if not freeze and (images is None or backbone is None):
        raise ValueError("freeze=False fine-tunes the backbone on the photos: pass images=... and "
                         "backbone=... (the panel gets them from training_panel(..., images, backbone))")
    tune_lr = lr / 10 if tune_lr is None else tune_lr
    y = torch.as_tensor(np.asarray(labels)).long()
    stranger_x, stranger_labels = strangers if strangers is not None else (None, None)
    if strangers is not None and not freeze and stranger_images is None:
        raise ValueError("freeze=False measures the strangers on their photos: pass stranger_images=...")
    native = backbone.input_size if backbone is not None else None
    size = size or native
    x = as_float_tensor(features)
    if size is not None and native is not None and size != (features_size or native):
        if images is None:
            raise ValueError(f"size={size} px recomputes the features from the photos: pass images=...")
        from ..features.extract import extract_features
        x = extract_features(backbone, images, size=size, progress=False, verbose=False)
        if strangers is not None:
            if stranger_images is None:
                raise ValueError(f"size={size} px recomputes the strangers' features: pass stranger_images=...")
            stranger_x = extract_features(backbone, stranger_images, size=size, progress=False, verbose=False)
    live = LiveFigure(output) if show else None
    total = epochs + tune_epochs
    curves = _Curves(HEAD_NAMES[head].split(" ")[0], total, with_strangers=strangers is not None,
                     boundary=epochs if tune_epochs else None, unfrozen=not freeze, earlier=earlier) if show else None
    done = [0]  # epochs of stage 1, then the joined history's, drawn so far

    def drawer(offset: History | None):
        def on_epoch(hist: History) -> None:
            h = hist if offset is None else _join(offset, hist)
            if live is not None and (h.epochs % redraw_every == 0 or h.epochs == total):
                live.show(curves.draw(h))
                done[0] = h.epochs
        return on_epoch

    has_val = len(split.val) > 0
    val = (x[split.val], y[split.val]) if has_val else (None, None)
    metrics = {"strangers": stranger_metric(as_float_tensor(stranger_x), stranger_labels)} if strangers is not None else {}
    model, hist = train_head_on_features(x[split.train], y[split.train], *val, head=head, epochs=epochs, lr=lr,
                                         seed=seed, batch_size=batch_size, progress=progress,
                                         on_epoch=drawer(None), epoch_metrics=_split_pairs(metrics, epochs, 5))
    steps1 = steps_per_epoch(len(split.train), batch_size) * epochs
    px = f"{size} px" if size is not None else "cached features"
    budget = f"{px}: {epochs} epochs frozen ({steps1} steps)"
    test_x, val_x, tune_s, steps2 = x[split.test], x[split.val], float("nan"), 0
    if tune_epochs and not hist.diverged:
        steps2 = steps_per_epoch(len(split.train), tune_batch) * tune_epochs
        every = max(1, tune_epochs // 4) if each_epoch else tune_epochs
        if freeze:
            second = copy.deepcopy(model)
            train2, val2 = (x[split.train], y[split.train]), (x[split.val], y[split.val]) if has_val else None
            val2 = val2 if each_epoch else None
            with threads(1):
                hist2 = fit(second, train2, val2, epochs=tune_epochs, lr=tune_lr, batch_size=tune_batch,
                            seed=seed, device="cpu", progress=False, on_epoch=drawer(hist),
                            epoch_metrics=_split_pairs(metrics, tune_epochs, every))
        else:
            second = build_model(int(y.max()) + 1, backbone=copy.deepcopy(backbone), head=head,
                                 freeze_backbone=False)
            second.embedding.load_state_dict(model.embedding.state_dict())
            second.head.load_state_dict(model.head.state_dict())
            photos = photo_tensor(backbone, images, size)
            tuned = {"strangers": stranger_metric(photo_tensor(backbone, stranger_images, size), stranger_labels)} \
                if strangers is not None else {}
            with threads(1):  # measured on 2 busy cores: 2.1 s per step on one thread, 18.8 s on two
                hist2 = fit(second, (photos[split.train], y[split.train]),
                            (photos[split.val], y[split.val]) if has_val and each_epoch else None,
                            epochs=tune_epochs,
                            lr=tune_lr, backbone_lr=backbone_lr, batch_size=tune_batch, seed=seed,
                            progress=False, on_epoch=drawer(hist),
                            epoch_metrics=_split_pairs(tuned, tune_epochs, every))
            test_x, val_x = photos[split.test], photos[split.val]
            metrics = tuned
        if has_val and not hist2.val_acc and hist2.epochs:  # each_epoch=False: validation after the last epoch
            acc, vloss = val_scores(second, (val_x, y[split.val]))
            hist2.val_acc = [float("nan")] * (hist2.epochs - 1) + [acc]
            hist2.val_loss = [float("nan")] * (hist2.epochs - 1) + [vloss]
        model, hist, tune_s = second.eval(), _join(hist, hist2), float(sum(hist2.seconds))
        what = "frozen" if freeze else f"unfrozen, backbone lr {backbone_lr:.3g}"
        budget += f" + {tune_epochs} epochs {what} ({steps2} steps of {tune_batch}, head lr {tune_lr:.3g})"
    if live is not None and hist.epochs and done[0] != hist.epochs:  # stopped early: draw what there is
        live.show(curves.draw(hist))
    test_pred = predict(model, test_x)
    test_true = np.asarray(y[split.test])
    eer = hist.extra.get("strangers' EER", [float("nan")])[-1] if hist.epochs else float("nan")
    tar = hist.extra.get("strangers' TAR", [float("nan")])[-1] if hist.epochs else float("nan")
    if hist.epochs and not np.isfinite(eer) and metrics.get("strangers") is not None:
        eer, tar = metrics["strangers"](model)  # stopped early (diverged): measure the weights kept
    n_str = 0 if stranger_labels is None else int(len(np.unique(np.asarray(stranger_labels))))
    result = TrainReport(model, hist, head, freeze, float(lr), int(hist.epochs),
                         hist.final_val_acc, float((test_pred == test_true).mean()), test_true, test_pred,
                         float(sum(hist.seconds)), int(y.max()) + 1, split.sizes(),
                         float(eer), float(tar), n_str, previous, budget, int(tune_epochs) if steps2 else 0,
                         tune_s, steps2)
    if live is not None:
        live.say(result)
    return result


def _split_pairs(metrics: dict, epochs: int, every: int) -> dict:
    """{"strangers": model -> (eer, tar)} as two per-epoch metrics, measured every `every` epochs and
    after the last (NaN in between: one ROC over ~20,000 pairs costs ~0.15 s, a head epoch ~0.02 s)."""
    f = metrics.get("strangers")
    if f is None:
        return {}
    last = {"n": 0, "v": (float("nan"), float("nan"))}

    def eer(model):
        last["n"] += 1
        due = last["n"] % every == 0 or last["n"] == epochs
        last["v"] = f(model) if due else (float("nan"), float("nan"))
        return last["v"][0]
    return {"strangers' EER": eer, "strangers' TAR": lambda model: last["v"][1]}


class _Curves:
    """Loss, accuracy (and strangers' EER) axes kept between redraws (a pyplot-free Figure).

    The y-axes are fixed (loss 1e-3..20 log, accuracy 0..100 % (102: a line at 100 stays visible), EER 0..50 %) so that runs compare by
    eye across clicks; `earlier` runs are drawn faintly under this one; epoch ticks are integers;
    `boundary`: the last frozen epoch (a dashed line where stage 2 starts).
    """

    def __init__(self, label: str, epochs: int, with_strangers: bool = False, boundary: int | None = None,
                 unfrozen: bool = False, earlier: Sequence = ()):
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.fig = Figure(figsize=(11 if with_strangers else 8, 2.9))
        axes = self.fig.subplots(1, 3 if with_strangers else 2)
        self.loss_ax, self.acc_ax = axes[0], axes[1]
        self.eer_ax = axes[2] if with_strangers else None
        shown = [r for r in earlier if getattr(r, "history", None) is not None and r.history.epochs][-5:]
        for i, r in enumerate(shown):  # earlier runs: faint grey, labelled once
            h, tag = r.history, ("earlier runs" if i == len(shown) - 1 else None)
            ep = np.arange(1, h.epochs + 1)
            if h.val_loss:
                self.loss_ax.plot(ep[:len(h.val_loss)], np.maximum(h.val_loss, 1e-6), color="0.75", lw=1, label=tag)
            if h.val_acc:
                self.acc_ax.plot(ep[:len(h.val_acc)], 100 * np.asarray(h.val_acc), color="0.75", lw=1, label=tag)
            e = 100 * np.asarray(h.extra.get("strangers' EER", []), dtype=float)
            if self.eer_ax is not None and np.isfinite(e).any():
                ok = np.isfinite(e)
                self.eer_ax.plot(ep[:len(e)][ok], e[ok], "o-", color="0.75", ms=2, lw=1, label=tag)
        (self.loss,) = self.loss_ax.plot([], [], "--", color="C0", label=f"{label} train")
        (self.vloss,) = self.loss_ax.plot([], [], color="C1", label=f"{label} val")
        (self.train,) = self.acc_ax.plot([], [], "--", color="C0", label="train")
        (self.val,) = self.acc_ax.plot([], [], color="C1", label="validation")
        for ax in axes:
            ax.set_xlim(0.5, epochs + 0.5)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if boundary:
                ax.axvline(boundary + 0.5, color="k", ls=":", lw=1,
                           label="backbone unfrozen" if unfrozen and ax is axes[1] else
                           ("frozen, lower lr" if ax is axes[1] else None))
        self.loss_ax.set(ylabel="loss (log scale)", title="loss (margin included)", yscale="log", ylim=(1e-3, 20))
        self.acc_ax.set(ylabel="accuracy (%)", title="known people: accuracy", ylim=(0, 102))  # 100 % visible
        if self.eer_ax is not None:
            (self.eer,) = self.eer_ax.plot([], [], "o-", color="C3", ms=3, label="this run")
            self.eer_ax.set(ylabel="EER (%)", title="strangers (never trained on): EER", ylim=(0, 50))
            if shown:
                self.eer_ax.legend(fontsize=7, loc="upper right")
        self.loss_ax.legend(fontsize=7, loc="lower left")
        self.acc_ax.legend(fontsize=7, loc="lower right")
        self.fig.tight_layout()

    def draw(self, hist: History):
        ep = np.arange(1, hist.epochs + 1)
        self.loss.set_data(ep, np.maximum(np.asarray(hist.loss, dtype=float), 1e-6))  # log axis: no zeros
        self.vloss.set_data(ep[:len(hist.val_loss)], np.maximum(np.asarray(hist.val_loss, dtype=float), 1e-6))
        self.train.set_data(ep, 100 * np.asarray(hist.train_acc))
        self.val.set_data(ep[:len(hist.val_acc)], 100 * np.asarray(hist.val_acc))
        eers = hist.extra.get("strangers' EER", [])
        if self.eer_ax is not None and eers:
            e = 100 * np.asarray(eers, dtype=float)
            ok = np.isfinite(e)
            if ok.any():
                self.eer.set_data(ep[:len(e)][ok], e[ok])
        return self.fig
