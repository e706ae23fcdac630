"""ipywidgets panels. Building a panel never trains: a Train button does, into an Output area.

Each panel is a function returning the container widget; its callbacks call plain helpers
functions, so the logic is testable without a browser (set values, then `button.click()`).
"""
from __future__ import annotations


# ============================================================================ training panel (notebook 02)

def training_panel(features, labels, split, images=None, backbone=None, lr: float = 1e-2,
                   epochs: int = 50, head: str = "arcface", freeze: bool = True, seed: int = 0,
                   strangers=None, stranger_images=None, tune_epochs: int = 0, backbone_lr: float = 1e-4,
                   size: int | None = None, features_size: int | None = None):
    """Retrain the face model from a panel: lr, epochs, head, input size, then-epochs, freeze, Train.

    Nothing trains until Train is clicked; each click calls `experiments.train_and_report` with the
    panel's values: the head on cached features for `epochs` at `lr`, then `tune_epochs` ("then")
    more epochs from that head at lr/10, with the backbone frozen (box ticked) or fine-tuned at
    `backbone_lr` (unticked: the guide's "unfreeze and continue training with a lower learning
    rate"). Ticked or not, the two runs take the same optimiser steps at the same input size on the
    same photos. The curves keep fixed axes, earlier runs drawn faintly; the Result line reports
    validation (not test), the budget, and how val and the strangers' EER (`strangers` = (features,
    labels) of people never trained on) moved since the previous click. Unticking needs `images`,
    `backbone` and (with `strangers`) `stranger_images`; the warning under the controls gives the
    cost from one fine-tuning step timed on this machine. `panel.controls` holds the widgets,
    `panel.results` every run (or the error, also shown as one line). `features` (and the strangers')
    are at `features_size` px (default the backbone's input size); `size` is the panel's first input size.
    """
    import contextlib
    import io
    from types import SimpleNamespace

    import ipywidgets as W

    from .training_runs import HEAD_NAMES, TUNE_BATCH, seconds_per_step, steps_per_epoch, train_and_report

    wide = {"description_width": "initial"}
    lr_w = W.FloatLogSlider(value=lr, base=10, min=-4, max=0, step=0.25, description="lr",
                            readout_format=".1e", style=wide, layout=W.Layout(width="300px"))
    lr_w.add_class("course-lr")
    epochs_w = W.IntSlider(value=epochs, min=1, max=200, step=1, description="epochs (frozen)", style=wide,
                           layout=W.Layout(width="330px"))
    tune_w = W.IntSlider(value=tune_epochs, min=0, max=20, step=1, description="then epochs", style=wide,
                         layout=W.Layout(width="270px"))
    blr_w = W.FloatLogSlider(value=backbone_lr, base=10, min=-6, max=-2, step=0.25, description="backbone lr",
                             readout_format=".1e", style=wide, layout=W.Layout(width="300px"))
    native = backbone.input_size if backbone is not None else None
    sizes = sorted({native, 112, features_size or native}, reverse=True) if native else ["features given"]
    size_w = W.Dropdown(options=sizes, value=size if size in sizes else (native or sizes[0]), description="input px",
                        style=wide, layout=W.Layout(width="170px"), disabled=backbone is None or images is None)
    freeze_w = W.Checkbox(value=freeze, description="freeze backbone", style=wide, indent=False,
                          layout=W.Layout(width="150px"))
    head_w = W.Dropdown(options=[(HEAD_NAMES[k], k) for k in HEAD_NAMES], value=head, description="head",
                        style=wide, layout=W.Layout(width="240px"))
    run = W.Button(description="Train", icon="play", button_style="primary", layout=W.Layout(width="110px"))
    run.add_class("course-run")
    out = W.Output(layout=W.Layout(border="1px solid #ddd", min_height="60px"))  # no width: a border on
    out.add_class("course-output")                                                # 100 % would overflow
    warn = W.HTML(layout=W.Layout(margin="0 0 4px 4px"))
    warn.add_class("course-warning")
    measured: dict = {}  # size -> seconds per fine-tuning step, measured on this machine

    def show_warning(_=None):
        if freeze_w.value:
            warn.value = ""
            return
        if tune_w.value == 0:  # unfreezing continues from the frozen head: it needs epochs to do so
            tune_w.value = 5
        px = size_w.value
        if images is None or backbone is None:
            warn.value = "<b>Fine-tuning</b> needs the photos and the backbone (training_panel(..., images, backbone))."
            return
        if px not in measured:
            warn.value = f"<b>Fine-tuning</b>: timing one step of {TUNE_BATCH} photos at {px} px ..."
            measured[px] = (seconds_per_step(backbone, images, px, int(max(labels)) + 1), "a test step just now")
        steps = steps_per_epoch(len(split.train), TUNE_BATCH) * tune_w.value
        per_step, source = measured[px]
        warn.value = (f"<b>Fine-tuning</b> from the frozen head: {tune_w.value} epochs = {steps} steps of "
                      f"{TUNE_BATCH} photos at {px} px through the whole backbone and back. One step took "
                      f"{per_step:.2f} s here ({source}), so about {steps * per_step:.0f} s, plus the "
                      f"validation and strangers' photos.")
    freeze_w.observe(show_warning, names="value")
    tune_w.observe(show_warning, names="value")
    size_w.observe(show_warning, names="value")
    show_warning()
    panel = W.VBox([W.HBox([lr_w, epochs_w, head_w]), W.HBox([tune_w, blr_w, size_w]),
                    W.HBox([freeze_w, run]), warn, out], layout=W.Layout(width="100%", max_width="980px"))
    panel.add_class("course-panel")
    results: list = []

    def on_click(_=None):
        run.disabled = True
        how = "frozen" if freeze_w.value else f"unfrozen for the last {tune_w.value} epochs"
        out.outputs = ({"output_type": "stream", "name": "stdout",
                        "text": f"training ({how}, lr={lr_w.value:.3g}, {epochs_w.value} + {tune_w.value} "
                                f"epochs, {size_w.value} px) ...\n"},)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                done = [r for r in results if not isinstance(r, Exception)]
                res = train_and_report(features, labels, split, head=head_w.value, lr=lr_w.value,
                                       epochs=epochs_w.value, freeze=freeze_w.value, seed=seed,
                                       images=images, backbone=backbone, output=out, progress=False,
                                       strangers=strangers, stranger_images=stranger_images,
                                       previous=done[-1] if done else None, earlier=done,
                                       size=size_w.value if native else None, tune_epochs=tune_w.value,
                                       backbone_lr=blr_w.value, features_size=features_size)
            results.append(res)
            if not res.frozen and res.tune_steps:  # the next estimate uses this run's measured steps
                measured[size_w.value] = (res.tune_seconds / res.tune_steps, "your last fine-tuning run")
                show_warning()
            extra = printed.getvalue().strip()
            if extra:  # e.g. "training stopped: loss became nan ..." from the training loop
                out.outputs = (*out.outputs, {"output_type": "stream", "name": "stdout", "text": extra + "\n"})
        except Exception as e:  # shown to the learner, never swallowed
            out.outputs = (*out.outputs, {"output_type": "stream", "name": "stderr",
                                          "text": f"Training failed: {e} ({type(e).__name__})\n"})
            results.append(e)
        finally:
            run.disabled = False

    run.on_click(on_click)
    panel.controls = SimpleNamespace(lr=lr_w, epochs=epochs_w, tune_epochs=tune_w, backbone_lr=blr_w,
                                     size=size_w, freeze=freeze_w, head=head_w, train=run, output=out,
                                     warning=warn)
    panel.results = results
    return panel


