"""Frozen training: the course's cached-feature head fit vs the guide's image-per-epoch loop.

The guide trains the embedding + ArcFace head with the frozen backbone in the loop, so every
epoch pushes every (augmented) image through the backbone. The course extracts features once
(of augmented views) and fits the head on the cached vectors. Both sides use the same 9 ORL
people and 900 training items (the guide's data size: ~100 photos per person).

Measured: the head fit (50 epochs, helpers.train_head_on_features) as the median of several
repeats; one feature extraction of the 900 images (the course's one-off cost); and the guide's
loop (helpers.fit with the backbone in the model, the helpers' training augmentation) for a few
epochs, whose median epoch time x 50 is the guide's 50-epoch figure: EXTRAPOLATED (labelled so in
every figure), since 50 measured epochs of the guide's loop take most of an hour on a 2-core CPU.
The head fit uses the course's own batch size (64, `train_head_on_features`' default). The guide's
"5-10 min on GPU" is a typed constant: it stands in the figures' `reference` column, never as a
same-run comparison.
"""
from __future__ import annotations

import numpy as np
import torch

from helpers import build_model, fit, load_backbone, split_known_strangers, train_head_on_features
from helpers.data.folders import load_orl
from helpers.features.extract import FINAL, compute
from helpers.features.onnx_backbone import resolve_engine
from helpers.runtime import threads
from helpers.train.fit import SMALL_FIT
from helpers.train.fit import ImageDataset

from .common import Figure, PeakRSS, Section, fmt_s, time_repeats

GUIDE_GPU_CLAIM_S = (300.0, 600.0)  # "5-10 minutes on GPU" for frozen training


def run(smoke: bool = False, backbone: str = "auto", repeats: int = 5, guide_epochs: int = 3,
        epochs: int = 50, n_items: int = 900, n_people: int = 9, size: int | None = None,
        batch_size: int = 64) -> Section:
    if smoke:
        repeats, guide_epochs, epochs, n_items, size = 2, 1, 3, 18, 64
    bb = load_backbone(backbone, verbose=False)
    size = size or bb.input_size
    known, _ = split_known_strangers(load_orl(), n_known=n_people, seed=0)
    reps = int(np.ceil(n_items / len(known)))
    order = np.tile(np.arange(len(known)), reps)[:n_items]
    images = [known.images[i] for i in order]
    labels = torch.as_tensor(known.labels[order]).long()

    # the course: features of augmented views, extracted once ...
    threads_n = torch.get_num_threads()
    box = {}

    def extract():
        torch.manual_seed(0)
        box["feats"] = compute(bb, images, size=size, transform=bb.transform(train=True, size=size))[FINAL]

    with PeakRSS() as mem_extract:
        t_extract = time_repeats(extract, repeats=min(3, repeats), warmup=0)
    feats = box["feats"]

    # ... then the head fitted on the cached vectors (helpers run it on one thread)
    def head_fit():
        train_head_on_features(feats, labels, epochs=epochs, batch_size=batch_size, progress=False)

    with PeakRSS() as mem_head:
        t_head = time_repeats(head_fit, repeats=repeats, warmup=1)

    # the guide: the frozen backbone in the training loop, every image every epoch (plain NCHW)
    bb.to(memory_format=torch.contiguous_format)
    model = build_model(n_people, backbone=bb, freeze_backbone=True)
    data = ImageDataset(images, labels, bb.transform(train=True, size=size))
    with PeakRSS() as mem_guide, threads(threads_n):
        hist = fit(model, data, epochs=guide_epochs, batch_size=32, progress=False)
    guide_epoch = float(np.median(hist.seconds))
    guide_total = guide_epoch * epochs
    head = t_head.median
    course_total = t_extract.median + head

    sec = Section("Frozen head fit", config={
        "backbone": bb.describe(), "input_size": size, "people": n_people, "items": n_items,
        "epochs": epochs, "head": f"Linear+BN embedding (512) + ArcFace (s=16), fused AdamW, batch {batch_size}",
        "guide_claim_s_typed": list(GUIDE_GPU_CLAIM_S),
        "head_threads": 1 if n_items < SMALL_FIT else threads_n, "guide_batch": 32, "guide_epochs_measured": guide_epochs, "repeats": repeats,
        "extraction": f"features.compute defaults ({resolve_engine(None, torch.device('cpu'))})"})
    sec.figures = [
        Figure("head_fit.seconds", f"Frozen head fit, {epochs} epochs on {n_items} cached vectors, batch "
               f"{batch_size}", head, "s",
               f"guide's loop, EXTRAPOLATED: {guide_epochs} measured epoch(s) × {epochs} ({fmt_s(guide_epoch)}/epoch)",
               guide_total, guide_total / head, "× faster", "≤ 3 s on CPU", head <= 3.0,
               spread=(max(t_head.seconds) - min(t_head.seconds)) / 2,
               reference="guide: 5–10 min on GPU (typed constant)"),
        Figure("head_fit.with_extraction", "Frozen training incl. the one-off feature extraction",
               course_total, "s", f"guide's loop, {epochs} epochs EXTRAPOLATED from {guide_epochs}", guide_total,
               guide_total / course_total, "× faster"),
    ]
    sec.details = {
        "head_fit_s": t_head.as_dict(),
        "extraction_s": t_extract.as_dict(),
        "guide_epoch_s": [round(s, 3) for s in hist.seconds],
        "guide_50_epochs_s_extrapolated": round(guide_total, 1),
        "peak_rss_mb": {"extraction": round(mem_extract.delta_mb, 1), "head_fit": round(mem_head.delta_mb, 1),
                        "guide_loop": round(mem_guide.delta_mb, 1)},
    }
    sec.notes = [f"The guide's {epochs}-epoch time is {guide_epochs} measured epoch(s) (median "
                 f"{fmt_s(guide_epoch)}) × {epochs}: each epoch does the same work."]
    print(f"[head_fit] {epochs} epochs on {n_items} cached vectors: {fmt_s(head)} (median of {repeats}); "
          f"guide's loop: {fmt_s(guide_epoch)}/epoch -> {fmt_s(guide_total)} for {epochs} epochs: "
          f"{guide_total / head:,.0f}× faster; with the one-off extraction ({fmt_s(t_extract.median)}): "
          f"{guide_total / course_total:,.1f}× faster (guide's loop extrapolated from {guide_epochs} epochs)")
    return sec
