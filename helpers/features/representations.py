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
  (`helpers.data.background`: ORL s1–s10, never people enrolled or evaluated) adds real variation
  between photos of one person, which one enrolment photo and its copies cannot show.

`Representation` is an `nn.Module` (images -> vectors) so a recogniser built on it exports to
TorchScript and ONNX like any other; `extract.extract` + `Representation.from_parts` compute the
same vectors from cached features (NumPy), which is how enrolment and the benchmarks use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn

from ..models.backbones import Backbone
from ..data.degrade import jpeg_roundtrip
from .extract import FINAL, TAPPED, extract, stage_taps

DEFAULT_LAYERS = ("layer3:4x4",)        # after "final": layer3 averaged over each cell of a 4 x 4 grid
# chosen on development people (benchmarks/accuracy.py, RESULTS.md): stage 1 without a background,
# stage 2 (cross-fitted) with one, which also chose the layers. Without a background (fewer than 2
# background people left) the same layers are used: stage 2 never measured the grid without one.
DEFAULT_LAMBDA = 0.001                   # whitening strength without a background
BACKGROUND_LAMBDA = 0.001                # ... with a background
DEFAULT_VIEWS = 8                        # augmented views of each enrolment photo, for the whitening
DEFAULT_PHONE_VIEWS = 4                  # blurred + JPEG copies of each photo, with a background (none without)
DEFAULT_PHONE_STRENGTH = 2.0             # phone views: blur sigma U(0, s) px, JPEG quality U(90 - 30 s, 90)
# augmentation of enrolment photos (PIL), applied before the recogniser's own preprocessing
VIEWS = {"crop_scale": (0.8, 1.0), "crop_ratio": (0.9, 1.1), "hflip": 0.5, "rotation_deg": 10.0,
         "brightness": 0.3, "contrast": 0.3}


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------ photos and views

def mirrored(img: Image.Image) -> Image.Image:
    """The photo flipped left to right (the mirror pass of test-time augmentation).

    Notebook 06, inside `RecognizerConfig`.
    """
    return img.transpose(Image.FLIP_LEFT_RIGHT)