# ============================================================================ margins and embedding maps (notebooks 03, 04)
# Panels: margin_panel (03: s, m, easy margin redraw; Train retrains the 2-D toy), umap_panel (04: Compute
# recomputes a UMAP), threshold_panel (04: the threshold slider redraws; Compute redraws at the value).
# Each callback writes a figure and a "Result:" line into the panel's Output; errors become one line.

def _panel_parts():
    import ipywidgets as W
    wide = {"description_width": "initial"}
    return W, wide


def _panel_run_button(W, label: str, tooltip: str):
    run = W.Button(description=label, tooltip=tooltip, button_style="primary", layout=W.Layout(width="110px"))
    run.add_class("course-run")
    return run


def _panel_output(W):
    # no width="100%": with its border and margin that is 4 px wider than the panel (a scroll bar);
    # in the panel's column the output stretches to the panel's width by itself
    out = W.Output(layout=W.Layout(border="1px solid #ddd", min_height="60px"))
    out.add_class("course-output")
    return out


def _panel_show(out, fig, text: str, alt: str = "[figure]") -> None:
    """Replace the Output's content with the figure (PNG) and the text lines."""
    from .experiments import figure_bundle
    out.outputs = ({"output_type": "display_data", "data": figure_bundle(fig, alt), "metadata": {}},
                   {"output_type": "stream", "name": "stdout", "text": text.rstrip("\n") + "\n"})


