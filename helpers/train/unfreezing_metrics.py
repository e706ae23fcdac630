"""What a gradual-unfreezing run achieves: accuracy on the known people, 1-shot new people and the
strangers' EER (`evaluate_run`), measured through the run's backbone the cheapest valid way."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.backbone_tail import BackboneTail
from ..evaluate.metrics import one_shot_identification, verification
from ..models.face_model import FaceModel
from ..runtime import run_batched, threads

# `RunResult` and `UnfreezeData` below are helpers.train.unfreezing's (not imported: it imports this module)


@dataclass
class Metrics:
    """What one trained model achieves on the shared split (fractions, not percent).

    Notebook 05, inside `evaluate_run`.
    """

    train_acc: float      # known people, training photos, eval mode, no augmentation
    val_acc: float        # known people, validation photos
    test_acc: float       # known people, test photos (closed set, the head's answer)
    new_people_1shot: float  # strangers enrolled from 1 photo each, the others identified (1-NN)
    strangers_eer: float  # same/different person over all stranger pairs
    train_cos: float = float("nan")  # mean cosine between a photo's embedding and its own person's weight
    val_cos: float = float("nan")
    strangers_tar: float = float("nan")  # same-person stranger pairs accepted at FAR 1 %

    @property
    def gap(self) -> float:
        """Train minus validation accuracy: how much the model overfits."""
        return self.train_acc - self.val_acc

    @property
    def cos_gap(self) -> float:
        """Train minus validation cosine to the own person: how much more tightly the training photos
        sit on their person than new photos do. Still measures overfitting at 100 % accuracy."""
        return self.train_cos - self.val_cos



@torch.inference_mode()
def model_features(result: "RunResult", data: "UnfreezeData", part: str) -> torch.Tensor | None:
    """Backbone features of `part` through the run's (possibly fine-tuned) backbone, cheapest way.

    Untouched backbone: the cached features. Only the last stage trained: the cached inputs
    through the trained last stage. Otherwise: the photos through the whole backbone.

    Notebook 05, inside `feature_drift`.
    """
    if not data.images(part):
        return None
    trained = result.trained_stages
    bb = result.model.backbone
    with threads(data.threads):
        if not trained and not result.bn_stats_changed:
            return data.features(part)
        if trained == (data.cut_stage,) and not result.bn_stats_changed:
            tail = BackboneTail(bb, data.cut_stage).eval().to(data.device)
            return run_batched(tail, data.inputs(part), 64, data.device)
        bb.eval().to(data.device)
        tf = data.transform()
        return run_batched(bb, data.images(part), data.batch_size, data.device,
                           prepare=lambda chunk: torch.stack([tf(im) for im in chunk]))


@torch.inference_mode()
def _embed_and_logits(model: FaceModel, feats: torch.Tensor, device) -> tuple[np.ndarray, torch.Tensor]:
    model.eval()
    emb_raw = model.embedding.to(device)(feats.to(device))
    logits = model.head.to(device)(emb_raw)
    return F.normalize(emb_raw, dim=1).cpu().numpy(), logits.cpu()


def evaluate_run(result: "RunResult", data: "UnfreezeData", seed: int = 0, strangers: bool = True) -> Metrics:
    """Accuracy on known people (train/val/test), 1-shot new people and strangers' EER; stored on `result`.

    `strangers=False` skips the stranger measures (NaN), which saves a pass over 310 photos.

    Notebook 05.
    """
    acc, cos = {}, {}
    for part in ("train", "val", "test"):
        _, logits = _embed_and_logits(result.model, model_features(result, data, part), data.device)
        y = data.labels(part)
        acc[part] = float((logits.argmax(1) == y).float().mean())
        cos[part] = float((logits[torch.arange(len(y)), y] / result.model.head.s).mean())  # eval: s * cos
    s_feats = model_features(result, data, "strangers") if strangers else None
    if s_feats is not None:
        s_emb, _ = _embed_and_logits(result.model, s_feats, data.device)
        s_lab = data.labels("strangers").numpy()
        ver = verification(s_emb, s_lab)
        one_shot, eer, tar = one_shot_identification(s_emb, s_lab, seed), ver.eer, ver.tar_at_far
    else:
        one_shot = eer = tar = float("nan")
    result.metrics = Metrics(acc["train"], acc["val"], acc["test"], one_shot, eer, cos["train"], cos["val"], tar)
    result.model.cpu()
    return result.metrics


def raw_feature_metrics(data: "UnfreezeData", seed: int = 0) -> dict[str, float]:
    """The same stranger measures on the frozen backbone's raw features (no training at all).

    Notebook 05.
    """
    s = data.features("strangers").numpy()
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    lab = data.labels("strangers").numpy()
    return {"new_people_1shot": one_shot_identification(s, lab, seed), "strangers_eer": verification(s, lab).eer}
