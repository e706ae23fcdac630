"""A sharded ArcFace head (insightface's partial FC, An et al. 2021) for millions of identities.

With DDP every rank keeps the whole class-weight matrix (C, D), its gradient and its optimizer
state, and all-reduces the whole gradient at every step. `PartialFC` splits the classes over the
W ranks instead: rank r holds rows [start_r, end_r) only, and per step

1. the ranks all-gather the batch's embeddings and labels (W x B x D numbers: megabytes);
2. each rank computes the logits of the whole gathered batch against its own classes
   (W*B, C/W), the true class's logit with the ArcFace margin where that class lives here;
3. the softmax runs over all classes without ever holding them in one place: each row's maximum
   and sum of exponentials are all-reduced (MAX, then SUM), and the true class's probability
   (which one rank holds) is all-reduced (SUM). Every rank gets the same loss, the mean
   cross-entropy over the W*B photos;
4. backward: each rank's logits get (softmax - one-hot) / (W*B); the gathered embeddings'
   gradients are summed over ranks, and each rank keeps its own photos' rows.

The backbone stays inside DDP, which averages its gradients over ranks: step 4 multiplies the
embeddings' gradient by W to undo that average (as arcface_torch does), so the backbone gets the
gradient of the global mean loss. The head's weights are not in DDP (each rank owns its rows).

`sample_rate` < 1 keeps, per step and per rank, the classes present in the gathered batch plus
random other classes up to `ceil(sample_rate * C/W)`: fewer logits, the same positives.

Input: local embeddings (B, D) and labels (B,) in [0, num_classes). Output: the scalar loss.
Without a process group it is one rank holding every class (equal to `heads.ArcFaceHead` with
cross-entropy). `check_against_replicated` runs W gloo processes against the replicated head.
"""
from __future__ import annotations

import math
import os
import tempfile

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .heads import EPS, ArcFaceHead


def _group() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, end) of rank's classes: the first `num_classes % world_size` ranks get one more.

    Notebook 07, inside `check_against_replicated`.
    """
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class _AllGather(torch.autograd.Function):
    """(B, ...) per rank -> (W*B, ...) on every rank; backward sums the gradients over ranks,
    keeps this rank's rows and multiplies them by W (DDP then averages the backbone's gradients)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.world, ctx.rows = dist.get_rank(), world, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        mine = grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]
        return mine * ctx.world


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """All ranks' `x` concatenated in rank order (differentiable as described in `_AllGather`).

    Notebook 07, inside `check_against_replicated`.
    """
    if _group()[1] == 1:
        return x
    return _AllGather.apply(x)


class _DistributedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over rows whose classes are split over ranks (columns = local classes).

    `target` holds each row's true column here, or -1 where the true class lives on another rank.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        distributed = _group()[1] > 1
        row_max = logits.max(dim=1).values
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        prob = torch.exp(logits - row_max[:, None])
        denom = prob.sum(dim=1)
        if distributed:
            dist.all_reduce(denom, op=dist.ReduceOp.SUM)
        prob /= denom[:, None]
        here = target >= 0
        true_logit = torch.zeros_like(denom)   # the true class's logit, held by one rank
        true_logit[here] = logits[here, target[here]] - row_max[here]
        if distributed:
            dist.all_reduce(true_logit, op=dist.ReduceOp.SUM)
        ctx.save_for_backward(prob, target)
        return (torch.log(denom) - true_logit).mean()   # -log softmax, in log space (no underflow)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        prob, target = ctx.saved_tensors
        here = torch.nonzero(target >= 0).squeeze(1)
        g = prob.clone()
        g[here, target[here]] -= 1.0
        return g * (grad / prob.shape[0]), None


class PartialFC(nn.Module):
    """ArcFace head whose classes are split over the ranks; forward returns the mean loss.

    `weight` holds this rank's classes only: (end - start, D), rows of `shard_bounds`. Keep it out
    of DDP; give it to the optimizer like any parameter (its state is then sharded too).

    Notebook 07, inside `check_against_replicated`.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 sample_rate: float = 1.0, easy_margin: bool = False):
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate is the share of negative classes kept: give 0 < rate <= 1, got {sample_rate}")
        self.rank, self.world = _group()
        if num_classes < self.world:
            raise ValueError(f"{num_classes} classes cannot be split over {self.world} ranks")
        self.num_classes, self.sample_rate = int(num_classes), float(sample_rate)
        self.start, self.end = shard_bounds(num_classes, self.world, self.rank)
        full = torch.empty(num_classes, embedding_dim)
        nn.init.xavier_uniform_(full)   # initialised as the replicated head would be, then sliced
        self.weight = nn.Parameter(full[self.start:self.end].clone())
        self.margin = ArcFaceHead(1, 1, s, m, easy_margin).requires_grad_(False)  # its target_logit only
        self.s = float(s)

    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows of `weight` used this step, each label's column among them or -1 if not here)."""
        local = labels - self.start
        here = (local >= 0) & (local < self.end - self.start)
        n_local = self.end - self.start
        if self.sample_rate >= 1:
            return torch.arange(n_local, device=labels.device), torch.where(here, local, -1)
        positives = torch.unique(local[here])
        keep = max(math.ceil(self.sample_rate * n_local), len(positives))
        score = torch.rand(n_local, device=labels.device)
        score[positives] = 2.0                       # positives always kept
        rows = torch.sort(torch.topk(score, keep).indices).values
        column = torch.full((n_local,), -1, dtype=torch.long, device=labels.device)
        column[rows] = torch.arange(len(rows), device=labels.device)
        return rows, torch.where(here, column[local.clamp(0, n_local - 1)], -1)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """emb (B, D) and labels (B,) of this rank -> mean ArcFace loss over every rank's photos."""
        emb_all = gather_batch(emb)
        labels_all = gather_batch(labels) if self.world > 1 else labels
        rows, target = self.sample(labels_all)
        cos = F.linear(F.normalize(emb_all, dim=1), F.normalize(self.weight[rows], dim=1)).clamp(-1.0, 1.0)
        here = torch.nonzero(target >= 0).squeeze(1)
        logits = cos.clone()
        if self.training:
            logits[here, target[here]] = self.margin.target_logit(cos[here, target[here]])
        return _DistributedCrossEntropy.apply(self.s * logits, target)

    def extra_repr(self) -> str:
        return (f"classes={self.start}..{self.end - 1} of {self.num_classes} (rank {self.rank} of {self.world}), "
                f"dim={self.weight.shape[1]}, s={self.s}, m={self.margin.m}, sample_rate={self.sample_rate}")