def _panel_say(out, text: str, stream: str = "stdout", append: bool = False) -> None:
    item = {"output_type": "stream", "name": stream, "text": text.rstrip("\n") + "\n"}
    out.outputs = (*out.outputs, item) if append else (item,)


def _panel_run(out, results: list, work, alt: str, failed: str, busy: str = "", button=None) -> None:
    """Show `busy`, run `work()` -> (figure, text, result) and show the figure and text in `out`;
    an exception becomes one stderr line (after `busy`, if any). `button` is disabled meanwhile."""
    if button is not None:
        button.disabled = True
    if busy:
        _panel_say(out, busy)
    try:
        fig, text, result = work()
        _panel_show(out, fig, text, alt)
        results.append(result)
    except Exception as e:  # shown to the learner, never swallowed
        _panel_say(out, f"{failed} failed: {e} ({type(e).__name__})", "stderr", append=bool(busy))
        results.append(e)
    finally:
        if button is not None:
            button.disabled = False


def margin_panel(toy, lr: float | None = None):
    """03: sliders for scale s and margin m and an easy-margin box redraw the target-logit curves and
    the 2-D toy's decision regions (no training); Train retrains the toy with these s, m and the
    learning rate (about a second). `panel.state.toy` is the toy drawn; `panel.results` each message."""
    from types import SimpleNamespace

    from .margins import margin_view, retrain_toy

    W, wide = _panel_parts()
    s_w = W.FloatLogSlider(value=toy.s, base=2, min=0, max=7, step=0.25, description="scale s",
                           readout_format=".3g", style=wide, layout=W.Layout(width="270px"))
    m_w = W.FloatSlider(value=toy.m, min=0.0, max=1.5, step=0.05, description="margin m (rad)",
                        readout_format=".2f", style=wide, layout=W.Layout(width="290px"))
    easy_w = W.Checkbox(value=toy.easy_margin, description="easy margin", indent=False, style=wide,
                        layout=W.Layout(width="130px"))
    lr_w = W.FloatLogSlider(value=lr or toy.lr, base=10, min=-4, max=0, step=0.25, description="learning rate",
                            readout_format=".1e", style=wide, layout=W.Layout(width="320px"))
    lr_w.add_class("course-lr")
    run = _panel_run_button(W, "Train", "retrain the 2-D toy with these s, m and learning rate")
    out = _panel_output(W)
    hint = W.HTML("<small>s, m, easy margin: redraw only &middot; Train: retrain the 2-D toy (~1 s)</small>")
    panel = W.VBox([hint, W.HBox([s_w, m_w, easy_w]), W.HBox([lr_w, run]), out],
                   layout=W.Layout(width="100%", max_width="820px"))
    panel.add_class("course-panel")
    state = SimpleNamespace(toy=toy)
    results: list = []

    def draw():
        fig, msg = margin_view(state.toy, s_w.value, m_w.value, easy_w.value)
        return fig, msg, msg

    def train():
        new = retrain_toy(state.toy, s_w.value, m_w.value, easy_w.value, lr=lr_w.value)
        if new.history.diverged:
            line = f"Result: training diverged ({new.history.diverged}); the toy keeps its previous weights"
        else:
            state.toy = new
            line = (f"Result: retrained the 2-D toy: loss {new.history.loss[-1]:.3f}, train "
                    f"{100 * new.accuracy('train'):.1f} %, test {100 * new.accuracy('test'):.1f} %")
        fig, msg = margin_view(state.toy, s_w.value, m_w.value, easy_w.value)
        return fig, line + "\n" + msg.replace("Result: ", "Regions: ", 1), line

    def redraw(_=None):
        _panel_run(out, results, draw, "[target logits, target probability and the toy's decision regions]",
                   "Drawing")

    def on_train(_=None):
        _panel_run(out, results, train, "[the retrained toy's decision regions]", "Training",
                   f"training the 2-D toy (s={s_w.value:.3g}, m={m_w.value:.2f}, lr={lr_w.value:.2g}) ...", run)

    for w in (s_w, m_w, easy_w):
        w.observe(redraw, "value")
    run.on_click(on_train)
    panel.controls = SimpleNamespace(s=s_w, m=m_w, easy_margin=easy_w, lr=lr_w, train=run, output=out)
    panel.state, panel.results = state, results
    return panel


