"""A face recogniser you can keep: enrol a gallery, answer a name or "unknown", save, load, export.

`Recognizer` = backbone -> embedding (optional) -> L2-normalised vector, a gallery holding the
mean embedding of each known person, and a threshold on the cosine score below which the
answer is "unknown". It is saved as one file (weights, names, preprocessing, threshold),
written atomically, and loads without any download. It exports to TorchScript and ONNX.
"""
from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BACKBONES, Backbone, load_backbone
from .evaluation import best_match, l2_normalize
from .features import atomic_save
from .model import EmbeddingHead
from .runtime import cache_dir, threads

FORMAT = "face-course-recognizer"
VERSION = 1
UNKNOWN = "unknown"


class RecognizerFileError(ValueError):
    """A recogniser file that cannot be used as asked; the message says why and what to do."""


@dataclass
class Match:
    """The answer for one photo: a name, or None for a stranger, with the best cosine score."""

    name: str | None
    closest: str
    score: float
    threshold: float

    @property
    def known(self) -> bool:
        return self.name is not None

    def __str__(self) -> str:
        if self.known:
            return f"{self.name} (score {self.score:.2f} >= threshold {self.threshold:.2f})"
        return f"{UNKNOWN} (closest: {self.closest}, score {self.score:.2f} < threshold {self.threshold:.2f})"


class Recognizer(nn.Module):
    """Images -> L2-normalised embeddings; a gallery of known people; a stranger threshold.

    `forward(x)` takes preprocessed images (B, 3, size, size) and returns embeddings: that is
    what TorchScript and ONNX export. `embedding=None` uses the backbone's features directly.
    """

    def __init__(self, backbone: Backbone, embedding: EmbeddingHead | None = None, size: int | None = None,
                 names: Sequence[str] = (), gallery: torch.Tensor | None = None, threshold: float = 0.5):
        super().__init__()
        self.backbone = backbone
        if embedding is not None:  # on the backbone's device (the gallery stays on the CPU)
            embedding = embedding.to(next(backbone.parameters()).device)
        self.embedding = embedding
        self.size = int(size or backbone.input_size)
        self.names = list(names)
        dim = embedding.bn.num_features if embedding is not None else backbone.feature_dim
        self.register_buffer("gallery", torch.zeros(len(self.names), dim) if gallery is None
                             else torch.as_tensor(gallery, dtype=torch.float32))
        self.threshold = float(threshold)

    # ------------------------------------------------------------------ embeddings
    @property
    def embedding_dim(self) -> int:
        return int(self.gallery.shape[1])

    def transform(self):
        """The preprocessing the recogniser was trained with (resize, centre crop, normalise)."""
        return self.backbone.transform(train=False, size=self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        if self.embedding is not None:
            f = self.embedding(f)
        return F.normalize(f, dim=1)

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
        self.eval()
        tf, dev = self.transform(), self.device
        out = [self(torch.stack([tf(im) for im in images[i:i + batch_size]]).to(dev)).cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.embedding_dim), np.float32)

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
        emb = "embedding head" if self.embedding is not None else "raw backbone features"
        return (f"recogniser: {self.backbone.name} ({self.backbone.weights}) + {emb}, {self.embedding_dim}-D, "
                f"input {self.size}x{self.size}, {len(self.names)} people, threshold {self.threshold:.2f}")

    def payload(self) -> dict:
        """Everything needed to rebuild the recogniser: plain types and tensors only (weights_only-safe)."""
        return {
            "format": FORMAT, "version": VERSION,
            "backbone": {"name": self.backbone.name, "weights": self.backbone.weights,
                         "feature_dim": int(self.backbone.feature_dim)},
            "preprocessing": {"size": self.size, "mean": list(self.backbone.mean), "std": list(self.backbone.std),
                              "steps": "RGB, Resize(size), CenterCrop(size), scale to [0,1], Normalize(mean, std)"},
            "names": list(self.names), "threshold": float(self.threshold),
            "embedding_dim": self.embedding_dim,
            "backbone_state": {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()},
            "embedding_state": (None if self.embedding is None else
                                {k: v.detach().cpu().clone() for k, v in self.embedding.state_dict().items()}),
            "gallery": self.gallery.detach().cpu().clone(),
            "torch": str(torch.__version__),
        }

    def save(self, path: str | Path) -> Path:
        """Write one file atomically (temporary file + rename): an interrupt never leaves half a file."""
        path = Path(path)
        if path.exists() and path.is_dir():
            raise RecognizerFileError(f"{path} is a folder; give a file name such as model.pt")
        atomic_save(self.payload(), path)
        _normal_rights(path)
        return path

    @classmethod
    def load(cls, path: str | Path, expect_backbone: str | None = None,
             expect_names: Sequence[str] | None = None) -> "Recognizer":
        """Read a file written by `save`; a wrong, corrupted or mismatched file gets a clear error."""
        return load_recognizer(path, expect_backbone, expect_names)


