"""From photos to a working recogniser: features, the representation or head, the threshold, the
gallery; and the course's evaluation protocol on a fixed split (what `python -m helpers evaluate` runs).

Methods (`METHODS`; the default is the one that won on the benchmark's development people,
see benchmarks/RESULTS.md):
  * multilayer-tta-whiten: frozen features of several layers (the final output and `layer3` averaged
    over a 4 x 4 grid, `DEFAULT_LAYERS`), mirror test-time augmentation and
    within-class whitening fitted on the enrolment photos and augmented (and "phone") views of them,
    plus a background of other people's photos (ORL s1–s10 minus anyone enrolled or evaluated,
    `helpers.background`) when `USE_BACKGROUND` (`helpers.representations`); no gradient training;
  * head: an embedding + ArcFace head trained on the frozen features;
  * raw: the frozen backbone's features as they are.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import Backbone
from .data import FaceDataError, FaceSet, load_orl, split_known_strangers, split_people, split_per_person
from .evaluation import best_match, l2_normalize, threshold_from_strangers, threshold_without_strangers, verification
from .features import TAPPED, extract, extract_features
from .recognizer import Recognizer, open_set_report
from .background import BACKGROUND_PEOPLE, background_faces, people_seen
from .calibration import FOLDS, RULE, Calibration, calibrate_fixed, fold_of, fold_scores, mean_gallery
from .representations import BACKGROUND_LAMBDA, DEFAULT_LAMBDA, DEFAULT_LAYERS, DEFAULT_PHONE_STRENGTH, \
    DEFAULT_PHONE_VIEWS, DEFAULT_VIEWS, Representation, enrolment_set, fit_representation, fit_whitening, mirrored
from .runtime import threads
from .training import train_head_on_features

WHITEN = "multilayer-tta-whiten"
METHODS = (WHITEN, "head", "raw")
DEFAULT_METHOD = WHITEN  # the development people's winner (benchmarks/accuracy.py checks it still is)
USE_BACKGROUND = True    # the product's whitening uses the background people (chosen on development people)


def background_for(*image_lists) -> "FaceSet | None":
    """The product's background (ORL s1–s10) minus anyone with a photo in `image_lists` (pass every
    photo that will be enrolled or evaluated: known people, queries, strangers); None when not used."""
    return background_faces(*image_lists) if USE_BACKGROUND else None


def features_for(backbone: Backbone, images: Sequence, size: int | None = None, n_threads: int | None = None) -> torch.Tensor:
    """Frozen features at input `size`, from the course's on-disk cache when already computed."""
    with threads(n_threads):
        return extract_features(backbone, list(images), size=size or backbone.input_size,
                                progress=False, verbose=False)


def method_features(backbone: Backbone, images: Sequence, size: int | None = None, method: str = DEFAULT_METHOD,
                    n_threads: int | None = None, layers: Sequence[str] = DEFAULT_LAYERS):
    """What `fit_recognizer` and `embed_features` take for `method`: backbone features (N, D) for
    'raw' and 'head'; multi-layer + mirror TTA vectors before whitening for the whitened method."""
    if method != WHITEN:
        return features_for(backbone, images, size, n_threads)
    rep = Representation(backbone, layers, tta=True)
    with threads(n_threads):
        parts = extract(backbone, list(images), TAPPED, size)
        mirror = extract(backbone, [mirrored(im) for im in images], TAPPED, size)
    return rep.unwhitened(parts, mirror)


