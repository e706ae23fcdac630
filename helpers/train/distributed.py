"""Process groups for torchrun: one code path for 1 process, N processes and N machines.

`torchrun --nproc_per_node=N [--nnodes=M --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT] -m MODULE`
starts N processes per machine and gives each one RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT. `init_distributed()` reads them (gloo on CPU, nccl on CUDA); without
them the program is one plain process and no process group exists. Every collective has a bounded
timeout, so a rank that dies or hangs ends the run with a message instead of a silent wait.

torch's `nn.SyncBatchNorm` runs on GPUs only; `SyncBatchNorm` here does the same on any device
(CPU + gloo included), so the CPU tests exercise what a multi-GPU run does.
"""
from __future__ import annotations

import os
import random
import re
import sys
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..runtime import pick_device

DEFAULT_TIMEOUT_S = 600.0  # NCCL's own default; a collective waiting longer means a rank is gone


class DistributedSetupError(RuntimeError):
    """torchrun's environment cannot be used as asked (e.g. more processes than GPUs).

    Notebook 07, inside `train`.
    """


class PeerReported(RuntimeError):
    """Raised on ranks other than 0 when rank 0 reports the failure: such a rank leaves silently,
    so that the user reads one message instead of one per process.

    Notebook 07, inside `train`.
    """

    def __init__(self, code: int = 2):
        super().__init__("rank 0 reports this failure")
        self.code = code


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among `world_size`, its device and the backend ('' = none).

    Notebook 07, inside `train`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    device: torch.device = torch.device("cpu")
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that logs, evaluates and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        if not self.distributed:
            return f"1 process on {self.device}"
        return f"rank {self.rank} of {self.world_size} ({self.backend}, {self.device})"


def torchrun_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) from torchrun's variables; (0, 1, 0) when they are absent.

    Notebook 07, inside `train`.
    """
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value else default
        except ValueError:
            raise DistributedSetupError(f"{name}={value!r} is not an integer; start the program "
                                        "with torchrun, which sets it") from None
    return read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0)


def init_distributed(device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                     backend: str = "auto") -> DistContext:
    """Join torchrun's process group if there is one; return this process's DistContext.

    `device`: None picks CUDA when present (cuda:LOCAL_RANK under torchrun), else CPU; 'cpu'
    forces CPU + gloo. `timeout_s` bounds every collective (and the start-up rendezvous).
    `backend`: 'auto' (nccl on CUDA, gloo on CPU), 'nccl' or 'gloo'; gloo on CUDA lets several
    processes share a GPU (cuda:LOCAL_RANK % GPUs; slower, for checks such as tools/gpu_check.py).

    Notebook 07, inside `train`.
    """
    if backend not in ("auto", "nccl", "gloo"):
        raise DistributedSetupError(f"backend {backend!r}: choose auto, nccl or gloo")
    rank, world, local_rank = torchrun_env()
    if device is None:
        want_cuda = torch.cuda.is_available()
    else:
        want_cuda = device.startswith("cuda")
    if world <= 1:
        return DistContext(device=pick_device(device), timeout_s=timeout_s)
    if want_cuda:
        if not torch.cuda.is_available():
            raise DistributedSetupError(f"device {device!r} asked for but CUDA is not available: "
                                        "use --device cpu (gloo) or run on a GPU machine")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        gpus = torch.cuda.device_count()
        if local_world > gpus and backend != "gloo":
            raise DistributedSetupError(
                f"{local_world} processes on this machine but {gpus} visible GPU(s): use torchrun "
                f"--nproc_per_node={gpus} (one per GPU), or --backend gloo to share GPUs (slower)")
        dev = torch.device("cuda", local_rank % gpus)
        torch.cuda.set_device(dev)
        backend = "gloo" if backend == "gloo" else "nccl"
    else:
        if backend == "nccl":
            raise DistributedSetupError("backend nccl needs CUDA GPUs: use --backend gloo (or auto) on a CPU")
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistContext(rank, world, local_rank, backend, dev, timeout_s)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group after a successful run (after a failure, just exit).

    Notebook 07, inside `train`.
    """
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """In-place sum of `t` over all ranks (unchanged in one process); returns `t`.

    Notebook 07, inside `train`.
    """
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj, ctx: DistContext) -> list:
    """`obj` of every rank, in rank order, on every rank ([obj] in one process).

    Notebook 07, inside `train`.
    """
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's `obj` on every rank (other ranks pass anything, e.g. None); `obj` in one process.

    Notebook 07, inside `train`.
    """
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rng_state() -> dict:
    """This process's random states (torch CPU, this process's CUDA device, Python, NumPy).

    Only the current CUDA device's state is kept (not `get_rng_state_all`), so a checkpoint of
    1 machine x 8 GPUs resumes on 2 machines x 4: rank r's state goes to rank r's own device.
    Safe for weights_only loads.

    Notebook 07, inside `train`.
    """
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what `rng_state()` returned (the CUDA state on this process's current device).

    Notebook 07, inside `train`.
    """
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints of format 1 held every visible GPU's
            cuda = cuda[0]
        torch.cuda.set_rng_state(cuda)


# ---------------------------------------------------------------------- progress marks

