"""EfficientNet-Lite0's input normalisation, by evidence: ImageNet mean/std against TF-Lite's 0.5/0.5.

TF-Lite's EfficientNet-Lite weights were trained on inputs scaled to [-1, 1] (timm's
`tf_efficientnet_lite0`: mean = std = 0.5); the course has fed them ImageNet mean/std. Measured on
DEVELOPMENT people only (ORL s1-s10, all 10 photos each; s11-s40 are never read here) and on
ImageNet-style sample photos (scikit-image's chelsea, coffee, astronaut, rocket):

  * one-shot 1-NN identification (cosine, frozen final features): per seed one random gallery photo per
    person, the other 9 are queries; every person's accuracy is averaged over the seeds;
  * genuine/impostor pair AUC over all 4,950 pairs of the 100 photos (cosine similarity);
  * the ImageNet classifier's top-5 on the sample photos (labels and probabilities).

What "clear" means, fixed before the first run: switch the default to 0.5/0.5 only if, at the model's
input size (224 px), (1) the 95 % t-interval over the 10 development people of the per-person 1-NN
difference (0.5/0.5 minus ImageNet) lies above 0, (2) the 95 % bootstrap interval over people (2,000
resamples) of the pair-AUC difference lies above 0, and (3) every sample photo keeps its expected
top-1 class (a cat for chelsea, espresso or cup for coffee). Anything else keeps ImageNet mean/std.
112 px (the recogniser's smaller inputs) is printed too but does not decide.

    python -m benchmarks.normalisation [--seeds 20] [--sizes 224,112]
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from scipy import stats

from helpers.models.backbones import load_backbone
from helpers.data.folders import load_orl
from helpers.features.extract import FINAL, extract
from helpers.data.preprocess import to_batch

NORMS = {"ImageNet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
         "TF-Lite 0.5/0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
DEV_PEOPLE = [f"s{i}" for i in range(1, 11)]
# a correct top-1 for each sample photo (None: no ImageNet class fits, printed only)
SAMPLES = {"chelsea": {"tabby", "tiger cat", "Egyptian cat"}, "coffee": {"espresso", "cup"}, "astronaut": None,
           "rocket": None}


def development_faces():
    """ORL s1..s10 (100 photos), their labels 0..9."""
    orl = load_orl()
    keep = [i for i, lab in enumerate(orl.labels) if orl.names[lab] in DEV_PEOPLE]
    assert len(keep) == 100, len(keep)
    return [orl.images[i] for i in keep], np.array([DEV_PEOPLE.index(orl.names[orl.labels[i]]) for i in keep])


def _unit(f: np.ndarray) -> np.ndarray:
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def one_shot_per_person(f: np.ndarray, labels: np.ndarray, seeds: int) -> np.ndarray:
    """(people,) one-shot 1-NN accuracy of each person's queries, averaged over `seeds` gallery draws."""
    f = _unit(f)
    people = np.unique(labels)
    acc = np.zeros((seeds, len(people)))
    for s in range(seeds):
        rng = np.random.default_rng(s)
        gallery = np.array([rng.choice(np.flatnonzero(labels == p)) for p in people])
        queries = np.setdiff1d(np.arange(len(labels)), gallery)
        pred = people[np.argmax(f[queries] @ f[gallery].T, 1)]
        for j, p in enumerate(people):
            mine = labels[queries] == p
            acc[s, j] = (pred[mine] == p).mean()
    return acc.mean(0)


def pair_auc(f: np.ndarray, labels: np.ndarray) -> float:
    """AUC of cosine similarity, genuine (same label) vs impostor pairs, over all pairs of photos."""
    from sklearn.metrics import roc_auc_score

    g = _unit(f)
    i, j = np.triu_indices(len(labels), 1)
    return float(roc_auc_score(labels[i] == labels[j], (g[i] * g[j]).sum(1)))


