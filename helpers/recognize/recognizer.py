"""A face recogniser you can keep: enrol a gallery, answer a name or "unknown", save, load, export.

`Recognizer` = backbone -> embedding (optional) -> L2-normalised vector, a gallery holding the
mean embedding of each known person, and a threshold on the cosine score below which the
answer is "unknown". It is saved as one file (weights, names, preprocessing, threshold),
written atomically, and loads without any download. It exports to TorchScript and ONNX.
"""
from __future__ import annotations

import copy
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones import BACKBONES, Backbone, load_backbone
from ..evaluate.calibration import describe_record
from ..evaluate.metrics import OpenSetReport, best_match, l2_normalize, open_set
from ..io import atomic_save
from .embedders import Embedder, HeadEmbedder, RawEmbedder, WhitenedEmbedder, embedder_from_state
from ..models.face_model import EmbeddingHead
from ..features.representations import Representation
from ..runtime import run_batched

FORMAT = "face-course-recognizer"
VERSION = 4  # 2: optional multi-layer / mirror TTA / whitening representation; 3: the threshold's calibration
#               record (expected false-accept / false-reject rates); 4: one "embedder" entry (its kind and
#               state, `helpers.recognize.embedders`) instead of "embedding_state" / "representation"; 1-3 still load
UNKNOWN = "unknown"


class RecognizerFileError(ValueError):
    """A recogniser file that cannot be used as asked; the message says why and what to do.

    Notebook 06.
    """


@dataclass
class Match:
    """The answer for one photo: a name, or None for a stranger, with the best cosine score.

    Notebook 06, inside `fit_recognizer`.
    """

    name: str | None
    closest: str
    score: float
    threshold: float

    @property
    def known(self) -> bool:
        return self.name is not None

    @property
    def margin(self) -> float:
        """Score minus threshold: how far above (+) or below (-) the threshold the best match is."""
        return self.score - self.threshold

    def explain(self) -> str:
        """The answer with its margin, e.g. 'Sam (score 0.44, +0.06 over the threshold 0.38)'."""
        if self.known:
            return (f"{self.name} (score {self.score:.2f}, {self.margin:+.2f} over the threshold "
                    f"{self.threshold:.2f})")
        return (f"{UNKNOWN} (closest: {self.closest}, score {self.score:.2f}, {self.margin:+.2f} under the "
                f"threshold {self.threshold:.2f})")

    def __str__(self) -> str:
        if self.known:
            return f"{self.name} (score {self.score:.2f} >= threshold {self.threshold:.2f})"
        return f"{UNKNOWN} (closest: {self.closest}, score {self.score:.2f} < threshold {self.threshold:.2f})"