def umap_panel(sets, view: str | None = None, split: str = "test + strangers", n_neighbors: int = 15,
               min_dist: float = 0.1, seed: int = 0):
    """04: UMAP's n_neighbors and min_dist, which photos (train / test / strangers ...) and which
    embedding; Compute recomputes the map (about a second once numba has compiled UMAP)."""
    from types import SimpleNamespace

    from .embedding_maps import SPLITS, map_view

    W, wide = _panel_parts()
    nn_w = W.IntSlider(value=n_neighbors, min=2, max=50, step=1, description="n_neighbors", style=wide,
                       layout=W.Layout(width="280px"))
    md_w = W.FloatSlider(value=min_dist, min=0.0, max=1.0, step=0.05, description="min_dist", readout_format=".2f",
                         style=wide, layout=W.Layout(width="260px"))
    split_w = W.Dropdown(options=list(SPLITS), value=split, description="photos", style=wide,
                         layout=W.Layout(width="230px"))
    view_w = W.Dropdown(options=list(sets.views), value=view or list(sets.views)[-1], description="embedding",
                        style=wide, layout=W.Layout(width="260px"))
    run = _panel_run_button(W, "Compute", "recompute the UMAP with these settings")
    out = _panel_output(W)
    panel = W.VBox([W.HBox([nn_w, md_w]), W.HBox([split_w, view_w, run]), out],
                   layout=W.Layout(width="100%", max_width="820px"))
    panel.add_class("course-panel")
    results: list = []

    def compute():
        fig, msg = map_view(sets, view_w.value, split_w.value, nn_w.value, md_w.value, seed)
        return fig, msg, msg

    def on_compute(_=None):
        _panel_run(out, results, compute, "[UMAP map]", "UMAP",
                   f"computing UMAP of '{split_w.value}' ({view_w.value}) ...", run)

    run.on_click(on_compute)
    panel.controls = SimpleNamespace(n_neighbors=nn_w, min_dist=md_w, split=split_w, view=view_w, compute=run,
                                     output=out)
    panel.results = results
    return panel


