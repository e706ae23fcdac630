"""From photos to a working recogniser: features, the embedder (`helpers.recognize.embedders`), the threshold, the
gallery; and the course's evaluation protocol on a fixed split (what `python -m helpers evaluate` runs).

Methods (`METHODS`, the keys of `helpers.recognize.embedders.EMBEDDERS`; the default is the one that won on the
benchmark's development people, see benchmarks/RESULTS.md):
  * multilayer-tta-whiten: frozen features of several layers (the final output and `layer3` averaged
    over a 4 x 4 grid, `DEFAULT_LAYERS`), mirror test-time augmentation and
    within-class whitening fitted on the enrolment photos and augmented (and "phone") views of them,
    plus a background of other people's photos (ORL s1–s10 minus anyone enrolled or evaluated,
    `helpers.data.background`) when `RecognizerConfig.background` (`helpers.features.representations`); no gradient training;
  * head: an embedding + ArcFace head trained on the frozen features;
  * raw: the frozen backbone's features as they are.
Every function takes its settings as one `RecognizerConfig`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..models.backbones import Backbone
from ..data.folders import FaceDataError, FaceSet, load_orl
from ..data.splits import split_known_strangers, split_people, split_per_person
from .embedders import DEFAULT_METHOD, EMBEDDERS, METHODS, WHITEN, RecognizerConfig, RawEmbedder
from ..evaluate.metrics import best_match, threshold_from_strangers, threshold_without_strangers, verification
from .recognizer import Recognizer, open_set_report
from ..data.background import BACKGROUND_PEOPLE, background_faces, people_seen
from ..evaluate.calibration import FOLDS, RULE, Calibration, calibrate_fixed, fold_of, fold_scores, mean_gallery
from ..runtime import threads

__all__ = ["DEFAULT_METHOD", "EMBEDDERS", "METHODS", "WHITEN", "RecognizerConfig", "USE_BACKGROUND", "background_for",
           "calibrate", "embed_features", "enrol_recognizer", "evaluate_protocol", "features_for", "fit_recognizer",
           "method_features", "stand_in_strangers", "train_recognizer"]
USE_BACKGROUND = RecognizerConfig().background   # the default: the product's whitening uses the background people


def background_for(*image_lists, cfg: RecognizerConfig = RecognizerConfig()) -> "FaceSet | None":
    """The product's background (ORL s1–s10) minus anyone with a photo in `image_lists` (pass every
    photo that will be enrolled or evaluated: known people, queries, strangers); None when `cfg`'s
    method does not use one.

    Notebook 06.
    """
    return background_faces(*image_lists) if cfg.uses_background() else None


def features_for(backbone: Backbone, images: Sequence, size: int | None = None, n_threads: int | None = None):
    """Frozen features (N, F) at input `size`, from the course's on-disk cache when already computed.

    Not run by a notebook or the command line.
    """
    return RawEmbedder(backbone, RecognizerConfig("raw", size, threads=n_threads)).features(images)


def method_features(backbone: Backbone, images: Sequence, cfg: RecognizerConfig = RecognizerConfig()):
    """What `fit_recognizer` and `embed_features` take for `cfg.method` (`Embedder.features`): backbone
    features (N, F) for 'raw' and 'head'; multi-layer + mirror TTA vectors before whitening for the
    whitened method.

    Notebook 06.
    """
    return cfg.embedder(backbone).features(images)


def fit_recognizer(backbone: Backbone, train_feats, train_labels, names: Sequence[str],
                   cfg: RecognizerConfig = RecognizerConfig(), train_images: Sequence | None = None,
                   background=None, exclude_images: Sequence = ()) -> Recognizer:
    """A recogniser from cached features (`method_features` of `train_images` with the same `cfg`): its
    embedder is fitted (`helpers.recognize.embedders`: 'head' trains an embedding + ArcFace head, 'raw' learns
    nothing, the whitened method fits its whitening on `train_images` and their views) and the gallery
    is enrolled from the same photos.

    `background` (methods that use one): None (none), 'orl' (the product's, ORL s1–s10) or a FaceSet
    of other people. Any background person with a photo among `train_images` or `exclude_images` is
    dropped: pass every photo you will evaluate (queries, strangers) as `exclude_images`, e.g.
    `background=background_for(known.images, strangers.images)` or `background='orl',
    exclude_images=[*known.images, *strangers.images]`.

    Notebook 06.
    """
    labels = np.asarray(train_labels)
    embedder = cfg.embedder(backbone).fit(train_feats, labels, train_images, background, exclude_images)
    rec = Recognizer(backbone, size=cfg.size, names=names, embedder=embedder)
    rec.enrol([], labels, names, embeddings=embedder.embed(train_feats))
    return rec.eval()


def embed_features(rec: Recognizer, feats) -> np.ndarray:
    """The recogniser's embeddings (N, D) from `method_features` (the same as `rec.embed` of the photos).

    Notebook 06.
    """
    return rec.embedder.embed(feats)


def stand_in_strangers(faces: FaceSet, without_background: bool = False) -> FaceSet | None:
    """The packaged ORL faces minus anyone who appears in `faces` (same pixels, or a near copy:
    `helpers.data.background.people_seen`): strangers for choosing a threshold when a learner's folder
    has none. None when nobody is left. With `without_background`, the background people (ORL
    s1–s10) are left out too (they are scored as impostors by `calibrate`, cross-fitted).

    Command line: `python -m helpers ...`.
    """
    orl = load_orl()
    overlap = people_seen(orl, faces.images)
    if without_background:
        overlap |= set(BACKGROUND_PEOPLE)
    keep = np.flatnonzero(~np.isin(orl.labels, sorted(overlap)))
    if len(np.unique(orl.labels[keep])) < 2:
        return None
    return orl.subset(keep, relabel=True)


def calibrate(backbone: Backbone, images: Sequence, labels, feats, cfg: RecognizerConfig = RecognizerConfig(),
              stranger_feats=None, background: FaceSet | None = None, folds: int = FOLDS,
              rule: str = RULE) -> Calibration:
    """Genuine and impostor scores for the threshold, cross-fitted (`helpers.evaluate.calibration`): for each of
    `folds` folds (photo j of each person in fold j mod K), the embedder is fitted again without the
    fold's photos (`Embedder.cross_fit`; whitening: on the cached enrolment views of the other photos and
    the background minus the fold's background people; head: trained again) and the fold is scored
    against it. `feats`: `method_features` of `images`; `stranger_feats`: the same of stranger photos, or
    None; `background`: used only by embedders that use one, whose people are then impostors too.

    Command line: `python -m helpers ...`.
    """
    labels = np.asarray(labels)
    rank = fold_of(labels)
    k = max(2, min(folds, int(rank.max()) + 1))
    fold = rank % k
    embedder = cfg.embedder(backbone)
    if not embedder.uses_background:
        background = None
    genuine, imp = [], {"own other people": [], "background people": [], "strangers": []}
    if background is not None:
        bf, bl = embedder.features(background.images), np.asarray(background.labels)
    sf = None if stranger_feats is None or not len(stranger_feats) else np.asarray(stranger_feats)
    for f, fitted in embedder.cross_fit(feats, labels, fold, k, images, background):
        if fitted is None:
            continue
        tr, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        people = np.unique(labels[tr])
        gallery = mean_gallery(fitted.embed(feats[tr]), labels[tr], people)
        g, o = fold_scores(gallery, people, fitted.embed(feats[held]), labels[held])
        genuine += list(g)
        imp["own other people"] += list(o)
        if background is not None and (bl % k == f).any():
            imp["background people"] += list(best_match(gallery, fitted.embed(bf[bl % k == f]))[1])
        if sf is not None and (np.arange(len(sf)) % k == f).any():
            imp["strangers"] += list(best_match(gallery, fitted.embed(sf[np.arange(len(sf)) % k == f]))[1])
    sources = {name: len(v) for name, v in imp.items() if v}
    return Calibration(np.array(genuine), np.concatenate([np.asarray(v, float) for v in imp.values()]),
                       sources, rule, k)


def train_recognizer(faces, backbone: Backbone, cfg: RecognizerConfig = RecognizerConfig(),
                     strangers="orl") -> tuple[Recognizer, dict]:
    """Everything `python -m helpers train` does: features, the embedder, gallery and threshold.

    The recogniser is fitted on every photo. Its threshold is `helpers.evaluate.calibration.RULE` on cross-fitted
    scores (`calibrate`): every photo against its person's gallery entry made without it (genuine),
    and impostors: each photo against the other people, the background people (methods that use them)
    and `strangers`: a FaceSet, 'orl' (the packaged faces of people not in `faces`, minus the background
    people, who are already scored) or None. The file records the expected false-accept and
    false-reject rates (`Recognizer.calibration`).

    Command line: `python -m helpers ...`.
    """
    feats = method_features(backbone, faces.images, cfg)
    labels = np.asarray(faces.labels)
    use_bg = cfg.uses_background()
    if isinstance(strangers, str) and strangers == "orl":
        strangers = stand_in_strangers(faces, without_background=use_bg)
    s_images = [] if strangers is None else list(strangers.images)
    bg = background_for(faces.images, s_images, cfg=cfg)
    rec = fit_recognizer(backbone, feats, labels, faces.names, cfg, train_images=list(faces.images), background=bg)
    sf = method_features(backbone, s_images, cfg) if s_images else None
    cal = calibrate(backbone, faces.images, labels, feats, cfg, sf, bg)
    rec.threshold = cal.threshold
    rec.calibration = cal.record()
    info = {"people": faces.num_people, "photos": len(faces), "method": _method_name(cfg),
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
    (`helpers.evaluate.calibration.calibrate_fixed`: nothing to refit). `seed` is accepted for the command line.

    Command line: `python -m helpers ...`.
    """
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
            "method": f"fine-tuned {rec.backbone.name} + embedding of a helpers.train.trainer run, no training here"}
    return rec.eval(), info


