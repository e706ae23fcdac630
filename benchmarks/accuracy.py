"""Accuracy protocol on the offline ORL faces: methods side by side, mean ± std over seeds.

Tasks (per seed; splits in benchmarks/protocol.py):
  * id40_k{1,3,5}: all 40 people known, k training photos each, 5 test photos each;
  * id9_k{1,3,5}: 9 known people drawn with the seed (the guide's setting);
  * eer: train on 20 people, equal error rate over every pair of the other 20 people's photos;
  * *_deg: the same with mildly degraded test photos (protocol.DEGRADE; training photos clean).
Identification is 1-NN by cosine between a test photo and the enrolled (training) photos,
in each method's representation (the linear probe uses its own classifier instead).

Methods:
  raw      raw pixels (32×32 grey) -- no learning at all;
  frozen   the course's frozen features (the backbone's pooled output);
  probe    logistic regression on the frozen features (helpers.evaluation.linear_probe_accuracy);
  arcface  the course's frozen training: Linear+BN embedding + ArcFace head fitted on the cached
           features of the training photos (helpers.train_head_on_features, defaults);
  tuned    frozen features improved without gradient training: layer2+layer3+final pooled
           features, mirror test-time augmentation, within-class whitening estimated on the
           training photos and their augmented views;
  arcface+ the ArcFace embedding trained on those multi-layer features of the training photos,
           their mirrors and augmented views, with mirror test-time augmentation;
  gradual  gradual unfreezing (helpers.unfreezing.gradual_schedule) at 112 px;
  full     full fine-tuning (helpers.unfreezing.full_schedule) at 112 px;
  dlib     dlib's 128-D face embedder (face-recognition-models + dlib-bin), if installed.
The expensive end-to-end methods (gradual, full) run only id40_k3 and eer, on fewer seeds.
Choices for 'tuned' and 'arcface+' come from the development ablation (people of seed 0's
training half only), which this benchmark recomputes and reports.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from helpers import load_backbone, train_head_on_features
from helpers.data import Split, load_orl
from helpers.evaluation import embed as embed_model
from helpers.evaluation import l2_normalize, linear_probe_accuracy, nearest_neighbour_accuracy, verification
from helpers.features import atomic_save
from helpers.images import image_digest
from helpers.runtime import cache_dir, threads

from .common import Figure, Section, now
from .featcache import layer_features
from .protocol import (DEGRADE, VIEWS, ProtocolData, flipped, identification_split, known_people, raw_pixels,
                       strangers_split)

KS = (1, 3, 5)
WHITEN_LAMBDA = 0.01  # within-class whitening regulariser (dev sweep over 1e-3, 1e-2, 1e-1)
COLUMNS = [("id40_k1", "40 known, k=1"), ("id40_k3", "40 known, k=3"), ("id40_k5", "40 known, k=5"),
           ("id9_k1", "9 known, k=1"), ("id9_k3", "9 known, k=3"), ("id9_k5", "9 known, k=5"),
           ("id40_k3_deg", "40 known, k=3, degraded"), ("eer", "strangers' EER"),
           ("eer_deg", "strangers' EER, degraded")]


# ------------------------------------------------------------------------------ features

class Bank:
    """Frozen features (layer2, layer3, final) of every photo in each version, computed once."""

    def __init__(self, backbone, data: ProtocolData, size: int):
        self.bb, self.data, self.size = backbone, data, size
        self._f: dict[str, dict[str, np.ndarray]] = {}

    def get(self, source: str, seed: int = 0) -> dict[str, np.ndarray]:
        key = source if source in ("clean", "flip") or source.startswith("view") else f"{source}{seed}"
        if key not in self._f:
            d = self.data
            images = {"clean": lambda: d.images, "flip": lambda: [flipped(i) for i in d.images],
                      "deg": lambda: d.degraded(seed), "degflip": lambda: [flipped(i) for i in d.degraded(seed)]}
            ims = d.views(int(source[4:])) if source.startswith("view") else images[source]()
            with threads(torch.get_num_threads()):
                f = layer_features(self.bb, ims, self.size)
            self._f[key] = {k: v.numpy() for k, v in f.items()}
        return self._f[key]


def represent(f: dict[str, np.ndarray], kind: str, norm: bool = True) -> np.ndarray:
    """'final': the pooled output (the course's features); 'multi': layer2 + layer3 + final pooled,
    each L2-normalised, concatenated. `norm` L2-normalises each row (what cosine 1-NN sees anyway)."""
    x = f["final"] if kind == "final" else \
        np.hstack([l2_normalize(f["final"]), l2_normalize(f["layer3"]), l2_normalize(f["layer2"])])
    return l2_normalize(x) if norm else x


@dataclass
class Ctx:
    """What a method sees for one seed: features, photos and the degraded copies of that seed."""

    data: ProtocolData
    bank: Bank
    seed: int
    n_views: int
    test_idx: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))

    def feats(self, kind: str, source: str, tta: bool = False, norm: bool = True) -> np.ndarray:
        """(N, D) features of every photo: source 'clean' or 'deg' (this seed's degraded copies).

        With `tta`, the mean of the photo's and its mirror image's normalised features.
        """
        x = represent(self.bank.get(source, self.seed), kind, norm or tta)
        if tta:
            mirror = represent(self.bank.get("flip" if source == "clean" else "degflip", self.seed), kind)
            x = l2_normalize(x + mirror)
        return x

    def train_views(self, kind: str, idx: np.ndarray, n_views: int, mirror: bool,
                    norm: bool = True) -> list[np.ndarray]:
        """Features of the augmented views (and mirrors) of the photos `idx`: extra training items."""
        out = [represent(self.bank.get(f"view{v}"), kind, norm)[idx] for v in range(n_views)]
        if mirror:
            out.append(represent(self.bank.get("flip"), kind, norm)[idx])
        return out


# ------------------------------------------------------------------------------ methods

class Fitted:
    """A method fitted on one task's training photos: embeddings (or predictions) of any photo."""

    def embed(self, source: str, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Method:
    key = ""
    label = ""
    classifier = False          # True: scored by its own predictions, no embedding (no EER)
    tasks: tuple | None = None  # None: every task
    max_seeds: int | None = None

    def fit(self, ctx: Ctx, train_idx: np.ndarray, train_y: np.ndarray) -> Fitted:
        raise NotImplementedError


class _Lookup(Fitted):
    def __init__(self, fn):
        self.fn = fn

    def embed(self, source, idx):
        return self.fn(source)[idx]


class RawPixels(Method):
    key, label = "raw", "raw pixels 1-NN (32×32 grey)"

    def fit(self, ctx, train_idx, train_y):
        cache = {}

        def get(source):
            if source not in cache:
                cache[source] = raw_pixels(ctx.data.images if source == "clean" else ctx.data.degraded(ctx.seed))
            return cache[source]
        return _Lookup(get)


def within_class_whitening(x: np.ndarray, y: np.ndarray, lam: float):
    """Centre on the training mean and whiten by the regularised within-class covariance.

    Directions in which photos of the same person vary (pose, light, crop: the augmented views
    supply that variation even with one photo per person) are shrunk; the rest are kept.
    W = (C_w + lam * max_eig(C_w) * I)^(-1/2), computed from the SVD of the within-class
    residuals (cheap when there are fewer items than dimensions).
    """
    mu = x.mean(0)
    z = x - mu
    for c in np.unique(y):
        z[y == c] -= z[y == c].mean(0)
    _, sv, vt = np.linalg.svd(z, full_matrices=False)
    ev = sv ** 2 / len(z)
    reg = lam * ev.max()
    base = 1 / np.sqrt(reg)
    scale = 1 / np.sqrt(ev + reg) - base  # on the residuals' span; `base` everywhere else

    def apply(f):
        f = f - mu
        return f * base + ((f @ vt.T) * scale) @ vt
    return apply


class Frozen(Method):
    """1-NN on frozen features; optionally multi-layer, mirror TTA, centring/whitening."""

    def __init__(self, key, label, kind="final", tta=False, proj=None, n_views=0, lam=WHITEN_LAMBDA):
        self.key, self.label, self.kind, self.tta, self.proj, self.n_views, self.lam = \
            key, label, kind, tta, proj, n_views, lam

    def fit(self, ctx, train_idx, train_y):
        f = lambda x: x  # noqa: E731
        if self.proj:
            xs = [ctx.feats(self.kind, "clean")[train_idx]] + ctx.train_views(self.kind, train_idx, self.n_views, True)
            x, y = np.vstack(xs), np.tile(train_y, len(xs))
            if self.proj == "center":
                mu = x.mean(0)
                f = lambda z: z - mu  # noqa: E731
            else:
                f = within_class_whitening(x, y, self.lam)
        cache = {}

        def get(source):
            if source not in cache:
                cache[source] = f(ctx.feats(self.kind, source, self.tta))
            return cache[source]
        return _Lookup(get)


class Probe(Method):
    key, label, classifier = "probe", "linear probe on frozen features", True

    def score(self, ctx, train_idx, train_y, test_idx, test_y, source):
        x = ctx.feats("final", "clean")
        q = ctx.feats("final", source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return linear_probe_accuracy(x[train_idx], train_y, q[test_idx], test_y, seed=ctx.seed)


class ArcFace(Method):
    """Embedding + ArcFace head trained on cached features (the course's frozen training)."""

    def __init__(self, key, label, kind="final", n_views=0, tta=False, epochs=50, norm=None):
        self.key, self.label, self.kind, self.n_views, self.tta, self.epochs = key, label, kind, n_views, tta, epochs
        # the course trains on the raw pooled features; with views/TTA everything is normalised alike
        self.norm = (n_views > 0 or tta or kind != "final") if norm is None else norm

    def fit(self, ctx, train_idx, train_y):
        xs = [ctx.feats(self.kind, "clean", norm=self.norm)[train_idx]] + \
            ctx.train_views(self.kind, train_idx, self.n_views, self.tta, self.norm)
        x = torch.tensor(np.vstack(xs), dtype=torch.float32)
        y = np.tile(train_y, len(xs))
        model, _ = train_head_on_features(x, y, epochs=self.epochs, seed=ctx.seed, progress=False)
        cache = {}

        def get(source):
            if source not in cache:
                with threads(1):
                    cache[source] = embed_model(model, torch.tensor(
                        ctx.feats(self.kind, source, self.tta, self.norm), dtype=torch.float32))
            return cache[source]
        return _Lookup(get)


class FineTune(Method):
    """End to end from photos with the course's schedules (helpers.unfreezing), at a reduced size."""

    tasks = ("id40_k3", "eer")

    def __init__(self, key, label, schedule, size=112, max_seeds=3, epochs=None):
        self.key, self.label, self.schedule, self.size, self.max_seeds, self.epochs = \
            key, label, schedule, size, max_seeds, epochs

    def fit(self, ctx, train_idx, train_y):
        from helpers import unfreezing as uf

        faces = ctx.data.faces
        labels = faces.labels
        # validation photos: each training person's photos outside train and test (for the fit's val curve)
        people = np.unique(labels[train_idx])
        pos_train = set(train_idx.tolist())
        rng = np.random.default_rng([ctx.seed, 23])
        val_idx = []
        for p in people:
            rest = [i for i in np.flatnonzero(labels == p) if i not in pos_train and i not in ctx.test_idx]
            if not rest:  # strangers' protocol: all photos are training photos; hold one out
                rest = [int(rng.choice([i for i in train_idx if labels[i] == p]))]
            val_idx += rest[:2]
        val_idx = np.array(sorted(set(val_idx)))
        train_only = np.array([i for i in train_idx if i not in set(val_idx.tolist())])
        test_idx = ctx.test_idx if len(ctx.test_idx) else val_idx
        every = np.concatenate([train_only, val_idx, test_idx])
        known = faces.subset(every, relabel=True)
        n1, n2 = len(train_only), len(val_idx)
        split = Split(np.arange(n1), np.arange(n1, n1 + n2), np.arange(n1 + n2, len(every)))
        bb = copy.deepcopy(ctx.bank.bb)
        data = uf.UnfreezeData(bb, known, None, split, self.size, threads=torch.get_num_threads(), batch_size=16)
        if self.schedule == "gradual":
            plans = uf.gradual_schedule(bb, **({"epochs": self.epochs} if self.epochs else {}))
        else:
            plans = uf.full_schedule(bb, **({"epochs": self.epochs} if self.epochs else {}))
        res = uf.run_schedule(data, plans, seed=ctx.seed, measure_memory=False)
        model = res.model.eval()
        transform = bb.transform(size=self.size)
        cache = {}

        def emb(source, idx):
            ims = ctx.data.images if source == "clean" else ctx.data.degraded(ctx.seed)
            out = {}
            todo = [i for i in idx if (source, int(i)) not in cache]
            with torch.inference_mode(), threads(torch.get_num_threads()):
                for s in range(0, len(todo), 32):
                    chunk = todo[s:s + 32]
                    e = model.embed(torch.stack([transform(ims[i]) for i in chunk])).numpy()
                    for i, v in zip(chunk, e):
                        cache[(source, int(i))] = v
            for i in idx:
                out[int(i)] = cache[(source, int(i))]
            return np.stack([out[int(i)] for i in idx])

        class _F(Fitted):
            def embed(self, source, idx):
                return emb(source, idx)
        return _F()


def dlib_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))


class Dlib(Method):
    """dlib's ResNet face embedder, as `face_recognition.face_encodings` runs it by default.

    HOG face detector (upsampled once), 5-point landmarks, 150×150 aligned chip, 128-D
    descriptor. A photo where no face is found gets the whole photo as its face box (ORL photos
    are face crops) and is counted in `fallbacks`. Called through dlib directly:
    face_recognition 1.3.0 imports pkg_resources, which setuptools >= 81 no longer has.
    """

    key, label = "dlib", "dlib face_recognition 128-D (trained on ~3 M faces)"

    def __init__(self):
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")
        root = os.path.join(list(spec.submodule_search_locations)[0], "models")
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(os.path.join(root, "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(os.path.join(root, "dlib_face_recognition_resnet_model_v1.dat"))
        self.dlib = dlib
        self._cache: dict[str, np.ndarray] = {}
        self.fallbacks: dict[str, int] = {}

    def descriptors(self, images, name: str = "") -> np.ndarray:
        h = hashlib.sha256(b"dlib-v2-hog-5pt")
        for im in images:
            h.update(image_digest(im).encode())
        path = cache_dir("benchmarks", "dlib") / f"{h.hexdigest()[:24]}.pt"
        if path.exists():
            saved = torch.load(path, weights_only=True)
            self.fallbacks[name] = int(saved["fallbacks"])
            return saved["x"].numpy()
        out, fallbacks = [], 0
        for im in images:
            a = np.ascontiguousarray(np.asarray(im.convert("RGB")))
            faces = self.detector(a, 1)
            if len(faces):
                box = max(faces, key=lambda r: r.width() * r.height())
            else:
                fallbacks += 1
                box = self.dlib.rectangle(0, 0, a.shape[1] - 1, a.shape[0] - 1)
            out.append(np.array(self.net.compute_face_descriptor(a, self.shape(a, box), 0)))
        x = torch.from_numpy(np.stack(out).astype(np.float32))
        atomic_save({"x": x, "fallbacks": torch.tensor(fallbacks)}, path)
        self.fallbacks[name] = fallbacks
        return x.numpy()

    def fit(self, ctx, train_idx, train_y):
        def get(source):
            key = "clean" if source == "clean" else f"deg{ctx.seed}"
            if key not in self._cache:
                self._cache[key] = self.descriptors(ctx.data.images if source == "clean"
                                                    else ctx.data.degraded(ctx.seed), key)
            return self._cache[key]
        return _Lookup(get)


# ------------------------------------------------------------------------------ tasks

def identification(method: Method, ctx: Ctx, people: np.ndarray, k: int, deg: bool = True) -> dict[str, float]:
    labels = ctx.data.labels
    sp = identification_split(labels, k, ctx.seed, people=people)
    ctx.test_idx = sp.test
    ytr, yte = sp.labels[sp.train], sp.labels[sp.test]
    out = {}
    sources = ("clean", "deg") if deg else ("clean",)
    if method.classifier:
        for src in sources:
            out[src] = 100 * method.score(ctx, sp.train, ytr, sp.test, yte, src)
        return out
    fitted = method.fit(ctx, sp.train, ytr)
    gallery = fitted.embed("clean", sp.train)
    for src in sources:
        out[src] = 100 * nearest_neighbour_accuracy(gallery, ytr, fitted.embed(src, sp.test), yte)
    return out


def strangers_eer(method: Method, ctx: Ctx, train_people: np.ndarray, strangers: np.ndarray) -> dict[str, float]:
    labels = ctx.data.labels
    tr = np.flatnonzero(np.isin(labels, train_people))
    st = np.flatnonzero(np.isin(labels, strangers))
    relabel = {int(p): i for i, p in enumerate(train_people)}
    ctx.test_idx = np.array([], dtype=int)
    fitted = method.fit(ctx, tr, np.array([relabel[int(l)] for l in labels[tr]]))
    return {src: 100 * verification(fitted.embed(src, st), labels[st]).eer for src in ("clean", "deg")}


def run_seed(method: Method, ctx: Ctx, n_people: int, n_small: int, ks) -> dict[str, float]:
    """Every task of one seed for one method: {column: value}."""
    res = {}
    want = lambda t: method.tasks is None or t in method.tasks  # noqa: E731
    everyone = np.arange(n_people)
    small = known_people(n_people, n_small, ctx.seed)
    for k in ks:
        if want(f"id40_k{k}"):
            r = identification(method, ctx, everyone, k)
            res[f"id40_k{k}"], res[f"id40_k{k}_deg"] = r["clean"], r["deg"]
        if want(f"id9_k{k}"):
            r = identification(method, ctx, small, k)
            res[f"id9_k{k}"], res[f"id9_k{k}_deg"] = r["clean"], r["deg"]
    if want("eer") and not method.classifier:
        tr, st = strangers_split(n_people, ctx.seed)
        r = strangers_eer(method, ctx, tr, st)
        res["eer"], res["eer_deg"] = r["clean"], r["deg"]
    return res


# ------------------------------------------------------------------------------ development ablation

def ablation(data: ProtocolData, bank: Bank, n_views: int, epochs: int) -> tuple[dict, list[str]]:
    """Each idea added in turn, measured on development people only (seed 0's training half).

    Identification among those 20 people (k = 1, 3; split seed 100; degraded copies of seed 0);
    EER: 10 of them train, the other 10 are the 'strangers'. The final test seeds never
    influence these choices.
    """
    n = data.faces.num_people
    dev = strangers_split(n, 0)[0]
    perm = np.random.default_rng(100).permutation(dev)
    dev_tr, dev_val = np.sort(perm[:len(dev) // 2]), np.sort(perm[len(dev) // 2:])
    ctx = Ctx(data, bank, 100, n_views)
    ctx_deg = Ctx(data, bank, 0, n_views)  # degraded copies of seed 0 (already cached)
    variants = [
        Frozen("frozen", "frozen features (final layer), 1-NN"),
        Frozen("b", "+ mirror test-time augmentation", tta=True),
        Frozen("c", "+ layer2 + layer3 features", kind="multi", tta=True),
        Frozen("d", "+ centring on the training mean", kind="multi", tta=True, proj="center", n_views=n_views),
        Frozen("tuned", "+ within-class whitening (training photos + views)", kind="multi", tta=True, proj="whiten",
               n_views=n_views),
        Frozen("e2", "within-class whitening on final-layer features only", kind="final", tta=True,
               proj="whiten", n_views=n_views),
        ArcFace("arcface", "ArcFace embedding on final features (course default)", epochs=epochs),
        ArcFace("g", "ArcFace on final features + views + mirror TTA", n_views=n_views, tta=True, epochs=epochs),
        ArcFace("arcface+", "ArcFace on multi-layer features + views + mirror TTA", kind="multi", n_views=n_views,
                tta=True, epochs=epochs),
    ]
    cols = ["k=1", "k=3", "k=3 degraded", "EER", "EER degraded"]
    out = {}
    for v in variants:
        row = {}
        for k in (1, 3):
            sp = identification_split(data.labels, k, 100, people=dev)
            ctx.test_idx = sp.test
            ytr = sp.labels[sp.train]
            fitted = v.fit(ctx, sp.train, ytr)
            g = fitted.embed("clean", sp.train)
            row[f"k={k}"] = 100 * nearest_neighbour_accuracy(g, ytr, fitted.embed("clean", sp.test), sp.labels[sp.test])
            if k == 3:
                ctx_deg.test_idx = sp.test
                fd = v.fit(ctx_deg, sp.train, ytr)
                row["k=3 degraded"] = 100 * nearest_neighbour_accuracy(fd.embed("clean", sp.train), ytr,
                                                                       fd.embed("deg", sp.test), sp.labels[sp.test])
        r = strangers_eer(v, ctx_deg, dev_tr, dev_val)
        row["EER"], row["EER degraded"] = r["clean"], r["deg"]
        out[v.label] = {"key": v.key, **{c: round(row[c], 2) for c in cols}}
        print(f"    [dev] {v.label:<58} " + "  ".join(f"{c} {row[c]:.1f}" for c in cols), flush=True)
    return out, cols


# ------------------------------------------------------------------------------ the benchmark

def _stats(vals: list[float]) -> dict:
    return {"mean": round(float(np.mean(vals)), 2), "std": round(float(np.std(vals)), 2), "seeds": len(vals),
            "runs": [round(v, 2) for v in vals]}


def run(smoke: bool = False, seeds: int = 5, backbone: str = "auto", size: int = 224, n_views: int = 8,
        epochs: int = 50, finetune_seeds: int = 3, finetune_size: int = 112, methods: list[str] | None = None,
        previous: dict | None = None) -> Section:
    """The protocol for every method, or only `methods` (keys), keeping the other methods' rows of
    `previous` (an earlier accuracy section of the results file, same protocol settings)."""
    faces = load_orl()
    ft_epochs = {}
    n_small = 9
    if smoke:
        keep = np.flatnonzero(faces.labels < 6)
        faces = faces.subset(keep, relabel=True)
        seeds, size, n_views, epochs, finetune_seeds, finetune_size, n_small = 1, 32, 1, 2, 1, 32, 3
        ft_epochs = {"gradual": (1, 1, 1), "full": 1}
    with threadpool_limits(1):  # small BLAS/LAPACK problems stall when two threads share busy cores
        return _run(faces, smoke, seeds, backbone, size, n_views, epochs, finetune_seeds, finetune_size,
                    n_small, ft_epochs, methods, previous)


def _run(faces, smoke, seeds, backbone, size, n_views, epochs, finetune_seeds, finetune_size, n_small,
         ft_epochs, only=None, previous=None) -> Section:
    data = ProtocolData(faces, n_views=n_views)
    bb = load_backbone(backbone, allow_download=False, verbose=False)
    bank = Bank(bb, data, size)
    n_people = faces.num_people
    t0 = time.perf_counter()
    print(f"  [accuracy] features of {len(faces)} photos ({size}px, {bb.name}): clean, mirrored, "
          f"{n_views} views, degraded × {seeds} seeds (cached on disk)", flush=True)
    for src in ["clean", "flip"] + [f"view{v}" for v in range(n_views)]:
        bank.get(src)
    for s in range(seeds):
        bank.get("deg", s), bank.get("degflip", s)
    feat_s = time.perf_counter() - t0

    abl, abl_cols = ablation(data, bank, n_views, epochs)
    methods: list[Method] = [
        RawPixels(),
        Frozen("frozen", "frozen features 1-NN"),
        Probe(),
        ArcFace("arcface", "ArcFace embedding, frozen backbone (course default)", epochs=epochs),
        Frozen("tuned", "frozen multi-layer features + mirror TTA + within-class whitening", kind="multi",
               tta=True, proj="whiten", n_views=n_views),
        ArcFace("arcface+", "ArcFace on multi-layer features + augmented views + mirror TTA", kind="multi",
                n_views=n_views, tta=True, epochs=epochs),
        FineTune("gradual", f"gradual unfreezing ({finetune_size} px)", "gradual", finetune_size, finetune_seeds,
                 ft_epochs.get("gradual")),
        FineTune("full", f"full fine-tuning ({finetune_size} px)", "full", finetune_size, finetune_seeds,
                 ft_epochs.get("full")),
    ]
    notes = []
    if smoke:
        notes.append("dlib baseline not run in smoke mode")
    elif dlib_available():
        methods.append(Dlib())
    else:
        notes.append("dlib baseline skipped: pip install -r requirements-baselines.txt to include it")
    table, timing, measured = {}, {}, {}
    kept = _kept_rows(previous, only, [m.key for m in methods], seeds)
    for m in methods:
        if m.key in kept:
            table[m.key], timing[m.key], measured[m.key] = kept[m.key]
            print(f"  [accuracy] {m.label}: kept from the run of {measured[m.key]}", flush=True)
            continue
        measured[m.key] = now()
        t1 = time.perf_counter()
        runs: dict[str, list[float]] = {}
        for s in range(seeds if m.max_seeds is None else min(seeds, m.max_seeds)):
            ctx = Ctx(data, bank, s, n_views)
            for col, v in run_seed(m, ctx, n_people, n_small, KS).items():
                runs.setdefault(col, []).append(v)
        table[m.key] = {c: _stats(v) for c, v in runs.items()}
        timing[m.key] = round(time.perf_counter() - t1, 1)
        shown = "  ".join(f"{lab} {table[m.key][c]['mean']:.1f}" for c, lab in COLUMNS if c in table[m.key])
        print(f"  [accuracy] {m.label}: {shown}  ({timing[m.key]:.0f} s)", flush=True)

    sec = Section("Accuracy protocol", config={
        "backbone": bb.describe(), "input_size": size, "seeds": seeds, "views": n_views, "head_epochs": epochs,
        "finetune": f"{finetune_size} px, {finetune_seeds} seeds, tasks id40_k3 and eer", "people": n_people,
        "whitening_lambda": WHITEN_LAMBDA})
    sec.details = {
        "seeds": seeds,
        "columns": [{"key": c, "label": lab} for c, lab in COLUMNS],
        "methods": [{"key": m.key, "label": m.label} for m in methods],
        "table": table,
        "ablation": abl, "ablation_columns": abl_cols,
        "seconds": {"features": round(feat_s, 1), **timing},
        "measured": measured,
        "protocol": [
            f"ORL faces, {n_people} people × 10 photos; per seed and person 5 test photos, k = 1, 3, 5 of the "
            "others for training (the test photos do not change with k); 9 known people drawn per seed.",
            "Identification: 1-NN by cosine to the enrolled training photos in each method's representation "
            "(the linear probe: its own prediction).",
            "Strangers' EER: the people halved per seed; trained on one half, every pair of the other half's "
            "photos scored by cosine; EER where false accepts = false rejects.",
            f"Degraded test photos (training photos stay clean): {DEGRADE}; deterministic per seed and photo.",
            f"Augmented training views ('views'): {n_views} per photo, {VIEWS}.",
            f"Fine-tuning rows (gradual, full): {finetune_size} px, the course's schedules "
            "(helpers.unfreezing), only 40 known k=3 and strangers' EER, on "
            f"{min(seeds, finetune_seeds)} seeds.",
            "Hyper-parameters of 'tuned' and 'arcface+' were chosen on the development ablation above "
            "(20 people of seed 0's training half), never on test photos.",
        ],
    }
    chosen = designate(abl)
    sec.details["chosen_on_dev"] = chosen
    sec.figures = target_figures(table, chosen, "dlib" in table)
    dl = next((m for m in methods if isinstance(m, Dlib)), None)
    no_face = dl.fallbacks if dl is not None and "dlib" not in kept else \
        (previous or {}).get("details", {}).get("dlib_no_face_found")
    if no_face:  # photos per version (clean, degraded per seed) where the HOG detector found no face
        sec.details["dlib_no_face_found"] = no_face
        notes.append(f"dlib found no face (whole photo used as the box) in: {no_face} photos")
    if kept:
        notes.append(f"rows kept from an earlier run of the same protocol (accuracy is deterministic per seed): "
                     f"{', '.join(sorted(kept))}; rerun here: {', '.join(k for k in table if k not in kept)}")
    sec.notes = notes
    return sec


def _kept_rows(previous: dict | None, only: list[str] | None, keys: list[str], seeds: int) -> dict:
    """{key: (table row, seconds, when measured)} of the methods not rerun, from `previous`."""
    if not only:
        return {}
    unknown = sorted(set(only) - set(keys))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {keys}")
    if not previous or previous.get("details", {}).get("seeds") != seeds:
        raise ValueError("--methods needs an earlier full accuracy run with the same number of seeds in the "
                         "results file")
    d = previous["details"]
    missing = [k for k in keys if k not in only and k not in d["table"]]
    if missing:
        raise ValueError(f"the earlier run has no rows for {missing}: rerun them too")
    when = d.get("measured", {})
    return {k: (d["table"][k], d["seconds"].get(k), when.get(k, previous.get("started", "?")))
            for k in keys if k not in only}


TARGETS = [("id40_k1", "40 known, k=1", 88.0, True, "k=1"), ("id40_k3", "40 known, k=3", 97.0, True, "k=3"),
           ("id40_k3_deg", "40 known, k=3, degraded test photos", 92.0, True, "k=3 degraded"),
           ("eer", "strangers' EER", 5.0, False, "EER")]
NAMES = {"frozen": "frozen 1-NN", "arcface": "ArcFace, course default", "tuned": "multi-layer + TTA + whitening",
         "arcface+": "ArcFace + multi-layer + views + TTA"}


def designate(abl: dict) -> dict[str, str]:
    """For each target, the course method that did best on the development people (never test photos)."""
    rows = [r for r in abl.values() if r.get("key") in NAMES]
    out = {}
    for col, _, _, higher, dev_col in TARGETS:
        best = (max if higher else min)(rows, key=lambda r: r[dev_col])
        out[col] = best["key"]
    return out


def target_figures(table: dict, chosen: dict[str, str], has_dlib: bool) -> list[Figure]:
    """For each target: the method chosen on development people, beside frozen features and dlib (same run)."""
    out = []
    for col, label, target, higher, _ in TARGETS:
        m = chosen.get(col)
        if m not in table or col not in table[m]:
            continue
        best = table[m][col]
        base = table["frozen"][col]["mean"]
        diff = best["mean"] - base
        ratio_label = f"{diff:+.1f} points vs frozen"
        if has_dlib and col in table.get("dlib", {}):
            ceil = table["dlib"][col]["mean"]
            if (ceil - base) * (1 if higher else -1) > 1e-9:  # dlib ahead of frozen: share of the gap closed
                ratio_label += f"; dlib {ceil:.1f} %: {100 * diff / (ceil - base):.0f} % of the way"
            else:
                ratio_label += f"; dlib {ceil:.1f} % (not ahead of frozen features here)"
        out.append(Figure(f"accuracy.{col}", f"{label}: {NAMES[m]} (chosen on dev people)", best["mean"], "%",
                          "frozen features 1-NN", base, None, ratio_label, f"{'≥' if higher else '≤'} {target:g} %",
                          best["mean"] >= target if higher else best["mean"] <= target, spread=best["std"]))
    return out