class Recognizer(nn.Module):
    """Images -> L2-normalised embeddings; a gallery of known people; a stranger threshold.

    `forward(x)` takes preprocessed images (B, 3, size, size) and returns embeddings: that is
    what TorchScript and ONNX export. The images become vectors through one `embedder`
    (`helpers.recognize.embedders`, on the same backbone): raw features, an embedding head, or several layers +
    mirror TTA + within-class whitening. Instead of `embedder`, pass `embedding` (an `EmbeddingHead`)
    or `representation` (a `helpers.features.representations.Representation`); neither: the raw features.

    Notebook 06, inside `fit_recognizer`.
    """

    def __init__(self, backbone: Backbone, embedding: EmbeddingHead | None = None, size: int | None = None,
                 names: Sequence[str] = (), gallery: torch.Tensor | None = None, threshold: float = 0.5,
                 representation: Representation | None = None, embedder: Embedder | None = None):
        super().__init__()
        self.backbone = backbone
        if embedder is None:
            embedder = (HeadEmbedder(backbone, embedding=embedding) if embedding is not None else
                        WhitenedEmbedder(backbone, representation=representation) if representation is not None
                        else RawEmbedder(backbone))
        elif embedding is not None or representation is not None:
            raise ValueError("give an embedder, or an embedding / representation, not both")
        if embedder.backbone is not backbone:
            raise ValueError("the embedder must be built on the recogniser's own backbone")
        self.embedder = embedder
        self.size = int(size or backbone.input_size)
        self.names = list(names)
        dim = embedder.dim
        self.register_buffer("gallery", torch.zeros(len(self.names), dim) if gallery is None
                             else torch.as_tensor(gallery, dtype=torch.float32))
        self.threshold = float(threshold)
        # how the threshold was chosen (`helpers.evaluate.calibration.Calibration.record`): rule, expected FAR / FRR
        # and the scores they rest on; None for a threshold set by hand or a file written before version 3
        self.calibration: dict | None = None

    # ------------------------------------------------------------------ embeddings
    @property
    def embedding(self) -> EmbeddingHead | None:
        """The embedding head, for a recogniser with one (else None)."""
        return getattr(self.embedder, "embedding", None)

    @property
    def representation(self) -> Representation | None:
        """The multi-layer / TTA / whitening representation, for a recogniser with one (else None)."""
        return getattr(self.embedder, "representation", None)

    @property
    def embedding_dim(self) -> int:
        return int(self.gallery.shape[1])

    def transform(self):
        """The preprocessing the recogniser was trained with (resize, centre crop, normalise)."""
        return self.backbone.transform(train=False, size=self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedder(x), dim=1)

    @property
    def gallery_np(self) -> np.ndarray:
        """The gallery (people x embedding) as a NumPy array."""
        return self.gallery.detach().cpu().numpy()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def embed(self, images: Sequence, batch_size: int = 16) -> np.ndarray:
        """L2-normalised embeddings of PIL images, in eval mode, on whatever device the model is."""
        if not len(images):
            return np.zeros((0, self.embedding_dim), np.float32)
        from ..data.preprocess import to_batch

        self.eval()
        mean, std = self.backbone.mean, self.backbone.std  # the transform's steps, batched (as enrolment)
        return run_batched(self, list(images), batch_size, self.device,
                           prepare=lambda chunk: torch.from_numpy(to_batch(chunk, self.size, mean, std))).numpy()

    # ------------------------------------------------------------------ gallery and answers
    def enrol(self, images: Sequence, labels, names: Sequence[str], embeddings: np.ndarray | None = None) -> None:
        """Gallery = the mean embedding of each person's photos (re-normalised); labels index `names`."""
        labels = np.asarray(labels)
        missing = [n for i, n in enumerate(names) if not (labels == i).any()]
        if missing:
            raise ValueError(f"no photo to enrol for {missing}")
        emb = self.embed(images) if embeddings is None else np.asarray(embeddings)
        gal = l2_normalize(np.stack([emb[labels == i].mean(0) for i in range(len(names))]))
        self.names = list(names)
        self.gallery = torch.as_tensor(gal, dtype=torch.float32)

    def add_person(self, name: str, images: Sequence) -> None:
        """Enrol one more person from a few photos, without any training (their mean embedding)."""
        if name in self.names:
            raise ValueError(f"{name!r} is already enrolled")
        if not len(images):
            raise ValueError(f"no photo of {name!r} to enrol")
        centre = l2_normalize(self.embed(images).mean(0, keepdims=True))
        self.gallery = torch.cat([self.gallery, torch.as_tensor(centre, dtype=torch.float32)])
        self.names = [*self.names, name]

    def scores(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index of the closest person, cosine score) for each embedding."""
        if not self.names:
            raise ValueError("the gallery is empty: enrol people first")
        return best_match(self.gallery_np, embeddings)

    def answer(self, embeddings: np.ndarray) -> list[Match]:
        idx, score = self.scores(embeddings)
        return [Match(self.names[i] if s >= self.threshold else None, self.names[i], float(s), self.threshold)
                for i, s in zip(idx, score)]

    def recognize(self, images: Sequence) -> list[Match]:
        """A name (score at or above the threshold) or unknown, for each PIL image."""
        return self.answer(self.embed(images))

    # ------------------------------------------------------------------ save / load
    def describe(self) -> str:
        emb = self.embedder.describe()
        cal = self.calibration
        rates = ""
        if cal and abs(float(cal.get("threshold", float("nan"))) - self.threshold) < 1e-9:
            rates = f" ({describe_record(cal)})"
        elif cal:
            rates = " (set by hand: the saved rates were for another threshold)"
        return (f"recogniser: {self.backbone.name} ({self.backbone.weights}) + {emb}, {self.embedding_dim}-D, "
                f"input {self.size}x{self.size}, {len(self.names)} people, threshold {self.threshold:.2f}{rates}")

    def payload(self) -> dict:
        """Everything needed to rebuild the recogniser: plain types and tensors only (weights_only-safe)."""
        return {
            "format": FORMAT, "version": VERSION,
            "backbone": {"name": self.backbone.name, "weights": self.backbone.weights,
                         "feature_dim": int(self.backbone.feature_dim)},
            "preprocessing": {"size": self.size, "mean": list(self.backbone.mean), "std": list(self.backbone.std),
                              "steps": "RGB, Resize(size), CenterCrop(size), scale to [0,1], Normalize(mean, std)"},
            "names": list(self.names), "threshold": float(self.threshold),
            "calibration": None if self.calibration is None else dict(self.calibration),
            "embedding_dim": self.embedding_dim,
            "backbone_state": {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()},
            "embedder": self.embedder.state(),
            "gallery": self.gallery.detach().cpu().clone(),
            "torch": str(torch.__version__),
        }

    def save(self, path: str | Path) -> Path:
        """Write one file atomically (temporary file + rename): an interrupt never leaves half a file."""
        path = Path(path)
        if path.exists() and path.is_dir():
            raise RecognizerFileError(f"{path} is a folder; give a file name such as model.pt")
        atomic_save(self.payload(), path)
        return path

    @classmethod
    def load(cls, path: str | Path, expect_backbone: str | None = None,
             expect_names: Sequence[str] | None = None) -> "Recognizer":
        """Read a file written by `save`; a wrong, corrupted or mismatched file gets a clear error."""
        return load_recognizer(path, expect_backbone, expect_names)

    @classmethod
    def from_checkpoint(cls, path: str | Path, backbone: Backbone | None = None,
                        threshold: float = 0.5) -> "Recognizer":
        """The fine-tuned backbone + embedding of a `helpers.train.trainer` run (OUT/final.pt, or the folder
        OUT; notebook 07) as a recogniser with an empty gallery: `enrol` people, then `recognize`,
        `save`/`load` and export it as any other. Loads without any download.

        `backbone`: an instance of the run's backbone (its weights are replaced), needed only when
        the run used one that is not among the course's (`--backbone package.module:factory`).
        A missing or damaged file, the per-epoch checkpoint.pt or a recogniser file gets a
        `RecognizerFileError` that says what to use instead.
        """
        return recognizer_from_checkpoint(path, backbone, threshold)


def _torch_load(path: Path, what: str, again: str):
    """torch.load(weights_only) of a course file; a damaged or foreign file is a RecognizerFileError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as e:
        first = str(e).strip().split(". ")[0].splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise RecognizerFileError(
            f"{path.name} is not a readable {what}: it looks truncated or corrupted ({first}). {again}") from None
    except Exception as e:  # pickle errors (weights_only refuses code): not a course file
        raise RecognizerFileError(f"{path.name} is not a {what}: not a PyTorch file, a damaged one, "
                                  f"or one holding code ({type(e).__name__}). {again}") from None


