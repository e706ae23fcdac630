"""The recogniser end to end, as `python -m helpers recognize --crop-faces` runs it, beside dlib's pipeline.

Photos: JPEG scenes (`benchmarks.scenes`: an ORL face enlarged, rotated and blended into a 640-1024
px colour photo, sometimes a second face, sometimes stored sideways with an EXIF tag) of development
people only (`benchmarks.threshold.partition()["dev"]`), written to files. The product's recogniser is
fitted the way `python -m helpers train` fits it (`train_recognizer`, the default method, no
calibration strangers, so that no test person is read) on 3 ORL photos of each of `KNOWN` development
people; the queries are other photos of them and photos of the other development people.

The product's steps, timed one by one over all photos as `cmd_recognize` runs them:
  decode: `helpers.data.images.read_image` (JPEG -> upright RGB);
  detect + align: `helpers.data.alignment.FaceStep(True)` (the face finder the product picks here: dlib's
    HOG detector + 5 landmarks + similarity warp when dlib is installed, else OpenCV's Haar box);
  preprocess: `helpers.data.preprocess.to_batch` in the recogniser's batches of 16 (`Recognizer.embed`);
  network: the recogniser's forward on those batches (the backbone's taps for the photo AND its
    mirror image, then the whitening): what `Recognizer.embed` runs (checked equal once);
  answer: `Recognizer.answer` (the gallery's best cosine against the threshold).
"of which the mirror pass": the network step minus the same forward without the mirror image,
timed beside it (not part of the total).

dlib's pipeline as `face_recognition` runs it by default, called through dlib directly
(`benchmarks.methods.Dlib`'s models): the same decode, HOG detector upsampled once
(`face_locations`' default), 5-point landmarks, 150 x 150 chip and the 128-D descriptor
(`face_encodings`' default, num_jitters=1), then the nearest enrolled descriptor within 0.6
(`compare_faces`' tolerance). Its gallery: descriptors of the same enrolment photos (untimed).

Both pipelines run in alternating rounds (the order swapped every round) after an untimed warm-up;
ms per photo: the median over rounds of a round's seconds / photos. The right answers are counted
as a sanity check only (a few photos; the accuracy benchmarks measure accuracy).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

KNOWN = 5
SHOTS = 3
SEED = 3
WARMUP = 2                 # untimed passes over 2 photos per pipeline
DLIB_UPSAMPLE = 1          # face_recognition.face_locations' default
DLIB_TOLERANCE = 0.6       # face_recognition.compare_faces' default
PRODUCT_STEPS = ("decode", "detect + align", "preprocess", "network (incl. mirror pass)", "answer")
DLIB_STEPS = ("decode", "detect", "landmarks + descriptor", "answer")


def photos(orl, dev_people, n_scenes: int, folder: Path) -> dict:
    """Enrolment photos (ORL crops of the known people) and `n_scenes` scene files of development people."""
    from .scenes import scene

    rng = np.random.default_rng(SEED)
    pool = [int(p) for p in dev_people]
    known = sorted(int(p) for p in rng.choice(pool, KNOWN, replace=False))
    enrol, labels, rest = [], [], []
    for p in pool:
        idx = rng.permutation(np.flatnonzero(orl.labels == p))
        if p in known:
            enrol += idx[:SHOTS].tolist()
            labels += [known.index(p)] * SHOTS
            rest += idx[SHOTS:].tolist()
        else:
            rest += idx.tolist()
    picks = rng.choice(rest, min(n_scenes, len(rest)), replace=False)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in picks:
        i = int(i)
        others = [q for q in pool if q != int(orl.labels[i])]
        second = orl.images[int(rng.choice(np.flatnonzero(orl.labels == int(rng.choice(others)))))]
        data, _ = scene(orl.images[i], [SEED, i], second)
        path = folder / f"{i}.jpg"
        path.write_bytes(data)
        person = int(orl.labels[i])
        files.append({"path": str(path), "person": orl.names[person], "known": person in known})
    return {"known": [orl.names[p] for p in known], "enrol": enrol, "labels": labels, "files": files}


class Product:
    """The product's recogniser, its steps timed separately."""

    def __init__(self, backbone, orl, setup: dict, size: int, threads: int):
        from helpers.data.alignment import FaceStep
        from helpers.data.folders import FaceSet
        from helpers.recognize.pipeline import RecognizerConfig, train_recognizer

        faces = FaceSet([orl.images[i] for i in setup["enrol"]], np.asarray(setup["labels"]), setup["known"],
                        [f"orl-{i}" for i in setup["enrol"]], "ORL (development people)")
        t0 = time.perf_counter()
        self.rec, _ = train_recognizer(faces, backbone, RecognizerConfig(size=size, threads=threads), strangers=None)
        self.fit_s = time.perf_counter() - t0
        self.rec.eval()
        self.step = FaceStep(True)
        self.mean, self.std = backbone.mean, backbone.std
        rep = getattr(self.rec.embedder, "representation", None)
        self.no_mirror = None
        if rep is not None and rep.tta:
            self.no_mirror = copy.copy(rep)        # a shallow copy: the same modules, mirror pass off
            self.no_mirror.tta = False
        self.method = self.rec.embedder.describe()

    def finder(self) -> str:
        return getattr(self.step.finder, "name", "none")

    def run(self, paths: list[str]) -> tuple[dict[str, float], list, float | None]:
        """(seconds per step, Match or None (no face) per photo, seconds of the network without the mirror)."""
        from helpers.data.images import read_image
        from helpers.data.preprocess import to_batch

        t: dict[str, float] = {}
        t0 = time.perf_counter()
        imgs = [read_image(p) for p in paths]
        t["decode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = [self.step(im) if self.step.applies(im) else [] for im in imgs]   # applies: always, in mode True
        crops = [f[0].image for f in found if f]
        t["detect + align"] = time.perf_counter() - t0
        t["preprocess"] = t["network (incl. mirror pass)"] = 0.0
        emb, bare = [], None
        with torch.inference_mode():
            for s in range(0, len(crops), 16):           # Recognizer.embed's batches
                t0 = time.perf_counter()
                x = torch.from_numpy(to_batch(crops[s:s + 16], self.rec.size, self.mean, self.std))
                t["preprocess"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                emb.append(self.rec(x).float().cpu())
                t["network (incl. mirror pass)"] += time.perf_counter() - t0
                if self.no_mirror is not None:
                    t0 = time.perf_counter()
                    self.no_mirror(x)
                    bare = (bare or 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        emb_np = torch.cat(emb).numpy() if emb else np.zeros((0, self.rec.embedding_dim), np.float32)
        matches = iter(self.rec.answer(emb_np) if len(emb_np) else [])
        t["answer"] = time.perf_counter() - t0
        self.last_crops, self.last_emb = crops, emb_np
        return t, [next(matches) if f else None for f in found], bare


class DlibPipeline:
    """dlib as face_recognition runs it (see the module's docstring)."""

    def __init__(self, orl, setup: dict):
        from .methods import Dlib

        d = Dlib()
        self.detector, self.shape, self.net, self.dlib = d.detector, d.shape, d.net, d.dlib
        gal = []
        for i in setup["enrol"]:
            a = np.ascontiguousarray(np.asarray(orl.images[i].convert("RGB")))
            faces = self.detector(a, DLIB_UPSAMPLE)
            box = max(faces, key=lambda r: r.width() * r.height()) if len(faces) else \
                self.dlib.rectangle(0, 0, a.shape[1] - 1, a.shape[0] - 1)  # ORL crops: the whole photo if missed
            gal.append(np.array(self.net.compute_face_descriptor(a, self.shape(a, box), 1)))
        self.gallery, self.names = np.stack(gal), [setup["known"][k] for k in setup["labels"]]

    def run(self, paths: list[str]) -> tuple[dict[str, float], list]:
        from helpers.data.images import read_image

        t = dict.fromkeys(DLIB_STEPS, 0.0)
        t0 = time.perf_counter()
        arrays = [np.ascontiguousarray(np.asarray(read_image(p))) for p in paths]
        t["decode"] = time.perf_counter() - t0
        answers = []
        for a in arrays:
            t0 = time.perf_counter()
            faces = self.detector(a, DLIB_UPSAMPLE)
            t["detect"] += time.perf_counter() - t0
            if not len(faces):
                answers.append(None)
                continue
            t0 = time.perf_counter()
            box = max(faces, key=lambda r: r.width() * r.height())
            desc = np.array(self.net.compute_face_descriptor(a, self.shape(a, box), 1))
            t["landmarks + descriptor"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            dist = np.linalg.norm(self.gallery - desc, axis=1)
            k = int(dist.argmin())
            answers.append(self.names[k] if dist[k] <= DLIB_TOLERANCE else "")
            t["answer"] += time.perf_counter() - t0
        return t, answers


def _summary(step_seconds: list[dict[str, float]], steps, n: int) -> dict:
    per_round = [sum(r[s] for s in steps) for r in step_seconds]
    ms = {s: 1000 * float(np.median([r[s] for r in step_seconds])) / n for s in steps}
    total = 1000 * float(np.median(per_round)) / n
    return {"ms_per_photo": round(total, 2), "ms_min": round(1000 * min(per_round) / n, 2),
            "ms_max": round(1000 * max(per_round) / n, 2), "rounds_ms": [round(1000 * x / n, 2) for x in per_round],
            "steps_ms": {s: round(v, 2) for s, v in ms.items()},
            "steps_share": {s: round(v / sum(ms.values()), 3) if sum(ms.values()) else None for s, v in ms.items()}}


def measure(backbone, size: int, n_scenes: int, rounds: int, folder: Path, threads: int) -> dict:
    """The product's row and dlib's row (or the reason one is missing)."""
    from helpers.data.folders import load_orl

    from .methods import dlib_available
    from .threshold import partition

    orl = load_orl()
    setup = photos(orl, partition()["dev"], n_scenes, folder)
    paths = [f["path"] for f in setup["files"]]
    out: dict = {"photos": len(paths), "rounds": rounds, "known_people": setup["known"],
                 "enrol_photos": len(setup["enrol"]), "input_size": size}
    runners: dict = {}
    try:
        product = Product(backbone, orl, setup, size, threads)
        for _ in range(WARMUP):
            product.run(paths[:2])                                    # warm-up (the first loads the finder)
        runners["product"] = product
        out["product"] = {"method": product.method, "finder": product.finder(), "fit_s": round(product.fit_s, 1)}
    except (ImportError, RuntimeError, ValueError) as e:              # e.g. no face detector here
        out["product"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    if dlib_available():
        try:
            runners["dlib"] = DlibPipeline(orl, setup)
            for _ in range(WARMUP):
                runners["dlib"].run(paths[:2])
            out["dlib"] = {"pipeline": f"face_recognition defaults: HOG upsampled {DLIB_UPSAMPLE}x, 5-point "
                                       f"landmarks, 128-D descriptor, nearest within {DLIB_TOLERANCE}"}
        except (ImportError, RuntimeError) as e:
            out["dlib"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    else:
        out["dlib"] = {"skipped": "dlib not installed (pip install -r requirements-baselines.txt)"}
    times: dict[str, list] = {k: [] for k in runners}
    bare: list[float] = []
    answers: dict[str, list] = {}
    for r in range(rounds):
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            got = runners[name].run(paths)
            times[name].append(got[0])
            answers[name] = got[1]
            if name == "product" and got[2] is not None:
                bare.append(got[2])
    n = len(paths)
    if "product" in runners:
        p = runners["product"]
        check = p.rec.embed(p.last_crops)
        out["product"].update(_summary(times["product"], PRODUCT_STEPS, n))
        out["product"]["same_as_embed"] = bool(np.allclose(check, p.last_emb, atol=1e-5))
        if bare:
            net = float(np.median([t["network (incl. mirror pass)"] for t in times["product"]]))
            out["product"]["mirror_pass_ms"] = round(1000 * (net - float(np.median(bare))) / n, 2)
        truth = setup["files"]
        out["product"]["no_face"] = sum(m is None for m in answers["product"])
        out["product"]["right"] = sum(m is not None and (m.name == f["person"] if f["known"] else not m.known)
                                      for m, f in zip(answers["product"], truth))
    if "dlib" in runners:
        out["dlib"].update(_summary(times["dlib"], DLIB_STEPS, n))
        truth = setup["files"]
        out["dlib"]["no_face"] = sum(a is None for a in answers["dlib"])
        out["dlib"]["right"] = sum(a is not None and (a == f["person"] if f["known"] else a == "")
                                   for a, f in zip(answers["dlib"], truth))
    if "product" in runners and "dlib" in runners:
        ratios = [sum(d.values()) / sum(p.values()) for p, d in zip(times["product"], times["dlib"])]
        out["dlib_over_product"] = round(float(np.median(ratios)), 3)
    return out
