"""Self-check for notebook 07's exercise 3 (scaling up): how many identities a replicated head holds.

Kept apart from `exercises.py` (one module per concern, each under 450 lines).
"""
from __future__ import annotations

from .exercises import _as_number, _verdict


def check_replicated_head_capacity(answer, budget_gb: float = 40.0, dim: int = 512, gpus: int = 8,
                                   per_gpu_batch: int = 128) -> bool:
    """07, exercise 3: the most identities whose replicated head fits `budget_gb` per GPU.

    Per identity and GPU: weight + gradient + AdamW's two moments (4 x dim floats) and its logit
    column for this GPU's own photos, with its gradient (2 x per_gpu_batch floats); all float32.
    """
    from ..models.partial_fc import head_memory_gb

    value = _as_number(answer, "number of identities")
    if value is None:
        return False
    per_identity = head_memory_gb(1, dim, gpus, per_gpu_batch, sharded=False)["total"] * 1e9  # bytes
    right = budget_gb * 1e9 / per_identity
    if abs(value - right) <= 0.01 * right:
        return _verdict(True, f"about {right / 1e6:.2f} million identities ({per_identity:,.0f} bytes each "
                              f"per GPU)", "")
    global_batch = 4 * dim * 4 + 2 * gpus * per_gpu_batch * 4
    if abs(value - budget_gb * 1e9 / global_batch) <= 0.01 * right:
        return _verdict(False, "", "each GPU computes logits for its own photos only: use the per-GPU batch "
                                   f"({per_gpu_batch}), not the global batch ({gpus * per_gpu_batch})")
    if abs(value - budget_gb * 1e9 / (4 * dim * 4)) <= 0.01 * right:
        return _verdict(False, "", "close: the logits (and their gradient) take memory too")
    return _verdict(False, "", f"{value:,.0f} is off; count per identity 4 x {dim} floats of training state "
                               f"and 2 x {per_gpu_batch} floats of logits, 4 bytes each")