def _read_payload(path: Path) -> dict:
    if not path.exists():
        raise RecognizerFileError(f"{path}: no such file. Train one first: python -m helpers train --data DIR "
                                  f"--out {path.name}")
    if path.is_dir():
        raise RecognizerFileError(f"{path} is a folder, not a recogniser file")
    obj = _torch_load(path, "recogniser file", "Save or train it again.")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {sorted(obj)[:5]}"
        raise RecognizerFileError(f"{path.name} is a PyTorch file but not a recogniser saved by this course "
                                  f"(it holds {what}). Use Recognizer.save() or 'python -m helpers train'.")
    if int(obj.get("version", 0)) > VERSION:
        raise RecognizerFileError(f"{path.name} was written by a newer course version (format {obj['version']}, "
                                  f"this code reads up to {VERSION}): update the helpers package")
    return obj


def _embedder_state(obj: dict) -> dict:
    """The embedder's state: version 4 stores it; versions 1-3 stored its parts under their own keys."""
    if int(obj.get("version", 0)) >= 4:
        return obj["embedder"]
    if obj.get("embedding_state") is not None:
        return {"kind": HeadEmbedder.name, "embedding": obj["embedding_state"]}
    if obj.get("representation") is not None:   # absent from version 1
        return {"kind": WhitenedEmbedder.name, "representation": obj["representation"]}
    return {"kind": RawEmbedder.name}


