"""One training run shown as it learns: live curves, the strangers' EER per epoch, a "Result:" line.

`train_and_report` is what notebook 02's cell and its training panel both call; each run reports,
beside the known people's closed-set accuracy, the verification EER and TAR at FAR 1 % of strangers
never trained on, and (given the previous run) how each number moved.
"""
from __future__ import annotations

import base64
import copy
import io
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..backbones import Backbone
from ..data import Split
from ..evaluation import predict
from ..model import build_model
from ..training import History, ImageDataset, fit, train_head_on_features

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

HEAD_NAMES = {"arcface": "ArcFace", "cosface": "CosFace", "softmax": "softmax (no margin)"}


FINETUNE_SIZE = 112     # px: fine-tuning in the panel runs the photos at a quarter of 224 px's pixels
FINETUNE_MAX_EPOCHS = 3  # and stops after this many epochs (seconds per epoch on a CPU, not milliseconds)


@dataclass
class TrainReport:
    """One training run of the face model and what it scored, on the known people and on strangers
    (a notebook panel's run; `helpers.trainer.TrainResult` is what the distributed trainer returns)."""

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
    note: str = ""

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

    def line(self) -> str:
        """The one-line summary, starting with "Result:"; with `previous`, the change since that run."""
        how = "frozen backbone (cached features)" if self.frozen else "backbone fine-tuned on the photos"
        what = f"Result: {HEAD_NAMES.get(self.head, self.head)} head, {how}{self.note}, lr={self.lr:.3g}, "
        if self.diverged:
            return what + f"training diverged: {self.history.diverged}"
        s = self.sizes
        val = f"val {100 * self.val_acc:.1f} %{self._vs('val_acc')}, " if s["val"] else ""
        strangers = ""
        if np.isfinite(self.stranger_eer):
            strangers = (f", strangers' EER {100 * self.stranger_eer:.1f} %{self._vs('stranger_eer')}, "
                         f"TAR {100 * self.stranger_tar:.0f} % at FAR 1 %")
        return (what + f"{self.history.epochs} epochs: {val}test {100 * self.test_acc:.1f} %{strangers} "
                f"({self.num_people} people; {s['train']} train / {s['val']} val / {s['test']} test photos"
                f"{f'; {self.num_strangers} strangers' if self.num_strangers else ''}), "
                f"trained in {sum(self.history.seconds):.1f} s")


def as_float_tensor(x) -> torch.Tensor:
    """`x` unchanged if it is a tensor, else a float32 tensor of it (features given as arrays or lists)."""
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


def stranger_metric(x, labels):
    """A function model -> (EER, TAR at FAR 1 %) of the strangers' embeddings (features or photos)."""
    from ..evaluation import embed, verification

    def metric(model) -> tuple[float, float]:
        v = verification(embed(model, x), labels)
        return v.eer, v.tar_at_far
    return metric


