"""The recogniser's parts (notebook 06): how a photo becomes an embedding, one class per method.

An embedder, built on a frozen backbone with a `RecognizerConfig`:
  * `features(images)`: the cached per-photo input it needs (computed once, reused by every fit);
  * `fit(feats, labels, images=..., background=...)`: learns what it learns from enrolment photos;
  * `embed(feats)`: (N, D) L2-normalised embeddings from those features (enrolment, evaluation);
  * `forward(x)`: the same from preprocessed images (B, 3, H, W), un-normalised (what the recogniser
    runs on a photo and exports to TorchScript / ONNX);
  * `cross_fit(...)`: one fitted copy per fold, for the threshold's cross-fitted scores;
  * `state()` / `from_state(backbone, state)`: what the recogniser file stores (plain types, tensors).

`EMBEDDERS` maps the command line's `--method` names to the classes: nothing else in the library
looks at a method name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones import Backbone
from ..features.extract import TAPPED, extract, extract_features
from ..features.representations import BACKGROUND_LAMBDA, DEFAULT_LAMBDA, DEFAULT_LAYERS, DEFAULT_PHONE_STRENGTH, \
    DEFAULT_PHONE_VIEWS, DEFAULT_VIEWS, Representation, enrolment_set, fit_representation, fit_whitening, mirrored
from ..runtime import threads

WHITEN = "multilayer-tta-whiten"


@dataclass(frozen=True)
class RecognizerConfig:
    """Every setting of a recogniser's fit (notebook 06), in one object instead of keyword arguments.

    `method`: a key of `EMBEDDERS`; `size`: input pixels (None: the backbone's); `epochs`, `seed`, `lr`:
    the head's training; `views`, `lam`, `phone_views`, `phone_strength`, `layers`: the whitening's
    (`lam`, `phone_views` None: the development choices, which depend on whether a background is used;
    `helpers.features.representations.fit_representation`); `background`: whether methods that can use the
    background people (ORL s1-s10, `helpers.data.background`) do; `threads`: torch threads for backbone passes
    (None: `helpers.runtime.default_threads()`).

    Notebook 06.
    """

    method: str = WHITEN
    size: int | None = None
    epochs: int = 30
    seed: int = 0
    lr: float = 1e-2
    views: int = DEFAULT_VIEWS
    lam: float | None = None
    phone_views: int | None = None
    phone_strength: float = DEFAULT_PHONE_STRENGTH
    layers: tuple[str, ...] = DEFAULT_LAYERS
    background: bool = True   # the product's whitening uses the background people (chosen on development people)
    threads: int | None = None

    def __post_init__(self):
        if self.method not in EMBEDDERS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {tuple(EMBEDDERS)}")
        object.__setattr__(self, "layers", tuple(self.layers))

    def replace(self, **changes) -> "RecognizerConfig":
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    def input_size(self, backbone: Backbone) -> int:
        return int(self.size or backbone.input_size)

    def embedder(self, backbone: Backbone) -> "Embedder":
        """An unfitted embedder of this method on `backbone`."""
        return EMBEDDERS[self.method](backbone, self)

    def uses_background(self) -> bool:
        """Whether a recogniser of this configuration is fitted with background people."""
        return self.background and EMBEDDERS[self.method].uses_background


class Embedder(nn.Module):
    """Photos -> L2-normalised embeddings on a frozen backbone (notebook 06); see the module's docstring.

    Notebook 06, inside `RecognizerConfig`.
    """

    name: ClassVar[str]
    title: ClassVar[str]                    # what `train` prints about the method
    uses_background: ClassVar[bool] = False
    min_people: ClassVar[int] = 1           # fewest people a fit needs

    def __init__(self, backbone: Backbone, cfg: RecognizerConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg if cfg is not None else RecognizerConfig(self.name)

    def features(self, images: Sequence) -> np.ndarray | torch.Tensor:
        """(N, F) cached backbone features of PIL images (the frozen backbone's pooled output)."""
        with threads(self.cfg.threads):
            return extract_features(self.backbone, list(images), size=self.cfg.input_size(self.backbone),
                                    progress=False, verbose=False)

    def fit(self, feats, labels, images: Sequence | None = None, background=None, exclude: Sequence = ()) -> "Embedder":
        """Learn from enrolment features (N, F) with `labels` (N,); nothing to learn here."""
        return self

    def cross_fit(self, feats, labels, fold: np.ndarray, k: int, images: Sequence | None = None,
                  background=None) -> Iterator[tuple[int, "Embedder | None"]]:
        """(f, a copy fitted without fold f's photos, or None when too few people are left) for f < k."""
        labels = np.asarray(labels)
        for f in range(k):
            tr = np.flatnonzero(fold != f)
            people = np.unique(labels[tr])
            if len(people) < self.min_people:
                yield f, None
                continue
            yield f, type(self)(self.backbone, self.cfg).fit(feats[tr], np.searchsorted(people, labels[tr]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @torch.no_grad()
    def embed(self, feats) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of features (N, F) from `features`."""
        if len(feats) == 0:
            return np.zeros((0, self.dim), np.float32)
        return F.normalize(self._finish(feats), dim=1).numpy()

    def _finish(self, feats) -> torch.Tensor:
        """(N, D) float32 embeddings before normalisation."""
        return torch.as_tensor(feats).float()

    @property
    def dim(self) -> int:
        return int(self.backbone.feature_dim)

    def describe(self) -> str:
        return "raw backbone features"

    def state(self) -> dict:
        return {"kind": self.name}

    @classmethod
    def from_state(cls, backbone: Backbone, state: dict) -> "Embedder":
        return cls(backbone)


class RawEmbedder(Embedder):
    """The frozen backbone's features as they are (notebook 06).

    Notebook 06, inside `RecognizerConfig`.
    """

    name, title = "raw", "frozen backbone features, no training"


class HeadEmbedder(Embedder):
    """An embedding (Linear + BatchNorm) trained with an ArcFace head on frozen features (notebook 06).

    Notebook 06, inside `RecognizerConfig`.
    """

    name, title, min_people = "head", "frozen backbone + embedding/ArcFace head", 2

    def __init__(self, backbone: Backbone, cfg: RecognizerConfig | None = None, embedding: nn.Module | None = None):
        super().__init__(backbone, cfg)
        self.embedding = None if embedding is None else embedding.to(next(backbone.parameters()).device)

    def fit(self, feats, labels, images=None, background=None, exclude=()) -> "HeadEmbedder":
        from ..train.fit import train_head_on_features

        labels = np.asarray(labels)
        if len(np.unique(labels)) < 2:
            raise ValueError("training a head needs at least 2 people")
        c = self.cfg
        model, _ = train_head_on_features(feats, labels, epochs=c.epochs, lr=c.lr, seed=c.seed, progress=False)
        self.embedding = model.embedding.eval().to(next(self.backbone.parameters()).device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone(x))

    def _finish(self, feats) -> torch.Tensor:
        self.embedding.eval()
        return self.embedding(torch.as_tensor(feats).float().to(next(self.embedding.parameters()).device)).cpu()

    @property
    def dim(self) -> int:
        return int(self.embedding.bn.num_features)

    def describe(self) -> str:
        return "embedding head"

    def state(self) -> dict:
        return {"kind": self.name, "embedding": {k: v.detach().cpu().clone() for k, v in self.embedding.state_dict().items()}}

    @classmethod
    def from_state(cls, backbone: Backbone, state: dict) -> "HeadEmbedder":
        from ..models.face_model import EmbeddingHead

        s = state["embedding"]
        w = s["linear.weight"]
        embedding = EmbeddingHead(int(w.shape[1]), int(w.shape[0]))
        embedding.load_state_dict(s, strict=True)
        return cls(backbone, embedding=embedding.eval())


class WhitenedEmbedder(Embedder):
    """Several layers + mirror TTA + within-class whitening fitted on enrolment photos, their views and
    (with `cfg.background`) other people's photos (notebook 06); no gradient training. Its features are
    the multi-layer + mirror vectors before whitening (`Representation.unwhitened`).

    Notebook 06, inside `RecognizerConfig`.
    """

    name, uses_background = WHITEN, True
    title = "frozen multi-layer features + mirror TTA + within-class whitening"

    def __init__(self, backbone: Backbone, cfg: RecognizerConfig | None = None,
                 representation: Representation | None = None):
        super().__init__(backbone, cfg)
        self.representation = representation if representation is not None else \
            Representation(backbone, self.cfg.layers, tta=True)
        if self.representation.backbone is not backbone:
            raise ValueError("the representation must be built on the embedder's own backbone")

    def features(self, images: Sequence) -> np.ndarray:
        """(N, D) float64 multi-layer + mirror TTA vectors, before whitening."""
        size = self.cfg.input_size(self.backbone)
        with threads(self.cfg.threads):
            parts = extract(self.backbone, list(images), TAPPED, size)
            mirror = extract(self.backbone, [mirrored(im) for im in images], TAPPED, size)
        return self.representation.unwhitened(parts, mirror)

    def _settings(self, background) -> dict:
        c = self.cfg
        n_phone = (DEFAULT_PHONE_VIEWS if background is not None else 0) if c.phone_views is None else c.phone_views
        return dict(n_phone=n_phone, phone_strength=c.phone_strength)

    def fit(self, feats, labels, images=None, background=None, exclude=()) -> "WhitenedEmbedder":
        """`images`: the enrolment photos (N); `background`: None, 'orl' or a FaceSet of other people,
        less anyone with a photo among `images` or `exclude` (`fit_representation`)."""
        from ..data.background import background_faces

        labels, c = np.asarray(labels), self.cfg
        if images is None or len(images) != len(labels):
            raise ValueError(f"{WHITEN} needs the training photos (train_images) to fit its whitening")
        if len(np.unique(labels)) < 2:
            raise ValueError("within-class whitening needs at least 2 people")
        if isinstance(background, str):
            if background != "orl":
                raise ValueError(f"background must be None, 'orl' or a FaceSet, got {background!r}")
            background = background_faces()
        with threads(c.threads):
            self.representation = fit_representation(
                self.backbone, list(images), labels, c.input_size(self.backbone), c.layers, n_views=c.views,
                lam=c.lam, background=background, exclude=list(exclude), n_phone=c.phone_views,
                phone_strength=c.phone_strength)
        return self

    def cross_fit(self, feats, labels, fold, k, images=None, background=None):
        """The enrolment views (and the background's) are computed once; each fold fits the whitening on
        the other folds' views and the background people not in fold f (person p is in fold p mod k)."""
        c, labels = self.cfg, np.asarray(labels)
        lam = (BACKGROUND_LAMBDA if background is not None else DEFAULT_LAMBDA) if c.lam is None else c.lam
        kw, size = self._settings(background), c.input_size(self.backbone)
        with threads(c.threads):
            x, y = enrolment_set(self.backbone, list(images), labels, size, c.layers, c.views, **kw)
            if background is not None:
                xb, yb = enrolment_set(self.backbone, background.images, background.labels, size, c.layers,
                                       c.views, **kw)
        row_fold = np.tile(fold, len(x) // len(labels))
        for f in range(k):
            b = None if background is None else (xb[yb % k != f], yb[yb % k != f])
            w = fit_whitening(x[row_fold != f], y[row_fold != f], lam, b)
            yield f, WhitenedEmbedder(self.backbone, c, Representation(self.backbone, c.layers, True, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.representation(x)

    def _finish(self, feats) -> torch.Tensor:
        return torch.as_tensor(self.representation.finish(np.asarray(feats))).float()

    @property
    def dim(self) -> int:
        return self.representation.dim

    def describe(self) -> str:
        return self.representation.describe()

    def state(self) -> dict:
        return {"kind": self.name, "representation": self.representation.config()}

    @classmethod
    def from_state(cls, backbone: Backbone, state: dict) -> "WhitenedEmbedder":
        return cls(backbone, representation=Representation.from_config(backbone, state["representation"]))


EMBEDDERS: dict[str, type[Embedder]] = {WHITEN: WhitenedEmbedder, "head": HeadEmbedder, "raw": RawEmbedder}
METHODS = tuple(EMBEDDERS)
DEFAULT_METHOD = WHITEN  # the development people's winner (benchmarks/accuracy.py checks it still is)


def embedder_from_state(backbone: Backbone, state: dict) -> Embedder:
    """The embedder a recogniser file stores (`Embedder.state`; notebook 06); KeyError for an unknown kind.

    Notebook 06, inside `load_recognizer`.
    """
    return EMBEDDERS[state["kind"]].from_state(backbone, state)