def load_recognizer(path: str | Path, expect_backbone: str | None = None,
                    expect_names: Sequence[str] | None = None) -> Recognizer:
    """Rebuild a saved recogniser without downloading anything; check it is the one expected.

    `expect_backbone` ('resnet18', 'efficientnet_lite0'): refuse a file made for another backbone.
    `expect_names`: refuse a file enrolled for other people.

    Notebook 06.
    """
    path = Path(path)
    obj = _read_payload(path)
    try:
        bb_info, names = obj["backbone"], list(obj["names"])
        size, threshold = int(obj["preprocessing"]["size"]), float(obj["threshold"])
        gallery = obj["gallery"]
    except (KeyError, TypeError) as e:
        raise RecognizerFileError(f"{path.name}: recogniser file without {e}; save it again") from None
    name = bb_info.get("name")
    if expect_backbone is not None and expect_backbone != "auto" and name != expect_backbone:
        raise RecognizerFileError(
            f"{path.name} is a recogniser for backbone {name} ({bb_info.get('feature_dim')}-D features), "
            f"but {expect_backbone} was expected. Train a recogniser for {expect_backbone}, or load this "
            f"one without expecting a backbone.")
    if expect_names is not None and list(expect_names) != names:
        missing = sorted(set(expect_names) - set(names))
        extra = sorted(set(names) - set(expect_names))
        detail = "; ".join(s for s in (f"missing {missing}" if missing else "", f"not expected {extra}" if extra
                                       else "", "same people in another order" if not (missing or extra) else "")
                           if s)
        raise RecognizerFileError(f"{path.name} was enrolled for other people ({detail}). Enrol these people "
                                  "again (python -m helpers train) or load it without expect_names.")
    if name not in BACKBONES or name == "auto":
        raise RecognizerFileError(f"{path.name}: unknown backbone {name!r}; this course knows "
                                  f"{[b for b in BACKBONES if b != 'auto']}")
    backbone = load_backbone(name, pretrained=False, verbose=False)  # architecture only: no download
    backbone.weights = bb_info.get("weights", "?")
    try:
        backbone.load_state_dict(obj.get("backbone_state"), strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise RecognizerFileError(f"{path.name}: its weights do not fit a {name} backbone ({first}). The file was "
                                  "edited or made for another model: train it again.") from None
    state: dict = {}
    try:
        state = _embedder_state(obj)
        embedder = embedder_from_state(backbone, state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160]
        raise RecognizerFileError(f"{path.name}: its weights do not fit the {state.get('kind')} embedder ({first}). "
                                  "The file was edited or made for another model: train it again.") from None
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise RecognizerFileError(f"{path.name}: its embedder's settings or weights are incomplete ({e}); "
                                  "train it again") from None
    rec = Recognizer(backbone, size=size, names=names, gallery=gallery, threshold=threshold, embedder=embedder)
    rec.calibration = obj.get("calibration")  # absent from files before version 3
    dim = embedder.dim
    if tuple(gallery.shape) != (len(names), dim):
        raise RecognizerFileError(f"{path.name}: gallery shape {tuple(gallery.shape)} does not match "
                                  f"{len(names)} people x {dim}-D embeddings; save it again")
    return rec.eval()


def _read_final(path: Path) -> dict:
    """The trainer's final.pt as a dict, after checking that it is one."""
    if path.is_dir() and (path / "final.pt").is_file():
        path = path / "final.pt"
    if not path.exists():
        raise RecognizerFileError(f"{path}: no such file. A helpers.train.trainer run writes OUT/final.pt when it "
                                  "finishes: python -m helpers finetune --data DIR --out OUT")
    if path.is_dir():
        raise RecognizerFileError(f"{path} is a folder without final.pt: give the final.pt of a finished "
                                  "helpers.train.trainer run")
    obj = _torch_load(path, "trainer checkpoint", "Train again, or give the final.pt of another run.")
    from ..train.checkpoints import CHECKPOINT_FORMAT

    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise RecognizerFileError(f"{path.name} is a recogniser file, not a trainer checkpoint: load it with "
                                  "Recognizer.load (python -m helpers recognize --model FILE)")
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        what = type(obj).__name__ if not isinstance(obj, dict) else f"format {obj.get('format')!r}"
        raise RecognizerFileError(f"{path.name} is not a checkpoint of helpers.train.trainer ({what}, expected "
                                  f"{CHECKPOINT_FORMAT!r}): give the final.pt of a helpers.train.trainer run")
    if "names" not in obj and "epochs_done" in obj:
        raise RecognizerFileError(f"{path.name} is the trainer's resume checkpoint (after epoch {obj['epochs_done']}), "
                                  "not its final weights: give OUT/final.pt, written when the run finishes "
                                  "(--resume finishes an interrupted run)")
    missing = [k for k in ("model", "backbone", "size") if k not in obj]
    if missing:
        raise RecognizerFileError(f"{path.name}: a trainer checkpoint without {missing}; train it again")
    return obj


def recognizer_from_checkpoint(path: str | Path, backbone: Backbone | None = None,
                               threshold: float = 0.5) -> Recognizer:
    """`Recognizer.from_checkpoint`: backbone and embedding weights of final.pt, an empty gallery.

    Notebook 06, inside `fit_recognizer`.
    """
    path = Path(path)
    obj = _read_final(path)
    name, state = obj["backbone"], obj["model"]
    if backbone is None:
        if name not in BACKBONES or name == "auto":
            spec = (obj.get("config") or {}).get("backbone", name)
            raise RecognizerFileError(
                f"{path.name} was trained on backbone {name!r} ({spec}), not one of the course's "
                f"{[b for b in BACKBONES if b != 'auto']}: pass one, Recognizer.from_checkpoint(path, backbone=...)")
        backbone = load_backbone(name, pretrained=False, verbose=False)  # architecture only: no download
    else:
        if backbone.name != name:
            raise RecognizerFileError(f"{path.name} was trained on backbone {name!r}, not {backbone.name!r}")
        backbone = copy.deepcopy(backbone)  # the caller's backbone keeps its weights
    parts = {"backbone": {}, "embedding": {}}
    for key, value in state.items():
        prefix, _, rest = key.partition(".")
        if prefix in parts:
            parts[prefix][rest] = value
    try:
        w = parts["embedding"]["linear.weight"]
        embedding = EmbeddingHead(int(w.shape[1]), int(w.shape[0]))
        backbone.load_state_dict(parts["backbone"], strict=True)
        embedding.load_state_dict(parts["embedding"], strict=True)
    except (KeyError, RuntimeError, AttributeError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise RecognizerFileError(f"{path.name}: its weights do not fit a {name} backbone + embedding ({first}); "
                                  "train it again") from None
    stages, start = obj.get("stages"), obj.get("backbone_weights", "its starting weights")
    backbone.weights = (f"fine-tuned by helpers.train.trainer (stages {', '.join(stages)}) from {start}" if stages
                        else f"{start}, frozen in a helpers.train.trainer run")
    return Recognizer(backbone, embedding, int(obj["size"]), threshold=threshold).eval()


def open_set_report(rec: Recognizer, known_emb, known_labels, stranger_emb=None) -> OpenSetReport:
    """Rates of every kind of answer at the recogniser's threshold (`helpers.evaluate.metrics.open_set`).

    Notebook 06.
    """
    return open_set(rec.gallery_np, known_emb, known_labels, stranger_emb, rec.threshold)