def _read_payload(path: Path) -> dict:
    if not path.exists():
        raise RecognizerFileError(f"{path}: no such file. Train one first: python -m helpers train --data DIR "
                                  f"--out {path.name}")
    if path.is_dir():
        raise RecognizerFileError(f"{path} is a folder, not a recogniser file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as e:
        first = str(e).strip().split(". ")[0].splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise RecognizerFileError(
            f"{path.name} is not a readable recogniser file: it looks truncated or corrupted ({first}). "
            "Save or train it again.") from None
    except Exception as e:  # pickle errors (weights_only refuses code): not a course file
        raise RecognizerFileError(f"{path.name} is not a recogniser file: not a PyTorch file, a damaged one, "
                                  f"or one holding code ({type(e).__name__}). Save or train it again.") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {sorted(obj)[:5]}"
        raise RecognizerFileError(f"{path.name} is a PyTorch file but not a recogniser saved by this course "
                                  f"(it holds {what}). Use Recognizer.save() or 'python -m helpers train'.")
    if int(obj.get("version", 0)) > VERSION:
        raise RecognizerFileError(f"{path.name} was written by a newer course version (format {obj['version']}, "
                                  f"this code reads up to {VERSION}): update the helpers package")
    return obj


def _normal_rights(path: Path) -> None:
    """Temporary files are created private (0600); give the finished file the usual rights."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_recognizer(path: str | Path, expect_backbone: str | None = None,
                    expect_names: Sequence[str] | None = None) -> Recognizer:
    """Rebuild a saved recogniser without downloading anything; check it is the one expected.

    `expect_backbone` ('resnet18', 'efficientnet_lite0'): refuse a file made for another backbone.
    `expect_names`: refuse a file enrolled for other people.
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
    emb_state = obj.get("embedding_state")
    embedding = None
    if emb_state is not None:
        try:
            embedding = EmbeddingHead(int(emb_state["linear.weight"].shape[1]), int(emb_state["linear.weight"].shape[0]))
        except (KeyError, AttributeError, IndexError) as e:
            raise RecognizerFileError(f"{path.name}: the embedding weights are incomplete ({e})") from None
    for module, state, what in ((backbone, obj.get("backbone_state"), f"a {name} backbone"),
                                (embedding, emb_state, "the embedding head")):
        if module is None:
            continue
        try:
            module.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as e:
            first = str(e).strip().splitlines()[0][:160]
            raise RecognizerFileError(f"{path.name}: its weights do not fit {what} ({first}). The file was "
                                      "edited or made for another model: train it again.") from None
    rec = Recognizer(backbone, embedding, size, names, gallery, threshold)
    dim = embedding.bn.num_features if embedding is not None else backbone.feature_dim
    if tuple(gallery.shape) != (len(names), dim):
        raise RecognizerFileError(f"{path.name}: gallery shape {tuple(gallery.shape)} does not match "
                                  f"{len(names)} people x {dim}-D embeddings; save it again")
    return rec.eval()


# ---------------------------------------------------------------------- thresholds


def threshold_from_strangers(gallery: np.ndarray, known_emb, known_labels, stranger_emb) -> float:
    """Equal-error threshold: known photos accepted as the right person vs strangers rejected."""
    idx, k = best_match(gallery, known_emb)
    k = np.where(idx == np.asarray(known_labels), k, -1.0)  # a wrong name is not a correct accept
    _, s = best_match(gallery, stranger_emb)
    return _eer_threshold(k, s)


def threshold_without_strangers(gallery: np.ndarray, emb, labels) -> float:
    """Equal-error threshold when no stranger photos exist: each held-out photo scored against the
    other people only plays a stranger (a known person missing from the gallery)."""
    emb, labels = l2_normalize(emb), np.asarray(labels)
    sims = emb @ l2_normalize(gallery).T
    genuine = sims[np.arange(len(labels)), labels]
    others = sims.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return _eer_threshold(genuine, others.max(1))


def _eer_threshold(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Threshold where false rejects of `genuine` equal false accepts of `impostor` scores.

    Placed halfway between two neighbouring observed scores, so that when the two groups do not
    overlap it sits in the middle of the gap rather than on the lowest genuine score.
    """
    genuine, impostor = np.sort(np.asarray(genuine, float)), np.sort(np.asarray(impostor, float))
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("choosing a threshold needs genuine and impostor scores")
    scores = np.unique(np.r_[genuine, impostor])
    frr = np.searchsorted(genuine, scores, side="left") / len(genuine)           # genuine < t
    far = 1 - np.searchsorted(impostor, scores, side="left") / len(impostor)     # impostor >= t
    diff = np.abs(frr - far)
    best = np.flatnonzero(diff == diff.min())
    total = (frr + far)[best]
    i = int(best[total == total.min()][0])
    below = scores[i - 1] if i > 0 else scores[i] - 1e-3
    return float(np.clip((below + scores[i]) / 2, -1.0, 1.0))


@dataclass
class OpenSetReport:
    """How a recogniser does on known people's photos and strangers' photos at its threshold."""

    known_correct: float     # known photos given the right name
    known_wrong_name: float  # known photos given another known person's name
    known_rejected: float    # known photos answered "unknown"
    strangers_rejected: float
    strangers_accepted: float  # strangers given a known person's name: the dangerous mistake
    threshold: float

    def __str__(self) -> str:
        return (f"threshold {self.threshold:.2f}: known people named right {100 * self.known_correct:.1f} %, "
                f"wrong name {100 * self.known_wrong_name:.1f} %, called unknown {100 * self.known_rejected:.1f} %; "
                f"strangers rejected {100 * self.strangers_rejected:.1f} %, "
                f"taken for someone {100 * self.strangers_accepted:.1f} %")

    def as_dict(self) -> dict:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def open_set_report(rec: Recognizer, known_emb, known_labels, stranger_emb=None) -> OpenSetReport:
    """Rates of every kind of answer at the recogniser's threshold."""
    known_labels = np.asarray(known_labels)
    idx, score = rec.scores(known_emb)
    ok = score >= rec.threshold
    right = ok & (idx == known_labels)
    if stranger_emb is not None and len(stranger_emb):
        _, s = rec.scores(stranger_emb)
        s_rej = float((s < rec.threshold).mean())
    else:
        s_rej = float("nan")
    return OpenSetReport(float(right.mean()), float((ok & ~right).mean()), float((~ok).mean()), s_rej,
                         1 - s_rej, rec.threshold)


# ---------------------------------------------------------------------- export


def export_dir() -> Path:
    """Where exported models go: the course cache (never the repo or a data folder)."""
    return cache_dir("models")


def export_torchscript(rec: Recognizer, path: str | Path) -> Path:
    """TorchScript by tracing (torch.jit is deprecated in recent PyTorch but still runs everywhere)."""
    path = Path(path)
    rec = rec.eval().cpu()
    x = torch.zeros(1, 3, rec.size, rec.size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(rec, x, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    _atomic_bytes(buf.getvalue(), path)
    return path


def export_onnx(rec: Recognizer, path: str | Path, opset: int = 17) -> Path:
    """ONNX with a dynamic batch axis, by the TorchScript-based exporter (no onnxscript needed)."""
    path = Path(path)
    rec = rec.eval().cpu()
    x = torch.zeros(1, 3, rec.size, rec.size)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(rec, (x,), buf, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["embeddings"],
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    _atomic_bytes(buf.getvalue(), path)
    return path


def _atomic_bytes(data: bytes, path: Path) -> None:
    """Write `data` to a temporary file next to `path`, then rename it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    tmp = Path(fh.name)
    try:
        with fh:
            fh.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _normal_rights(path)


def _load_torchscript(path: str | Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of torch.export
        return torch.jit.load(str(path)).eval()


def onnx_session(path: str | Path, n_threads: int = 2):
    """An onnxruntime CPU session for an exported recogniser."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def check_exports(rec: Recognizer, images: Sequence, torchscript_path: Path, onnx_path: Path,
                  n_threads: int = 2) -> dict[str, float]:
    """Max absolute difference of the exported models' embeddings from PyTorch's, on `images` (CPU)."""
    rec.eval().cpu()
    x = torch.stack([rec.transform()(im) for im in images])
    with threads(n_threads):
        ref = rec(x).numpy()
        ts = _load_torchscript(torchscript_path)
        ts_out = ts(x).numpy()
    onnx_out = onnx_session(onnx_path, n_threads).run(None, {"images": x.numpy()})[0]
    return {"images": len(images), "torchscript_max_abs_diff": float(np.abs(ts_out - ref).max()),
            "onnx_max_abs_diff": float(np.abs(onnx_out - ref).max())}


def _median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def measure_latency(rec: Recognizer, torchscript_path: Path, onnx_path: Path, image, runs: int = 20,
                    warmup: int = 3, n_threads: int = 2) -> dict[str, float]:
    """Median milliseconds per single image (batch 1, preprocessing excluded) on the CPU."""
    rec.eval().cpu()
    x = rec.transform()(image).unsqueeze(0)
    out = {}
    with threads(n_threads):
        out["pytorch_ms"] = _median_ms(lambda: rec(x), runs, warmup)
        ts = _load_torchscript(torchscript_path)
        out["torchscript_ms"] = _median_ms(lambda: ts(x), runs, warmup)
    sess = onnx_session(onnx_path, n_threads)
    xn = x.numpy()
    out["onnx_ms"] = _median_ms(lambda: sess.run(None, {"images": xn}), runs, warmup)
    tf = rec.transform()
    out["preprocess_ms"] = _median_ms(lambda: tf(image), runs, warmup)
    return out


# ---------------------------------------------------------------------- training and the evaluation protocol

METHODS = ("head", "raw")


def features_for(backbone: Backbone, images: Sequence, size: int | None = None, n_threads: int = 2) -> torch.Tensor:
    """Frozen features at input `size`, from the course's on-disk cache when already computed."""
    from .features import extract_features

    with threads(n_threads):
        return extract_features(backbone, list(images),
                                transform=backbone.transform(size=size or backbone.input_size),
                                progress=False, verbose=False)


def fit_recognizer(backbone: Backbone, train_feats: torch.Tensor, train_labels, names: Sequence[str],
                   size: int | None = None, method: str = "head", epochs: int = 30, seed: int = 0,
                   lr: float = 1e-2) -> Recognizer:
    """A recogniser from cached features: 'head' trains embedding + ArcFace head (frozen backbone),
    'raw' uses the features as they are; the gallery is enrolled from the same photos."""
    from .training import train_head_on_features

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    labels = np.asarray(train_labels)
    embedding = None
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
    f = torch.as_tensor(feats).float()
    if rec.embedding is not None:
        rec.embedding.eval()
        f = rec.embedding(f.to(next(rec.embedding.parameters()).device)).cpu()
    return F.normalize(f, dim=1).numpy()


def stand_in_strangers(faces) -> "FaceSet | None":
    """The packaged ORL faces minus anyone who appears in `faces` (same pixels): strangers for
    choosing a threshold when a learner's folder has none. None when nobody is left."""
    from .data import load_orl
    from .images import image_digest

    orl = load_orl()
    mine = {image_digest(im) for im in faces.images}
    overlap = {int(lab) for im, lab in zip(orl.images, orl.labels) if image_digest(im) in mine}
    keep = np.flatnonzero(~np.isin(orl.labels, sorted(overlap)))
    if len(np.unique(orl.labels[keep])) < 2:
        return None
    return orl.subset(keep, relabel=True)


def train_recognizer(faces, backbone: Backbone, size: int | None = None, method: str = "raw", epochs: int = 30,
                     seed: int = 0, n_threads: int = 2, strangers="orl") -> tuple[Recognizer, dict]:
    """Everything `python -m helpers train` does: features, head, threshold, gallery of all photos.

    The threshold is the equal-error point between held-out photos of the people (about a third
    of each person's photos, scored against the gallery of the others) and photos of strangers:
    `strangers` is a FaceSet, 'orl' (the packaged faces of people not in `faces`) or None (then each
    held-out photo scored against the other people only plays the stranger, which is optimistic
    for a trained head: it learned to keep exactly these people apart).
    """
    from .data import split_per_person

    size = size or backbone.input_size
    feats = features_for(backbone, faces.images, size, n_threads)
    labels = np.asarray(faces.labels)
    split = split_per_person(labels, val=0.2, test=0.15, seed=seed)
    held = np.sort(np.r_[split.val, split.test])
    rec = fit_recognizer(backbone, feats[split.train], labels[split.train], faces.names, size, method, epochs, seed)
    held_emb = embed_features(rec, feats[held])
    if isinstance(strangers, str) and strangers == "orl":
        strangers = stand_in_strangers(faces)
    if strangers is not None and len(strangers):
        s_emb = embed_features(rec, features_for(backbone, strangers.images, size, n_threads))
        rec.threshold = threshold_from_strangers(rec.gallery_np, held_emb, labels[held], s_emb)
        source = (f"equal error between {len(held)} held-out photos of these people and {len(strangers)} photos "
                  f"of {strangers.num_people} strangers ({'ORL' if 'ORL' in strangers.source else 'given'})")
    else:
        rec.threshold = threshold_without_strangers(rec.gallery_np, held_emb, labels[held])
        source = (f"equal error on {len(held)} held-out photos, each also scored against the other people only "
                  "(no strangers available: optimistic)")
    rec.enrol([], labels, faces.names, embeddings=embed_features(rec, feats))  # final gallery: every photo
    info = {"people": faces.num_people, "photos": len(faces), "method": _method_name(method),
            "threshold_from": source}
    return rec, info


def _method_name(method: str) -> str:
    return {"head": "frozen backbone + embedding/ArcFace head", "raw": "frozen backbone features, no training"}[method]


def split_strangers(strangers, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Photo indices of two halves of the strangers, split by person (seeded): the first half helps
    choose the threshold, the second half tests it; nobody is in both."""
    labels = np.asarray(strangers.labels)
    people = np.random.default_rng(seed).permutation(strangers.num_people)
    first = np.isin(labels, people[: max(1, len(people) // 2)])
    return np.flatnonzero(first), np.flatnonzero(~first)


def evaluate_protocol(faces, backbone: Backbone, n_known: int = 9, shots: int | None = None, seed: int = 0,
                      size: int | None = None, method: str = "raw", epochs: int = 30,
                      n_threads: int = 2) -> dict:
    """The course's evaluation on a fixed split; returns plain numbers (what `evaluate --json` prints).

    Known people: train (optionally `shots` photos each) / validation / test. Strangers: the other
    people, split in two halves by person: the threshold is chosen on validation photos + the
    first half, open-set rates are measured on test photos + the second half; EER over all
    stranger pairs. With no strangers, the threshold treats each validation photo scored against
    the other people as a stranger, and EER is over the known people's test photos.
    """
    from .data import FaceDataError, split_known_strangers, split_per_person
    from .evaluation import verification

    size = size or backbone.input_size
    if n_known > faces.num_people:
        raise FaceDataError(f"--known {n_known}: the data has only {faces.num_people} people")
    known, strangers = split_known_strangers(faces, n_known=n_known, seed=seed)
    split = split_per_person(known.labels, shots=shots, seed=seed)
    if len(split.val) == 0:
        raise FaceDataError("evaluate needs validation photos: at least 4 photos per person "
                            "(train, validation, test)")
    kf = features_for(backbone, known.images, size, n_threads)
    y = np.asarray(known.labels)
    rec = fit_recognizer(backbone, kf[split.train], y[split.train], known.names, size, method, epochs, seed)
    gallery = rec.gallery_np
    val_e, test_e = embed_features(rec, kf[split.val]), embed_features(rec, kf[split.test])
    idx, _ = best_match(gallery, test_e)
    accuracy = float((idx == y[split.test]).mean())
    s_val = s_test = None
    if strangers is not None:
        sf = features_for(backbone, strangers.images, size, n_threads)
        s_emb = embed_features(rec, sf)
        s_lab = np.asarray(strangers.labels)
        first, second = split_strangers(strangers, seed)
        s_val, s_test = s_emb[first], s_emb[second if len(second) else first]
        rec.threshold = threshold_from_strangers(gallery, val_e, y[split.val], s_val)
        eer, eer_on = verification(s_emb, s_lab).eer, f"all pairs of {len(s_lab)} photos of {strangers.num_people} strangers"
        thr_from = f"validation photos + {len(first)} photos of {len(np.unique(s_lab[first]))} strangers"
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
            "open_set": osd, "threshold_from": thr_from}


# ---------------------------------------------------------------------- pictures and demo data


def show_answers(images: Sequence, matches: Sequence[Match], truth: Sequence[str | None], title: str = "",
                 cols: int = 6, size: float = 1.6):
    """A grid of photos with the recogniser's answer; green when right, red when wrong.

    `truth` is the person's name, or None for a stranger (then "unknown" is the right answer).
    """
    import matplotlib.pyplot as plt

    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 1.5 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, m, t in zip(axes.flat, images, matches, truth):
        right = (m.name == t) if t is not None else (not m.known)
        ax.imshow(img)
        answer = m.name if m.known else "unknown"
        ax.set_title(f"{answer} ({m.score:.2f})\ntrue: {t or 'stranger'}", fontsize=7,
                     color="tab:green" if right else "tab:red")
        for side in ax.spines.values():
            side.set_visible(True)
            side.set_color("tab:green" if right else "tab:red")
            side.set_linewidth(3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(h_pad=1.2)
    return fig


def pick_examples(matches: Sequence[Match], truth: Sequence[str | None], n: int = 6) -> tuple[list[int], list[int]]:
    """Up to `n` right answers (known people and strangers alternately, spread over the list) and up
    to `n` mistakes (wrong name, known person called unknown, stranger taken for someone, in turn;
    strangers taken for the same person are shown once)."""
    right = [(m.name == t) if t is not None else not m.known for m, t in zip(matches, truth)]
    wins = {k: [i for i, ok in enumerate(right) if ok and (truth[i] is not None) == k] for k in (True, False)}
    spread = {k: v[::max(1, len(v) // max(1, n // 2))] for k, v in wins.items()}
    picked_wins = [i for pair in zip(spread[True], spread[False]) for i in pair][:n]
    if len(picked_wins) < n:
        rest = [i for v in spread.values() for i in v if i not in picked_wins]
        picked_wins += rest[: n - len(picked_wins)]
    kinds = {"wrong name": [], "called unknown": [], "stranger named": []}
    seen_names = set()
    for i, (m, t, ok) in enumerate(zip(matches, truth, right)):
        if ok:
            continue
        if t is None:
            if m.name not in seen_names:
                seen_names.add(m.name)
                kinds["stranger named"].append(i)
        else:
            kinds["wrong name" if m.known else "called unknown"].append(i)
    mistakes = []
    while len(mistakes) < n and any(kinds.values()):
        for v in kinds.values():
            if v and len(mistakes) < n:
                mistakes.append(v.pop(0))
    return picked_wins, mistakes


def write_demo_folder(faces, people: Sequence[int], dest: str | Path, per_person: int | None = None) -> Path:
    """Copy some people's photos into `dest/<name>/<n>.png`: a learner-style folder for the CLI demo."""
    dest = Path(dest)
    for p in people:
        folder = dest / faces.names[p]
        folder.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(np.asarray(faces.labels) == p)[:per_person]
        for k, i in enumerate(idx, start=1):
            faces.images[i].save(folder / f"{k}.png")
    return dest
