"""The methods the accuracy protocol compares, on cached features (benchmarks/featcache.py).

Each method is fitted on one task's training photos (indices into the 400 ORL photos, with
labels) and then embeds any photo, clean or degraded; identification is 1-NN by cosine in that
embedding. The whitened method is the library's own (`helpers.features.representations`): the benchmark
measures what the product runs.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from helpers import train_head_on_features
from helpers.evaluate.metrics import embed as embed_model
from helpers.evaluate.metrics import l2_normalize, linear_probe_accuracy
from helpers.data.images import image_digest
from helpers.io import atomic_save
from helpers.features.representations import combine, fit_whitening
from helpers.runtime import cache_dir, threads

from .featcache import layer_features
from .protocol import ProtocolData, flipped, raw_pixels

LAYER_SETS = {"final": (), "final+layer3": ("layer3",), "final+layer3+layer2": ("layer3", "layer2")}


class Bank:
    """Frozen features (layer2, layer3, final) of every photo in each version, computed once."""

    def __init__(self, backbone, data: ProtocolData, size: int):
        self.bb, self.data, self.size = backbone, data, size
        self._f: dict[str, dict[str, np.ndarray]] = {}

    def get(self, source: str, seed: int = 0) -> dict[str, np.ndarray]:
        fixed = source in ("clean", "flip") or source.startswith(("view", "phone"))
        key = source if fixed else f"{source}{seed}"
        if key not in self._f:
            d = self.data
            images = {"clean": lambda: d.images, "flip": lambda: [flipped(i) for i in d.images],
                      "deg": lambda: d.degraded(seed), "degflip": lambda: [flipped(i) for i in d.degraded(seed)]}
            if source.startswith("view"):
                ims = d.views(int(source[4:]))
            elif source.startswith("phone"):  # "phone{strength}:{view}"
                strength, view = source[5:].split(":")
                ims = d.phone(int(view), float(strength))
            else:
                ims = images[source]()
            f = layer_features(self.bb, ims, self.size)
            self._f[key] = {k: v.numpy() for k, v in f.items()}
        return self._f[key]


@dataclass
class Ctx:
    """What a method sees for one seed: the feature bank and this seed's degraded copies."""

    data: ProtocolData
    bank: Bank
    seed: int
    background: tuple = ()  # ORL people a background-whitened method may use (never evaluated ones)
    _memo: dict = field(default_factory=dict)

    def feats(self, layers: tuple, source: str, tta: bool = False) -> np.ndarray:
        """(N, D) multi-layer vectors (`combine`) of every photo, source 'clean' or 'deg'; with `tta`,
        the normalised sum with the mirror image's (what `Representation.unwhitened` computes)."""
        key = (layers, source, tta)
        if key not in self._memo:
            x = combine(self.bank.get(source, self.seed), layers)
            if tta:
                m = combine(self.bank.get("flip" if source == "clean" else "degflip", self.seed), layers)
                x = l2_normalize(x + m)
            self._memo[key] = x
        return self._memo[key]

    def views(self, layers: tuple, idx: np.ndarray, n_views: int, n_phone: int = 0,
              strength: float = 1.0) -> list[np.ndarray]:
        """Un-averaged vectors of the mirror images, `n_views` augmented views and `n_phone` phone views
        of photos `idx` (what `helpers.features.representations.enrolment_set` adds to the photos themselves)."""
        out = [combine(self.bank.get("flip"), layers)[idx]]
        out += [combine(self.bank.get(f"view{v}"), layers)[idx] for v in range(n_views)]
        return out + [combine(self.bank.get(f"phone{strength:g}:{v}"), layers)[idx] for v in range(n_phone)]

    def enrolment(self, layers: tuple, idx: np.ndarray, y: np.ndarray, n_views: int, n_phone: int = 0,
                  strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, labels) of `helpers.features.representations.enrolment_set` for photos `idx` labelled `y`."""
        xs = [self.feats(layers, "clean")[idx]] + self.views(layers, idx, n_views, n_phone, strength)
        return np.vstack(xs), np.tile(y, len(xs))


class Fitted:
    def __init__(self, fn):
        self.fn, self._cache = fn, {}

    def embed(self, source: str, idx: np.ndarray) -> np.ndarray:
        if source not in self._cache:
            self._cache[source] = self.fn(source)
        return self._cache[source][idx]


class Method:
    key, label = "", ""
    classifier = False   # scored by its own predictions: no embedding, no EER
    cost = 0             # tie-break order, cheapest first (stated in advance)

    def fit(self, ctx: Ctx, train_idx: np.ndarray, train_y: np.ndarray) -> Fitted:
        raise NotImplementedError

    def settings(self) -> dict:
        return {}


class RawPixels(Method):
    key, label, cost = "raw", "raw pixels 1-NN (32×32 grey)", 0

    def fit(self, ctx, train_idx, train_y):
        return Fitted(lambda s: raw_pixels(ctx.data.images if s == "clean" else ctx.data.degraded(ctx.seed)))


class Frozen(Method):
    """1-NN on frozen features: `layers` beside the final output, mirror TTA, within-class whitening
    with strength `lam` fitted on the training photos, their mirrors, `n_views` augmented views and
    `n_phone` phone views (blur + JPEG of that `strength`); with `background`, the same of every photo
    of the context's background people joins the within-class covariance (`fit_whitening`)."""

    def __init__(self, key, label, layers=(), tta=False, whiten=False, lam=0.01, n_views=0, cost=1,
                 background=False, n_phone=0, strength=1.0):
        self.key, self.label, self.layers, self.tta, self.whiten, self.lam, self.n_views, self.cost = \
            key, label, tuple(layers), tta, whiten, lam, n_views, cost
        self.background, self.n_phone, self.strength = background, n_phone, strength

    def settings(self):
        return {"layers": ["final", *self.layers], "tta": self.tta, "whiten": self.whiten,
                **({"lam": self.lam, "views": self.n_views, "background": self.background,
                    "phone_views": self.n_phone, "phone_strength": self.strength} if self.whiten else {})}

    def fit(self, ctx, train_idx, train_y):
        f = None
        if self.whiten:
            kw = dict(n_phone=self.n_phone, strength=self.strength)
            bg = None
            if self.background and len(ctx.background):
                b_idx = np.flatnonzero(np.isin(ctx.data.labels, ctx.background))
                if np.isin(ctx.data.labels[train_idx], ctx.background).any():
                    raise AssertionError("a background person is enrolled")
                bg = ctx.enrolment(self.layers, b_idx, ctx.data.labels[b_idx], self.n_views, **kw)
            x, y = ctx.enrolment(self.layers, train_idx, train_y, self.n_views, **kw)
            f = fit_whitening(x, y, self.lam, bg).apply
        return Fitted(lambda s: (f or (lambda z: z))(ctx.feats(self.layers, s, self.tta)))