def fit_recognizer(backbone: Backbone, train_feats, train_labels, names: Sequence[str],
                   size: int | None = None, method: str = "head", epochs: int = 30, seed: int = 0,
                   lr: float = 1e-2, train_images: Sequence | None = None, n_views: int = DEFAULT_VIEWS,
                   lam: float | None = None, n_threads: int | None = None, background=None, exclude_images=(),
                   n_phone: int | None = None, phone_strength: float = DEFAULT_PHONE_STRENGTH,
                   layers: Sequence[str] = DEFAULT_LAYERS) -> Recognizer:
    """A recogniser from cached features (`method_features`): 'head' trains embedding + ArcFace head
    (frozen backbone), 'raw' uses the features as they are, the whitened method fits its whitening
    on `train_images`, `n_views` augmented views and `n_phone` phone views of each; the gallery is
    enrolled from the same photos. `lam`, `n_phone` None: the development choices for the case
    (`helpers.representations.fit_representation`); `layers`: the taps beside the final output
    (the same as given to `method_features`).

    `background` (whitened method only): None (none), 'orl' (the product's, ORL s1–s10) or a FaceSet
    of other people. Any background person with a photo among `train_images` or `exclude_images` is
    dropped: pass every photo you will evaluate (queries, strangers) as `exclude_images`, e.g.
    `background=background_for(known.images, strangers.images)` or `background='orl',
    exclude_images=[*known.images, *strangers.images]`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    labels = np.asarray(train_labels)
    embedding = None
    if method == WHITEN:
        if train_images is None or len(train_images) != len(labels):
            raise ValueError(f"{WHITEN} needs the training photos (train_images) to fit its whitening")
        if len(names) < 2:
            raise ValueError("within-class whitening needs at least 2 people")
        if isinstance(background, str):
            if background != "orl":
                raise ValueError(f"background must be None, 'orl' or a FaceSet, got {background!r}")
            background = background_faces()
        with threads(n_threads):
            rep = fit_representation(backbone, list(train_images), labels, size, layers, n_views=n_views, lam=lam,
                                     background=background, exclude=list(exclude_images), n_phone=n_phone,
                                     phone_strength=phone_strength)
        rec = Recognizer(backbone, None, size, names, torch.zeros(len(names), np.shape(train_feats)[1]),
                         representation=rep)
        rec.enrol([], labels, names, embeddings=embed_features(rec, train_feats))
        return rec.eval()
    if method == "head":
        if len(names) < 2:
            raise ValueError("training a head needs at least 2 people")
        model, _ = train_head_on_features(train_feats, labels, epochs=epochs, lr=lr, seed=seed, progress=False)
        embedding = model.embedding.eval()
    rec = Recognizer(backbone, embedding, size, names)
    rec.enrol([], labels, names, embeddings=embed_features(rec, train_feats))
    return rec.eval()


@torch.no_grad()
def embed_features(rec: Recognizer, feats: torch.Tensor) -> np.ndarray:
    """The recogniser's embeddings from already computed backbone features (same as `rec.embed`)."""
    if len(feats) == 0:
        return np.zeros((0, rec.embedding_dim), np.float32)
    if rec.representation is not None:
        return F.normalize(torch.as_tensor(rec.representation.finish(np.asarray(feats))).float(), dim=1).numpy()
    f = torch.as_tensor(feats).float()
    if rec.embedding is not None:
        rec.embedding.eval()
        f = rec.embedding(f.to(next(rec.embedding.parameters()).device)).cpu()
    return F.normalize(f, dim=1).numpy()


def stand_in_strangers(faces: FaceSet, without_background: bool = False) -> FaceSet | None:
    """The packaged ORL faces minus anyone who appears in `faces` (same pixels, or a near copy:
    `helpers.background.people_seen`): strangers for choosing a threshold when a learner's folder
    has none. None when nobody is left. With `without_background`, the background people (ORL
    s1–s10) are left out too (they are scored as impostors by `calibrate`, cross-fitted)."""
    orl = load_orl()
    overlap = people_seen(orl, faces.images)
    if without_background:
        overlap |= set(BACKGROUND_PEOPLE)
    keep = np.flatnonzero(~np.isin(orl.labels, sorted(overlap)))
    if len(np.unique(orl.labels[keep])) < 2:
        return None
    return orl.subset(keep, relabel=True)


