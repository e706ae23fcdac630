"""Frozen features made robust without gradient training: several layers, mirror test-time
augmentation and within-class whitening (the recogniser's default representation).

* **Several layers.** Besides the backbone's pooled output ("final"), the globally
  average-pooled outputs of earlier stages (`layer3`, `layer2`): less specialised in ImageNet
  objects, more in texture and shape. A tap "layer3:3x3" averages `layer3` over each cell of a
  3 x 3 grid instead of the whole map: it keeps *where* a feature fired (eyes above nose above
  mouth), which a global average throws away. Each part is L2-normalised, then concatenated.
* **Mirror test-time augmentation (TTA).** A face and its mirror image are the same person: the
  representation is the normalised sum of the photo's and its mirror's.
* **Within-class whitening.** From enrolment photos (and augmented views of them: crop, flip,
  rotation, light; "phone" views: blur and JPEG re-compression), estimate the covariance of the
  differences between photos *of the same person*, and shrink those directions:
  W = (C_w + lam * max_eig(C_w) * I)^(-1/2). It is a metric learnt in closed form from few
  identities (classic LDA / "WCCN"), where an ArcFace head needs many people to learn which
  directions are identity and which are nuisance. A **background** of other people's photos
  (`helpers.background`: ORL s1–s10, never people enrolled or evaluated) adds real variation
  between photos of one person, which one enrolment photo and its copies cannot show.

`Representation` is an `nn.Module` (images -> vectors) so a recogniser built on it exports to
TorchScript and ONNX like any other; `pooled_features` + `Representation.from_parts` compute the
same vectors from cached features (NumPy), which is how enrolment and the benchmarks use it.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn

from .backbones import Backbone
from .degrade import jpeg_roundtrip
from .images import image_digest
from .io import atomic_save
from .runtime import cache_dir

FINAL = "final"
DEFAULT_LAYERS = ("layer3", "layer2")   # after "final", in this order
# chosen on development people (benchmarks/accuracy.py, RESULTS.md): stage 1 without a background,
# stage 2 (cross-fitted) with one
DEFAULT_LAMBDA = 0.001                   # whitening strength without a background
BACKGROUND_LAMBDA = 0.0001               # ... with a background
DEFAULT_VIEWS = 8                        # augmented views of each enrolment photo, for the whitening
DEFAULT_PHONE_VIEWS = 4                  # blurred + JPEG copies of each photo, with a background (none without)
DEFAULT_PHONE_STRENGTH = 2.0             # phone views: blur sigma U(0, s) px, JPEG quality U(90 - 30 s, 90)
GRID_LAYERS = ("layer3:2x2", "layer3:3x3", "layer3:4x4")  # grid-pooled taps the development stage tries
TAPPED = ("layer2", "layer3", *GRID_LAYERS)  # the pooled outputs `pooled_features` returns
# augmentation of enrolment photos (PIL), applied before the recogniser's own preprocessing
VIEWS = {"crop_scale": (0.8, 1.0), "crop_ratio": (0.9, 1.1), "hflip": 0.5, "rotation_deg": 10.0,
         "brightness": 0.3, "contrast": 0.3}


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------ pooled stage outputs

def mirrored(img: Image.Image) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT)


def augmented_view(img: Image.Image, view: int, index: int) -> Image.Image:
    """Training view number `view` of photo `index` (deterministic): crop, flip, rotation, light."""
    from torchvision.transforms import v2

    v = VIEWS
    w, h = img.size
    tf = v2.Compose([
        v2.RandomResizedCrop((h, w), scale=v["crop_scale"], ratio=v["crop_ratio"], antialias=True),
        v2.RandomHorizontalFlip(v["hflip"]),
        v2.RandomRotation(v["rotation_deg"]),
        v2.ColorJitter(brightness=v["brightness"], contrast=v["contrast"]),
    ])
    state = torch.random.get_rng_state()
    torch.manual_seed(1_000_003 * (view + 1) + index)
    try:
        return tf(img)
    finally:
        torch.random.set_rng_state(state)


def phone_view(img: Image.Image, view: int, index: int, strength: float = DEFAULT_PHONE_STRENGTH) -> Image.Image:
    """Copy number `view` of photo `index` as a phone might store it (deterministic): Gaussian blur of
    radius U(0, strength) px, then JPEG at quality U(90 - 30 * strength, 90)."""
    rng = np.random.default_rng([view, index, 23])
    out = img.convert("RGB").filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, strength))))
    return jpeg_roundtrip(out, int(rng.integers(int(round(90 - 30 * strength)), 91)))


def grid_pool(x: torch.Tensor, g: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * g * g): the mean of each cell of a g x g grid, channel-major, with the cells
    of `F.adaptive_avg_pool2d(x, g)` (written out with fixed slices so that it exports to ONNX)."""
    h, w = int(x.shape[2]), int(x.shape[3])
    cells = [x[:, :, (i * h) // g:-(-(i + 1) * h // g), (j * w) // g:-(-(j + 1) * w // g)].mean((2, 3))
             for i in range(g) for j in range(g)]
    return torch.stack(cells, 2).flatten(1)


def tap_stage(name: str) -> tuple[str, int]:
    """"layer3" -> ("layer3", 1): global average; "layer3:2x2" -> ("layer3", 2): a 2 x 2 grid of means."""
    stage, _, grid = name.partition(":")
    if not grid:
        return stage, 1
    a, _, b = grid.partition("x")
    if not (a.isdigit() and a == b and int(a) >= 1):
        raise ValueError(f"tap {name!r}: write a square grid as 'stage:GxG', e.g. 'layer3:2x2'")
    return stage, int(a)


class _Taps:
    """Forward hooks that keep pooled outputs of some stages during one call: "stage" is the stage's
    global average (B, C); "stage:GxG" the means of a G x G grid of it (B, C * G * G), which keeps where
    in the face a feature fired."""

    def __init__(self, backbone: Backbone, layers: Sequence[str]):
        self.backbone, self.layers = backbone, tuple(layers)
        self.grabbed: dict[str, torch.Tensor] = {}
        self.hooks = []

    def __enter__(self):
        for name in self.layers:
            stage, g = tap_stage(name)
            last = self.backbone.stage_modules(stage)[-1]
            self.hooks.append(last.register_forward_hook(
                lambda m, i, o, name=name, g=g: self.grabbed.__setitem__(
                    name, o.float().mean((2, 3)) if g == 1 else grid_pool(o.float(), g))))
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks = []
        return False


def pooled(backbone: Backbone, x: torch.Tensor, layers: Sequence[str] = TAPPED) -> dict[str, torch.Tensor]:
    """{"final": backbone(x), layer: pooled stage output} for a preprocessed batch `x`."""
    with _Taps(backbone, layers) as taps:
        out = {FINAL: backbone(x).float()}
    return {**out, **{n: taps.grabbed[n] for n in layers}}


class _PooledOut(nn.Module):
    """backbone -> (final, *layers) pooled: one output per tap, for ONNX export."""

    def __init__(self, backbone: Backbone, layers: Sequence[str]):
        super().__init__()
        self.backbone, self.layers = backbone, tuple(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = pooled(self.backbone, x, self.layers)
        return tuple([parts[FINAL]] + [parts[n] for n in self.layers])


_SESSIONS: dict = {}


def _onnx_pooled(backbone: Backbone, size: int, layers: Sequence[str]):
    """An ONNX Runtime session for `_PooledOut` (exported once per weights, size and layers), or None
    when ONNX Runtime is not to be used here (then PyTorch runs: the same features to ~1e-5)."""
    import importlib.util
    import io
    import warnings

    from .io import atomic_write_bytes, onnx_session
    from .onnx_backbone import resolve_engine, weights_digest

    if resolve_engine(None, torch.device("cpu")) != "onnxruntime" or importlib.util.find_spec("onnxruntime") is None:
        return None
    tag = "-".join(n.replace(":", "_") for n in layers)
    name = f"{backbone.name}-pooled2-{tag}-{size}-{weights_digest(backbone)}"
    key = (name, torch.get_num_threads())
    if key in _SESSIONS:
        return _SESSIONS[key]
    path = cache_dir("models", "onnx") / f"{name}.onnx"
    was = backbone.training
    try:
        if not path.exists():
            outs = [f"pooled{i}" for i in range(1 + len(layers))]  # final, then each tap in order
            buf = io.BytesIO()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(_PooledOut(backbone.cpu().eval(), layers), (torch.zeros(1, 3, size, size),), buf,
                                  dynamo=False, opset_version=17, input_names=["images"], output_names=outs,
                                  dynamic_axes={"images": {0: "batch"}, **{o: {0: "batch"} for o in outs}})
            atomic_write_bytes(buf.getvalue(), path)
        session = onnx_session(path, torch.get_num_threads())
    except Exception:  # export or load failed: PyTorch computes the same features
        return None
    finally:
        backbone.train(was)
    _SESSIONS.clear()  # one at a time: each holds a copy of the weights
    _SESSIONS[key] = session
    return session


def compute_pooled(backbone: Backbone, images: Sequence[Image.Image], size: int, batch_size: int | None = None,
                   layers: Sequence[str] = TAPPED, engine: str | None = None) -> dict[str, torch.Tensor]:
    """Pooled outputs of every image: ONNX Runtime on a CPU when installed (batch 64), else eager
    PyTorch (channels_last, inference mode, batch 16); `engine='torch'` forces PyTorch.

    Photos are prepared by `helpers.preprocess` (the backbone's evaluation transform, batched; on a
    GPU the next batch is prepared while the model runs on the current one)."""
    from .preprocess import prefetched_batches

    session = None
    device = next(backbone.parameters()).device
    if engine != "torch" and device.type == "cpu":
        session = _onnx_pooled(backbone, size, layers)
    batch_size = batch_size or (64 if session is not None else 16)
    was = backbone.training
    net = backbone.eval()
    if session is None:
        net = net.to(memory_format=torch.channels_last)
    keys = (FINAL, *layers)
    chunks: list[list[torch.Tensor]] = []
    try:
        with torch.inference_mode():
            for batch in prefetched_batches(list(images), size, backbone.mean, backbone.std, batch_size,
                                            ahead=device.type != "cpu"):
                if session is not None:
                    chunks.append([torch.from_numpy(a) for a in session.run(None, {"images": batch})])
                else:
                    x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
                    got = pooled(net, x, layers)
                    chunks.append([got[k].cpu() for k in keys])
    finally:
        backbone.train(was)
    if not chunks:
        return {FINAL: torch.zeros(0, backbone.feature_dim),
                **{n: torch.zeros(0, _stage_dim(backbone, n)) for n in layers}}
    return {k: torch.cat([c[i] for c in chunks]).float() for i, k in enumerate(keys)}


def _stage_dim(backbone: Backbone, layer: str) -> int:
    with torch.no_grad():
        was = backbone.training
        try:
            return int(pooled(backbone.eval(), torch.zeros(1, 3, 32, 32), (layer,))[layer].shape[1])
        finally:
            backbone.train(was)


def pooled_features(backbone: Backbone, images: Sequence[Image.Image], size: int | None = None,
                    cache: bool = True, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """`compute_pooled` as NumPy arrays, cached on disk (key: backbone, its weights, size, pixels)."""
    from .onnx_backbone import weights_digest

    size = size or backbone.input_size
    if not cache:
        return {k: v.numpy() for k, v in compute_pooled(backbone, images, size, batch_size).items()}
    h = hashlib.sha256(f"{backbone.cache_key()}|{weights_digest(backbone)}|{size}|{TAPPED}|pooled-v3".encode())
    for im in images:
        h.update(image_digest(im).encode())
    path = cache_dir("features", "pooled") / f"{backbone.name}-{size}-{h.hexdigest()[:24]}.pt"
    if path.exists():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(feats, dict) and all(len(v) == len(images) for v in feats.values()):
                return {k: v.numpy() for k, v in feats.items()}
        except Exception:
            pass  # unreadable: computed again below
    feats = compute_pooled(backbone, images, size, batch_size)
    atomic_save(feats, path)
    return {k: v.numpy() for k, v in feats.items()}


def combine(parts: dict[str, np.ndarray], layers: Sequence[str] = DEFAULT_LAYERS) -> np.ndarray:
    """The multi-layer vector: each part L2-normalised, concatenated ("final" first), normalised."""
    return _l2n(np.hstack([_l2n(parts[FINAL])] + [_l2n(parts[n]) for n in layers]))


# ------------------------------------------------------------------------------ whitening

@dataclass
class Whitening:
    """x -> (x - mean) scaled by `base` everywhere, and by `base + scale` along `basis` rows."""

    mean: np.ndarray    # (D,)
    basis: np.ndarray   # (r, D) orthonormal rows: the span of the within-class differences
    scale: np.ndarray   # (r,)
    base: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float64) - self.mean
        return z * self.base + ((z @ self.basis.T) * self.scale) @ self.basis

    def state(self) -> dict:
        return {"mean": torch.as_tensor(self.mean, dtype=torch.float32),
                "basis": torch.as_tensor(self.basis, dtype=torch.float32),
                "scale": torch.as_tensor(self.scale, dtype=torch.float32),
                "base": float(self.base)}

    @classmethod
    def from_state(cls, s: dict) -> "Whitening":
        return cls(s["mean"].double().numpy(), s["basis"].double().numpy(), s["scale"].double().numpy(),
                   float(s["base"]))


def fit_whitening(x: np.ndarray, y, lam: float = DEFAULT_LAMBDA, background: tuple | None = None) -> Whitening:
    """Centre on the mean of `x` and whiten by the regularised within-class covariance of (x, y).

    Directions in which photos of the same person vary are shrunk; the rest are kept. Computed
    from the SVD of the within-class residuals (cheap when there are fewer items than dimensions).
    `background` = (vectors, labels) of other people: more within-class samples, each background
    label a class of its own (never the same as an enrolled person's); the mean is over all vectors.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("whitening needs at least 2 labelled vectors")
    if background is not None and len(background[0]):
        bx, by = np.asarray(background[0], dtype=np.float64), np.asarray(background[1])
        if len(bx) != len(by):
            raise ValueError("background vectors and labels differ in length")
        y = np.r_[np.unique(y, return_inverse=True)[1], len(np.unique(y)) + np.unique(by, return_inverse=True)[1]]
        x = np.vstack([x, bx])
    if lam <= 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    mu = x.mean(0)
    z = x - mu
    for c in np.unique(y):
        z[y == c] -= z[y == c].mean(0)
    _, sv, vt = np.linalg.svd(z, full_matrices=False)
    ev = sv ** 2 / len(z)
    if ev.max() <= 0:
        raise ValueError("whitening needs photos that differ within a person (add views or photos)")
    reg = lam * ev.max()
    base = 1 / np.sqrt(reg)
    return Whitening(mu, vt, 1 / np.sqrt(ev + reg) - base, float(base))


# ------------------------------------------------------------------------------ the module

class Representation(nn.Module):
    """Images (B, 3, H, W) -> multi-layer (+ mirror TTA) (+ whitened) vectors, not yet normalised.

    `layers`: stages pooled beside the final output (() for the final output alone); `tta`:
    average with the mirror image; `whitening`: a fitted `Whitening` or None.
    """

    def __init__(self, backbone: Backbone, layers: Sequence[str] = DEFAULT_LAYERS, tta: bool = True,
                 whitening: Whitening | None = None):
        super().__init__()
        self.backbone = backbone
        self.layers, self.tta = tuple(layers), bool(tta)
        self.whitening = whitening
        self.background: dict | None = None  # {"people", "photos"} of the background it was fitted with
        if whitening is not None:
            for k, v in whitening.state().items():
                if k != "base":
                    self.register_buffer(f"w_{k}", v)
            self.w_base = float(whitening.base)

    def _single(self, x: torch.Tensor) -> torch.Tensor:
        parts = pooled(self.backbone, x, self.layers)
        return F.normalize(torch.cat([F.normalize(parts[FINAL], dim=1)]
                                     + [F.normalize(parts[n], dim=1) for n in self.layers], 1), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._single(x)
        if self.tta:
            f = F.normalize(f + self._single(torch.flip(x, dims=[3])), dim=1)
        if self.whitening is not None:
            z = f - self.w_mean
            f = z * self.w_base + ((z @ self.w_basis.T) * self.w_scale) @ self.w_basis
        return f

    # ---------------------------------------------------------------- the same from cached features
    def unwhitened(self, parts: dict[str, np.ndarray], mirror: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """What `forward` computes before whitening, from `pooled_features` of the photos (and of their
        mirror images, needed when `tta`)."""
        f = combine(parts, self.layers)
        if self.tta:
            if mirror is None:
                raise ValueError("mirror TTA needs the features of the mirror images")
            f = _l2n(f + combine(mirror, self.layers))
        return f

    def finish(self, f: np.ndarray) -> np.ndarray:
        """Whitening (if any) of `unwhitened` vectors."""
        return f if self.whitening is None else self.whitening.apply(f)

    @property
    def dim(self) -> int:
        dims = {FINAL: self.backbone.feature_dim}
        if self.layers:
            with torch.no_grad():
                size = 64
                parts = pooled(self.backbone.eval(), torch.zeros(1, 3, size, size), self.layers)
            dims.update({n: parts[n].shape[1] for n in self.layers})
        return int(sum(dims[k] for k in (FINAL, *self.layers)))

    def describe(self) -> str:
        what = ["+".join((FINAL, *self.layers)) + " pooled"]
        if self.tta:
            what.append("mirror TTA")
        if self.whitening is not None:
            what.append(f"within-class whitening (rank {len(self.whitening.scale)})")
        if self.background:
            what.append(f"background: {self.background['people']} other people")
        return ", ".join(what)

    def config(self) -> dict:
        """What a saved recogniser stores (plain types and tensors: weights_only-safe)."""
        return {"layers": list(self.layers), "tta": self.tta, "background": self.background,
                "whitening": None if self.whitening is None else self.whitening.state()}

    @classmethod
    def from_config(cls, backbone: Backbone, cfg: dict) -> "Representation":
        w = cfg.get("whitening")
        rep = cls(backbone, tuple(cfg.get("layers", ())), bool(cfg.get("tta", False)),
                  None if w is None else Whitening.from_state(w))
        rep.background = cfg.get("background")  # absent from files written before backgrounds
        return rep


def enrolment_set(backbone: Backbone, images: Sequence[Image.Image], labels, size: int | None = None,
                  layers: Sequence[str] = DEFAULT_LAYERS, n_views: int = DEFAULT_VIEWS, cache: bool = True,
                  n_phone: int = 0,
                  phone_strength: float = DEFAULT_PHONE_STRENGTH) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, labels) to fit the whitening on: each photo, its mirror image, `n_views`
    augmented views and `n_phone` phone views, each as one un-averaged multi-layer vector."""
    labels = np.asarray(labels)
    sets = [list(images), [mirrored(im) for im in images]]
    sets += [[augmented_view(im, v, i) for i, im in enumerate(images)] for v in range(n_views)]
    sets += [[phone_view(im, v, i, phone_strength) for i, im in enumerate(images)] for v in range(n_phone)]
    xs = [combine(pooled_features(backbone, s, size, cache), layers) for s in sets]
    return np.vstack(xs), np.tile(labels, len(xs))


def fit_representation(backbone: Backbone, images: Sequence[Image.Image], labels, size: int | None = None,
                       layers: Sequence[str] = DEFAULT_LAYERS, tta: bool = True, lam: float | None = None,
                       n_views: int = DEFAULT_VIEWS, cache: bool = True, background=None, exclude=(),
                       n_phone: int | None = None,
                       phone_strength: float = DEFAULT_PHONE_STRENGTH) -> Representation:
    """A whitened `Representation` fitted on enrolment photos of at least two people.

    `background`: a FaceSet of other people (e.g. `helpers.background.background_faces()`), whose
    photos (with the same mirrors and views) join the within-class covariance; any background
    person with a photo among `images` or `exclude` (the photos to be evaluated) is dropped first
    (`helpers.background.drop_people_in`). `lam` and `n_phone` None: the development choices,
    `BACKGROUND_LAMBDA` and `DEFAULT_PHONE_VIEWS` with background people, `DEFAULT_LAMBDA` and none
    without (also when the rule leaves fewer than 2 background people)."""
    from .background import drop_people_in

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("within-class whitening needs photos of at least 2 people")
    bg = drop_people_in(background, images, exclude)
    lam = (BACKGROUND_LAMBDA if bg is not None else DEFAULT_LAMBDA) if lam is None else lam
    n_phone = (DEFAULT_PHONE_VIEWS if bg is not None else 0) if n_phone is None else n_phone
    kw = dict(n_phone=n_phone, phone_strength=phone_strength)
    x, y = enrolment_set(backbone, images, labels, size, layers, n_views, cache, **kw)
    xb = None if bg is None else enrolment_set(backbone, bg.images, bg.labels, size, layers, n_views, cache, **kw)
    rep = Representation(backbone, layers, tta, fit_whitening(x, y, lam, xb))
    rep.background = None if bg is None else {"people": bg.num_people, "photos": len(bg)}
    return rep


def representation_features(rep: Representation, images: Sequence[Image.Image], size: int | None = None,
                            cache: bool = True) -> np.ndarray:
    """`rep` applied to PIL images through the feature cache (equal to `rep(batch)` to ~1e-5)."""
    parts = pooled_features(rep.backbone, images, size, cache)
    mirror = pooled_features(rep.backbone, [mirrored(im) for im in images], size, cache) if rep.tta else None
    return rep.finish(rep.unwhitened(parts, mirror))