def threshold_panel(scores, threshold: float | None = None):
    """04: a threshold slider (redraws at once) over the open-set scores; `scores` is an
    OpenSetScores or a {embedding name: OpenSetScores} dict (then a dropdown picks one).
    Compute redraws and adds a table of the rates at thresholds around the slider's value."""
    from types import SimpleNamespace

    from .verification_plots import threshold_view

    W, wide = _panel_parts()
    table = scores if isinstance(scores, dict) else {"embedding": scores}
    first = list(table)[-1]
    t_w = W.FloatSlider(value=round(table[first].threshold if threshold is None else threshold, 2), min=-0.2, max=1.0,
                        step=0.01, description="threshold (cosine)", readout_format=".2f", style=wide,
                        layout=W.Layout(width="360px"))
    view_w = W.Dropdown(options=list(table), value=first, description="embedding", style=wide,
                        layout=W.Layout(width="260px"))
    run = _panel_run_button(W, "Compute", "redraw and tabulate the rates at thresholds around this one")
    out = _panel_output(W)
    panel = W.VBox([W.HBox([t_w, view_w, run]), out], layout=W.Layout(width="100%", max_width="820px"))
    panel.add_class("course-panel")
    results: list = []

    def draw():
        fig, msg = threshold_view(table[view_w.value], t_w.value)
        return fig, msg, msg

    def rates():
        import numpy as np

        from .verification_plots import rate_table
        t = t_w.value
        fig, msg = threshold_view(table[view_w.value], t)
        around = np.round(np.clip(t + np.array([-0.1, -0.05, 0.0, 0.05, 0.1]), -1, 1), 2)
        return fig, msg + "\n" + rate_table(table[view_w.value], around), msg

    def redraw(_=None):
        _panel_run(out, results, draw, "[open-set scores and the threshold]", "Drawing")

    def on_compute(_=None):  # "computing ..." first: a visible change even when nothing else changed
        _panel_run(out, results, rates, "[open-set scores and the threshold]", "Computing",
                   "computing the rates ...")

    t_w.observe(redraw, "value")
    view_w.observe(redraw, "value")
    run.on_click(on_compute)
    panel.controls = SimpleNamespace(threshold=t_w, view=view_w, compute=run, output=out)
    panel.results = results
    return panel


# ============================================================================ gradual unfreezing (notebook 05)
# unfreezing_panel: tick the backbone stages to train, learning rates for the head and the backbone,
# epochs; Train runs `unfreezing.train_stages` from the pretrained backbone and shows the curves and a
# "Result:" line. Head only / last stage only train on cached activations (seconds).