def _method_name(cfg: RecognizerConfig) -> str:
    """What `train` prints about the method."""
    title = EMBEDDERS[cfg.method].title
    if cfg.uses_background():
        title += " with background people"
    return title + (", no gradient training" if EMBEDDERS[cfg.method].uses_background else "")


def evaluate_protocol(faces, backbone: Backbone, cfg: RecognizerConfig = RecognizerConfig(), n_known: int = 9,
                      shots: int | None = None, degrade=None) -> dict:
    """The course's evaluation on a fixed split; returns plain numbers (what `evaluate --json` prints).

    Known people: train (optionally `shots` photos each) / validation / test, split with `cfg.seed`.
    Strangers: the other people, split in two halves by person: the threshold is chosen on validation
    photos + the first half, open-set rates are measured on test photos + the second half; EER over all
    stranger pairs. With no strangers, the threshold treats each validation photo scored against
    the other people as a stranger, and EER is over the known people's test photos. `degrade(img, i)`:
    applied to the query photos (validation, test, strangers).

    Notebook 06.
    """
    size, seed = cfg.input_size(backbone), cfg.seed
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
    kf = method_features(backbone, k_images, cfg)
    # the background: ORL s1-s10 minus anyone here (known or stranger, as given or degraded)
    bg = background_for(known.images, k_images, [] if strangers is None else strangers.images, cfg=cfg)
    rec = fit_recognizer(backbone, kf[split.train], y[split.train], known.names, cfg,
                         train_images=[k_images[i] for i in split.train], background=bg)
    gallery = rec.gallery_np
    val_e, test_e = embed_features(rec, kf[split.val]), embed_features(rec, kf[split.test])
    idx, _ = best_match(gallery, test_e)
    accuracy = float((idx == y[split.test]).mean())
    s_val = s_test = None
    if strangers is not None:
        s_images = list(strangers.images)
        if degrade is not None:
            s_images = [degrade(im, 100_000 + i) for i, im in enumerate(s_images)]
        sf = method_features(backbone, s_images, cfg)
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
    return {"backbone": backbone.name, "weights": backbone.weights, "input_size": size, "method": cfg.method,
            "known": n_known, "shots": shots, "seed": seed,
            "photos": {"train": len(split.train), "val": len(split.val), "test": len(split.test),
                       "strangers": 0 if strangers is None else len(strangers)},
            "accuracy": round(accuracy, 4), "eer": round(float(eer), 4), "eer_on": eer_on,
            "open_set": osd, "threshold_from": thr_from, "background": _background_note(cfg, bg)}


def _background_note(cfg: RecognizerConfig, bg) -> str:
    """What the embedder learnt from besides the enrolment photos, for the report."""
    if not EMBEDDERS[cfg.method].uses_background:
        return "not used by this method"
    if not cfg.background:
        return "not used (RecognizerConfig.background is False)"
    if bg is None:
        return ("none: fewer than 2 of the background people (ORL s1-s10) are outside this data; evaluate "
                "on other people (e.g. ORL s11-s40) to measure the product's default")
    return f"{bg.num_people} people of ORL s1-s10, none of them in this data"