def auc_bootstrap(fa: np.ndarray, fb: np.ndarray, labels: np.ndarray, n: int = 2000) -> tuple[float, float]:
    """95 % interval of AUC(fb) - AUC(fa), people resampled with replacement (the same draw for both; a
    person drawn twice counts as two people, so no photo is paired with its own copy as genuine)."""
    rng = np.random.default_rng(0)
    people = np.unique(labels)
    diffs = []
    for _ in range(n):
        draw = rng.choice(people, len(people))
        idx = np.concatenate([np.flatnonzero(labels == p) for p in draw])
        lab = np.repeat(np.arange(len(draw)), [int((labels == p).sum()) for p in draw])
        diffs.append(pair_auc(fb[idx], lab) - pair_auc(fa[idx], lab))
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def imagenet_samples(bb, mean, std) -> dict[str, list[tuple[str, float]]]:
    from PIL import Image
    from skimage import data as skdata

    photos = [Image.fromarray(getattr(skdata, n)()).convert("RGB") for n in SAMPLES]
    x = torch.from_numpy(to_batch(photos, bb.input_size, mean, std))
    return dict(zip(SAMPLES, bb.predict_imagenet(x, k=5)))


def main(seeds: int = 20, sizes=(224, 112)) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bb = load_backbone("efficientnet_lite0", verbose=False)
    base = bb.config
    images, labels = development_faces()
    out: dict = {"seeds": seeds, "people": DEV_PEOPLE, "sizes": {}}
    for size in sizes:
        feats = {}
        for name, (mean, std) in NORMS.items():
            bb.config = dataclasses.replace(base, mean=mean, std=std)
            feats[name] = extract(bb, images, size=size)[FINAL]
        bb.config = base
        (na, fa), (nb, fb) = feats.items()
        pa, pb = one_shot_per_person(fa, labels, seeds), one_shot_per_person(fb, labels, seeds)
        d = pb - pa
        half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
        auc_a, auc_b = pair_auc(fa, labels), pair_auc(fb, labels)
        lo, hi = auc_bootstrap(fa, fb, labels)
        row = {"one_shot": {na: 100 * pa.mean(), nb: 100 * pb.mean()},
               "one_shot_diff": (100 * d.mean(), 100 * half), "auc": {na: auc_a, nb: auc_b},
               "auc_diff_ci": (lo, hi)}
        out["sizes"][size] = row
        print(f"\n{size} px, ORL s1-s10 (100 photos), frozen final features, cosine")
        print(f"  {'':<34}{na:>20}{nb:>20}")
        print(f"  {'one-shot 1-NN (%, ' + str(seeds) + ' seeds)':<34}{100 * pa.mean():>20.1f}{100 * pb.mean():>20.1f}")
        print(f"  {'pair AUC (4,950 pairs)':<34}{auc_a:>20.4f}{auc_b:>20.4f}")
        print(f"  1-NN difference ({nb} - {na}): {100 * d.mean():+.1f} +- {100 * half:.1f} points "
              f"(95 % t-interval over the 10 people); per person: {np.round(100 * d, 1).tolist()}")
        print(f"  AUC difference: {auc_b - auc_a:+.4f}, 95 % bootstrap interval over people [{lo:+.4f}, {hi:+.4f}]")
    print("\nImageNet sample photos, top-5 at 224 px")
    samples = {}
    for name, (mean, std) in NORMS.items():
        samples[name] = imagenet_samples(bb, mean, std)
    for photo in SAMPLES:
        for name in NORMS:
            top = ", ".join(f"{c} {p:.2f}" for c, p in samples[name][photo])
            print(f"  {photo:<10}{name:<20}{top}")
    out["samples"] = samples
    r = out["sizes"][max(sizes)]
    keeps = all(ok is None or samples[list(NORMS)[1]][p][0][0] in ok for p, ok in SAMPLES.items())
    clear = r["one_shot_diff"][0] - r["one_shot_diff"][1] > 0 and r["auc_diff_ci"][0] > 0 and keeps
    out["verdict"] = "0.5/0.5 clearly better: switch" if clear else "not clear: keep ImageNet mean/std"
    print(f"\nVerdict at {max(sizes)} px by the rule fixed beforehand: {out['verdict']}")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--sizes", default="224,112")
    a = ap.parse_args()
    main(a.seeds, tuple(int(s) for s in a.sizes.split(",")))