def _store():
    """The process group's key-value store (torchrun's TCPStore), or None."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store
        return _get_default_store()
    except Exception:  # noqa: BLE001 - no group, or a torch without this helper
        return None


def mark_progress(ctx: DistContext, epoch: int, step: int) -> None:
    """Record in the group's store that this rank reached `step` of `epoch` (counted from 0).

    Called just before a step's collectives: when a collective times out, `progress_report`
    names the ranks that never got there. One small store write per step.

    Notebook 07, inside `train`.
    """
    if ctx.distributed:
        store = _store()
        if store is not None:
            store.set(f"face_course/progress/{ctx.rank}", f"{epoch} {step}")


def progress_report(ctx: DistContext) -> str:
    """Which ranks are behind, from the marks of `mark_progress` ('' when unavailable or level).

    E.g. 'rank 1 stopped before epoch 1 step 2 (last reached epoch 1 step 1), where rank 0 waits'.

    Command line: `python -m helpers ...`.
    """
    store = _store()
    if not ctx.distributed or store is None:
        return ""
    marks = {}
    try:
        store.set_timeout(timedelta(seconds=5))
        for r in range(ctx.world_size):
            key = f"face_course/progress/{r}"
            marks[r] = tuple(int(v) for v in store.get(key).decode().split()) if store.check([key]) else (-1, -1)
    except Exception:  # noqa: BLE001 - the store may be gone with the failed rank
        return ""
    front = max(marks.values())
    behind = [r for r, m in marks.items() if m < front]
    if not behind:
        return ""

    def said(m: tuple) -> str:
        return "no step" if m[0] < 0 else f"epoch {m[0] + 1} step {m[1] + 1}"

    ahead = [r for r, m in marks.items() if m == front]
    return "; ".join(f"rank {r} stopped before {said(front)} (last reached {said(marks[r])})" for r in behind) + \
        f", where rank(s) {', '.join(map(str, ahead))} waited"


def main_print(ctx: DistContext, *args, **kwargs) -> None:
    """print() on rank 0 only, flushed (log lines of N processes would interleave).

    Notebook 07, inside `train`.
    """
    if ctx.is_main:
        print(*args, **kwargs, flush=True)


def worker_message(exc: BaseException) -> str:
    """The original message of an error raised in a DataLoader worker, else `str(exc)`.

    torch re-raises a worker's error as "Caught FaceDataError in DataLoader worker process 0.
    Original Traceback (most recent call last): ..." with the message on the last line.

    Command line: `python -m helpers ...`.
    """
    text = str(exc)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        m = re.match(r"[\w.]*" + re.escape(type(exc).__name__) + ": ", last)  # 'helpers.data.folders.FaceDataError: '
        return last[m.end():] if m else last
    return text


def explain_failure(ctx: DistContext, exc: BaseException) -> str:
    """One line saying which rank failed and why; names the ranks behind when a collective broke.

    Command line: `python -m helpers ...`.
    """
    msg = " ".join(worker_message(exc).split())[:400] or type(exc).__name__
    line = f"[rank {ctx.rank}/{ctx.world_size}] failed: {type(exc).__name__}: {msg}"
    low = msg.lower()
    if ctx.distributed and any(k in low for k in ("timed out", "timeout", "connection closed",
                                                  "connection reset", "broken pipe")):
        where = progress_report(ctx)
        line += (f" (a collective waited for another rank, which died or hangs; every collective "
                 f"is bounded by --timeout-s {ctx.timeout_s:g}" + (f"; {where}" if where else "") +
                 ": read the other ranks' messages)")
    return line


def fail(ctx: DistContext, exc: BaseException, code: int = 1) -> None:
    """Report `exc` on stderr and end this process at once, without waiting for the other ranks.

    torchrun sees the non-zero exit and stops the other processes of the run.

    Command line: `python -m helpers ...`.
    """
    line = explain_failure(ctx, exc)
    print(line, file=sys.stderr, flush=True)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's summary then quotes this line
        try:
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
            ErrorHandler().record_exception(RuntimeError(line))
        except Exception:  # noqa: BLE001 - the line above is already printed
            pass
    sys.stdout.flush()
    os._exit(code)  # no interpreter shutdown: a process group's destructor may wait on dead peers


# ---------------------------------------------------------------------- SyncBatchNorm on any device

class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum of the gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the whole global batch (every rank), on any device.

    Input (B, C) or (B, C, *); statistics per channel C. Two all-reduces per forward (sum and
    count, then squared deviations), both differentiable, so the gradient is the one of BatchNorm
    over the global batch. Without a process group or in eval mode it is `BatchNorm` itself; in a
    group of one rank, the same numbers by the synchronised path. Same parameters and buffers
    (and state_dict keys) as BatchNorm.

    Notebook 07, inside `train`.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (B, C, ...), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=x.dtype)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = stats[-1]
        mean = stats[:-1] / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - mom).add_(mom * mean.detach())
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - mom).add_(mom * unbiased)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device, torch_sync: bool | None = None) -> nn.Module:
    """Replace every trainable BatchNorm in `module` by a synchronised one (in place); returns it.

    `torch_sync` (default: on CUDA): torch's `nn.SyncBatchNorm`, for NCCL; otherwise
    `SyncBatchNorm` above (all-reduces only, which gloo does on CPU and CUDA tensors). Frozen
    BatchNorm layers (no trainable parameter) are left alone: they use fixed running statistics.

    Notebook 07, inside `train`.
    """
    if torch_sync is None:
        torch_sync = device.type == "cuda"
    for name, child in list(module.named_children()):
        frozen = not any(p.requires_grad for p in child.parameters(recurse=False))
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not frozen and \
                not isinstance(child, (SyncBatchNorm, nn.SyncBatchNorm)):
            if torch_sync:
                new = nn.SyncBatchNorm.convert_sync_batchnorm(child)
            else:
                new = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
                new.load_state_dict(child.state_dict())
                new.train(child.training)
                for p_new, p_old in zip(new.parameters(), child.parameters()):
                    p_new.requires_grad_(p_old.requires_grad)
            setattr(module, name, new.to(device))
        else:
            convert_sync_batchnorm(child, device, torch_sync)
    return module