class Probe(Method):
    key, label, classifier, cost = "probe", "linear probe on frozen features", True, 2

    def score(self, ctx, train_idx, train_y, test_idx, test_y, source):
        x, q = ctx.feats((), "clean"), ctx.feats((), source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return linear_probe_accuracy(x[train_idx], train_y, q[test_idx], test_y, seed=ctx.seed)


class ArcFace(Method):
    """Embedding + ArcFace head trained on cached features (the course's frozen training); with
    `n_views`/`tta`: on multi-layer vectors of the photos, mirrors and views, mirror TTA at test."""

    def __init__(self, key, label, layers=(), n_views=0, tta=False, epochs=50, cost=5):
        self.key, self.label, self.layers, self.n_views, self.tta, self.epochs, self.cost = \
            key, label, tuple(layers), n_views, tta, epochs, cost
        self.plain = not (n_views or tta or layers)  # the course: raw pooled features, not normalised

    def settings(self):
        return {"layers": ["final", *self.layers], "tta": self.tta, "views": self.n_views, "epochs": self.epochs}

    def _x(self, ctx, source, tta):
        if self.plain:
            return ctx.bank.get(source, ctx.seed)["final"]
        return ctx.feats(self.layers, source, tta)

    def fit(self, ctx, train_idx, train_y):
        xs = [self._x(ctx, "clean", False)[train_idx]]
        if not self.plain:
            xs += ctx.views(self.layers, train_idx, self.n_views)
        x = torch.tensor(np.vstack(xs), dtype=torch.float32)
        with threads(1):
            model, _ = train_head_on_features(x, np.tile(train_y, len(xs)), epochs=self.epochs, seed=ctx.seed,
                                              progress=False)

        def get(source):
            with threads(1):
                return embed_model(model, torch.tensor(self._x(ctx, source, self.tta), dtype=torch.float32))
        return Fitted(get)


def dlib_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))


class Dlib(Method):
    """dlib's ResNet face embedder as `face_recognition.face_encodings` runs it: HOG detector
    (upsampled once; the whole photo when no face is found, counted in `fallbacks`), 5-point
    landmarks, 150×150 chip, 128-D descriptor. Called through dlib directly (face_recognition
    1.3.0 imports pkg_resources, which setuptools >= 81 no longer has)."""

    key, label, cost = "dlib", "dlib face_recognition 128-D (trained on ~3 M faces)", 9

    def __init__(self):
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")
        root = os.path.join(list(spec.submodule_search_locations)[0], "models")
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(os.path.join(root, "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(os.path.join(root, "dlib_face_recognition_resnet_model_v1.dat"))
        self.dlib = dlib
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
        return Fitted(lambda s: self.descriptors(ctx.data.images if s == "clean" else ctx.data.degraded(ctx.seed),
                                                 "clean" if s == "clean" else f"deg{ctx.seed}"))