# ---------------------------------------------------------------------- memory arithmetic

def head_memory_gb(num_classes: int, dim: int, gpus: int, per_gpu_batch: int, sharded: bool,
                   sample_rate: float = 1.0) -> dict[str, float]:
    """Per-GPU memory of the classification head in GB (float32), for one training step.

    weights + gradient + AdamW's two moments = 4 x C_gpu x D x 4 bytes, where C_gpu = C
    (replicated) or C / gpus (sharded). Logits and their gradient = 2 x rows x columns x 4 bytes:
    replicated, each GPU computes its own photos against every class (per_gpu_batch x C); sharded,
    each GPU computes the gathered batch against its classes ((gpus x per_gpu_batch) x C/gpus x
    sample_rate): the same count of logits, so sharding saves weights and optimizer state, and
    sampling is what shrinks the logits.

    Notebook 07.
    """
    classes = num_classes / gpus if sharded else num_classes
    rows = gpus * per_gpu_batch if sharded else per_gpu_batch
    cols = classes * (sample_rate if sharded else 1.0)
    state = 4 * classes * dim * 4 / 1e9
    logits = 2 * rows * cols * 4 / 1e9
    return {"weights_and_adam": state, "logits": logits, "total": state + logits}


# ---------------------------------------------------------------------- check against the replicated head

def _check_worker(rank: int, world: int, store_path: str, seed: int, dtype: torch.dtype, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        result = _compare(seed, dtype)
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _compare(seed: int, dtype: torch.dtype = torch.float32, classes: int = 1000, dim: int = 64,
             per_rank: int = 16, s: float = 64.0, m: float = 0.5) -> dict[str, float]:
    """This rank's |differences| between PartialFC (sample rate 1) and ArcFaceHead + cross-entropy
    on the whole batch."""
    rank, world = _group()
    torch.manual_seed(seed)
    emb_all = torch.randn(world * per_rank, dim, dtype=dtype)
    labels_all = torch.randint(0, classes, (world * per_rank,))
    torch.manual_seed(seed + 1)
    head = PartialFC(dim, classes, s, m).to(dtype)
    torch.manual_seed(seed + 1)
    ref = ArcFaceHead(dim, classes, s, m).to(dtype)   # the same xavier draw: the full matrix
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    emb = emb_all[rows].clone().requires_grad_()
    loss = head(emb, labels_all[rows])
    loss.backward()
    emb_ref = emb_all.clone().requires_grad_()
    loss_ref = F.cross_entropy(ref(emb_ref, labels_all), labels_all)
    loss_ref.backward()
    # DDP would average the backbone's gradients over ranks: compare W x the replicated gradient
    return {"loss": abs(loss.item() - loss_ref.item()),
            "weight_grad": (head.weight.grad - ref.weight.grad[head.start:head.end]).abs().max().item(),
            "embedding_grad": (emb.grad - world * emb_ref.grad[rows]).abs().max().item(),
            "weight_grad_scale": ref.weight.grad.abs().max().item()}


def check_against_replicated(world_size: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Run PartialFC (sample rate 1) on `world_size` gloo processes (CPU) against the replicated
    ArcFace head with cross-entropy on the same global batch (1,000 classes, 64-D, 16 photos per
    rank, s 64, m 0.5). Returns the largest |difference| over ranks of the loss, the weights'
    gradient and the embeddings' gradient (this rank's rows, against W x the replicated one, see
    the module docstring), and the largest |weight gradient| for scale.

    Notebook 07.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="partial_fc_") as tmp:
        out = os.path.join(tmp, "result")
        mp.spawn(_check_worker, args=(world_size, os.path.join(tmp, "store"), seed, dtype, out),
                 nprocs=world_size, join=True)
        results = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world_size)]
    return {k: max(r[k] for r in results) for k in results[0]}
