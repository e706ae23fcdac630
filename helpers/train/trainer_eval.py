"""Evaluation during helpers.train.trainer runs: verification on people held out from training (every rank
embeds a share; rank 0 scores the pairs). The closed-set accuracy is `helpers.train.step`'s, fit's too."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from .distributed import DistContext, gather_objects
from ..evaluate.metrics import verification
from ..models.face_model import FaceModel
from ..data.streaming import PhotoStream
from .step import embeddings


@torch.no_grad()
def held_out_eer(model: FaceModel, paths: list[str], labels: np.ndarray, transform, ctx: DistContext,
            batch: int, workers: int, amp: torch.dtype | None) -> float | None:
    """Equal error rate over all pairs of photos of people held out from training, sharded: rank r
    embeds photos r, r+W, ...; rank 0 gathers the embeddings and scores the pairs (None elsewhere).

    Notebook 07, inside `train`.
    """
    mine = list(range(ctx.rank, len(paths), ctx.world_size))
    stream = PhotoStream([paths[i] for i in mine], labels[mine], transform)
    model.eval()
    dev = ctx.device
    parts = []
    for x, _ in DataLoader(stream, batch_size=max(batch, 2), num_workers=workers):
        parts.append(embeddings(model, x.to(dev), amp).cpu())
    emb = torch.cat(parts) if parts else torch.zeros(0, model.embedding.linear.out_features)
    gathered = gather_objects((mine, emb), ctx)
    if not ctx.is_main:
        return None
    order = np.concatenate([np.asarray(i, dtype=int) for i, _ in gathered])
    all_emb = torch.cat([e for _, e in gathered])[np.argsort(order)]
    return verification(all_emb.numpy(), labels).eer
