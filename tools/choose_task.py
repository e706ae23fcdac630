"""Measure candidate default tasks for notebooks 02-05 (issue 14): which one does not saturate?

For each candidate (known people x training photos per person; every other person is a stranger,
never trained on) and each seed (which people are known, the split, the training), a frozen
ArcFace head is trained on the cached features exactly as notebook 02 does, then the same with one
setting changed: learning rate, head type, margin, scale. Printed per candidate: mean validation
and test accuracy and the strangers' verification EER over the seeds, and how far each change
moves them. A good default lands well below 100 % and lets each knob move the result.

    .venv/bin/python tools/choose_task.py            # 3 seeds, ~2 min on 2 busy cores
    .venv/bin/python tools/choose_task.py --seeds 5
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANDIDATES = [  # (name, known people, training photos per person; None = all 5: the guide's case)
    ("guide: 9 known x 5 photos", 9, None),
    ("9 known x 1 photo", 9, 1),
    ("9 known x 2 photos", 9, 2),
    ("20 known x 2 photos", 20, 2),
    ("30 known x 2 photos", 30, 2),
    ("30 known x 3 photos", 30, 3),
]
BASE = dict(head="arcface", lr=1e-2, m=None, s=16.0)
CHANGES = [  # (label, what differs from BASE)
    ("lr 1e-3", dict(lr=1e-3)),
    ("lr 1e-1", dict(lr=1e-1)),
    ("softmax head", dict(head="softmax")),
    ("CosFace head", dict(head="cosface")),
    ("ArcFace m=0", dict(m=0.0)),
    ("ArcFace s=64", dict(s=64.0)),
]


def run_one(features, data, head, lr, m, s, seed, epochs):
    import torch

    from helpers.evaluate.metrics import embed, predict, verification
    from helpers.train.fit import train_head_on_features

    x = features[data.known_idx]
    y = torch.as_tensor(data.known.labels).long()
    sp = data.split
    model, hist = train_head_on_features(x[sp.train], y[sp.train], x[sp.val], y[sp.val], head=head,
                                         lr=lr, m=m, s=s, epochs=epochs, seed=seed, progress=False)
    test = float((predict(model, x[sp.test]) == np.asarray(y[sp.test])).mean())
    eer = verification(embed(model, features[data.stranger_idx]), data.strangers.labels).eer
    return hist.final_val_acc, test, eer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--backbone", default="auto")
    args = ap.parse_args(argv)

    import helpers
    from helpers.course import experiments

    t0 = time.perf_counter()
    backbone = helpers.load_backbone(args.backbone)
    seeds = range(args.seeds)
    features = None
    print(f"frozen {backbone.name} features, {args.epochs} epochs, AdamW; mean over seeds {list(seeds)} "
          "(known people, split and training all follow the seed)")
    print("base: ArcFace s=16 m=0.3 lr=1e-2. 'val/test': closed-set accuracy of the known people; "
          "'EER': strangers' verification EER (pairs of people never trained on)")
    for name, n_known, shots in CANDIDATES:
        rows = {"base": []} | {label: [] for label, _ in CHANGES}
        for seed in seeds:
            data = experiments.load_course_data("orl", n_known=n_known, seed=seed, shots=shots)
            if features is None:
                features = experiments.course_features(backbone, data.faces)
            rows["base"].append(run_one(features, data, **BASE, seed=seed, epochs=args.epochs))
            for label, change in CHANGES:
                rows[label].append(run_one(features, data, **(BASE | change), seed=seed, epochs=args.epochs))
        s = data.split.sizes()
        base = np.mean(rows["base"], axis=0) * 100
        spread = np.ptp(np.array(rows["base"])[:, 0]) * 100
        print(f"\n{name}: train {s['train']} / val {s['val']} / test {s['test']} photos, "
              f"{len(data.stranger_idx)} stranger photos")
        print(f"  base           val {base[0]:5.1f} %  test {base[1]:5.1f} %  strangers' EER {base[2]:5.1f} %"
              f"   (val range over seeds {spread:.1f} points)")
        for label, _ in CHANGES:
            v = np.mean(rows[label], axis=0) * 100
            d = v - base
            print(f"  {label:<14} val {v[0]:5.1f} % ({d[0]:+5.1f})  test {v[1]:5.1f} % ({d[1]:+5.1f})  "
                  f"EER {v[2]:5.1f} % ({d[2]:+5.1f})")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
