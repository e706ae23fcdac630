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
from .evaluation import best_match, threshold_from_strangers, threshold_without_strangers, verification
from .features import TAPPED, extract, extract_features
from .images import image_digest
from .recognizer import Recognizer, open_set_report
from .background import BACKGROUND_PEOPLE, background_faces
from .representations import DEFAULT_LAYERS, DEFAULT_PHONE_STRENGTH, DEFAULT_VIEWS, Representation, \
    fit_representation, mirrored
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
    """The packaged ORL faces minus anyone who appears in `faces` (same pixels): strangers for
    choosing a threshold when a learner's folder has none. None when nobody is left. With
    `without_background`, the background people (ORL s1–s10) are left out too (a whitening fitted
    with them must not be tested on them)."""
    orl = load_orl()
    mine = {image_digest(im) for im in faces.images}
    overlap = {int(lab) for im, lab in zip(orl.images, orl.labels) if image_digest(im) in mine}
    if without_background:
        overlap |= set(BACKGROUND_PEOPLE)
    keep = np.flatnonzero(~np.isin(orl.labels, sorted(overlap)))
    if len(np.unique(orl.labels[keep])) < 2:
        return None
    return orl.subset(keep, relabel=True)


def train_recognizer(faces, backbone: Backbone, size: int | None = None, method: str = DEFAULT_METHOD, epochs: int = 30,
                     seed: int = 0, n_threads: int | None = None, strangers="orl") -> tuple[Recognizer, dict]:
    """Everything `python -m helpers train` does: features, head, threshold, gallery of all photos.

    The threshold is the equal-error point between held-out photos of the people (about a third
    of each person's photos, scored against the gallery of the others) and photos of strangers:
    `strangers` is a FaceSet, 'orl' (the packaged faces of people not in `faces`) or None (then each
    held-out photo scored against the other people only plays the stranger, which is optimistic
    for a trained head: it learned to keep exactly these people apart).
    """
    size = size or backbone.input_size
    feats = method_features(backbone, faces.images, size, method, n_threads)
    labels = np.asarray(faces.labels)
    split = split_per_person(labels, val=0.2, test=0.15, seed=seed)
    held = np.sort(np.r_[split.val, split.test])
    use_bg = method == WHITEN and USE_BACKGROUND
    if isinstance(strangers, str) and strangers == "orl":
        strangers = stand_in_strangers(faces, without_background=use_bg)
    s_images = [] if strangers is None else list(strangers.images)
    rec = fit_recognizer(backbone, feats[split.train], labels[split.train], faces.names, size, method, epochs, seed,
                         train_images=[faces.images[i] for i in split.train], n_threads=n_threads,
                         background=background_for(faces.images, s_images) if use_bg else None)
    held_emb = embed_features(rec, feats[held])
    s_emb = None
    if strangers is not None and len(strangers):
        s_emb = embed_features(rec, method_features(backbone, strangers.images, size, method, n_threads))
    source = _choose_threshold(rec, held_emb, labels[held], strangers, s_emb)
    # final gallery: every photo (a head or whitening stays as fitted on the training part, so the
    # threshold found on held-out photos it never saw still applies)
    rec.enrol([], labels, faces.names, embeddings=embed_features(rec, feats))
    info = {"people": faces.num_people, "photos": len(faces), "method": _method_name(method),
            "threshold_from": source}
    return rec, info


def _choose_threshold(rec: Recognizer, held_emb: np.ndarray, held_labels: np.ndarray, strangers,
                      s_emb: np.ndarray | None) -> str:
    """Set `rec.threshold` from held-out embeddings (N, D) scored against its gallery and the
    strangers' embeddings (M, D) (None: none); returns where it came from, for the report."""
    if s_emb is not None:
        rec.threshold = threshold_from_strangers(rec.gallery_np, held_emb, held_labels, s_emb)
        return (f"equal error between {len(held_emb)} held-out photos of these people and {len(strangers)} photos "
                f"of {strangers.num_people} strangers ({'ORL' if 'ORL' in strangers.source else 'given'})")
    rec.threshold = threshold_without_strangers(rec.gallery_np, held_emb, held_labels)
    return (f"equal error on {len(held_emb)} held-out photos, each also scored against the other people only "
            "(no strangers available: optimistic)")


def enrol_recognizer(rec: Recognizer, faces, seed: int = 0, n_threads: int | None = None,
                     strangers="orl") -> tuple[Recognizer, dict]:
    """`python -m helpers train --from-checkpoint`: a recogniser that needs no training (such as
    `Recognizer.from_checkpoint`, a fine-tuned model of notebook 07) enrols every photo of `faces`;
    its threshold is chosen as `train_recognizer` chooses it (same split and strangers)."""
    labels = np.asarray(faces.labels)
    split = split_per_person(labels, val=0.2, test=0.15, seed=seed)
    held = np.sort(np.r_[split.val, split.test])
    if isinstance(strangers, str) and strangers == "orl":
        strangers = stand_in_strangers(faces)
    with threads(n_threads):
        emb = rec.embed(faces.images)
        s_emb = rec.embed(strangers.images) if strangers is not None and len(strangers) else None
    rec.enrol([], labels[split.train], faces.names, embeddings=emb[split.train])
    source = _choose_threshold(rec, emb[held], labels[held], strangers, s_emb)
    rec.enrol([], labels, faces.names, embeddings=emb)
    info = {"people": faces.num_people, "photos": len(faces), "threshold_from": source,
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