def unfreezing_panel(data, stages=None, lr: float = 1e-3, backbone_lr: float = 1e-3, epochs: int = 3,
                     seed: int = 0):
    """05: checkboxes for the backbone stages to unfreeze, lr (head) and backbone lr (log sliders),
    epochs, a "chain" box (the guide's three stages one after another) and Train. Nothing trains on
    display. `panel.results` holds each RunResult (a chain: its last stage) or the error."""
    from types import SimpleNamespace

    from ..models.backbone_tail import last_stage
    from ..train.unfreezing import train_stages
    from .unfreezing_lessons import describe_result, gradual_chain, plot_chain

    W, wide = _panel_parts()
    order = [s for s in data.backbone.stage_names if data.backbone.stage_paths[s]]
    chosen = set([last_stage(data.backbone)] if stages is None else stages)
    boxes = {s: W.Checkbox(value=s in chosen, description=s, indent=False, style=wide,
                           layout=W.Layout(width="auto", margin="0 12px 0 0")) for s in order}
    lr_w = W.FloatLogSlider(value=lr, base=10, min=-5, max=0, step=0.25, description="lr", readout_format=".1e",
                            style=wide, layout=W.Layout(width="300px"))
    lr_w.add_class("course-lr")
    blr_w = W.FloatLogSlider(value=backbone_lr, base=10, min=-6, max=-1, step=0.25, description="backbone lr",
                             readout_format=".1e", style=wide, layout=W.Layout(width="340px"))
    epochs_w = W.IntSlider(value=epochs, min=1, max=20, step=1, description="epochs", style=wide,
                           layout=W.Layout(width="260px"))
    chain_w = W.Checkbox(value=False, description="chain the guide's 3 stages", indent=False, style=wide,
                         layout=W.Layout(width="auto"))
    run = _panel_run_button(W, "Train", "train the head and the ticked stages from the pretrained backbone")
    out = _panel_output(W)
    hint = W.HTML("<small>none ticked: head only (cached features) &middot; only the last stage: cached "
                  "activations (seconds) &middot; anything else: whole photos, augmented (slow on a CPU) "
                  "&middot; <b>chain</b> (ignores the ticks): stage 1 head, 30 epochs at lr; stage 2 + last "
                  "stage, <i>epochs</i> at lr/10 (backbone lr); stage 3 all, <i>epochs</i> at lr/30 "
                  "(backbone lr/10), each stage from the previous one's weights</small>")
    panel = W.VBox([W.HBox([W.Label("unfreeze:"), *boxes.values()]), W.HBox([lr_w, blr_w]),
                    W.HBox([epochs_w, chain_w, run]), hint, out], layout=W.Layout(width="100%", max_width="820px"))
    panel.add_class("course-panel")
    results: list = []

    def train():
        previous = next((r for r in reversed(results) if not isinstance(r, Exception)), None)
        if chain_w.value:
            chain = gradual_chain(data, (30, epochs_w.value, epochs_w.value), lr_w.value, blr_w.value, seed)
            eers = ", ".join(f"{100 * r.metrics.strangers_eer:.1f} %" for r in chain)
            text = describe_result(chain[-1], previous) + f"\nstrangers' EER after each stage: {eers}"
            return plot_chain(chain), text, chain[-1]
        ticked = [s for s, b in boxes.items() if b.value]
        res = train_stages(data, ticked, epochs=epochs_w.value, lr=lr_w.value, backbone_lr=blr_w.value, seed=seed,
                           strangers_each_epoch=True)
        return _unfreezing_figure(res), describe_result(res, previous), res

    def on_click(_=None):
        ticked = [s for s, b in boxes.items() if b.value]
        what = ("the guide's three stages, chained" if chain_w.value else
                f"head + {', '.join(ticked) or 'no backbone stage'} for {epochs_w.value} epoch(s)")
        _panel_run(out, results, train, "[loss and accuracy per epoch]", "Training",
                   f"training {what}, lr {lr_w.value:.1e}, backbone lr {blr_w.value:.1e} ...", run)

    run.on_click(on_click)
    panel.controls = SimpleNamespace(stages=boxes, lr=lr_w, backbone_lr=blr_w, epochs=epochs_w, chain=chain_w,
                                     train=run, output=out)
    panel.results = results
    return panel


def _unfreezing_figure(res):
    """Training and validation loss, accuracy and the strangers' EER per epoch of one panel run (10 x 2.6 in)."""
    import matplotlib.pyplot as plt
    import numpy as np

    h = res.combined_history()
    ep = np.arange(1, h.epochs + 1)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(10, 2.6))
    eer = h.extra.get("strangers_eer", [])
    if eer:
        a3.plot(ep[:len(eer)], 100 * np.array(eer), marker="o", color="tab:red")
    a3.set(xlabel="epoch", ylabel="%", title="strangers' EER (never trained on)")
    a1.plot(ep, h.loss, marker="o", label="train")
    if h.val_loss:
        a1.plot(ep, h.val_loss, marker="o", label="validation")
    a1.set(xlabel="epoch", ylabel="loss", title="loss")
    a1.legend(fontsize=7)
    a2.plot(ep, 100 * np.array(h.train_acc), "--", marker="o", label="train (train mode)")
    if h.val_acc:
        a2.plot(ep, 100 * np.array(h.val_acc), marker="o", label="validation")
    a2.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 102), title=res.method[:60])
    a2.title.set_fontsize(8)
    a2.legend(fontsize=7)
    fig.tight_layout()
    return fig