def train_and_report(features, labels, split: Split, head: str = "arcface", lr: float = 1e-2,
                     epochs: int = 50, freeze: bool = True, seed: int = 0, images: Sequence | None = None,
                     backbone: Backbone | None = None, output=None, progress: bool = True,
                     redraw_every: int = 10, batch_size: int = 64, strangers=None,
                     stranger_images: Sequence | None = None, previous: TrainReport | None = None,
                     finetune_size: int = FINETUNE_SIZE,
                     max_finetune_epochs: int = FINETUNE_MAX_EPOCHS) -> TrainReport:
    """Train the guide's model (embedding 512 + BatchNorm -> `head`), show live curves, end with "Result:".

    `freeze=True` trains on the cached `features` (seconds). `freeze=False` fine-tunes a copy of
    `backbone` on `images` (augmented; one backbone pass per photo per epoch: slow on a CPU, so at
    `finetune_size` px and at most `max_finetune_epochs` epochs). `strangers` = (their features,
    their labels): people never trained on; their verification EER and TAR at FAR 1 % are measured
    after every epoch (with `freeze=False`, on `stranger_images`). `previous`: a earlier result the
    Result line compares with. With `output` (an ipywidgets Output) the curves and the line go there.
    """
    if head not in HEAD_NAMES:
        raise ValueError(f"unknown head {head!r}; choose one of {tuple(HEAD_NAMES)}")
    if not (epochs >= 1 and lr > 0):
        raise ValueError(f"epochs must be >= 1 and lr > 0 (got epochs={epochs}, lr={lr})")
    y = torch.as_tensor(np.asarray(labels)).long()
    note = ""
    if not freeze and epochs > max_finetune_epochs:
        note = f" ({finetune_size} px, {max_finetune_epochs} of the {epochs} epochs asked: fine-tuning is slow on a CPU)"
        epochs = max_finetune_epochs
    elif not freeze:
        note = f" ({finetune_size} px)"
    live = LiveFigure(output)
    label = HEAD_NAMES[head].split(" ")[0]
    metrics = {}
    stranger_labels = None
    if strangers is not None:
        stranger_x, stranger_labels = strangers
        if not freeze:
            if stranger_images is None:
                raise ValueError("freeze=False measures the strangers on their photos: pass stranger_images=...")
            bb_size = finetune_size
        metrics["strangers"] = None  # filled below, once the transform is known

    curves = _Curves(label, epochs, with_strangers=strangers is not None)
    drawn = [0]

    def on_epoch(hist: History) -> None:
        if hist.epochs % redraw_every == 0 or hist.epochs == epochs:
            live.show(curves.draw(hist))
            drawn[0] = hist.epochs

    has_val = len(split.val) > 0
    if freeze:
        x = as_float_tensor(features)
        if strangers is not None:
            metrics["strangers"] = stranger_metric(as_float_tensor(stranger_x), stranger_labels)
        model, hist = train_head_on_features(
            x[split.train], y[split.train], x[split.val] if has_val else None,
            y[split.val] if has_val else None, head=head, epochs=epochs, lr=lr, seed=seed,
            batch_size=batch_size, progress=progress, on_epoch=on_epoch,
            epoch_metrics=_split_pairs(metrics, epochs, 5))
        test_data = (x[split.test], y[split.test])
    else:
        if images is None or backbone is None:
            raise ValueError("freeze=False fine-tunes the backbone on the photos: pass images=... and "
                             "backbone=... (the panel gets them from training_panel(..., images, backbone))")
        bb = copy.deepcopy(backbone)
        model = build_model(int(y.max()) + 1, backbone=bb, head=head, freeze_backbone=False)
        pick = lambda idx, tf: ImageDataset([images[i] for i in idx], y[idx], tf)  # noqa: E731
        train_ds = pick(split.train, bb.transform(train=True, size=finetune_size))
        val_ds = pick(split.val, bb.transform(size=finetune_size)) if has_val else None
        if strangers is not None:
            ds = ImageDataset(list(stranger_images), np.asarray(stranger_labels), bb.transform(size=bb_size))
            metrics["strangers"] = stranger_metric(ds, stranger_labels)
        hist = fit(model, train_ds, val_ds, epochs=epochs, lr=lr, batch_size=min(batch_size, 16),
                   seed=seed, progress=progress, on_epoch=on_epoch,
                   epoch_metrics=_split_pairs(metrics, epochs, epochs))
        model.eval()
        test_data = pick(split.test, bb.transform(size=finetune_size))
    if hist.epochs and drawn[0] != hist.epochs:  # stopped early (diverged): draw what there is
        live.show(curves.draw(hist))
    test_pred = predict(model, test_data[0]) if isinstance(test_data, tuple) else predict(model, test_data)
    test_true = np.asarray(y[split.test])
    eer = hist.extra.get("strangers' EER", [float("nan")])[-1] if hist.epochs else float("nan")
    tar = hist.extra.get("strangers' TAR", [float("nan")])[-1] if hist.epochs else float("nan")
    if hist.epochs and not np.isfinite(eer) and metrics.get("strangers") is not None:
        eer, tar = metrics["strangers"](model)  # stopped early (diverged): measure the weights kept
    n_str = 0 if stranger_labels is None else int(len(np.unique(np.asarray(stranger_labels))))
    result = TrainReport(model, hist, head, freeze, float(lr), int(epochs),
                         hist.final_val_acc, float((test_pred == test_true).mean()), test_true, test_pred,
                         float(sum(hist.seconds)), int(y.max()) + 1, split.sizes(),
                         float(eer), float(tar), n_str, previous, note)
    live.say(result.line())
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
    """Loss, accuracy (and strangers' EER) axes kept between redraws (a pyplot-free Figure)."""

    def __init__(self, label: str, epochs: int, with_strangers: bool = False):
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(11 if with_strangers else 8, 2.8))
        axes = self.fig.subplots(1, 3 if with_strangers else 2)
        self.loss_ax, self.acc_ax = axes[0], axes[1]
        (self.loss,) = self.loss_ax.plot([], [], "--", label=f"{label} train")
        (self.vloss,) = self.loss_ax.plot([], [], label=f"{label} val")
        (self.train,) = self.acc_ax.plot([], [], "--", label=f"{label} train")
        (self.val,) = self.acc_ax.plot([], [], label=f"{label} val")
        self.eer_ax = axes[2] if with_strangers else None
        for ax in axes:
            ax.set_xlim(0.5, epochs + 0.5)
            ax.set_xlabel("epoch")
        self.loss_ax.set(ylabel="loss (log scale)", title="loss (margin included)", yscale="log", ylim=(1e-3, 10))
        self.acc_ax.set(ylabel="accuracy (%)", title="known people: accuracy", ylim=(0, 102))
        if self.eer_ax is not None:
            (self.eer,) = self.eer_ax.plot([], [], "o-", color="C3", ms=3, label="strangers' EER")
            self.eer_ax.set(ylabel="EER (%)", title="strangers (never trained on): EER")
        self.loss_ax.legend(fontsize=7)
        self.acc_ax.legend(fontsize=7, loc="lower right")
        self.fig.tight_layout()

    def draw(self, hist: History):
        ep = np.arange(1, hist.epochs + 1)
        self.loss.set_data(ep, np.maximum(np.asarray(hist.loss, dtype=float), 1e-6))  # log axis: no zeros
        self.vloss.set_data(ep[:len(hist.val_loss)], np.maximum(np.asarray(hist.val_loss, dtype=float), 1e-6))
        self.train.set_data(ep, 100 * np.asarray(hist.train_acc))
        self.val.set_data(ep[:len(hist.val_acc)], 100 * np.asarray(hist.val_acc))
        shown = [max(v, 1e-6) for v in [*hist.loss, *hist.val_loss] if np.isfinite(v)]
        if shown:
            self.loss_ax.set_ylim(min(shown) / 1.5, max(shown) * 1.5 + 1e-6)
        eers = hist.extra.get("strangers' EER", [])
        if self.eer_ax is not None and eers:
            e = 100 * np.asarray(eers, dtype=float)
            ok = np.isfinite(e)
            if ok.any():
                self.eer.set_data(ep[:len(e)][ok], e[ok])
                self.eer_ax.set_ylim(max(0.0, e[ok].min() - 3), e[ok].max() + 3)
        return self.fig