def augmented_view(img: Image.Image, view: int, index: int) -> Image.Image:
    """Training view number `view` of photo `index` (deterministic): crop, flip, rotation, light.

    Notebook 06, inside `RecognizerConfig`.
    """
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
    radius U(0, strength) px, then JPEG at quality U(90 - 30 * strength, 90).

    Notebook 06, inside `RecognizerConfig`.
    """
    rng = np.random.default_rng([view, index, 23])
    out = img.convert("RGB").filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, strength))))
    return jpeg_roundtrip(out, int(rng.integers(int(round(90 - 30 * strength)), 91)))


def combine(parts: dict[str, np.ndarray], layers: Sequence[str] = DEFAULT_LAYERS) -> np.ndarray:
    """The multi-layer vector: each part L2-normalised, concatenated ("final" first), normalised.

    Notebook 06, inside `RecognizerConfig`.
    """
    return _l2n(np.hstack([_l2n(parts[FINAL])] + [_l2n(parts[n]) for n in layers]))


# ------------------------------------------------------------------------------ whitening

def whiten(x, mean, basis, scale, base):
    """The whitening map (notebook 06), written once for NumPy arrays and torch tensors alike (the recogniser's
    `forward`, exported, runs it on tensors; enrolment and calibration on cached NumPy features):
    (x - mean) scaled by `base` everywhere and by `base + scale` along the rows of `basis`.
    x (N, D), mean (D,), basis (r, D) orthonormal rows, scale (r,), base a float.

    Notebook 06, inside `RecognizerConfig`.
    """
    z = x - mean
    return z * base + ((z @ basis.T) * scale) @ basis


@dataclass
class Whitening:
    """A fitted within-class whitening (`fit_whitening`; notebook 06): x -> `whiten(x, ...)`.

    Notebook 06, inside `RecognizerConfig`.
    """

    mean: np.ndarray    # (D,)
    basis: np.ndarray   # (r, D) orthonormal rows: the directions in which photos of one person vary
    scale: np.ndarray   # (r,)
    base: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, D) whitened, in float64."""
        return whiten(np.asarray(x, dtype=np.float64), self.mean, self.basis, self.scale, self.base)

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
    """Centre on the mean of `x` (N, D) and whiten by the regularised within-class covariance of (x, y).

    Directions in which photos of the same person vary are shrunk; the rest are kept. The directions
    and their variances come from the eigenvectors of the (N x N) Gram matrix of the within-class
    residuals (cheap: there are far fewer vectors than dimensions); directions without variance (their
    scale would be 0) are left out, so `len(scale)` is the rank of the within-class scatter.
    `background` = (vectors, labels) of other people: more within-class samples, each background
    label a class of its own (never the same as an enrolled person's); the mean is over all vectors.

    Notebook 06, inside `RecognizerConfig`.
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
    lam_g, u = np.linalg.eigh(z @ z.T)
    if lam_g.max() <= 0:
        raise ValueError("whitening needs photos that differ within a person (add views or photos)")
    keep = lam_g > lam_g.max() * 1e-12
    sv = np.sqrt(lam_g[keep])[::-1]
    vt = (u[:, keep][:, ::-1].T @ z) / sv[:, None]
    ev = sv ** 2 / len(z)
    reg = lam * ev.max()
    base = 1 / np.sqrt(reg)
    return Whitening(mu, vt, 1 / np.sqrt(ev + reg) - base, float(base))


# ------------------------------------------------------------------------------ the module

class Representation(nn.Module):
    """Images (B, 3, H, W) -> multi-layer (+ mirror TTA) (+ whitened) vectors, not yet normalised.

    `layers`: stages pooled beside the final output (() for the final output alone); `tta`:
    average with the mirror image; `whitening`: a fitted `Whitening` or None.

    Notebook 06, inside `RecognizerConfig`.
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
        parts = stage_taps(self.backbone, x, self.layers)
        return F.normalize(torch.cat([F.normalize(parts[FINAL], dim=1)]
                                     + [F.normalize(parts[n], dim=1) for n in self.layers], 1), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._single(x)
        if self.tta:
            f = F.normalize(f + self._single(torch.flip(x, dims=[3])), dim=1)
        if self.whitening is not None:
            f = whiten(f, self.w_mean, self.w_basis, self.w_scale, self.w_base)
        return f

    # ---------------------------------------------------------------- the same from cached features
    def unwhitened(self, parts: dict[str, np.ndarray], mirror: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """What `forward` computes before whitening, from `extract.extract` of the photos (and of their
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
        if self.whitening is not None:
            return int(len(self.whitening.mean))
        dims = {FINAL: self.backbone.feature_dim}
        if self.layers:
            with torch.no_grad():
                size = 64
                parts = stage_taps(self.backbone.eval(), torch.zeros(1, 3, size, size), self.layers)
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
    augmented views and `n_phone` phone views, each as one un-averaged multi-layer vector.

    Notebook 06, inside `RecognizerConfig`.
    """
    labels = np.asarray(labels)
    sets = [list(images), [mirrored(im) for im in images]]
    sets += [[augmented_view(im, v, i) for i, im in enumerate(images)] for v in range(n_views)]
    sets += [[phone_view(im, v, i, phone_strength) for i, im in enumerate(images)] for v in range(n_phone)]
    xs = [combine(extract(backbone, s, TAPPED, size, cache=cache), layers) for s in sets]
    return np.vstack(xs), np.tile(labels, len(xs))


def fit_representation(backbone: Backbone, images: Sequence[Image.Image], labels, size: int | None = None,
                       layers: Sequence[str] = DEFAULT_LAYERS, tta: bool = True, lam: float | None = None,
                       n_views: int = DEFAULT_VIEWS, cache: bool = True, background=None, exclude=(),
                       n_phone: int | None = None,
                       phone_strength: float = DEFAULT_PHONE_STRENGTH) -> Representation:
    """A whitened `Representation` fitted on enrolment photos of at least two people.

    `background`: a FaceSet of other people (e.g. `helpers.data.background.background_faces()`), whose
    photos (with the same mirrors and views) join the within-class covariance; any background
    person with a photo among `images` or `exclude` (the photos to be evaluated) is dropped first
    (`helpers.data.background.drop_people_in`). `lam` and `n_phone` None: the development choices,
    `BACKGROUND_LAMBDA` and `DEFAULT_PHONE_VIEWS` with background people, `DEFAULT_LAMBDA` and none
    without (also when the rule leaves fewer than 2 background people).

    Notebook 06, inside `RecognizerConfig`.
    """
    from ..data.background import drop_people_in

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
