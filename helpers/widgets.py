"""ipywidgets panels. Building a panel never trains: a Train button does, into an Output area.

Each panel is a function returning the container widget; its callbacks call plain helpers
functions, so the logic is testable without a browser (set values, then `button.click()`).
"""
from __future__ import annotations


# ============================================================================ training panel (notebook 02)

def training_panel(features, labels, split, images=None, backbone=None, lr: float = 1e-2,
                   epochs: int = 50, head: str = "arcface", freeze: bool = True, seed: int = 0):
    """Retrain the face model from a panel: learning rate (log slider), epochs, freeze, head, Train.

    Nothing trains until Train is clicked; each click calls `experiments.train_and_report` with the
    panel's values, drawing the curves and a "Result:" line into the panel's Output. An error is
    shown there as one clear line. `panel.controls` holds the widgets, `panel.results` every run.
    Unticking "freeze backbone" fine-tunes the backbone on `images` (needs `images` and `backbone`).
    """
    import contextlib
    import io
    from types import SimpleNamespace

    import ipywidgets as W

    from .experiments import HEAD_NAMES, train_and_report

    wide = {"description_width": "initial"}
    lr_w = W.FloatLogSlider(value=lr, base=10, min=-4, max=0, step=0.25, description="lr",
                            readout_format=".1e", style=wide, layout=W.Layout(width="320px"))
    lr_w.add_class("course-lr")
    epochs_w = W.IntSlider(value=epochs, min=1, max=200, step=1, description="epochs", style=wide,
                           layout=W.Layout(width="300px"))
    freeze_w = W.Checkbox(value=freeze, description="freeze backbone", style=wide, indent=False,
                          layout=W.Layout(width="150px"))
    head_w = W.Dropdown(options=[(HEAD_NAMES[k], k) for k in HEAD_NAMES], value=head, description="head",
                        style=wide, layout=W.Layout(width="240px"))
    run = W.Button(description="Train", icon="play", button_style="primary", layout=W.Layout(width="110px"))
    run.add_class("course-run")
    out = W.Output(layout=W.Layout(border="1px solid #ddd", min_height="60px", width="100%"))
    out.add_class("course-output")
    panel = W.VBox([W.HBox([lr_w, epochs_w]), W.HBox([head_w, freeze_w, run]), out],
                   layout=W.Layout(width="100%", max_width="820px"))
    panel.add_class("course-panel")
    results: list = []

    def on_click(_=None):
        run.disabled = True
        out.outputs = ({"output_type": "stream", "name": "stdout",
                        "text": f"training ({'frozen' if freeze_w.value else 'fine-tuning the backbone'}, "
                                f"lr={lr_w.value:.3g}, {epochs_w.value} epochs) ...\n"},)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                res = train_and_report(features, labels, split, head=head_w.value, lr=lr_w.value,
                                       epochs=epochs_w.value, freeze=freeze_w.value, seed=seed,
                                       images=images, backbone=backbone, output=out, progress=False)
            results.append(res)
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
    panel.controls = SimpleNamespace(lr=lr_w, epochs=epochs_w, freeze=freeze_w, head=head_w, train=run, output=out)
    panel.results = results
    return panel
