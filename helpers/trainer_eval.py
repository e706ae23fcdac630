"""Evaluation during helpers.trainer runs: closed-set accuracy (rank 0) and verification on people
held out from training (every rank embeds a share; rank 0 scores the pairs)."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from .distributed import DistContext, gather_objects
from .evaluation import verification
from .model import FaceModel
from .streaming import PhotoStream


@torch.no_grad()
def closed_set_accuracy(model: FaceModel, loader: DataLoader, device: torch.device, amp: torch.dtype | None) -> float:
    """Closed-set top-1 accuracy: argmax of the head's cosines, model in eval mode."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            emb = model.embedding(model.features(x))
        correct += int((model.head.cosine(emb.float()).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


@torch.no_grad()
def held_out_eer(model: FaceModel, paths: list[str], labels: np.ndarray, transform, ctx: DistContext,
            batch: int, workers: int, amp: torch.dtype | None) -> float | None:
    """Equal error rate over all pairs of photos of people held out from training, sharded: rank r
    embeds photos r, r+W, ...; rank 0 gathers the embeddings and scores the pairs (None elsewhere)."""
    mine = list(range(ctx.rank, len(paths), ctx.world_size))
    stream = PhotoStream([paths[i] for i in mine], labels[mine], transform)
    model.eval()
    dev = ctx.device
    parts = []
    for x, _ in DataLoader(stream, batch_size=max(batch, 2), num_workers=workers):
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            parts.append(model.embedding(model.features(x.to(dev))).float().cpu())
    emb = torch.cat(parts) if parts else torch.zeros(0, model.embedding.linear.out_features)
    gathered = gather_objects((mine, emb), ctx)
    if not ctx.is_main:
        return None
    order = np.concatenate([np.asarray(i, dtype=int) for i, _ in gathered])
    all_emb = torch.cat([e for _, e in gathered])[np.argsort(order)]
    return verification(all_emb.numpy(), labels).eer