def calibrate(backbone: Backbone, images: Sequence, labels, feats, size: int | None = None,
              method: str = DEFAULT_METHOD, epochs: int = 30, seed: int = 0, n_threads: int | None = None,
              stranger_feats=None, background: FaceSet | None = None, folds: int = FOLDS,
              rule: str = RULE) -> Calibration:
    """Genuine and impostor scores for the threshold, cross-fitted (`helpers.calibration`): for each of
    `folds` folds (photo j of each person in fold j mod K), the recogniser is fitted again without the
    fold's photos (whitening: on the cached enrolment views of the other photos and the background
    minus the fold's background people; head: trained again) and the fold is scored against it.
    `feats`: `method_features` of `images`; `stranger_feats`: the same of stranger photos, or None."""
    labels = np.asarray(labels)
    size = size or backbone.input_size
    rank = fold_of(labels)
    k = max(2, min(folds, int(rank.max()) + 1))
    fold = rank % k
    genuine, imp = [], {"own other people": [], "background people": [], "strangers": []}
    if method == WHITEN:
        kw = dict(n_phone=DEFAULT_PHONE_VIEWS if background is not None else 0)
        lam = BACKGROUND_LAMBDA if background is not None else DEFAULT_LAMBDA
        with threads(n_threads):
            x, y = enrolment_set(backbone, list(images), labels, size, DEFAULT_LAYERS, DEFAULT_VIEWS, **kw)
            if background is not None:
                xb, yb = enrolment_set(backbone, background.images, background.labels, size, DEFAULT_LAYERS,
                                       DEFAULT_VIEWS, **kw)
                bf = method_features(backbone, background.images, size, method, n_threads)
                bl = np.asarray(background.labels)
        row_fold = np.tile(fold, len(x) // len(labels))
    sf = None if stranger_feats is None or not len(stranger_feats) else np.asarray(stranger_feats)
    for f in range(k):
        tr, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        people = np.unique(labels[tr])
        if method == WHITEN:
            b = None if background is None else (xb[yb % k != f], yb[yb % k != f])
            w = fit_whitening(x[row_fold != f], y[row_fold != f], lam, b, gram=True)
            rep = Representation(backbone, DEFAULT_LAYERS, True, w)

            def emb(v, rep=rep):
                return l2_normalize(rep.finish(np.asarray(v)))
        else:
            if len(people) < 2 and method == "head":
                continue
            sub = np.searchsorted(people, labels[tr])
            rf = fit_recognizer(backbone, feats[tr], sub, [str(p) for p in people], size, method, epochs, seed,
                                n_threads=n_threads)

            def emb(v, rf=rf):
                return embed_features(rf, torch.as_tensor(np.asarray(v)))
        gallery = mean_gallery(emb(feats[tr]), labels[tr], people)
        g, o = fold_scores(gallery, people, emb(feats[held]), labels[held])
        genuine += list(g)
        imp["own other people"] += list(o)
        if method == WHITEN and background is not None and (bl % k == f).any():
            imp["background people"] += list(best_match(gallery, emb(bf[bl % k == f]))[1])
        if sf is not None and (np.arange(len(sf)) % k == f).any():
            imp["strangers"] += list(best_match(gallery, emb(sf[np.arange(len(sf)) % k == f]))[1])
    sources = {name: len(v) for name, v in imp.items() if v}
    return Calibration(np.array(genuine), np.concatenate([np.asarray(v, float) for v in imp.values()]),
                       sources, rule, k)


def train_recognizer(faces, backbone: Backbone, size: int | None = None, method: str = DEFAULT_METHOD, epochs: int = 30,
                     seed: int = 0, n_threads: int | None = None, strangers="orl") -> tuple[Recognizer, dict]:
    """Everything `python -m helpers train` does: features, whitening or head, gallery and threshold.

    The recogniser is fitted on every photo. Its threshold is `helpers.calibration.RULE` on cross-fitted
    scores (`calibrate`): every photo against its person's gallery entry made without it (genuine),
    and impostors: each photo against the other people, the background people (whitened method) and
    `strangers`: a FaceSet, 'orl' (the packaged faces of people not in `faces`, minus the background
    people, who are already scored) or None. The file records the expected false-accept and
    false-reject rates (`Recognizer.calibration`).
    """
    size = size or backbone.input_size
    feats = method_features(backbone, faces.images, size, method, n_threads)
    labels = np.asarray(faces.labels)
    use_bg = method == WHITEN and USE_BACKGROUND
    if isinstance(strangers, str) and strangers == "orl":
        strangers = stand_in_strangers(faces, without_background=use_bg)
    s_images = [] if strangers is None else list(strangers.images)
    bg = background_for(faces.images, s_images) if use_bg else None
    rec = fit_recognizer(backbone, feats, labels, faces.names, size, method, epochs, seed,
                         train_images=list(faces.images), n_threads=n_threads, background=bg)
    sf = method_features(backbone, s_images, size, method, n_threads) if s_images else None
    cal = calibrate(backbone, faces.images, labels, feats, size, method, epochs, seed, n_threads, sf, bg)
    rec.threshold = cal.threshold
    rec.calibration = cal.record()
    info = {"people": faces.num_people, "photos": len(faces), "method": _method_name(method),
            "threshold_from": _calibration_note(cal, strangers), "calibration": cal}
    return rec, info


def _calibration_note(cal: Calibration, strangers) -> str:
    """Where the threshold came from, for `train`'s report."""
    what = ("ORL stand-ins" if "ORL" in strangers.source else "given") if strangers is not None else ""
    return (f"{cal.rule} on {len(cal.genuine)} genuine and {len(cal.impostor)} impostor scores, cross-fitted "
            f"in {cal.folds} folds; impostors: "
            + ", ".join(f"{n} {k}" + (f" ({what})" if k == "strangers" else "") for k, n in cal.sources.items()))


def enrol_recognizer(rec: Recognizer, faces, seed: int = 0, n_threads: int | None = None,
                     strangers="orl") -> tuple[Recognizer, dict]:
    """`python -m helpers train --from-checkpoint`: a recogniser that needs no training (such as
    `Recognizer.from_checkpoint`, a fine-tuned model of notebook 07) enrols every photo of `faces`;
    its threshold comes from the same folds, rule and strangers as `train_recognizer`'s
    (`helpers.calibration.calibrate_fixed`: nothing to refit). `seed` is accepted for the command line."""
    labels = np.asarray(faces.labels)
    if isinstance(strangers, str) and strangers == "orl":
        strangers = stand_in_strangers(faces)
    with threads(n_threads):
        emb = rec.embed(faces.images)
        s_emb = rec.embed(strangers.images) if strangers is not None and len(strangers) else None
    cal = calibrate_fixed(emb, labels, s_emb)
    rec.threshold, rec.calibration = cal.threshold, cal.record()
    rec.enrol([], labels, faces.names, embeddings=emb)
    info = {"people": faces.num_people, "photos": len(faces), "threshold_from": _calibration_note(cal, strangers),
            "calibration": cal,
            "method": f"fine-tuned {rec.backbone.name} + embedding of a helpers.trainer run, no training here"}
    return rec.eval(), info


def _method_name(method: str) -> str:
    return {"head": "frozen backbone + embedding/ArcFace head", "raw": "frozen backbone features, no training",
            WHITEN: "frozen multi-layer features + mirror TTA + within-class whitening"
                    + (" with background people" if USE_BACKGROUND else "") + ", no gradient training"}[method]


def evaluate_protocol(faces, backbone: Backbone, n_known: int = 9, shots: int | None = None, seed: int = 0,
                      size: int | None = None, method: str = DEFAULT_METHOD, epochs: int = 30,
                      n_threads: int | None = None, degrade=None, layers: Sequence[str] = DEFAULT_LAYERS) -> dict:
    """The course's evaluation on a fixed split; returns plain numbers (what `evaluate --json` prints).

    Known people: train (optionally `shots` photos each) / validation / test. Strangers: the other
    people, split in two halves by person: the threshold is chosen on validation photos + the
    first half, open-set rates are measured on test photos + the second half; EER over all
    stranger pairs. With no strangers, the threshold treats each validation photo scored against
    the other people as a stranger, and EER is over the known people's test photos. `layers`: the
    whitened method's taps beside the final output (default: the development choice).
    """
    size = size or backbone.input_size
    if n_known > faces.num_people:
        raise FaceDataError(f"--known {n_known}: the data has only {faces.num_people} people")
    known, strangers = split_known_strangers(faces, n_known=n_known, seed=seed)
    split = split_per_person(known.labels, shots=shots, seed=seed)
    if len(split.val) == 0:
        raise FaceDataError("evaluate needs validation photos: at least 4 photos per person "
                            "(train, validation, test)")
    y = np.asarray(known.labels)
    k_images = list(known.images)
    if degrade is not None:  # query photos (validation, test) degraded; enrolment photos stay as they are
        for i in np.r_[split.val, split.test]:
            k_images[i] = degrade(k_images[i], int(i))
    kf = method_features(backbone, k_images, size, method, n_threads, layers)
    # the background: ORL s1-s10 minus anyone here (known or stranger, as given or degraded)
    bg = None
    if method == WHITEN:
        bg = background_for(known.images, k_images, [] if strangers is None else strangers.images)
    rec = fit_recognizer(backbone, kf[split.train], y[split.train], known.names, size, method, epochs, seed,
                         train_images=[k_images[i] for i in split.train], n_threads=n_threads, background=bg,
                         layers=layers)
    gallery = rec.gallery_np
    val_e, test_e = embed_features(rec, kf[split.val]), embed_features(rec, kf[split.test])
    idx, _ = best_match(gallery, test_e)
    accuracy = float((idx == y[split.test]).mean())
    s_val = s_test = None
    if strangers is not None:
        s_images = list(strangers.images)
        if degrade is not None:
            s_images = [degrade(im, 100_000 + i) for i, im in enumerate(s_images)]
        sf = method_features(backbone, s_images, size, method, n_threads, layers)
        s_emb = embed_features(rec, sf)
        s_lab = np.asarray(strangers.labels)
        if strangers.num_people >= 2:  # threshold strangers and test strangers are different people
            first, second = split_people(s_lab, 0.5, seed)
        else:  # one stranger only: the threshold is tuned on the test stranger (said in threshold_from)
            first = second = np.arange(len(s_lab))
        s_val, s_test = s_emb[first], s_emb[second]
        rec.threshold = threshold_from_strangers(gallery, val_e, y[split.val], s_val)
        eer, eer_on = verification(s_emb, s_lab).eer, f"all pairs of {len(s_lab)} photos of {strangers.num_people} strangers"
        thr_from = f"validation photos + {len(first)} photos of {len(np.unique(s_lab[first]))} strangers"
        if strangers.num_people < 2:
            thr_from += " (the only stranger, also used for testing: optimistic)"
    else:
        rec.threshold = threshold_without_strangers(gallery, val_e, y[split.val])
        eer, eer_on = verification(test_e, y[split.test]).eer, "pairs of the known people's test photos"
        thr_from = "validation photos, each also scored against the other people only"
    osr = open_set_report(rec, test_e, y[split.test], s_test)
    osd = osr.as_dict()
    if s_test is None:
        osd["strangers_rejected"] = osd["strangers_accepted"] = None
    return {"backbone": backbone.name, "weights": backbone.weights, "input_size": size, "method": method,
            "known": n_known, "shots": shots, "seed": seed,
            "photos": {"train": len(split.train), "val": len(split.val), "test": len(split.test),
                       "strangers": 0 if strangers is None else len(strangers)},
            "accuracy": round(accuracy, 4), "eer": round(float(eer), 4), "eer_on": eer_on,
            "open_set": osd, "threshold_from": thr_from, "background": _background_note(method, bg)}


def _background_note(method: str, bg) -> str:
    """What the whitening learnt from besides the enrolment photos, for the report."""
    if method != WHITEN:
        return "not used by this method"
    if bg is None:
        return ("none: fewer than 2 of the background people (ORL s1-s10) are outside this data; evaluate "
                "on other people (e.g. ORL s11-s40) to measure the product's default")
    return f"{bg.num_people} people of ORL s1-s10, none of them in this data"
